# Stand-in for nixpkgs' nixos/lib/eval-config.nix (tests/nix-lib only).
{
  lib,
  system ? null,
  specialArgs ? { },
  modules,
}:
lib.evalModules {
  inherit modules;
  specialArgs = {
    modulesPath = toString ../modules;
  } // specialArgs;
}
