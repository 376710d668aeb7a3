# Makes nixpkgs' test entry points run on nix-vmtest's driver:
#   pkgs.testers.runNixOSTest, pkgs.testers.nixosTest (and pkgs.nixosTest,
#   which nixpkgs 25.11+ only keeps as an error pointing to testers.nixosTest)
# are nixpkgs' own, with nix-vmtest's test module (nix/test-module.nix)
# added; and adds pkgs.nix-vmtest (driver, plugin, Python client).
#
#   pkgs = import nixpkgs { overlays = [ nix-vmtest.overlays.default ]; };
#   pkgs.testers.runNixOSTest { name = "x"; nodes.machine = { ... }; testScript = "..."; }
final: prev:
let
  # prev's testers: nixpkgs' own functions (they take hostPkgs = final).
  vmtest = import ./nixpkgs.nix {
    pkgs = final;
    inherit (prev) testers;
  };
in
{
  nix-vmtest = final.callPackage ./package.nix { };

  nixosTest = vmtest.nixosTest;

  testers = prev.testers // {
    inherit (vmtest) nixosTest runNixOSTest;
  };

  # The library itself, for tests that want runTest with pkgs preset.
  nix-vmtest-lib = import ./default.nix { pkgs = final; };
}
