//! Booted snapshots: a machine's state saved into a directory once it has
//! booted, and a later start that restores it instead of booting.
//!
//! A snapshot directory holds
//! - `state`: QEMU's migration stream (QMP `migrate` to `file:`), taken
//!   with the VM stopped;
//! - `disk.qcow2`: the disk overlay as it was then (if the machine has
//!   one), over the machine's own base disk; a restored machine runs on a
//!   fresh overlay over it, so the snapshot is never written;
//! - `manifest.json` ([`Manifest`]): what the state depends on. A restore
//!   whose run differs in any of it (accelerator, CPU model, QEMU version,
//!   the driver's guest protocol, the devices QEMU gets) is refused, and
//!   the machine boots; so does a restore that fails.
//!
//! The backdoor shell is left idle: before saving, the driver ends the
//! guest's serve loop, so bash reads the console again, with all its
//! functions defined. The manifest keeps what the host knows of that
//! bootstrap ([`SavedShell`]: the key its answers carry, its ports, the
//! names bash resolves itself), so a restored driver takes the shell up
//! where it was ([`Shell::resume`]): its first command starts the serve
//! loop with one short console line, and no bootstrap runs (it was about
//! half of a restore under TCG). Nothing else of the old connection
//! (command numbers, buffers) is carried over. The one process from the
//! old run the guest keeps running is the control listener
//! (`__vmt_listen`), which the serve loop reuses: the manifest records the
//! guest functions, so a driver with other ones boots instead. A manifest
//! without the shell (older drivers) is restored with a bootstrap.

//! What cannot migrate is put away first: a mounted 9p share blocks QEMU's
//! migration, so every 9p mount is unmounted after a `sync`, and mounted
//! again afterwards (in the saving VM if it goes on, and in the restored
//! one). A restored guest's clock is at the snapshot's time: the driver
//! sets it from the host's, and mixes host randomness into the guest's
//! RNG, whose state the snapshot shares with every restore.
//!
//! QEMU's `mapped-ram` capability works here (QEMU 10.0), but it writes
//! RAM at fixed offsets, a sparse file as large as the guest's memory (a
//! 256 MiB guest: 294 MB apparent, 84 MB used), where the plain stream
//! skips zero pages (84 MB). A Nix store path keeps no holes, and the
//! restore took the same time either way (0.15–0.3 s, page-cached), so
//! the plain stream is used; the manifest says which, and a restore
//! follows it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::lifecycle::Launch;
use super::shell::{self, SavedShell, Shell};
use super::{Machine, MachineError};
use crate::log::Level;

/// The version of what the driver leaves in a guest it snapshots (the
/// idle shell on the console, the control listener): raise it when that
/// changes in a way the guest functions' text does not show. 2: big
/// outputs come through the shared directory (answer form 3), which the
/// host side must know to read.
pub const GUEST_PROTOCOL: u32 = 2;

/// The manifest's own format.
const MANIFEST_FORMAT: u32 = 1;

/// The files of a snapshot directory.
pub const MANIFEST: &str = "manifest.json";
pub const STATE: &str = "state";
pub const DISK: &str = "disk.qcow2";

/// Whether a save uses QEMU's `mapped-ram` capability (see the module
/// documentation for why not).
const MAPPED_RAM: bool = false;

/// How long a save's or a restore's migration may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(120);

/// How long a whole restore may take before the machine boots instead.
const RESTORE_LIMIT: Duration = Duration::from_secs(180);

/// How long the guest may take to quiesce or to resume.
const GUEST_LIMIT: Duration = Duration::from_secs(60);

