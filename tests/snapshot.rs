//! Booted snapshots on real guests: a machine saved once it has booted,
//! and restored in a later run instead of booting.
//!
//! - `a_restored_tiny_guest_skips_the_boot`: save (the saving VM goes
//!   on), restore in a new run (no boot on the console, the log names the
//!   snapshot, RAM state and the 9p share are back, the clock is the
//!   host's), shutdown, and a second start that boots;
//! - `a_snapshot_of_another_accelerator_or_cpu_boots_cold`: manifests
//!   changed to another accelerator, CPU model, device set, and a missing
//!   state file are refused, with a logged cold boot;
//! - `restored_vlan_nodes_reach_each_other`: two VLAN nodes restored from
//!   snapshots ping each other, and a partition stops it;
//! - `the_command_line_saves_and_restores_a_systemd_guest`:
//!   `--save-snapshots` and `--snapshots` with the systemd guest's start
//!   script (its disk overlay, systemd's boot jobs) and a test script;
//! - `a_nixpkgs_configuration_restores_vde_start_scripts`: as a nixpkgs
//!   test's snapshot derivations and `.driver` do it (`nix/test-module.nix`):
//!   each node saved alone (`--nodes-json` with its start script and the
//!   test's VLANs, `--save-snapshots`), then `--config
//!   driverConfiguration.json` with `--snapshot <node>=<dir>` per node;
//!   start scripts that join the VLAN with `-netdev vde`, as NixOS' do.

mod common;

use common::{sh, succeed};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix_vmtest::driver::Driver;
use nix_vmtest::log::{Level, Log};
use nix_vmtest::machine::snapshot::{Manifest, MANIFEST};
use nix_vmtest::machine::Machine;
use nix_vmtest::spec::{ip_address, mac_address, MachineSpec};

const LIMIT: Duration = Duration::from_secs(300);

/// What the tiny guest's boot prints on the serial console (its backdoor
/// writes this to ttyS0 before the shell starts).
const BOOT_LINE: &str = "connecting to host...";

