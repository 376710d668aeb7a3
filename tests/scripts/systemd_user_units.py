# nodes: machine=systemd
# expect: pass
# expect-log: the systemd user manager of "alice" does not run (yet); polling `systemctl --user show` instead
# expect-no-log: polling `systemctl show` instead
# expect-no-log: Killed
# wait_for_unit(..., user=...) waits for a unit of the user's own systemd
# manager, with nixpkgs' rules. It listens to that manager over D-Bus, as
# for system units, once the manager runs; before that it polls
# `systemctl --user` as nixpkgs does, and says so.
start_all()
machine.wait_for_unit("multi-user.target")
systemctl = machine.succeed("command -v systemctl").strip()
as_alice = "su -l alice --shell /bin/sh -c 'XDG_RUNTIME_DIR=/run/user/$(id -u) {}'"

with subtest("a user the guest does not have fails at once"):
    with t.assertRaisesRegex(Exception, 'there is no user "mallory" in the guest'):
        machine.wait_for_unit("default.target", user="mallory")
    # So does a try (a polling condition is active), as the same error.
    with polling_condition(lambda: True, seconds_interval=0):
        with t.assertRaisesRegex(AssertionError, '^there is no user "mallory" in the guest$'):
            machine.wait_for_unit("default.target", user="mallory", timeout=60)

with subtest("before the user's manager runs, the wait polls through su"):
    machine.fail("test -e /run/user/1000/systemd/private")
    # As in nixpkgs, `su -l alice` opens a session, which starts her
    # manager (pam_systemd).
    machine.wait_for_unit("default.target", user="alice")

with subtest("with lingering, the manager stays"):
    machine.succeed("loginctl enable-linger alice")
    machine.wait_until_succeeds("test -S /run/user/1000/systemd/private")
    machine.wait_for_unit("default.target", user="alice")
    machine.succeed(
        "mkdir -p /home/alice/.config/systemd/user",
        "printf '[Service]\\nType=oneshot\\nRemainAfterExit=yes\\nExecStart=/bin/sleep 3\\n'"
        " > /home/alice/.config/systemd/user/hello.service",
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/false\\n'"
        " > /home/alice/.config/systemd/user/broken.service",
        "chown -R alice:alice /home/alice/.config",
    )
    machine.succeed(as_alice.format("systemctl --user daemon-reload"))

with subtest("a user unit wait runs no systemctl (it listens over D-Bus)"):
    machine.succeed(as_alice.format("systemctl --user start --no-block hello.service"))
    machine.succeed(f"chmod -x {systemctl}")
    machine.wait_for_unit("hello.service", user="alice")  # active about 3 s later
    machine.succeed(f"chmod +x {systemctl}")
    t.assertEqual(
        machine.succeed(as_alice.format("systemctl --user is-active hello.service")), "active\n"
    )
    machine.fail("pgrep -f systemd-stdio-bridge")

with subtest("hopeless user units raise at once"):
    machine.succeed(f"chmod -x {systemctl}")
    with t.assertRaisesRegex(Exception, 'unit "broken.service" is inactive and there are no pending jobs'):
        machine.wait_for_unit("broken.service", user="alice")
    machine.succeed(f"chmod +x {systemctl}")
    machine.fail(as_alice.format("systemctl --user start broken.service"))
    with t.assertRaisesRegex(Exception, 'unit "broken.service" reached state "failed"'):
        machine.wait_for_unit("broken.service", user="alice")
    # The system's manager has a broken.service too, which is not failed:
    # the wait asked alice's manager.
    with t.assertRaisesRegex(Exception, "is inactive and there are no pending jobs"):
        machine.wait_for_unit("broken.service")
