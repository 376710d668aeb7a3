# nodes: machine=tiny
# timeout: 400
# expect: pass
# A command that leaves a long-lived background *subshell* (stdout and
# stderr redirected, as nixpkgs asks) returns at once, and `timeout=` bounds
# it anyway. nixpkgs only needs the command's stdout closed.
import time

start_all()
machine.succeed("true")


def returns_at_once(method, command, timeout):
    """Runs machine.<method>(command) and checks it did not wait for the
    background subshell (which lives 60 s or forever)."""
    t0 = time.monotonic()
    getattr(machine, method)(command, timeout=timeout)
    t.assertLess(time.monotonic() - t0, 20, command)


returns_at_once("succeed", "(sleep 60; true) >/dev/null 2>&1 &", 30)
returns_at_once("execute", "(while sleep 1; do :; done) >/dev/null 2>&1 &", 10)
machine.succeed("echo still responsive")

# A coproc and a process substitution are asynchronous subshells too.
returns_at_once("succeed", "coproc { sleep 60; } >/dev/null 2>&1", 30)
returns_at_once("succeed", "echo x > >(sleep 60 >/dev/null 2>&1)", 30)
