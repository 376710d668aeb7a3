# nodes: machine=tiny
# timeout: 400
# expect: pass
# A command that leaves a long-lived background *subshell* (stdout and
# stderr redirected, as nixpkgs asks) returns at once, and `timeout=` bounds
# it anyway. nixpkgs only needs the command's stdout closed.
import time

start_all()
machine.succeed("true")

t0 = time.monotonic()
machine.succeed("(sleep 60; true) >/dev/null 2>&1 &", timeout=30)
t.assertLess(time.monotonic() - t0, 20)

t0 = time.monotonic()
machine.execute("(while sleep 1; do :; done) >/dev/null 2>&1 &", timeout=10)
t.assertLess(time.monotonic() - t0, 20)
machine.succeed("echo still responsive")

# A coproc and a process substitution are asynchronous subshells too.
t0 = time.monotonic()
machine.succeed("coproc { sleep 60; } >/dev/null 2>&1", timeout=30)
t.assertLess(time.monotonic() - t0, 20)
t0 = time.monotonic()
machine.succeed("echo x > >(sleep 60 >/dev/null 2>&1)", timeout=30)
t.assertLess(time.monotonic() - t0, 20)
