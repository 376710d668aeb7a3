//! Runs every NixOS-style test script in `tests/scripts/*.py` through the
//! real `nixos-test-driver` binary against the Debian test guests
//! (`tests/guests/build.sh`), and checks what each script's header asks for.
//!
//! Header (comment lines at the top of the script, before the first code line):
//!
//! ```text
//! # nodes: server=systemd@1,2 client=tiny@1   guests tiny|systemd, optional @VLANS
//! # expect: pass | fail                        exit code 0 | 1
//! # expect-log: <substring>                    must appear in the driver's stdout+stderr
//! # expect-no-log: <substring>                 must not appear
//! # expect-stdout: <substring>                 must appear in the driver's stdout
//! # expect-no-stdout: <substring>              must not appear there
//! # expect-stderr: <substring>                 must appear in the driver's stderr (the log)
//! # expect-no-stderr: <substring>              must not appear there
//! # junit: <substring>                         must appear in the JUnit XML
//! # junit-cases: N                             number of <testcase> elements
//! # timeout: SECS                              --global-timeout (default 900)
//! # outdir: relative                           pass `-o out` (relative to the driver's cwd)
//! ```
//!
//! Every script also gets: `--junit-xml` (the file must exist afterwards), a
//! private `TMPDIR` (so that its QEMU processes are recognisable; none may be
//! left when the driver has exited) and `NIX_VMTEST_GUESTS` (the guests'
//! directory, for `create_machine` with `run-tiny-vm`).
//!
//! Environment: `NIX_VMTEST_GUESTS` (guests' dir; default `build.sh
//! --print-dir`), `NIX_VMTEST_SCRIPTS=a,b` (run only these scripts, by file
//! stem), `NIX_VMTEST_SCRIPT_JOBS` (parallel drivers, default 2).
//!
//! Missing guests are a failure, never a skip.

mod common;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: u64 = 900;

#[derive(Debug, Clone)]
struct Node {
    name: String,
    guest: String,
    vlans: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Script {
    name: String,
    path: PathBuf,
    nodes: Vec<Node>,
    expect_pass: bool,
    expect_log: Vec<String>,
    expect_no_log: Vec<String>,
    /// (substring, wanted) in the driver's stdout.
    stdout: Vec<(String, bool)>,
    /// (substring, wanted) in the driver's stderr.
    stderr: Vec<(String, bool)>,
    junit: Vec<String>,
    junit_cases: Option<usize>,
    timeout: u64,
    relative_out: bool,
}

fn parse_header(path: &Path) -> Result<Script, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut s = Script {
        name,
        path: path.to_path_buf(),
        nodes: vec![],
        expect_pass: true,
        expect_log: vec![],
        expect_no_log: vec![],
        stdout: vec![],
        stderr: vec![],
        junit: vec![],
        junit_cases: None,
        timeout: DEFAULT_TIMEOUT,
        relative_out: false,
    };
    let mut saw_expect = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "nodes" => {
                for word in value.split_whitespace() {
                    let (name, rest) = word
                        .split_once('=')
                        .ok_or_else(|| format!("bad node `{word}` (want name=guest[@vlans])"))?;
                    let (guest, vlans) = match rest.split_once('@') {
                        Some((g, v)) => (
                            g,
                            v.split(',')
                                .map(|x| {
                                    x.parse::<u32>().map_err(|e| format!("bad VLAN `{x}`: {e}"))
                                })
                                .collect::<Result<Vec<_>, _>>()?,
                        ),
                        None => (rest, vec![]),
                    };
                    if guest != "tiny" && guest != "systemd" {
                        return Err(format!("unknown guest `{guest}` (tiny|systemd)"));
                    }
                    s.nodes.push(Node {
                        name: name.into(),
                        guest: guest.into(),
                        vlans,
                    });
                }
            }
            "expect" => {
                saw_expect = true;
                s.expect_pass = match value {
                    "pass" => true,
                    "fail" => false,
                    other => return Err(format!("bad `expect: {other}` (pass|fail)")),
                }
            }
            "expect-log" => s.expect_log.push(value.to_string()),
            "expect-no-log" => s.expect_no_log.push(value.to_string()),
            "expect-stdout" => s.stdout.push((value.to_string(), true)),
            "expect-no-stdout" => s.stdout.push((value.to_string(), false)),
            "expect-stderr" => s.stderr.push((value.to_string(), true)),
            "expect-no-stderr" => s.stderr.push((value.to_string(), false)),
            "junit" => s.junit.push(value.to_string()),
            "junit-cases" => {
                s.junit_cases = Some(value.parse().map_err(|e| format!("bad junit-cases: {e}"))?)
            }
            "timeout" => s.timeout = value.parse().map_err(|e| format!("bad timeout: {e}"))?,
            "outdir" => match value {
                "relative" => s.relative_out = true,
                "absolute" => s.relative_out = false,
                other => return Err(format!("bad `outdir: {other}` (relative|absolute)")),
            },
            // Other comments with a colon are prose.
            _ => {}
        }
    }
    if s.nodes.is_empty() {
        return Err("no `# nodes:` header".into());
    }
    if !saw_expect {
        return Err("no `# expect:` header".into());
    }
    Ok(s)
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn nodes_json(s: &Script, g: &Path) -> String {
    let p = |rel: &str| json_str(&g.join(rel).display().to_string());
    let machines: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            let (initrd, disk, memory) = if n.guest == "tiny" {
                (p("tiny/initrd"), "null".to_string(), 256)
            } else {
                (p("systemd/initrd"), p("systemd/base.qcow2"), 512)
            };
            let vlans: Vec<String> = n.vlans.iter().map(u32::to_string).collect();
            format!(
                "{{\"name\":{},\"image\":{{\"kernel\":{},\"initrd\":{initrd},\"disk\":{disk},\
                 \"memory\":{memory},\"vlans\":[{}]}}}}",
                json_str(&n.name),
                p("vmlinuz"),
                vlans.join(",")
            )
        })
        .collect();
    format!("{{\"machines\":[{}]}}\n", machines.join(","))
}

