//! The serial console: QEMU's stdout and stderr kept line by line (for
//! `get_console_log`, failure reports and `wait_for_console_text`), and
//! its input (`send_console`, `console_interact`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use regex::Regex;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::{Machine, MachineError};

/// How many console lines are kept for `get_console_log` and waits.
const KEEP_LINES: usize = 50_000;

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
    pub(super) fn push(&self, line: String) {
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

impl Machine {
    /// Waits until a console line matches `regex` (lines already printed
    /// count, each line is matched by at most one wait).
    pub async fn wait_for_console_text(
        &mut self,
        regex: &str,
        timeout: Option<Duration>,
    ) -> Result<String, MachineError> {
        let re = Regex::new(regex).map_err(|source| MachineError::BadRegex {
            name: self.name.clone(),
            regex: regex.to_string(),
            source,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
