//! The process that runs the test script (docs/contracts.md, Contract 3):
//! `python3 -u -m nix_vmtest` with the client package on `PYTHONPATH`, one
//! end of a socketpair on its fd 3, and, running a script, its output
//! copied to the log.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::log::Log;
use crate::machine::qemu::find_in_path;

/// Why the script's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The socket pair the script talks over.
    #[error("cannot make the socket pair the test script talks over: {0}")]
    Socket(#[source] std::io::Error),
    /// Python itself.
    #[error("cannot start the Python test-script host ({python}): {source}. Set NIX_VMTEST_PYTHON to a python3.")]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
}

/// The directory of the Python client (`nix_vmtest` package):
/// `$NIX_VMTEST_PYTHONPATH`, else `share/nix-vmtest/python` next to the
/// installed binary, else this source tree's `python/`.
pub fn python_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NIX_VMTEST_PYTHONPATH") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            let installed = prefix.join("share/nix-vmtest/python");
            if installed.join("nix_vmtest").is_dir() {
                return installed;
            }
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
}

/// The Python interpreter: `$NIX_VMTEST_PYTHON`, `python3` in `$PATH`, `/usr/bin/python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NIX_VMTEST_PYTHON") {
        return PathBuf::from(p);
    }
    find_in_path("python3").unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// How to start the script's process.
#[derive(Debug, Clone, Default)]
pub struct ScriptCommand {
    /// The test script (`NIX_VMTEST_SCRIPT`); `None` with `interactive`
    /// starts the REPL.
    pub script: Option<PathBuf>,
    /// A person at the REPL: the process keeps the driver's stdin, stdout
    /// and stderr.
    pub interactive: bool,
    /// More environment (the VLANs' sockets, as nixpkgs' driver has them).
    pub env: Vec<(OsString, OsString)>,
}

/// The running script process and the tasks that copy its output. Dropping
/// it kills the process.
pub struct ScriptProcess {
    child: Child,
    output: Vec<JoinHandle<()>>,
}

impl ScriptProcess {
    /// Starts the process; returns it and the driver's end of its socket.
    /// The process dies with the thread that starts it (`PR_SET_PDEATHSIG`).
    pub fn start(
        cmd: &ScriptCommand,
        log: &Log,
    ) -> Result<(ScriptProcess, UnixStream), StartError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartError::Socket)?;
        let theirs: OwnedFd = theirs.into();
        let python = python();
        let mut command = Command::new(&python);
        command
            .args(["-u", "-m", "nix_vmtest"])
            .env("PYTHONPATH", python_path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NIX_VMTEST_FD", "3")
            .env(
                "NIX_VMTEST_INTERACTIVE",
                if cmd.interactive { "1" } else { "0" },
            )
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        if let Some(s) = &cmd.script {
            command.env("NIX_VMTEST_SCRIPT", s);
        }
        if !cmd.interactive {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let fd = theirs.as_raw_fd();
        // SAFETY: dup2 and prctl are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|source| StartError::Spawn { python, source })?;
        drop(theirs);
        let mut output = Vec::new();
        if let Some(out) = child.stdout.take() {
            output.push(copy_stdout(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            output.push(copy_lines(err, log.clone()));
        }
        let stream = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(StartError::Socket)?;
        Ok((ScriptProcess { child, output }, stream))
    }

    /// Waits for the process to exit and its output to be copied; returns
    /// its exit code (1 when a signal ended it).
    pub async fn wait(mut self) -> std::io::Result<i32> {
        let status = self.child.wait().await?;
        for task in self.output.drain(..) {
            let _ = task.await;
        }
        Ok(status.code().unwrap_or(1))
    }

    /// Kills the process and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The script's stdout (its subprocesses' output; `print()` comes over the
/// protocol, in order with the log) to the driver's stdout and log file.
fn copy_stdout<R>(mut r: R, log: Log) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            log.stdout(&buf[..n]);
        }
    })
}

/// The script's stderr, a log line for each line.
fn copy_lines<R>(r: R, log: Log) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.info(&line);
        }
    })
}
