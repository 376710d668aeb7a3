//! The driver's command line: `--check`, bad input that must be refused
//! with a message naming the thing and the fix (none of these boot), a
//! start script given by a relative path, as one types it by hand (boots),
//! nixpkgs' `--config driverConfiguration.json` with today's options
//! (boots), its errors, and the older environment form (boots).

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
    driver_env(args, cwd, &[])
}

/// Runs the driver with these environment variables (and none of the
/// ones it reads from the caller's environment).
fn driver_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"));
    cmd.args(args).current_dir(cwd);
    for var in [
        "testScript",
        "startScripts",
        "vlans",
        "out",
        "globalTimeout",
        "nodesJson",
        "logLevel",
        "LOGFILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
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

/// Writes a NixOS-shaped start script of the tiny guest,
/// `<dir>/<name>-vm/bin/run-<name>-vm` (as `config.system.build.vm` has
/// it), with `tests/guests/make-start-script`.
fn start_script(dir: &Path, name: &str, node: u32, vlans: &str, hosts: &str) -> PathBuf {
    let bin = dir.join(format!("{name}-vm/bin"));
    std::fs::create_dir_all(&bin).unwrap();
    let st = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/guests/make-start-script"
        ))
        .args([name, "tiny", &node.to_string(), vlans, hosts])
        .arg(&bin)
        .env("NIX_VMTEST_GUESTS_DIR", common::guests())
        .status()
        .unwrap();
    assert!(st.success(), "make-start-script {name}");
    bin.join(format!("run-{name}-vm"))
}

/// A driver configuration as nixpkgs' `driver-configuration.nix` writes it.
fn config(vms: &[(&str, &Path)], vlans: &[u32], timeout: u64, script: &str) -> String {
    let vms: serde_json::Map<String, serde_json::Value> = vms
        .iter()
        .map(|(name, path)| {
            (
                name.to_string(),
                serde_json::json!({"name": name, "start_script": path}),
            )
        })
        .collect();
    serde_json::json!({
        "vms": vms,
        "containers": {},
        "vlans": vlans,
        "global_timeout": timeout,
        "enable_ssh_backdoor": false,
        "test_script": script,
    })
    .to_string()
}

