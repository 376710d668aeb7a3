//! The backdoor shell: NixOS test instrumentation gives a root `bash` on the
//! virtio console `hvc0`, reached through QEMU's `-chardev socket,id=shell`.
//! The guest announces it with `Spawning backdoor root shell...`.
//!
//! On top of that plain shell (nothing else is assumed of the guest) the
//! driver defines a few bash functions once per boot (`guest-*.bash`; sent
//! through the command port where the guest has it, since bash reads the
//! console a byte at a time; no process is started for it but the control
//! listener) and then frames every command as
//!
//! ```text
//! host  → guest: __vmt_exec <n> <timeout ms|-> <isolate> '<command>' [/dev/null]
//!            or: __vmt_until <n> <timeout ms|-> <succeed|fail|settled> <isolate> '<command>'
//! guest → host : <key><n> <status> <done|timeout|cancel> <0|1|2>\n
//!                then, if 1: chunks of stdout, each `<≤128 KiB raw>\n<key><n> c\n`,
//!                the host answering `more.` or `done.` after each;
//!                if 2: `<raw output>\n<key><n> c\n`, not answered (at most
//!                4096 characters on the console; any size on the command port);
//!                if 3: nothing more: the output is the file `<key><n>` in
//!                the shared directory's `.nix-vmtest-out`, which the host
//!                reads and removes
//! ```
//!
//! `<n>` numbers the commands of a boot, and `<key>` is a random string the
//! bootstrap was given: the command line stays short, and the delimiters
//! stay unguessable. `/dev/null` as the last argument means the output is
//! not kept. The command runs with no positional parameters, as with
//! `bash -c`.
//!
//! The first command after a boot comes before that: one console line
//! that runs it and answers as above, before anything is defined
//! ([`Shell::run_first`]); the functions follow its answer.
//!
//! Those lines are what bash reads on the console when the guest has no
//! command port. With one (a `virtserialport` named
//! [`super::qemu::CMD_PORT`], which the driver gives QEMU), the backdoor
//! shell runs a serve loop on it (`__vmt_serve`) and everything the host
//! sends goes there as a record: `r<n> <command>` (or `n<n> …` for
//! output not kept) runs a command right in the loop, and `e<line>` is any
//! of the lines above, evaluated there. bash reads a tty a byte at a time
//! (5–10 µs each under TCG), behind the guest's hvc thread and tty layer; a
//! record on the port takes one read(2). The guest answers on the port
//! too: a write there returns at once, where a write to the console spins
//! in the guest until QEMU has taken the data (0.5–1 ms per answer, measured
//! under TCG). A port never drops data, so output there is not chunked
//! (see below): only the console keeps the acknowledged chunks.
//!
//! The guest reads acknowledgements (and `cancel.`) with `read -d .`: a
//! delimiter other than newline makes bash read byte by byte, so it never
//! swallows the next command line that the host may already have sent (with
//! the newline delimiter bash reads a tty in blocks and keeps the rest).
//!
//! A command runs in a forked subshell with stdin `/dev/null` and stdout in
//! a fresh file, so a detached child that keeps stdout open cannot hang the
//! call (nixpkgs #144875), and no `timeout`/`base64`/`bash -c` processes
//! are started per command; its stderr is the console, as in nixpkgs,
//! while the shell that reaps it writes its own to `/dev/null` (a command
//! killed at its deadline is not reported there as `Killed ( eval … )`).
//! A plain command of a program is sent as `exec <command>`
//! ([`exec_form`]), so that subshell becomes the program.
//! Output is sent raw (the console is in raw mode) and delimited by a
//! random 128-bit nonce, so it is exact and binary-safe.
//!
//! Who stops a command that runs too long (a timeout, or Ctrl-C in the
//! interactive driver):
//! - Normally the host. The driver gives QEMU a second port, a
//!   `virtserialport` named `org.nix-vmtest.ctl`; the bootstrap starts a
//!   listener on it in the guest (blocked in `read`, so idle), and the
//!   shell just waits for the command's subshell: one fork per command,
//!   nothing else. At the deadline the host writes `<id>.` on the port;
//!   the listener kills the shell's children (the command's tree) and
//!   answers `<id> done`, after which the host reads the killed command's
//!   answer. The first command after a boot runs before the listener
//!   is forked, from its console line ([`Shell::run_first`]): the host
//!   stops it with a line that opens the port and answers one request
//!   (`__vmt_stop`).
//! - Without the port (a start script that drops the driver's options), the
//!   guest itself: `__vmt_exec` runs the command in the background and reads
//!   a FIFO whose write end the subshell holds, 200 ms at a time, checking
//!   the deadline and `cancel.` in between. The command runs with the FIFO
//!   closed, and one that may leave asynchronous subshells (`<isolate>` = 1,
//!   see [`may_background`]) runs one subshell deeper, since those would
//!   inherit bash's saved copy of it.
//!
//! Why chunks with acknowledgements: QEMU's `virtconsole` drops console
//! data when the host socket's buffer is full (QEMU's `flush_buf` does not
//! throttle console ports), so a host that is slow to read for a moment would
//! silently lose output. No more than one chunk is ever in flight, and a
//! chunk fits the socket buffer, so nothing is lost however late the driver
//! reads. Output of up to 4096 characters (most commands') travels in one
//! write with the answer and is not acknowledged, which saves a round
//! trip: the guest then sends nothing until the next command, so it is
//! still the only thing in flight. On the command port (the serve loop)
//! output of any size goes that way, in one `dd`: QEMU throttles a
//! `virtserialport` instead of dropping its data.
//!
//! Output that is not small goes through the shared directory instead
//! where the guest has it mounted (writable): the host makes
//! [`SHARED_OUT`] in it when QEMU connects, the guest copies the output
//! file there in one `dd` and answers in form 3. On the console that
//! replaces the acknowledged chunks (2 MiB: 0.5 s → 77 ms under TCG); on
//! the port it costs about the same (docs/performance.md). Where the
//! guest does not find the directory (no share, not mounted, unmounted
//! for a snapshot) or the copy fails, the output goes on the port or
//! console as above.
//!
//! Waits (`wait_until_succeeds` and friends) loop in the guest with a 50 ms
//! pause and no host round trip per try; the guest checks their deadline
//! between tries, and the host stops a try that outlives it by a second. A
//! system unit wait does not loop at all: it listens to systemd over D-Bus
//! ([`Shell::unit_wait`]).
//!
//! This file holds the transport (console, command port, control port) and
//! the calls; `guest.rs` the guest's bash and the lines that set it up;
//! `framing.rs` how a command is written and its answer read; and
//! `unit_wait.rs` the D-Bus session of a unit wait.