/// Processes whose command line mentions `marker` (other than ours).
fn processes_with(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", "--", marker])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains("pgrep"))
            .map(str::to_string)
            .collect(),
        Err(_) => vec![],
    }
}

struct Outcome {
    name: String,
    duration: Duration,
    problems: Vec<String>,
    log_path: PathBuf,
}

fn run_script(s: &Script, g: &Path, base: &Path) -> Outcome {
    let started = Instant::now();
    let dir = base.join(&s.name);
    let _ = fs::remove_dir_all(&dir);
    let out = dir.join("out");
    let tmp = dir.join("tmp");
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(&tmp).unwrap();
    let nodes = dir.join("nodes.json");
    fs::write(&nodes, nodes_json(s, g)).unwrap();
    let junit = out.join("junit.xml");
    // stderr (the log) and stdout (the script's print()) apart.
    let log_path = dir.join("log.txt");
    let log = fs::File::create(&log_path).unwrap();
    let stdout_path = dir.join("stdout.txt");
    let stdout = fs::File::create(&stdout_path).unwrap();
    let mut problems = Vec::new();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"));
    let (out_arg, junit_arg) = if s.relative_out {
        // A relative --junit-xml is taken from the output directory (nixpkgs).
        (PathBuf::from("out"), PathBuf::from("junit.xml"))
    } else {
        (out.clone(), junit.clone())
    };
    cmd.arg("--nodes-json")
        .arg(&nodes)
        .arg("-o")
        .arg(&out_arg)
        .arg("--junit-xml")
        .arg(&junit_arg)
        .arg("--global-timeout")
        .arg(s.timeout.to_string())
        .arg(&s.path)
        .current_dir(&dir)
        .env("TMPDIR", &tmp)
        .env("NIX_VMTEST_GUESTS", g)
        .env_remove("out")
        .env_remove("testScript")
        .env_remove("nodesJson")
        .env_remove("startScripts")
        .env_remove("vlans")
        .env_remove("globalTimeout")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("cannot start the driver: {e}"));
            return Outcome {
                name: s.name.clone(),
                duration: started.elapsed(),
                problems,
                log_path,
            };
        }
    };
    // The driver's own global timeout should end it; this is the backstop.
    let limit = Duration::from_secs(s.timeout + 120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                problems.push(format!("the driver did not exit within {limit:?}; killed"));
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                problems.push(format!("waiting for the driver: {e}"));
                break None;
            }
        }
    };
    let duration = started.elapsed();
    let stderr_text = fs::read_to_string(&log_path).unwrap_or_default();
    let stdout_text = fs::read_to_string(&stdout_path).unwrap_or_default();
    let text = format!("{stderr_text}{stdout_text}");

    if let Some(st) = status {
        let want = if s.expect_pass { 0 } else { 1 };
        if st.code() != Some(want) {
            problems.push(format!("exit status {st}, expected code {want}"));
        }
    }
    for want in &s.expect_log {
        if !text.contains(want.as_str()) {
            problems.push(format!("log lacks `{want}`"));
        }
    }
    for unwanted in &s.expect_no_log {
        if text.contains(unwanted.as_str()) {
            problems.push(format!("log has `{unwanted}`, which it must not"));
        }
    }
    for (stream, text, checks) in [
        ("stdout", &stdout_text, &s.stdout),
        ("stderr", &stderr_text, &s.stderr),
    ] {
        for (part, wanted) in checks {
            if text.contains(part.as_str()) != *wanted {
                problems.push(if *wanted {
                    format!("{stream} lacks `{part}`")
                } else {
                    format!("{stream} has `{part}`, which it must not")
                });
            }
        }
    }
    match fs::read_to_string(&junit) {
        Ok(xml) => {
            for want in &s.junit {
                if !xml.contains(want.as_str()) {
                    problems.push(format!("JUnit XML lacks `{want}`"));
                }
            }
            if let Some(n) = s.junit_cases {
                let got = xml.matches("<testcase ").count();
                if got != n {
                    problems.push(format!("JUnit XML has {got} test cases, expected {n}"));
                }
            }
        }
        Err(e) => problems.push(format!("no JUnit XML at {}: {e}", junit.display())),
    }
    // No process of this run (QEMU, start scripts) may outlive the driver.
    std::thread::sleep(Duration::from_millis(300));
    let left = processes_with(&tmp.display().to_string());
    if !left.is_empty() {
        problems.push(format!("processes left behind: {left:?}"));
        for l in &left {
            if let Some(pid) = l.split_whitespace().next() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
    Outcome {
        name: s.name.clone(),
        duration,
        problems,
        log_path,
    }
}

#[test]
fn all_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let mut paths: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", root.display());

    let mut scripts = Vec::new();
    let mut header_errors = Vec::new();
    for p in &paths {
        match parse_header(p) {
            Ok(s) => scripts.push(s),
            Err(e) => header_errors.push(format!("{}: {e}", p.display())),
        }
    }
    assert!(
        header_errors.is_empty(),
        "bad script headers:\n{}",
        header_errors.join("\n")
    );

    if let Ok(only) = std::env::var("NIX_VMTEST_SCRIPTS") {
        let wanted: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        for w in &wanted {
            assert!(
                scripts.iter().any(|s| s.name == *w),
                "NIX_VMTEST_SCRIPTS: no script `{w}`"
            );
        }
        scripts.retain(|s| wanted.contains(&s.name.as_str()));
    }
    // Slow (systemd) scripts first, so that they overlap with the quick ones.
    scripts.sort_by_key(|s| {
        (
            !s.nodes.iter().any(|n| n.guest == "systemd"),
            s.name.clone(),
        )
    });

    let g = common::guests();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scripts");
    fs::create_dir_all(&base).unwrap();
    let jobs: usize = std::env::var("NIX_VMTEST_SCRIPT_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|j| *j > 0)
        .unwrap_or(2);
    let total = scripts.len();
    eprintln!(
        "running {total} scripts, {jobs} at a time; logs under {}",
        base.display()
    );

    let queue = Arc::new(Mutex::new(scripts.into_iter().collect::<VecDeque<_>>()));
    let results = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let all_started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (queue, results, g, base) =
                (queue.clone(), results.clone(), g.clone(), base.clone());
            std::thread::spawn(move || loop {
                let Some(s) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let o = run_script(&s, &g, &base);
                eprintln!(
                    "script {:<28} {:>7.1}s  {}",
                    o.name,
                    o.duration.as_secs_f64(),
                    if o.problems.is_empty() {
                        "ok".to_string()
                    } else {
                        format!("FAILED: {}", o.problems.join("; "))
                    }
                );
                results.lock().unwrap().push(o);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a script worker panicked");
    }
    let results = results.lock().unwrap();
    assert_eq!(results.len(), total, "not every script ran");
    let failed: Vec<String> = results
        .iter()
        .filter(|o| !o.problems.is_empty())
        .map(|o| {
            format!(
                "{}: {} (log: {})",
                o.name,
                o.problems.join("; "),
                o.log_path.display()
            )
        })
        .collect();
    eprintln!(
        "{} of {total} scripts as expected, in {:.0}s",
        total - failed.len(),
        all_started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} script(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
