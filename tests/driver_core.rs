//! The driver core against real QEMU guests (the `tiny` Debian guest):
//! commands, exact output, timeouts, detached children, lifecycle, monitor,
//! console, files, and a guest that dies mid-command.

mod common;

use std::time::{Duration, Instant};

use nix_vmtest::machine::shell::{shell_quote, UntilMode, SHARED_OUT};
use nix_vmtest::machine::MachineError;

/// Sets `p` to the backdoor shell's pid: the parent of the command's
/// subshell (`$$` is the pid of a command's own bash, as in nixpkgs).
const SHELL_PID: &str = "read -r -a s </proc/$BASHPID/stat; p=${s[3]}";

/// How long one test may take: each boots a guest under TCG and takes
/// 10 to 80 s on a loaded host.
const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "current_thread")]
async fn commands_report_exact_status_and_output() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.start(false).await.unwrap();
        assert!(!m.is_up(), "is_up before the shell answered");
        m.connect().await.unwrap();
        assert!(m.is_up());

        let o = m.execute("echo hello; exit 3", None, true).await.unwrap();
        assert_eq!((o.status, o.output.as_slice()), (3, &b"hello\n"[..]));

        // No trailing newline, stderr not mixed in, quotes survive.
        let o = m
            .execute("printf 'it'\\''s'; echo err >&2", None, true)
            .await
            .unwrap();
        assert_eq!((o.status, o.output.as_slice()), (0, &b"it's"[..]));

        // Non-UTF-8 bytes, NULs and every byte value come back exactly.
        let o = m
            .execute(
                "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done",
                None,
                true,
            )
            .await
            .unwrap();
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(o.output, all);

        // Output of at most 4 KiB without a NUL is sent without a dd in the
        // guest: every other byte value, blanks and backslashes, and the edge.
        let o = m
            .execute(
                "i=1; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done",
                None,
                true,
            )
            .await
            .unwrap();
        assert_eq!(o.output, (1..=255u8).collect::<Vec<u8>>());
        let o = m
            .execute("printf '  lead\\\\x\\n\\tmid \\r\\n\\n\\n'", None, true)
            .await
            .unwrap();
        assert_eq!(o.output, b"  lead\\x\n\tmid \r\n\n\n");
        for n in [4096, 4097] {
            let o = m
                .execute(&format!("head -c {n} /dev/zero | tr '\\0' x"), None, true)
                .await
                .unwrap();
            assert_eq!(o.output, vec![b'x'; n]);
        }

        // 10 MB of output, checked byte for byte against a digest made in the guest.
        let o = m
            .execute(
                "head -c 10485760 /dev/urandom > /tmp/big; cat /tmp/big",
                None,
                true,
            )
            .await
            .unwrap();
        assert_eq!(o.output.len(), 10 * 1024 * 1024);
        let sum = m
            .execute("sha256sum /tmp/big | cut -d' ' -f1", None, true)
            .await
            .unwrap();
        let host_sum = {
            let tmp = std::env::temp_dir().join(format!("nix-vmtest-big-{}", std::process::id()));
            std::fs::write(&tmp, &o.output).unwrap();
            let out = std::process::Command::new("sha256sum")
                .arg(&tmp)
                .output()
                .unwrap();
            std::fs::remove_file(&tmp).unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            String::from_utf8_lossy(&sum.output).trim(),
            host_sum.split_whitespace().next().unwrap()
        );

        // The shell's state does not leak between commands.
        m.execute("cd /proc; FOO=1; exit 0", None, true)
            .await
            .unwrap();
        let o = m
            .execute("pwd; echo ${FOO:-unset}", None, true)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&o.output);
        assert!(
            text.ends_with("\nunset\n") && !text.starts_with("/proc"),
            "{text:?}"
        );

        // Commands do not read the protocol's input.
        let o = m.execute("cat; echo done", None, true).await.unwrap();
        assert_eq!(o.output, b"done\n");

        // Commands come on the command port, which the backdoor shell's serve
        // loop reads, and get there exactly: text that is not ASCII, with
        // output kept or not, one longer than the guest's 4 KiB read buffer,
        // trailing blanks and newlines.
        assert_eq!(shell_input(m).await, "org.nix-vmtest.cmd");
        let text = "h\u{e9} \u{20ac} \u{1f600} 'q' \\ $x \"\t\"";
        let o = m
            .execute(&format!("printf '%s' {}", shell_quote(text)), None, true)
            .await
            .unwrap();
        assert_eq!(o.output, text.as_bytes());
        let o = m
            .execute(&format!(": {}; exit 4", shell_quote(text)), None, false)
            .await
            .unwrap();
        assert_eq!(o.status, 4);
        let o = m.execute("echo x; exit 6", None, false).await.unwrap();
        assert_eq!((o.status, o.output.as_slice()), (6, &b""[..]));
        let long = "y".repeat(100_000);
        let o = m
            .execute(&format!("printf %s {long} | wc -c"), None, true)
            .await
            .unwrap();
        assert_eq!(o.output, b"100000\n");
        let o = m
            .execute("printf '%s|' 'a  '  \n\n", None, true)
            .await
            .unwrap();
        assert_eq!(o.output, b"a  |");
        // Raw access (`raw_shell`, as the bench's nixpkgs framing uses it)
        // needs bash itself on the console: the serve loop ends for it, and
        // starts again after.
        let shell = m.raw_shell().await.unwrap();
        shell
            .write_raw(b"bash -c 'echo hi; exit 5'; echo \"status $?\"\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"status 5\n") {
            got.extend(shell.read_raw().await.unwrap());
        }
        assert_eq!(got, b"hi\nstatus 5\n");
        assert_eq!(shell_input(m).await, "org.nix-vmtest.cmd");

        // A plain command of a program runs without a second fork: the
        // command's subshell becomes the program, whose parent is the shell.
        let shell_pid = m
            .execute(&format!("{SHELL_PID}; echo $p"), None, true)
            .await
            .unwrap()
            .output;
        let o = m
            .execute("grep -m1 PPid: /proc/self/status", None, true)
            .await
            .unwrap();
        let ppid = String::from_utf8_lossy(&o.output)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        assert_eq!(ppid, String::from_utf8_lossy(&shell_pid).trim());
        // ... with the status bash gives a missing program (the console says
        // `exec: …: not found`), and a builtin of the same name as a program
        // still runs as the builtin.
        let o = m.execute("no-such-program --x", None, true).await.unwrap();
        assert_eq!(o.status, 127);
        let o = m.execute("echo -n 'a  b'", None, true).await.unwrap();
        assert_eq!(o.output, b"a  b");

        // A long test: every answer stays its own across the guest's cleanup of
        // old output files (every 200 commands), and the files do not pile up.
        for i in 0..250 {
            let o = m.execute(&format!("echo {i}"), None, true).await.unwrap();
            assert_eq!(o.output, format!("{i}\n").as_bytes());
        }
        let o = m
            .execute("ls \"$__vmt_dir\" | grep -c '^o[.]'", None, true)
            .await
            .unwrap();
        let files: usize = String::from_utf8_lossy(&o.output).trim().parse().unwrap();
        assert!(files <= 200, "{files} output files left in the guest");
    })
    .await;
}

