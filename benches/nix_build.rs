//! `cargo bench --features nix-plugin --bench nix_build`: what booted
//! snapshots save a user, timed through the real `nix-build` with the
//! plugin (`builtins.vmTest`) on the host's Nix, sandbox on, no
//! substituters, as `tests/plugin.rs` runs it.
//!
//! The test is `benches/nix/trivial.nix` (one node, `succeed("true")`),
//! on the tiny and the systemd Debian guest. Each figure is the wall time
//! of one `nix-build` from its start to the `vm-test-run-<name>` path,
//! evaluation included, in rounds of three builds that take turns (so all
//! three see the same host load):
//! - first build, snapshots on: a node no snapshot exists for (a new
//!   kernel parameter), so the `vm-snapshot-<name>-machine` derivation is
//!   built (boot, save) and then the run, which restores from it;
//! - restored: the same node with another script (the "user edited the
//!   script" case): only the run is built, and it restores;
//! - snapshots off (`snapshots = false;`): the run boots the node.
//!
//! Every build has a script text of its own, so none is answered from
//! the store; each build's log is checked for the restore or the boot.
//! Besides: the snapshot derivation's build time (from its `building`
//! line to the next one: boot, save, and its output's registration) and
//! its size (`du -sk` of the output).
//!
//! The plugin is the `libnix_vmtest.so` that `cargo build --release
//! --features nix-plugin` leaves next to the driver, or
//! `$NIX_VMTEST_PLUGIN`; without it, or without `nix-build`, the bench
//! prints that the figures did not run and why. The guests are those of
//! `tests/guests/build.sh` (or `$NIX_VMTEST_GUESTS`). What the bench built
//! is deleted from the store at the end.
//!
//! Set `NIX_VMTEST_BENCH_QUICK=1` for fewer rounds;
//! `cargo bench --features nix-plugin --bench nix_build -- tiny` (or
//! `-- systemd`) prints only that guest's figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::text;

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Why the figures cannot run here, if they cannot: no `nix-build`, or no
/// plugin (or a `libnix_vmtest.so` built without `--features nix-plugin`).
/// Otherwise Nix's version (`Nix 2.8.0`).
fn ready() -> Result<String, String> {
    let version = Command::new("nix-build")
        .arg("--version")
        .output()
        .map_err(|e| format!("`nix-build --version` did not run ({e}): is Nix installed?"))?;
    if !version.status.success() {
        return Err(format!("`nix-build --version` failed: {}", text(&version)));
    }
    let plugin = common::find_plugin()?;
    let bytes =
        std::fs::read(&plugin).map_err(|e| format!("the plugin {}: {e}", plugin.display()))?;
    if !bytes
        .windows(b" was built for Nix ".len())
        .any(|w| w == b" was built for Nix ")
    {
        return Err(format!(
            "{} is not the plugin (built without `--features nix-plugin`): run \
             `cargo build --release --features nix-plugin`",
            plugin.display()
        ));
    }
    // `nix-build (Nix) 2.8.0`
    let version = String::from_utf8_lossy(&version.stdout);
    Ok(format!(
        "Nix {}",
        version.split_whitespace().last().unwrap_or("?")
    ))
}

/// One `nix-build` of the trivial test.
struct Build {
    /// Start to exit.
    took: Duration,
    /// Each derivation Nix said it was building (`building '<drv>'...`),
    /// with the moment the line came, and the moment the build ended.
    building: Vec<(Instant, String)>,
    ended: Instant,
    /// The run's log (`$out/log`).
    log: String,
}

impl Build {
    /// The built derivation whose name contains `part`, and how long its
    /// build took (to the next `building` line, or to the end).
    fn step(&self, part: &str) -> Option<(&str, Duration)> {
        let i = self.building.iter().position(|(_, d)| d.contains(part))?;
        let end = self.building.get(i + 1).map_or(self.ended, |(t, _)| *t);
        Some((&self.building[i].1, end - self.building[i].0))
    }
}

/// `nix-build benches/nix/trivial.nix` with `--argstr k v` for each pair
/// and `snapshots` as given; panics (failing the bench) if it fails.
fn nix_build(guests: &Path, args: &[(&str, &str)], snapshots: bool) -> Build {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nix/trivial.nix");
    let mut cmd = common::nix("nix-build", &[]);
    cmd.arg(&file)
        .args(["--no-out-link", "--max-jobs", "1"])
        .args(["--argstr", "guests"])
        .arg(guests)
        .args([
            "--arg",
            "snapshots",
            if snapshots { "true" } else { "false" },
        ]);
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("nix-build starts");
    // Stamp each line of stderr as it comes: the `building` lines split
    // the build into its derivations.
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let out = child.wait_with_output().expect("nix-build runs");
    let ended = Instant::now();
    let lines = reader.join().unwrap();
    let all: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(
        out.status.success(),
        "nix-build {args:?} (snapshots {snapshots}) failed:\n{all}"
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let log = std::fs::read_to_string(Path::new(&path).join("log"))
        .unwrap_or_else(|e| panic!("{path}/log: {e}"));
    let building = lines
        .into_iter()
        .filter_map(|(t, l)| {
            let drv = l.strip_prefix("building '")?;
            Some((t, drv.trim_end_matches("'...").to_string()))
        })
        .collect();
    Build {
        took: ended - start,
        building,
        ended,
        log,
    }
}

/// `nix-instantiate` of the test, so that the kernel, initrd and disk are
/// in the store before any timed build (the first evaluation copies them).
fn warm_up(guests: &Path, guest: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nix/trivial.nix");
    let out = common::nix("nix-instantiate", &[])
        .arg(&file)
        .args(["--argstr", "guests"])
        .arg(guests)
        .args(["--argstr", "guest", guest])
        .output()
        .expect("nix-instantiate runs");
    assert!(out.status.success(), "{}", text(&out));
}

/// The size `du -sk` gives `path`, in bytes.
fn du(path: &str) -> u64 {
    let out = Command::new("du")
        .args(["-sk", path])
        .output()
        .expect("du runs");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse::<u64>().ok())
        .expect("du's figure")
        * 1024
}

