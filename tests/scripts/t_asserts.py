# nodes: machine=tiny
# expect: fail
# expect-log: line 22
# expect-log: 'needle' not found in 'haystack'
# expect-log: RequestedAssertionFailed
# `t` is a unittest.TestCase: its asserts pass quietly and fail with
# RequestedAssertionFailed and unittest's message.
start_all()
out = machine.succeed("echo hello world")
t.assertEqual(out, "hello world\n")
t.assertIn("world", out)
t.assertNotIn("bye", out)
t.assertTrue(out.startswith("hello"))
t.assertRegex(out, r"^hello\s+world$")
t.assertGreater(len(out), 5)
t.assertAlmostEqual(0.1 + 0.2, 0.3)
t.assertCountEqual(machine.succeed("printf 'b\\na\\n'").split(), ["a", "b"])
with t.assertRaises(AssertionError):
    t.assertEqual("a", "b")

# The last one fails the test with unittest's message.
t.assertIn("needle", "haystack")
