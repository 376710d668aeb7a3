//! The interactive driver (`nixos-test-driver -I`) driven the way a person
//! uses it: in a terminal (tmux, 200x50), typing at the Python REPL.
//!
//! Checks: the REPL prompt comes up; `machine.succeed(...)` boots the machine
//! and prints the result; `test_script()` runs the script given on the
//! command line; Ctrl-C interrupts a long call (`KeyboardInterrupt`) and the
//! session goes on; `machine.shell_interact()` gives a root shell in the guest
//! and Ctrl-D returns to the REPL; Ctrl-D at the REPL ends the driver, after
//! which no QEMU of this test is left.
//!
//! The tmux server is private to the test (`tmux -L <unique>`, so it has this
//! process' environment) and is killed on drop, whatever happens. QEMU is
//! recognised by a unique directory in its command line (its `TMPDIR`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server + session; killed on drop (also when the test panics).
struct Tmux {
    socket: String,
    session: String,
    /// Processes whose command line has this are ours (killed on drop too).
    marker: String,
}

impl Tmux {
    fn start(socket: &str, command: &str, marker: &str) -> Tmux {
        let t = Tmux {
            socket: socket.into(),
            session: "repl".into(),
            marker: marker.into(),
        };
        let st = Command::new("tmux")
            .args([
                "-L",
                socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                &t.session,
            ])
            .args(["-x", "200", "-y", "50", command])
            .status()
            .expect("running tmux (is it installed?)");
        assert!(st.success(), "tmux new-session failed");
        let _ = Command::new("tmux")
            .args(["-L", socket, "set-option", "-g", "history-limit", "50000"])
            .status();
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux")
    }

