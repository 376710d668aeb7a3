//! One virtual machine: a value that owns one QEMU process group, its
//! sockets (shell, monitor, QMP) and its state directory, and offers what the
//! test script calls (`execute`, the waits, lifecycle, monitor, files).
//!
//! Lifecycle follows nixpkgs' driver: the driver listens on the shell and
//! monitor sockets before QEMU starts; `start()` returns at once; the first
//! command waits for the backdoor's ready line.

pub mod dbus;
pub mod monitor;
pub mod qemu;
pub mod shell;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::ChildStdin;
use tokio::sync::{watch, Notify};

use crate::log::Log;
use crate::spec::MachineSpec;
use monitor::{Monitor, MonitorError, Qmp};
use qemu::Accel;
use shell::{Ending, Outcome, Request, Shell, ShellError, UnitWait, UntilMode};

/// What the driver puts before a test author's command, as nixpkgs does
/// (`set -e`, `-u` and `pipefail` for the whole command).
pub const USER_COMMAND_PREFIX: &str = "set -euo pipefail; ";

/// A test author's command as it is run: [`USER_COMMAND_PREFIX`] first.
pub fn user_command(command: &str) -> String {
    format!("{USER_COMMAND_PREFIX}{command}")
}

/// A command as its author wrote it, for messages: without the
/// [`USER_COMMAND_PREFIX`] the driver added (once: a command that starts
/// with it itself keeps its own).
pub fn as_written(command: &str) -> &str {
    command.strip_prefix(USER_COMMAND_PREFIX).unwrap_or(command)
}

/// How many console lines a failure report shows.
const TAIL_LINES: usize = 20;
/// How many console lines are kept for `get_console_log` and waits.
const KEEP_LINES: usize = 50_000;

/// What can go wrong with a machine; each says which machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("machine {name}: cannot start {command:?}: {source}")]
    Spawn {
        name: String,
        command: String,
        source: std::io::Error,
    },
    #[error("machine {name}: {what}: {source}")]
    Io {
        name: String,
        what: String,
        source: std::io::Error,
    },
    #[error("machine {name} stopped unexpectedly ({status}) {doing}.\nLast console lines of {name}:\n{tail}")]
    Died {
        name: String,
        status: String,
        doing: String,
        tail: String,
    },
    #[error("machine {name} is not running: call {name}.start() first")]
    NotRunning { name: String },
    #[error("machine {name}: {message}")]
    Shell { name: String, message: String },
    #[error("machine {name}: monitor: {source}")]
    Monitor { name: String, source: MonitorError },
    #[error("machine {name}: {what} timed out after {secs} seconds{detail}")]
    Timeout {
        name: String,
        what: String,
        secs: f64,
        detail: String,
    },
    #[error("machine {name}: {message}")]
    Failed { name: String, message: String },
    #[error("machine {name}: {message}")]
    Usage { name: String, message: String },
    #[error("machine {name}: the call was cancelled")]
    Cancelled { name: String },
}

/// The serial console: every line, for `wait_for_console_text` and reports.
#[derive(Default)]
pub struct Console {
    state: Mutex<ConsoleState>,
    changed: Notify,
}

#[derive(Default)]
struct ConsoleState {
    lines: VecDeque<String>,
    /// Number of lines ever received (the index of `lines[0]` is `total - lines.len()`).
    total: usize,
    /// Lines before this index were consumed by a `wait_for_console_text`.
    cursor: usize,
}

