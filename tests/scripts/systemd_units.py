# nodes: machine=systemd
# expect: pass
# expect-log: waiting for TCP port 80 on localhost
# expect-log: checking if unit 'nginx.service' has reached state 'active'
# systemctl, get_unit_info, get_unit_property, require_unit_state, stop_job /
# start_job, and nginx's port 80 opening and closing.
machine.wait_for_unit("nginx.service")

with subtest("systemctl"):
    status, out = machine.systemctl("is-active nginx.service")
    t.assertEqual((status, out.strip()), (0, "active"))
    status, out = machine.systemctl("is-active broken.service")
    t.assertNotEqual(status, 0)
    status, out = machine.systemctl("is-enabled nginx.service")
    t.assertEqual(out.strip(), "enabled")

with subtest("get_unit_info / get_unit_property"):
    info = machine.get_unit_info("nginx.service")
    t.assertEqual(info["ActiveState"], "active")
    t.assertEqual(info["Id"], "nginx.service")
    t.assertIn("LoadState", info)
    t.assertEqual(machine.get_unit_property("nginx.service", "SubState"), "running")
    t.assertEqual(machine.get_unit_property("slow.service", "Type"), "oneshot")
    t.assertEqual(
        machine.get_unit_property("slow.service", "Description"),
        "A service that takes 3 seconds to start",
    )

with subtest("require_unit_state"):
    machine.require_unit_state("nginx.service")
    machine.require_unit_state("slow.service", "inactive")
    try:
        machine.require_unit_state("slow.service", "active")
    except AssertionError as e:
        t.assertIn("slow.service", str(e))
        t.assertIn("inactive", str(e))
    else:
        raise Exception("require_unit_state did not raise")

with subtest("nginx serves, stops, starts"):
    machine.wait_for_open_port(80)
    out = machine.succeed("curl -sf http://localhost/")
    t.assertIn("nginx", out.lower())
    machine.stop_job("nginx.service")
    machine.require_unit_state("nginx.service", "inactive")
    machine.wait_for_closed_port(80)
    machine.fail("curl -sf http://localhost/")
    machine.start_job("nginx.service")
    machine.wait_for_unit("nginx.service")
    machine.wait_for_open_port(80, timeout=120)
    machine.succeed("curl -sf http://localhost/ >/dev/null")

with subtest("wait_for_open_unix_socket"):
    machine.wait_for_open_unix_socket("/run/systemd/private", timeout=120)
    machine.wait_for_open_unix_socket("/run/systemd/journal/socket", is_datagram=True, timeout=120)
