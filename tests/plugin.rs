//! `builtins.vmTest` through the real Nix: `nix-instantiate`, `nix-build` and
//! `nix flake check` with the plugin loaded (`--option plugin-files`), the
//! sandbox on (`sandbox = true`) and no substituters.
//!
//! Run: `cargo test --features nix-plugin --test plugin` (needs Nix and its
//! headers: `.ci/nix-headers`). The plugin is the `libnix_vmtest.so` cargo
//! builds next to the driver, or `$NIX_VMTEST_PLUGIN`.
//!
//! - `eval_*`: evaluation only; run anywhere Nix is.
//! - `boot_*`: boot the tiny Debian guest (`tests/guests/build.sh`, or
//!   `$NIX_VMTEST_GUESTS`) inside the build sandbox; they fail when the
//!   guests are not built.
#![cfg(feature = "nix-plugin")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{nix, text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn instantiate(file: &str, attr: Option<&str>) -> Output {
    let mut cmd = nix("nix-instantiate", &[]);
    cmd.arg(repo().join("tests/nix").join(file));
    if let Some(a) = attr {
        cmd.args(["-A", a]);
    }
    cmd.output().expect("nix-instantiate runs")
}

/// Each bad case fails at evaluation, with its message.
#[test]
fn eval_errors_name_the_attribute_or_the_script_line() {
    let cases: &[(&str, &[&str])] = &[
        ("missingName", &["vmTest: name: missing argument 'name'"]),
        ("missingNodes", &["vmTest: nodes: missing argument 'nodes'"]),
        (
            "nodesNotAttrs",
            &[
                "vmTest: nodes",
                "must be an attribute set of machines, got a list",
            ],
        ),
        (
            "nodeWrongType",
            &[
                "vmTest: nodes.server",
                "a node must be a start script (a run-<name>-vm path or derivation) or an image",
                "got an integer (42)",
            ],
        ),
        (
            "nodeNixosModule",
            &["vmTest: nodes.server", "got a function", "NixOS modules"],
        ),
        (
            "imageMissingInitrd",
            &["vmTest: nodes.server", "'initrd' is missing"],
        ),
        (
            "imageTypo",
            &["vmTest: nodes.server.memroy", "did you mean 'memory'?"],
        ),
        (
            "imageOutsideStore",
            &["vmTest: nodes.server.kernel", "is not in the Nix store"],
        ),
        (
            "unknownArgument",
            &["vmTest: testscript", "did you mean 'testScript'?"],
        ),
        (
            "nameNotString",
            &["vmTest: name", "must be a string, got an integer (3)"],
        ),
        (
            "timeoutNotInt",
            &[
                "vmTest: globalTimeout",
                "must be a positive number of seconds",
            ],
        ),
        ("scriptSyntax", &["testScript line 2: syntax error"]),
        (
            "scriptUnknownMachine",
            &[
                "testScript line 3: name 'servr' is not defined",
                "client, server",
            ],
        ),
        (
            "scriptFunctionUnknownMachine",
            &["testScript line 2: name 'machinex' is not defined"],
        ),
    ];
    let mut failures = Vec::new();
    for (case, wanted) in cases {
        let start = Instant::now();
        let out = instantiate("eval-errors.nix", Some(case));
        let all = text(&out);
        if out.status.success() {
            failures.push(format!("{case}: evaluated, but should fail:\n{all}"));
            continue;
        }
        for w in *wanted {
            if !all.contains(w) {
                failures.push(format!("{case}: message lacks {w:?}:\n{all}"));
            }
        }
        // At evaluation: nothing was built (and nothing booted).
        if all.contains("building '") {
            failures.push(format!("{case}: started a build:\n{all}"));
        }
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `nix derivation show` of one derivation, in the shape Nix 2.8 prints
/// (`builder`, `args`, `env`, `inputSrcs` and `inputDrvs` with full store
/// paths), whatever the version: 2.32 keys by base name, 2.33 wraps it in
/// `{"derivations": ..., "version": 4}` with `inputs.srcs`/`inputs.drvs`.
fn show_derivation(drv: &str) -> serde_json::Value {
    let run = |args: &[&str]| {
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command"])
            .args(args)
            .arg(drv)
            .output()
            .expect("nix runs")
    };
    let mut out = run(&["derivation", "show"]);
    if !out.status.success() {
        // Nix 2.8 has only `nix show-derivation`.
        out = run(&["show-derivation"]);
    }
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = v.get("derivations").unwrap_or(&v);
    let base = drv.rsplit('/').next().unwrap();
    let mut d = all
        .get(drv)
        .or_else(|| all.get(base))
        .unwrap_or_else(|| panic!("{drv} not in {all}"))
        .clone();
    let full = |p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/nix/store/{p}")
        }
    };
    if let Some(inputs) = d.get("inputs").cloned() {
        if let Some(srcs) = inputs.get("srcs").and_then(|s| s.as_array()) {
            let srcs: Vec<String> = srcs.iter().map(|s| full(s.as_str().unwrap())).collect();
            d["inputSrcs"] = serde_json::json!(srcs);
        }
        if let Some(drvs) = inputs.get("drvs").and_then(|s| s.as_object()) {
            let drvs: serde_json::Map<String, serde_json::Value> =
                drvs.iter().map(|(k, v)| (full(k), v.clone())).collect();
            d["inputDrvs"] = serde_json::Value::Object(drvs);
        }
    }
    d
}