/// The output paths of derivations.
fn outputs_of<'a>(drvs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let out = Command::new("nix-store")
        .args(["--query", "--outputs"])
        .args(drvs)
        .output()
        .expect("nix-store runs");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Each build's outputs (snapshot, driver, run: each named for this
/// bench's node or script, so no one else's) go to `made`, to delete.
fn keep(made: &mut Vec<String>, b: &Build) {
    made.extend(outputs_of(b.building.iter().map(|(_, d)| d.as_str())));
}

/// What a round's restore and boot logs must (not) say.
const RESTORED: &str = "restored from /nix/store/";
const BOOTED: &str = "waiting for the VM to finish booting";

/// `rounds` rounds of the three builds on `guest`; prints the figures.
/// Adds the store paths it builds to `made`, to delete.
fn figures(guests: &Path, guest: &str, rounds: usize, made: &mut Vec<String>) {
    warm_up(guests, guest);
    let tag = format!("{}-{}", std::process::id(), fastrand::u32(..));
    let snapshot_drv = format!("-vm-snapshot-bench-trivial-{guest}-machine.drv");
    let run_drv = format!("-vm-test-run-bench-trivial-{guest}.drv");
    let (mut first, mut restored, mut off) = (Vec::new(), Vec::new(), Vec::new());
    let (mut snap_build, mut snap_size) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let node = format!("{tag}-{round}");
        // Every build has a script of its own: none is answered from the
        // store. Its outputs are kept for deletion before any check.
        let mut build = |kind: &str, snapshots: bool| {
            let marker = format!("{tag}-{round}-{kind}");
            let args = [("guest", guest), ("node", &node), ("marker", &marker)];
            let b = nix_build(guests, &args, snapshots);
            keep(made, &b);
            assert!(b.step(&run_drv).is_some(), "{kind}: {:?}", b.building);
            b
        };

        let b = build("first", true);
        let (drv, took) = b
            .step(&snapshot_drv)
            .unwrap_or_else(|| panic!("the first build built no snapshot: {:?}", b.building));
        assert!(
            b.log.contains(RESTORED),
            "first build, not restored:\n{}",
            b.log
        );
        snap_build.push(took);
        snap_size.push(du(&outputs_of([drv])[0]));
        first.push(b.took);

        let b = build("edit", true);
        assert!(b.step("-vm-snapshot-").is_none(), "{:?}", b.building);
        assert!(
            b.log.contains(RESTORED),
            "edited script, not restored:\n{}",
            b.log
        );
        restored.push(b.took);

        let b = build("off", false);
        assert!(b.step("-vm-snapshot-").is_none(), "{:?}", b.building);
        assert!(
            b.log.contains(BOOTED) && !b.log.contains(RESTORED),
            "snapshots off, but no boot:\n{}",
            b.log
        );
        off.push(b.took);
    }
    let (f, r, o) = (median(first), median(restored), median(off));
    let samples = if rounds == 1 {
        "1 sample".to_string()
    } else {
        format!("median of {rounds}")
    };
    let pad = " ".repeat(8usize.saturating_sub(guest.len()));
    println!(
        "nix-build, trivial test ({guest}):{pad} snapshots off {}  restored {} ({:.1}x)  \
         first build {}  ({samples})",
        secs(o),
        secs(r),
        o.as_secs_f64() / r.as_secs_f64(),
        secs(f)
    );
    println!(
        "snapshot derivation ({guest}):{pad}     build {}  size {:.1} MiB (du)  ({samples})",
        secs(median(snap_build)),
        median(snap_size) as f64 / 1048576.0
    );
}

/// Deletes what the bench built (in one call: the runs and drivers name
/// the snapshots, which go only with them).
fn delete(paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    let out = Command::new("nix-store")
        .arg("--delete")
        .args(paths)
        .output()
        .expect("nix-store runs");
    if !out.status.success() {
        // Nix's own notes (stale roots it removed) are not the reason.
        let why: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.contains("removing stale link"))
            .collect();
        eprintln!(
            "note: could not delete what the bench built: {}",
            why.join("\n")
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("NIX_VMTEST_BENCH_QUICK").is_some();
    // `cargo bench --bench nix_build -- tiny`: only that guest.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "tiny" || a == "systemd")
        .collect();
    let version = match ready() {
        Ok(v) => v,
        Err(why) => {
            println!("== nix-vmtest nix-build bench ==");
            println!("nix-build figures: NOT RUN: {why}");
            return;
        }
    };
    println!(
        "== nix-vmtest nix-build bench: a trivial builtins.vmTest test, whole nix-build \
         ({version}; TCG unless KVM works) =="
    );
    let guests = common::guests();
    let started = Instant::now();
    let mut made = Vec::new();
    // Delete what was built even when a figure fails.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (guest, rounds) in [("tiny", if quick { 3 } else { 5 }), ("systemd", 1)] {
            if only.is_empty() || only.contains(&guest.to_string()) {
                figures(&guests, guest, rounds, &mut made);
            }
        }
    }));
    delete(&made);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    println!("(the nix-build figures took {})", secs(started.elapsed()));
}
