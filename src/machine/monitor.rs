//! QEMU's two control channels: the human monitor (`-monitor unix:...`, QEMU
//! connects to the driver's socket, as nixpkgs has it) and QMP (`-qmp
//! unix:...,server=on,wait=off`, the driver connects), whose events are kept
//! for `wait_for_qmp_event`.
//!
//! And a machine's use of them: its monitor is accepted when QEMU first
//! connects, its QMP connection is the one `start()` began.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Machine, MachineError};

/// What can go wrong on a monitor channel.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("QEMU closed its monitor (the machine is not running)")]
    Closed,
    #[error("monitor I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP command {command} failed: {message}")]
    Qmp { command: String, message: String },
    #[error("QMP answered something that is not JSON: {0}")]
    Json(String),
    #[error("no QMP event within {0:?}")]
    NoEvent(Duration),
}

const PROMPT: &[u8] = b"(qemu) ";

/// The human monitor.
pub struct Monitor {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Monitor {
    /// Wraps QEMU's connection and reads its banner up to the first prompt.
    pub async fn new(stream: UnixStream) -> Result<Monitor, MonitorError> {
        let mut m = Monitor {
            stream,
            buf: Vec::new(),
        };
        m.read_prompt().await?;
        Ok(m)
    }

    async fn read_prompt(&mut self) -> Result<Vec<u8>, MonitorError> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf, PROMPT) {
                let out = self.buf[..i].to_vec();
                self.buf.drain(..i + PROMPT.len());
                return Ok(out);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(MonitorError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and returns QEMU's answer (without the echoed
    /// command and the prompt).
    pub async fn command(&mut self, command: &str) -> Result<String, MonitorError> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        let raw = self.read_prompt().await?;
        let text = String::from_utf8_lossy(&raw).replace('\r', "");
        // QEMU's readline echoes the command line (with terminal escapes).
        let answer = match text.split_once('\n') {
            Some((first, rest)) if strip_escapes(first).ends_with(command) => rest.to_string(),
            _ => text,
        };
        Ok(answer)
    }
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

type Waiter = oneshot::Sender<Result<Value, MonitorError>>;

/// A QMP connection; a task reads answers and keeps events.
pub struct Qmp {
    writer: OwnedWriteHalf,
    waiters: mpsc::UnboundedSender<Waiter>,
    events: Arc<Mutex<VecDeque<Value>>>,
    event_added: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket (retrying while QEMU creates it) and
    /// negotiates capabilities.
    pub async fn connect(path: &Path, within: Duration) -> Result<Qmp, MonitorError> {
        let deadline = tokio::time::Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut greeting = String::new();
        if lines.read_line(&mut greeting).await? == 0 {
            return Err(MonitorError::Closed);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let event_added = Arc::new(Notify::new());
        let task = tokio::spawn(read_loop(lines, rx, events.clone(), event_added.clone()));
        let mut qmp = Qmp {
            writer,
            waiters: tx,
            events,
            event_added,
            task,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one QMP command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, MonitorError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.send(tx).map_err(|_| MonitorError::Closed)?;
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let answer = rx.await.map_err(|_| MonitorError::Closed)??;
        if let Some(err) = answer.get("error") {
            return Err(MonitorError::Qmp {
                command: command.to_string(),
                message: err["desc"].as_str().unwrap_or("unknown error").to_string(),
            });
        }
        Ok(answer.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Forgets the events not yet taken (those the driver itself caused,
    /// saving or restoring a snapshot).
    pub fn clear_events(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The next QMP event not yet taken, waiting up to `timeout`.
    pub async fn next_event(&self, timeout: Duration) -> Result<Value, MonitorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.event_added.notified();
            if let Some(e) = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return Ok(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(MonitorError::NoEvent(timeout));
            }
        }
    }
}

async fn read_loop(
    mut lines: BufReader<OwnedReadHalf>,
    mut waiters: mpsc::UnboundedReceiver<Waiter>,
    events: Arc<Mutex<VecDeque<Value>>>,
    event_added: Arc<Notify>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let value: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                if let Ok(w) = waiters.try_recv() {
                    let _ = w.send(Err(MonitorError::Json(line.clone())));
                }
                continue;
            }
        };
        if value.get("event").is_some() {
            events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(value);
            event_added.notify_waiters();
        } else if let Ok(w) = waiters.try_recv() {
            let _ = w.send(Ok(value));
        }
    }
    // QEMU went away: fail everyone still waiting.
    while let Ok(w) = waiters.try_recv() {
        let _ = w.send(Err(MonitorError::Closed));
    }
    event_added.notify_waiters();
}

impl Machine {
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

    pub(super) async fn qmp(&mut self) -> Result<&mut Qmp, MachineError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped_from_the_echo() {
        assert_eq!(strip_escapes("\x1b[Dinfo status"), "info status");
    }
}
