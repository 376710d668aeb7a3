import base64
import datetime
import os
import pathlib
import tempfile
import time
import unittest

from tests.python.fake_driver import Err, FakeDriver, WithBytes, make_driver

from nix_vmtest.errors import (
    MachineTimeout,
    PollingConditionError,
    RequestedAssertionFailed,
    Unsupported,
)


def mock_sleep():
    from unittest import mock

    return mock.patch("nix_vmtest.machine.time.sleep")


class MachineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeDriver(machines=["server"])
        self.driver = make_driver(self.fake)
        self.m = self.driver.machines[0]
        self.fake.requests.clear()

    def tearDown(self) -> None:
        self.fake.close()

    def test_execute_args_and_decoding(self) -> None:
        self.fake.commands["cat x"] = (3, b"ok \xff\n")
        self.assertEqual(self.m.execute("cat x"), (3, "ok \ufffd\n"))
        (req,) = self.fake.of("execute")
        self.assertEqual(req["machine"], "server")
        self.assertEqual(req["args"], {"command": "cat x", "check_return": True,
                                       "check_output": True, "timeout": 900})

    def test_execute_check_flags(self) -> None:
        self.fake.commands["c"] = (0, b"out")
        self.assertEqual(self.m.execute("c", check_return=False), (-1, "out"))
        self.assertEqual(self.m.execute("c", check_output=False), (-2, ""))
        self.fake.handlers["execute"] = lambda req: WithBytes({"status": None}, b"x")
        self.assertEqual(self.m.execute("c"), (-1, "x"))
        self.fake.handlers["execute"] = lambda req: WithBytes({"status": None, "timed_out": True}, b"")
        self.assertEqual(self.m.execute("c"), (124, ""))
        self.fake.handlers["execute"] = lambda req: WithBytes({"status": 137, "timed_out": True}, b"")
        self.assertEqual(self.m.execute("c"), (137, ""))

    def test_succeed_concatenates_and_logs(self) -> None:
        self.fake.commands["a"] = (0, b"A\n")
        self.fake.commands["b"] = (0, b"B\n")
        self.assertEqual(self.m.succeed("a", "b"), "A\nB\n")
        self.assertEqual(self.fake.log_lines(), [
            "BEGIN server: must succeed: a", "END", "BEGIN server: must succeed: b", "END"])
        self.assertEqual([r["args"]["timeout"] for r in self.fake.of("execute")], [None, None])

    def test_succeed_failure_message(self) -> None:
        self.fake.commands["false"] = (1, b"oops")
        self.fake.commands["true"] = (0, b"")
        with self.assertRaises(RequestedAssertionFailed) as cm:
            self.m.succeed("true", "false", "true")
        self.assertEqual(str(cm.exception), "command `false` failed (exit code 1)")
        self.assertIsInstance(cm.exception, AssertionError)
        self.assertIn("server: output: oops", self.fake.log_lines())
        self.assertEqual(len(self.fake.of("execute")), 2)  # stops at the failure
        self.assertEqual(self.fake.log_lines()[-1], "END")  # nested block closed

    def test_fail(self) -> None:
        self.fake.commands["false"] = (1, b"e1")
        self.fake.commands["true"] = (0, b"")
        self.assertEqual(self.m.fail("false", timeout=5), "e1")
        self.assertEqual(self.fake.of("execute")[0]["args"]["timeout"], 5)
        with self.assertRaises(RequestedAssertionFailed) as cm:
            self.m.fail("true")
        self.assertEqual(str(cm.exception), "command `true` unexpectedly succeeded")
        self.assertIn("BEGIN server: must fail: true", self.fake.log_lines())

    def test_wait_until_ops(self) -> None:
        self.fake.handlers["wait_until"] = lambda req: WithBytes(None, b"done")
        self.assertEqual(self.m.wait_until_succeeds("x", timeout=7), "done")
        self.assertEqual(self.m.wait_until_fails("y"), "done")
        a, b = self.fake.of("wait_until")
        self.assertEqual(a["args"], {"command": "x", "timeout": 7, "want_success": True})
        self.assertEqual(b["args"], {"command": "y", "timeout": 900, "want_success": False})
        self.assertIn("BEGIN server: waiting for success: x", self.fake.log_lines())
        self.assertIn("BEGIN server: waiting for failure: y", self.fake.log_lines())

    def test_wait_timeout_maps(self) -> None:
        self.fake.handlers["wait_for_unit"] = lambda req: Err("timeout", "action timed out after 3.00 seconds")
        with self.assertRaises(MachineTimeout) as cm:
            self.m.wait_for_unit("nginx.service", timeout=3)
        self.assertIsInstance(cm.exception, RequestedAssertionFailed)
        self.assertEqual(self.fake.of("wait_for_unit")[0]["args"],
                         {"unit": "nginx.service", "user": None, "timeout": 3})

    def test_wait_op_args(self) -> None:
        self.m.wait_for_file("/etc/x")
        self.m.wait_for_open_port(80)
        self.m.wait_for_closed_port(81, addr="1.2.3.4", timeout=3)
        self.m.wait_for_open_unix_socket("/run/s", is_datagram=True)
        self.m.wait_for_console_text("login:")
        args = [(r["op"], r["args"]) for r in self.fake.requests if not r["op"].startswith("log")]
        self.assertEqual(args, [
            ("wait_for_file", {"path": "/etc/x", "timeout": 900}),
            ("wait_for_open_port", {"port": 80, "addr": "localhost", "timeout": 900}),
            ("wait_for_closed_port", {"port": 81, "addr": "1.2.3.4", "timeout": 3}),
            ("wait_for_open_unix_socket", {"addr": "/run/s", "is_datagram": True, "timeout": 900}),
            ("wait_for_console_text", {"regex": "login:", "timeout": None}),
        ])
        self.assertIn("BEGIN server: waiting for TCP port 80 on localhost", self.fake.log_lines())

    def test_systemctl_user(self) -> None:
        self.m.systemctl("start it's", user="alice")
        self.m.systemctl("list-jobs")
        a, b = [r["args"]["command"] for r in self.fake.of("execute")]
        self.assertEqual(a, "su -l alice --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` "
                            "systemctl --user start it\\'s'")
        self.assertEqual(b, "systemctl list-jobs")
        self.m.start_job("a.service")
        self.m.stop_job("a.service", user="bob")
        c, d = [r["args"]["command"] for r in self.fake.of("execute")][2:]
        self.assertEqual(c, "systemctl start a.service")
        self.assertIn("systemctl --user stop a.service", d)

    def test_get_unit_property_and_require_state(self) -> None:
        self.fake.commands['systemctl --no-pager show "x.service" --property="ActiveState"'] = (0, b"ActiveState=active\n")
        self.assertEqual(self.m.get_unit_property("x.service", "ActiveState"), "active")
        self.fake.handlers["get_unit_info"] = lambda req: {"ActiveState": "failed"}
        with self.assertRaises(RequestedAssertionFailed) as cm:
            self.m.require_unit_state("x.service")
        self.assertEqual(str(cm.exception),
                         "Expected unit 'x.service' to to be in state 'active' but it is in state 'failed'")

    def test_send_chars_key_mapping(self) -> None:
        self.m.send_chars("aZ :\n!", delay=None)
        cmds = [r["args"]["command"] for r in self.fake.of("send_monitor_command")]
        self.assertEqual(cmds, ["sendkey a", "sendkey shift-z", "sendkey spc", "sendkey shift-0x27",
                                "sendkey ret", "sendkey shift-0x02"])
        self.assertEqual(self.fake.log_lines(), ["BEGIN server: sending keys 'aZ :\\n!'", "END"])
        self.fake.requests.clear()
        self.m.send_key("ctrl-alt-delete", delay=None)
        self.assertEqual(self.fake.log_lines(), ["BEGIN server: sending key 'ctrl-alt-delete'", "END"])

    def test_copy_from_host_via_shell(self) -> None:
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"\x00secret\n")
            f.flush()
            self.m.copy_from_host_via_shell(f.name, "/etc/s")
        a, b = [r["args"]["command"] for r in self.fake.of("execute")]
        self.assertEqual(a, "mkdir -p $(dirname /etc/s)")
        encoded = base64.b64encode(b"\x00secret\n").decode()
        self.assertEqual(b, f"echo -n {encoded} | base64 -d > /etc/s")

    def test_copy_ops(self) -> None:
        self.m.copy_from_host("rel/file", "/x")
        self.m.copy_from_vm("/var/log/y", "logs")
        self.m.copy_from_machine("/z")
        a, b, c = [(r["op"], r["args"]) for r in self.fake.requests]
        self.assertEqual(a, ("copy_from_host", {"source": os.path.abspath("rel/file"), "target": "/x"}))
        self.assertEqual(b, ("copy_from_machine", {"source": "/var/log/y", "target_dir": "logs"}))
        self.assertEqual(c, ("copy_from_machine", {"source": "/z", "target_dir": ""}))

    def test_lifecycle_ops(self) -> None:
        self.fake.handlers["is_up"] = lambda req: True
        self.m.start()
        self.m.start(allow_reboot=True)
        self.assertTrue(self.m.is_up())
        for name in ("connect", "shutdown", "crash", "reboot", "release", "wait_for_shutdown",
                     "block", "unblock", "console_interact", "shell_interact"):
            getattr(self.m, name)()
        self.assertEqual([(r["op"], r["args"]) for r in self.fake.requests], [
            ("start", {"allow_reboot": False}), ("start", {"allow_reboot": True}), ("is_up", {}),
            ("connect", {}), ("shutdown", {}), ("crash", {}), ("reboot", {}), ("release", {}),
            ("wait_for_shutdown", {}), ("block", {}), ("unblock", {}), ("console_interact", {}),
            ("shell_interact", {})])

    def test_sleep_is_guest_time(self) -> None:
        self.m.sleep(3)
        self.m.sleep(datetime.timedelta(seconds=2))
        self.m.sleep(duration=datetime.timedelta(milliseconds=1500))
        self.m.sleep(secs=0.25)
        self.assertEqual([r["args"]["command"] for r in self.fake.of("execute")],
                         ["sleep 3", "sleep 2", "sleep 1.5", "sleep 0.25"])
        with self.assertRaises(TypeError):
            self.m.sleep()
        with self.assertRaises(TypeError):
            self.m.sleep(1, duration=datetime.timedelta(seconds=1))

    def test_timedelta_everywhere(self) -> None:
        """Every timeout, interval and delay takes a timedelta; the driver
        gets seconds."""
        td = datetime.timedelta
        self.fake.handlers["wait_until"] = lambda req: WithBytes(None, b"")
        self.fake.handlers["next_qmp_event"] = lambda req: {"event": "X"}
        self.m.execute("e", timeout=td(minutes=2))
        self.m.succeed("s", timeout=td(seconds=5))
        self.fake.commands["f"] = (1, b"")
        self.m.fail("f", timeout=td(seconds=6))
        self.m.wait_until_succeeds("w", timeout=td(seconds=7))
        self.m.wait_until_fails("w", timeout=td(seconds=8))
        self.m.wait_for_file("/f", timeout=td(seconds=9))
        self.m.wait_for_open_port(80, timeout=td(seconds=10))
        self.m.wait_for_closed_port(80, timeout=td(seconds=11))
        self.m.wait_for_open_unix_socket("/s", timeout=td(seconds=12))
        self.m.wait_for_console_text("x", timeout=td(seconds=13))
        self.m.wait_for_unit("u", timeout=td(seconds=14))
        self.m.wait_for_qmp_event(lambda e: True, timeout=td(seconds=15))
        timeouts = [(r["op"], r["args"]["timeout"]) for r in self.fake.requests
                    if "timeout" in r["args"]]
        self.assertAlmostEqual(timeouts[-1][1], 15.0, places=1)  # what is left of it
        timeouts[-1] = ("next_qmp_event", 15.0)
        self.assertEqual(timeouts, [
            ("execute", 120.0), ("execute", 5.0), ("execute", 6.0), ("wait_until", 7.0), ("wait_until", 8.0),
            ("wait_for_file", 9.0), ("wait_for_open_port", 10.0), ("wait_for_closed_port", 11.0),
            ("wait_for_open_unix_socket", 12.0), ("wait_for_console_text", 13.0),
            ("wait_for_unit", 14.0), ("next_qmp_event", 15.0)])
        with mock_sleep() as sleep:
            self.m.send_key("a", delay=td(milliseconds=20))
            self.m.send_chars("b", delay=td(milliseconds=30))
        self.assertEqual([c.args for c in sleep.call_args_list], [(0.02,), (0.03,)])
        # The Python-side waits (retry) take it too.
        self.fake.commands["fold -w$(stty -F /dev/tty1 size | awk '{print $2}') /dev/vcs1"] = (0, b"x")
        with mock_sleep():
            with self.assertRaisesRegex(RequestedAssertionFailed, r"\(timeout=0\)"):
                self.m.wait_until_tty_matches("1", "never", timeout=td(0))
        with self.assertRaisesRegex(TypeError, "not str"):
            self.m.execute("x", timeout="10")

    def test_attributes_from_the_driver(self) -> None:
        state = {"booted": True, "connected": False, "pid": 4242, "state_dir": "/t/vm-state-server",
                 "shared_dir": "/t/vm-state-server/shared", "tmp_dir": "/t"}
        self.fake.handlers["status"] = lambda req: dict(state)
        self.assertEqual(self.m.state_dir, pathlib.Path("/t/vm-state-server"))
        self.assertIsInstance(self.m.state_dir, pathlib.Path)
        self.assertEqual(self.m.shared_dir, pathlib.Path("/t/vm-state-server/shared"))
        self.assertEqual(self.m.tmp_dir, pathlib.Path("/t"))
        self.assertIs(self.m.booted, True)
        self.assertIs(self.m.connected, False)
        self.assertEqual(self.m.pid, 4242)
        state["pid"] = None
        self.assertIsNone(self.m.pid)
        self.assertEqual({r["machine"] for r in self.fake.of("status")}, {"server"})
        self.fake.requests.clear()
        self.m.connected = False
        self.m.connected = True
        self.m.state_dir = pathlib.Path("rel/dir")
        self.m.state_dir = "/abs/dir"
        self.assertEqual([(r["op"], r["args"]) for r in self.fake.requests], [
            ("disconnect", {}), ("connect", {}),
            ("set_state_dir", {"path": os.path.abspath("rel/dir")}),
            ("set_state_dir", {"path": "/abs/dir"})])
        with self.assertRaises(AttributeError):
            self.m.pid = 3  # type: ignore[misc]

    def test_switch_root_reconnects(self) -> None:
        self.fake.handlers["wait_for_unit"] = lambda req: None
        self.m.switch_root()
        self.assertEqual(self.fake.ops(exclude_logs=True),
                         ["wait_for_unit", "execute", "disconnect", "connect"])

    def test_tty(self) -> None:
        self.fake.commands["fold -w$(stty -F /dev/tty1 size | awk '{print $2}') /dev/vcs1"] = (0, b"login: ")
        self.assertEqual(self.m.get_tty_text("1"), "login: ")
        self.m.wait_until_tty_matches("1", "log.n")
        self.m.dump_tty_contents("2")
        self.assertEqual(self.fake.of("execute")[-1]["args"]["command"], "fold -w 80 /dev/vcs2 | systemd-cat")

    def test_qmp_event(self) -> None:
        events = iter([{"event": "A"}, {"event": "STOP"}])
        self.fake.handlers["next_qmp_event"] = lambda req: next(events)
        self.assertEqual(self.m.wait_for_qmp_event(lambda e: e["event"] == "STOP"), {"event": "STOP"})
        self.fake.handlers["next_qmp_event"] = lambda req: Err("timeout", "no event")
        with self.assertRaises(TimeoutError):
            self.m.wait_for_qmp_event(lambda e: True, timeout=1)

    def test_forward_port(self) -> None:
        self.m.forward_port(2222, 22)
        self.assertEqual(self.fake.of("send_monitor_command")[0]["args"],
                         {"command": "hostfwd_add tcp::2222-:22"})

    def test_windows(self) -> None:
        self.fake.handlers["execute"] = lambda req: WithBytes({"status": 0}, b"xterm\nroot\n")
        self.assertEqual(self.m.get_window_names(), ["xterm", "root"])
        self.m.wait_for_window("xterm")
        self.m.wait_for_x()

    def test_ocr(self) -> None:
        import shutil
        import subprocess
        import zlib, struct

        def png(path: str) -> None:
            # a 40x20 white image; tesseract reads it (and finds no text)
            w, h = 40, 20
            raw = b"".join(b"\x00" + b"\xff" * (w * 3) for _ in range(h))
            def chunk(t, d):
                return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
            data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
            with open(path, "wb") as f:
                f.write(data)

        def shot(req):
            png(req["args"]["filename"])
            return req["args"]["filename"]

        self.fake.handlers["screenshot"] = shot
        if shutil.which("tesseract") is None:
            with self.assertRaises(Unsupported) as cm:
                self.m.get_screen_text()
            self.assertIn("tesseract", str(cm.exception))
            self.fail("tesseract is not installed (.ci/install-deps installs tesseract-ocr)")
        self.assertIsInstance(self.m.get_screen_text(), str)
        self.assertGreaterEqual(len(self.m.get_screen_text_variants()), 1)
        self.assertTrue(self.fake.of("screenshot")[0]["args"]["filename"].startswith("/"))
        old = os.environ["PATH"]
        os.environ["PATH"] = "/nonexistent"
        try:
            with self.assertRaises(Unsupported) as cm:
                self.m.get_screen_text()
            self.assertIn("tesseract", str(cm.exception))
        finally:
            os.environ["PATH"] = old


