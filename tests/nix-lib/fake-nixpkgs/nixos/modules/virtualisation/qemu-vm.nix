# Stand-in for qemu-vm.nix (tests/nix-lib only): the options the library
# touches, and a system.build.vm that shows what went into the start script.
{ config, lib, ... }:
let
  inherit (lib) mkOption;
in
{
  options = {
    virtualisation.vlans = mkOption { default = [ 1 ]; };
    virtualisation.interfaces = mkOption { default = { }; };
    virtualisation.qemu.options = mkOption { default = [ ]; };
    virtualisation.qemu.package = mkOption { default = "qemu_kvm"; };
    virtualisation.host.pkgs = mkOption { default = null; };
    virtualisation.installBootLoader = mkOption { default = false; };
    networking.primaryIPAddress = mkOption { default = ""; };
    networking.primaryIPv6Address = mkOption { default = ""; };
    networking.hostName = mkOption { default = "nixos"; };
    networking.domain = mkOption { default = null; };
    networking.extraHosts = mkOption { default = ""; };
    networking.interfaces = mkOption { default = { }; };
    networking.usePredictableInterfaceNames = mkOption { default = true; };
    system.name = mkOption { default = config.networking.hostName; };
    system.build = mkOption { default = { }; };
    system.nixos.revision = mkOption { default = "rev"; };
    system.nixos.versionSuffix = mkOption { default = "pre"; };
    system.nixos.label = mkOption { default = "label"; };
    specialisation = mkOption { default = { }; };
    documentation.nixos.enable = mkOption { default = true; };
    boot.initrd.services.udev.rules = mkOption { default = ""; };
    nixpkgs.pkgs = mkOption { default = null; };
    services.nginx.enable = mkOption { default = false; };
  };
  config.system.build.vm = {
    outPath = "/nix/store/00000000000000000000000000000000-nixos-vm";
    qemuOptions = config.virtualisation.qemu.options;
  };
}