mod framing;
mod guest;
mod unit_wait;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use framing::{discard, nonce, record, short_nonce, timeout_arg};
pub use framing::{exec_form, may_background, own_shell_form, shell_quote};
pub use unit_wait::UnitWait;

/// The size of one output chunk (`@CHUNK@` in `guest-core.bash`).
const CHUNK: usize = 131072;

/// Where the guest mounts the shared directory (9p tag `shared`), as
/// NixOS does.
const GUEST_SHARED: &str = "/tmp/shared";

/// The directory, in the shared directory, that big outputs come through
/// (`@SHARED_OUT@` in `guest-core.bash` is its guest path): the host makes
/// it, so the guest finds it only where the share is mounted.
pub const SHARED_OUT: &str = ".nix-vmtest-out";

/// The line a NixOS backdoor prints when its shell is ready.
pub const MARKER: &[u8] = b"Spawning backdoor root shell...";

/// The bash the driver defines in the guest (`guest-stop.bash`,
/// `guest-first.bash`, `guest-core.bash` and `guest-rest.bash`, filled in):
/// a snapshot's guest runs what it defined (the control listener), so a
/// snapshot records which it was.
pub fn guest_functions() -> String {
    format!(
        "{}\n{}\n{}\n{}",
        *guest::BOOTSTRAP_STOP,
        *guest::BOOTSTRAP_FIRST,
        *guest::BOOTSTRAP,
        *guest::BOOTSTRAP_REST
    )
}

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
    #[error(
        "a command of {0} bytes is too long to send (at most 16 MiB): put large data in a file \
         and use copy_from_host"
    )]
    TooLong(usize),
    #[error(
        "the guest's command loop stopped reading the command port, and the command sent there \
         was lost; later commands go to the console (the console log may say why)"
    )]
    LoopEnded,
    #[error(
        "the guest's backdoor shell was started again (\"Spawning backdoor root shell...\" came \
         again) while the command ran, so its result is lost: something killed the shell (a \
         command such as `pkill bash` does); the next command goes to the new shell"
    )]
    Restarted,
    #[error(
        "reading a command's output from the shared directory ({path}) failed: {source}; \
         the directory must stay readable by the driver while the machine runs"
    )]
    SharedOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only inside [`Shell::unit_wait`], which then polls instead.
    #[error("systemd-stdio-bridge in the guest {0}")]
    BusGone(&'static str),
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

impl UntilMode {
    /// Whether a try that exited with `status` ends the wait: the rule
    /// `__vmt_until` (guest-rest.bash) applies in the guest, for a wait
    /// the driver runs one try of at a time.
    pub fn ends(self, status: i32) -> bool {
        match self {
            UntilMode::Succeed => status == 0,
            UntilMode::Fail => status != 0,
            UntilMode::Settled => status != 1,
        }
    }
}

/// One connected backdoor shell.
pub struct Shell {
    /// Where the shell reads and writes now: the console, or the command
    /// port while the guest serves it ([`Route::Port`]).
    stream: UnixStream,
    buf: Vec<u8>,
    /// The stream not in use: the command port (`virtserialport` named
    /// [`super::qemu::CMD_PORT`]) while the shell reads the console, the
    /// console while it serves the port.
    other: Option<Side>,
    /// The control port (`virtserialport` named [`super::qemu::CTL_PORT`]).
    ctl: Option<Ctl>,
    /// Which of the two (console, command port) the guest's shell reads.
    route: Route,
    /// What the bootstrap set up in this boot of the guest; `None` until it
    /// has run.
    boot: Option<Boot>,
    /// What a cancelled call left running in the guest.
    pending: Option<Pending>,
    serial: u64,
    /// The host's side of [`SHARED_OUT`], where the guest leaves big
    /// outputs (form 3 of an answer); `None` if it could not be made.
    shared_out: Option<PathBuf>,
    /// How many answers' output came through [`SHARED_OUT`].
    shared_outputs: u64,
}

/// What a snapshot keeps of the bootstrap of the guest it holds
/// ([`Shell::saved`], [`Shell::resume`]): the key its answers carry (a
/// restored guest has the same one in its memory, so it is no more secret
/// than the snapshot), which ports it listens on, and the names bash
/// resolves itself there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedShell {
    pub key: String,
    pub ctl: bool,
    pub cmd: bool,
    pub names: Option<Vec<String>>,
}

/// Where the guest's backdoor shell reads what the host sends.
#[derive(Debug)]
enum Route {
    /// bash reads the console itself.
    Console,
    /// The guest's serve loop reads and writes the command port (`stream`
    /// is the port): the host sends records ([`record`]), and the guest
    /// answers there. `sync` is the loop's nonce: it says `<sync> ended` on
    /// the console if it stops reading the port by itself.
    Port { sync: String },
}

/// What the bootstrap set up in one boot of the guest.
#[derive(Debug)]
struct Boot {
    /// Random per bootstrap; with a command's serial number it marks the
    /// command's answer and output chunks (the command line itself carries
    /// only the serial: the guest reads it a byte at a time).
    key: String,
    /// The guest listens on the control port: commands run without a
    /// watcher in the guest, and the host stops them through the port.
    ctl: bool,
    /// The guest has the command port.
    cmd: bool,
    /// What bash in the guest resolves itself (builtins, keywords,
    /// functions, aliases), as the bootstrap listed it; `None` if it could
    /// not (or not yet), or if a `command_not_found_handle` is defined:
    /// then no command is run with `exec` ([`exec_form`]).
    names: Option<HashSet<String>>,
    /// Whether `guest-rest.bash` is defined in the guest yet.
    rest: Rest,
}