/// The driver stops commands through its control port (a virtio serial
/// port the guest listens on).
#[tokio::test(flavor = "current_thread")]
async fn timeouts_and_detached_children_never_hang() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        assert_eq!(control_ports(m).await, 1);
        timeouts_and_detached_children(m).await;
    })
    .await;
}

/// A start script that drops the driver's ports from its options: commands
/// come on the console, and the guest watches them itself, with the same
/// results.
#[tokio::test(flavor = "current_thread")]
async fn without_the_control_port_the_guest_stops_commands_itself() {
    common::within(LIMIT, async {
        on_the_console("noctl", "vmtctl|vmtcmd", 0).await;
    })
    .await;
}

/// Without the command port alone, commands come on the console and the
/// host still stops them through the control port.
#[tokio::test(flavor = "current_thread")]
async fn without_the_command_port_commands_come_on_the_console() {
    common::within(LIMIT, async {
        on_the_console("nocmd", "vmtcmd", 1).await;
    })
    .await;
}

/// Boots node `name` without the ports `ids` ([`dropping_ports`]) and
/// checks that commands come on the console, that the guest sees
/// `control` control ports, and that timeouts and detached children
/// behave as with every port.
async fn on_the_console(name: &str, ids: &str, control: usize) {
    let mut d = common::driver(vec![dropping_ports(name, ids)]).await;
    let m = &mut d.machines[0];
    m.connect().await.unwrap();
    assert_eq!(control_ports(m).await, control);
    assert_eq!(shell_input(m).await, "console");
    timeouts_and_detached_children(m).await;
    // Output that is not small comes through the share here too.
    let data = big_data();
    let src = m.state_dir().join("big-data");
    std::fs::write(&src, &data).unwrap();
    m.copy_from_host(&src, "/root/data").await.unwrap();
    let o = through_share(m, "cat /root/data", true).await;
    assert!(o == data, "{} bytes", o.len());
}

