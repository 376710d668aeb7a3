# nodes: machine=tiny
# expect: pass
# crash() ends QEMU at once (no clean shutdown); start() boots it again and
# the next command waits for the new boot.
start_all()
machine.succeed("echo first boot > /tmp/boot-marker")
t.assertTrue(machine.is_up())
first_boot_id = machine.succeed("cat /proc/sys/kernel/random/boot_id").strip()

machine.crash()
t.assertFalse(machine.is_up())

machine.start()
second_boot_id = machine.succeed("cat /proc/sys/kernel/random/boot_id").strip()
t.assertTrue(machine.is_up())
t.assertNotEqual(first_boot_id, second_boot_id)
# The tiny guest lives in RAM: the marker is gone.
machine.fail("test -e /tmp/boot-marker")

with subtest("crash, then start again in the same subtest"):
    machine.crash()
    machine.start()
    machine.wait_until_succeeds("true")