/// A fresh directory under the tests' temp dir.
fn temp(what: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{what}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A driver for `machines` whose log also goes to `log_file`, restoring
/// from `snapshots`.
async fn driver_logged(
    machines: Vec<MachineSpec>,
    snapshots: Option<&Path>,
    log_file: &Path,
) -> Driver {
    let mut opts = common::options(machines);
    opts.snapshots = snapshots.map(Path::to_path_buf);
    let log = Log::new();
    // The restore's steps, timed, are logged at debug level.
    log.set_level(Level::Debug);
    log.tee_to(log_file).unwrap();
    Driver::new(opts, log).await.expect("setting up the driver")
}

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The guest's clock minus the host's, in seconds.
async fn clock_skew(m: &mut Machine) -> f64 {
    let before = host_now();
    let out = succeed(m, "echo $EPOCHREALTIME").await;
    let after = host_now();
    let guest: f64 = out.trim().parse().unwrap_or_else(|_| panic!("{out:?}"));
    guest - (before + after) / 2.0
}

/// Boots the machines of `d`, and saves each into `<dir>/<name>`.
async fn boot_and_save(d: &mut Driver, dir: &Path, keep_running: bool) -> Vec<Manifest> {
    for m in &mut d.machines {
        m.start(false).await.unwrap();
    }
    let mut manifests = Vec::new();
    for m in &mut d.machines {
        m.settle_boot().await.unwrap();
        let t = Instant::now();
        let manifest = m
            .save_snapshot(&dir.join(&m.name), keep_running)
            .await
            .unwrap_or_else(|e| panic!("saving {}: {e}", m.name));
        println!(
            "{}: saved in {:.2}s, state {} bytes",
            m.name,
            t.elapsed().as_secs_f64(),
            std::fs::metadata(dir.join(&m.name).join("state"))
                .unwrap()
                .len()
        );
        manifests.push(manifest);
    }
    manifests
}

#[tokio::test(flavor = "current_thread")]
async fn a_restored_tiny_guest_skips_the_boot() {
    common::within(LIMIT, async {
        let snaps = temp("snapshots");
        let logs = temp("logs");

        // --- Save: the guest keeps something in RAM, then is saved and
        // goes on.
        let mut d = driver_logged(
            vec![common::tiny("tiny", vec![])],
            None,
            &logs.join("save.log"),
        )
        .await;
        d.machines[0].start(false).await.unwrap();
        succeed(&mut d.machines[0], "echo kept-in-ram > /root/marker").await;
        let manifest = boot_and_save(&mut d, &snaps, true).await.remove(0);
        assert!(
            manifest.mounts.iter().any(|m| m.dir == "/tmp/shared"),
            "the 9p share was not listed: {manifest:?}"
        );
        assert_eq!(manifest.accel, d.accel.to_string());
        if manifest.accel == "tcg" {
            assert!(
                manifest.cpu_model.starts_with("max-x86_64-cpu ("),
                "{}",
                manifest.cpu_model
            );
        }
        assert!(!manifest.disk, "the tiny guest has no disk");
        let saved_key = manifest
            .shell
            .as_ref()
            .expect("the manifest keeps the shell's bootstrap")
            .key
            .clone();
        // The saving VM goes on, with its share mounted again.
        let m = &mut d.machines[0];
        let out = succeed(
            m,
            "cat /root/marker; grep -c ' /tmp/shared 9p ' /proc/mounts",
        )
        .await;
        assert_eq!(out, "kept-in-ram\n1\n");
        drop(d);

        // Long enough for a restored clock that is not put right to show.
        tokio::time::sleep(Duration::from_secs(4)).await;

        // --- Restore in a new run.
        let log_file = logs.join("restore.log");
        let mut d =
            driver_logged(vec![common::tiny("tiny", vec![])], Some(&snaps), &log_file).await;
        let m = &mut d.machines[0];
        // The first command starts the machine, as a script's does.
        let t = Instant::now();
        let out = succeed(m, "cat /root/marker").await;
        println!(
            "restored: start() to first command answered in {:.2}s",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(out, "kept-in-ram\n", "the RAM state did not come back");
        assert_eq!(m.restored_from(), Some(snaps.join("tiny").as_path()));
        // No bootstrap ran: the guest's shell still has the saved key (a
        // bootstrap makes a new one), and its commands are answered.
        assert_eq!(succeed(m, "echo \"$__vmt_key\"").await.trim(), saved_key);
        let skew = clock_skew(m).await;
        println!("restored guest clock - host clock: {skew:+.3}s");
        assert!(skew.abs() < 2.0, "the guest clock is off by {skew:.3}s");
        // The share is mounted again: a copy through it works.
        let src = logs.join("to-guest");
        std::fs::write(&src, "through 9p\n").unwrap();
        m.copy_from_host(&src, "/root/copied").await.unwrap();
        assert_eq!(succeed(m, "cat /root/copied").await, "through 9p\n");
        // Big outputs come through the share remounted, exact.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let big_src = logs.join("big");
        std::fs::write(&big_src, &big).unwrap();
        m.copy_from_host(&big_src, "/root/big").await.unwrap();
        let before = m.raw_shell().await.unwrap().shared_outputs();
        let o = m.execute("cat /root/big", None, true).await.unwrap();
        assert!(o.output == big, "{} bytes came back", o.output.len());
        let after = m.raw_shell().await.unwrap().shared_outputs();
        assert_eq!(after, before + 1, "not through the share");
        let console = m.console().all();
        assert!(
            !console.contains(BOOT_LINE),
            "the restored guest booted; console:\n{console}"
        );
        let log = std::fs::read_to_string(&log_file).unwrap();
        let named = format!("restored from {}", snaps.join("tiny").display());
        assert!(
            log.contains(&named),
            "the log does not say `{named}`:\n{log}"
        );

        // --- Shutdown, then a second start: a boot.
        m.shutdown().await.unwrap();
        assert!(!m.is_running());
        m.start(false).await.unwrap();
        succeed(m, "true").await;
        assert!(m.restored_from().is_none());
        assert!(
            m.console().all().contains(BOOT_LINE),
            "the second start did not boot"
        );
        let out = succeed(m, "cat /root/marker 2>&1 || echo gone").await;
        assert!(out.contains("gone"), "a boot kept the old RAM: {out}");
        let log = std::fs::read_to_string(&log_file).unwrap();
        assert!(
            log.contains("only a machine's first start restores it"),
            "{log}"
        );
        // And crash() ends it as before.
        m.crash().await.unwrap();
        assert!(!m.is_running());
        drop(d);

        // --- A manifest without the shell (as older drivers wrote them):
        // the restore bootstraps (a new key), and works as well.
        let older = temp("older");
        altered(&snaps.join("tiny"), &older.join("tiny"), |m| m.shell = None);
        let mut d =
            driver_logged(vec![common::tiny("tiny", vec![])], Some(&older), &log_file).await;
        let m = &mut d.machines[0];
        assert_eq!(succeed(m, "cat /root/marker").await, "kept-in-ram\n");
        assert_eq!(m.restored_from(), Some(older.join("tiny").as_path()));
        let key = succeed(m, "echo \"$__vmt_key\"").await;
        assert_ne!(key.trim(), saved_key, "the restore did not bootstrap");
        drop(d);
        let _ = std::fs::remove_dir_all(&older);
        let _ = std::fs::remove_dir_all(&snaps);
        let _ = std::fs::remove_dir_all(&logs);
    })
    .await;
}

/// A change made to a manifest.
type Change = Box<dyn FnOnce(&mut Manifest)>;

/// Copies a snapshot directory, changing its manifest with `change`.
fn altered(from: &Path, to: &Path, change: impl FnOnce(&mut Manifest)) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let mut m = Manifest::read(to).unwrap();
    change(&mut m);
    std::fs::write(to.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_of_another_accelerator_or_cpu_boots_cold() {
    common::within(LIMIT, async {
        let snaps = temp("snapshots");
        let logs = temp("logs");
        let mut d = common::driver(vec![common::tiny("tiny", vec![])]).await;
        boot_and_save(&mut d, &snaps, false).await;
        assert!(!d.machines[0].is_running(), "QEMU runs on after the save");
        drop(d);
        let good = snaps.join("tiny");
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "accel",
                Box::new(|m: &mut Manifest| {
                    m.accel = if m.accel == "tcg" { "kvm" } else { "tcg" }.into()
                }),
                "it was made under accelerator",
            ),
            (
                "cpu",
                Box::new(|m: &mut Manifest| m.cpu_model = "host-x86_64-cpu (Other CPU)".into()),
                "it was made with CPU model host-x86_64-cpu (Other CPU), this QEMU has max-x86_64-cpu",
            ),
            (
                "memory",
                Box::new(|m: &mut Manifest| {
                    for d in m.devices.iter_mut() {
                        if d == "arg 256" {
                            *d = "arg 512".into();
                        }
                    }
                }),
                "the snapshot has `arg 512`, this run `arg 256`",
            ),
            (
                "qemu",
                Box::new(|m: &mut Manifest| m.qemu_version = "9.2.0".into()),
                "it was made with QEMU version 9.2.0",
            ),
        ];
        for (case, change, why) in cases {
            let dir = snaps.join(case);
            altered(&good, &dir, change);
            let mut spec = common::tiny("tiny", vec![]);
            spec.snapshot = Some(dir.clone());
            let log_file = logs.join(format!("{case}.log"));
            let mut d = driver_logged(vec![spec], None, &log_file).await;
            let m = &mut d.machines[0];
            m.start(false).await.unwrap();
            succeed(m, "true").await;
            assert!(m.restored_from().is_none(), "{case}: restored");
            assert!(m.console().all().contains(BOOT_LINE), "{case}: no boot");
            let log = std::fs::read_to_string(&log_file).unwrap();
            let refused = format!("not restoring from snapshot {}: ", dir.display());
            let line = log
                .lines()
                .find(|l| l.contains(&refused))
                .unwrap_or_else(|| panic!("{case}: no `{refused}` in the log:\n{log}"));
            assert!(line.contains(why), "{case}: {line}");
            assert!(line.ends_with("booting instead"), "{case}: {line}");
        }
        // A state file that is not QEMU's: the restore itself fails, and
        // the machine boots.
        let broken = snaps.join("broken");
        altered(&good, &broken, |_| {});
        std::fs::write(broken.join("state"), b"not a migration stream").unwrap();
        let mut spec = common::tiny("tiny", vec![]);
        spec.snapshot = Some(broken.clone());
        let log_file = logs.join("broken.log");
        let mut d = driver_logged(vec![spec], None, &log_file).await;
        let m = &mut d.machines[0];
        m.start(false).await.unwrap();
        succeed(m, "true").await;
        assert!(m.restored_from().is_none());
        let log = std::fs::read_to_string(&log_file).unwrap();
        assert!(
            log.contains(&format!("not restoring from snapshot {}", broken.display())),
            "{log}"
        );
        // QEMU's own reason is in it.
        assert!(log.contains("QEMU exited, its last lines"), "{log}");
        drop(d);
        let _ = std::fs::remove_dir_all(&snaps);
        let _ = std::fs::remove_dir_all(&logs);
    })
    .await;
}

/// `ping -c1 -W2`: whether `ip` answers.
async fn reaches(m: &mut Machine, ip: &str) -> bool {
    sh(m, &format!("ping -c1 -W2 {ip}")).await.0 == 0
}

#[tokio::test(flavor = "current_thread")]
async fn restored_vlan_nodes_reach_each_other() {
    common::within(LIMIT, async {
        let snaps = temp("snapshots");
        let logs = temp("logs");
        let nodes = || vec![common::tiny("a", vec![1]), common::tiny("b", vec![1])];
        let mut d = common::driver(nodes()).await;
        boot_and_save(&mut d, &snaps, false).await;
        drop(d);

        let log_file = logs.join("restore.log");
        let mut d = driver_logged(nodes(), Some(&snaps), &log_file).await;
        for m in &mut d.machines {
            m.start(false).await.unwrap();
            assert!(m.restored_from().is_some(), "{} was not restored", m.name);
        }
        let (a, b) = (0, 1);
        let (ip_a, ip_b) = (ip_address(1, 1).to_string(), ip_address(1, 2).to_string());
        assert!(reaches(&mut d.machines[a], &ip_b).await, "a cannot reach b");
        assert!(reaches(&mut d.machines[b], &ip_a).await, "b cannot reach a");
        let out = succeed(
            &mut d.machines[a],
            "ping -c1 -W2 b >/dev/null && echo by-name",
        )
        .await;
        assert_eq!(out, "by-name\n");

        d.vlans[&1].partition(vec![vec![mac_address(1, 1)], vec![mac_address(1, 2)]]);
        assert!(
            !reaches(&mut d.machines[a], &ip_b).await,
            "a reaches b across a partition"
        );
        assert!(
            !reaches(&mut d.machines[b], &ip_a).await,
            "b reaches a across a partition"
        );
        d.vlans[&1].heal();
        assert!(
            reaches(&mut d.machines[a], &ip_b).await,
            "a cannot reach b after healing"
        );
        let console: String = d.machines.iter().map(|m| m.console().all()).collect();
        assert!(
            !console.contains(BOOT_LINE),
            "a restored node booted:\n{console}"
        );
        drop(d);
        let _ = std::fs::remove_dir_all(&snaps);
        let _ = std::fs::remove_dir_all(&logs);
    })
    .await;
}

/// The driver binary with `args` in `cwd`; its exit status and output.
fn run_driver(args: &[&str], cwd: &Path) -> (i32, String) {
    run_driver_env(args, cwd, &[])
}

/// [`run_driver`] with `env` added.
fn run_driver_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixos-test-driver"))
        .args(args)
        .current_dir(cwd)
        .env_remove("testScript")
        .env_remove("startScripts")
        .env_remove("NIX_VMTEST_SNAPSHOTS")
        .env_remove("nodesJsonPath")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "current_thread")]
