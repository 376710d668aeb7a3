# nodes: machine=tiny
# expect: pass
# expect-log: Checking polling condition 'marker file is present'
# expect-log: Polling condition succeeded: marker file is present
# expect-no-log: Polling condition failed: marker file is present
# expect-log: Polling condition succeeded: ready file is present
# polling_condition as a decorator (with arguments and without) and as a
# context manager: checked before the commands inside the block; .wait().
start_all()
machine.succeed("touch /tmp/alive")


@polling_condition(seconds_interval=0.5, description="marker file is present")
def alive():
    machine.succeed("test -e /tmp/alive")


@polling_condition
def always_true():
    "nothing goes wrong"
    return True


t.assertEqual(alive.description, "marker file is present")
t.assertEqual(alive.seconds_interval, 0.5)
t.assertEqual(always_true.description, "nothing goes wrong")

with alive, always_true:
    for i in range(5):
        machine.succeed(f"echo round {i}")
    machine.wait_until_succeeds("test -e /tmp/alive", timeout=60)
    machine.wait_for_file("/tmp/alive", timeout=60)
    # The waits are tried once a second (op `once`), as nixpkgs runs them.
    machine.succeed("(sleep 2; rm /tmp/later) >/dev/null 2>&1 & touch /tmp/later")
    machine.wait_until_fails("test -e /tmp/later")
    machine.wait_for_closed_port(1234, timeout=30)
    machine.succeed("nc -l -p 1234 </dev/null >/dev/null 2>&1 &")
    machine.wait_for_open_port(1234, timeout=30)
    # ...and time out as nixpkgs' retry does.
    try:
        machine.wait_for_file("/nonexistent", timeout=2)
    except Exception as e:
        t.assertEqual(type(e).__name__, "RequestedAssertionFailed")
        t.assertIn("action timed out after", str(e))
    else:
        raise Exception("wait_for_file did not time out")


# .wait(): blocks until the condition holds (failed tries are logged, as
# nixpkgs logs them, so this one has its own description).
@polling_condition(description="ready file is present")
def ready():
    machine.succeed("test -e /tmp/ready")


machine.succeed("(sleep 3; touch /tmp/ready) >/dev/null 2>&1 &")
ready.wait(timeout=120)
machine.succeed("test -e /tmp/ready")