/// The tiny guest as node `name`, with a start script that drops the
/// `-chardev`/`-device` options (and their flags) that mention one of the
/// `|`-separated chardev ids.
fn dropping_ports(name: &str, ids: &str) -> nix_vmtest::spec::MachineSpec {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(format!("run-{name}-vm"));
    std::fs::write(
        &script,
        format!(
            "#!/usr/bin/env bash\n\
             args=()\n\
             for a in \"$@\"; do\n  \
               if [[ $a =~ {ids} ]]; then unset 'args[-1]'; else args+=(\"$a\"); fi\n\
             done\n\
             exec {} \"${{args[@]}}\"\n",
            common::guests().join("run-tiny-vm").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix_vmtest::spec::MachineSpec {
        name: name.into(),
        start_script: Some(script),
        image: None,
        snapshot: None,
        peer: None,
    }
}

/// How many control ports the guest sees.
async fn control_ports(m: &mut nix_vmtest::machine::Machine) -> usize {
    let o = m
        .execute("cat /sys/class/virtio-ports/*/name", None, true)
        .await
        .unwrap();
    String::from_utf8_lossy(&o.output)
        .lines()
        .filter(|l| *l == "org.nix-vmtest.ctl")
        .count()
}

/// Where the backdoor shell reads its input: the name of the virtio port
/// (the serve loop's command port), or `console`.
async fn shell_input(m: &mut nix_vmtest::machine::Machine) -> String {
    let o = m
        .execute(
            &format!(
                "{SHELL_PID}; d=$(readlink /proc/$p/fd/0); \
                 n=/sys/class/virtio-ports/${{d#/dev/}}/name; \
                 if [ -e \"$n\" ]; then cat \"$n\"; else echo console; fi"
            ),
            None,
            true,
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&o.output).trim().to_string()
}

/// Runs a command that must end by itself well before its 60 s timeout;
/// its status and output.
async fn returns_quickly(m: &mut nix_vmtest::machine::Machine, command: &str) -> (i32, Vec<u8>) {
    let t = Instant::now();
    let o = m
        .execute(command, Some(Duration::from_secs(60)), true)
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "`{command}` took {:?}",
        t.elapsed()
    );
    (o.status, o.output)
}

/// Asserts that no process in the guest matches `pattern` (`pgrep -f`).
async fn assert_gone(m: &mut nix_vmtest::machine::Machine, pattern: &str) {
    let o = m
        .execute(&format!("pgrep -f '{pattern}' || echo gone"), None, true)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.output).trim(),
        "gone",
        "{pattern}"
    );
}

/// `set -euo pipefail` ends a command exactly as under nixpkgs' `bash -c`,
/// whichever way the command reaches the guest (the serve loop's record,
/// a line on the console, the guest's own watcher, a wait, the exec and
/// `$$` forms, a non-ASCII command). Each command is checked against the
/// fixed answer nixpkgs' framing gives and against `bash -c` run in the
/// same guest.
async fn shell_options_end_a_command(m: &mut nix_vmtest::machine::Machine) {
    use nix_vmtest::script::ops::user_command;
    let cases: &[(&str, i32, &[u8])] = &[
        ("false; echo after", 1, b""),
        ("false\necho after", 1, b""),
        ("true && false; echo after", 1, b""),
        ("echo before; false; echo after", 1, b"before\n"),
        ("if false; then :; fi; echo ok", 0, b"ok\n"),
        ("false || echo handled; echo after", 0, b"handled\nafter\n"),
        ("! false; echo negated", 0, b"negated\n"),
        ("f() { false; echo in-f; }; f; echo after", 1, b""),
        (
            "f() { false; echo in-f; }; f || echo or; echo after",
            0,
            b"in-f\nafter\n",
        ),
        ("(false; echo in-sub); echo after", 1, b""),
        ("x=$(false); echo after", 1, b""),
        (
            "echo \"$(false; echo sub)\"; echo after",
            0,
            b"sub\nafter\n",
        ),
        ("while false; do :; done; echo looped", 0, b"looped\n"),
        ("echo $nope_unset; echo after", 1, b""),
        ("echo ${nope_unset:-dflt}", 0, b"dflt\n"),
        ("false | true; echo after", 1, b""),
        ("true | false | true; echo after", 1, b""),
        ("false | true", 1, b""),
        ("false", 1, b""),
        ("exit 7; echo after", 7, b""),
        ("false; echo $$ after", 1, b""),
        ("false; echo apr\u{e8}s", 1, b""),
        ("sleep 0 & wait; false; echo after", 1, b""),
    ];
    for &(command, status, output) in cases {
        let sent = user_command(command);
        let o = m
            .execute(&sent, Some(Duration::from_secs(60)), true)
            .await
            .unwrap();
        assert_eq!(
            (o.status, o.output.as_slice()),
            (status, output),
            "execute({command:?}): got {:?}",
            String::from_utf8_lossy(&o.output)
        );
        let oracle = m
            .execute(
                &format!("bash -c {}", shell_quote(&sent)),
                Some(Duration::from_secs(60)),
                true,
            )
            .await
            .unwrap();
        assert_eq!(
            (oracle.status, oracle.output.as_slice()),
            (status, output),
            "bash -c {command:?} in the guest"
        );
        // The same rule holds for a wait's tries: a try that fails midway
        // is a failure, and one the options end is not a success.
        let second = Some(Duration::from_secs(1));
        if status == 0 {
            let o = m.wait_until(command, &sent, UntilMode::Succeed, second);
            let o = o.await.unwrap();
            assert_eq!(o.output, output, "wait_until_succeeds({command:?})");
        } else {
            let o = m.wait_until(command, &sent, UntilMode::Fail, second);
            let o = o.await.unwrap();
            assert_eq!(
                (o.status, o.output.as_slice()),
                (status, output),
                "wait_until_fails({command:?})"
            );
            let o = m.wait_until(command, &sent, UntilMode::Succeed, second);
            let o = o.await;
            assert!(
                matches!(o, Err(MachineError::Timeout { .. })),
                "wait_until_succeeds({command:?}) must time out: {o:?}"
            );
        }
    }
}