impl Console {
    fn push(&self, line: String) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines.push_back(line);
        s.total += 1;
        if s.lines.len() > KEEP_LINES {
            s.lines.pop_front();
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let skip = s.lines.len().saturating_sub(n);
        let lines: Vec<&str> = s.lines.iter().skip(skip).map(String::as_str).collect();
        if lines.is_empty() {
            "(the console printed nothing)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// Everything kept, joined.
    pub fn all(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first line not yet consumed that matches; consumes up to it.
    fn take_match(&self, re: &Regex) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = s.total - s.lines.len();
        let start = s.cursor.max(first);
        let found = (start..s.total).find(|&i| re.is_match(&s.lines[i - first]));
        found.map(|i| {
            s.cursor = i + 1;
            s.lines[i - first].clone()
        })
    }
}

/// Everything fixed about a machine before it starts.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub spec: MachineSpec,
    /// 1-based node number (name order).
    pub node: u32,
    /// Private directory for sockets, disk overlay and the shared dir.
    pub state_dir: PathBuf,
    /// Where screenshots and copied files go.
    pub out_dir: PathBuf,
    /// Every VLAN's switch socket.
    pub vlan_sockets: Vec<(u32, PathBuf)>,
    /// Every VLAN's VDE switch directory (`QEMU_VDE_SOCKET_<v>`).
    pub vde_dirs: Vec<(u32, PathBuf)>,
    /// `vmtest.*` kernel parameters for image nodes.
    pub network_params: String,
    pub accel: Accel,
    pub qemu: PathBuf,
    /// Keep the disk overlay between runs (`-K`).
    pub keep_state: bool,
    /// A shell command line to start QEMU with (`create_machine`), used
    /// instead of the spec's start script or image.
    pub start_command: Option<String>,
}

struct Running {
    pgid: u32,
    stdin: Option<ChildStdin>,
    exited: watch::Receiver<Option<ExitStatus>>,
    shell_listener: UnixListener,
    ctl_listener: UnixListener,
    cmd_listener: UnixListener,
    shell: Option<Shell>,
    /// The shell connection of a guest that is rebooting: QEMU keeps the
    /// chardev connected, and the new boot's backdoor announces itself on it.
    rebooting: Option<Shell>,
    monitor_listener: UnixListener,
    monitor: Option<Monitor>,
    qmp: Option<Qmp>,
    /// QMP is connected as soon as QEMU runs, so no event is missed.
    qmp_connecting: Option<tokio::sync::oneshot::Receiver<Result<Qmp, MonitorError>>>,
    /// The console readers (QEMU's stdout and stderr).
    readers: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        qemu::signal_group(self.pgid, nix::sys::signal::Signal::SIGKILL);
        for t in self.readers.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

/// One machine of the test.
pub struct Machine {
    pub name: String,
    cfg: MachineConfig,
    log: Log,
    console: Arc<Console>,
    running: Option<Running>,
    allow_reboot: bool,
    /// Counter for intermediate names in the shared dir.
    transfers: u32,
}

fn status_text(s: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("QEMU exited with status {c}"),
            (_, Some(sig)) => format!("QEMU was killed by signal {sig}"),
            _ => "QEMU exited".to_string(),
        },
        None => "QEMU closed the console".to_string(),
    }
}

/// `systemctl <q>`, or as `user` through `su`, as nixpkgs' driver runs it.
pub fn systemctl_command(q: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => {
            let q = q.replace('\'', "\\'");
            format!(
                "su -l {user} --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}'"
            )
        }
        None => format!("systemctl {q}"),
    }
}

impl Machine {
    /// A machine that is not started yet.
    pub fn new(cfg: MachineConfig, log: Log) -> Machine {
        Machine {
            name: cfg.spec.name.clone(),
            cfg,
            log,
            console: Arc::new(Console::default()),
            running: None,
            allow_reboot: false,
            transfers: 0,
        }
    }

    /// The machine's console lines.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Keeps (or not) the disk overlay between starts (`keep_machine_state`).
    pub fn set_keep_state(&mut self, keep: bool) {
        self.cfg.keep_state = keep;
    }

    /// The machine's configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    fn io_err(&self, what: &str) -> impl FnOnce(std::io::Error) -> MachineError + '_ {
        let what = what.to_string();
        move |source| MachineError::Io {
            name: self.name.clone(),
            what,
            source,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.cfg.state_dir.join(file)
    }

    /// The directory shared with the guest as 9p tag `shared` (`/tmp/shared`).
    pub fn shared_dir(&self) -> PathBuf {
        self.path("shared")
    }

    /// The machine's private directory: its start script's `TMPDIR` and
    /// working directory, its sockets and disk overlay (nixpkgs'
    /// `state_dir`).
    pub fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    /// The directory the state directory is in (nixpkgs' `tmp_dir`).
    pub fn tmp_dir(&self) -> &Path {
        self.cfg.state_dir.parent().unwrap_or(&self.cfg.state_dir)
    }

    /// Makes `dir` the state directory from the next start on, as a script's
    /// `machine.state_dir = other.state_dir` does in nixpkgs (an installer
    /// test boots the disk the installer wrote). Refused while QEMU runs:
    /// its sockets are in the current one.
    pub fn set_state_dir(&mut self, dir: PathBuf) -> Result<(), MachineError> {
        if self.is_running() {
            return Err(MachineError::Usage {
                name: self.name.clone(),
                message: format!(
                    "cannot move the state directory to {} while the machine runs: shut it down first",
                    dir.display()
                ),
            });
        }
        if self.running.is_some() {
            // QEMU exited without being waited for: its sockets go with
            // the old directory.
            self.stop_process();
        }
        let previous = std::mem::replace(&mut self.cfg.state_dir, dir);
        if let Err(source) = std::fs::create_dir_all(self.shared_dir()) {
            let dir = std::mem::replace(&mut self.cfg.state_dir, previous);
            return Err(MachineError::Io {
                name: self.name.clone(),
                what: format!("creating the state directory {}", dir.display()),
                source,
            });
        }
        self.log.machine(
            &self.name,
            &format!("state directory is now {}", self.cfg.state_dir.display()),
        );
        Ok(())
    }

