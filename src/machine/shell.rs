//! The backdoor shell: NixOS test instrumentation gives a root `bash` on the
//! virtio console `hvc0`, reached through QEMU's `-chardev socket,id=shell`.
//! The guest announces it with `Spawning backdoor root shell...`.
//!
//! On top of that plain shell (nothing else is assumed of the guest) the
//! driver defines a few bash functions once per boot ([`BOOTSTRAP`]) and then
//! frames every command as
//!
//! ```text
//! host  → guest: __vmt_cmd='<command>'; __vmt_exec <nonce> <timeout ms|-> <capture> <isolate>
//!            or: __vmt_cmd='<command>'; __vmt_until <nonce> <timeout ms|-> <succeed|fail|settled> <isolate>
//! guest → host : <nonce> <status> <done|timeout|cancel> <0|1>\n
//!                then, if 1: chunks of stdout, each `<≤128 KiB raw>\n<nonce> c\n`,
//!                the host answering `more.` or `done.` after each
//! ```
//!
//! The guest reads acknowledgements (and `cancel.`) with `read -d .`: a
//! delimiter other than newline makes bash read byte by byte, so it never
//! swallows the next command line that the host may already have sent (with
//! the newline delimiter bash reads a tty in blocks and keeps the rest).
//!
//! The command runs in a forked subshell with stdin `/dev/null` and stdout
//! in a fresh file; the shell learns it ended when that subshell closes its
//! end of a FIFO. The command runs with the FIFO closed, and one that may
//! leave asynchronous subshells (`<isolate>` = 1, see [`may_background`])
//! runs one subshell deeper, since those would inherit bash's saved copy of
//! it. So a detached child that keeps stdout open cannot hang the call
//! (nixpkgs #144875), and no `timeout`/`base64` processes are started per
//! command. Output is sent raw (the console is in raw mode) and delimited by a
//! random 128-bit nonce, so it is exact and binary-safe.
//!
//! Why chunks with acknowledgements: QEMU's `virtconsole` drops console
//! data when the host socket's buffer is full (QEMU's `flush_buf` does not
//! throttle console ports), so a host that is slow to read for a moment would
//! silently lose output. No more than one chunk is ever in flight, and a
//! chunk fits the socket buffer, so nothing is lost however late the driver
//! reads.
//!
//! Timeouts are enforced in the guest (the command's process tree is
//! killed); waits (`wait_until_succeeds` and friends) loop in the guest with
//! a 50 ms pause and no host round trip per try.

use std::time::Duration;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The size of one output chunk (must match `bs=` in [`BOOTSTRAP`]).
const CHUNK: usize = 131072;

/// The line a NixOS backdoor prints when its shell is ready.
pub const MARKER: &[u8] = b"Spawning backdoor root shell...";

