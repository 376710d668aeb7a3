# nodes: machine=tiny
# expect: fail
# expect-stdout: printed by the script
# expect-stdout: printed by a subprocess of the script
# expect-stdout: wait: machine machine: `test -e /nowhere` to succeed timed out after 2 seconds
# expect-no-stderr: printed by the script
# expect-no-stderr: printed by a subprocess of the script
# expect-stderr: machine: command `sleep 30` timed out after 1 seconds and was killed
# expect-no-log: pipefail
# expect-stderr: !!! Test "breaks" failed with error: "command `exit 3` failed (exit code 3)"
# expect-stderr: !!! Traceback (most recent call last):
# expect-stderr: failure_report.py", line 38, in <module>
# expect-stderr: !!!     machine.succeed("exit 3")
# expect-stderr: !!! RequestedAssertionFailed: command `exit 3` failed (exit code 3)
# expect-no-log: test script finished in
# junit: name="fine"
# junit: <failure message="command `exit 3` failed (exit code 3)"
# junit-cases: 2
# What a failing script reports, and where, as in nixpkgs' driver: print()
# (and the script's subprocesses) on stdout, the log on stderr; the failed
# subtest's `Test "<name>" failed with error: "<error>"` line and every line
# of the traceback marked `!!! `; no "test script finished in" after a
# failure; waits and timed-out commands named as the script wrote them
# (without the driver's `set -euo pipefail; `).
import subprocess

start_all()
print("printed by the script")
subprocess.run(["echo", "printed by a subprocess of the script"], check=True)
try:
    machine.wait_until_succeeds("test -e /nowhere", timeout=2)
except Exception as e:
    print(f"wait: {e}")
machine.execute("sleep 30", timeout=1)
with subtest("fine"):
    machine.succeed("true")
with subtest("breaks"):
    machine.succeed("exit 3")