/// What a snapshot depends on, and what it needs to be restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// [`guest_protocol`] of the driver that saved it.
    pub guest_protocol: String,
    pub machine: String,
    /// QEMU's version and package, as `query-version` gives them.
    pub qemu_version: String,
    /// `kvm` or `tcg`, as `query-kvm` says.
    pub accel: String,
    /// The QOM type of the vCPUs and the model they report, as
    /// `max-x86_64-cpu (QEMU TCG CPU version 2.5+)`; under KVM, the `host`
    /// model reports the host's CPU.
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// QEMU's arguments and environment with the run's paths put as
    /// `@STATE@`, `@VLAN<v>@`, `@VDE<v>@`, and the identity of the files
    /// they name that may change in place ([`Machine::devices`]).
    pub devices: Vec<String>,
    /// SHA-256 of `devices`, one per line.
    pub devices_sha256: String,
    pub mapped_ram: bool,
    /// Whether `disk.qcow2` is there.
    pub disk: bool,
    /// The 9p mounts to make again after a restore.
    pub mounts: Vec<Mount>,
    /// When it was saved (host time, seconds since the epoch).
    pub saved_at: f64,
    /// The backdoor shell's bootstrap, as the guest keeps it: a restore
    /// with it starts the guest's serve loop and needs no bootstrap.
    /// Absent (older manifests, a shell that was not set up): the restore
    /// bootstraps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<SavedShell>,
}

/// A 9p mount of the guest, as `/proc/mounts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub tag: String,
    pub dir: String,
    pub options: String,
}

/// What the running QEMU says about itself.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    qemu_version: String,
    accel: String,
    cpu_model: String,
    cpus: usize,
    memory_mib: u64,
}

/// The driver's guest protocol: [`GUEST_PROTOCOL`] and a digest of the
/// guest functions.
pub fn guest_protocol() -> String {
    let digest = hex(&Sha256::digest(shell::guest_functions().as_bytes()));
    format!("{GUEST_PROTOCOL}-{}", &digest[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// SHA-256 of the device lines, one per line.
pub fn devices_digest(devices: &[String]) -> String {
    let mut h = Sha256::new();
    for d in devices {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

impl Manifest {
    /// Reads `<dir>/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a snapshot manifest of this driver: {e}",
                path.display()
            )
        })
    }

    /// What the driver itself decides: the manifest's format, the guest
    /// protocol, the accelerator.
    fn check_driver(&self, accel: super::qemu::Accel) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "its manifest has format {}, this driver reads {MANIFEST_FORMAT}",
                self.format
            ));
        }
        let ours = guest_protocol();
        if self.guest_protocol != ours {
            return Err(format!(
                "it was made by a driver with guest protocol {}, this one has {ours}",
                self.guest_protocol
            ));
        }
        if self.accel != accel.to_string() {
            return Err(format!(
                "it was made under accelerator {}, this run uses {accel}",
                self.accel
            ));
        }
        Ok(())
    }

    /// The devices QEMU gets now must be the snapshot's.
    fn check_devices(&self, devices: &[String]) -> Result<(), String> {
        if self.devices == devices {
            return Ok(());
        }
        let first = self
            .devices
            .iter()
            .zip(devices)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("the snapshot has `{a}`, this run `{b}`"))
            .unwrap_or_else(|| {
                format!(
                    "the snapshot has {} entries, this run {}",
                    self.devices.len(),
                    devices.len()
                )
            });
        Err(format!(
            "QEMU's devices or arguments differ from the snapshot's: {first}"
        ))
    }

    /// The QEMU that runs now must be the snapshot's.
    fn check_identity(&self, id: &Identity) -> Result<(), String> {
        let pairs = [
            ("QEMU version", &self.qemu_version, &id.qemu_version),
            ("accelerator", &self.accel, &id.accel),
            ("CPU model", &self.cpu_model, &id.cpu_model),
        ];
        for (what, saved, now) in pairs {
            if saved != now {
                return Err(format!(
                    "it was made with {what} {saved}, this QEMU has {now}"
                ));
            }
        }
        if (self.cpus, self.memory_mib) != (id.cpus, id.memory_mib) {
            return Err(format!(
                "it was made with {} vCPUs and {} MiB, this QEMU has {} and {} MiB",
                self.cpus, self.memory_mib, id.cpus, id.memory_mib
            ));
        }
        Ok(())
    }
}

