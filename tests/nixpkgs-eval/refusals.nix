# Small tests that nix-vmtest's test module must refuse at evaluation, with
# a message naming the option (tests/nixpkgs-eval/run.sh checks the message).
#   nix-instantiate --eval refusals.nix --arg nixpkgs ... --argstr which containers
{
  nixpkgs,
  overlays ? [ ],
  which,
  system ? "x86_64-linux",
}:

let
  pkgs = import nixpkgs {
    inherit system overlays;
    config = { };
  };
  run =
    t:
    pkgs.testers.runNixOSTest {
      imports = [
        ../../nix/test-module.nix
        t
      ];
      name = "refused";
      testScript = "start_all()";
    };
  fixtures = ../nix-lib/fixtures;
in
{
  # systemd-nspawn machines: the test itself.
  containers = (run { containers.c = { }; }).drvPath;
  # vsock SSH: the driver (what .driverInteractive is, with interactive.*).
  sshBackdoor = (run {
    nodes.m = { };
    sshBackdoor.enable = true;
  }).driver.drvPath;
  # One name in nodes and imageNodes.
  imageClash = (run {
    nodes.m = { };
    imageNodes.m = {
      kernel = fixtures + "/vmlinuz";
      initrd = fixtures + "/initrd";
    };
  }).drvPath;
  # A snapshot asked for a node whose store is the host's over 9p.
  snapshotNineP = (run {
    nodes.m = { };
    snapshots.m = true;
  }).drvPath;
  # A snapshot setting for a machine the test does not have.
  snapshotUnknown = (run {
    nodes.m = { };
    snapshots.n = false;
  }).drvPath;
}
.${which}
