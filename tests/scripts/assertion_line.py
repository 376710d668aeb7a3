# nodes: machine=tiny
# expect: fail
# expect-log: line 8
# expect-log: command `test 1 -eq 2` failed (exit code 1)
# expect-log: RequestedAssertionFailed
start_all()
machine.succeed("true")
machine.succeed("test 1 -eq 2")
machine.succeed("echo never")
