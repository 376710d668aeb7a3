# Two tiny guests (busybox + bash initramfs) on two VLANs, through runTest
# given as a module function: the script is a function of `nodes` and uses
# the addresses the library computed (node n on VLAN v: 192.168.v.n).
#
#   nix-build examples/debian/tiny.nix --arg guests "$(tests/guests/build.sh --print-dir)"
{
  guests ? builtins.getEnv "NIX_VMTEST_GUESTS",
  driver ? null,
  vmtest ? import ../../nix { inherit driver; },
}:

let
  images = import ./guests.nix guests;
in
vmtest.runTest (
  { config, ... }:
  {
    name = "tiny-two-vlans";
    globalTimeout = 600;

    imageNodes.a = images.tiny // {
      vlans = [ 1 2 ];
    };
    imageNodes.b = images.tiny // {
      vlans = [ 2 ];
    };

    testScript =
      { nodes, ... }:
      ''
        start_all()
        # a is 192.168.1.1 and 192.168.2.1; b is 192.168.2.2 (VLAN 2 only)
        b.succeed("ping -c 1 -W 10 ${nodes.a.ipAddresses."2"}")
        a.succeed("ping -c 1 -W 10 ${nodes.b.networking.primaryIPAddress}")
        # names resolve to each node's address on its first VLAN
        a.succeed("ping -c 1 -W 10 b")
        b.fail("ping -c 1 -W 2 ${nodes.a.ipAddresses."1"}")
      '';

    meta.description = "test ${config.name}: image nodes on VLANs 1 and 2";
  }
)
