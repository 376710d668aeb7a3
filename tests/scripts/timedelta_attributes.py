# nodes: server=tiny
# expect: pass
# expect-stderr: ??? Warning (UserWarning): invoking 'QemuMachine.succeed' is deprecated: It's deprecated to use the `machine` variable when the only machine is called server. This behavior will no longer work in NixOS 27.05.
# expect-log: waiting for file '/tmp/shared/from-host.txt'
# expect-log: state directory is now
# Today's script API: every timeout, interval and delay as a
# `datetime.timedelta`; the machine attributes nixpkgs' scripts use
# (`state_dir`, `shared_dir`, `tmp_dir`, `booted`, `connected`, `pid`),
# with the driver's real values; `machines_qemu`; the `machine` alias's
# deprecation warning. The shared directory is the guest's /tmp/shared.
import time
from datetime import timedelta
from pathlib import Path

with subtest("before the start: directories exist, nothing runs"):
    t.assertEqual(machines_qemu, [server])
    t.assertEqual(machines, [server])
    for d in (server.state_dir, server.shared_dir, server.tmp_dir):
        t.assertIsInstance(d, Path)
        t.assertTrue(d.is_dir(), d)
    t.assertEqual(server.state_dir.parent, server.tmp_dir)
    t.assertFalse(server.booted)
    t.assertFalse(server.connected)
    t.assertIsNone(server.pid)
    # From the host, before the guest boots.
    (server.shared_dir / "from-host.txt").write_text("hello from the host\n")

with subtest("start: booted, then connected, with QEMU's pid"):
    server.start()
    t.assertTrue(server.booted)
    pid = server.pid
    t.assertIsInstance(pid, int)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        t.assertIn(b"qemu", f.read().split(b"\0")[0])
    server.wait_for_file("/tmp/shared/from-host.txt", timeout=timedelta(minutes=5))
    t.assertTrue(server.connected)
    t.assertTrue(server.is_up())

with subtest("the shared directory, both ways"):
    out = server.succeed("cat /tmp/shared/from-host.txt", timeout=timedelta(seconds=60))
    t.assertEqual(out, "hello from the host\n")
    server.succeed("echo from the guest > /tmp/shared/from-guest.txt")
    t.assertEqual((server.shared_dir / "from-guest.txt").read_text(), "from the guest\n")

with subtest("timedelta timeouts that are met"):
    server.succeed("(sleep 1; touch /tmp/ready) >/dev/null 2>&1 &")
    t.assertEqual(
        server.wait_until_succeeds("test -e /tmp/ready && echo ok", timeout=timedelta(seconds=60)),
        "ok\n",
    )
    server.wait_until_fails("test -e /nonexistent", timeout=timedelta(seconds=60))
    server.fail("false", timeout=timedelta(seconds=60))
    status, out = server.execute("echo x", timeout=timedelta(seconds=60))
    t.assertEqual((status, out), (0, "x\n"))
    server.succeed("(sleep 1; echo td-console-marker > /dev/ttyS0) >/dev/null 2>&1 &")
    server.wait_for_console_text("td-console-marker", timeout=timedelta(seconds=60))
    server.succeed("(sleep 1; touch /tmp/later) >/dev/null 2>&1 &")
    server.wait_for_file("/tmp/later", timeout=timedelta(seconds=60))
    t0 = time.monotonic()
    server.sleep(timedelta(milliseconds=1500))
    t.assertGreaterEqual(time.monotonic() - t0, 1.4)
    server.send_key("shift", delay=timedelta(milliseconds=10))

with subtest("timedelta timeouts that expire"):
    for what, call in [
        ("wait_until_succeeds",
         lambda: server.wait_until_succeeds("false", timeout=timedelta(seconds=2))),
        ("wait_for_file",
         lambda: server.wait_for_file("/nonexistent", timeout=timedelta(seconds=2))),
        ("wait_for_open_port",
         lambda: server.wait_for_open_port(1, timeout=timedelta(seconds=2))),
        ("wait_for_console_text",
         lambda: server.wait_for_console_text("never-printed", timeout=timedelta(seconds=2))),
        ("retry", lambda: retry(lambda last: False, timedelta(seconds=2))),
        ("retry(timeout=)", lambda: retry(lambda last: False, timeout=timedelta(seconds=2))),
    ]:
        t0 = time.monotonic()
        with t.assertRaises(AssertionError, msg=what):
            call()
        t.assertLess(time.monotonic() - t0, 60, what)
    t0 = time.monotonic()
    status, _ = server.execute("sleep 100", timeout=timedelta(seconds=2))
    t.assertEqual(status, 124)
    t.assertLess(time.monotonic() - t0, 60)

with subtest("polling_condition with timedelta"):
    @polling_condition(seconds_interval=timedelta(seconds=1))
    def shell_alive():
        server.succeed("true")

    with shell_alive:
        server.succeed("echo polled")
    shell_alive.wait(timedelta(seconds=30))

with subtest("the machine alias warns, and is the machine"):
    t.assertEqual(machine.succeed("hostname").strip(), "server")
    t.assertEqual(machine.name, "server")

with subtest("connected = False: the next connect waits for a new backdoor shell"):
    # As after a kexec: the shell goes, init starts a new one.
    server.execute(
        "read -r -a s </proc/$BASHPID/stat; p=${s[3]}; "
        "(sleep 2; kill -9 $p) >/dev/null 2>&1 &"
    )
    server.connected = False
    t.assertFalse(server.connected)
    t.assertTrue(server.booted)
    server.connect()
    t.assertTrue(server.connected)
    t.assertEqual(server.succeed("echo alive"), "alive\n")
    t.assertEqual(server.pid, pid)

with subtest("shut down: neither booted nor connected, no pid"):
    server.shutdown()
    t.assertFalse(server.booted)
    t.assertFalse(server.connected)
    t.assertIsNone(server.pid)

with subtest("state_dir can be moved while the machine is down, not while it runs"):
    moved = server.tmp_dir / "moved-state"
    server.state_dir = moved
    t.assertEqual(server.state_dir, moved)
    t.assertEqual(server.shared_dir.parent, moved)
    (server.shared_dir / "second.txt").write_text("second boot\n")
    server.start()
    t.assertEqual(server.succeed("cat /tmp/shared/second.txt"), "second boot\n")
    t.assertTrue(any(moved.iterdir()))
    try:
        server.state_dir = server.tmp_dir / "elsewhere"
    except ValueError as e:
        log.info(f"moving a running machine's state: {e}")
    else:
        raise Exception("state_dir was moved while the machine runs")
    t.assertEqual(server.state_dir, moved)