async fn timeouts_and_detached_children(m: &mut nix_vmtest::machine::Machine) {
    shell_options_end_a_command(m).await;
    // Commands and waits see no positional parameters, as in `bash -c`;
    // output that is not kept is not sent.
    let o = m.execute("echo \"$#:$*\"", None, true).await.unwrap();
    assert_eq!(o.output, b"0:\n");
    let o = m
        .execute("echo \"$#:$*\"; exit 4", None, false)
        .await
        .unwrap();
    assert_eq!((o.status, o.output.len()), (4, 0));
    let o = m
        .wait_until(
            "no arguments",
            "[ $# -eq 0 ] && echo none",
            UntilMode::Succeed,
            Some(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!((o.status, o.output.as_slice()), (0, &b"none\n"[..]));

    // A per-command timeout kills the command (and its children) and says 124.
    let t = Instant::now();
    let o = m
        .execute(
            "echo started; sleep 1000; echo never",
            Some(Duration::from_secs(2)),
            true,
        )
        .await
        .unwrap();
    assert_eq!(o.status, 124);
    assert_eq!(o.output, b"started\n");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_gone(m, "sleep 1000").await;

    // nixpkgs #144875: a background child that keeps stdout open.
    let o = returns_quickly(m, "sleep 600 & echo launched").await;
    assert_eq!(o, (0, b"launched\n".to_vec()));
    // ...and its later output does not leak into the next command's.
    m.execute("(sleep 1; echo late) &", None, true)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = m.execute("echo mine", None, true).await.unwrap();
    assert_eq!(o.output, b"mine\n");

    // Waits loop in the guest and notice success quickly.
    m.execute("(sleep 1; touch /tmp/flag) &", None, true)
        .await
        .unwrap();
    let t = Instant::now();
    m.wait_until(
        "flag",
        "test -e /tmp/flag",
        UntilMode::Succeed,
        Some(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let o = m
        .wait_until(
            "never",
            "false",
            UntilMode::Succeed,
            Some(Duration::from_secs(1)),
        )
        .await;
    match o {
        Err(MachineError::Timeout { what, .. }) => assert_eq!(what, "never"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    m.execute("(sleep 1; rm /tmp/flag) &", None, true)
        .await
        .unwrap();
    m.wait_until(
        "no flag",
        "test -e /tmp/flag",
        UntilMode::Fail,
        Some(Duration::from_secs(30)),
    )
    .await
    .unwrap();

    // A try that outlives the wait's deadline is stopped too.
    let t = Instant::now();
    let o = m
        .wait_until(
            "a stuck try",
            "sleep 1000",
            UntilMode::Succeed,
            Some(Duration::from_secs(2)),
        )
        .await;
    assert!(matches!(o, Err(MachineError::Timeout { .. })), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // A call dropped midway (Ctrl-C in the interactive driver) is stopped
    // before the next command runs.
    for (what, command) in [
        ("a command", "sleep 1000"),
        ("a wait", "sleep 1000 && false"),
    ] {
        let call = async {
            if what == "a wait" {
                m.wait_until(what, command, UntilMode::Succeed, None)
                    .await
                    .map(|_| ())
            } else {
                m.execute(command, None, true).await.map(|_| ())
            }
        };
        let cut = tokio::time::timeout(Duration::from_secs(1), call).await;
        assert!(cut.is_err(), "{what} ended by itself");
        let t = Instant::now();
        assert_gone(m, "sleep 1000").await;
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: {:?}",
            t.elapsed()
        );
    }

    // coproc and process substitution leave asynchronous subshells.
    let o = returns_quickly(m, "coproc sleep 600; cat <(echo sub)").await;
    assert_eq!(o, (0, b"sub\n".to_vec()));
    m.execute("pkill -f 'sleep 600'", None, true).await.unwrap();
    assert_gone(m, "sleep 600").await;
}

/// If the guest's serve loop loses the command port (hot-unplugged here),
/// the command sent there fails at once with an error that says so, and
/// the driver goes back to the console for the next ones.
#[tokio::test(flavor = "current_thread")]
async fn a_command_port_that_goes_away_costs_one_command_not_the_run() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        // The first command runs from the console; the serve loop has the
        // port from the next one on.
        m.execute("true", None, true).await.unwrap();
        assert_eq!(shell_input(m).await, "org.nix-vmtest.cmd");
        m.send_monitor_command("device_del vmtcmdport")
            .await
            .unwrap();
        let t = Instant::now();
        let e = m.execute("echo lost", None, true).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("stopped reading the command port, and the command sent there was lost"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        assert_eq!(shell_input(m).await, "console");
        let o = m.execute("echo fine; exit 4", None, true).await.unwrap();
        assert_eq!((o.status, o.output.as_slice()), (4, &b"fine\n"[..]));
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn dollar_dollar_is_the_commands_own_and_a_killed_shell_costs_one_command() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        // `$$` is the pid of the command's own bash, as under nixpkgs'
        // `bash -c`: killing it ends the command, not the backdoor shell.
        let o = m
            .execute("echo $$ $BASHPID; kill -9 $$", None, true)
            .await
            .unwrap();
        assert_eq!(o.status, 137);
        let pids: Vec<String> = String::from_utf8_lossy(&o.output)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(pids.len(), 2);
        assert_eq!(pids[0], pids[1]);
        let o = m.execute("echo still", None, true).await.unwrap();
        assert_eq!((o.status, o.output.as_slice()), (0, &b"still\n"[..]));

        // Killing the backdoor shell itself: busybox init starts a new one,
        // the command in flight fails at once, the next command runs in the
        // new shell, and its timeouts work (the dead shell's control
        // listener, which init does not kill, is gone).
        let t = Instant::now();
        let e = m
            .execute(&format!("{SHELL_PID}; kill -9 $p"), None, true)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("backdoor shell was started again (\"Spawning backdoor root shell...\""),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        let o = m.execute("echo alive", None, true).await.unwrap();
        assert_eq!((o.status, o.output.as_slice()), (0, &b"alive\n"[..]));
        assert_eq!(shell_input(m).await, "org.nix-vmtest.cmd");
        let t = Instant::now();
        let o = m
            .execute("sleep 1000", Some(Duration::from_secs(2)), true)
            .await
            .unwrap();
        assert_eq!(o.status, 124);
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        let o = m
            .execute(
                "for p in /sys/class/virtio-ports/*; do \
                 [ \"$(cat $p/name 2>/dev/null)\" = org.nix-vmtest.ctl ] && c=/dev/${p##*/}; done; \
                 n=0; for f in /proc/[0-9]*/fd/*; do [[ $f -ef $c ]] && n=$((n+1)); done; \
                 echo $n",
                None,
                true,
            )
            .await
            .unwrap();
        // The listener holds the port once.
        assert_eq!(String::from_utf8_lossy(&o.output).trim(), "1");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_killed_mid_command_gives_a_clear_error_at_once() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("victim", vec![])]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        let pid = m.qemu_pid().expect("QEMU runs");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            Instant::now()
        });
        let err = m.execute("sleep 1000", None, true).await.unwrap_err();
        let killed_at = killer.join().unwrap();
        assert!(
            killed_at.elapsed() < Duration::from_secs(3),
            "noticed after {:?}",
            killed_at.elapsed()
        );
        let msg = err.to_string();
        assert!(msg.contains("machine victim stopped unexpectedly"), "{msg}");
        assert!(msg.contains("signal 9"), "{msg}");
        assert!(msg.contains("while running `sleep 1000`"), "{msg}");
        assert!(msg.contains("Last console lines of victim"), "{msg}");
        assert!(!m.is_up());
    })
    .await;
}

/// Output that is not small comes through the shared directory (9p tag
/// `shared`): exact (NUL bytes, bytes that are not UTF-8, trailing
/// newlines), from a command, a wait and a command whose detached child
/// holds its stdout, and no file is left there. Where the share is not
/// mounted, read-only, or the host's directory for it is gone, the same
/// output comes on the command port.
#[tokio::test(flavor = "current_thread")]
async fn big_outputs_come_through_the_shared_directory() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        let data = big_data();
        let src = m.state_dir().join("big-data");
        std::fs::write(&src, &data).unwrap();
        m.copy_from_host(&src, "/root/data").await.unwrap();
        let out_dir = m.shared_dir().join(SHARED_OUT);

        // Through the share: a command, a wait, a detached child.
        let o = through_share(m, "cat /root/data", true).await;
        assert!(o == data, "{} bytes differ", o.len());
        let o = m
            .wait_until(
                "the data",
                "cat /root/data",
                UntilMode::Succeed,
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert!(o.output == data, "a wait's {} bytes", o.output.len());
        let (status, out) = returns_quickly(m, "sleep 600 & cat /root/data").await;
        assert!(status == 0 && out == data, "{status}, {} bytes", out.len());
        m.execute("pkill -x sleep; true", None, false)
            .await
            .unwrap();
        assert_eq!(files_in(&out_dir), 0);

        // A read-only share, no share, no directory on the host's side:
        // the port.
        for (off, on) in [
            (
                "mount -o remount,ro /tmp/shared",
                "mount -o remount,rw /tmp/shared",
            ),
            (
                "umount /tmp/shared",
                "mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 shared /tmp/shared",
            ),
        ] {
            m.execute(off, None, true).await.unwrap();
            let o = through_share(m, "cat /root/data", false).await;
            assert!(o == data, "{off}: {} bytes", o.len());
            m.execute(on, None, true).await.unwrap();
            through_share(m, "cat /root/data", true).await;
        }
        std::fs::remove_dir(&out_dir).unwrap();
        let o = through_share(m, "cat /root/data", false).await;
        assert!(o == data, "without the host's directory: {} bytes", o.len());
        std::fs::create_dir(&out_dir).unwrap();
        through_share(m, "cat /root/data", true).await;
        assert_eq!(files_in(&out_dir), 0);
    })
    .await;
}

