# The NixOS tutorial's minimal test ("Integration testing with NixOS virtual
# machines"), unchanged except that it runs on nix-vmtest's driver through
# the overlay: pkgs.nixosTest is nix-vmtest's.
#
# With the flake:   nix build .#checks.x86_64-linux.nixos-minimal
# Without it:       nix-build examples/nixos/minimal.nix -I nixpkgs=/path/to/nixpkgs
#
# In your own project (flake input `nix-vmtest`):
#   pkgs = import nixpkgs { inherit system; overlays = [ nix-vmtest.overlays.default ]; };
{
  pkgs ? import <nixpkgs> {
    config = { };
    overlays = [ (import ../../nix/overlay.nix) ];
  },
}:

pkgs.nixosTest {
  name = "minimal-test";

  nodes.machine =
    { config, pkgs, ... }:
    {
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "wheel" ];
        packages = with pkgs; [ cowsay ];
      };

      system.stateVersion = "24.05";
    };

  testScript = ''
    machine.wait_for_unit("default.target")
    machine.succeed("su -- alice -c 'which cowsay'")
    machine.fail("su -- root -c 'which cowsay'")
  '';
}
