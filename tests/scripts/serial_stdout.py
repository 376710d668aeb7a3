# nodes: machine=tiny
# expect: pass
# expect-log: machine # serial-shown-42
# expect-no-log: serial-hidden-42
# serial_stdout_off() hides the `machine # ...` console lines from the log
# (they still reach wait_for_console_text); serial_stdout_on() shows them again.
start_all()
machine.wait_until_succeeds("true")
serial_stdout_off()
machine.succeed("echo serial-hidden-$((40 + 2)) > /dev/ttyS0")
machine.wait_for_console_text("serial-hidden-4[2]")
serial_stdout_on()
machine.succeed("echo serial-shown-$((40 + 2)) > /dev/ttyS0")
machine.wait_for_console_text("serial-shown-4[2]")