async fn the_command_line_saves_and_restores_a_systemd_guest() {
    common::within(LIMIT, async {
        let work = temp("cli");
        let script = common::guests().join("run-systemd-vm");
        let script = script.to_str().unwrap();
        let (code, out) = run_driver(
            &["--start-scripts", script, "--save-snapshots", "snaps"],
            &work,
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("systemd says the system is"), "{out}");
        let snap = work.join("snaps/systemd");
        let manifest = Manifest::read(&snap).unwrap();
        assert!(manifest.disk, "the disk overlay was not saved");
        assert!(snap.join("disk.qcow2").is_file());

        // The restored guest writes to a new overlay over the saved one.
        std::fs::write(
            work.join("test.py"),
            "import time\n\
             t = time.time()\n\
             systemd.wait_for_unit('multi-user.target')\n\
             print(f'first wait answered after {time.time() - t:.2f}s')\n\
             systemd.succeed('echo written > /root/after-restore; sync')\n\
             systemd.succeed('findmnt /tmp/shared')\n\
             skew = float(systemd.succeed('date +%s.%N')) - time.time()\n\
             assert abs(skew) < 2, skew\n\
             print(f'skew {skew:+.3f}')\n",
        )
        .unwrap();
        let (code, out) = run_driver(
            &["--start-scripts", script, "--snapshots", "snaps", "test.py"],
            &work,
        );
        assert_eq!(code, 0, "{out}");
        let named = format!("restored from {}", snap.display());
        assert!(out.contains(&named), "{out}");
        assert!(!out.contains("connecting to host..."), "it booted:\n{out}");
        // The snapshot itself was not written.
        assert_eq!(Manifest::read(&snap).unwrap(), manifest);
        let _ = std::fs::remove_dir_all(&work);
    })
    .await;
}

