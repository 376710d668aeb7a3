# nodes: machine=tiny
# expect: pass
# The exceptions a script sees: RequestedAssertionFailed (an AssertionError)
# from succeed/fail/t.assert*, and that a caught failure does not fail the run.
start_all()

try:
    machine.succeed("exit 4")
except Exception as e:
    caught = e
t.assertEqual(type(caught).__name__, "RequestedAssertionFailed")
t.assertIsInstance(caught, AssertionError)
t.assertIn("exit code 4", str(caught))
RequestedAssertionFailed = type(caught)

with t.assertRaises(RequestedAssertionFailed):
    machine.fail("true")
with t.assertRaises(RequestedAssertionFailed):
    t.assertEqual(1, 2)
with t.assertRaises(AssertionError):
    machine.wait_until_succeeds("false", timeout=2)

# A plain Python error from the script keeps its own type.
try:
    {}["missing"]
except KeyError:
    pass
machine.succeed("echo run continues")
