# nodes: machine=tiny
# expect: fail
# expect-log: Polling condition failed: the heartbeat file exists
# expect-log: line 20
# expect-no-log: UNREACHABLE
# A polling condition that stops holding stops the test (PollingConditionError
# with the condition's description) at the next command inside its block.
start_all()
machine.succeed("touch /tmp/heartbeat")


@polling_condition(seconds_interval=0, description="the heartbeat file exists")
def heartbeat():
    machine.succeed("test -e /tmp/heartbeat")


with heartbeat:
    machine.succeed("echo fine")
    machine.succeed("rm /tmp/heartbeat")
    machine.succeed("echo the condition is checked before this command")
    log.info("UNREACHABLE")
