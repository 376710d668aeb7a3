# NixOS module: loads nix-vmtest's plugin (builtins.vmTest) into Nix, for the
# daemon and the CLI alike (both read nix.conf's plugin-files).
#
#   imports = [ nix-vmtest.nixosModules.default ];
#   programs.nix-vmtest.enable = true;
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.programs.nix-vmtest;
in
{
  options.programs.nix-vmtest = {
    enable = lib.mkEnableOption "nix-vmtest's Nix plugin (builtins.vmTest) and test driver";

    package = lib.mkOption {
      type = lib.types.package;
      # A plugin must be built against the Nix that loads it.
      default = pkgs.callPackage ./package.nix { nix = config.nix.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { nix = config.nix.package; }";
      description = "The nix-vmtest package; its plugin must be built against config.nix.package.";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings.plugin-files = [ "${cfg.package}/lib/libnix_vmtest.so" ];

    # Tests need the nixos-test and kvm system features, which NixOS'
    # default nix.settings.system-features has.

    environment.systemPackages = [ cfg.package ];
  };
}
