//! One virtual machine: a value that owns one QEMU process group, its
//! sockets (shell, monitor, QMP) and its state directory, and offers what the
//! test script calls (`execute`, the waits, lifecycle, monitor, files).
//!
//! Lifecycle follows nixpkgs' driver: the driver listens on the shell and
//! monitor sockets before QEMU starts; `start()` returns at once; the first
//! command waits for the backdoor's ready line. A machine with a snapshot
//! is restored by its first `start()`, which returns once its shell
//! answers (`snapshot`).
//!
//! The machine's methods are grouped by concept: `lifecycle` (starting and
//! stopping QEMU), `commands` (the backdoor shell), `console` (the serial
//! console), `files` (host ⇄ guest copies, screenshots), `monitor`
//! (QEMU's monitor and QMP, with the protocol clients), and `snapshot`
//! (saving a booted machine, restoring it).

pub mod dbus;
pub mod monitor;
pub mod qemu;
pub mod shell;
pub mod snapshot;

mod commands;
mod console;
mod files;
mod lifecycle;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::Log;
use crate::spec::MachineSpec;
use monitor::MonitorError;
use qemu::Accel;
use shell::ShellError;

pub use commands::{systemctl_command, unit_check};
pub use console::Console;
use lifecycle::Running;

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

/// What can go wrong with a machine; each says which machine. An error
/// with a cause keeps it as its `source()` and also says it in its text:
/// the driver reports an error by its text alone, not by its chain.
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
    #[error("machine {name}: {source}")]
    Shell { name: String, source: ShellError },
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
    /// A wait whose condition cannot come to hold (a unit that failed, or
    /// is inactive with no job pending), or a `get_unit_info` whose
    /// `systemctl` failed: nixpkgs' message as it is, which the script gets
    /// as nixpkgs raises it, `RequestedAssertionFailed`.
    #[error("{message}")]
    Hopeless { name: String, message: String },
    #[error("machine {name}: {message}")]
    Usage { name: String, message: String },
    #[error("machine {name}: wait_for_console_text: bad regex {regex:?}: {source}")]
    BadRegex {
        name: String,
        regex: String,
        source: regex::Error,
    },
    #[error("machine {name}: the call was cancelled")]
    Cancelled { name: String },
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
    /// A snapshot directory to restore the machine from on its first start
    /// (see `snapshot`).
    pub snapshot: Option<PathBuf>,
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
    /// Whether the first start (the one that may restore) is behind.
    started_once: bool,
    /// The snapshot this run of QEMU was restored from.
    restored_from: Option<PathBuf>,
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
            started_once: false,
            restored_from: None,
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
                snapshot: None,
                peer: None,
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
            snapshot: None,
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
}
