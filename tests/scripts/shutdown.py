# nodes: machine=tiny
# expect: pass
# shutdown() powers off cleanly and waits; is_up() follows; start() after a
# shutdown boots again; a poweroff from inside the guest is seen by
# wait_for_shutdown().
t.assertFalse(machine.is_up())
machine.start()
machine.succeed("true")
t.assertTrue(machine.is_up())

machine.shutdown()
t.assertFalse(machine.is_up())

machine.start()
machine.succeed("echo booted again")
t.assertTrue(machine.is_up())

machine.execute("(sleep 1; poweroff) >/dev/null 2>&1 &", check_return=False)
machine.wait_for_shutdown()
t.assertFalse(machine.is_up())
