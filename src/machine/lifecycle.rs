//! Starting and stopping QEMU: the process group and its sockets, the
//! console readers, the disk overlay, and every way a run ends (power off,
//! crash, reboot, death, release at the end of the test).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixListener;
use tokio::process::ChildStdin;
use tokio::sync::watch;

use super::monitor::{Monitor, MonitorError, Qmp};
use super::qemu;
use super::shell::{Shell, ShellError};
use super::{Machine, MachineError};

/// How many console lines a failure report shows.
const TAIL_LINES: usize = 20;

/// A started QEMU: its process group, its sockets and the connections
/// made on them.
pub(super) struct Running {
    pub(super) pgid: u32,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) exited: watch::Receiver<Option<ExitStatus>>,
    pub(super) shell_listener: UnixListener,
    pub(super) ctl_listener: UnixListener,
    pub(super) cmd_listener: UnixListener,
    pub(super) shell: Option<Shell>,
    /// The shell connection of a guest that is rebooting: QEMU keeps the
    /// chardev connected, and the new boot's backdoor announces itself on it.
    pub(super) rebooting: Option<Shell>,
    pub(super) monitor_listener: UnixListener,
    pub(super) monitor: Option<Monitor>,
    pub(super) qmp: Option<Qmp>,
    /// QMP is connected as soon as QEMU runs, so no event is missed.
    pub(super) qmp_connecting: Option<tokio::sync::oneshot::Receiver<Result<Qmp, MonitorError>>>,
    /// The console readers (QEMU's stdout and stderr).
    readers: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What the start command gives the guest, as a snapshot's manifest
    /// records it ([`Machine::devices`]).
    pub(super) devices: Vec<String>,
}

/// A start command: QEMU's (or the start script's) arguments and the
/// environment it gets.
pub(super) struct Launch {
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<(String, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        qemu::signal_group(self.pgid, nix::sys::signal::Signal::SIGKILL);
        for t in self.readers.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

impl Running {
    /// Accepts QEMU's connections of the shell chardev and of the two
    /// ports. QEMU connects its chardevs together when it starts; a start
    /// script that drops the driver's ports still works, with commands on
    /// the console and the guest watching them itself.
    /// `shared` is the host directory shared with the guest (9p tag
    /// `shared`): big outputs come through it.
    pub(super) async fn accept_shell(&mut self, shared: &Path) -> Result<Shell, ShellError> {
        let (stream, _) = self.shell_listener.accept().await?;
        let mut shell = Shell::new(stream);
        shell.set_shared_dir(shared);
        let grace = tokio::time::Instant::now() + Duration::from_secs(1);
        if let Ok(Ok((ctl, _))) = tokio::time::timeout_at(grace, self.ctl_listener.accept()).await {
            shell.set_ctl(ctl);
        }
        if let Ok(Ok((cmd, _))) = tokio::time::timeout_at(grace, self.cmd_listener.accept()).await {
            shell.set_cmd(cmd);
        }
        Ok(shell)
    }
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

impl Machine {
    /// Starts QEMU and returns at once; or, for a machine with a snapshot
    /// (its first start in a run), restores it and returns once its shell
    /// answers. A snapshot that cannot be used is logged, and the machine
    /// boots.
    pub async fn start(&mut self, allow_reboot: bool) -> Result<(), MachineError> {
        if self.is_running() {
            return Ok(());
        }
        self.running = None;
        self.allow_reboot = allow_reboot;
        self.restored_from = None;
        if let Some(dir) = self.snapshot_to_restore() {
            // Boxed: a restore runs commands, which may start a machine.
            match Box::pin(self.restore(&dir, allow_reboot)).await {
                Ok(()) => return Ok(()),
                Err(why) => {
                    self.stop_process();
                    self.log.machine(
                        &self.name,
                        &format!(
                            "not restoring from snapshot {}: {why}; booting instead",
                            dir.display()
                        ),
                    );
                }
            }
        }
        self.prepare_disk(None).await?;
        let launch = self.command(allow_reboot, false)?;
        self.log.machine(&self.name, "starting vm");
        self.spawn_qemu(launch)
    }

    /// Creates the state directory and the disk overlay the start command
    /// uses (`NIX_DISK_IMAGE`): a fresh one unless the state is kept, over
    /// `base` (a snapshot's disk) if given, else over an image node's disk.
    /// A start script makes its own where none is given.
    pub(super) async fn prepare_disk(&mut self, base: Option<&Path>) -> Result<(), MachineError> {
        std::fs::create_dir_all(self.shared_dir())
            .map_err(self.io_err("creating its state directory"))?;
        let disk = self.disk_path();
        if !self.cfg.keep_state || base.is_some() {
            let _ = std::fs::remove_file(&disk);
        }
        let base = match base {
            Some(b) => Some(b.to_path_buf()),
            None if self.cfg.start_command.is_none() && self.cfg.spec.start_script.is_none() => {
                self.cfg.spec.image.as_ref().and_then(|i| i.disk.clone())
            }
            None => None,
        };
        if let Some(base) = base {
            if !disk.exists() {
                self.make_overlay(&base, &disk).await?;
            }
        }
        Ok(())
    }

    /// The disk overlay (`NIX_DISK_IMAGE`): `<state>/<name>.qcow2`.
    pub(super) fn disk_path(&self) -> PathBuf {
        self.path(&format!("{}.qcow2", self.name))
    }

    /// The start command and its environment, with the driver's options
    /// (and `-incoming defer` for a restore).
    pub(super) fn command(
        &self,
        allow_reboot: bool,
        incoming: bool,
    ) -> Result<Launch, MachineError> {
        let paths = qemu::Paths {
            monitor: &self.path("monitor"),
            qmp: &self.path("qmp"),
            shell: &self.path("shell"),
            ctl: &self.path("ctl"),
            cmd: &self.path("cmd"),
        };
        let mut driver_args = qemu::driver_args(&paths, allow_reboot, self.cfg.accel);
        if incoming {
            driver_args.extend(["-incoming".to_string(), "defer".to_string()]);
        }
        let disk = self.disk_path();
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
            let overlay = image.disk.as_ref().map(|_| disk.as_path());
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
        Ok(Launch { argv, env })
    }

    /// Listens on the machine's sockets and spawns the start command.
    pub(super) fn spawn_qemu(&mut self, launch: Launch) -> Result<(), MachineError> {
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
        let devices = self.devices(&launch);
        let Launch { argv, env } = launch;
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
            devices,
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

    pub(super) fn running(&mut self) -> Result<&mut Running, MachineError> {
        let name = self.name.clone();
        self.running
            .as_mut()
            .ok_or(MachineError::NotRunning { name })
    }

    /// Waits (up to a second) for QEMU's exit status and describes the death.
    pub(super) async fn death(&mut self, doing: &str) -> MachineError {
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
            let _ = shell.send_unanswered("poweroff\n").await;
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

    pub(super) fn stop_process(&mut self) {
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
}