/// No QEMU process whose command line names `dir` (the test's TMPDIR) is left.
fn assert_no_qemu_under(dir: &Path, text: &str) {
    let out = Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{}", dir.display())])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "QEMU left behind: {}\n{text}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// nixpkgs' command line as `driver.nix` and `run.nix` give it
/// (`--config … --log-level info -o $out`), plus `--junit-xml` and
/// `$LOGFILE`: two machines on the configuration's VLAN, named by their
/// keys, reach each other by name.
#[test]
fn a_nixpkgs_driver_configuration_boots_its_machines_on_its_vlans() {
    let d = dir("config");
    let hosts = "client=192.168.1.1,server=192.168.1.2";
    let client = start_script(&d, "client", 1, "1", hosts);
    let server = start_script(&d, "server", 2, "1", hosts);
    std::fs::write(
        d.join("test-script"),
        "start_all()\n\
         print('hostname:', server.succeed('hostname').strip())\n\
         client.succeed('ping -c1 -W5 server')\n\
         with subtest('server reaches client'):\n\
         \x20   server.succeed('ping -c1 -W5 192.168.1.1')\n",
    )
    .unwrap();
    let script = d.join("test-script").display().to_string();
    std::fs::write(
        d.join("driverConfiguration.json"),
        config(
            &[("client", &client), ("server", &server)],
            &[1],
            300,
            &script,
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let logfile = d.join("log.xml").display().to_string();
    let tmp = d.join("tmp").display().to_string();
    let (code, text) = driver_env(
        &[
            "--config",
            "driverConfiguration.json",
            "--log-level",
            "info",
            "-o",
            "out",
            "--junit-xml",
            "junit.xml",
        ],
        &d,
        &[("LOGFILE", &logfile), ("TMPDIR", &tmp)],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hostname: server"), "{text}");
    assert!(
        text.contains("Test will time out and terminate in 300 seconds"),
        "{text}"
    );
    assert!(text.contains("test script finished in"), "{text}");
    // As nixpkgs: a relative --junit-xml is in the output directory.
    let junit = std::fs::read_to_string(d.join("out/junit.xml")).unwrap();
    assert!(junit.contains("server reaches client"), "{junit}");
    // nixpkgs' XML log, well-formed, with the machines' lines.
    let xml = std::fs::read_to_string(&logfile).unwrap();
    assert!(xml.contains("<line machine=\"server\""), "{xml}");
    assert!(xml.trim_end().ends_with("</logfile>"), "{xml}");
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(&logfile)
        .status()
        .unwrap();
    assert!(parsed.success(), "log.xml is not well-formed XML: {xml}");
    assert_no_qemu_under(&d, &text);
}

/// The script's text in the configuration, and the rest of the options:
/// `-c`, `-K` (the state stays in `$TMPDIR/vm-state-<name>`), `--no-interactive`,
/// and `--log-level warning`, which leaves out the info lines.
#[test]
fn a_configuration_with_the_script_inline_and_the_options() {
    let d = dir("config-inline");
    let machine = start_script(&d, "machine", 1, "", "");
    std::fs::write(
        d.join("cfg.json"),
        config(
            &[("machine", &machine)],
            &[],
            120,
            "machine.succeed('true')\nprint('inline', 'ran')\n",
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let tmp = d.join("tmp").display().to_string();
    let (code, text) = driver_env(
        &[
            "-c",
            "cfg.json",
            "--log-level",
            "warning",
            "-K",
            "--interactive",
            "--no-interactive",
            "-o",
            "out",
        ],
        &d,
        &[("TMPDIR", &tmp)],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("inline ran"), "{text}");
    assert!(!text.contains("test script finished in"), "{text}");
    assert!(!text.contains("Machine state will be reset"), "{text}");
    assert!(!text.contains("accelerator:"), "{text}");
    assert!(d.join("tmp/vm-state-machine").is_dir(), "{text}");
    assert_no_qemu_under(&d, &text);
}

/// The tutorial's nixos-22.11 form: everything in the environment.
#[test]
fn the_older_environment_form_still_runs() {
    let d = dir("legacy-env");
    let machine = start_script(&d, "machine", 1, "1", "");
    std::fs::write(
        d.join("script.py"),
        "machine.succeed('ip addr | grep -q 192.168.1.1')\nprint('legacy ran')\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let tmp = d.join("tmp").display().to_string();
    let machine = machine.display().to_string();
    let script = d.join("script.py").display().to_string();
    let out = d.join("out").display().to_string();
    let (code, text) = driver_env(
        &[],
        &d,
        &[
            ("startScripts", &machine),
            ("vlans", "1"),
            ("testScript", &script),
            ("globalTimeout", "120"),
            ("out", &out),
            ("TMPDIR", &tmp),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("legacy ran"), "{text}");
    assert!(
        text.contains("Test will time out and terminate in 120 seconds"),
        "{text}"
    );
    assert_no_qemu_under(&d, &text);
}

/// Malformed configurations and what is not supported: refused before
/// anything boots, naming the file, the field and the fix.
#[test]
fn configuration_errors_name_the_file_the_field_and_the_fix() {
    let d = dir("config-errors");
    // Never started: every case fails before a machine boots.
    let vm = d.join("run-machine-vm");
    std::fs::write(&vm, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::write(d.join("t.py"), "machine.succeed('true')\n").unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&config(&[("machine", &vm)], &[1], 60, "t.py")).unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        edit(&mut v);
        std::fs::write(d.join(name), v.to_string()).unwrap();
    };
    let refused = |args: &[&str], env: &[(&str, &str)], wants: &[&str]| {
        let (code, text) = driver_env(args, &d, env);
        assert_eq!(code, 2, "{args:?}: {text}");
        for w in wants {
            assert!(text.contains(w), "{args:?}: wanted {w:?} in: {text}");
        }
    };

    refused(
        &["--config", "missing.json"],
        &[],
        &["cannot read the driver configuration missing.json"],
    );
    std::fs::write(d.join("broken.json"), "{\"vms\": {").unwrap();
    refused(
        &["--config", "broken.json"],
        &[],
        &["broken.json is not JSON"],
    );
    write("no-vms.json", &|v| {
        v.as_object_mut().unwrap().remove("vms");
    });
    refused(
        &["--config", "no-vms.json"],
        &[],
        &[
            "no-vms.json",
            "field `vms` is missing",
            "driver-configuration.nix",
        ],
    );
    write("vlans.json", &|v| v["vlans"] = "1 2".into());
    refused(
        &["--config", "vlans.json"],
        &[],
        &[
            "vlans.json",
            "field `vlans` must be a list of VLAN numbers, like [1, 2], not \"1 2\"",
        ],
    );
    write("gone.json", &|v| {
        v["vms"]["machine"]["start_script"] = "/nix/store/gone-nixos-vm/bin/run-machine-vm".into()
    });
    refused(
        &["--config", "gone.json"],
        &[],
        &["gone.json", "`vms.machine.start_script`", "does not exist"],
    );
    write("script.json", &|v| v["test_script"] = "missing.py".into());
    refused(
        &["--config", "script.json"],
        &[],
        &["script.json", "field `test_script`", "missing.py"],
    );
    write("unknown.json", &|v| v["enable_foo"] = true.into());
    refused(
        &["--config", "unknown.json"],
        &[],
        &["unknown field `enable_foo`", "update nix-vmtest"],
    );
    write(
        "containers.json",
        &|v| v["containers"] = serde_json::json!({"c": {"name": "c", "start_script": "/bin/sh"}}),
    );
    // A legacy variable from the environment is not used, and it is said.
    refused(
        &["--config", "containers.json"],
        &[("testScript", "t.py")],
        &[
            "ignoring $testScript from the environment",
            "field `containers` asks for systemd-nspawn containers (c)",
            "QEMU machines only",
        ],
    );
    write("ssh.json", &|v| v["enable_ssh_backdoor"] = true.into());
    refused(
        &["--config", "ssh.json"],
        &[],
        &["`enable_ssh_backdoor`", "sshBackdoor.enable = false"],
    );

    std::fs::write(d.join("ok.json"), good.to_string()).unwrap();
    refused(
        &["--config", "ok.json", "--start-scripts", "./run-machine-vm"],
        &[],
        &["do not also give --start-scripts"],
    );
    refused(
        &["--config", "ok.json", "t.py"],
        &[],
        &["do not also give the test script"],
    );
    // run.nix's `--debug-hook=…` (an abbreviation of --debug-hook-attach).
    refused(
        &["--config", "ok.json", "--debug-hook=/nix/store/x-attach"],
        &[],
        &[
            "--debug-hook-attach (nixpkgs' enableDebugHook) is not supported",
            "enableDebugHook = false",
        ],
    );
    refused(
        &["--config", "ok.json", "--log-level", "verbose"],
        &[],
        &["debug, info, warning, error"],
    );
    refused(
        &["--config", "ok.json"],
        &[("logLevel", "verbose")],
        &["invalid value 'verbose'"],
    );
    // The deprecated spelling works, with nixpkgs' warning.
    refused(
        &["--keep-vm-state", "--config", "gone.json"],
        &[],
        &["'--keep-vm-state' is deprecated", "does not exist"],
    );

    // --check reads the configuration's script, inline too.
    write("check.json", &|v| {
        v["test_script"] = "start_all()\nmachin.succeed('true')\n".into()
    });
    let (code, text) = driver(&["--check", "--config", "check.json"], &d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("machin") && text.contains(":2"), "{text}");
    let (code, text) = driver(&["--check", "--conf", "ok.json"], &d);
    assert_eq!(code, 0, "{text}");
}
