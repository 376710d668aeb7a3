# nodes: machine=tiny
# expect: pass
# expect-log: machine # err-on-the-console
# expect-no-log: Killed
# expect-no-log: __vmt_
# execute(command, check_return, check_output, timeout) and succeed/fail
# with several commands. A command's stderr goes to the console log; one
# killed at its timeout leaves no note of the shell's there.
import time

start_all()
t.assertEqual(machine.execute("echo out; echo err-on-the-console >&2; exit 3"), (3, "out\n"))
t.assertEqual(machine.execute("echo out; exit 3", check_return=False), (-1, "out\n"))
t.assertEqual(machine.execute("echo out", check_output=False), (-2, ""))
t.assertEqual(machine.execute("exit 0", check_return=False, check_output=False)[0] in (-1, -2), True)

with subtest("timeout"):
    t0 = time.monotonic()
    status, out = machine.execute("echo before; sleep 100; echo after", timeout=3)
    t.assertLess(time.monotonic() - t0, 60)
    t.assertNotEqual(status, 0)
    t.assertNotIn("after", out)
    t.assertEqual(machine.succeed("echo next command works"), "next command works\n")
    try:
        machine.succeed("sleep 100", timeout=2)
    except AssertionError as e:
        log.info(f"succeed timeout: {type(e).__name__}: {e}")
    else:
        raise Exception("succeed(timeout=2) did not raise")



def open_fds(listing):
    # The descriptors `ls -l /proc/self/fd` shows with a target (ls's own
    # directory, gone by the time it reads the link, has none).
    return sorted(line.split(" -> ")[0].split()[-1] for line in listing.splitlines() if " -> " in line)


with subtest("a command inherits no descriptor of the driver's"):
    # As from nixpkgs' `bash -c`: stdin, stdout and stderr only.
    t.assertEqual(open_fds(machine.succeed("exec ls -l /proc/self/fd")), ["0", "1", "2"])
    t.assertEqual(open_fds(machine.wait_until_succeeds("exec ls -l /proc/self/fd")), ["0", "1", "2"])

with subtest("succeed / fail with several commands"):
    t.assertEqual(machine.succeed("echo a", "echo b"), "a\nb\n")
    t.assertEqual(machine.fail("false", "exit 7"), "")
    try:
        machine.fail("false", "true")
    except AssertionError as e:
        t.assertIn("unexpectedly succeeded", str(e))
    else:
        raise Exception("fail() with a succeeding command did not raise")

with subtest("the shell: bash, set -euo pipefail (as nixpkgs), exact output"):
    machine.sleep(1)
    t.assertEqual(machine.succeed("printf 'no newline'"), "no newline")
    t.assertEqual(machine.execute("false | true")[0], 1)
    t.assertNotEqual(machine.execute("echo $UNSET_VARIABLE")[0], 0)
    t.assertEqual(machine.succeed("echo $BASH_VERSION | cut -c1").strip().isdigit(), True)
