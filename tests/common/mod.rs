//! Shared helpers for the integration tests and the benches: the Debian
//! test guests (built by `tests/guests/build.sh`), drivers with image
//! nodes, and Nix commands with the plugin loaded.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix_vmtest::driver::{Driver, RunOptions};
use nix_vmtest::log::Log;
use nix_vmtest::machine::qemu::AccelChoice;
use nix_vmtest::machine::Machine;
use nix_vmtest::spec::{format_mac, ip_address, mac_address, ImageSpec, MachineSpec, TestSpec};

/// The directory holding the built guests (`$NIX_VMTEST_GUESTS`, else
/// what `tests/guests/build.sh --print-dir` names). Fails loudly when they
/// are not built or incomplete: the tests never skip silently.
pub fn guests() -> PathBuf {
    let dir = if let Some(d) = std::env::var_os("NIX_VMTEST_GUESTS") {
        PathBuf::from(d)
    } else {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new("bash")
            .arg(format!("{root}/tests/guests/build.sh"))
            .arg("--print-dir")
            .output()
            .expect("running tests/guests/build.sh --print-dir");
        assert!(
            out.status.success(),
            "the test guests are not built: run tests/guests/build.sh first, or set \
             NIX_VMTEST_GUESTS ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or(""),
        )
    };
    for f in [
        "vmlinuz",
        "tiny/initrd",
        "systemd/initrd",
        "systemd/base.qcow2",
        "run-tiny-vm",
    ] {
        assert!(
            dir.join(f).is_file(),
            "the test guests in {} are incomplete: {f} is missing (run tests/guests/build.sh)",
            dir.display()
        );
    }
    dir
}

/// An image node of one of the built guests.
fn image(
    name: &str,
    initrd: &str,
    disk: Option<&str>,
    memory: u32,
    vlans: Vec<u32>,
) -> MachineSpec {
    let g = guests();
    MachineSpec {
        name: name.into(),
        start_script: None,
        image: Some(ImageSpec {
            kernel: g.join("vmlinuz"),
            initrd: g.join(initrd),
            disk: disk.map(|d| g.join(d)),
            memory,
            cpus: 1,
            kernel_params: String::new(),
            qemu_flags: vec![],
            vlans,
        }),
        snapshot: None,
        peer: None,
    }
}

/// The `tiny` guest (busybox + bash initramfs) as an image node.
pub fn tiny(name: &str, vlans: Vec<u32>) -> MachineSpec {
    image(name, "tiny/initrd", None, 256, vlans)
}

/// The `systemd` guest (debootstrapped Debian on qcow2) as an image node.
pub fn systemd(name: &str, vlans: Vec<u32>) -> MachineSpec {
    image(
        name,
        "systemd/initrd",
        Some("systemd/base.qcow2"),
        512,
        vlans,
    )
}

/// Options for a run of these machines, output into a fresh temp dir.
pub fn options(machines: Vec<MachineSpec>) -> RunOptions {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "out-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    RunOptions {
        spec: TestSpec {
            vlans: vec![],
            machines,
        },
        test_script: None,
        out_dir: out,
        junit_xml: None,
        log_file: None,
        global_timeout: Duration::from_secs(600),
        interactive: false,
        keep_state: false,
        accel: AccelChoice::Auto,
        snapshots: None,
    }
}

/// Runs a test's body and fails the test if the body takes longer than
/// `limit`. A hang then fails that one test, and the machines it started
/// stop as the body is dropped, instead of the whole run waiting for CI's
/// own limit.
pub async fn within(limit: Duration, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("the test did not finish within {limit:?}: it hung (its machines were stopped)");
    }
}

/// A driver for these machines (not started).
pub async fn driver(machines: Vec<MachineSpec>) -> Driver {
    Driver::new(options(machines), Log::new())
        .await
        .expect("setting up the driver")
}

/// A driver that logs nothing to the terminal (benchmarks).
pub async fn driver_quiet(machines: Vec<MachineSpec>) -> Driver {
    Driver::new(options(machines), Log::quiet())
        .await
        .expect("setting up the driver")
}

/// Restarts the systemd guest's `slow.service` without waiting: it becomes
/// active about 3 s later.
pub async fn restart_slow_service(m: &mut nix_vmtest::machine::Machine) {
    m.execute(
        "systemctl stop slow.service; systemctl start --no-block slow.service",
        None,
        true,
    )
    .await
    .unwrap();
}

/// Runs a command (two minutes at most); its status and output (lossy
/// UTF-8).
pub async fn sh(m: &mut Machine, cmd: &str) -> (i32, String) {
    let o = m
        .execute(cmd, Some(Duration::from_secs(120)), true)
        .await
        .unwrap_or_else(|e| panic!("{}: `{cmd}`: {e}", m.name));
    (o.status, String::from_utf8_lossy(&o.output).into_owned())
}