/// The version of the `nix-instantiate` on PATH (`nix-instantiate (Nix) 2.35.2`).
fn nix_version() -> String {
    let out = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .expect("nix-instantiate runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string()
}

/// A plugin built for another Nix (`$NIX_VMTEST_OTHER_PLUGIN`; `.ci/with-nix`
/// sets it to the host's 2.8 plugin when it runs a Nix built from source) is
/// refused when loaded: one error naming both versions and what to rebuild,
/// exit status 1, no crash.
#[test]
fn eval_plugin_for_another_nix_is_refused_with_a_clear_error() {
    let Some(other) = std::env::var_os("NIX_VMTEST_OTHER_PLUGIN") else {
        eprintln!(
            "NOTE: not checked: NIX_VMTEST_OTHER_PLUGIN (a plugin built for another Nix) is not \
             set; .ci/with-nix VERSION sets it"
        );
        return;
    };
    // A `cargo build`/`cargo test` without `--features nix-plugin` leaves a
    // `libnix_vmtest.so` that is no plugin (no check, no builtin): Nix
    // loads it without a word, and this test would fail on exit status 0.
    let bytes = std::fs::read(&other)
        .unwrap_or_else(|e| panic!("NIX_VMTEST_OTHER_PLUGIN={}: {e}", other.to_string_lossy()));
    assert!(
        bytes
            .windows(b" was built for Nix ".len())
            .any(|w| w == b" was built for Nix "),
        "NIX_VMTEST_OTHER_PLUGIN={} is not a nix-vmtest plugin (it has no version check: built \
         without --features nix-plugin?); rebuild it with `cargo build --release --features \
         nix-plugin`, or point NIX_VMTEST_OTHER_PLUGIN at a plugin built for another Nix",
        other.to_string_lossy()
    );
    let running = nix_version();
    let out = Command::new("nix-instantiate")
        .arg("--option")
        .arg("plugin-files")
        .arg(&other)
        .args(["--eval", "--expr", "builtins ? vmTest"])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for wanted in [
        "error: nix-vmtest: the plugin ".to_string(),
        " was built for Nix ".to_string(),
        format!("but this is Nix {running}"),
        format!("Rebuild it against Nix {running}"),
    ] {
        assert!(all.contains(&wanted), "lacks {wanted:?}: {all}");
    }
    assert_eq!(
        all.matches("error:").count(),
        1,
        "one error, nothing else: {all}"
    );
}

/// The good test instantiates to `vm-test-run-minimal-test` with the shape
/// the plugin documents; `.driver` and `.driverInteractive` exist.
#[test]
fn eval_minimal_test_instantiates_to_the_documented_derivation() {
    let out = instantiate("minimal.nix", None);
    assert!(out.status.success(), "{}", text(&out));
    let drv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(drv.ends_with("-vm-test-run-minimal-test.drv"), "{drv}");
    let d = show_derivation(&drv);
    let env = &d["env"];
    assert_eq!(env["name"], "vm-test-run-minimal-test");
    assert_eq!(env["requiredSystemFeatures"], "nixos-test kvm");
    let builder = d["builder"].as_str().unwrap();
    assert!(builder.starts_with("/nix/store/"), "{builder}");
    assert!(
        builder.ends_with("-nix-vmtest-0.1.0/bin/nixos-test-driver"),
        "{builder}"
    );
    // The driver and the Python client are in the store, and an input.
    assert!(Path::new(builder).is_file());
    let driver_dir = Path::new(builder).parent().unwrap().parent().unwrap();
    assert!(driver_dir
        .join("share/nix-vmtest/python/nix_vmtest/__init__.py")
        .is_file());
    let srcs: Vec<&str> = d["inputSrcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(srcs.contains(&driver_dir.to_str().unwrap()), "{srcs:?}");
    let args: Vec<&str> = d["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "-o");
    // `builtins.placeholder "out"`, which Nix replaces by $out at build time.
    assert_eq!(
        args[1],
        "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    );
    assert_eq!(&args[4..7], &["--global-timeout", "3600", "--nodes-json"]);
    assert!(
        args[7].ends_with("-nixos-test-driver-minimal-test/share/nix-vmtest/nodes.json"),
        "{args:?}"
    );
    assert!(
        args[8].ends_with("-nixos-test-driver-minimal-test/share/nix-vmtest/test-script"),
        "{args:?}"
    );
    assert_eq!(env["PATH"], "/usr/bin:/bin");

    let mut driver_drvs = Vec::new();
    for (attr, name) in [
        ("driver", "nixos-test-driver-minimal-test"),
        (
            "driverInteractive",
            "nixos-test-driver-minimal-test-interactive",
        ),
    ] {
        let out = nix("nix-instantiate", &[])
            .arg(repo().join("tests/nix/minimal.nix"))
            .args(["-A", attr])
            .output()
            .unwrap();
        assert!(out.status.success(), "{attr}: {}", text(&out));
        let drv = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(drv.ends_with(&format!("-{name}.drv")), "{drv}");
        let w = show_derivation(&drv);
        assert_eq!(w["builder"].as_str().unwrap(), builder);
        assert_eq!(w["args"][0], "--write-wrapper");
        assert_eq!(w["env"]["passAsFile"], "nodesJson testScript");
        assert_eq!(w["env"]["testScript"], "machine.succeed(\"true\")\n");
        // The start script was copied into the store and is an input.
        let srcs: Vec<&str> = w["inputSrcs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            srcs.iter().any(|s| s.ends_with("-run-machine-vm")),
            "{srcs:?}"
        );
        let nodes: nix_vmtest::spec::TestSpec =
            serde_json::from_str(w["env"]["nodesJson"].as_str().unwrap()).unwrap();
        assert_eq!(nodes.machines.len(), 1);
        assert_eq!(nodes.machines[0].name, "machine");
        assert!(nodes.machines[0]
            .start_script
            .as_ref()
            .unwrap()
            .to_string_lossy()
            .ends_with("-run-machine-vm"));
        driver_drvs.push(drv);
    }
    // The run builds from `.driver`'s files.
    assert!(
        d["inputDrvs"].get(&driver_drvs[0]).is_some(),
        "{}",
        d["inputDrvs"]
    );

    // requiredSystemFeatures is overridable, and the same call gives the same drv.
    let out = nix("nix-instantiate", &[])
        .args([
            "--expr",
            "--arg",
            "f",
            &repo()
                .join("tests/nix/fixtures/run-machine-vm")
                .to_string_lossy(),
        ])
        .arg(
            "{ f }: builtins.vmTest { name = \"minimal-test\"; nodes.machine = /. + f; \
             requiredSystemFeatures = [ ]; testScript = \"machine.succeed('true')\"; }",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let d = show_derivation(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(d["env"]["requiredSystemFeatures"], "");

    // testScript as a function of { nodes }, and an image node.
    let fixture = repo().join("tests/nix/fixtures/run-machine-vm");
    let out = nix("nix-instantiate", &[])
        .args(["--expr", "--arg", "f", &fixture.to_string_lossy()])
        .arg(
            r#"{ f }: (builtins.vmTest { name = "fn";
                 nodes.a = { kernel = /. + f; initrd = /. + f; memory = 128; vlans = [ 1 2 ]; };
                 testScript = { nodes }: builtins.concatStringsSep "\n"
                   (map (n: n + ".succeed('true')") (builtins.attrNames nodes)); }).driver"#,
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let w = show_derivation(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(w["env"]["testScript"], "a.succeed('true')");
    let nodes: nix_vmtest::spec::TestSpec =
        serde_json::from_str(w["env"]["nodesJson"].as_str().unwrap()).unwrap();
    let image = nodes.machines[0].image.as_ref().unwrap();
    assert!(image.kernel.starts_with("/nix/store/"));
    assert_eq!(image.vlans, vec![1, 2]);
    assert_eq!(nodes.vlans, vec![1, 2]);
}

// ---------------------------------------------------------------------------
// Boot tests: need the driver and the guests.

macro_rules! need_guests {
    () => {
        common::guests()
    };
}

/// A scratch directory for `result` links.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn build_boot(
    dir: &Path,
    guests: &Path,
    args: &[(&str, &str)],
    extra_sandbox: &[&Path],
) -> (Output, Duration) {
    let mut cmd = nix("nix-build", extra_sandbox);
    cmd.current_dir(dir)
        .arg(repo().join("tests/nix/boot.nix"))
        .args(["--argstr", "guests"])
        .arg(guests);
    for (k, v) in args {
        cmd.args(["--arg", k, v]);
    }
    let start = Instant::now();
    let out = cmd.output().expect("nix-build runs");
    (out, start.elapsed())
}

fn unique_marker() -> String {
    format!("\"{}-{}\"", std::process::id(), fastrand::u64(..))
}

/// The issue's scenario: boot in the sandbox, cached second build, delete
/// and rebuild.
#[test]
fn boot_minimal_test_runs_caches_and_reruns_after_delete() {
    let guests = need_guests!();
    let dir = scratch();
    let marker = unique_marker();
    let (out, first) = build_boot(dir.path(), &guests, &[("marker", &marker)], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(path.ends_with("-vm-test-run-minimal-test"), "{path}");
    let result = dir.path().join("result");
    assert_eq!(std::fs::read_link(&result).unwrap(), PathBuf::from(&path));
    // $out holds the log, the JUnit XML and the copied file.
    let listing: Vec<String> = walk(Path::new(&path));
    assert!(Path::new(&path).join("junit.xml").is_file(), "{listing:?}");
    assert!(listing.iter().any(|f| f.ends_with("hello")), "{listing:?}");
    assert!(text(&out).contains("building '"), "{}", text(&out));

    // Again: cached, no QEMU.
    let (out2, second) = build_boot(dir.path(), &guests, &[("marker", &marker)], &[]);
    assert!(out2.status.success(), "{}", text(&out2));
    assert_eq!(String::from_utf8_lossy(&out2.stdout).trim(), path);
    assert!(!text(&out2).contains("building '"), "{}", text(&out2));
    assert!(
        second < Duration::from_secs(2),
        "cached build took {second:?} (first {first:?})"
    );

    // rm result; nix-store --delete; the next build runs it again.
    std::fs::remove_file(&result).unwrap();
    let del = Command::new("nix-store")
        .args(["--delete", &path])
        .output()
        .unwrap();
    assert!(del.status.success(), "{}", text(&del));
    assert!(!Path::new(&path).exists());
    let (out3, _) = build_boot(dir.path(), &guests, &[("marker", &marker)], &[]);
    assert!(out3.status.success(), "{}", text(&out3));
    assert!(text(&out3).contains("building '"), "{}", text(&out3));
    assert!(Path::new(&path).join("junit.xml").is_file());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p.to_string_lossy().into_owned());
            }
        }
    }
    files
}

/// A failing command fails the build, and the log names the script line.
#[test]
fn boot_failing_script_line_is_in_the_log() {
    let guests = need_guests!();
    let dir = scratch();
    let (out, _) = build_boot(
        dir.path(),
        &guests,
        &[("marker", &unique_marker()), ("fail", "true")],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("line 4"), "{all}");
}

/// A start-script node (the guest's `run-tiny-vm`, which reads the guest
/// directory outside the store: that directory is an extra sandbox path).
#[test]
fn boot_start_script_node() {
    let guests = need_guests!();
    assert!(
        guests.join("run-tiny-vm").exists(),
        "{} has no run-tiny-vm",
        guests.display()
    );
    let dir = scratch();
    let (out, _) = build_boot(
        dir.path(),
        &guests,
        &[("marker", &unique_marker()), ("startScript", "true")],
        &[&guests],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// `hostPath` becomes the run's PATH, and its store paths are inputs:
/// the python3 the driver starts is the one in hostPath's derivation.
#[test]
fn boot_host_path_gives_the_run_its_programs() {
    let guests = need_guests!();
    let dir = scratch();
    let (out, _) = build_boot(
        dir.path(),
        &guests,
        &[("marker", &unique_marker()), ("hostPython", "true")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("python3 from hostPath"),
        "the run did not use hostPath's python3: {}",
        text(&out)
    );
}

/// Builds `attr` (`driver` or `driverInteractive`) of the boot test with
/// the real nix-build; returns its `bin/nixos-test-driver`.
fn build_driver_attr(dir: &Path, guests: &Path, attr: &str) -> PathBuf {
    let mut cmd = nix("nix-build", &[]);
    cmd.current_dir(dir)
        .arg(repo().join("tests/nix/boot.nix"))
        .args(["--argstr", "guests"])
        .arg(guests)
        .args(["-A", attr, "-o", attr]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    dir.join(attr).join("bin/nixos-test-driver")
}

/// `.driver` builds in the sandbox and its `bin/nixos-test-driver` runs the
/// test by hand.
#[test]
fn boot_driver_attribute_runs_the_test_by_hand() {
    let guests = need_guests!();
    let dir = scratch();
    let wrapper = build_driver_attr(dir.path(), &guests, "driver");
    assert!(wrapper.is_file());
    let run = Command::new(&wrapper)
        .current_dir(dir.path())
        .args(["-o", "run-out"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
}

/// `.driverInteractive` builds and its `bin/nixos-test-driver` is a Python
/// REPL with the machines bound: a command typed into it boots the machine
/// and prints the guest's answer.
#[test]
fn boot_driver_interactive_is_a_repl_with_the_machines() {
    use std::io::Write;
    let guests = need_guests!();
    let dir = scratch();
    let wrapper = build_driver_attr(dir.path(), &guests, "driverInteractive");
    let mut repl = Command::new(&wrapper)
        .current_dir(dir.path())
        .args(["-o", "repl-out"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    repl.stdin
        .as_mut()
        .unwrap()
        .write_all(b"print('answer:', machine.succeed('echo $((6 * 7))').strip())\n")
        .unwrap();
    drop(repl.stdin.take());
    let out = repl.wait_with_output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("answer: 42"), "{all}");
    assert!(
        all.contains("test_script()"),
        "the banner names test_script(): {all}"
    );
}

/// `nix flake check` on an offline flake whose check is a vmTest.
#[test]
fn boot_flake_check() {
    let guests = need_guests!();
    let dir = scratch();
    let flake = dir.path().join("flake");
    std::fs::create_dir_all(&flake).unwrap();
    std::fs::copy(guests.join("vmlinuz"), flake.join("vmlinuz")).unwrap();
    std::fs::copy(guests.join("tiny/initrd"), flake.join("initrd")).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    checks.x86_64-linux.minimal = builtins.vmTest {{
      name = "flake-minimal-{marker}";
      nodes.machine = {{ kernel = ./vmlinuz; initrd = ./initrd; memory = 128; }};
      testScript = ''
        machine.succeed("true")
      '';
    }};
  }};
}}
"#,
            marker = fastrand::u32(..)
        ),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .current_dir(&flake)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", text(&o));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "flake"]);
    let out = nix("nix", &[])
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "flake",
            "check",
            "-L",
        ])
        .arg(&flake)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // It was built (the -L log lines carry the derivation's name).
    assert!(
        text(&out).contains("vm-test-run-flake-minimal-"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------
// Booted snapshots as derivations (tests/nix/snapshot.nix).

/// `nix-build tests/nix/snapshot.nix` (or `nix-instantiate` with `--eval`
/// and more `args`) with `--arg k v` for each pair.
fn snapshot_nix(program: &str, dir: &Path, guests: &Path, args: &[(&str, &str)]) -> Command {
    let mut cmd = nix(program, &[]);
    cmd.current_dir(dir)
        .arg(repo().join("tests/nix/snapshot.nix"))
        .args(["--argstr", "guests"])
        .arg(guests);
    for (k, v) in args {
        cmd.args(["--arg", k, v]);
    }
    cmd
}

/// The out path of an attribute of tests/nix/snapshot.nix, by evaluation.
fn snapshot_attr(guests: &Path, args: &[(&str, &str)], attr: &str) -> String {
    let dir = scratch();
    let mut cmd = snapshot_nix("nix-instantiate", dir.path(), guests, args);
    cmd.args(["--eval", "--strict", "--json", "-A", attr]);
    let out = cmd.output().expect("nix-instantiate runs");
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("{attr} is {v}"))
        .to_string()
}

/// The derivations `nix-build` says it builds, in order (their names).
fn built(o: &Output) -> Vec<String> {
    text(o)
        .lines()
        .filter_map(|l| l.strip_prefix("building '"))
        .map(|l| l.trim_end_matches("'...").to_string())
        .collect()
}

/// Lines a cold boot logs (and a restore does not).
const BOOT_LINES: &[&str] = &["waiting for the VM to finish booting", "booting instead"];

/// (a) the snapshot is built before the run, which restores from it;
/// (b) another script with the same node restores from the same path and
/// does not build the snapshot again; (d) deleting the snapshot makes the
/// next build boot and snapshot again.
#[test]
fn boot_snapshot_derivation_is_built_once_and_restored_from() {
    let guests = need_guests!();
    let dir = scratch();
    let node = unique_marker();
    let run = |marker: &str| {
        let mut cmd = snapshot_nix(
            "nix-build",
            dir.path(),
            &guests,
            &[("node", &node), ("marker", marker)],
        );
        let out = cmd.output().expect("nix-build runs");
        assert!(out.status.success(), "{}", text(&out));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let log = std::fs::read_to_string(Path::new(&path).join("log")).unwrap();
        (out, path, log)
    };
    let snapshot = snapshot_attr(&guests, &[("node", &node)], "snapshots.machine.outPath");
    assert!(
        snapshot.ends_with("-vm-snapshot-snapshot-test-machine"),
        "{snapshot}"
    );
    let restored = format!("restored from {snapshot}/machine");

    // (a)
    let (out, first, log) = run("\"1\"");
    let drvs = built(&out);
    assert_eq!(drvs.len(), 3, "{drvs:?}");
    assert!(
        drvs[0].ends_with("-vm-snapshot-snapshot-test-machine.drv"),
        "{drvs:?}"
    );
    assert!(
        drvs[2].ends_with("-vm-test-run-snapshot-test.drv"),
        "{drvs:?}"
    );
    assert!(
        text(&out).contains(&format!("saved snapshot {snapshot}/machine")),
        "{}",
        text(&out)
    );
    assert!(Path::new(&snapshot).join("machine/manifest.json").is_file());
    assert!(log.contains(&restored), "{log}");
    for line in BOOT_LINES {
        assert!(!log.contains(line), "{line:?} in {log}");
    }

    // (b)
    let (out, second, log) = run("\"2\"");
    assert_ne!(first, second);
    let drvs = built(&out);
    assert!(
        drvs.iter().all(|d| !d.contains("-vm-snapshot-")),
        "{drvs:?}"
    );
    assert!(
        drvs.iter()
            .any(|d| d.ends_with("-vm-test-run-snapshot-test.drv")),
        "{drvs:?}"
    );
    assert!(log.contains(&restored), "{log}");
    for line in BOOT_LINES {
        assert!(!log.contains(line), "{line:?} in {log}");
    }

    // (d) The runs' outputs name the snapshot (their logs do), so they go
    // with it.
    std::fs::remove_file(dir.path().join("result")).unwrap();
    let referrers = Command::new("nix-store")
        .args(["--query", "--referrers-closure", &snapshot])
        .output()
        .unwrap();
    assert!(referrers.status.success(), "{}", text(&referrers));
    let paths: Vec<String> = String::from_utf8_lossy(&referrers.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(paths.contains(&second), "{paths:?}");
    let del = Command::new("nix-store")
        .arg("--delete")
        .args(&paths)
        .output()
        .unwrap();
    assert!(del.status.success(), "{}", text(&del));
    assert!(!Path::new(&snapshot).exists());
    let (out, _, log) = run("\"3\"");
    let drvs = built(&out);
    assert!(
        drvs[0].ends_with("-vm-snapshot-snapshot-test-machine.drv"),
        "{drvs:?}"
    );
    assert!(
        text(&out).contains("waiting for the VM to finish booting"),
        "{}",
        text(&out)
    );
    assert!(Path::new(&snapshot).join("machine/manifest.json").is_file());
    assert!(log.contains(&restored), "{log}");
}

/// `.driverInteractive` (the wrapper a person runs, outside the sandbox)
/// restores the node from the same snapshot derivation as the run: building
/// it builds the snapshot, and the REPL's first use of the machine logs
/// `restored from <that store path>/machine` and does not boot.
#[test]
fn boot_driver_interactive_restores_from_the_snapshot() {
    let guests = need_guests!();
    let dir = scratch();
    let node = unique_marker();
    let snapshot = snapshot_attr(&guests, &[("node", &node)], "snapshots.machine.outPath");
    let mut cmd = snapshot_nix("nix-build", dir.path(), &guests, &[("node", &node)]);
    cmd.args(["-A", "driverInteractive"]);
    let out = cmd.output().expect("nix-build runs");
    assert!(out.status.success(), "{}", text(&out));
    let drvs = built(&out);
    assert!(
        drvs.iter()
            .any(|d| d.ends_with("-vm-snapshot-snapshot-test-machine.drv")),
        "{drvs:?}"
    );
    let wrapper = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        wrapper.ends_with("-nixos-test-driver-snapshot-test-interactive"),
        "{wrapper}"
    );

    // The REPL, fed on stdin: the machine's first use restores it.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(Path::new(&wrapper).join("bin/nixos-test-driver"))
        .current_dir(dir.path())
        .env("TMPDIR", &tmp)
        .env_remove("NIX_VMTEST_SNAPSHOTS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let node_value = node.trim_matches('"');
    let input = format!(
        "machine.succeed('grep -q nixvmtest.node={node_value} /proc/cmdline')\n\
         print('interactive-' + 'restored-ok')\n"
    );
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("interactive-restored-ok"), "{all}");
    assert!(
        all.contains(&format!("restored from {snapshot}/machine")),
        "{all}"
    );
    for line in BOOT_LINES {
        assert!(!all.contains(line), "{line:?} in {all}");
    }
}

/// (c) the node's configuration, not the script, decides the snapshot's
/// path; (e) `snapshots = false` (or the node's own `snapshot = false`)
/// gives the run no snapshot derivation.
#[test]
fn eval_snapshot_paths_follow_the_node_and_can_be_turned_off() {
    let guests = need_guests!();
    let path = |args: &[(&str, &str)]| snapshot_attr(&guests, args, "snapshots.machine.outPath");
    let base = path(&[]);
    assert_eq!(base, path(&[("marker", "\"other script\"")]));
    assert_ne!(base, path(&[("memory", "160")]));
    assert_ne!(base, path(&[("node", "\"other\"")]));
    assert_eq!(
        base,
        path(&[("snapshots", "true"), ("ownSnapshot", "true")])
    );

    let dir = scratch();
    for off in [
        vec![("snapshots", "false")],
        vec![("snapshots", "{ machine = false; }")],
        vec![("ownSnapshot", "false")],
    ] {
        let mut cmd = snapshot_nix("nix-instantiate", dir.path(), &guests, &off);
        cmd.args(["--eval", "--strict", "--json", "-A", "snapshots"]);
        let out = cmd.output().expect("nix-instantiate runs");
        assert!(out.status.success(), "{off:?}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{}", "{off:?}");
        let mut cmd = snapshot_nix("nix-instantiate", dir.path(), &guests, &off);
        let out = cmd.output().expect("nix-instantiate runs");
        assert!(out.status.success(), "{off:?}: {}", text(&out));
        let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let d = show_derivation(&run);
        let driver = d["inputDrvs"]
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.contains("-nixos-test-driver-"))
            .unwrap()
            .clone();
        let drv = show_derivation(&driver);
        assert!(
            drv["inputDrvs"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.contains("-vm-snapshot-")),
            "{off:?}: {drv}"
        );
        assert!(
            !drv["env"]["nodesJson"]
                .as_str()
                .unwrap()
                .contains("snapshot"),
            "{off:?}"
        );
    }
}
