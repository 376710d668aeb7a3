import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from tests.python.fake_driver import PYTHON_DIR

from nix_vmtest.check import check_script, main, prelude


def run_cli(source: str, machines: str):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(source))
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "nix_vmtest.check", "--machines", machines, f.name],
                              env=dict(os.environ, PYTHONPATH=PYTHON_DIR), capture_output=True, text=True)
        return proc, f.name, time.monotonic() - t0
    finally:
        os.unlink(f.name)


class CheckCli(unittest.TestCase):
    def test_ok_script(self) -> None:
        proc, _, elapsed = run_cli("""\
            import json
            from os import path as p
            start_all()
            server.wait_for_unit("nginx")
            client.succeed("curl server")
            vlan1.block(client)
            vlan12.heal()
            for i, (a, b) in enumerate([(1, 2)]):
                print(i, a, b, p, json)
            def f(x, *args, y=1, **kw):
                global g
                g = x
                return [z for z in args if z] + [w := 3, w]
            class C:
                pass
            try:
                pass
            except Exception as e:
                print(e)
            with open("/dev/null") as fh:
                print(fh)
            with subtest("s"):
                t.assertTrue(True)
            match 1:
                case [q, *rest]:
                    print(q, rest)
                case {"k": v, **others}:
                    print(v, others)
                case str() as s:
                    print(s)
            print(machines, vlans, driver, log, os, retry, polling_condition, create_machine,
                  serial_stdout_on, serial_stdout_off, join_all, test_script, run_tests)
            """, "client,server")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr, "")
        self.assertLess(elapsed, 5)

    def test_unknown_name(self) -> None:
        proc, path, _ = run_cli("""\
            start_all()

            servr.succeed("true")
            def f():
                return clinet
            """, "server,client")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(proc.stderr.splitlines(), [
            f"{path}:3: name 'servr' is not defined (machines: client, server)",
            f"{path}:5: name 'clinet' is not defined (machines: client, server)",
        ])

    def test_syntax_error_line(self) -> None:
        proc, path, _ = run_cli("x = 1\n\nif x\n    pass\n", "a")
        self.assertEqual(proc.returncode, 1)
        self.assertRegex(proc.stderr.strip(), rf"^{path}:3: syntax error: .+$")

    def test_machine_alias(self) -> None:
        self.assertEqual(check_script("machine.succeed('x')\n", "s.py", ["only"]), [])
        self.assertEqual(check_script("machine.succeed('x')\n", "s.py", ["a", "b"]),
                         ["s.py:1: name 'machine' is not defined (machines: a, b)"])
        self.assertEqual(check_script("web_1.start()\n", "s.py", ["web-1"]), [])

    def test_machine_method_typo(self) -> None:
        self.assertEqual(
            check_script("server.start()\nserver.succed('x')\nprint(server.name)\n", "s.py", ["server"]),
            ["s.py:2: machine 'server' has no method 'succed' (did you mean 'succeed'?)"])
        # rebound names and attributes the script sets itself are left alone
        self.assertEqual(check_script("server = 1\nserver.whatever\n", "s.py", ["server"]), [])
        self.assertEqual(check_script("machine.x = 1\nmachine.x\n", "s.py", ["m"]), [])

    def test_star_import_disables_name_check(self) -> None:
        self.assertEqual(check_script("from x import *\nfoo()\n", "s.py", ["a"]), [])

    def test_main_function(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
            f.write("a.start()\n")
            f.flush()
            self.assertEqual(main(["--machines", "a", f.name]), 0)

    def test_prelude(self) -> None:
        text = prelude(["web-1", "db"], [2, 1])
        self.assertIn("web_1: _Machine", text)
        self.assertIn("db: _Machine", text)
        self.assertIn("vlan1: _Vlan", text)
        self.assertNotIn("machine: _Machine", text)
        self.assertIn("machine: _Machine", prelude(["one"]))


if __name__ == "__main__":
    unittest.main()