/// 300 000 bytes of every value, NULs and bytes that are not UTF-8
/// among them, ending in newlines.
fn big_data() -> Vec<u8> {
    let mut data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    data.extend_from_slice(b"\0\xff\n\n");
    data
}

/// Runs `command` and returns its output, checking that it came through
/// the shared directory (`share`) or not.
async fn through_share(
    m: &mut nix_vmtest::machine::Machine,
    command: &str,
    share: bool,
) -> Vec<u8> {
    let before = m.raw_shell().await.unwrap().shared_outputs();
    let o = m.execute(command, None, true).await.unwrap();
    let after = m.raw_shell().await.unwrap().shared_outputs();
    assert_eq!(
        after - before,
        u64::from(share),
        "`{command}` through the share"
    );
    o.output
}

/// How many files `dir` holds.
fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test(flavor = "current_thread")]
async fn lifecycle_monitor_console_and_files() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let out_dir = d.opts.out_dir.clone();
        let m = &mut d.machines[0];
        m.start(false).await.unwrap();

        // The console is kept for waits, including lines printed before the call.
        let line = m
            .wait_for_console_text("connecting to host", Some(Duration::from_secs(120)))
            .await
            .unwrap();
        assert!(line.contains("connecting to host"), "{line}");
        m.connect().await.unwrap();
        m.execute("echo to-the-console > /dev/ttyS0", None, true)
            .await
            .unwrap();
        m.wait_for_console_text("to-the-console", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        let err = m
            .wait_for_console_text("never printed", Some(Duration::from_millis(500)))
            .await
            .unwrap_err();
        assert!(matches!(err, MachineError::Timeout { .. }), "{err}");

        let status = m.send_monitor_command("info status").await.unwrap();
        assert!(status.contains("VM status: running"), "{status:?}");
        let kvm = m.send_monitor_command("info kvm").await.unwrap();
        assert!(kvm.contains("disabled"), "TCG was chosen here: {kvm:?}");

        let shot = m.screenshot("screen").await.unwrap();
        let png = std::fs::read(&shot).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(shot, out_dir.join("screen.png"));

        // Files both ways through the shared directory.
        let src = out_dir.join("from-host.txt");
        std::fs::write(&src, "host data\n").unwrap();
        m.copy_from_host(&src, "/root/dir/copied.txt")
            .await
            .unwrap();
        let o = m
            .execute("cat /root/dir/copied.txt", None, true)
            .await
            .unwrap();
        assert_eq!(o.output, b"host data\n");
        m.execute(
            "mkdir -p /root/res && echo result > /root/res/r.txt",
            None,
            true,
        )
        .await
        .unwrap();
        let back = m.copy_from_machine("/root/res", "out").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(back.join("r.txt")).unwrap(),
            "result\n"
        );

        // QMP works and sees the shutdown.
        let st = m.qmp_execute("query-status", None).await.unwrap();
        assert_eq!(st["status"], "running");
        m.shutdown().await.unwrap();
        assert!(!m.is_running() && !m.is_up());
        // ... and no socket is left in the machine's state directory.
        use std::os::unix::fs::FileTypeExt;
        let state = m.shared_dir().parent().unwrap().to_path_buf();
        let sockets: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type().ok()?.is_socket().then(|| e.file_name())
            })
            .collect();
        assert!(sockets.is_empty(), "sockets left in {state:?}: {sockets:?}");

        // A crash: QEMU quits at once.
        m.start(false).await.unwrap();
        m.connect().await.unwrap();
        let t = Instant::now();
        m.crash().await.unwrap();
        assert!(!m.is_running());
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&out_dir);
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn start_scripts_in_the_nixos_shape_run_like_images() {
    common::within(LIMIT, async {
        use nix_vmtest::spec::MachineSpec;
        let script = common::guests().join("run-tiny-vm");
        let spec = MachineSpec {
            name: "scripted".into(),
            start_script: Some(script),
            image: None,
            snapshot: None,
            peer: None,
        };
        let mut d = common::driver(vec![spec]).await;
        let m = &mut d.machines[0];
        m.connect().await.unwrap();
        let o = m.execute("uname -r", None, true).await.unwrap();
        assert_eq!(o.status, 0);
        assert!(String::from_utf8_lossy(&o.output).contains("-amd64"));
        // The driver's accelerator override reached QEMU through "$@".
        let kvm = m.send_monitor_command("info kvm").await.unwrap();
        assert!(kvm.contains("disabled"), "{kvm:?}");
        // The start script's QEMU is gone when the machine is released.
        let pid = m.qemu_pid().unwrap();
        m.release();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn reboot_waits_for_the_new_boot_on_the_same_console() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.start(true).await.unwrap();
        m.execute("echo before > /tmp/marker", None, true)
            .await
            .unwrap();
        let pid = m.qemu_pid().unwrap();
        m.reboot().await.unwrap();
        assert!(!m.is_up(), "is_up while the guest reboots");
        // The next command waits for the new backdoor; /tmp (tmpfs) is fresh.
        let o = m
            .execute("cat /tmp/marker 2>/dev/null || echo gone", None, true)
            .await
            .unwrap();
        assert_eq!(o.output, b"gone\n");
        assert!(m.is_up());
        assert_eq!(m.qemu_pid(), Some(pid), "the same QEMU (allow_reboot)");
    })
    .await;
}

