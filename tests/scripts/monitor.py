# nodes: machine=tiny
# expect: pass
# send_monitor_command: QEMU's human monitor; stop/cont freezes the guest.
import time

start_all()
machine.wait_until_succeeds("true")

status = machine.send_monitor_command("info status")
t.assertIn("running", status)
t.assertRegex(machine.send_monitor_command("info version"), r"\d+\.\d+")
t.assertIn("virtio-serial", machine.send_monitor_command("info qtree"))

machine.send_monitor_command("stop")
event = machine.wait_for_qmp_event(lambda e: e.get("event") == "STOP", timeout=60)
t.assertEqual(event["event"], "STOP")
t.assertIn("paused", machine.send_monitor_command("info status"))
machine.send_monitor_command("cont")
t.assertIn("running", machine.send_monitor_command("info status"))
machine.succeed("echo alive after stop/cont")

# forward_port is a monitor command too (hostfwd_add on a user netdev); the
# image nodes have no user netdev, so only check that sendkey is accepted.
machine.send_key("ctrl-alt-f1")
machine.send_chars("ab\n")
