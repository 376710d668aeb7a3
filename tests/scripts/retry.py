# nodes: machine=tiny
# expect: pass
# expect-log: retry worked after 3 calls
# retry(fn, timeout_seconds): fn(False) once a second until true; on timeout
# fn(True) a last time, then "action timed out".
import time

start_all()
machine.succeed("rm -f /tmp/count")

calls = []


def third_time_lucky(last_try):
    calls.append(last_try)
    n = int(machine.succeed("echo x >> /tmp/count; wc -l < /tmp/count"))
    return n >= 3


retry(third_time_lucky)
t.assertEqual(calls, [False, False, False])
log.info(f"retry worked after {len(calls)} calls")

last_flags = []


def never(last_try):
    last_flags.append(last_try)
    return False


t0 = time.monotonic()
try:
    retry(never, timeout_seconds=3)
except AssertionError as e:
    t.assertIn("action timed out", str(e))
    t.assertEqual(type(e).__name__, "RequestedAssertionFailed")
else:
    raise Exception("retry did not time out")
elapsed = time.monotonic() - t0
t.assertTrue(2.5 < elapsed < 15, elapsed)
t.assertEqual(last_flags[-1], True)
t.assertTrue(all(f is False for f in last_flags[:-1]))
