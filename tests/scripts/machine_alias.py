# nodes: server=tiny
# expect: pass
# expect-stderr: ??? Warning (UserWarning): invoking 'QemuMachine.succeed' is deprecated: It's deprecated to use the `machine` variable when the only machine is called server. This behavior will no longer work in NixOS 27.05.
# expect-stderr: ??? Warning (UserWarning): invoking 'QemuMachine.name' is deprecated: It's deprecated to use the `machine` variable when the only machine is called server.
# A test with one machine also has it as `machine`: as in nixpkgs, under
# another name than `machine`, a wrapper that warns at every new use.
t.assertIsNot(machine, server)
t.assertEqual(machine.name, "server")
t.assertEqual(machines, [server])
start_all()
t.assertEqual(machine.succeed("hostname").strip(), "server")
t.assertEqual(server.succeed("echo same"), "same\n")