/// After a boot a short plain command runs from the console before the
/// shell is set up, and the setup follows; the rest of the functions comes
/// after the next plain command (or before any other request). Whatever
/// the first request is, and however it ends (a timeout and a cancel
/// stop the command from the console; a detached subshell does not hold
/// it; a NUL byte and 1 MB of output wait in the guest for the setup), the
/// shell has all of them afterwards, and knows its names again.
#[tokio::test(flavor = "current_thread")]
async fn any_first_request_after_a_boot_leaves_the_shell_whole() {
    // Twelve boots: twice the usual limit.
    common::within(LIMIT * 2, async {
        let mut d = common::driver(vec![common::tiny("machine", vec![])]).await;
        let m = &mut d.machines[0];
        m.start(true).await.unwrap();
        for first in [
            "plain",
            "timeout",
            "cancelled",
            "cut-in-bootstrap",
            "cut-after-first",
            "detached",
            "wait",
            "non-ascii",
            "quiet",
            "nul",
            "chunks",
        ] {
            m.reboot().await.unwrap();
            m.connect().await.unwrap();
            match first {
                "plain" => {
                    let o = m.execute("echo one", None, true).await.unwrap();
                    assert_eq!(o.output, b"one\n");
                }
                "timeout" => {
                    let o = m.execute("sleep 100", Some(Duration::from_secs(1)), true);
                    assert_eq!(o.await.unwrap().status, 124);
                }
                "cancelled" => {
                    let o = m.execute("sleep 100", None, true);
                    let cut = tokio::time::timeout(Duration::from_millis(500), o).await;
                    assert!(cut.is_err(), "sleep 100 returned");
                }
                // Dropped while the bootstrap's answer is read, its record
                // (and the command's, sent with it) in the guest.
                "cut-in-bootstrap" => {
                    let o = m.execute("sleep 100", None, true);
                    let cut = tokio::time::timeout(Duration::from_millis(1), o).await;
                    assert!(cut.is_err(), "sleep 100 returned");
                }
                // The first command answered, the next one dropped while
                // the setup's answer is read (or its own).
                "cut-after-first" => {
                    let o = m.execute("echo one", None, true).await.unwrap();
                    assert_eq!(o.output, b"one\n");
                    let o = m.execute("sleep 100", None, true);
                    let cut = tokio::time::timeout(Duration::from_millis(1), o).await;
                    assert!(cut.is_err(), "sleep 100 returned");
                }
                // A detached subshell keeps what the command's line waits
                // on open: the line sees the command's end all the same.
                "detached" => {
                    let o = m.execute("(sleep 30; :) >/dev/null 2>&1 & echo started", None, true);
                    let o = tokio::time::timeout(Duration::from_secs(10), o)
                        .await
                        .expect("a detached subshell held the first command")
                        .unwrap();
                    assert_eq!(o.output, b"started\n");
                }
                "wait" => {
                    let o = m.wait_until("true", "true", UntilMode::Succeed, None);
                    assert_eq!(o.await.unwrap().status, 0);
                }
                "non-ascii" => {
                    let o = m.execute("echo \u{e9}", None, true).await.unwrap();
                    assert_eq!(o.output, "\u{e9}\n".as_bytes());
                }
                "quiet" => {
                    let o = m.execute("echo gone", None, false).await.unwrap();
                    assert_eq!(o.status, 0);
                }
                // Output with a NUL byte, and output in acknowledged
                // chunks: the guest reads the host's acknowledgements on
                // the stream the rest of the functions comes on.
                "nul" => {
                    let o = m.execute("printf 'a\\0b'", None, true).await.unwrap();
                    assert_eq!(o.output, b"a\0b");
                }
                _ => {
                    let cmd = "head -c 1000000 /dev/zero";
                    let o =
                        tokio::time::timeout(Duration::from_secs(120), m.execute(cmd, None, true));
                    let o = o
                        .await
                        .expect("1 MB of output, first after a boot")
                        .unwrap();
                    assert_eq!(o.output, vec![0; 1_000_000]);
                }
            }
            // The rest of the functions goes after the next plain
            // command's answer (a first command from the console leaves
            // the shell's setup to be read by that command).
            let o = m.execute("true", None, true).await.unwrap();
            assert_eq!(o.status, 0, "after {first:?}");
            let o = m
                .execute("type -t __vmt_until __vmt_bus_start; echo $0", None, true)
                .await
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&o.output),
                "function\nfunction\nbash\n",
                "after a first request {first:?}"
            );
            // A program (sent in its exec form once the names are known),
            // and a timeout again.
            let o = m.execute("uname", None, true).await.unwrap();
            assert_eq!(o.output, b"Linux\n", "after {first:?}");
            let o = m.execute("sleep 100", Some(Duration::from_secs(1)), true);
            assert_eq!(o.await.unwrap().status, 124, "after {first:?}");
            assert_eq!(
                shell_input(m).await,
                "org.nix-vmtest.cmd",
                "after {first:?}"
            );
        }
    })
    .await;
}

