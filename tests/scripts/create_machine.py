# nodes: machine=tiny
# expect: pass
# create_machine(start_command, name=...) with a NixOS-style start script
# (the guests' run-tiny-vm, which honours QEMU_OPTS / QEMU_KERNEL_PARAMS);
# the new machine is started, used and shut down next to the declared one.
guests = os.environ["NIX_VMTEST_GUESTS"]
start_command = (
    "QEMU_OPTS='-m 200' QEMU_KERNEL_PARAMS=vmtest.created=yes "
    f"{guests}/run-tiny-vm"
)
extra = create_machine(start_command, name="extra")
t.assertEqual(extra.name, "extra")

start_all()
machine.succeed("true")
extra.start()
t.assertIn("vmtest.created=yes", extra.succeed("cat /proc/cmdline"))
mem_kb = int(extra.succeed("awk '/MemTotal/ {print $2}' /proc/meminfo"))
t.assertLess(mem_kb, 210 * 1024)
extra.shutdown()
t.assertFalse(extra.is_up())

# Without a name, the name comes from run-<name>-vm.
named = create_machine(f"{guests}/run-tiny-vm")
t.assertEqual(named.name, "tiny")
named.start()
named.succeed("echo second created machine")
named.crash()
