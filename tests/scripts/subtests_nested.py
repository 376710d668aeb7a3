# nodes: machine=tiny
# expect: pass
# expect-log: subtest: outer
# expect-log: subtest: inner two
# junit: name="outer"
# junit: name="inner one"
# junit: name="inner two"
# junit: name="second top-level"
# junit: failures="0"
# junit-cases: 4
# Nested subtests: every subtest is one JUnit test case.
start_all()
with subtest("outer"):
    machine.succeed("true")
    with subtest("inner one"):
        machine.succeed("echo one")
    with subtest("inner two"):
        t.assertEqual(machine.succeed("echo two").strip(), "two")
with subtest("second top-level"):
    machine.succeed("test -d /proc/1")