    /// The pane's whole text (history included).
    fn capture(&self) -> String {
        let o = self.tmux(&["capture-pane", "-p", "-J", "-t", &self.session, "-S", "-"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        let o = self.tmux(&["send-keys", "-t", &self.session, "-l", text]);
        assert!(
            o.status.success(),
            "send-keys: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.key("Enter");
    }

    /// Sends one key (tmux name: `Enter`, `C-c`, `C-d`).
    fn key(&self, key: &str) {
        let o = self.tmux(&["send-keys", "-t", &self.session, key]);
        assert!(
            o.status.success(),
            "send-keys {key}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Waits until the pane shows `text` at least `count` times; returns the pane.
    fn wait_for_count(&self, text: &str, count: usize, timeout: Duration, what: &str) -> String {
        let start = Instant::now();
        loop {
            let pane = self.capture();
            if pane.matches(text).count() >= count {
                return pane;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{what}: `{text}` (x{count}) did not show within {timeout:?}; the terminal shows:\n{pane}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_for(&self, text: &str, timeout: Duration, what: &str) -> String {
        self.wait_for_count(text, 1, timeout, what)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-session", "-t", &self.session]);
        let _ = self.tmux(&["kill-server"]);
        for pid in our_processes(&self.marker) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Pids of processes (other than pgrep) whose command line contains `marker`.
fn our_processes(marker: &str) -> Vec<u32> {
    let o = Command::new("pgrep")
        .args(["-f", "--", marker])
        .output()
        .expect("running pgrep");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid: &u32| *pid != std::process::id())
        .collect()
}

fn qemu_processes(marker: &str) -> Vec<String> {
    let o = Command::new("pgrep")
        .args(["-a", "-f", "--", marker])
        .output()
        .expect("running pgrep");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("qemu"))
        .map(str::to_string)
        .collect()
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// One `nixos-test-driver -I` in its own tmux server, with one tiny machine.
struct Session {
    tm: Tmux,
    dir: PathBuf,
    marker: String,
}

const LONG: Duration = Duration::from_secs(300);

impl Session {
    /// Starts the driver and waits for the REPL's first prompt.
    fn start(tag: &str) -> Session {
        let g = common::guests();
        for f in ["vmlinuz", "tiny/initrd"] {
            assert!(
                g.join(f).is_file(),
                "guest file {f} missing in {}",
                g.display()
            );
        }
        let unique = format!(
            "nixvmtest-{tag}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&unique);
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let nodes = dir.join("nodes.json");
        fs::write(
            &nodes,
            format!(
                "{{\"machines\":[{{\"name\":\"machine\",\"image\":{{\"kernel\":\"{}\",\"initrd\":\"{}\",\
                 \"disk\":null,\"memory\":256,\"vlans\":[]}}}}]}}\n",
                g.join("vmlinuz").display(),
                g.join("tiny/initrd").display()
            ),
        )
        .unwrap();
        let script = dir.join("script.py");
        fs::write(
            &script,
            "machine.succeed(\"touch /tmp/from-test-script\")\nprint(\"test-script-\" + \"ran\")\n",
        )
        .unwrap();
        let command = format!(
            "cd {dir} && TMPDIR={tmp} {bin} -I --nodes-json {nodes} -o {out} {script}; \
             echo driver-exit-code=$?; sleep 3600",
            dir = sh_quote(&dir),
            tmp = sh_quote(&tmp),
            bin = sh_quote(Path::new(env!("CARGO_BIN_EXE_nixos-test-driver"))),
            nodes = sh_quote(&nodes),
            out = sh_quote(&dir.join("out")),
            script = sh_quote(&script),
        );
        // QEMU's command line has its state dir, which is under `tmp`.
        let marker = tmp.display().to_string();
        let tm = Tmux::start(&unique, &command, &marker);
        tm.wait_for(
            "nix-vmtest interactive session",
            Duration::from_secs(60),
            "banner",
        );
        tm.wait_for(">>> ", Duration::from_secs(60), "first prompt");
        Session { tm, dir, marker }
    }

    /// Ctrl-D at the prompt: the driver exits 0 and no QEMU of ours is left;
    /// then the tmux server is killed.
    fn finish(self) {
        let tm = &self.tm;
        tm.key("C-d");
        let pane = tm.wait_for(
            "driver-exit-code=",
            Duration::from_secs(120),
            "the driver exits",
        );
        let code = pane
            .split("driver-exit-code=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        assert_eq!(
            code, "0",
            "the driver's exit code; the terminal shows:\n{pane}"
        );
        let start = Instant::now();
        loop {
            let left = qemu_processes(&self.marker);
            if left.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "QEMU left after the driver exited: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let socket = self.tm.socket.clone();
        let marker = self.marker.clone();
        let dir = self.dir.clone();
        drop(self);
        assert!(qemu_processes(&marker).is_empty());
        let o = Command::new("tmux")
            .args(["-L", &socket, "has-session"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "the tmux session is still there");
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The REPL, `test_script()`, `shell_interact()`, and Ctrl-D to leave.
#[test]
fn repl_in_a_terminal() {
    let s = Session::start("repl");
    let tm = &s.tm;

    // A command boots the machine and prints its output.
    tm.type_line("machine.succeed(\"echo hello-from-repl\")");
    tm.wait_for("'hello-from-repl\\n'", LONG, "machine.succeed at the REPL");

    // test_script() runs the script given on the command line.
    tm.type_line("test_script()");
    tm.wait_for("test-script-ran", LONG, "test_script()");
    tm.type_line("machine.succeed(\"ls /tmp/from-test-script\")");
    tm.wait_for("'/tmp/from-test-script\\n'", LONG, "the script's effect");

    // shell_interact(): a root shell in the guest; Ctrl-D back to the REPL.
    tm.type_line("machine.shell_interact()");
    std::thread::sleep(Duration::from_secs(3));
    tm.type_line("echo in-guest-$((1+1))");
    tm.wait_for(
        "in-guest-2",
        Duration::from_secs(120),
        "a command in shell_interact",
    );
    tm.type_line("echo uid-$(id -u)-$((40+2))");
    tm.wait_for(
        "uid-0-42",
        Duration::from_secs(60),
        "root in shell_interact",
    );
    tm.key("C-d");
    tm.type_line("print(\"back-\" + \"in-repl\")");
    tm.wait_for(
        "back-in-repl",
        Duration::from_secs(120),
        "the REPL after shell_interact",
    );
    tm.type_line("machine.succeed(\"echo after-shell\")");
    tm.wait_for(
        "'after-shell\\n'",
        LONG,
        "machine commands after shell_interact",
    );

    s.finish();
}

/// Ctrl-C interrupts a long call, not the session; the machine still answers.
#[test]
fn ctrl_c_interrupts_the_call_not_the_session() {
    let s = Session::start("ctrlc");
    let tm = &s.tm;
    tm.type_line("machine.succeed(\"echo booted\")");
    tm.wait_for("'booted\\n'", LONG, "the machine boots");

    tm.type_line("machine.succeed(\"sleep 100\")");
    tm.wait_for("must succeed: sleep 100", LONG, "the long call starts");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    tm.key("C-c");
    tm.wait_for("KeyboardInterrupt", Duration::from_secs(60), "Ctrl-C");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "Ctrl-C took {:?}",
        t0.elapsed()
    );
    tm.type_line("machine.succeed(\"echo still-alive\")");
    // Well before the guest's `sleep 100` would have ended by itself.
    tm.wait_for(
        "'still-alive\\n'",
        Duration::from_secs(60),
        "the session after Ctrl-C",
    );
    // And Python itself: a plain expression.
    tm.type_line("print(6 * 7)");
    tm.wait_for("\n42\n", Duration::from_secs(30), "Python after Ctrl-C");

    s.finish();
}
