# The trivial test `cargo bench --bench nix_build` times through a real
# `nix-build` with the plugin: one node, one command.
#
# `guests` is the guest directory (`--argstr guests DIR`); `guest` is
# "tiny" (busybox initramfs) or "systemd" (Debian on a qcow2 disk).
# `node` changes the node (a kernel parameter), so a new value gets a
# snapshot derivation of its own; `marker` changes only the script (the
# "user edited the script" case); `snapshots` is builtins.vmTest's.
{
  guests,
  guest ? "tiny",
  node ? "0",
  marker ? "0",
  snapshots ? true,
}:
builtins.vmTest {
  name = "bench-trivial-${guest}";
  nodes.machine =
    {
      kernel = /. + "${guests}/vmlinuz";
      kernelParams = "nixvmtest.node=${node}";
    }
    // (
      if guest == "systemd" then
        {
          initrd = /. + "${guests}/systemd/initrd";
          disk = /. + "${guests}/systemd/base.qcow2";
          memory = 512;
        }
      else
        {
          initrd = /. + "${guests}/tiny/initrd";
          memory = 128;
        }
    );
  inherit snapshots;
  globalTimeout = 600;
  testScript = ''
    # marker ${marker}
    machine.succeed("true")
  '';
}