/// nixpkgs' path (`nix/test-module.nix`): a node's snapshot derivation runs
/// the driver with a nodes description of that node's start script and
/// the test's VLANs (`$nodesJsonPath`, `--save-snapshots $out`), and the
/// test's `.driver` runs it with `--config driverConfiguration.json` and
/// `--snapshot <node>=<snapshot>/<node>`. The start scripts join VLAN 1
/// through VDE (`-netdev vde`, as NixOS' do), so the restored guests'
/// NICs connect to the new run's switch: they reach each other by name.
#[tokio::test(flavor = "current_thread")]
async fn a_nixpkgs_configuration_restores_vde_start_scripts() {
    common::within(LIMIT, async {
        let work = temp("nixpkgs");
        let hosts = "a=192.168.1.1,b=192.168.1.2";
        let scripts: Vec<(&str, PathBuf)> = [("a", 1), ("b", 2)]
            .into_iter()
            .map(|(name, node)| {
                let dir = work.join(format!("{name}-vm"));
                std::fs::create_dir_all(&dir).unwrap();
                (name, common::vde_start_script(&dir, name, node, hosts))
            })
            .collect();

        // One save per node, each alone with the test's VLANs.
        for (name, script) in &scripts {
            let nodes = work.join(format!("{name}.json"));
            let json = serde_json::json!({
                "vlans": [1],
                "machines": [{ "name": name, "startScript": script }],
            });
            std::fs::write(&nodes, json.to_string()).unwrap();
            let out = format!("snapshot-{name}");
            let (code, text) = run_driver_env(
                &["--save-snapshots", &out],
                &work,
                &[("nodesJsonPath", nodes.to_str().unwrap())],
            );
            assert_eq!(code, 0, "{text}");
            let manifest = Manifest::read(&work.join(&out).join(name)).unwrap();
            assert!(
                manifest
                    .devices
                    .iter()
                    .any(|d| d == "env QEMU_VDE_SOCKET_1=@VDE1@"),
                "{:?}",
                manifest.devices
            );
        }

        // The run: nixpkgs' configuration, each node's snapshot named.
        std::fs::write(
            work.join("test-script"),
            "start_all()\n\
             a.succeed('ping -c1 -W5 b')\n\
             b.succeed('ping -c1 -W5 a')\n",
        )
        .unwrap();
        let vms: serde_json::Map<String, serde_json::Value> = scripts
            .iter()
            .map(|(name, script)| {
                (
                    name.to_string(),
                    serde_json::json!({ "name": name, "start_script": script }),
                )
            })
            .collect();
        let config = serde_json::json!({
            "vms": vms,
            "containers": {},
            "vlans": [1],
            "global_timeout": 300,
            "enable_ssh_backdoor": false,
            "test_script": work.join("test-script"),
        });
        std::fs::write(work.join("driverConfiguration.json"), config.to_string()).unwrap();
        let snap = |name: &str| work.join(format!("snapshot-{name}/{name}"));
        let args = [
            "--config".to_string(),
            "driverConfiguration.json".to_string(),
            "--snapshot".to_string(),
            format!("a={}", snap("a").display()),
            "--snapshot".to_string(),
            format!("b={}", snap("b").display()),
            "-o".to_string(),
            "out".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = run_driver(&args, &work);
        assert_eq!(code, 0, "{text}");
        for name in ["a", "b"] {
            let named = format!("restored from {}", snap(name).display());
            assert!(text.contains(&named), "{name} was not restored:\n{text}");
        }
        assert!(!text.contains(BOOT_LINE), "a node booted:\n{text}");

        // A name that is not a machine of the test is refused.
        let (code, text) = run_driver(
            &[
                "--config",
                "driverConfiguration.json",
                "--snapshot",
                "c=/nowhere",
            ],
            &work,
        );
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains(
                "--snapshot c=...: there is no machine `c` in this test (its machines: a, b)"
            ),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&work);
    })
    .await;
}