/// The guest command that syncs and unmounts every 9p mount (the last
/// mounted first). It lists them first, `mount <tag> <dir> <options>`, and
/// ends with status 1 and `cannot-unmount <dir>` if one stays.
const QUIESCE: &str = r#"sync
m=()
while read -r dev dir fs opts rest; do
  [[ $fs == 9p ]] && m+=("$dev $dir $opts") && printf 'mount %s %s %s\n' "$dev" "$dir" "$opts"
done </proc/mounts
for ((i = ${#m[@]} - 1; i >= 0; i--)); do
  read -r dev dir opts <<<"${m[i]}"
  umount "$dir" 2>&1 || { printf 'cannot-unmount %s\n' "$dir"; exit 1; }
done
sync"#;

/// The mounts [`QUIESCE`] listed.
fn parse_mounts(output: &str) -> Vec<Mount> {
    output
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("mount ")?.split(' ');
            Some(Mount {
                tag: w.next()?.to_string(),
                dir: w.next()?.to_string(),
                options: w.next()?.to_string(),
            })
        })
        .collect()
}

/// The guest command that mounts `mounts` again where they are not. Only
/// `mount` (and `mkdir` where the mount point went) is a process: a
/// restored guest's first processes are slow (TCG translates their code
/// afresh), so /proc/mounts is read by bash itself.
fn remount_command(mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| {
            let (tag, dir, opts) = (
                shell::shell_quote(&m.tag),
                shell::shell_quote(&m.dir),
                shell::shell_quote(&m.options),
            );
            format!(
                "__m=; while read -r __t __d __f __o; do \
                 [[ $__t == {tag} && $__d == {dir} && $__f == 9p ]] && __m=1; done </proc/mounts; \
                 [[ -n $__m ]] || {{ {{ [[ -d {dir} ]] || mkdir -p {dir}; }} && \
                 mount -t 9p -o {opts} {tag} {dir}; }} || \
                 {{ echo \"cannot mount the 9p share \"{tag}\" on \"{dir}; exit 3; }}\n"
            )
        })
        .collect()
}

/// The guest command that sets the clock to the host's time now (GNU
/// `date` takes a fraction; busybox's does not, and gets whole seconds,
/// rounded) and mixes 64 bytes of host randomness into the RNG.
fn resume_command() -> Result<String, std::io::Error> {
    let mut seed = [0u8; 64];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    let seed: String = seed.iter().map(|b| format!("\\x{b:02x}")).collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, nanos) = (now.as_secs(), now.subsec_nanos());
    let rounded = now.as_secs_f64().round() as u64;
    Ok(format!(
        "date -s @{secs}.{nanos:09} >/dev/null 2>&1 || date -s @{rounded} >/dev/null || \
         {{ echo 'cannot set the clock with date -s'; exit 1; }}\n\
         printf '{seed}' >/dev/urandom || {{ echo 'cannot write /dev/urandom'; exit 2; }}\n"
    ))
}

/// What went wrong with a step, as text (a restore's failure is logged,
/// not raised).
fn text(e: MachineError) -> String {
    e.to_string()
}

impl Machine {
    /// The snapshot directory this start restores, if any: only a
    /// machine's first start in a run restores (a later one boots, as a
    /// test that restarts a machine expects), and not with its state kept
    /// (its disk is not the snapshot's).
    pub(super) fn snapshot_to_restore(&mut self) -> Option<PathBuf> {
        let first = !self.started_once;
        self.started_once = true;
        let dir = self.cfg.snapshot.clone()?;
        let why = if !first {
            "only a machine's first start restores it"
        } else if self.cfg.keep_state {
            "its state is kept (--keep-machine-state), and its disk is not the snapshot's"
        } else {
            return Some(dir);
        };
        self.log.machine(
            &self.name,
            &format!("not restoring from snapshot {}: {why}", dir.display()),
        );
        None
    }

    /// Restores or (later) boots from `dir` on the machine's first start,
    /// or never with `None`.
    pub fn set_snapshot(&mut self, dir: Option<PathBuf>) {
        self.cfg.snapshot = dir;
    }

    /// The snapshot this run of QEMU was restored from.
    pub fn restored_from(&self) -> Option<&Path> {
        self.restored_from.as_deref()
    }

