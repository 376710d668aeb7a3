# nodes: machine=tiny
# expect: fail
# expect-log: line 16
# expect-log: command `exit 3` failed (exit code 3)
# junit: name="fine"
# junit: name="breaks"
# junit: failures="1"
# junit: <failure message="command `exit 3` failed (exit code 3)"
# junit-cases: 2
# A failing subtest ends the run with its error in the JUnit XML; the
# subtest after it never runs.
start_all()
with subtest("fine"):
    machine.succeed("true")
with subtest("breaks"):
    machine.succeed("exit 3")
with subtest("never runs"):
    machine.succeed("true")
