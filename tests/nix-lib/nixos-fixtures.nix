# For run.sh's NixOS-node checks: the library with a stand-in for nixpkgs
# (fake-nixpkgs/: a crude module system and the few NixOS options the
# library touches). These check the library's wiring only.
rec {
  pkgs = import ./fake-nixpkgs { };
  vmtest = import ../../nix {
    inherit pkgs;
    driver = ./fake-driver;
    useBuiltin = false;
  };
  overlaid = pkgs // (import ../../nix/overlay.nix) overlaid pkgs;
  f = import ./fixtures.nix { };
  # A NixOS server on VLANs 1 and 2, an image client on VLAN 1.
  mixed =
    extra:
    vmtest.runTest (
      {
        name = "mixed";
        nodes.server =
          { nodes, ... }:
          {
            virtualisation.vlans = [ 1 2 ];
            services.nginx.enable = true;
            networking.extraHosts = "# client is ${nodes.client.networking.primaryIPAddress}";
          };
        nodes.client = f.image;
        testScript = "start_all()";
      }
      // extra
    );
}