class PollingInMachine(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeDriver(machines=["server"])
        self.driver = make_driver(self.fake)
        self.m = self.driver.machines[0]

    def tearDown(self) -> None:
        self.fake.close()

    def test_condition_checked_before_commands(self) -> None:
        ok = {"v": True}

        @self.driver.polling_condition(seconds_interval=0)
        def healthy():
            "server is healthy"
            return ok["v"]

        with healthy:
            self.m.succeed("true")
            ok["v"] = False
            time.sleep(0.01)
            with self.assertRaises(PollingConditionError) as cm:
                self.m.execute("true")
            self.assertEqual(str(cm.exception), "Polling condition failed: server is healthy")
            with self.assertRaises(PollingConditionError):
                self.m.send_monitor_command("info status")
        # inactive outside the block
        self.m.execute("true")

    def test_waits_try_once_while_condition_active(self) -> None:
        # With a polling condition, a wait is `retry` over one-try ops
        # (`once`); the condition is checked before each try.
        tries = {"n": 0}
        checks = {"n": 0}

        def flaky(req):
            tries["n"] += 1
            return WithBytes({"done": tries["n"] >= 2, "status": 0}, b"out")

        def cond():
            checks["n"] += 1
            return True

        self.fake.handlers["wait_for_file"] = flaky
        self.fake.handlers["wait_until"] = flaky
        with self.driver.polling_condition(cond, seconds_interval=0), mock_sleep():
            self.m.wait_for_file("/x", timeout=10)
            tries["n"] = 0
            self.assertEqual(self.m.wait_until_fails("y", timeout=10), "out")
        self.assertGreaterEqual(checks["n"], 4)
        (a, b), (c, d) = self.fake.of("wait_for_file"), self.fake.of("wait_until")
        self.assertEqual(a["args"], {"path": "/x", "timeout": 10, "once": True})
        self.assertEqual(b["args"], a["args"])
        self.assertEqual(c["args"], {"command": "y", "want_success": False, "timeout": 10,
                                     "once": True})
        self.assertEqual(self.fake.of("execute"), [])
        # Without one, the driver does the whole wait.
        self.m.wait_for_file("/x")
        self.assertEqual(self.fake.of("wait_for_file")[-1]["args"], {"path": "/x", "timeout": 900})

    def test_waits_keep_their_errors_while_condition_active(self) -> None:
        # A try's error (a failed unit) is raised as it is; a wait whose
        # condition never holds ends as retry ends, as in nixpkgs.
        self.fake.handlers["wait_for_unit"] = lambda req: Err(
            "assertion", 'unit "u" reached state "failed"')
        self.fake.handlers["wait_for_open_port"] = lambda req: {"done": False}
        with self.driver.polling_condition(lambda: True, seconds_interval=0):
            with self.assertRaises(RequestedAssertionFailed) as cm:
                self.m.wait_for_unit("u")
            self.assertEqual(str(cm.exception), 'unit "u" reached state "failed"')
            with self.assertRaises(RequestedAssertionFailed) as cm:
                self.m.wait_for_open_port(80, timeout=0)
            self.assertNotIsInstance(cm.exception, MachineTimeout)
            self.assertEqual(str(cm.exception)[:22], "action timed out after")
        self.assertEqual(self.fake.of("wait_for_unit")[0]["args"],
                         {"unit": "u", "user": None, "timeout": 900, "once": True})
        self.assertEqual(len(self.fake.of("wait_for_open_port")), 1)

    def test_condition_not_rechecked_within_interval(self) -> None:
        n = {"v": 0}

        def cond():
            n["v"] += 1

        with self.driver.polling_condition(cond, seconds_interval=60):
            for _ in range(5):
                self.m.execute("true")
        self.assertEqual(n["v"], 1)


if __name__ == "__main__":
    unittest.main()