/// A stream with what was read from it and not yet taken.
struct Side {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The host end of the control port: `<id>.` asks the guest's listener to
/// kill whatever the backdoor shell runs now; it answers `<id> done`.
struct Ctl {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// How much console output is kept while the serve loop has the port (the
/// console should stay quiet then); past it, only a tail long enough to
/// hold a split `<sync> ended` line.
const CONSOLE_KEPT: usize = 64 * 1024;

/// How long the guest's listener may take to stop a command.
const CTL_ANSWER: Duration = Duration::from_secs(10);

/// How long after its deadline a wait's try is stopped from the host (the
/// guest checks the deadline itself between tries).
const UNTIL_GRACE: Duration = Duration::from_secs(1);

/// `guest-rest.bash` in the guest. The port bootstrap defines only what
/// the serve loop needs; the rest, with the list of names bash resolves
/// itself, goes once the next plain command's answer is read (not with its
/// record: the guest reads the acknowledgements of output chunks on the
/// same stream), or before any other request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rest {
    /// Defined, and the names are read.
    Done,
    /// Not sent yet.
    Unsent,
    /// Sent; its answer (`<n> names`) is not read yet.
    Sent(String),
}

/// What a call that was cancelled midway left in the guest, to be ended
/// before the next call.
#[derive(Debug, Clone)]
enum Pending {
    /// The port bootstrap ([`Shell::start_port_bootstrap`]) with nonce
    /// `n` and `key`; its answer is unread.
    Bootstrap { n: String, key: String },
    /// The first command after a boot, run from its console line
    /// ([`Shell::run_first`]): its answer is unread.
    First,
    /// A framed command or wait, or its output transfer.
    Command,
    /// A D-Bus session ([`Shell::unit_wait`]) with this nonce.
    Bus(String),
    /// A D-Bus session whose end was asked for; its answer is unread.
    BusStopping(String),
    /// The serve loop was asked to start ([`Shell::serve`]); its answer is
    /// unread.
    Serve(String),
    /// The serve loop was asked to end; its answer is unread.
    Leave(String),
}

/// How the first command's line answered ([`Shell::first_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstAnswer {
    /// As the serve loop answers: the header is next in the buffer.
    Answer,
    /// Its output is not small: it waits in the guest.
    Big,
    /// Nothing ran.
    NotRun,
}

/// The longest command that runs from the console after a boot: bash reads
/// the console a byte at a time (3–12 µs each under TCG), the port a
/// record at a time.
const FIRST_MAX: usize = 1024;

/// Whether a command may run from the first command's console line: ASCII
/// without NUL (as a record carries it), and short.
fn first_fits(command: &str) -> bool {
    command.len() <= FIRST_MAX && command.is_ascii() && !command.contains('\0')
}

/// A command as sent: in its exec form only where the host stops commands
/// (`guest_ctl`; the guest's own watcher, without the port, needs the
/// subshell it forks), and where the guest's names are known.
fn sent_form(command: &str, names: Option<&HashSet<String>>, guest_ctl: bool) -> String {
    own_shell_form(command, guest_ctl)
        .or_else(|| {
            names
                .filter(|_| guest_ctl)
                .and_then(|names| exec_form(command, names))
        })
        .unwrap_or_else(|| command.to_string())
}

/// The serve loop's record of a plain command (`r`: output kept; `n`: not),
/// which it runs itself, with no function call and nothing to parse but
/// the command.
fn plain_record(
    id: u64,
    command: &str,
    capture: bool,
    names: Option<&HashSet<String>>,
    guest_ctl: bool,
) -> Result<Vec<u8>, ShellError> {
    let kind = if capture { 'r' } else { 'n' };
    record(
        kind,
        &format!("{id} {}", sent_form(command, names, guest_ctl)),
    )
}

/// The port bootstrap's answer in what the port sent: `<n> <status>\n`
/// (the report), then `<n> <state>\n` (`serving` or `idle`) unless the
/// report is not `ok`.
struct PortAnswer {
    /// Where the report starts (what came before it is the guest's error).
    start: usize,
    status: Vec<u8>,
    state: Option<Vec<u8>>,
    /// Where the answer ends.
    end: usize,
}

impl PortAnswer {
    fn find(buf: &[u8], head: &[u8]) -> Option<PortAnswer> {
        let line = |from: usize| -> Option<(usize, usize, usize)> {
            let i = from + memmem::find(&buf[from..], head)?;
            let s = i + head.len();
            let e = s + buf[s..].iter().position(|&b| b == b'\n')?;
            Some((i, s, e))
        };
        let (start, s, e) = line(0)?;
        let status = buf[s..e].to_vec();
        if !status.starts_with(b"ok") {
            return Some(PortAnswer {
                start,
                status,
                state: None,
                end: e + 1,
            });
        }
        let (_, s2, e2) = line(e + 1)?;
        Some(PortAnswer {
            start,
            status,
            state: Some(buf[s2..e2].to_vec()),
            end: e2 + 1,
        })
    }
}

impl Shell {
    /// Wraps the accepted connection of QEMU's `shell` chardev.
    pub fn new(stream: UnixStream) -> Shell {
        Shell {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            other: None,
            ctl: None,
            route: Route::Console,
            boot: None,
            pending: None,
            serial: 0,
            shared_out: None,
            shared_outputs: 0,
        }
    }

    /// How many answers' output came through the shared directory so far
    /// (tests and the benchmark tell the two ways apart with it).
    pub fn shared_outputs(&self) -> u64 {
        self.shared_outputs
    }

    /// Makes [`SHARED_OUT`] in the host directory shared with the guest
    /// (9p tag `shared`), through which the guest then sends big outputs.
    /// Without it (it cannot be made) they come on the port or console.
    pub fn set_shared_dir(&mut self, shared: &Path) {
        let dir = shared.join(SHARED_OUT);
        self.shared_out = std::fs::create_dir_all(&dir).is_ok().then_some(dir);
    }

