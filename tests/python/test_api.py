"""Every name of driver-api.md exists with its arguments and defaults; the
.pyi stubs cover the whole API and type-check a script with mypy."""

import ast
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tests.python.fake_driver import PYTHON_DIR, FakeDriver, make_driver

from nix_vmtest.machine import Machine

E = inspect.Parameter.empty
# driver-api.md "Machine": name -> [(param, default)] (E: required; "*": *args)
MACHINE_API = {
    "execute": [("command", E), ("check_return", True), ("check_output", True), ("timeout", 900)],
    "succeed": [("commands", "*"), ("timeout", None)],
    "fail": [("commands", "*"), ("timeout", None)],
    "wait_until_succeeds": [("command", E), ("timeout", 900)],
    "wait_until_fails": [("command", E), ("timeout", 900)],
    "sleep": [("secs", None), ("duration", None)],  # `duration`: later nixpkgs' name
    "wait_for_file": [("filename", E), ("timeout", 900)],
    "wait_for_open_port": [("port", E), ("addr", "localhost"), ("timeout", 900)],
    "wait_for_closed_port": [("port", E), ("addr", "localhost"), ("timeout", 900)],
    "wait_for_open_unix_socket": [("addr", E), ("is_datagram", False), ("timeout", 900)],
    "wait_for_console_text": [("regex", E), ("timeout", None)],
    "wait_for_shutdown": [],
    "systemctl": [("q", E), ("user", None)],
    "wait_for_unit": [("unit", E), ("user", None), ("timeout", 900)],
    "get_unit_info": [("unit", E), ("user", None)],
    "get_unit_property": [("unit", E), ("property", E), ("user", None)],
    "require_unit_state": [("unit", E), ("require_state", "active")],
    "start_job": [("jobname", E), ("user", None)],
    "stop_job": [("jobname", E), ("user", None)],
    "copy_from_host": [("source", E), ("target", E)],
    "copy_from_host_via_shell": [("source", E), ("target", E)],
    "copy_from_machine": [("source", E), ("target_dir", "")],
    "copy_from_vm": [("source", E), ("target_dir", "")],
    "start": [("allow_reboot", False)],
    "connect": [], "shutdown": [], "crash": [], "reboot": [], "is_up": [], "release": [],
    "switch_root": [],
    "send_monitor_command": [("command", E)],
    "wait_for_qmp_event": [("event_filter", E), ("timeout", 600)],
    "send_key": [("key", E), ("delay", 0.01), ("log", True)],
    "send_chars": [("chars", E), ("delay", 0.01)],
    "send_console": [("chars", E)],
    "shell_interact": [("address", None)],
    "console_interact": [],
    "get_tty_text": [("tty", E)],
    "wait_until_tty_matches": [("tty", E), ("regexp", E), ("timeout", 900)],
    "dump_tty_contents": [("tty", E)],
    "get_console_log": [],
    "screenshot": [("filename", E)],
    "get_screen_text": [], "get_screen_text_variants": [],
    "wait_for_text": [("regex", E), ("timeout", 900)],
    "wait_for_x": [("timeout", 900)],
    "get_window_names": [],
    "wait_for_window": [("regexp", E), ("timeout", 900)],
    "forward_port": [("host_port", 8080), ("guest_port", 80)],
    "block": [], "unblock": [],
}


def params(fn):
    out = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        out.append((p.name, "*" if p.kind is p.VAR_POSITIONAL else p.default))
    return out


