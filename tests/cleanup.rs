//! No leftovers: the real `nixos-test-driver` binary, on a tiny guest, is
//! stopped by SIGTERM, SIGINT, its global timeout, a failing script and
//! SIGKILL; afterwards no QEMU or Python of the run is alive and (except for
//! SIGKILL, which no process can clean up after) its temp dir is gone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What identifies one run's processes and files.
struct Run {
    marker: String,
    script: PathBuf,
    tmp: PathBuf,
    out: PathBuf,
}

/// Pids whose command line (or, with `environ`, environment) contains `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    pids_matching(needle, "cmdline")
}

fn pids_matching(needle: &str, file: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .map(|c| memchr::memmem::find(&c, needle.as_bytes()).is_some())
                .unwrap_or(false)
        })
        .filter(|pid| *pid != std::process::id())
        .collect()
}

fn start(name: &str, script: &str, extra: &[&str]) -> (Child, Run) {
    let g = common::guests();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cleanup-{name}"));
    let _ = std::fs::remove_dir_all(&base);
    let tmp = base.join("tmp");
    let out = base.join("out");
    std::fs::create_dir_all(&tmp).unwrap();
    let marker = format!("vmtest-cleanup-{name}-{}", std::process::id());
    let nodes = serde_json::json!({"machines": [{"name": "machine", "image": {
        "kernel": g.join("vmlinuz"), "initrd": g.join("tiny/initrd"), "memory": 256,
        "kernelParams": marker, "vlans": [1]}}]});
    std::fs::write(base.join("nodes.json"), nodes.to_string()).unwrap();
    std::fs::write(base.join("script.py"), script).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"))
        .arg("--nodes-json")
        .arg(base.join("nodes.json"))
        .arg("-o")
        .arg(&out)
        .args(extra)
        .arg(base.join("script.py"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = base.join("script.py");
    (
        child,
        Run {
            marker,
            script,
            tmp,
            out,
        },
    )
}

/// Waits for the driver to exit; returns its exit code and log.
fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

impl Run {
    /// Waits until the guest's shell answered (the script printed `READY`
    /// into the output dir).
    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.out.join("ready").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the guest never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!pids_with(&self.marker).is_empty(), "QEMU runs");
    }

    fn assert_nothing_left(&self, log: &str) {
        // QEMU processes go with their process group at once; give the
        // kernel a moment to reap.
        let t = Instant::now();
        while !pids_with(&self.marker).is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            pids_with(&self.marker).is_empty(),
            "QEMU of the run is still alive\n{log}"
        );
        let script = self.script.display().to_string();
        assert!(
            pids_matching(&format!("NIX_VMTEST_SCRIPT={script}"), "environ").is_empty(),
            "the Python script host is still alive\n{log}"
        );
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}\n{log}");
    }
}

const READY: &str =
    "machine.succeed('true')\nopen(os.path.join(driver.out_dir, 'ready'), 'w').close()\n";

fn ready_then(rest: &str) -> String {
    format!("import os\nos.makedirs(driver.out_dir, exist_ok=True)\n{READY}{rest}")
}

#[test]
fn sigterm_and_sigint_stop_everything_and_leave_nothing() {
    for (name, sig) in [("term", Signal::SIGTERM), ("int", Signal::SIGINT)] {
        let (child, run) = start(name, &ready_then("machine.succeed('sleep 600')\n"), &[]);
        run.wait_ready();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let (code, log) = finish(child);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stopping took {:?}",
            t.elapsed()
        );
        assert_eq!(code, Some(1), "{log}");
        let sig_name = if name == "term" { "SIGTERM" } else { "SIGINT" };
        assert!(
            log.contains(&format!("received {sig_name}: stopping every machine")),
            "{log}"
        );
        run.assert_nothing_left(&log);
    }
}

#[test]
fn the_global_timeout_ends_everything_and_says_so() {
    let (child, run) = start(
        "timeout",
        &ready_then("machine.succeed('sleep 600')\n"),
        &["--global-timeout", "40"],
    );
    let (code, log) = finish(child);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("global timeout of 40 seconds reached"),
        "{log}"
    );
    run.assert_nothing_left(&log);
}

#[test]
fn a_failing_script_reports_its_line_and_leaves_nothing() {
    let (child, run) = start(
        "fail",
        &ready_then("x = 1\nmachine.succeed('exit 7')\n"),
        &[],
    );
    let (code, log) = finish(child);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("line 6"), "the script's own line: {log}");
    assert!(
        log.contains("command `exit 7` failed (exit code 7)"),
        "{log}"
    );
    // As nixpkgs: the report marked `!!! `, and no "finished" after a failure.
    assert!(
        log.contains("\n!!! RequestedAssertionFailed: command `exit 7` failed (exit code 7)\n"),
        "{log}"
    );
    assert!(!log.contains("test script finished in"), "{log}");
    run.assert_nothing_left(&log);
}

#[test]
fn sigkill_of_the_driver_takes_qemu_down_and_the_next_run_sweeps_its_state() {
    let (child, run) = start("kill", &ready_then("machine.succeed('sleep 600')\n"), &[]);
    run.wait_ready();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let (code, _log) = finish(child);
    assert_eq!(code, None, "killed by a signal");
    let t = Instant::now();
    while !pids_with(&run.marker).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids_with(&run.marker).is_empty(),
        "QEMU outlived a SIGKILLed driver"
    );
    // Nothing can remove files at SIGKILL: the state directory is still
    // there, and the next run with the same TMPDIR removes it.
    let left = state_dirs(&run.tmp);
    assert_eq!(left.len(), 1, "the killed driver's state dir: {left:?}");
    let next_script = run.script.with_file_name("next.py");
    std::fs::write(&next_script, "print('no machine started')\n").unwrap();
    let next = Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"))
        .arg("--nodes-json")
        .arg(run.script.with_file_name("nodes.json"))
        .arg("-o")
        .arg(&run.out)
        .arg(&next_script)
        .env("TMPDIR", &run.tmp)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&next.stderr).into_owned() + &String::from_utf8_lossy(&next.stdout);
    assert!(next.status.success(), "{log}");
    assert!(
        log.contains("left behind by a driver that was killed"),
        "{log}"
    );
    assert_eq!(state_dirs(&run.tmp), Vec::<PathBuf>::new(), "{log}");
    let _ = std::fs::remove_dir_all(run.tmp.parent().unwrap());
}

/// The driver state directories (`nix-vmtest.*`) in `tmp`.
fn state_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nix-vmtest."))
        .map(|e| e.path())
        .collect()
}