    /// What a start command gives the guest, for a snapshot's manifest:
    /// its arguments and environment with the run's own paths (state
    /// directory, switch sockets) as placeholders, without what does not
    /// touch the guest (`-no-reboot`, `-incoming`), and the identity of
    /// the files that may change under the same name (a start script's
    /// text; size and time of an image's files).
    pub(super) fn devices(&self, launch: &Launch) -> Vec<String> {
        let mut subs: Vec<(String, String)> =
            vec![(self.cfg.state_dir.display().to_string(), "@STATE@".into())];
        for (v, p) in &self.cfg.vlan_sockets {
            subs.push((p.display().to_string(), format!("@VLAN{v}@")));
        }
        for (v, p) in &self.cfg.vde_dirs {
            subs.push((p.display().to_string(), format!("@VDE{v}@")));
        }
        let norm = |s: &str| {
            subs.iter()
                .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
        };
        let mut out = Vec::new();
        let mut args = launch.argv.iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "-no-reboot" => {}
                "-incoming" => {
                    args.next();
                }
                a => out.push(format!("arg {}", norm(a))),
            }
        }
        for (k, v) in &launch.env {
            out.push(format!("env {k}={}", norm(v)));
        }
        if let Some(script) = &self.cfg.spec.start_script {
            let digest = std::fs::read(script)
                .map(|b| hex(&Sha256::digest(&b)))
                .unwrap_or_else(|e| format!("unreadable ({e})"));
            out.push(format!("script-sha256 {digest}"));
        }
        if let Some(image) = &self.cfg.spec.image {
            for f in [
                Some(&image.kernel),
                Some(&image.initrd),
                image.disk.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                let id = std::fs::metadata(f)
                    .map(|m| {
                        let mtime = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_secs());
                        format!("{} bytes, modified {mtime}", m.len())
                    })
                    .unwrap_or_else(|e| format!("unreadable ({e})"));
                out.push(format!("file {} {id}", f.display()));
            }
        }
        out
    }

    /// What the running QEMU says about itself.
    async fn identity(&mut self) -> Result<Identity, MachineError> {
        let v = self.qmp_execute("query-version", None).await?;
        let q = &v["qemu"];
        let mut qemu_version = format!("{}.{}.{}", q["major"], q["minor"], q["micro"]);
        if let Some(p) = v["package"].as_str().filter(|p| !p.trim().is_empty()) {
            qemu_version.push_str(&format!(" ({})", p.trim()));
        }
        let kvm = self.qmp_execute("query-kvm", None).await?;
        let accel = if kvm["enabled"].as_bool() == Some(true) {
            "kvm"
        } else {
            "tcg"
        };
        let cpus = self.qmp_execute("query-cpus-fast", None).await?;
        let list = cpus.as_array().cloned().unwrap_or_default();
        // The vCPU's QOM type (`max-x86_64-cpu`) and the model it reports
        // to the guest: under KVM, the `host` model gives the host's.
        let mut cpu_model = "unknown".to_string();
        if let Some(path) = list.first().and_then(|c| c["qom-path"].as_str()) {
            let path = path.to_string();
            let get = |property: &str| json!({ "path": path, "property": property });
            let kind = self.qmp_execute("qom-get", Some(get("type"))).await?;
            let id = self.qmp_execute("qom-get", Some(get("model-id"))).await?;
            cpu_model = format!(
                "{} ({})",
                kind.as_str().unwrap_or("unknown"),
                id.as_str().unwrap_or("unknown").trim()
            );
        }
        let mem = self.qmp_execute("query-memory-size-summary", None).await?;
        Ok(Identity {
            qemu_version,
            accel: accel.to_string(),
            cpu_model,
            cpus: list.len(),
            memory_mib: mem["base-memory"].as_u64().unwrap_or(0) >> 20,
        })
    }

    /// Waits until the migration QEMU runs (out or in) has completed.
    async fn wait_migration(&mut self) -> Result<(), MachineError> {
        let deadline = Instant::now() + MIGRATION_LIMIT;
        loop {
            let m = self.qmp_execute("query-migrate", None).await?;
            match m["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(MachineError::Failed {
                        name: self.name.clone(),
                        message: format!(
                            "QEMU's migration failed: {}",
                            m["error-desc"].as_str().unwrap_or("(no reason given)")
                        ),
                    })
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(MachineError::Timeout {
                    name: self.name.clone(),
                    what: "QEMU's migration".into(),
                    secs: MIGRATION_LIMIT.as_secs_f64(),
                    detail: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn set_mapped_ram(&mut self) -> Result<(), MachineError> {
        self.qmp_execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "mapped-ram", "state": true}]})),
        )
        .await
        .map(|_| ())
    }

    /// Runs a driver command in the guest that must succeed.
    async fn guest_step(&mut self, what: &str, command: &str) -> Result<String, MachineError> {
        let out = self.execute(command, Some(GUEST_LIMIT), true).await?;
        let text = String::from_utf8_lossy(&out.output).into_owned();
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "{what} failed in the guest (exit status {}): {}",
                    out.status,
                    text.trim()
                ),
            });
        }
        Ok(text)
    }

    async fn clear_qmp_events(&mut self) {
        if let Ok(q) = self.qmp().await {
            q.clear_events();
        }
    }

    /// Waits until the guest has booted as far as a snapshot should go:
    /// its shell answers and, where it runs systemd, the boot's jobs are
    /// done (`systemctl is-system-running --wait`, whatever state it
    /// reaches, which the log says).
    pub async fn settle_boot(&mut self) -> Result<(), MachineError> {
        self.connect().await?;
        let out = self
            .execute(
                "if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
                 systemctl is-system-running --wait 2>&1; fi; true",
                Some(Duration::from_secs(600)),
                true,
            )
            .await?;
        let state = String::from_utf8_lossy(&out.output).trim().to_string();
        if !state.is_empty() {
            self.log
                .machine(&self.name, &format!("systemd says the system is {state}"));
        }
        Ok(())
    }

    /// Saves the booted machine into `dir` (created; a snapshot there is
    /// replaced): the guest is synced, its 9p shares unmounted and its
    /// shell left idle on the console, then the VM is stopped and its
    /// state migrated into `dir/state`, its disk overlay copied, and the
    /// manifest written last. With `keep_running`, the VM then goes on
    /// (shares mounted again); else QEMU is stopped.
    pub async fn save_snapshot(
        &mut self,
        dir: &Path,
        keep_running: bool,
    ) -> Result<Manifest, MachineError> {
        let started = Instant::now();
        if let Some(from) = &self.restored_from {
            return Err(MachineError::Usage {
                name: self.name.clone(),
                message: format!(
                    "cannot save a snapshot of a machine restored from one ({}): its disk is \
                     layered over that snapshot's; boot it without snapshots to save one",
                    from.display()
                ),
            });
        }
        self.connect().await?;
        let dir =
            std::path::absolute(dir).map_err(self.io_err("resolving the snapshot directory"))?;
        std::fs::create_dir_all(&dir).map_err(self.io_err("creating the snapshot directory"))?;
        for f in [MANIFEST, STATE, DISK] {
            match std::fs::remove_file(dir.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self
                        .io_err(&format!("removing the old {f} in {}", dir.display()))(
                        e
                    ))
                }
                _ => {}
            }
        }
        let out = self.execute(QUIESCE, Some(GUEST_LIMIT), true).await?;
        let listed = String::from_utf8_lossy(&out.output).into_owned();
        let mounts = parse_mounts(&listed);
        if out.status != 0 {
            let _ = self
                .guest_step("mounting the 9p shares again", &remount_command(&mounts))
                .await;
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "cannot save a snapshot: a 9p share in the guest could not be unmounted, and \
                     QEMU cannot migrate a guest with one mounted ({})",
                    listed.trim()
                ),
            });
        }
        let identity = self.identity().await?;
        let devices = self.running()?.devices.clone();
        let saved = self.save_state(&dir).await;
        let shell = match saved {
            Ok(shell) => shell,
            Err(e) => {
                let _ = self.qmp_execute("cont", None).await;
                let _ = self
                    .guest_step("mounting the 9p shares again", &remount_command(&mounts))
                    .await;
                return Err(e);
            }
        };
        let has_disk = dir.join(DISK).exists();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            guest_protocol: guest_protocol(),
            machine: self.name.clone(),
            qemu_version: identity.qemu_version,
            accel: identity.accel,
            cpu_model: identity.cpu_model,
            cpus: identity.cpus,
            memory_mib: identity.memory_mib,
            devices_sha256: devices_digest(&devices),
            devices,
            mapped_ram: MAPPED_RAM,
            disk: has_disk,
            mounts,
            saved_at: now_epoch(),
            shell,
        };
        let written = serde_json::to_string_pretty(&manifest)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|json| {
                let tmp = dir.join(format!("{MANIFEST}.tmp"));
                std::fs::write(&tmp, json + "\n")?;
                std::fs::rename(&tmp, dir.join(MANIFEST))
            });
        if let Err(e) = written {
            return Err(self.io_err("writing the snapshot manifest")(e));
        }
        let size = std::fs::metadata(dir.join(STATE)).map_or(0, |m| m.len());
        self.log.machine(
            &self.name,
            &format!(
                "saved snapshot {} ({:.1} MiB of state{}) in {:.2} seconds",
                dir.display(),
                size as f64 / 1048576.0,
                if has_disk { ", and its disk" } else { "" },
                started.elapsed().as_secs_f64()
            ),
        );
        if keep_running {
            self.qmp_execute("cont", None).await?;
            self.guest_step(
                "mounting the 9p shares again",
                &remount_command(&manifest.mounts),
            )
            .await?;
            self.clear_qmp_events().await;
        } else {
            self.release();
        }
        Ok(manifest)
    }

    /// Leaves the shell idle on the console, stops the VM and migrates its
    /// state into `dir/state`; copies the disk overlay into `dir/disk.qcow2`
    /// while the VM is stopped (the migration flushed it). Returns what the
    /// guest keeps of the shell's bootstrap.
    async fn save_state(&mut self, dir: &Path) -> Result<Option<SavedShell>, MachineError> {
        let name = self.name.clone();
        let mut saved = None;
        if let Some(shell) = self.running()?.shell.as_mut() {
            shell
                .raw_mode()
                .await
                .map_err(|source| MachineError::Shell { name, source })?;
            saved = shell.saved();
        }
        if MAPPED_RAM {
            self.set_mapped_ram().await?;
        }
        self.qmp_execute("stop", None).await?;
        let uri = format!("file:{}", dir.join(STATE).display());
        self.qmp_execute("migrate", Some(json!({ "uri": uri })))
            .await?;
        self.wait_migration().await?;
        let disk = self.disk_path();
        if disk.exists() {
            std::fs::copy(&disk, dir.join(DISK))
                .map_err(self.io_err("copying the disk overlay"))?;
        }
        Ok(saved)
    }

    /// Starts QEMU from the snapshot in `dir` and hands the machine over
    /// connected, as if it had just booted. Any failure is the reason the
    /// caller logs before it boots instead (its QEMU is then stopped by
    /// the caller).
    pub(super) async fn restore(&mut self, dir: &Path, allow_reboot: bool) -> Result<(), String> {
        let started = Instant::now();
        let manifest = Manifest::read(dir)?;
        manifest.check_driver(self.cfg.accel)?;
        let state = dir.join(STATE);
        if !state.is_file() {
            return Err(format!("{} is missing", state.display()));
        }
        let disk = manifest.disk.then(|| dir.join(DISK));
        if let Some(d) = disk.as_ref().filter(|d| !d.is_file()) {
            return Err(format!("{} is missing", d.display()));
        }
        self.prepare_disk(disk.as_deref()).await.map_err(text)?;
        let launch = self.command(allow_reboot, true).map_err(text)?;
        manifest.check_devices(&self.devices(&launch))?;
        self.log.machine(
            &self.name,
            &format!("restoring from snapshot {}", dir.display()),
        );
        self.spawn_qemu(launch).map_err(text)?;
        match tokio::time::timeout(RESTORE_LIMIT, self.restore_steps(&state, &manifest)).await {
            Err(_) => {
                return Err(format!(
                    "the restore did not finish within {} seconds",
                    RESTORE_LIMIT.as_secs()
                ))
            }
            Ok(Err(why)) if self.exits_within(Duration::from_secs(1)).await => {
                // Let the console readers take QEMU's last words (its reason).
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!(
                    "{why}; QEMU exited, its last lines:\n{}",
                    self.console.tail(3)
                ));
            }
            Ok(r) => r?,
        }
        self.restored_from = Some(dir.to_path_buf());
        self.log.machine(
            &self.name,
            &format!(
                "restored from {} in {:.2} seconds (saved {:.0} seconds ago)",
                dir.display(),
                started.elapsed().as_secs_f64(),
                now_epoch() - manifest.saved_at
            ),
        );
        Ok(())
    }

    async fn restore_steps(&mut self, state: &Path, manifest: &Manifest) -> Result<(), String> {
        let t = Instant::now();
        let mut steps = Vec::new();
        let mut lap = |what: &str| {
            steps.push(format!(
                "{what} {:.0} ms",
                t.elapsed().as_secs_f64() * 1000.0
            ))
        };
        let mut shell = self.accept_or_death().await?;
        let resumed = manifest
            .shell
            .clone()
            .map(|saved| shell.resume(saved))
            .is_some();
        let id = self.identity().await.map_err(text)?;
        manifest.check_identity(&id)?;
        lap("QEMU up");
        if manifest.mapped_ram {
            self.set_mapped_ram().await.map_err(text)?;
        }
        let uri = format!("file:{}", state.display());
        self.qmp_execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map_err(text)?;
        self.wait_migration().await.map_err(text)?;
        lap("state loaded");
        // The snapshot was taken of a stopped VM, so it stays paused.
        self.qmp_execute("cont", None).await.map_err(text)?;
        self.running().map_err(text)?.shell = Some(shell);
        if !resumed {
            // The bootstrap first, so that the clock is set right after
            // the host's time is taken.
            self.guest_step("the first command", "true")
                .await
                .map_err(text)?;
            lap("shell set up");
        }
        // One command: the guest's first ones after a restore are slow
        // (TCG translates its code afresh).
        let resume = resume_command().map_err(|e| format!("cannot read /dev/urandom: {e}"))?
            + &remount_command(&manifest.mounts);
        self.guest_step(
            "setting the clock, seeding the RNG and mounting the 9p shares",
            &resume,
        )
        .await
        .map_err(text)?;
        lap("clock, RNG and shares done");
        self.clear_qmp_events().await;
        self.log.machine_at(
            Level::Debug,
            &self.name,
            &format!("restore: {}", steps.join(", ")),
        );
        Ok(())
    }

    /// Whether QEMU has exited, or does within `limit`.
    async fn exits_within(&mut self, limit: Duration) -> bool {
        let Some(r) = self.running.as_ref() else {
            return true;
        };
        let mut exited = r.exited.clone();
        let exit = tokio::time::timeout(limit, exited.wait_for(|s| s.is_some())).await;
        exit.is_ok()
    }

    /// Accepts the new QEMU's shell and port connections, unless it exits
    /// first.
    async fn accept_or_death(&mut self) -> Result<Shell, String> {
        let shared = self.shared_dir();
        let r = self.running().map_err(text)?;
        let mut exited = r.exited.clone();
        let accepted = tokio::select! {
            s = r.accept_shell(&shared) => Some(s),
            _ = exited.wait_for(|s| s.is_some()) => None,
        };
        match accepted {
            Some(Ok(shell)) => Ok(shell),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!(
                "QEMU exited before it connected:\n{}",
                self.console.tail(10)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiesce_listing_gives_the_mounts() {
        let out = "mount shared /tmp/shared rw,relatime,access=client,msize=262144,trans=virtio\n\
                   mount xchg /tmp/xchg rw\n";
        let m = parse_mounts(out);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].tag, "shared");
        assert_eq!(m[0].dir, "/tmp/shared");
        assert!(m[0].options.contains("trans=virtio"));
        let cmd = remount_command(&m);
        assert!(cmd.contains("mount -t 9p -o"), "{cmd}");
        let parsed = std::process::Command::new("bash")
            .args(["-n", "-c", &cmd])
            .status()
            .unwrap();
        assert!(parsed.success());
    }

    #[test]
    fn the_remount_mounts_what_is_not_mounted_and_says_what_failed() {
        // `mount` and `mkdir` stand in for the real ones; the host's
        // /proc/mounts has no 9p share.
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("a b/shared");
        let m = Mount {
            tag: "shared".into(),
            dir: point.display().to_string(),
            options: "rw,msize=262144,trans=virtio".into(),
        };
        let run = |mount_status: u8| {
            let script = format!(
                "mount() {{ printf '<%s>' \"$@\"; echo; return {mount_status}; }}\n{}",
                remount_command(std::slice::from_ref(&m))
            );
            let out = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (code, out) = run(0);
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(
            out,
            format!(
                "<-t><9p><-o><rw,msize=262144,trans=virtio><shared><{}>\n",
                point.display()
            )
        );
        assert!(point.is_dir(), "the mount point was made");
        let (code, out) = run(32);
        assert_eq!(code, Some(3), "{out}");
        assert!(
            out.contains(&format!(
                "cannot mount the 9p share shared on {}",
                point.display()
            )),
            "{out}"
        );
    }

    #[test]
    fn the_guest_commands_are_bash_that_parses() {
        let odd = Mount {
            tag: "a tag's".into(),
            dir: "/tmp/a \"dir\"".into(),
            options: "rw,trans=virtio".into(),
        };
        for cmd in [
            QUIESCE.to_string(),
            resume_command().unwrap(),
            remount_command(&[odd]),
        ] {
            let parsed = std::process::Command::new("bash")
                .args(["-n", "-c", &cmd])
                .status()
                .unwrap();
            assert!(parsed.success(), "{cmd}");
        }
    }

    #[test]
    fn a_manifest_names_what_differs() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            guest_protocol: guest_protocol(),
            machine: "m".into(),
            qemu_version: "10.0.2".into(),
            accel: "tcg".into(),
            cpu_model: "max-x86_64-cpu".into(),
            cpus: 1,
            memory_mib: 256,
            devices: vec!["arg -m".into(), "arg 256".into()],
            devices_sha256: String::new(),
            mapped_ram: false,
            disk: false,
            mounts: vec![],
            saved_at: 0.0,
            shell: None,
        };
        // A manifest without the shell (as older drivers wrote it) reads,
        // and its restore bootstraps; one with it keeps all of it.
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("\"shell\""), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        let with = Manifest {
            shell: Some(SavedShell {
                key: "k-".into(),
                ctl: true,
                cmd: true,
                names: Some(vec!["cd".into(), "echo".into()]),
            }),
            ..m.clone()
        };
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), with);
        assert!(m.check_driver(super::super::qemu::Accel::Tcg).is_ok());
        let e = m.check_driver(super::super::qemu::Accel::Kvm).unwrap_err();
        assert!(e.contains("accelerator tcg, this run uses kvm"), "{e}");
        let e = m
            .check_devices(&["arg -m".into(), "arg 512".into()])
            .unwrap_err();
        assert!(e.contains("`arg 256`, this run `arg 512`"), "{e}");
        let id = Identity {
            qemu_version: "10.0.2".into(),
            accel: "tcg".into(),
            cpu_model: "host-x86_64-cpu".into(),
            cpus: 1,
            memory_mib: 256,
        };
        let e = m.check_identity(&id).unwrap_err();
        assert!(
            e.contains("CPU model max-x86_64-cpu, this QEMU has host-x86_64-cpu"),
            "{e}"
        );
        let mut old = m.clone();
        old.guest_protocol = "0-x".into();
        assert!(old
            .check_driver(super::super::qemu::Accel::Tcg)
            .unwrap_err()
            .contains("guest protocol 0-x"));
    }
}
