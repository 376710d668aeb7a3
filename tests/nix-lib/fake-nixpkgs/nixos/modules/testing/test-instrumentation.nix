# Stand-in for nixpkgs' test instrumentation (tests/nix-lib only).
{ lib, ... }:
{
  options.testing.backdoor = lib.mkOption { default = true; };
  config.networking.usePredictableInterfaceNames = false;
}