    /// Removes what big outputs a cancelled call left in [`SHARED_OUT`]
    /// (the guest writes there only while a command is answered).
    fn clear_shared_out(&self) {
        let Some(dir) = &self.shared_out else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// What this boot's bootstrap set up in the guest, once the guest's
    /// shell is idle on the console with all its functions defined (after
    /// [`Shell::raw_mode`]): what a snapshot keeps so that a restored
    /// guest needs no bootstrap. `None` before that.
    pub fn saved(&self) -> Option<SavedShell> {
        let boot = self.boot.as_ref()?;
        if self.serving() || self.pending.is_some() || boot.rest != Rest::Done {
            return None;
        }
        Some(SavedShell {
            key: boot.key.clone(),
            ctl: boot.ctl,
            cmd: boot.cmd,
            names: boot.names.as_ref().map(|n| {
                let mut v: Vec<String> = n.iter().cloned().collect();
                v.sort();
                v
            }),
        })
    }

    /// Takes up a guest whose shell is as [`Shell::saved`] left it (a
    /// restored snapshot): its functions and key are there, so the next
    /// call starts the serve loop (one short console line) instead of
    /// bootstrapping. The ports count only where this QEMU has them too.
    pub fn resume(&mut self, saved: SavedShell) {
        self.forget_boot();
        self.boot = Some(Boot {
            key: saved.key,
            ctl: saved.ctl && self.ctl.is_some(),
            cmd: saved.cmd && self.other.is_some(),
            names: saved.names.map(|v| v.into_iter().collect()),
            rest: Rest::Done,
        });
    }

    /// Adds the control port's connection.
    pub fn set_ctl(&mut self, stream: UnixStream) {
        self.ctl = Some(Ctl {
            stream,
            buf: Vec::new(),
        });
    }

    /// Adds the command port's connection.
    pub fn set_cmd(&mut self, stream: UnixStream) {
        self.other = Some(Side {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        });
    }

    /// Trades the stream in use for the other one (console and command
    /// port).
    fn switch(&mut self) {
        if let Some(other) = self.other.as_mut() {
            std::mem::swap(&mut self.stream, &mut other.stream);
            std::mem::swap(&mut self.buf, &mut other.buf);
        }
    }

    /// The guest's serve loop has the command port ([`Route::Port`]).
    fn serving(&self) -> bool {
        matches!(self.route, Route::Port { .. })
    }

    /// The guest listens on the control port, as its bootstrap said.
    fn guest_ctl(&self) -> bool {
        self.boot.as_ref().is_some_and(|b| b.ctl)
    }

    /// Where `guest-rest.bash` stands in the guest (nothing to do before a
    /// bootstrap).
    fn rest(&self) -> Option<&Rest> {
        self.boot.as_ref().map(|b| &b.rest)
    }

    fn set_rest(&mut self, rest: Rest) {
        if let Some(boot) = self.boot.as_mut() {
            boot.rest = rest;
        }
    }

    /// Sends a line of bash (ending in a newline) whose answer no one
    /// reads (`poweroff`), once what an earlier call left is settled (a
    /// first command's setup, whose answer says where the shell reads).
    pub async fn send_unanswered(&mut self, line: &str) -> Result<(), ShellError> {
        self.settle().await?;
        self.send_line(line).await
    }

    /// Sends a line of bash (ending in a newline) to the backdoor shell: as
    /// a record while the guest serves the command port, else as it is.
    async fn send_line(&mut self, line: &str) -> Result<(), ShellError> {
        let bytes = self.framed(line)?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// A line of bash as the shell reads it now: a record while the guest
    /// serves the command port, else the line itself.
    fn framed(&self, line: &str) -> Result<Vec<u8>, ShellError> {
        if self.serving() {
            record('e', line)
        } else {
            Ok(line.as_bytes().to_vec())
        }
    }

    /// Has the guest's listener kill the running command (if any), and
    /// waits until it has.
    async fn ctl_kill(&mut self) -> Result<(), ShellError> {
        let ctl = self
            .ctl
            .as_mut()
            .ok_or_else(|| ShellError::Protocol("no control port".into()))?;
        let id = nonce();
        ctl.stream.write_all(format!("{id}.").as_bytes()).await?;
        let done = format!("{id} done\n");
        let answer = async {
            loop {
                if let Some(i) = memmem::find(&ctl.buf, done.as_bytes()) {
                    ctl.buf.drain(..i + done.len());
                    return Ok(());
                }
                if ctl.stream.read_buf(&mut ctl.buf).await? == 0 {
                    return Err(ShellError::Closed);
                }
            }
        };
        tokio::time::timeout(CTL_ANSWER, answer)
            .await
            .map_err(|_| ShellError::NoAnswer(CTL_ANSWER))?
    }

    async fn fill(&mut self) -> Result<(), ShellError> {
        let len = self.buf.len();
        if self.buf.capacity() - len < 64 * 1024 {
            self.buf.reserve(256 * 1024);
        }
        let watched = match &self.route {
            Route::Port { sync } => self.other.as_mut().map(|console| (console, sync)),
            Route::Console => None,
        };
        let n = match watched {
            // The console stays quiet while the loop serves the port, but
            // for a loop that ended by itself.
            Some((console, sync)) => tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => r?,
                r = console.stream.read_buf(&mut console.buf) => {
                    // Nothing but the serve loop's end and a new shell's
                    // marker comes on the console now: commands answer on
                    // the port.
                    if let Some(i) = memmem::find(&console.buf, MARKER) {
                        console.buf.drain(..i + MARKER.len());
                        self.forget_boot();
                        return Err(ShellError::Restarted);
                    }
                    let ended = format!("{sync} ended\n");
                    if memmem::find(&console.buf, ended.as_bytes()).is_some() {
                        console.buf.clear();
                        self.switch();
                        self.route = Route::Console;
                        self.pending = None;
                        // What the loop did not run goes again.
                        if let Some(Rest::Sent(_)) = self.rest() {
                            self.set_rest(Rest::Unsent);
                        }
                        return Err(ShellError::LoopEnded);
                    }
                    // The port went away before the bootstrap's second
                    // record came through (so the serve loop's functions
                    // are not defined): the next call sets the shell up
                    // again.
                    let noport = format!("{sync} noport\n");
                    if memmem::find(&console.buf, noport.as_bytes()).is_some() {
                        console.buf.clear();
                        self.forget_boot();
                        return Err(ShellError::LoopEnded);
                    }
                    if console.buf.len() > CONSOLE_KEPT {
                        console.buf.drain(..console.buf.len() - ended.len().max(noport.len()));
                    }
                    r?
                }
            },
            None => self.stream.read_buf(&mut self.buf).await?,
        };
        if n == 0 {
            return Err(ShellError::Closed);
        }
        Ok(())
    }

    /// Reads until `needle` has arrived; returns the bytes before it and
    /// drops it and them from the buffer.
    async fn read_until(&mut self, needle: &[u8]) -> Result<Vec<u8>, ShellError> {
        let end = self.wait_for(needle).await?;
        let before = self.buf[..end].to_vec();
        self.buf.drain(..end + needle.len());
        Ok(before)
    }

    /// Reads until `needle` has arrived and returns where it starts, taking
    /// nothing out of the buffer (so it can be cancelled and called again).
    async fn wait_for(&mut self, needle: &[u8]) -> Result<usize, ShellError> {
        let finder = memmem::Finder::new(needle);
        let mut from = 0;
        loop {
            if let Some(i) = finder.find(&self.buf[from..]) {
                return Ok(from + i);
            }
            from = self.buf.len().saturating_sub(needle.len());
            self.fill().await?;
        }
    }

    /// Waits for the backdoor's ready line; what came before it is returned
    /// (normally nothing). Called after every boot.
    pub async fn wait_for_marker(&mut self) -> Result<Vec<u8>, ShellError> {
        // The marker comes on the console: a new boot has no serve loop.
        self.forget_boot();
        let before = self.read_until(MARKER).await?;
        // The rest of the marker line.
        let _ = self.read_until(b"\n").await?;
        Ok(before)
    }

    /// Forgets the shell's state after the guest rebooted.
    pub fn reset(&mut self) {
        self.forget_boot();
        self.buf.clear();
        if let Some(ctl) = self.ctl.as_mut() {
            ctl.buf.clear();
        }
    }

    /// What a new boot of the guest no longer has.
    fn forget_boot(&mut self) {
        if self.serving() {
            self.switch();
        }
        self.route = Route::Console;
        self.boot = None;
        self.pending = None;
    }

    /// Sets the backdoor shell up after a boot: defines the functions of
    /// `guest-core.bash`, runs `__vmt_init` and lists the names bash
    /// resolves itself. Through the command port where the guest has it
    /// ([`Shell::bootstrap_on_port`]), else on the console.
    async fn bootstrap(&mut self) -> Result<(), ShellError> {
        let n = short_nonce();
        let key = format!("{}-", nonce());
        self.boot = None;
        if self.other.is_some() && self.bootstrap_on_port(&n, &key).await? {
            return Ok(());
        }
        let script = guest::console_bootstrap(&n, &key);
        self.stream.write_all(script.as_bytes()).await?;
        let before = self.read_until(format!("{n} ").as_bytes()).await?;
        self.take_report(&key, before).await?;
        self.set_rest(Rest::Sent(n));
        self.take_names().await
    }

    /// Reads what `init_and_report` prints after `<n> ` (on the stream in
    /// use): `ok` and the ports. Sets `boot` up.
    async fn take_report(&mut self, key: &str, before: Vec<u8>) -> Result<(), ShellError> {
        let status = self.read_until(b"\n").await?;
        self.set_boot(key, &before, &status)
    }

    /// Sets `boot` up from the report's `status` (`ok` and the ports), or
    /// fails with what the guest printed `before` it.
    fn set_boot(&mut self, key: &str, before: &[u8], status: &[u8]) -> Result<(), ShellError> {
        if !status.starts_with(b"ok") {
            return Err(ShellError::Bootstrap(
                String::from_utf8_lossy(before).trim().to_string(),
            ));
        }
        let has = |port: &[u8]| status.split(|&b| b == b' ').any(|w| w == port);
        self.boot = Some(Boot {
            key: key.to_string(),
            ctl: has(b"ctl") && self.ctl.is_some(),
            cmd: has(b"cmd") && self.other.is_some(),
            names: None,
            rest: Rest::Done,
        });
        Ok(())
    }

    /// Defines `guest-rest.bash` in the guest if it is not yet, and reads
    /// the names it lists.
    async fn complete(&mut self) -> Result<(), ShellError> {
        self.send_rest().await?;
        self.take_names().await
    }

    /// Sends `guest-rest.bash`'s line if it is not sent yet; its answer is
    /// read before the next request's ([`Shell::take_names`]).
    async fn send_rest(&mut self) -> Result<(), ShellError> {
        if self.rest() == Some(&Rest::Unsent) {
            let n = nonce();
            let bytes = self.framed(&guest::rest_line(&n, !self.serving()))?;
            self.set_rest(Rest::Sent(n));
            self.stream.write_all(&bytes).await?;
        }
        Ok(())
    }

    /// Reads the answer of `guest-rest.bash`'s line if it is due: the
    /// names bash resolves itself, up to `<n> end`.
    async fn take_names(&mut self) -> Result<(), ShellError> {
        let Some(Rest::Sent(n)) = self.rest() else {
            return Ok(());
        };
        let (head, end) = (format!("{n} names\n"), format!("\n{n} end\n"));
        self.read_until(head.as_bytes()).await?;
        let names = self.read_until(end.as_bytes()).await?;
        let names: HashSet<String> = String::from_utf8_lossy(&names)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Some(boot) = self.boot.as_mut() {
            boot.names = (!names.contains("#") && !names.contains("command_not_found_handle"))
                .then_some(names);
            boot.rest = Rest::Done;
        }
        Ok(())
    }

    /// The bootstrap in one exchange, through the command port
    /// ([`Shell::start_port_bootstrap`], then its answer). `false` if the
    /// guest has no such port.
    async fn bootstrap_on_port(&mut self, n: &str, key: &str) -> Result<bool, ShellError> {
        if !self.start_port_bootstrap(n, key).await? {
            return Ok(false);
        }
        let answer = self.bootstrap_answer(n, key).await;
        self.pending = None;
        answer
    }

    /// Sends the port bootstrap, whose answer is then due
    /// ([`Pending::Bootstrap`]): bash reads a port in blocks (`read -N`),
    /// where it reads the console a byte at a time (3–12 µs each under
    /// TCG, the most right after a boot: about 0.1 s for all the
    /// functions). A short line on the console
    /// ([`guest::port_console_line`]) finds the ports by number, skips what
    /// an earlier boot left on the command port up to `<n>.`, and evaluates
    /// one record ([`guest::port_record_body`]): the shell's setup and the
    /// report; then the next record ([`guest::port_record_core`]): the
    /// other functions of the serve loop, and the loop itself
    /// (`__vmt_records`), still on the port it opened. The rest ([`Rest`])
    /// comes after that. `false` (nothing sent) if the host has no command
    /// port.
    async fn start_port_bootstrap(&mut self, n: &str, key: &str) -> Result<bool, ShellError> {
        let body = guest::port_record_body(n, key, self.ctl.is_some());
        let mut bytes = format!("{n}.").into_bytes();
        bytes.extend(record('\n', &body)?);
        bytes.extend(record('\n', &guest::port_record_core(n))?);
        let Some(port) = self.other.as_mut() else {
            return Ok(false);
        };
        port.stream.write_all(&bytes).await?;
        let line = guest::port_console_line(n);
        self.stream.write_all(line.as_bytes()).await?;
        self.pending = Some(Pending::Bootstrap {
            n: n.to_string(),
            key: key.to_string(),
        });
        Ok(true)
    }

    /// Reads the port bootstrap's answer: `<n> ok …` then `<n> serving`
    /// (or `<n> idle`) on the port, or `<n> noport` on the console (then
    /// `false`). Nothing is taken before the whole answer is there: a call
    /// cut short here reads it again ([`Pending::Bootstrap`]).
    async fn bootstrap_answer(&mut self, n: &str, key: &str) -> Result<bool, ShellError> {
        let head = format!("{n} ");
        let noport = format!("{n} noport\n");
        loop {
            if let Some(i) = memmem::find(&self.buf, noport.as_bytes()) {
                self.buf.drain(..i + noport.len());
                return Ok(false);
            }
            let Some(port) = self.other.as_mut() else {
                return Ok(false);
            };
            if let Some(answer) = PortAnswer::find(&port.buf, head.as_bytes()) {
                let before = port.buf[..answer.start].to_vec();
                let end = answer.end;
                // A report that is not `ok` (no state follows) fails here.
                self.set_boot(key, &before, &answer.status)?;
                let state = answer.state.unwrap_or_default();
                if let Some(port) = self.other.as_mut() {
                    port.buf.drain(..end);
                }
                // Serving: what follows comes on the port.
                if state == b"serving" {
                    self.switch();
                    self.route = Route::Port {
                        sync: n.to_string(),
                    };
                }
                self.set_rest(Rest::Unsent);
                return Ok(true);
            }
            let got = tokio::select! {
                r = port.stream.read_buf(&mut port.buf) => r?,
                r = self.stream.read_buf(&mut self.buf) => r?,
            };
            if got == 0 {
                return Err(ShellError::Closed);
            }
        }
    }

    /// Ends what a cancelled call left: stops whatever the guest still
    /// does for it and skips what it sent.
    async fn settle(&mut self) -> Result<(), ShellError> {
        // A bootstrap cut short may leave a command to end as well.
        while let Some(pending) = self.pending.take() {
            self.settle_one(pending).await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self, pending: Pending) -> Result<(), ShellError> {
        match pending {
            Pending::Bootstrap { n, key } => {
                // Kept until the answer is read, in case this call is
                // cancelled too.
                self.pending = Some(Pending::Bootstrap {
                    n: n.clone(),
                    key: key.clone(),
                });
                let answer = self.bootstrap_answer(&n, &key).await;
                self.pending = None;
                if !answer? {
                    // No port: the next call bootstraps on the console.
                    self.boot = None;
                }
            }
            Pending::First => {
                self.pending = Some(Pending::First);
                self.stop_first().await?;
                // Its answer (if it came) goes with what comes before the
                // sync; the output it left in the guest is not wanted.
                let n = nonce();
                self.send_line(&format!("printf '%s\\n' {n}-sync\n"))
                    .await?;
                self.read_until(format!("{n}-sync\n").as_bytes()).await?;
                self.pending = None;
            }
            Pending::Command => {
                if self.guest_ctl() {
                    self.ctl_kill().await?;
                }
                // `cancel.` ends a running command, a wait, or a chunk
                // transfer. An idle serve loop skips it; an idle shell on
                // the console runs it as an unknown command (an error on
                // the serial console, nothing else).
                let n = nonce();
                let word: &[u8] = if self.serving() {
                    b"cancel."
                } else {
                    b"cancel.\n"
                };
                self.stream.write_all(word).await?;
                self.send_line(&format!("printf '%s\\n' {n}-sync\n"))
                    .await?;
                // The rest's answer (if it is due) comes before the sync.
                self.take_names().await?;
                self.read_until(format!("{n}-sync\n").as_bytes()).await?;
                // An answer skipped may have left its output there.
                self.clear_shared_out();
                // A command cut short did not send the rest.
                self.complete().await?;
            }
            Pending::Bus(n) => {
                self.send_bus_stop(&n).await?;
                self.read_until(format!("{n} bus-stopped\n").as_bytes())
                    .await?;
                self.pending = None;
            }
            Pending::BusStopping(n) => {
                // Kept until the answer is read, in case this call is
                // cancelled too.
                self.pending = Some(Pending::BusStopping(n.clone()));
                self.read_until(format!("{n} bus-stopped\n").as_bytes())
                    .await?;
                self.pending = None;
            }
            Pending::Serve(n) => self.serve_answer(n).await?,
            Pending::Leave(n) => self.leave_answer(n).await?,
        }
        Ok(())
    }

    /// Makes the shell ready for framed commands: settles a cancelled call,
    /// defines the helpers after a boot, and starts the serve loop if the
    /// guest has both ports (with `serve`), or ends it (without).
    async fn ready(&mut self, serve: bool) -> Result<(), ShellError> {
        self.settle().await?;
        if self.boot.is_none() {
            self.bootstrap().await?;
        }
        self.take_names().await?;
        if !serve {
            // Unit waits call the rest's functions on the console.
            self.complete().await?;
            self.leave().await?;
        }
        let offered = self.boot.as_ref().is_some_and(|b| b.cmd && b.ctl);
        if serve && !self.serving() && offered {
            // `__vmt_serve` is one of the rest.
            self.complete().await?;
            self.serve().await?;
        }
        Ok(())
    }

    /// Starts the guest's serve loop (`__vmt_serve`): from its answer on,
    /// the host reads and writes the command port. The port gets `<n>.`
    /// first, so that the loop skips whatever an earlier boot left unread
    /// there.
    async fn serve(&mut self) -> Result<(), ShellError> {
        let n = nonce();
        let port = self
            .other
            .as_mut()
            .ok_or_else(|| ShellError::Protocol("no command port".into()))?;
        port.stream.write_all(format!("{n}.").as_bytes()).await?;
        self.pending = Some(Pending::Serve(n.clone()));
        self.stream
            .write_all(format!("__vmt_serve {n}\n").as_bytes())
            .await?;
        self.serve_answer(n).await
    }

    /// Reads the serve loop's answer: `serving` on the port, or `failed` on
    /// the console (the port could not be opened: commands stay there).
    async fn serve_answer(&mut self, n: String) -> Result<(), ShellError> {
        self.pending = Some(Pending::Serve(n.clone()));
        let serving = format!("{n} serving\n");
        let failed = format!("{n} failed\n");
        let port = self
            .other
            .as_mut()
            .ok_or_else(|| ShellError::Protocol("no command port".into()))?;
        loop {
            if let Some(i) = memmem::find(&port.buf, serving.as_bytes()) {
                port.buf.drain(..i + serving.len());
                self.switch();
                self.route = Route::Port { sync: n.clone() };
                break;
            }
            if let Some(i) = memmem::find(&self.buf, failed.as_bytes()) {
                self.buf.drain(..i + failed.len());
                if let Some(boot) = self.boot.as_mut() {
                    boot.cmd = false;
                }
                break;
            }
            let n = tokio::select! {
                r = port.stream.read_buf(&mut port.buf) => r?,
                r = self.stream.read_buf(&mut self.buf) => r?,
            };
            if n == 0 {
                return Err(ShellError::Closed);
            }
        }
        self.pending = None;
        Ok(())
    }

    /// Gives the console back to bash itself (the nixpkgs framing and the
    /// interactive shell write bash to it): settles a cancelled call and
    /// ends the serve loop.
    pub async fn raw_mode(&mut self) -> Result<(), ShellError> {
        self.settle().await?;
        self.leave().await
    }

    /// Ends the serve loop, if it runs. The answer comes on the console
    /// once the guest closed the port (see `__vmt_serve`).
    async fn leave(&mut self) -> Result<(), ShellError> {
        if self.serving() {
            // `__vmt_serve` (to serve again) is one of the rest.
            self.complete().await?;
            let n = nonce();
            let bytes = self.framed(&format!("__vmt_left={n}; break\n"))?;
            self.switch();
            self.route = Route::Console;
            self.pending = Some(Pending::Leave(n.clone()));
            if let Some(port) = self.other.as_mut() {
                port.stream.write_all(&bytes).await?;
            }
            self.leave_answer(n).await?;
        }
        Ok(())
    }

    async fn leave_answer(&mut self, n: String) -> Result<(), ShellError> {
        self.pending = Some(Pending::Leave(n.clone()));
        self.read_until(format!("{n} left\n").as_bytes()).await?;
        self.pending = None;
        Ok(())
    }

    /// Runs one request in the guest and returns its outcome. Dropping the
    /// future midway is safe: the next call cancels and drains it.
    pub async fn run(&mut self, req: Request<'_>) -> Result<Outcome, ShellError> {
        let id = self.serial + 1;
        // Taken now: a call cut short leaves a gap, never a reused id.
        self.serial = id;
        // After a boot, a short plain command runs from the console before
        // the shell is set up, where the host can stop it and set the
        // shell up after it.
        let first = self.boot.is_none()
            && self.pending.is_none()
            && self.ctl.is_some()
            && self.other.is_some();
        if let Request::Exec {
            command,
            timeout,
            capture,
        } = req
        {
            if first && first_fits(command) {
                if let Some(out) = self.run_first(id, command, timeout, capture).await? {
                    return Ok(out);
                }
            }
        }
        self.ready(true).await?;
        let Some(boot) = &self.boot else {
            return Err(ShellError::Protocol("the shell was not set up".into()));
        };
        let guest_ctl = boot.ctl;
        // What marks this command's answer and output chunks.
        let mark = format!("{}{id}", boot.key);
        // With the control port, the host stops a command at its deadline
        // (a wait's tries: a little after; the guest checks it between
        // tries), and a command costs the guest one fork and nothing else.
        let kill_after = match req {
            Request::Exec { timeout, .. } => timeout,
            Request::Until { timeout, .. } => timeout.map(|t| t + UNTIL_GRACE),
        }
        .filter(|_| guest_ctl);
        // A plain command on the serve loop goes before the rest of the
        // functions is defined; anything else needs them first.
        let plain =
            self.serving() && matches!(req, Request::Exec { command, .. } if command.is_ascii());
        if !plain {
            self.complete().await?;
        }
        let names = self.boot.as_ref().and_then(|b| b.names.as_ref());
        let sent = |command: &str| sent_form(command, names, guest_ctl);
        let sent_bytes = match req {
            // The serve loop runs a plain command itself, with no function
            // call and nothing to parse but the command.
            Request::Exec {
                command, capture, ..
            } if plain => plain_record(id, command, capture, names, guest_ctl)?,
            Request::Exec {
                command,
                timeout,
                capture,
            } => self.framed(&format!(
                "__vmt_exec {id} {} {} {}{}\n",
                timeout_arg(timeout),
                u8::from(may_background(command)),
                shell_quote(&sent(command)),
                discard(capture)
            ))?,
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
                self.framed(&format!(
                    "__vmt_until {id} {} {mode} {} {}\n",
                    timeout_arg(timeout),
                    u8::from(may_background(command)),
                    shell_quote(&sent(command))
                ))?
            }
        };
        self.pending = Some(Pending::Command);
        self.stream.write_all(&sent_bytes).await?;
        let mut killed = false;
        if let Some(after) = kill_after {
            let head = format!("{mark} ");
            match tokio::time::timeout(after, self.wait_for(head.as_bytes())).await {
                Err(_) => {
                    self.ctl_kill().await?;
                    killed = true;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) => {}
            }
        }
        let mut out = self.read_answer(&mark).await?;
        if killed {
            out.ending = Ending::Timeout;
        }
        // Only once the answer is read: until then, the guest may read
        // acknowledgements of output chunks on the same stream.
        self.send_rest().await?;
        Ok(out)
    }

    /// The first command after a boot, from one console line
    /// ([`guest::first_line`]) that runs it and answers before anything of
    /// the driver's is defined in the guest: then the port bootstrap is
    /// sent, and its answer is read by the next call (the guest sets its
    /// shell up while the test script goes on). At its deadline the host
    /// stops it through the control port ([`Shell::stop_first`]). Output
    /// that is not small waits in the guest until the shell is set up, and
    /// is then asked for. `None` if nothing ran (the guest has no
    /// directory to write in; the bootstrap will say so).
    async fn run_first(
        &mut self,
        id: u64,
        command: &str,
        timeout: Option<Duration>,
        capture: bool,
    ) -> Result<Option<Outcome>, ShellError> {
        let n = short_nonce();
        let key = format!("{}-", nonce());
        let mark = format!("{key}{id}");
        let line = guest::first_line(&mark, id, &sent_form(command, None, true), capture);
        self.pending = Some(Pending::First);
        self.stream.write_all(line.as_bytes()).await?;
        let mut killed = false;
        let first = match timeout {
            Some(after) => match tokio::time::timeout(after, self.first_answer(&mark)).await {
                Ok(first) => first?,
                Err(_) => {
                    self.stop_first().await?;
                    killed = true;
                    self.first_answer(&mark).await?
                }
            },
            None => self.first_answer(&mark).await?,
        };
        let mut out = match first {
            FirstAnswer::NotRun => {
                self.pending = None;
                return Ok(None);
            }
            FirstAnswer::Answer => {
                let out = self.read_answer(&mark).await?;
                self.start_port_bootstrap(&n, &key).await?;
                out
            }
            FirstAnswer::Big => {
                self.pending = None;
                self.start_port_bootstrap(&n, &key).await?;
                self.ready(true).await?;
                let Some(boot) = &self.boot else {
                    return Err(ShellError::Protocol("the shell was not set up".into()));
                };
                let mark = format!("{}{id}", boot.key);
                self.pending = Some(Pending::Command);
                self.send_line("__vmt_send_output; : >\"$__vmt_to\"\n")
                    .await?;
                let out = self.read_answer(&mark).await?;
                self.send_rest().await?;
                out
            }
        };
        if killed {
            out.ending = Ending::Timeout;
        }
        Ok(Some(out))
    }

    /// Waits for the first command's line to answer ([`guest::first_line`]):
    /// the answer's header (left in the buffer), `<mark>+` or `<mark>-`.
    async fn first_answer(&mut self, mark: &str) -> Result<FirstAnswer, ShellError> {
        let kinds = [
            (format!("{mark} "), FirstAnswer::Answer),
            (format!("{mark}+\n"), FirstAnswer::Big),
            (format!("{mark}-\n"), FirstAnswer::NotRun),
        ];
        loop {
            let found = kinds
                .iter()
                .filter_map(|(needle, kind)| {
                    memmem::find(&self.buf, needle.as_bytes()).map(|i| (i, needle.len(), *kind))
                })
                .min_by_key(|&(i, _, _)| i);
            if let Some((i, len, kind)) = found {
                if kind != FirstAnswer::Answer {
                    self.buf.drain(..i + len);
                }
                return Ok(kind);
            }
            self.fill().await?;
        }
    }

    /// Stops the first command's line: the functions it needs for that, on
    /// the console ([`guest::stop_line`]), then the request on the control
    /// port, answered once the command is killed ([`Shell::ctl_kill`]).
    async fn stop_first(&mut self) -> Result<(), ShellError> {
        self.stream.write_all(guest::stop_line().as_bytes()).await?;
        self.ctl_kill().await
    }

    /// Writes raw bytes into the shell (the interactive `shell_interact`,
    /// after [`Shell::raw_mode`]).
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
        self.boot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next line the host sent to a fake guest.
    pub(super) async fn next_line(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> String {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(reader, &mut line)
            .await
            .unwrap();
        line
    }

    /// The port bootstrap's answer is taken only whole: a call cut short
    /// before it is complete reads it again from the start.
    #[test]
    fn the_port_answer_is_found_only_whole() {
        let whole = b"junk N ok ctl cmd\nN serving\nK-1 0 done 0\n";
        let answer = whole.len() - b"K-1 0 done 0\n".len();
        for cut in 0..answer {
            let part = PortAnswer::find(&whole[..cut], b"N ");
            assert!(
                part.is_none(),
                "{:?}",
                String::from_utf8_lossy(&whole[..cut])
            );
        }
        let a = PortAnswer::find(whole, b"N ").unwrap();
        assert_eq!(&whole[..a.start], b"junk ");
        assert_eq!(a.status, b"ok ctl cmd");
        assert_eq!(a.state.as_deref(), Some(&b"serving"[..]));
        assert_eq!(&whole[a.end..], b"K-1 0 done 0\n");
        // A failed report has no state after it.
        let a = PortAnswer::find(b"no /run\nN failed\n", b"N ").unwrap();
        assert_eq!((a.status.as_slice(), a.state), (&b"failed"[..], None));
    }

    /// The key of [`bootstrapped_pair`]'s shell.
    pub(super) const KEY: &str = "vmtkey-";

    /// A shell connected to a fake guest, as if bootstrapped (without a
    /// control port).
    pub(super) fn bootstrapped_pair() -> (Shell, UnixStream) {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut shell = Shell::new(host);
        shell.boot = Some(Boot {
            key: KEY.into(),
            ctl: false,
            cmd: false,
            names: None,
            rest: Rest::Done,
        });
        (shell, guest)
    }

    /// Undoes [`framing::printf_format`] (what bash's `printf` does with
    /// it).
    pub(super) fn unprintf(f: &str) -> Vec<u8> {
        let b = f.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }
}
