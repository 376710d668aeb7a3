# nodes: machine=tiny
# timeout: 300
# expect: pass
# reboot() (Ctrl-Alt-Del) on a machine started with allow_reboot=True: the
# next command runs in the new boot; release() lets the driver stop tracking.
machine.start(allow_reboot=True)
first = machine.succeed("cat /proc/sys/kernel/random/boot_id").strip()
machine.reboot()
second = machine.succeed("cat /proc/sys/kernel/random/boot_id").strip()
t.assertNotEqual(first, second)
t.assertTrue(machine.is_up())
machine.connect()
machine.succeed("echo connected")
