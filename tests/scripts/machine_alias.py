# nodes: server=tiny
# expect: pass
# A test with one machine also has it as `machine`.
t.assertIs(machine, server)
t.assertEqual(machine.name, "server")
t.assertEqual(machines, [server])
start_all()
t.assertEqual(machine.succeed("hostname").strip(), "server")
t.assertEqual(server.succeed("echo same"), "same\n")
