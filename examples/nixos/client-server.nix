# The NixOS tutorial's client/server test: nginx on `server`, curl on
# `client`, on nix-vmtest's driver through the overlay
# (pkgs.testers.runNixOSTest is nix-vmtest's).
#
# With the flake:   nix build .#checks.x86_64-linux.nixos-client-server
# Without it:       nix-build examples/nixos/client-server.nix -I nixpkgs=/path/to/nixpkgs
{
  pkgs ? import <nixpkgs> {
    config = { };
    overlays = [ (import ../../nix/overlay.nix) ];
  },
}:

pkgs.testers.runNixOSTest {
  name = "client-server-test";

  nodes.server =
    { pkgs, ... }:
    {
      networking = {
        firewall.allowedTCPPorts = [ 80 ];
      };
      services.nginx = {
        enable = true;
        virtualHosts."server" = { };
      };
      system.stateVersion = "24.05";
    };

  nodes.client =
    { pkgs, ... }:
    {
      environment.systemPackages = with pkgs; [ curl ];
      system.stateVersion = "24.05";
    };

  testScript = ''
    start_all()
    server.wait_for_open_port(80)
    expected = "Welcome to nginx!"
    actual = client.succeed("curl http://server/ | grep -o \"Welcome to nginx!\"")
    assert expected in actual, "Page did not load properly"
  '';
}
