# Makes nixpkgs' test entry points run on nix-vmtest's driver:
#   pkgs.nixosTest, pkgs.testers.nixosTest, pkgs.testers.runNixOSTest
# and adds pkgs.nix-vmtest (driver, plugin, Python client).
#
#   pkgs = import nixpkgs { overlays = [ nix-vmtest.overlays.default ]; };
#   pkgs.nixosTest { name = "x"; nodes.machine = { ... }; testScript = "..."; }
final: prev:
let
  vmtest = import ./default.nix { pkgs = final; };
in
{
  nix-vmtest = final.callPackage ./package.nix { };

  nixosTest = vmtest.nixosTest;

  testers = prev.testers // {
    nixosTest = vmtest.nixosTest;
    runNixOSTest = vmtest.runNixOSTest;
  };

  # The library itself, for tests that want runTest with pkgs preset.
  nix-vmtest-lib = vmtest;
}