/// The bash functions the driver defines in the guest's backdoor shell.
pub const BOOTSTRAP: &str = r#"
__vmt_init() {
  local d
  __vmt_dir=
  for d in /run /dev/shm /tmp; do
    [ -d "$d" ] && [ -w "$d" ] || continue
    __vmt_dir=$(mktemp -d "$d/.nix-vmtest.XXXXXX" 2>/dev/null) && break
  done
  [ -n "$__vmt_dir" ] && mkfifo "$__vmt_dir/done" "$__vmt_dir/tick" || return 1
  exec {__vmt_tick}<>"$__vmt_dir/tick"
  __vmt_n=0
}
__vmt_kill() {
  local p kids
  for p in "$@"; do
    kill -STOP "$p" 2>/dev/null
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null)
    __vmt_kill $kids
    kill -KILL "$p" 2>/dev/null
  done
}
__vmt_cancelled() {
  local line
  read -t 0 -u 0 && read -r -d . -u 0 line && [[ $line == cancel ]]
}
__vmt_now() {
  __vmt_t=${EPOCHREALTIME//[!0-9]/}
}
__vmt_try() {
  local pid r line kills=0
  # Free the last output now (a detached child may still hold it open).
  [[ $__vmt_out == "$__vmt_dir"/* ]] && : > "$__vmt_out"
  if (( ++__vmt_n % 200 == 0 )); then rm -f "$__vmt_dir"/o.*; fi
  __vmt_out=/dev/null
  [[ $2 == 1 ]] && __vmt_out=$__vmt_dir/o.$__vmt_n
  if [[ $3 == 1 ]]; then
    # A command that may leave background subshells runs in an inner
    # subshell that never holds the FIFO's write end (bash keeps a saved
    # copy of a redirected fd, and forked subshells inherit it).
    { exec 3>"$__vmt_dir/done"; ( exec 3>&-; eval "$__vmt_cmd" ); } </dev/null >"$__vmt_out" &
  else
    { exec 3>"$__vmt_dir/done"; eval "$__vmt_cmd" 3>&-; } </dev/null >"$__vmt_out" &
  fi
  pid=$!
  exec {r}<"$__vmt_dir/done"
  __vmt_why=
  while :; do
    read -t 0.2 -u "$r" line
    (( $? <= 128 )) && break
    if [[ -n $__vmt_why ]]; then
      # Killed, but something that escaped the kill still holds the FIFO:
      # give up on it after a second.
      (( ++kills > 5 )) && break
      __vmt_kill "$pid"
      continue
    fi
    __vmt_now
    if [[ -n $1 ]] && (( __vmt_t >= $1 )); then
      __vmt_why=timeout; __vmt_kill "$pid"
    elif __vmt_cancelled; then
      __vmt_why=cancel; __vmt_kill "$pid"
    fi
  done
  exec {r}<&-
  { wait "$pid"; } 2>/dev/null
  __vmt_st=$?
}
__vmt_reply() {
  if [ -s "$__vmt_out" ]; then
    printf '%s %s %s 1\n' "$1" "$__vmt_st" "${__vmt_why:-done}"
    __vmt_send "$1"
  else
    printf '%s %s %s 0\n' "$1" "$__vmt_st" "${__vmt_why:-done}"
  fi
}
__vmt_send() {
  local i=0 ack
  while :; do
    dd if="$__vmt_out" bs=131072 skip=$i count=1 2>/dev/null
    printf '\n%s c\n' "$1"
    read -r -d . -u 0 ack || break
    [[ $ack == more ]] || break
    i=$((i + 1))
  done
}
__vmt_deadline() {
  __vmt_dl=
  [[ $1 == - ]] && return
  __vmt_now
  __vmt_dl=$(( __vmt_t + $1 * 1000 ))
}
__vmt_exec() {
  __vmt_deadline "$2"
  __vmt_try "$__vmt_dl" "$3" "$4"
  __vmt_reply "$1"
}
__vmt_until() {
  __vmt_deadline "$2"
  while :; do
    __vmt_try "$__vmt_dl" 1 "$4"
    [[ -n $__vmt_why ]] && break
    case $3 in
      succeed) (( __vmt_st == 0 )) && break ;;
      fail) (( __vmt_st != 0 )) && break ;;
      *) (( __vmt_st != 1 )) && break ;;
    esac
    __vmt_now
    if [[ -n $__vmt_dl ]] && (( __vmt_t >= __vmt_dl )); then __vmt_why=timeout; break; fi
    read -t 0.05 -u "$__vmt_tick"
    if __vmt_cancelled; then __vmt_why=cancel; break; fi
  done
  __vmt_reply "$1"
}
"#;

/// What can go wrong talking to a backdoor shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("the guest closed its backdoor shell (QEMU stopped or the console went away)")]
    Closed,
    #[error("reading or writing the backdoor shell failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest's shell did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the guest's shell could not set up the driver's helpers (it needs bash with mktemp and mkfifo): {0}")]
    Bootstrap(String),
    #[error("the guest's shell answered in an unexpected form: {0}")]
    Protocol(String),
}

/// How a framed command ended in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself (or, for a wait, the condition was met).
    Done,
    /// Its time ran out and the guest killed it.
    Timeout,
    /// The host cancelled it (Ctrl-C in the interactive driver).
    Cancel,
}

/// The result of one framed command.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit status (of the last try, for waits).
    pub status: i32,
    /// Exactly what the command wrote on stdout.
    pub output: Vec<u8>,
    pub ending: Ending,
}

/// What to run in the guest.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Run once.
    Exec {
        command: &'a str,
        timeout: Option<Duration>,
        capture: bool,
    },
    /// Run until the condition holds: `succeed` (status 0), `fail` (status
    /// not 0) or `settled` (status not 1: 0 is success, anything else an
    /// error whose message is the output).
    Until {
        command: &'a str,
        timeout: Option<Duration>,
        mode: UntilMode,
    },
}

/// When a guest-side wait stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntilMode {
    Succeed,
    Fail,
    Settled,
}

/// One connected backdoor shell.
pub struct Shell {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Set once [`BOOTSTRAP`] has run in this boot of the guest.
    bootstrapped: bool,
    /// A request whose answer was not read (its caller was cancelled).
    pending: Option<String>,
}

/// Single-quotes a string for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether a command may leave asynchronous subshells behind (`&` other
/// than in `&&`, `>&`, `<&`, `&>`; `coproc`; process substitution): those
/// run one subshell deeper in the guest, which costs a fork; everything
/// else runs in one.
pub fn may_background(command: &str) -> bool {
    command.contains("coproc")
        || command.contains(">(")
        || command.contains("<(")
        || command
            .replace("&&", "")
            .replace(">&", "")
            .replace("<&", "")
            .replace("&>", "")
            .contains('&')
}

fn nonce() -> String {
    format!("vmt{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn timeout_arg(t: Option<Duration>) -> String {
    match t {
        Some(t) => t.as_millis().to_string(),
        None => "-".to_string(),
    }
}

impl Shell {
    /// Wraps the accepted connection of QEMU's `shell` chardev.
    pub fn new(stream: UnixStream) -> Shell {
        Shell {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            bootstrapped: false,
            pending: None,
        }
    }

    async fn fill(&mut self) -> Result<(), ShellError> {
        let len = self.buf.len();
        if self.buf.capacity() - len < 64 * 1024 {
            self.buf.reserve(256 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ShellError::Closed);
        }
        Ok(())
    }

    /// Reads until `needle` has arrived; returns the bytes before it and
    /// drops it and them from the buffer.
    async fn read_until(&mut self, needle: &[u8]) -> Result<Vec<u8>, ShellError> {
        let finder = memmem::Finder::new(needle);
        let mut from = 0;
        loop {
            if let Some(i) = finder.find(&self.buf[from..]) {
                let end = from + i;
                let before = self.buf[..end].to_vec();
                self.buf.drain(..end + needle.len());
                return Ok(before);
            }
            from = self.buf.len().saturating_sub(needle.len());
            self.fill().await?;
        }
    }

    /// Waits for the backdoor's ready line; what came before it is returned
    /// (normally nothing). Called after every boot.
    pub async fn wait_for_marker(&mut self) -> Result<Vec<u8>, ShellError> {
        let before = self.read_until(MARKER).await?;
        // The rest of the marker line.
        let _ = self.read_until(b"\n").await?;
        self.bootstrapped = false;
        self.pending = None;
        Ok(before)
    }

    /// Forgets the shell's state after the guest rebooted.
    pub fn reset(&mut self) {
        self.bootstrapped = false;
        self.pending = None;
        self.buf.clear();
    }

    async fn bootstrap(&mut self) -> Result<(), ShellError> {
        let n = nonce();
        let script = format!(
            "{BOOTSTRAP}\nif __vmt_init; then printf '%s ok\\n' {n}; else printf '%s failed\\n' {n}; fi\n"
        );
        self.stream.write_all(script.as_bytes()).await?;
        let before = self.read_until(format!("{n} ").as_bytes()).await?;
        let status = self.read_until(b"\n").await?;
        if status != b"ok" {
            return Err(ShellError::Bootstrap(
                String::from_utf8_lossy(&before).trim().to_string(),
            ));
        }
        self.bootstrapped = true;
        Ok(())
    }

    /// Reads a framed answer for `nonce`.
    async fn read_answer(&mut self, nonce: &str) -> Result<Outcome, ShellError> {
        // Anything before the header (nothing, normally) is skipped.
        self.read_until(format!("{nonce} ").as_bytes()).await?;
        let head = self.read_until(b"\n").await?;
        let head = String::from_utf8_lossy(&head).to_string();
        let bad = || ShellError::Protocol(head.clone());
        let mut parts = head.split(' ');
        let status = parts
            .next()
            .and_then(|s| s.parse::<i32>().ok())
            .ok_or_else(bad)?;
        let ending = match parts.next() {
            Some("done") => Ending::Done,
            Some("timeout") => Ending::Timeout,
            Some("cancel") => Ending::Cancel,
            _ => return Err(bad()),
        };
        let mut output = Vec::new();
        if parts.next() == Some("1") {
            let delimiter = format!("\n{nonce} c\n");
            loop {
                let chunk = self.read_until(delimiter.as_bytes()).await?;
                let more = chunk.len() == CHUNK;
                output.extend_from_slice(&chunk);
                self.stream
                    .write_all(if more { b"more." } else { b"done." })
                    .await?;
                if !more {
                    break;
                }
            }
        }
        self.pending = None;
        Ok(Outcome {
            status,
            output,
            ending,
        })
    }

    /// Makes the shell usable: after a cancelled call, stops whatever the
    /// guest still does for it and skips what it sent; after a boot,
    /// defines the helpers.
    async fn ready(&mut self) -> Result<(), ShellError> {
        if self.pending.take().is_some() {
            // `cancel` ends a running command, a wait, or a chunk transfer;
            // if the guest was idle, bash runs it as an unknown command
            // (an error on the serial console, nothing else).
            let n = nonce();
            self.stream
                .write_all(format!("cancel.\nprintf '%s\\n' {n}-sync\n").as_bytes())
                .await?;
            self.read_until(format!("{n}-sync\n").as_bytes()).await?;
        }
        if !self.bootstrapped {
            self.bootstrap().await?;
        }
        Ok(())
    }

    /// Runs one request in the guest and returns its outcome. Dropping the
    /// future midway is safe: the next call cancels and drains it.
    pub async fn run(&mut self, req: Request<'_>) -> Result<Outcome, ShellError> {
        self.ready().await?;
        let n = nonce();
        let line = match req {
            Request::Exec {
                command,
                timeout,
                capture,
            } => format!(
                "__vmt_cmd={}; __vmt_exec {n} {} {} {}\n",
                shell_quote(command),
                timeout_arg(timeout),
                u8::from(capture),
                u8::from(may_background(command))
            ),
            Request::Until {
                command,
                timeout,
                mode,
            } => {
                let mode = match mode {
                    UntilMode::Succeed => "succeed",
                    UntilMode::Fail => "fail",
                    UntilMode::Settled => "settled",
                };
                format!(
                    "__vmt_cmd={}; __vmt_until {n} {} {mode} {}\n",
                    shell_quote(command),
                    timeout_arg(timeout),
                    u8::from(may_background(command))
                )
            }
        };
        self.pending = Some(n.clone());
        self.stream.write_all(line.as_bytes()).await?;
        self.read_answer(&n).await
    }

    /// Runs `command` framed the way nixpkgs' Python driver does
    /// (`timeout T bash -c '...' | (base64 -w 0; echo)`, then
    /// `echo ${PIPESTATUS[0]}`). Only the benchmark uses it, as the baseline.
    pub async fn run_nixpkgs_framing(
        &mut self,
        command: &str,
        timeout: u64,
    ) -> Result<(i32, Vec<u8>), ShellError> {
        use base64::Engine;
        self.ready().await?;
        let line = format!(
            "timeout {timeout} bash -c {} | (base64 -w 0; echo)\n",
            shell_quote(command)
        );
        self.stream.write_all(line.as_bytes()).await?;
        let encoded = self.read_until(b"\n").await?;
        self.stream.write_all(b"echo ${PIPESTATUS[0]}\n").await?;
        let status = self.read_until(b"\n").await?;
        let output = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|e| ShellError::Protocol(e.to_string()))?;
        let status = String::from_utf8_lossy(&status)
            .trim()
            .parse()
            .map_err(|_| ShellError::Protocol("status".into()))?;
        Ok((status, output))
    }

    /// Writes raw bytes into the shell (the interactive `shell_interact`).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ShellError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads whatever raw bytes arrive next (the interactive `shell_interact`).
    pub async fn read_raw(&mut self) -> Result<Vec<u8>, ShellError> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// The shell must be set up again before the next framed command
    /// (after an interactive session changed its state).
    pub fn invalidate(&mut self) {
        self.bootstrapped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_with_a_lone_ampersand_may_background() {
        assert!(may_background("sleep 600 &"));
        assert!(may_background("(sleep 1; touch f) & echo x"));
        assert!(may_background("coproc sleep 600"));
        assert!(may_background("echo hi > >(sleep 600)"));
        assert!(may_background("diff <(ls a) <(ls b)"));
        assert!(!may_background("a && b 2>&1 >&2 &>/dev/null"));
        assert!(!may_background("true"));
    }

    #[test]
    fn quoting_survives_single_quotes_and_newlines() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("x\ny"), "'x\ny'");
    }

    /// A fake guest: answers one framed command the way the bootstrap does,
    /// with two chunks of output and noise before the answer.
    #[tokio::test]
    async fn framing_is_exact_for_binary_output_in_chunks() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let mut shell = Shell::new(host);
        shell.bootstrapped = true;
        let payload: Vec<u8> = (0..CHUNK + 10).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)
                .await
                .unwrap();
            let n = line.split_whitespace().nth(2).unwrap().to_string();
            let mut acks = Vec::new();
            let mut answer = format!("noise before\n{n} 3 done 1\n").into_bytes();
            for chunk in payload.chunks(CHUNK) {
                answer.extend_from_slice(chunk);
                answer.extend_from_slice(format!("\n{n} c\n").as_bytes());
                reader.get_mut().write_all(&answer).await.unwrap();
                answer.clear();
                let mut ack = Vec::new();
                tokio::io::AsyncBufReadExt::read_until(&mut reader, b'.', &mut ack)
                    .await
                    .unwrap();
                acks.push(String::from_utf8(ack).unwrap());
            }
            acks
        });
        let out = shell
            .run(Request::Exec {
                command: "x",
                timeout: None,
                capture: true,
            })
            .await
            .unwrap();
        assert_eq!(fake.await.unwrap(), vec!["more.", "done."]);
        assert_eq!(out.status, 3);
        assert_eq!(out.output, expected);
        assert_eq!(out.ending, Ending::Done);
    }
}
