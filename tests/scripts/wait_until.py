# nodes: machine=tiny
# expect: pass
# expect-log: waiting for success: test -e /tmp/ready
# expect-log: waiting for failure: test -e /tmp/ready
# expect-log: waiting for file '/tmp/later'
# expect-log: machine # try-runs-past-the-deadline
# expect-no-log: Killed
# expect-no-log: __vmt_
# wait_until_succeeds / wait_until_fails / wait_for_file against things that
# change in the background, and their timeouts. A try killed at the
# deadline leaves no note of the shell's in the log; its stderr is there.
import time

start_all()
machine.succeed("(sleep 2; touch /tmp/ready) >/dev/null 2>&1 &")
out = machine.wait_until_succeeds("test -e /tmp/ready && echo ready-now")
t.assertEqual(out.strip(), "ready-now")

machine.succeed("(sleep 2; rm /tmp/ready) >/dev/null 2>&1 &")
machine.wait_until_fails("test -e /tmp/ready")
machine.fail("test -e /tmp/ready")

machine.succeed("(sleep 2; echo content > /tmp/later) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/later")
t.assertEqual(machine.succeed("cat /tmp/later").strip(), "content")

with subtest("timeouts raise"):
    for what, call in [
        ("wait_until_succeeds", lambda: machine.wait_until_succeeds("false", timeout=3)),
        ("wait_until_fails", lambda: machine.wait_until_fails("true", timeout=3)),
        ("wait_for_file", lambda: machine.wait_for_file("/nonexistent", timeout=3)),
        (
            "a try that outlives the deadline",
            lambda: machine.wait_until_succeeds(
                "echo try-runs-past-the-deadline >&2; sleep 100", timeout=3
            ),
        ),
    ]:
        t0 = time.monotonic()
        try:
            call()
        except AssertionError as e:
            log.info(f"{what}: {type(e).__name__}: {e}")
        else:
            raise Exception(f"{what} did not time out")
        t.assertLess(time.monotonic() - t0, 60, what)
