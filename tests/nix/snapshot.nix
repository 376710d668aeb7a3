# Booted snapshots as derivations (tests/plugin.rs, `*snapshot*`): the tiny
# Debian guest as an image node.
#
# `guests` is the guest directory (`--argstr guests DIR`). `node` changes
# the node (a kernel parameter), so each test run gets snapshots of its own;
# `marker` changes only the script. `memory` changes the node too.
# `snapshots` is builtins.vmTest's argument (not given when null);
# `ownSnapshot` is the node's own `snapshot` (not given when null).
{
  guests,
  node ? "0",
  marker ? "0",
  memory ? 128,
  snapshots ? null,
  ownSnapshot ? null,
}:
builtins.vmTest {
  name = "snapshot-test";
  nodes.machine = {
    kernel = /. + "${guests}/vmlinuz";
    initrd = /. + "${guests}/tiny/initrd";
    inherit memory;
    kernelParams = "nixvmtest.node=${node}";
    ${if ownSnapshot == null then null else "snapshot"} = ownSnapshot;
  };
  ${if snapshots == null then null else "snapshots"} = snapshots;
  globalTimeout = 600;
  testScript = ''
    # marker ${marker}
    machine.succeed("grep -q nixvmtest.node=${node} /proc/cmdline")
  '';
}
