//! One test run: the VLAN switches, the machines, the Python script host,
//! the global timeout, signals, and the cleanup that leaves nothing behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::{Level, Log};
use crate::machine::qemu::{self, Accel, AccelChoice};
use crate::machine::{Machine, MachineConfig};
use crate::script::python::{ScriptCommand, ScriptProcess, StartError};
use crate::spec::{mac_address, MachineSpec, SpecError, TestSpec};
use crate::vlan::Vlan;

/// Why a run could not be set up or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("cannot create the driver's state directory under {dir}: {source} (set TMPDIR to a writable directory)")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the VLAN {vlan} switch: {source}")]
    Vlan {
        vlan: u32,
        source: crate::vlan::VlanError,
    },
    #[error(transparent)]
    ScriptHost(#[from] StartError),
    #[error("cannot wait for the test script's process: {0}")]
    ScriptWait(#[source] std::io::Error),
    #[error("cannot read the test script {path}: {source}")]
    Script {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {what} {dir}: {source}")]
    CreateDir {
        what: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a snapshot: {0}")]
    Snapshot(#[source] crate::machine::MachineError),
    #[error("cannot write the JUnit XML {path}: {source}")]
    Junit {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why `create_machine` was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateMachineError {
    #[error("create_machine: {0}; pass name=...")]
    NoName(#[source] SpecError),
    #[error("create_machine: a machine named {0:?} exists already")]
    Exists(String),
    #[error("create_machine: {0}")]
    Setup(#[source] DriverError),
}

/// Everything a run needs to know (the command line, resolved).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec: TestSpec,
    pub test_script: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub junit_xml: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub global_timeout: Duration,
    pub interactive: bool,
    pub keep_state: bool,
    pub accel: AccelChoice,
    /// A directory of snapshots (`<dir>/<machine>`, as `--save-snapshots`
    /// makes them) to restore machines from; a node's own `snapshot`
    /// comes first.
    pub snapshots: Option<PathBuf>,
}

/// The owner of every resource of a run. Dropping it kills every QEMU,
/// stops the switches and removes the state directory.
pub struct Driver {
    pub log: Log,
    pub machines: Vec<Machine>,
    pub vlans: BTreeMap<u32, Vlan>,
    pub spec: TestSpec,
    pub opts: RunOptions,
    pub accel: Accel,
    state_dir: PathBuf,
    next_node: u32,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for m in &mut self.machines {
            m.release();
        }
        self.vlans.clear();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Makes a private (0700) temporary directory `<base>/<prefix>XXXXXX`.
pub fn private_temp_dir(base: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let template = base.join(format!("{prefix}XXXXXX"));
    let mut bytes = template.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated, writable template buffer.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// The file in a state directory that names the driver owning it:
/// `<pid> <process start time in clock ticks since boot>`.
const OWNER_FILE: &str = "owner";

/// A process's start time (field 22 of `/proc/<pid>/stat`), which tells a
/// live driver from a later process that got its pid; `None` if it is gone.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; after its ')' they are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// Writes [`OWNER_FILE`] into `dir`, naming this process.
fn claim(dir: &Path) -> std::io::Result<()> {
    let me = std::process::id();
    let start = process_start_time(me).unwrap_or(0);
    std::fs::write(dir.join(OWNER_FILE), format!("{me} {start}\n"))
}

/// Removes the state directories (`nix-vmtest.*` under `base`) of drivers
/// that are gone: a SIGKILLed driver cannot clean up after itself (its QEMU
/// processes die with it), so the next run does. A directory without an
/// owner file, or whose owner still runs, is left alone. Returns what was
/// removed.
pub fn sweep_stale_state(base: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(base) else {
        return removed;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir
            || !entry
                .file_name()
                .to_string_lossy()
                .starts_with("nix-vmtest.")
        {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .is_some_and(|s| start == 0 || s == start);
        if !alive && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// The directory temporary files go to: `$TMPDIR` or `/tmp`.
pub fn temp_base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

impl Driver {
    /// Creates the state directory and the VLAN switches; machines are
    /// created but not started.
    pub async fn new(opts: RunOptions, log: Log) -> Result<Driver, DriverError> {
        let spec = opts.spec.clone().normalize()?;
        let base = temp_base();
        for dir in sweep_stale_state(&base) {
            log.at(
                Level::Warning,
                &format!(
                    "removed {}, left behind by a driver that was killed",
                    dir.display()
                ),
            );
        }
        let state_dir = private_temp_dir(&base, "nix-vmtest.")
            .and_then(|dir| claim(&dir).map(|()| dir))
            .map_err(|source| DriverError::StateDir {
                dir: base.clone(),
                source,
            })?;
        let decision = qemu::choose_accel(opts.accel);
        log.at(
            Level::Info,
            &format!("accelerator: {} ({})", decision.accel, decision.reason),
        );
        let mut driver = Driver {
            log,
            machines: Vec::new(),
            vlans: BTreeMap::new(),
            spec: spec.clone(),
            opts,
            accel: decision.accel,
            state_dir,
            next_node: spec.machines.len() as u32 + 1,
        };
        for &v in &spec.vlans {
            let socket = driver.state_dir.join(format!("vlan{v}.sock"));
            // nixpkgs' driver names the vde_switch directory so too.
            let vde_dir = driver.state_dir.join(format!("vde{v}.ctl"));
            let vlan = Vlan::start_with_vde(v, socket, vde_dir)
                .await
                .map_err(|source| DriverError::Vlan { vlan: v, source })?;
            driver
                .log
                .at(Level::Debug, &format!("vlan {v}: switch ready"));
            driver.vlans.insert(v, vlan);
        }
        std::fs::create_dir_all(&driver.opts.out_dir).map_err(|source| DriverError::CreateDir {
            what: "the output directory",
            dir: driver.opts.out_dir.clone(),
            source,
        })?;
        for (i, m) in spec.machines.iter().enumerate() {
            if m.is_peer() {
                continue;
            }
            let params = spec.network_kernel_params(&m.name);
            driver.add_machine(m.clone(), i as u32 + 1, params, None)?;
        }
        Ok(driver)
    }

    fn add_machine(
        &mut self,
        spec: MachineSpec,
        node: u32,
        network_params: String,
        start_command: Option<String>,
    ) -> Result<&mut Machine, DriverError> {
        let machine_dir = if self.opts.keep_state {
            // As nixpkgs: state kept across runs in $TMPDIR/vm-state-<name>.
            temp_base().join(format!("vm-state-{}", spec.name))
        } else {
            self.state_dir.join(&spec.name)
        };
        let cfg = MachineConfig {
            node,
            state_dir: machine_dir,
            out_dir: self.opts.out_dir.clone(),
            vlan_sockets: self
                .vlans
                .iter()
                .map(|(v, s)| (*v, s.socket_path().to_path_buf()))
                .collect(),
            vde_dirs: self
                .vlans
                .iter()
                .filter_map(|(v, s)| Some((*v, s.vde_dir()?.to_path_buf())))
                .collect(),
            network_params,
            accel: self.accel,
            qemu: qemu::find_qemu(),
            keep_state: self.opts.keep_state,
            start_command,
            snapshot: self.snapshot_of(&spec),
            spec,
        };
        let machine = Machine::new(cfg, self.log.clone());
        // As nixpkgs: the state and shared directories exist before the
        // machine starts, for a script to put files in.
        let shared = machine.shared_dir();
        std::fs::create_dir_all(&shared).map_err(|source| DriverError::CreateDir {
            what: "the shared directory",
            dir: shared,
            source,
        })?;
        self.machines.push(machine);
        let last = self.machines.len() - 1;
        Ok(&mut self.machines[last])
    }

    /// The snapshot a machine restores from: its node's, or the one in
    /// `--snapshots` (if there is one there; the log says if not).
    fn snapshot_of(&self, spec: &MachineSpec) -> Option<PathBuf> {
        if let Some(dir) = &spec.snapshot {
            return Some(dir.clone());
        }
        let dir = self.opts.snapshots.as_ref()?.join(&spec.name);
        if dir.join(crate::machine::snapshot::MANIFEST).is_file() {
            return Some(dir);
        }
        self.log.machine(
            &spec.name,
            &format!(
                "no snapshot in {} (it has no {}): the machine boots",
                dir.display(),
                crate::machine::snapshot::MANIFEST
            ),
        );
        None
    }

    /// Boots every machine, waits until each has booted (its shell
    /// answers, and systemd's boot jobs are done), and saves each into
    /// `<dir>/<machine>` (`--save-snapshots`); QEMU is stopped after each
    /// save. Snapshots the run was given are not used: a snapshot is made
    /// of a booted machine.
    pub async fn save_snapshots(&mut self, dir: &Path) -> Result<(), DriverError> {
        for m in &mut self.machines {
            m.set_snapshot(None);
            m.start(false).await.map_err(DriverError::Snapshot)?;
        }
        for m in &mut self.machines {
            m.settle_boot().await.map_err(DriverError::Snapshot)?;
            m.save_snapshot(&dir.join(&m.name), false)
                .await
                .map_err(DriverError::Snapshot)?;
        }
        self.shutdown_all().await;
        Ok(())
    }

    /// The run's private state directory (removed with the driver).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Adds a machine at run time (`create_machine`).
    pub fn create_machine(
        &mut self,
        start_command: &str,
        name: Option<&str>,
        keep_state: bool,
    ) -> Result<String, CreateMachineError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let first = start_command.split_whitespace().next().unwrap_or("");
                crate::spec::name_from_start_script(Path::new(first))
                    .map_err(CreateMachineError::NoName)?
            }
        };
        if self.machine_index(&name).is_some() {
            return Err(CreateMachineError::Exists(name));
        }
        let node = self.next_node;
        self.next_node += 1;
        let spec = MachineSpec {
            name: name.clone(),
            start_script: None,
            image: None,
            snapshot: None,
            peer: None,
        };
        let keep = self.opts.keep_state || keep_state;
        let m = self
            .add_machine(spec, node, String::new(), Some(start_command.to_string()))
            .map_err(CreateMachineError::Setup)?;
        m.set_keep_state(keep);
        Ok(name)
    }

    /// The index of the machine called `name`.
    pub fn machine_index(&self, name: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.name == name)
    }

    /// Sets a machine's links on every VLAN up or down (`block`/`unblock`).
    pub fn set_links(&self, index: usize, up: bool) {
        let m = &self.machines[index];
        let node = m.config().node;
        for (v, vlan) in &self.vlans {
            vlan.set_link(mac_address(*v, node), up);
        }
        self.log.machine(
            &m.name,
            if up {
                "links up (unblocked)"
            } else {
                "links down (blocked)"
            },
        );
    }

    /// Runs the script (or the REPL) to its end; returns the exit code.
    pub async fn run(&mut self) -> Result<i32, DriverError> {
        let script = match &self.opts.test_script {
            Some(p) => {
                std::fs::metadata(p).map_err(|source| DriverError::Script {
                    path: p.clone(),
                    source,
                })?;
                Some(p.clone())
            }
            None if self.opts.interactive => None,
            None => {
                return Err(DriverError::Script {
                    path: PathBuf::from("(none)"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no test script given: pass it as the last argument or set $testScript",
                    ),
                })
            }
        };
        if let Some(path) = &script {
            if let Ok(text) = std::fs::read_to_string(path) {
                self.start_early(&text).await;
            }
        }
        // As nixpkgs' driver, whose own environment has them: a script may
        // start QEMU itself (e.g. `create_machine` with its own command).
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        for (v, vlan) in &self.vlans {
            env.push((
                format!("QEMU_VLAN_SOCKET_{v}").into(),
                vlan.socket_path().into(),
            ));
            if let Some(dir) = vlan.vde_dir() {
                env.push((format!("QEMU_VDE_SOCKET_{v}").into(), dir.into()));
            }
        }
        let command = ScriptCommand {
            script: script.clone(),
            interactive: self.opts.interactive,
            env,
        };
        let (process, stream) = ScriptProcess::start(&command, &self.log)?;
        let started = Instant::now();
        let timeout = self.opts.global_timeout;
        let interactive = self.opts.interactive;
        // As nixpkgs: the global timeout runs against the script, not
        // against a person at the REPL.
        if !interactive {
            self.log.at(
                Level::Info,
                &format!(
                    "Test will time out and terminate in {} seconds",
                    timeout.as_secs()
                ),
            );
        }
        let deadline = async {
            if interactive {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(timeout).await;
        };
        let outcome = {
            let serve = crate::script::serve(self, stream);
            tokio::select! {
                r = serve => Ok(r),
                _ = deadline => Err(format!("global timeout of {} seconds reached: ending the test", timeout.as_secs())),
                s = stop_signal(interactive) => Err(format!("received {s}: stopping every machine")),
            }
        };
        let code = match outcome {
            Ok(()) => process.wait().await.map_err(DriverError::ScriptWait)?,
            Err(why) => {
                self.log.info(&why);
                process.kill().await;
                1
            }
        };
        self.log.end_all(if code == 0 {
            None
        } else {
            Some("the test script failed")
        });
        let elapsed = started.elapsed();
        // As nixpkgs: only a script that ran to its end "finished", and
        // before the machines are stopped.
        if code == 0 {
            self.log.at(
                Level::Info,
                &format!("test script finished in {:.2}s", elapsed.as_secs_f64()),
            );
        }
        self.shutdown_all().await;
        if let Some(junit) = &self.opts.junit_xml {
            let name = script
                .as_ref()
                .and_then(|s| s.file_stem())
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "test".into());
            let failure = (code != 0).then_some("the test script failed");
            self.log
                .write_junit(junit, &name, elapsed, failure)
                .map_err(|source| DriverError::Junit {
                    path: junit.clone(),
                    source,
                })?;
        }
        Ok(code)
    }

    /// Starts, while Python is still starting up, the machines the script's
    /// first statement would start anyway: all of them for `start_all()`,
    /// one for `<machine>.<command>(...)`. Booting overlaps the script host's
    /// start-up; what the script observes does not change (`start` of a
    /// running machine does nothing, as in nixpkgs).
    async fn start_early(&mut self, script: &str) {
        let targets = crate::script::early_starts(
            script,
            &self
                .machines
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>(),
        );
        for i in targets {
            if let Err(e) = self.machines[i].start(false).await {
                // The script's own start reports it properly.
                self.log.info(&format!("early start failed: {e}"));
            }
        }
    }

    /// Kills every machine that is still running, and logs what their
    /// consoles printed last.
    pub async fn shutdown_all(&mut self) {
        for m in &mut self.machines {
            if m.is_running() {
                self.log.machine_at(Level::Info, &m.name, "killing QEMU");
            }
            m.release_logged().await;
        }
    }
}

/// What the script's server reaches of the run.
impl crate::script::Host for Driver {
    type CreateError = CreateMachineError;

    fn log(&self) -> &Log {
        &self.log
    }

    fn out_dir(&self) -> &Path {
        &self.opts.out_dir
    }

    fn interactive(&self) -> bool {
        self.opts.interactive
    }

    fn machines(&self) -> &[Machine] {
        &self.machines
    }

    fn machines_mut(&mut self) -> &mut [Machine] {
        &mut self.machines
    }

    fn vlans(&self) -> &BTreeMap<u32, Vlan> {
        &self.vlans
    }

    fn set_links(&self, index: usize, up: bool) {
        Driver::set_links(self, index, up);
    }

    fn create_machine(
        &mut self,
        start_command: &str,
        name: Option<&str>,
        keep_state: bool,
    ) -> Result<String, CreateMachineError> {
        Driver::create_machine(self, start_command, name, keep_state)
    }
}

/// Resolves when the driver is asked to stop (SIGTERM, SIGHUP, and SIGINT
/// unless the REPL owns Ctrl-C); names the signal.
async fn stop_signal(interactive: bool) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = hup.recv() => return "SIGHUP",
            _ = int.recv() => if !interactive { return "SIGINT" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_dirs_of_dead_owners_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let make = |name: &str, owner: Option<String>| {
            let d = base.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("vlan1.sock"), "").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
            d
        };
        // A pid above pid_max (4194304 at most) is never a live process.
        let dead = make("nix-vmtest.dead01", Some("4194305 12345\n".into()));
        let me = std::process::id();
        let mine = format!("{me} {}\n", process_start_time(me).unwrap());
        let live = make("nix-vmtest.live01", Some(mine));
        // Our pid, but another start time: a pid reused after the owner died.
        let reused = make("nix-vmtest.reuse1", Some(format!("{me} 1\n")));
        let unowned = make("nix-vmtest.unown1", None);
        let other = make("something-else", Some("4194305 1\n".into()));
        let removed = sweep_stale_state(base.path());
        assert_eq!(
            removed.iter().collect::<std::collections::BTreeSet<_>>(),
            [&dead, &reused].into_iter().collect()
        );
        assert!(!dead.exists() && !reused.exists());
        assert!(live.exists() && unowned.exists() && other.exists());
    }
}