/// Runs a command that must succeed; its output.
pub async fn succeed(m: &mut Machine, cmd: &str) -> String {
    let (st, out) = sh(m, cmd).await;
    assert_eq!(st, 0, "{}: `{cmd}` exited with {st}: {out}", m.name);
    out
}

/// The plugin (`libnix_vmtest.so`): `$NIX_VMTEST_PLUGIN`, else the one
/// `cargo build [--release] --features nix-plugin` left next to the driver
/// (`cargo test` and `cargo bench` do not build the cdylib). `Err` says
/// where it looked and how to build it.
pub fn find_plugin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NIX_VMTEST_PLUGIN") {
        return Ok(p.into());
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_nixos-test-driver"))
        .parent()
        .unwrap();
    let target = bin_dir.parent().unwrap();
    let candidates = [
        bin_dir.join("libnix_vmtest.so"),
        target.join("release/libnix_vmtest.so"),
        target.join("debug/libnix_vmtest.so"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no plugin at {candidates:?}: run `cargo build --release --features nix-plugin` \
                 first (same CARGO_TARGET_DIR), or set NIX_VMTEST_PLUGIN"
            )
        })
}

/// The plugin, or a panic saying how to build it ([`find_plugin`]).
pub fn plugin() -> PathBuf {
    find_plugin().unwrap_or_else(|e| panic!("{e}"))
}

/// Extra sandbox paths for a Debian host: QEMU, Python and their libraries
/// live outside the store.
pub const SANDBOX_PATHS: &str = "/usr /lib /lib64 /bin";

/// `nix-build`/`nix-instantiate`/`nix` with the plugin loaded, the sandbox
/// on (with `extra_sandbox` besides [`SANDBOX_PATHS`]) and no substituters.
pub fn nix(program: &str, extra_sandbox: &[&Path]) -> Command {
    let mut cmd = Command::new(program);
    let mut sandbox_paths = SANDBOX_PATHS.to_string();
    for p in extra_sandbox {
        sandbox_paths.push(' ');
        sandbox_paths.push_str(&p.to_string_lossy());
    }
    cmd.arg("--option")
        .arg("plugin-files")
        .arg(plugin())
        .args(["--option", "sandbox", "true"])
        .args(["--option", "substituters", ""])
        .args(["--option", "extra-sandbox-paths", &sandbox_paths]);
    // Debian's nix-bin without nix-setup-systemd has no nixbld group: build
    // as root (still sandboxed) rather than fail.
    let has_group = Command::new("getent")
        .args(["group", "nixbld"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_group {
        cmd.args(["--option", "build-users-group", ""]);
    }
    cmd.env("NIX_VMTEST_TEST", "1");
    cmd
}

/// A command's stdout then stderr, lossy UTF-8.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Writes `run-<name>-vm` into `dir`: a start script for the `tiny` guest
/// as node `node` that joins VLAN 1 as nixpkgs' start scripts do, with
/// nixpkgs' `qemuNICFlags` for interface 1 on VLAN 1 (`qemu-common.nix`):
/// `-device virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:<n>` and
/// `-netdev vde,id=vlan1,sock="$QEMU_VDE_SOCKET_1"`. The rest of the
/// script is the guests' own (`tests/guests/make-start-script`, with no
/// VLAN of its own); the guest's address for that MAC goes in through
/// `QEMU_KERNEL_PARAMS`, which the Debian guests' init reads where a NixOS
/// guest has its network configuration.
pub fn vde_start_script(dir: &Path, name: &str, node: u32, hosts: &str) -> PathBuf {
    let guests = guests();
    let inner = dir.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let make = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/make-start-script");
    let out = std::process::Command::new("bash")
        .arg(&make)
        .args([name, "tiny", &node.to_string(), "", hosts])
        .arg(&inner)
        .env("NIX_VMTEST_GUESTS_DIR", &guests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-start-script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mac = format_mac(mac_address(1, node));
    let ip = ip_address(1, node);
    let script = dir.join(format!("run-{name}-vm"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             QEMU_KERNEL_PARAMS=\"vmtest.net={mac}={ip}/24 ${{QEMU_KERNEL_PARAMS:-}}\"\n\
             export QEMU_KERNEL_PARAMS\n\
             exec {inner}/run-{name}-vm \\\n    \
             -device virtio-net-pci,netdev=vlan1,mac={mac} \\\n    \
             -netdev vde,id=vlan1,sock=\"$QEMU_VDE_SOCKET_1\" \\\n    \
             \"$@\"\n",
            inner = inner.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}
