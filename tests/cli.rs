//! The driver's command line: `--check`, bad input that must be refused
//! with a message naming the thing and the fix (none of these boot), and a
//! start script given by a relative path, as one types it by hand (boots).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn driver(args: &[&str], cwd: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"))
        .args(args)
        .current_dir(cwd)
        .env_remove("testScript")
        .env_remove("startScripts")
        .env_remove("vlans")
        .env_remove("out")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const NODES: &str = r#"{"machines": [
  {"name": "client", "image": {"kernel": "/k", "initrd": "/i"}},
  {"name": "server", "image": {"kernel": "/k", "initrd": "/i"}}]}"#;

#[test]
fn check_reports_syntax_errors_and_unknown_machines_with_their_line() {
    let d = dir("check");
    std::fs::write(d.join("nodes.json"), NODES).unwrap();
    std::fs::write(
        d.join("ok.py"),
        "start_all()\nserver.succeed('true')\nclient.fail('false')\n",
    )
    .unwrap();
    std::fs::write(d.join("typo.py"), "start_all()\n\nservr.succeed('true')\n").unwrap();
    std::fs::write(d.join("syntax.py"), "start_all()\nif True\n  pass\n").unwrap();

    let (code, text) = driver(&["--check", "--nodes-json", "nodes.json", "ok.py"], &d);
    assert_eq!(code, 0, "{text}");

    let (code, text) = driver(&["--check", "--nodes-json", "nodes.json", "typo.py"], &d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("typo.py:3"), "{text}");
    assert!(
        text.contains("servr") && text.contains("client, server"),
        "{text}"
    );

    let (code, text) = driver(&["--check", "--nodes-json", "nodes.json", "syntax.py"], &d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("syntax.py:2"), "{text}");
}

#[test]
fn bad_input_is_refused_with_the_name_and_the_fix() {
    let d = dir("bad");
    std::fs::write(d.join("t.py"), "start_all()\n").unwrap();

    let (code, text) = driver(&["--nodes-json", "missing.json", "t.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("missing.json"), "{text}");

    std::fs::write(d.join("broken.json"), "{\"machines\": [{\"nam\": 1}]}").unwrap();
    let (code, text) = driver(&["--nodes-json", "broken.json", "t.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("broken.json") && text.contains("name"),
        "{text}"
    );

    let (code, text) = driver(&["--start-scripts", "/tmp/start", "t.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("run-<name>-vm"), "{text}");

    std::fs::write(d.join("dup.json"), NODES.replace("client", "server")).unwrap();
    let (code, text) = driver(&["--nodes-json", "dup.json", "t.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("two machines are named \"server\""), "{text}");

    std::fs::write(d.join("nodes.json"), NODES).unwrap();
    let (code, text) = driver(&["--nodes-json", "nodes.json", "no-such-script.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no-such-script.py"), "{text}");

    let (code, text) = driver(&["--accel", "xen", "t.py"], &d);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("auto") && text.contains("tcg"), "{text}");
}

/// `--start-scripts ./run-machine-vm` from the directory holding it: the
/// path is taken from the driver's directory, not the machine's state dir.
#[test]
fn a_relative_start_script_boots() {
    let d = dir("relative");
    let tiny = std::fs::read_to_string(common::guests().join("run-tiny-vm")).unwrap();
    assert!(tiny.contains("\nNAME=tiny\n"), "run-tiny-vm sets NAME=tiny");
    let script = d.join("run-machine-vm");
    std::fs::write(&script, tiny.replace("\nNAME=tiny\n", "\nNAME=machine\n")).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    std::fs::write(
        d.join("t.py"),
        "print('answer:', machine.succeed('echo $((6 * 7))').strip())\n",
    )
    .unwrap();
    let (code, text) = driver(
        &["--start-scripts", "./run-machine-vm", "-o", "out", "t.py"],
        &d,
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("answer: 42"), "{text}");
}
