# nodes: machine=tiny
# expect: pass
# expect-log: machine # console-marker-42
# expect-log: machine # last-words-without-a-newline
# wait_for_console_text (regex on the serial console) and get_console_log.
# What the console printed last is logged even without its newline, when
# the driver kills the machine at the end.
start_all()
machine.wait_until_succeeds("true")
machine.succeed("echo console-marker-$((40 + 2)) > /dev/ttyS0")
line = machine.wait_for_console_text(r"console-marker-\d+", timeout=60)
log.info(f"wait_for_console_text returned {line!r}")

# Text that appears only later, while we wait.
machine.succeed("(sleep 2; echo late-marker-$((6 * 7)) > /dev/ttyS0) >/dev/null 2>&1 &")
machine.wait_for_console_text("late-marker-42")

text = machine.get_console_log()
t.assertIsInstance(text, str)
t.assertIn("console-marker-42", text)
t.assertIn("late-marker-42", text)

try:
    machine.wait_for_console_text("never-printed-marker", timeout=3)
except Exception as e:
    log.info(f"timeout raised {type(e).__name__}: {e}")
else:
    raise Exception("wait_for_console_text did not time out")

# The guest's UART sends this on its own time: a second is plenty.
machine.succeed("printf last-words-without-a-newline >/dev/ttyS0; sleep 1")