/// A unit wait listens to systemd through `systemd-stdio-bridge` on the
/// console. Dropped midway (Ctrl-C in the interactive driver drops it
/// like this), at its start or while it listens, it is ended before the
/// next command: the bridge is gone and the shell answers exactly.
#[tokio::test(flavor = "current_thread")]
async fn a_unit_wait_cut_short_leaves_the_shell_usable() {
    common::within(LIMIT, async {
        let mut d = common::driver(vec![common::systemd("machine", vec![])]).await;
        let m = &mut d.machines[0];
        let long = Some(Duration::from_secs(600));
        m.wait_for_unit("multi-user.target", None, long)
            .await
            .unwrap();
        // The backdoor shell runs under a UTF-8 locale here, as on NixOS:
        // output still comes back byte for byte, short (in one write with the
        // answer) and long (in chunks).
        let o = m.execute("locale charmap", None, true).await.unwrap();
        assert_eq!(o.output, b"UTF-8\n");
        let every: String = (1..=255u8).map(|b| format!("\\{b:03o}")).collect();
        for reps in [1, 40] {
            let command = format!("for i in $(seq {reps}); do printf '{every}'; done");
            let o = m.execute(&command, None, true).await.unwrap();
            assert_eq!(o.output, (1..=255u8).collect::<Vec<u8>>().repeat(reps));
        }
        for cut_after in [Duration::from_millis(5), Duration::from_millis(1500)] {
            common::restart_slow_service(m).await;
            // slow.service takes 3 s to become active.
            let cut =
                tokio::time::timeout(cut_after, m.wait_for_unit("slow.service", None, long)).await;
            assert!(cut.is_err(), "the wait ended within {cut_after:?}");
            let o = m
                .execute(
                    "echo ok; pgrep -c -f systemd-stdio-bridge || true",
                    None,
                    true,
                )
                .await
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&o.output),
                "ok\n0\n",
                "after a cut at {cut_after:?}"
            );
            m.wait_for_unit("slow.service", None, long).await.unwrap();
        }
    })
    .await;
}