class Api(unittest.TestCase):
    def test_machine_methods(self) -> None:
        for name, expected in MACHINE_API.items():
            with self.subTest(name=name):
                self.assertEqual(params(getattr(Machine, name)), expected)

    def test_globals_signatures(self) -> None:
        fake = FakeDriver()
        try:
            g = make_driver(fake).make_globals()
        finally:
            fake.close()
        sig = lambda f: str(inspect.signature(f))
        self.assertEqual([(p.name, p.default) for p in inspect.signature(g["retry"]).parameters.values()],
                         [("fn", E), ("timeout_seconds", 900), ("timeout", None)])
        self.assertEqual([(p.name, p.default, p.kind.name) for p in
                          inspect.signature(g["polling_condition"]).parameters.values()],
                         [("fun", None, "POSITIONAL_OR_KEYWORD"),
                          ("seconds_interval", 2.0, "KEYWORD_ONLY"),
                          ("description", None, "KEYWORD_ONLY")])
        self.assertEqual([(p.name, p.default, p.kind.name) for p in
                          inspect.signature(g["create_machine"]).parameters.values()],
                         [("start_command", E, "POSITIONAL_OR_KEYWORD"),
                          ("name", None, "KEYWORD_ONLY"),
                          ("keep_machine_state", False, "KEYWORD_ONLY")])
        for name in ("start_all", "join_all", "test_script", "run_tests",
                     "serial_stdout_on", "serial_stdout_off"):
            self.assertEqual(list(inspect.signature(g[name]).parameters), [], name)
        self.assertTrue(hasattr(g["log"], "nested"))
        self.assertIsInstance(g["t"], unittest.TestCase)

    def test_stub_covers_machine(self) -> None:
        with open(os.path.join(PYTHON_DIR, "nix_vmtest", "machine.pyi")) as f:
            tree = ast.parse(f.read())
        (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Machine"]
        stubbed = {}
        for n in cls.body:
            if isinstance(n, ast.FunctionDef):
                a = n.args
                names = ([x.arg for x in a.args[1:]] + ([a.vararg.arg] if a.vararg else [])
                         + [x.arg for x in a.kwonlyargs])
                stubbed[n.name] = names
        for name, expected in MACHINE_API.items():
            with self.subTest(name=name):
                self.assertIn(name, stubbed)
                self.assertEqual(sorted(stubbed[name]), sorted(p for p, _ in expected))
        public = {n for n, v in vars(Machine).items() if callable(v) and not n.startswith("_")}
        self.assertEqual(public - set(stubbed), set())

    def test_starting_methods_are_marked(self) -> None:
        # The methods that connect to, and so start, their machine (as in
        # nixpkgs), marked `@_starts_machine`. The driver starts a machine
        # early when the script's first statement calls one of these
        # (src/script/early.rs reads the marks from machine.py's source).
        expected = {
            "succeed", "fail", "execute", "wait_for_unit", "wait_until_succeeds",
            "wait_until_fails", "wait_for_file", "wait_for_open_port", "wait_for_closed_port",
            "wait_for_open_unix_socket", "systemctl", "get_unit_info", "connect",
            "copy_from_host", "copy_from_machine", "sleep", "start_job", "stop_job",
        }
        marked = {n for n, v in vars(Machine).items() if getattr(v, "starts_machine", False)}
        self.assertEqual(marked, expected)
        # ...and the driver finds the same: each mark is the line right
        # above its `def`.
        with open(os.path.join(PYTHON_DIR, "nix_vmtest", "machine.py")) as f:
            lines = f.read().splitlines()
        found = {
            nxt[len("    def "):].split("(")[0]
            for line, nxt in zip(lines, lines[1:])
            if line.rstrip() == "    @_starts_machine" and nxt.startswith("    def ")
        }
        self.assertEqual(found, expected)
        self.assertEqual(sum(l.rstrip() == "    @_starts_machine" for l in lines), len(expected))

    def test_mypy_on_stubs_and_a_script(self) -> None:
        if subprocess.run([sys.executable, "-c", "import mypy"], capture_output=True).returncode == 0:
            mypy = [sys.executable, "-m", "mypy"]
        elif shutil.which("mypy"):
            mypy = [str(shutil.which("mypy"))]
        else:
            if os.environ.get("NIX_VMTEST_SKIP_MYPY") == "1":
                self.skipTest("NIX_VMTEST_SKIP_MYPY=1: mypy check skipped ON PURPOSE")
            self.fail("mypy is not installed: `apt-get install mypy` or `python3 -m pip install mypy` "
                      "(.ci must install it), or set NIX_VMTEST_SKIP_MYPY=1 to skip this test on purpose")
        from nix_vmtest.check import prelude

        script = prelude(["server", "client"], [1]) + (
            "start_all()\n"
            "out: str = client.succeed('curl http://server/')\n"
            "status, text = server.execute('true', timeout=None)\n"
            "t.assertIn('x', out)\n"
            "with subtest('s'):\n"
            "    server.wait_for_unit('nginx', timeout=10)\n"
            "@polling_condition(seconds_interval=5)\n"
            "def alive() -> None:\n"
            "    server.succeed('true')\n"
            "with alive:\n"
            "    vlan1.partition([server], [client])\n"
            "alive.wait(10)\n"
            "retry(lambda last: True)\n"
            "import datetime\n"
            "server.wait_for_file('/f', timeout=datetime.timedelta(seconds=3))\n"
            "server.succeed('true', timeout=datetime.timedelta(minutes=1))\n"
            "server.sleep(datetime.timedelta(seconds=1))\n"
            "alive.wait(datetime.timedelta(seconds=10))\n"
            "retry(lambda last: True, timeout=datetime.timedelta(seconds=5))\n"
            "p: Path = server.state_dir / 'x'\n"
            "q: Path = server.shared_dir / server.tmp_dir\n"
            "up: bool = server.booted and server.connected\n"
            "server.connected = False\n"
            "server.state_dir = client.state_dir\n"
            "pid: Optional[int] = server.pid\n"
            "for m in machines_qemu:\n"
            "    m.log('x')\n"
        )
        script = "from pathlib import Path\nfrom typing import Optional\n" + script
        bad = script + ("n: int = server.succeed('true')\nserver.wait_for_unit(3)\n"
                        "server.wait_for_file('/f', timeout='3')\nserver.pid = 3\n")
        env = dict(os.environ, MYPYPATH=PYTHON_DIR)
        with tempfile.TemporaryDirectory() as d:
            good_path, bad_path = os.path.join(d, "good.py"), os.path.join(d, "bad.py")
            for path, text in ((good_path, script), (bad_path, bad)):
                with open(path, "w") as f:
                    f.write(text)
            cache = ["--cache-dir", os.path.join(d, "cache")]
            r = subprocess.run([*mypy, *cache, "--strict",
                                os.path.join(PYTHON_DIR, "nix_vmtest")],
                               env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            r = subprocess.run([*mypy, *cache, good_path],
                               env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            r = subprocess.run([*mypy, *cache, bad_path],
                               env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("Incompatible types in assignment", r.stdout)
            self.assertIn('incompatible type "int"; expected "str"', r.stdout)
            self.assertIn('Argument "timeout" to "wait_for_file"', r.stdout)
            self.assertIn('Property "pid" defined in "Machine" is read-only', r.stdout)


if __name__ == "__main__":
    unittest.main()