    /// Whether QEMU has been started and has not exited.
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.exited.borrow().is_none())
    }

    /// The pid of the process the driver started (QEMU, or the start script
    /// that execs it), while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.running
            .as_ref()
            .filter(|_| self.is_running())
            .map(|r| r.pgid)
    }

    /// Whether the machine is running and its shell has answered.
    pub fn is_up(&self) -> bool {
        self.is_running() && self.running.as_ref().is_some_and(|r| r.shell.is_some())
    }

    /// Starts QEMU and returns at once.
    pub async fn start(&mut self, allow_reboot: bool) -> Result<(), MachineError> {
        if self.is_running() {
            return Ok(());
        }
        self.running = None;
        self.allow_reboot = allow_reboot;
        std::fs::create_dir_all(self.shared_dir())
            .map_err(self.io_err("creating its state directory"))?;
        let shell_path = self.path("shell");
        let monitor_path = self.path("monitor");
        let qmp_path = self.path("qmp");
        let ctl_path = self.path("ctl");
        let cmd_path = self.path("cmd");
        for p in [&shell_path, &monitor_path, &qmp_path, &ctl_path, &cmd_path] {
            let _ = std::fs::remove_file(p);
        }
        let shell_listener = UnixListener::bind(&shell_path)
            .map_err(self.io_err("listening on the shell socket"))?;
        let ctl_listener = UnixListener::bind(&ctl_path)
            .map_err(self.io_err("listening on the control socket"))?;
        let cmd_listener = UnixListener::bind(&cmd_path)
            .map_err(self.io_err("listening on the command socket"))?;
        let monitor_listener = UnixListener::bind(&monitor_path)
            .map_err(self.io_err("listening on the monitor socket"))?;
        let paths = qemu::Paths {
            monitor: &monitor_path,
            qmp: &qmp_path,
            shell: &shell_path,
            ctl: &ctl_path,
            cmd: &cmd_path,
        };
        let driver_args = qemu::driver_args(&paths, allow_reboot, self.cfg.accel);
        let disk = self.path(&format!("{}.qcow2", self.name));
        if !self.cfg.keep_state {
            let _ = std::fs::remove_file(&disk);
        }
        let mut env: Vec<(String, String)> = vec![
            ("TMPDIR".into(), self.cfg.state_dir.display().to_string()),
            ("USE_TMPDIR".into(), "1".into()),
            ("SHARED_DIR".into(), self.shared_dir().display().to_string()),
            ("NIX_DISK_IMAGE".into(), disk.display().to_string()),
        ];
        for (v, socket) in &self.cfg.vlan_sockets {
            env.push((
                format!("QEMU_VLAN_SOCKET_{v}"),
                socket.display().to_string(),
            ));
        }
        for (v, dir) in &self.cfg.vde_dirs {
            env.push((format!("QEMU_VDE_SOCKET_{v}"), dir.display().to_string()));
        }
        let argv: Vec<String> = if let Some(command) = &self.cfg.start_command {
            // Through a shell, as nixpkgs runs it; the process group makes
            // sure QEMU goes too when the shell did not `exec` it.
            let mut argv = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                format!("{command} \"$@\""),
                "sh".to_string(),
            ];
            argv.extend(driver_args);
            argv
        } else if let Some(script) = &self.cfg.spec.start_script {
            let mut argv = vec![script.display().to_string()];
            argv.extend(driver_args);
            argv
        } else if let Some(image) = &self.cfg.spec.image {
            let overlay = match &image.disk {
                Some(base) => {
                    if !disk.exists() {
                        self.make_overlay(base, &disk).await?;
                    }
                    Some(disk.as_path())
                }
                None => None,
            };
            let sockets: Vec<(u32, PathBuf)> = self
                .cfg
                .vlan_sockets
                .iter()
                .filter(|(v, _)| image.vlans.contains(v))
                .cloned()
                .collect();
            let shared_dir = self.shared_dir();
            let run = qemu::ImageRun {
                overlay,
                shared_dir: &shared_dir,
                vlan_sockets: &sockets,
                node: self.cfg.node,
                network_params: &self.cfg.network_params,
            };
            let mut argv = qemu::image_command(&self.cfg.qemu, image, &run, self.cfg.accel);
            argv.extend(driver_args);
            argv
        } else {
            return Err(MachineError::Usage {
                name: self.name.clone(),
                message: "has neither a start script nor an image".into(),
            });
        };
        self.log.machine(&self.name, "starting vm");
        let mut child = qemu::spawn(&argv, &env, &self.cfg.state_dir).map_err(|source| {
            MachineError::Spawn {
                name: self.name.clone(),
                command: argv[0].clone(),
                source,
            }
        })?;
        let pgid = child.id().unwrap_or(0);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(self.spawn_console_reader(out));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(self.spawn_console_reader(err));
        }
        let mut tasks = Vec::new();
        let stdin = child.stdin.take();
        let (tx, exited) = watch::channel(None);
        tasks.push(tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send(status);
            // Keep the sender until the receiver is gone so the status stays readable.
            tx.closed().await;
        }));
        let (qmp_tx, qmp_rx) = tokio::sync::oneshot::channel();
        let qmp_path = qmp_path.clone();
        tasks.push(tokio::spawn(async move {
            let _ = qmp_tx.send(Qmp::connect(&qmp_path, Duration::from_secs(60)).await);
        }));
        self.log
            .machine(&self.name, &format!("QEMU running (pid {pgid})"));
        self.running = Some(Running {
            pgid,
            stdin,
            exited,
            shell_listener,
            ctl_listener,
            cmd_listener,
            shell: None,
            rebooting: None,
            monitor_listener,
            monitor: None,
            qmp: None,
            qmp_connecting: Some(qmp_rx),
            readers,
            tasks,
        });
        Ok(())
    }

    async fn make_overlay(&self, base: &Path, disk: &Path) -> Result<(), MachineError> {
        let qemu_img = self
            .cfg
            .qemu
            .parent()
            .map(|d| d.join("qemu-img"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("qemu-img"));
        let out = tokio::process::Command::new(&qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(disk)
            .output()
            .await
            .map_err(|source| MachineError::Spawn {
                name: self.name.clone(),
                command: qemu_img.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "qemu-img could not make a disk overlay on {}: {}",
                    base.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    fn spawn_console_reader<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        reader: R,
    ) -> tokio::task::JoinHandle<()> {
        let console = self.console.clone();
        let log = self.log.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        log.console(&name, &line);
                        console.push(line);
                    }
                }
            }
        })
    }

    fn running(&mut self) -> Result<&mut Running, MachineError> {
        let name = self.name.clone();
        self.running
            .as_mut()
            .ok_or(MachineError::NotRunning { name })
    }

    /// Waits (up to a second) for QEMU's exit status and describes the death.
    async fn death(&mut self, doing: &str) -> MachineError {
        let mut status = None;
        if let Some(r) = self.running.as_mut() {
            let mut rx = r.exited.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|s| s.is_some())).await;
            status = *rx.borrow();
        }
        // Let the console readers drain what QEMU printed last.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(r) = self.running.as_mut() {
            r.shell = None;
        }
        MachineError::Died {
            name: self.name.clone(),
            status: status_text(status),
            doing: doing.to_string(),
            tail: self.console.tail(TAIL_LINES),
        }
    }

    /// Waits for the backdoor shell (the first command after `start()` does this).
    pub async fn connect(&mut self) -> Result<(), MachineError> {
        if self.running.as_ref().is_some_and(|r| r.shell.is_some()) {
            return Ok(());
        }
        if self.running.is_none() {
            self.start(false).await?;
        }
        self.log
            .machine(&self.name, "waiting for the VM to finish booting");
        let started = Instant::now();
        let r = self.running()?;
        let mut exited = r.exited.clone();
        let dead = async move {
            let _ = exited.wait_for(|s| s.is_some()).await;
        };
        let previous = r.rebooting.take();
        let attempt = async {
            let mut shell = match previous {
                Some(s) => s,
                None => {
                    let (stream, _) = r.shell_listener.accept().await.map_err(ShellError::Io)?;
                    let mut shell = Shell::new(stream);
                    // QEMU connects its chardevs together when it starts; a
                    // start script that drops the driver's ports still
                    // works, with commands on the console and the guest
                    // watching them itself.
                    let grace = tokio::time::Instant::now() + Duration::from_secs(1);
                    if let Ok(Ok((ctl, _))) =
                        tokio::time::timeout_at(grace, r.ctl_listener.accept()).await
                    {
                        shell.set_ctl(ctl);
                    }
                    if let Ok(Ok((cmd, _))) =
                        tokio::time::timeout_at(grace, r.cmd_listener.accept()).await
                    {
                        shell.set_cmd(cmd);
                    }
                    shell
                }
            };
            shell.wait_for_marker().await?;
            Ok::<Shell, ShellError>(shell)
        };
        let result = tokio::select! {
            s = attempt => Some(s),
            _ = dead => None,
        };
        match result {
            Some(Ok(shell)) => {
                self.running()?.shell = Some(shell);
                self.log.machine(
                    &self.name,
                    &format!(
                        "connected to guest root shell (in {:.2} seconds)",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(())
            }
            Some(Err(ShellError::Closed)) | None => Err(self
                .death("while booting, before its shell was ready")
                .await),
            Some(Err(e)) => Err(MachineError::Shell {
                name: self.name.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// The backdoor shell, once the guest has booted far enough to give it.
    async fn shell(&mut self) -> Result<&mut Shell, MachineError> {
        self.connect().await?;
        let name = self.name.clone();
        self.running()?
            .shell
            .as_mut()
            .ok_or(MachineError::NotRunning { name })
    }

    async fn run(&mut self, req: Request<'_>, doing: &str) -> Result<Outcome, MachineError> {
        let result = self.shell().await?.run(req).await;
        match result {
            Ok(o) if o.ending == Ending::Cancel => Err(MachineError::Cancelled {
                name: self.name.clone(),
            }),
            Ok(o) => Ok(o),
            Err(e) => Err(self.shell_failed(e, doing).await),
        }
    }

    /// The error for a failed shell call: the machine's death (with its
    /// console tail) if the connection went away.
    async fn shell_failed(&mut self, e: ShellError, doing: &str) -> MachineError {
        match e {
            ShellError::Closed | ShellError::Io(_) => self.death(doing).await,
            e => MachineError::Shell {
                name: self.name.clone(),
                message: e.to_string(),
            },
        }
    }

    /// Runs a command; returns its status and exact stdout. A timeout kills
    /// the command in the guest and gives status 124, as `timeout` would.
    pub async fn execute(
        &mut self,
        command: &str,
        timeout: Option<Duration>,
        capture: bool,
    ) -> Result<Outcome, MachineError> {
        let shown = as_written(command);
        let doing = format!("while running `{shown}`");
        let mut out = self
            .run(
                Request::Exec {
                    command,
                    timeout,
                    capture,
                },
                &doing,
            )
            .await?;
        if out.ending == Ending::Timeout {
            self.log.machine(
                &self.name,
                &format!(
                    "command `{shown}` timed out after {} seconds and was killed",
                    timeout.map_or(0.0, |t| t.as_secs_f64())
                ),
            );
            out.status = 124;
        }
        Ok(out)
    }

    /// The connected backdoor shell with bash itself reading the console
    /// ([`Shell::raw_mode`]: a cancelled call settled, the serve loop
    /// ended), for a caller that writes bash to it with [`Shell::write_raw`]
    /// and reads what comes back with [`Shell::read_raw`] (the benchmark's
    /// nixpkgs framing). The next command sets the driver's framing up
    /// again.
    pub async fn raw_shell(&mut self) -> Result<&mut Shell, MachineError> {
        let name = self.name.clone();
        let shell = self.shell().await?;
        match shell.raw_mode().await {
            Ok(()) => Ok(shell),
            Err(e) => Err(MachineError::Shell {
                name,
                message: e.to_string(),
            }),
        }
    }

    /// Runs `command` in the guest until the condition holds; the guest
    /// loops (50 ms apart), so success is noticed at once.
    pub async fn wait_until(
        &mut self,
        what: &str,
        command: &str,
        mode: UntilMode,
        timeout: Option<Duration>,
    ) -> Result<Outcome, MachineError> {
        let doing = format!("while waiting for {what}");
        let out = self
            .run(
                Request::Until {
                    command,
                    timeout,
                    mode,
                },
                &doing,
            )
            .await?;
        if out.ending == Ending::Timeout {
            let last = String::from_utf8_lossy(&out.output);
            let last = last.trim();
            return Err(MachineError::Timeout {
                name: self.name.clone(),
                what: what.to_string(),
                secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                detail: format!(
                    " (last try exited with status {}{})",
                    out.status,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(", output: {last}")
                    }
                ),
            });
        }
        if mode == UntilMode::Settled && out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: String::from_utf8_lossy(&out.output).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Waits until `unit` is active; fails at once if it failed, or is
    /// inactive with no job pending (nixpkgs' semantics).
    pub async fn wait_for_unit(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(), MachineError> {
        let what = format!("unit {unit} to become active");
        let started = Instant::now();
        let timeout = match self.unit_wait_bus(unit, user, timeout, &what).await? {
            UnitWait::Active => return Ok(()),
            UnitWait::Hopeless(message) => {
                return Err(MachineError::Failed {
                    name: self.name.clone(),
                    message,
                })
            }
            UnitWait::TimedOut(state) => {
                return Err(MachineError::Timeout {
                    name: self.name.clone(),
                    what,
                    secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                    detail: format!(" (its last state was \"{state}\")"),
                })
            }
            UnitWait::Unavailable(why) => {
                let show = if user.is_some() {
                    "systemctl --user show"
                } else {
                    "systemctl show"
                };
                self.log
                    .machine(&self.name, &format!("{why}; polling `{show}` instead"));
                timeout.map(|t| t.saturating_sub(started.elapsed()))
            }
        };
        let q = shell::shell_quote(unit);
        let show = systemctl_command(&format!("show --property=ActiveState --value -- {q}"), user);
        let jobs = systemctl_command("list-jobs --full 2>&1", user);
        let u = unit.replace('"', "\\\"");
        let check = format!(
            "s=$({show}); case $s in \
             active) exit 0 ;; \
             failed) echo \"unit \\\"{u}\\\" reached state \\\"failed\\\"\"; exit 2 ;; \
             inactive) if {jobs} | grep -q 'No jobs'; then s=$({show}); \
               if [ \"$s\" = inactive ]; then echo \"unit \\\"{u}\\\" is inactive and there are no pending jobs\"; exit 3; fi; fi; exit 1 ;; \
             *) exit 1 ;; esac"
        );
        self.wait_until(&what, &check, UntilMode::Settled, timeout)
            .await?;
        Ok(())
    }

    /// A unit wait (of the system's manager, or of `user`'s) that listens
    /// to systemd over D-Bus ([`Shell::unit_wait`]).
    async fn unit_wait_bus(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<UnitWait, MachineError> {
        let result = self.shell().await?.unit_wait(unit, user, timeout).await;
        match result {
            Ok(w) => Ok(w),
            Err(e) => Err(self
                .shell_failed(e, &format!("while waiting for {what}"))
                .await),
        }
    }

    /// `systemctl show <unit>` as a map.
    pub async fn get_unit_info(
        &mut self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<HashMap<String, String>, MachineError> {
        let cmd = systemctl_command(
            &format!("--no-pager show {}", shell::shell_quote(unit)),
            user,
        );
        let out = self.execute(&cmd, None, true).await?;
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "retrieving systemctl info for unit \"{unit}\" failed with exit code {}",
                    out.status
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.output)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Waits until a console line matches `regex` (lines already printed
    /// count, each line is matched by at most one wait).
    pub async fn wait_for_console_text(
        &mut self,
        regex: &str,
        timeout: Option<Duration>,
    ) -> Result<String, MachineError> {
        let re = Regex::new(regex).map_err(|e| MachineError::Usage {
            name: self.name.clone(),
            message: format!("wait_for_console_text: bad regex {regex:?}: {e}"),
        })?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let console = self.console.clone();
        loop {
            let changed = console.changed.notified();
            if let Some(line) = console.take_match(&re) {
                return Ok(line);
            }
            if !self.is_running() && self.running.is_some() {
                return Err(self
                    .death(&format!("while waiting for console text /{regex}/"))
                    .await);
            }
            let wait = tokio::time::sleep(Duration::from_millis(500));
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = wait => {}
                        _ = tokio::time::sleep_until(d) => {
                            return Err(MachineError::Timeout {
                                name: self.name.clone(),
                                what: format!("waiting for console text /{regex}/"),
                                secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                                detail: String::new(),
                            });
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = changed => {}
                        _ = wait => {}
                    }
                }
            }
        }
    }

    /// Waits until QEMU has exited.
    pub async fn wait_for_shutdown(&mut self) -> Result<(), MachineError> {
        let Some(r) = self.running.as_mut() else {
            return Ok(());
        };
        let mut exited = r.exited.clone();
        let _ = exited.wait_for(|s| s.is_some()).await;
        self.log.machine(&self.name, "QEMU exited");
        self.stop_process();
        Ok(())
    }

    /// Powers the guest off and waits for QEMU to exit.
    pub async fn shutdown(&mut self) -> Result<(), MachineError> {
        if !self.is_running() {
            return Ok(());
        }
        self.connect().await?;
        if let Some(shell) = self.running()?.shell.as_mut() {
            // No answer is expected: the shell goes away with the guest.
            let _ = shell.send_line("poweroff\n").await;
        }
        self.wait_for_shutdown().await
    }

    /// Makes QEMU quit at once, as a power cut.
    pub async fn crash(&mut self) -> Result<(), MachineError> {
        if !self.is_running() {
            return Ok(());
        }
        self.log
            .machine(&self.name, "simulating a crash (QEMU quits)");
        let _ = self.send_monitor_command("quit").await;
        self.wait_for_shutdown().await
    }

    /// Presses Ctrl+Alt+Delete; the next command waits for the new boot.
    pub async fn reboot(&mut self) -> Result<(), MachineError> {
        self.connect().await?;
        self.send_monitor_command("sendkey ctrl-alt-delete").await?;
        self.disconnect();
        Ok(())
    }

    /// Takes the guest's shell for gone, as nixpkgs' `connected = False`
    /// does: the next command (or `connect()`) waits until a new boot's
    /// backdoor announces itself on the same connection (after a reboot,
    /// a kexec or a switch_root).
    pub fn disconnect(&mut self) {
        if let Some(r) = self.running.as_mut() {
            if let Some(mut shell) = r.shell.take() {
                shell.reset();
                r.rebooting = Some(shell);
            }
        }
    }

    fn stop_process(&mut self) {
        // Dropping `Running` kills the process group and its reader tasks.
        self.running = None;
        for f in ["shell", "monitor", "qmp", "ctl", "cmd"] {
            let _ = std::fs::remove_file(self.path(f));
        }
    }

    /// Kills QEMU (if running) and forgets it; used at the end of a run.
    pub fn release(&mut self) {
        if self.running.is_some() {
            self.stop_process();
        }
    }

    /// Like [`Machine::release`], but first lets the console readers log
    /// what QEMU printed last (for up to a second), a line that never got
    /// its newline included: dropping them would lose it.
    pub async fn release_logged(&mut self) {
        if let Some(r) = self.running.as_mut() {
            qemu::signal_group(r.pgid, nix::sys::signal::Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            for reader in r.readers.iter_mut() {
                let _ = tokio::time::timeout_at(deadline, reader).await;
            }
        }
        self.release();
    }

    async fn monitor(&mut self) -> Result<&mut Monitor, MachineError> {
        let name = self.name.clone();
        if self.running()?.monitor.is_none() {
            let r = self.running()?;
            let mut exited = r.exited.clone();
            let accepted = tokio::select! {
                a = r.monitor_listener.accept() => Some(a),
                _ = exited.wait_for(|s| s.is_some()) => None,
            };
            let stream = match accepted {
                Some(Ok((s, _))) => s,
                Some(Err(e)) => {
                    return Err(MachineError::Io {
                        name,
                        what: "accepting the monitor connection".into(),
                        source: e,
                    })
                }
                None => return Err(self.death("before its monitor connected").await),
            };
            let m = Monitor::new(stream)
                .await
                .map_err(|source| MachineError::Monitor { name, source })?;
            self.running()?.monitor = Some(m);
        }
        let name = self.name.clone();
        self.running()?
            .monitor
            .as_mut()
            .ok_or(MachineError::NotRunning { name })
    }

    /// Sends a command to QEMU's human monitor and returns its answer.
    pub async fn send_monitor_command(&mut self, command: &str) -> Result<String, MachineError> {
        let name = self.name.clone();
        let m = self.monitor().await?;
        m.command(command)
            .await
            .map_err(|source| MachineError::Monitor { name, source })
    }

    async fn qmp(&mut self) -> Result<&mut Qmp, MachineError> {
        let name = self.name.clone();
        let r = self.running()?;
        if let Some(rx) = r.qmp_connecting.take() {
            let q = rx
                .await
                .map_err(|_| MachineError::NotRunning { name: name.clone() })?
                .map_err(|source| MachineError::Monitor {
                    name: name.clone(),
                    source,
                })?;
            r.qmp = Some(q);
        }
        r.qmp.as_mut().ok_or(MachineError::NotRunning { name })
    }

    /// Runs a QMP command.
    pub async fn qmp_execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, MachineError> {
        let name = self.name.clone();
        self.qmp()
            .await?
            .execute(command, arguments)
            .await
            .map_err(|source| MachineError::Monitor { name, source })
    }

    /// The next QMP event.
    pub async fn next_qmp_event(
        &mut self,
        timeout: Duration,
    ) -> Result<serde_json::Value, MachineError> {
        let name = self.name.clone();
        let q = self.qmp().await?;
        q.next_event(timeout).await.map_err(|source| match source {
            MonitorError::NoEvent(t) => MachineError::Timeout {
                name,
                what: "waiting for a QMP event".into(),
                secs: t.as_secs_f64(),
                detail: String::new(),
            },
            source => MachineError::Monitor { name, source },
        })
    }

    /// Writes characters to the serial console's input.
    pub async fn send_console(&mut self, chars: &str) -> Result<(), MachineError> {
        let name = self.name.clone();
        let stdin = self
            .running()?
            .stdin
            .as_mut()
            .ok_or(MachineError::NotRunning { name: name.clone() })?;
        stdin
            .write_all(chars.as_bytes())
            .await
            .map_err(|source| MachineError::Io {
                name,
                what: "writing to the serial console".into(),
                source,
            })
    }

    /// Saves the screen as PNG; a name without `/` goes to the output directory.
    pub async fn screenshot(&mut self, filename: &str) -> Result<PathBuf, MachineError> {
        let mut name = filename.to_string();
        if !name.contains('.') {
            name.push_str(".png");
        }
        let path = if name.contains('/') {
            PathBuf::from(name)
        } else {
            self.cfg.out_dir.join(name)
        };
        let answer = self
            .send_monitor_command(&format!("screendump {} -f png", path.display()))
            .await?;
        if !path.exists() {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "screenshot {} was not written: {} (does the machine have a display device, e.g. -vga std?)",
                    path.display(),
                    answer.trim()
                ),
            });
        }
        Ok(path)
    }

    /// Copies a host file or directory into the guest (through the shared dir).
    pub async fn copy_from_host(
        &mut self,
        source: &Path,
        target: &str,
    ) -> Result<(), MachineError> {
        if !source.exists() {
            return Err(MachineError::Usage {
                name: self.name.clone(),
                message: format!(
                    "copy_from_host: {} does not exist on the host",
                    source.display()
                ),
            });
        }
        self.transfers += 1;
        let inter = format!("xfer-{}", self.transfers);
        let host_dir = self.shared_dir().join(&inter);
        std::fs::create_dir_all(&host_dir)
            .map_err(self.io_err("preparing the shared directory"))?;
        let base = source
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        copy_tree(source, &host_dir.join(&base))
            .map_err(self.io_err("copying into the shared directory"))?;
        let t = shell::shell_quote(target);
        let cmd = format!(
            "mkdir -p \"$(dirname {t})\" && cp -r {} {t}",
            shell::shell_quote(&format!("/tmp/shared/{inter}/{base}"))
        );
        let out = self.execute(&cmd, None, true).await?;
        let _ = std::fs::remove_dir_all(&host_dir);
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "copy_from_host: copying to {target} failed (exit code {}); is /tmp/shared (9p tag `shared`) mounted in the guest?",
                    out.status
                ),
            });
        }
        Ok(())
    }

    /// Copies a guest file or directory into `out_dir/target_dir`.
    pub async fn copy_from_machine(
        &mut self,
        source: &str,
        target_dir: &str,
    ) -> Result<PathBuf, MachineError> {
        self.transfers += 1;
        let inter = format!("xfer-{}", self.transfers);
        let cmd = format!(
            "mkdir -p /tmp/shared/{inter} && cp -r {} /tmp/shared/{inter}/",
            shell::shell_quote(source)
        );
        let out = self.execute(&cmd, None, true).await?;
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "copy_from_machine: copying {source} failed (exit code {}); does it exist, and is /tmp/shared mounted?",
                    out.status
                ),
            });
        }
        let base = Path::new(source)
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        let dest_dir = self.cfg.out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir).map_err(self.io_err("creating the target directory"))?;
        let from = self.shared_dir().join(&inter).join(&base);
        let dest = dest_dir.join(&base);
        copy_tree(&from, &dest).map_err(self.io_err("copying out of the shared directory"))?;
        let _ = std::fs::remove_dir_all(self.shared_dir().join(&inter));
        Ok(dest)
    }

    /// Types the terminal's input into the serial console until EOF
    /// (Ctrl-D); the console's output reaches the terminal through the log.
    pub async fn console_interact(&mut self) -> Result<(), MachineError> {
        use tokio::io::AsyncReadExt;
        self.log.machine(
            &self.name,
            "interactive serial console: input goes to the console, Ctrl-D ends it",
        );
        self.log.set_serial_stdout(true);
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = stdin
                .read(&mut buf)
                .await
                .map_err(self.io_err("reading the terminal"))?;
            if n == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            self.send_console(&text).await?;
        }
    }

    /// Runs an interactive shell on the terminal until EOF (Ctrl-D).
    pub async fn shell_interact(&mut self) -> Result<(), MachineError> {
        use tokio::io::AsyncReadExt;
        self.connect().await?;
        let name = self.name.clone();
        self.log.machine(
            &name,
            "interactive shell: type commands, Ctrl-D ends it (no prompt is shown)",
        );
        let shell = self
            .running()?
            .shell
            .as_mut()
            .ok_or(MachineError::NotRunning { name: name.clone() })?;
        let mut stdin = tokio::io::stdin();
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        let result: Result<(), ShellError> = async {
            shell.raw_mode().await?;
            loop {
                tokio::select! {
                    n = stdin.read(&mut buf) => {
                        let n = n?;
                        if n == 0 { break; }
                        shell.write_raw(&buf[..n]).await?;
                    }
                    out = shell.read_raw() => {
                        stdout.write_all(&out?).await?;
                        stdout.flush().await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        shell.invalidate();
        result.map_err(|e| MachineError::Shell {
            name,
            message: e.to_string(),
        })
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        std::os::unix::fs::symlink(target, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_machines_state_dir_moves_with_its_shared_dir() {
        let tmp = std::env::temp_dir().join(format!("nix-vmtest-unit-{}", std::process::id()));
        let cfg = MachineConfig {
            spec: MachineSpec {
                name: "target".into(),
                start_script: Some("/nonexistent/run-target-vm".into()),
                image: None,
            },
            node: 1,
            state_dir: tmp.join("vm-state-target"),
            out_dir: tmp.join("out"),
            vlan_sockets: vec![],
            vde_dirs: vec![],
            network_params: String::new(),
            accel: Accel::Tcg,
            qemu: "qemu-system-x86_64".into(),
            keep_state: false,
            start_command: None,
        };
        let mut m = Machine::new(cfg, Log::quiet());
        assert_eq!(m.tmp_dir(), tmp.as_path());
        assert_eq!(m.shared_dir(), tmp.join("vm-state-target/shared"));
        m.set_state_dir(tmp.join("vm-state-installer")).unwrap();
        assert_eq!(m.state_dir(), tmp.join("vm-state-installer").as_path());
        assert_eq!(m.tmp_dir(), tmp.as_path());
        assert!(m.shared_dir().is_dir());
        assert!(!m.is_running() && !m.is_up() && m.qemu_pid().is_none());
        // Nothing to forget: a no-op.
        m.disconnect();
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn messages_name_a_command_as_its_author_wrote_it() {
        let sent = user_command("test -e /x");
        assert_eq!(sent, "set -euo pipefail; test -e /x");
        assert_eq!(as_written(&sent), "test -e /x");
        assert_eq!(as_written("sync"), "sync");
        let own = user_command("set -euo pipefail; false");
        assert_eq!(as_written(&own), "set -euo pipefail; false");
    }

    #[test]
    fn console_waits_consume_lines_in_order() {
        let c = Console::default();
        c.push("booting".into());
        c.push("login: ready".into());
        c.push("login: again".into());
        let re = Regex::new("login").unwrap();
        assert_eq!(c.take_match(&re).as_deref(), Some("login: ready"));
        assert_eq!(c.take_match(&re).as_deref(), Some("login: again"));
        assert_eq!(c.take_match(&re), None);
        assert!(c.tail(2).ends_with("login: again"));
    }

    #[test]
    fn user_systemctl_goes_through_su_like_nixpkgs() {
        assert_eq!(
            systemctl_command("is-active x", None),
            "systemctl is-active x"
        );
        assert!(systemctl_command("start 'a'", Some("alice"))
            .starts_with("su -l alice --shell /bin/sh -c $'XDG_RUNTIME_DIR="));
    }
}
