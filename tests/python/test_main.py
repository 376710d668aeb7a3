"""``python3 -m nix_vmtest`` as the driver starts it: a child process on an
inherited socketpair fd, against the fake driver."""

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from tests.python.fake_driver import PYTHON_DIR, Err, FakeDriver, NoReply


def run_client(script: str, machines=None, interactive: bool = False, stdin: str = "",
               setup=None, timeout: int = 30):
    parent, child = socket.socketpair()
    fake = FakeDriver(machines=machines, sock=parent)
    if setup:
        setup(fake)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "test-script.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(script))
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR, NIX_VMTEST_FD=str(child.fileno()),
                   NIX_VMTEST_SCRIPT=path, NIX_VMTEST_INTERACTIVE="1" if interactive else "0")
        proc = subprocess.run([sys.executable, "-u", "-m", "nix_vmtest"], env=env,
                              pass_fds=[child.fileno()], input=stdin, capture_output=True,
                              text=True, timeout=timeout)
        child.close()
        fake.done.wait(5)
        fake.close()
        return proc, fake, path


def failure_report(fake) -> str:
    """The failure report: the last log message (it goes to the log, not to
    stderr, so that it comes after everything the script logged)."""
    return fake.of("log")[-1]["args"]["message"]


def _state(pid: int) -> str:
    """A process's state letter (`R` running, `S` asleep, ...), from
    /proc; `?` where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class MainProcess(unittest.TestCase):
    def assertMarked(self, report: str) -> None:
        for line in report.split("\n"):
            self.assertTrue(line.startswith("!!! "), f"unmarked line {line!r} in:\n{report}")

    def test_success_exit_0(self) -> None:
        proc, fake, _ = run_client("""\
            start_all()
            machine.succeed("true")
            server.wait_for_unit("multi-user.target")
            """, machines=["server"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(fake.ops(exclude_logs=True)[0], "hello")
        self.assertEqual(fake.ops(exclude_logs=True)[1:],
                         ["start", "execute", "wait_for_unit", "is_up"])

    def test_machine_alias_warns_on_stderr_as_nixpkgs(self) -> None:
        proc, fake, _ = run_client("""\
            machine.succeed("true")
            machine.succeed("true")
            server.succeed("true")
            """, machines=["server"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr.count("??? Warning (UserWarning): invoking 'QemuMachine.succeed' "
                                           "is deprecated: It's deprecated to use the `machine` variable "
                                           "when the only machine is called server. This behavior will "
                                           "no longer work in NixOS 27.05.\n"), 1, proc.stderr)
        self.assertIn("nix_vmtest/machine.py", proc.stderr)

    def test_assertion_traceback_shows_script_line(self) -> None:
        proc, fake, path = run_client("""\
            def helper():
                machine.succeed("false")

            machine.succeed("true")
            helper()
            """, setup=lambda f: f.commands.update({"false": (1, b"")}))
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(proc.stderr, "")
        err = failure_report(fake)
        self.assertMarked(err)
        self.assertTrue(err.startswith("!!! Traceback (most recent call last):\n"), err)
        self.assertIn(f'!!!   File "{path}", line 5, in <module>', err)
        self.assertIn(f'!!!   File "{path}", line 2, in helper', err)
        self.assertIn('!!!     machine.succeed("false")', err)
        self.assertTrue(err.endswith(
            "\n!!! RequestedAssertionFailed: command `false` failed (exit code 1)"), err)
        self.assertNotIn("nix_vmtest/machine.py", err)  # trimmed to the script's frames

    def test_plain_exception_and_driver_error(self) -> None:
        # Exit status 1 whatever the script raised, as nixpkgs' driver
        # (sys.exit(1), or Python's own 1 for an uncaught exception).
        proc, fake, path = run_client("x = 1\nmachine.wait_for_unit('a')\n",
                                      setup=lambda f: f.handlers.update(
                                          {"wait_for_unit": lambda r: Err("machine", "QEMU died\nconsole tail")}))
        self.assertEqual(proc.returncode, 1)
        err = failure_report(fake)
        self.assertMarked(err)
        self.assertIn(f'!!!   File "{path}", line 2, in <module>', err)
        self.assertIn("!!! MachineError: QEMU died\n!!! console tail", err)

        # nixpkgs lets other exceptions through unmarked; here every failure
        # report is marked, so one filter finds them all.
        proc, fake, path = run_client("\n\n{}['k']\n")
        self.assertEqual(proc.returncode, 1)
        err = failure_report(fake)
        self.assertMarked(err)
        self.assertIn(f'!!!   File "{path}", line 3, in <module>', err)
        self.assertIn("!!! KeyError: 'k'", err)

    def test_syntax_error(self) -> None:
        proc, fake, path = run_client("x = 1\nif x\n")
        self.assertEqual(proc.returncode, 1)
        err = failure_report(fake)
        self.assertMarked(err)
        self.assertIn(f'File "{path}", line 2', err)
        self.assertIn("SyntaxError", err)

    def test_report_goes_to_stderr_when_the_driver_is_gone(self) -> None:
        def setup(fake):
            def gone(req):
                fake.server_sock.shutdown(socket.SHUT_RDWR)
                return NoReply()

            fake.handlers["execute"] = gone

        proc, _, _ = run_client("machine.succeed('x')\n", setup=setup)
        self.assertEqual(proc.returncode, 1)
        self.assertTrue(proc.stderr.startswith("!!! Traceback (most recent call last):\n"),
                        proc.stderr)
        self.assertMarked(proc.stderr.rstrip("\n"))
        self.assertIn("ProtocolError: lost the connection to the driver", proc.stderr)

    def test_print_goes_to_the_driver_in_order_with_the_log(self) -> None:
        # nixpkgs runs the script in its own process: print() reaches its
        # stdout. Here sys.stdout sends a `stdout` op, in order with the log
        # ops; fd 1 (subprocesses) is the child's stdout, which the driver
        # forwards to its stdout too.
        proc, fake, _ = run_client("""\
            import subprocess, sys
            log.info("one")
            print("two", 2)
            log.info("three")
            sys.stdout.buffer.write(b"four\\n")
            print("five", end="", flush=True)
            subprocess.run(["echo", "from a subprocess"], check=True)
            with subtest("s"):
                print("in a subtest", file=sys.stdout)
            """)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        seen = [(r["op"], r["args"].get("message", r["args"].get("text")))
                for r in fake.requests if r["op"] in ("log", "stdout")]
        printed = [r["args"]["text"] for r in fake.of("stdout")]
        self.assertEqual("".join(printed), "two 2\nfour\nfivein a subtest\n")
        self.assertEqual([x for x in seen if x[0] == "log" or x[1] in ("two", "four\n")][:4], [
            ("log", "one"), ("stdout", "two"), ("log", "three"), ("stdout", "four\n")])
        self.assertEqual(proc.stdout, "from a subprocess\n")
        self.assertEqual(proc.stderr, "")

    def test_sys_exit_code_kept(self) -> None:
        proc, _, _ = run_client("import sys\nsys.exit(3)\n")
        self.assertEqual(proc.returncode, 3)

    def test_subtest_failure_reports_error(self) -> None:
        proc, fake, _ = run_client("""\
            with subtest("one"):
                t.assertEqual(1, 2)
            """)
        self.assertEqual(proc.returncode, 1)
        (end,) = fake.of("subtest_end")
        self.assertIn("1 != 2", end["args"]["error"])
        # nixpkgs' line, logged in the subtest (before it ends), then the report.
        ops = [(r["op"], r["args"].get("message")) for r in fake.requests
               if r["op"] in ("log", "subtest_end")]
        self.assertEqual(ops[:2], [("log", '!!! Test "one" failed with error: "1 != 2"'),
                                   ("subtest_end", None)])
        self.assertMarked(failure_report(fake))
        self.assertIn("!!! RequestedAssertionFailed: 1 != 2", failure_report(fake))

    def test_interactive_repl(self) -> None:
        proc, fake, _ = run_client("machine.succeed('from-script')\n", interactive=True,
                                   stdin="machine.succeed('from-repl')\nprint('OUT', 1 + 1)\n"
                                         "machine.fail('nope')\ntest_script()\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("test_script()", proc.stderr)  # the banner names it
        self.assertIn("OUT 2", proc.stdout)
        # a failing call prints its error and the session goes on
        self.assertIn("command `nope` unexpectedly succeeded", proc.stderr)
        cmds = [r["args"]["command"] for r in fake.of("execute")]
        self.assertEqual(cmds, ["from-repl", "nope", "from-script"])

    def test_repl_ctrl_c_interrupts_the_call_not_the_session(self) -> None:
        import signal
        import threading

        parent, child = socket.socketpair()
        fake = FakeDriver(sock=parent)
        started = threading.Event()

        def hold(req):
            started.set()
            return NoReply()

        def cancel(req):
            fake.send_reply(req["args"]["id"], Err("cancelled", "wait_for_unit was interrupted"))
            return NoReply()

        fake.handlers["wait_for_unit"] = hold
        fake.handlers["cancel"] = cancel
        # PYTHONFAULTHANDLER: a client that hangs is sent SIGABRT below,
        # and its stderr then says where it was.
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR, NIX_VMTEST_FD=str(child.fileno()),
                   NIX_VMTEST_SCRIPT="", NIX_VMTEST_INTERACTIVE="1", PYTHONFAULTHANDLER="1")
        # Started with SIGINT ignored, as a driver started with `&` by a
        # non-interactive shell (CI) or with nohup has it: the REPL makes
        # Ctrl-C interrupt the call all the same.
        proc = subprocess.Popen([sys.executable, "-u", "-m", "nix_vmtest"], env=env,
                                pass_fds=[child.fileno()], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        child.close()
        try:
            proc.stdin.write("machine.wait_for_unit('x')\n")
            proc.stdin.flush()
            self.assertTrue(started.wait(10))
            # Ctrl-C while the call waits for its reply: the client sent the
            # request, and is asleep (in its read) once it is there; a busy
            # host may take a while to get it there.
            time.sleep(0.2)
            deadline = time.monotonic() + 10
            while _state(proc.pid) != "S" and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate("print('still', 'alive')\n", timeout=20)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                out, err = proc.communicate(timeout=10)
                self.fail(f"the REPL did not go on after Ctrl-C; its stderr:\n{err}")
        finally:
            if proc.poll() is None:
                proc.kill()
            fake.close()
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("KeyboardInterrupt", err)
        self.assertIn("still alive", out)
        self.assertEqual(fake.ops(exclude_logs=True), ["hello", "wait_for_unit", "cancel"])


if __name__ == "__main__":
    unittest.main()
