# nodes: machine=systemd
# expect: pass
# expect-log: polling `systemctl show` instead
# expect-log: systemd-stdio-bridge ended: systemd closed the connection (systemd re-executed?); polling `systemctl show` instead
# expect-no-log: stopped answering
# wait_for_unit listens to systemd (D-Bus signals through
# systemd-stdio-bridge) instead of running systemctl in a loop: it works with
# systemctl made unrunnable, it starts almost no processes while it waits,
# and it still says why a unit cannot become active. Without the bridge it
# falls back to polling, and says so; so it does at once when systemd
# re-executes and closes the bridge's connection.
start_all()
machine.wait_for_unit("multi-user.target")
systemctl = machine.succeed("command -v systemctl").strip()


def last_pid():
    # The fifth field of /proc/loadavg is the most recently created pid.
    return int(machine.succeed("cat /proc/loadavg").split()[4])


with subtest("a wait runs no systemctl and starts almost no processes"):
    machine.succeed("systemctl start --no-block slow.service")
    machine.succeed(f"chmod -x {systemctl}")
    before = last_pid()
    machine.wait_for_unit("slow.service")  # active about 3 s later
    created = last_pid() - before
    machine.succeed(f"chmod +x {systemctl}")
    machine.require_unit_state("slow.service", "active")
    log.info(f"processes created during a 3 s unit wait: {created}")
    # The bridge and the subshell that reports its end, slow.service's
    # sleep, the `cat`s that end the bridge, the two `cat`s here;
    # polling `systemctl show` every 50 ms would start dozens.
    t.assertLess(created, 12)

with subtest("hopeless units raise at once, without systemctl"):
    machine.succeed(f"chmod -x {systemctl}")
    with t.assertRaisesRegex(Exception, 'unit "broken.service" is inactive and there are no pending jobs'):
        machine.wait_for_unit("broken.service")
    with t.assertRaisesRegex(Exception, 'systemd cannot load unit "no such unit": .*not valid'):
        machine.wait_for_unit("no such unit")
    machine.succeed(f"chmod +x {systemctl}")
    machine.fail("systemctl start broken.service")
    with t.assertRaisesRegex(Exception, 'unit "broken.service" reached state "failed"'):
        machine.wait_for_unit("broken.service")

with subtest("a timeout names the unit's last state"):
    machine.succeed("systemctl stop slow.service; systemctl start --no-block slow.service")
    with t.assertRaisesRegex(Exception, r'slow.service to become active timed out after 1 seconds \(its last state was "activating"\)'):
        machine.wait_for_unit("slow.service", timeout=1)
    machine.wait_for_unit("slow.service")

with subtest("the session leaves nothing behind in the guest"):
    machine.fail("pgrep -f systemd-stdio-bridge")
    t.assertEqual(machine.succeed("echo ok"), "ok\n")

with subtest("a daemon-reexec during a wait ends the bridge; the wait polls at once"):
    machine.succeed("systemctl stop slow.service; systemctl start --no-block slow.service")
    machine.succeed("(sleep 1; systemctl daemon-reexec) >/dev/null 2>&1 &")
    machine.wait_for_unit("slow.service")
    machine.require_unit_state("slow.service", "active")
    machine.fail("pgrep -f systemd-stdio-bridge")

with subtest("without systemd-stdio-bridge the wait polls, and works"):
    bridge = machine.succeed("command -v systemd-stdio-bridge").strip()
    machine.succeed(f"chmod -x {bridge}")
    machine.succeed("systemctl stop slow.service; systemctl start --no-block slow.service")
    machine.wait_for_unit("slow.service")
    machine.require_unit_state("slow.service", "active")
    machine.succeed(f"chmod +x {bridge}")
