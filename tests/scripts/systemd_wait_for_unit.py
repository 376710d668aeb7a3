# nodes: machine=systemd
# expect: pass
# expect-log: waiting for unit nginx.service
# expect-log: waiting for unit slow.service
# wait_for_unit: an enabled service, a unit with a pending start job (waits
# for it), and a failed unit, which must raise at once, not after the timeout.
import time

start_all()
machine.wait_for_unit("multi-user.target")
machine.wait_for_unit("nginx.service")

with subtest("a pending start job is waited for"):
    machine.require_unit_state("slow.service", "inactive")
    machine.systemctl("start --no-block slow.service")
    t0 = time.monotonic()
    machine.wait_for_unit("slow.service")
    waited = time.monotonic() - t0
    machine.require_unit_state("slow.service", "active")
    log.info(f"slow.service became active after {waited:.1f}s")

with subtest("start_job blocks until the oneshot is done"):
    machine.stop_job("slow.service")
    machine.require_unit_state("slow.service", "inactive")
    status, _ = machine.start_job("slow.service")
    t.assertEqual(status, 0)
    machine.require_unit_state("slow.service", "active")
    machine.wait_for_unit("slow.service")

with subtest("a failed unit raises at once"):
    status, _ = machine.start_job("broken.service")
    t.assertNotEqual(status, 0)
    t0 = time.monotonic()
    try:
        machine.wait_for_unit("broken.service")  # timeout is 900
    except Exception as e:
        elapsed = time.monotonic() - t0
        log.info(f"raised {type(e).__name__} after {elapsed:.1f}s: {e}")
        # As nixpkgs: its message, as a RequestedAssertionFailed.
        t.assertEqual(type(e).__name__, "RequestedAssertionFailed")
        t.assertEqual(str(e), 'unit "broken.service" reached state "failed"')
        t.assertIn("broken.service", str(e))
        t.assertIn("failed", str(e))
        t.assertLess(elapsed, 30)
    else:
        raise Exception("wait_for_unit on a failed unit returned")

with subtest("an inactive unit with no job raises at once"):
    machine.stop_job("slow.service")
    t0 = time.monotonic()
    try:
        machine.wait_for_unit("slow.service", timeout=900)
    except Exception as e:
        t.assertIn("is inactive and there are no pending jobs", str(e))
        t.assertLess(time.monotonic() - t0, 30)
    else:
        raise Exception("wait_for_unit on an inactive unit returned")


with subtest("with a polling condition: one try a second, the same errors"):
    @polling_condition(seconds_interval=0, description="the guest answers")
    def answers():
        machine.succeed("true")

    with answers:
        machine.systemctl("start --no-block slow.service")
        machine.wait_for_unit("slow.service")
        machine.require_unit_state("slow.service", "active")
        machine.start_job("broken.service")
        try:
            machine.wait_for_unit("broken.service")
        except Exception as e:
            t.assertEqual(type(e).__name__, "RequestedAssertionFailed")
            t.assertEqual(str(e), 'unit "broken.service" reached state "failed"')
        else:
            raise Exception("wait_for_unit on a failed unit returned")
