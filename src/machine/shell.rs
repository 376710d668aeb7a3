//! The backdoor shell: NixOS test instrumentation gives a root `bash` on the
//! virtio console `hvc0`, reached through QEMU's `-chardev socket,id=shell`.
//! The guest announces it with `Spawning backdoor root shell...`.
//!
//! On top of that plain shell (nothing else is assumed of the guest) the
//! driver defines a few bash functions once per boot ([`BOOTSTRAP`] and
//! [`BOOTSTRAP_REST`]; sent through the command port where the guest has
//! it, since bash reads the console a byte at a time, the rest after the
//! first command's record; no process is started for it but the control
//! listener) and then frames every command as
//!
//! ```text
//! host  → guest: __vmt_exec <n> <timeout ms|-> <isolate> '<command>' [/dev/null]
//!            or: __vmt_until <n> <timeout ms|-> <succeed|fail|settled> <isolate> '<command>'
//! guest → host : <key><n> <status> <done|timeout|cancel> <0|1|2>\n
//!                then, if 1: chunks of stdout, each `<≤128 KiB raw>\n<key><n> c\n`,
//!                the host answering `more.` or `done.` after each;
//!                if 2: `<≤4096 characters raw>\n<key><n> c\n`, not answered
//! ```
//!
//! `<n>` numbers the commands of a boot, and `<key>` is a random string the
//! bootstrap was given: the command line stays short, and the delimiters
//! stay unguessable. `/dev/null` as the last argument means the output is
//! not kept. The command runs with no positional parameters, as with
//! `bash -c`.
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
//! under TCG). The acknowledged chunks below stay, though a port never
//! drops data.
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
//!   answer.
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
//! still the only thing in flight.
//!
//! Waits (`wait_until_succeeds` and friends) loop in the guest with a 50 ms
//! pause and no host round trip per try; the guest checks their deadline
//! between tries, and the host stops a try that outlives it by a second. A
//! system unit wait does not loop at all: it listens to systemd over D-Bus
//! ([`Shell::unit_wait`]).

use std::collections::HashSet;
use std::time::Duration;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::dbus;

/// The size of one output chunk (must match `bs=` in [`BOOTSTRAP`]).
const CHUNK: usize = 131072;

/// The line a NixOS backdoor prints when its shell is ready.
pub const MARKER: &[u8] = b"Spawning backdoor root shell...";

/// The bash functions the driver defines in the guest's backdoor shell.
pub const BOOTSTRAP: &str = r#"
__vmt_init() {
  # The driver's files are `$__vmt_at<name>`, in the first tmpfs-like
  # directory bash can create a file in: no process is started (each costs
  # 25 ms or more under TCG), and FIFOs are made when first needed.
  local d
  __vmt_key=$1 __vmt_at=
  for d in /run /dev/shm /tmp; do
    { : >"$d/.nix-vmtest-$$.o.0"; } 2>/dev/null && __vmt_at=$d/.nix-vmtest-$$. && break
  done
  [ -n "$__vmt_at" ] || return 1
  __vmt_pidfile=$d/.nix-vmtest-ctl.pid
  # Commands get this as stderr. The shell's own stderr is /dev/null where
  # it reaps commands: bash reports a child killed at a deadline there
  # ("Killed ( eval ... )"), which would say nothing to a test's reader.
  exec {__vmt_err}>&2
  # Commands see `$0` as under `bash -c` (the shell's is the console).
  BASH_ARGV0=bash
  __vmt_n=0 __vmt_out=${__vmt_at}o.0 __vmt_spent=
  # The port bootstrap's first line found the ports already.
  [[ -v __vmt_cmdport ]] || __vmt_ports
  __vmt_ctl_start
}
__vmt_ctl_start() {
  local old f
  if [[ -n $__vmt_listener ]] && kill -0 "$__vmt_listener" 2>/dev/null; then return; fi
  __vmt_listener=
  [[ -n $__vmt_ctlport ]] || return 0
  # The listener of a backdoor shell that was killed outlives it where no
  # service manager kills what the shell left (init's respawn): it would
  # read requests meant for this one, and kill nothing. It holds the port.
  if read -r old 2>/dev/null <"$__vmt_pidfile" && [[ -n $old && $old != *[!0-9]* ]]; then
    for f in /proc/"$old"/fd/*; do
      [[ $f -ef $__vmt_ctlport ]] && { kill -KILL "$old" 2>/dev/null; break; }
    done
  fi
  # An interactive shell would note the job on the console ("[1] 123").
  # The listener holds no port but its own: a virtio port opens once at a
  # time, and the command port must close when the serve loop leaves.
  { __vmt_listen "$__vmt_ctlport" </dev/null >/dev/null & } 2>/dev/null
  __vmt_listener=$!
}
__vmt_listen() {
  # The listener writes its own pid file: the shell goes on meanwhile.
  local c req kids k
  echo "$BASHPID" 2>/dev/null >"$__vmt_pidfile"
  exec {c}<>"$1" || return
  while read -r -d . -u "$c" req; do
    kids=()
    read -r -a kids </proc/$$/task/$$/children
    for k in "${kids[@]}"; do
      [[ $k == "$BASHPID" ]] || __vmt_kill "$k"
    done
    # The shell is not signalled: bash catches a trapped signal without
    # SA_RESTART, so it could cut the shell's write of an answer short
    # (EINTR; on a tty, bash's printf writes a line at a time). A wait
    # loop whose try was killed sees its deadline passed, or `cancel.`.
    printf '%s done\n' "$req" >&"$c"
  done
}
__vmt_next() {
  # After an answer: the next command writes to a fresh file (a detached
  # child may still hold the last one open), and a spent one is emptied.
  # Old files go every 200 commands, in a subshell: expanding 200 names in
  # this shell scatters its heap, and every later fork then costs more
  # page faults (about 10% more per command, measured under TCG).
  if [[ -n $__vmt_spent ]]; then : >"$__vmt_out"; __vmt_spent=; fi
  if (( ++__vmt_n % 200 == 0 )); then ( rm -f "$__vmt_at"o.* ); fi
  __vmt_out=${__vmt_at}o.$__vmt_n
}
__vmt_records() {
  # A record is `<length: 6 hex digits> <kind><body>`, all ASCII, so `read
  # -N` (one read(2) for all of it; a tty or a newline delimiter would make
  # bash read a byte at a time) counts bytes in any locale. `cancel.` (7
  # bytes, like a header) may come between records and is skipped.
  # Kinds: `r<id> <command>` and `n<id> <command>` run a command as
  # `__vmt_exec` does when the host stops commands (output kept, or not);
  # `e<line>` is evaluated here, with the console as stderr again.
  printf '%s serving\n' "$__vmt_sync"
  while read -r -N 7 __vmt_h; do
    [[ $__vmt_h == cancel. ]] && continue
    read -r -N $((16#$__vmt_h)) __vmt_rec || break
    case $__vmt_rec in
      [rn]*)
        __vmt_id=${__vmt_rec%% *} __vmt_cmd=${__vmt_rec#* } __vmt_to=$__vmt_out
        [[ $__vmt_id == n* ]] && __vmt_to=/dev/null
        __vmt_id=${__vmt_id#?}
        ( eval "$__vmt_cmd" ) 2>&$__vmt_err- </dev/null >"$__vmt_to"
        __vmt_st=$?
        if [[ -s $__vmt_to ]]; then
          __vmt_why=; __vmt_send_output
        else
          printf '%s%s %s done 0\n' "$__vmt_key" "$__vmt_id" "$__vmt_st"
        fi
        __vmt_next
        ;;
      *) eval "${__vmt_rec#?}" 2>&$__vmt_err ;;
    esac
  done
  return 0
}
__vmt_send_output() {
  # The answer of a command whose output file is not empty.
  local small
  __vmt_spent=1
  # Output of up to 4096 characters without a NUL byte goes in one write
  # with the answer, and no acknowledgement is awaited: `read` stops at a
  # NUL or after 4097 characters (bytes kept as they are; a character
  # is a byte in the C locale, at most 6 in a UTF-8 one), and fails only
  # at the end. (`LC_ALL=C` here would make bash switch locales twice
  # per command: 0.4 to 1.9 ms under TCG with LANG=C.UTF-8.)
  if ! IFS= read -r -d '' -n 4097 small <"$__vmt_to"; then
    printf '%s%s %s %s 2\n%s\n%s%s c\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" \
      "${__vmt_why:-done}" "$small" "$__vmt_key" "$__vmt_id"
    return
  fi
  printf '%s%s %s %s 1\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
  __vmt_send
}
__vmt_send() {
  local i=0 ack
  while :; do
    dd if="$__vmt_to" bs=131072 skip=$i count=1 2>/dev/null
    printf '\n%s%s c\n' "$__vmt_key" "$__vmt_id"
    read -r -d . -u 0 ack || break
    [[ $ack == more ]] || break
    i=$((i + 1))
  done
}
__vmt_served() {
  # The serve loop ended with status $1 and closed the port: the console
  # says so (nothing if it never served).
  [[ -n $__vmt_sync ]] || return 0
  if (( $1 != 0 )); then
    printf '%s failed\n' "$__vmt_sync"
  elif [[ -n $__vmt_left ]]; then
    printf '%s left\n' "$__vmt_left"
  else
    printf '%s ended\n' "$__vmt_sync"
  fi
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
"#;

/// The rest of the guest's functions: those the first command through the
/// command port needs are in [`BOOTSTRAP`]; these are defined after that
/// command's answer, in the same exchange as its record (the port
/// bootstrap), or before any other request (see [`Rest`]).
pub const BOOTSTRAP_REST: &str = r#"
__vmt_ports() {
  # The devices of the driver's virtio ports, in __vmt_cmdport and
  # __vmt_ctlport (empty if the guest has none).
  local p name
  __vmt_cmdport= __vmt_ctlport=
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] && read -r name <"$p/name" && [ -c "/dev/${p##*/}" ] || continue
    case $name in
      org.nix-vmtest.cmd) __vmt_cmdport=/dev/${p##*/} ;;
      org.nix-vmtest.ctl) __vmt_ctlport=/dev/${p##*/} ;;
    esac
  done
}
__vmt_fifo() {
  [[ -p $1 ]] || mkfifo "$1"
}
__vmt_serve() {
  # <sync>: from now on commands come as records on the command port, and
  # answers go there too. The host first writes `<sync>.` on the port:
  # whatever an earlier boot left there before it is skipped. If the port
  # cannot be opened or read, the console says so. The loop ends on
  # `__vmt_left=<n>; break`, and `<n> left` comes on the console once the
  # port is closed: the guest's driver drops what reaches a port after its
  # last close, so the host may write the next `<sync>.` only then.
  __vmt_sync=$1 __vmt_left=
  set --
  # Called as a statement, never in a condition: bash ignores `set -e` in
  # all that a condition runs, subshells included, and the loop runs the
  # test's commands (`set -euo pipefail; false; echo after` must stop).
  __vmt_loop <>"$__vmt_cmdport" >&0 2>/dev/null
  __vmt_served $?
}
__vmt_loop() {
  __vmt_h=
  while [[ $__vmt_h != *"$__vmt_sync" ]]; do read -r -d . __vmt_h || return 1; done
  __vmt_records
}
__vmt_cancelled() {
  local line
  read -t 0 -u 0 && read -r -d . -u 0 line && [[ $line == cancel ]]
}
__vmt_now() {
  __vmt_t=${EPOCHREALTIME//[!0-9]/}
}
__vmt_try() {
  # Runs the command once (deadline: $__vmt_dl); no positional parameters,
  # so the command sees none.
  local pid r line kills=0
  if [[ -n $__vmt_listener ]]; then
    # The host stops a command through the control port.
    { ( eval "$__vmt_cmd" ) 2>&$__vmt_err- </dev/null >"$__vmt_to"; } 2>/dev/null
    __vmt_st=$? __vmt_why=
    return
  fi
  __vmt_fifo "${__vmt_at}done" || { __vmt_st=1 __vmt_why=; return; }
  if [[ $__vmt_iso == 1 ]]; then
    # A command that may leave background subshells runs in an inner
    # subshell that never holds the FIFO's write end (bash keeps a saved
    # copy of a redirected fd, and forked subshells inherit it).
    { exec 3>"${__vmt_at}done"; ( exec 3>&-; eval "$__vmt_cmd" ); } </dev/null >"$__vmt_to" &
  else
    { exec 3>"${__vmt_at}done"; eval "$__vmt_cmd" 3>&-; } </dev/null >"$__vmt_to" &
  fi
  pid=$!
  exec {r}<"${__vmt_at}done"
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
    if [[ -n $__vmt_dl ]] && (( __vmt_t >= __vmt_dl )); then
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
  if [[ -s $__vmt_to ]]; then
    __vmt_send_output
  else
    printf '%s%s %s %s 0\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
  fi
}
__vmt_deadline() {
  __vmt_dl=
  [[ $1 == - ]] && return
  __vmt_now
  __vmt_dl=$(( __vmt_t + $1 * 1000 ))
}
__vmt_exec() {
  # <id> <timeout ms|-> <isolate 0|1> <command> [/dev/null]
  __vmt_id=$1 __vmt_iso=$3 __vmt_cmd=$4 __vmt_to=${5:-$__vmt_out}
  __vmt_deadline "$2"
  __vmt_try
  __vmt_reply
  __vmt_next
}
__vmt_bus_start() {
  # <n> [user]: a bridge to the system manager's private socket, or to the
  # user's manager's (root may connect to it).
  local path=/run/systemd/private uid
  if [[ -n ${2-} ]]; then
    uid=$(id -u -- "$2" 2>/dev/null) || { printf '%s no-user\n' "$1"; return; }
    path=/run/user/$uid/systemd/private
    [ -S "$path" ] || { printf '%s no-manager\n' "$1"; return; }
  fi
  if [ -S "$path" ] && command -v systemd-stdio-bridge >/dev/null 2>&1 &&
    __vmt_fifo "${__vmt_at}bus"; then
    # When systemd closes the connection (a daemon-reexec), the bridge
    # exits, and the console says so after its last message.
    {
      systemd-stdio-bridge --bus-path="unix:path=$path" <"${__vmt_at}bus" 2>/dev/null
      printf '%s bus-ended\n' "$1"
    } &
    __vmt_bus_pid=$!
    # Read-write: opening never blocks, and a write never raises SIGPIPE
    # if the bridge is gone.
    exec {__vmt_bus}<>"${__vmt_at}bus"
    printf '%s bridge\n' "$1"
  else
    printf '%s no-bridge\n' "$1"
  fi
}
__vmt_bus_stop() {
  # Reaped here, so that bash's "Killed" notice goes nowhere instead of to
  # the console log after every unit wait.
  if [[ -n $__vmt_bus_pid ]]; then
    __vmt_kill "$__vmt_bus_pid"
    { wait "$__vmt_bus_pid"; } 2>/dev/null
  fi
  if [[ -n $__vmt_bus ]]; then exec {__vmt_bus}>&-; fi
  __vmt_bus= __vmt_bus_pid=
  printf '%s bus-stopped\n' "$1"
}
__vmt_until() {
  # <id> <timeout ms|-> <succeed|fail|settled> <isolate 0|1> <command>
  __vmt_id=$1 __vmt_iso=$4 __vmt_cmd=$5
  __vmt_deadline "$2"
  while :; do
    __vmt_to=$__vmt_out
    __vmt_try
    [[ -n $__vmt_why ]] && break
    case $3 in
      succeed) (( __vmt_st == 0 )) && break ;;
      fail) (( __vmt_st != 0 )) && break ;;
      *) (( __vmt_st != 1 )) && break ;;
    esac
    __vmt_now
    if [[ -n $__vmt_dl ]] && (( __vmt_t >= __vmt_dl )); then __vmt_why=timeout; break; fi
    # A pause: nothing ever writes the FIFO. (Opened for the pause only,
    # so that commands inherit no descriptor of the driver's.)
    __vmt_fifo "${__vmt_at}tick" && read -t 0.05 <>"${__vmt_at}tick"
    if __vmt_cancelled; then __vmt_why=cancel; break; fi
    # This try's output is not sent: free it.
    __vmt_spent=1
    __vmt_next
  done
  __vmt_reply
  __vmt_next
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
    /// Only inside [`Shell::unit_wait`], which then polls instead.
    #[error("systemd-stdio-bridge in the guest {0}")]
    BusGone(&'static str),
}

/// The state of one D-Bus session.
struct Bus {
    /// What the guest prints after the bridge's last message when the
    /// bridge exits (`<n> bus-ended`; a D-Bus message starts with `l` or
    /// `B`, a nonce with `v`).
    ended: Vec<u8>,
    serial: u32,
    unit_path: Option<String>,
    /// Job changes matter too (the unit is inactive: is a job pending?).
    watch_jobs: bool,
    /// A signal about the unit (or the jobs) arrived since the last look.
    changed: bool,
    /// The unit's `ActiveState` as the last signal that carried it said.
    state: Option<String>,
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
    /// Where the shell reads and writes now: the console, or the command
    /// port while the guest serves it.
    stream: UnixStream,
    buf: Vec<u8>,
    /// Set once [`BOOTSTRAP`] has run in this boot of the guest.
    bootstrapped: bool,
    /// What a cancelled call left running in the guest.
    pending: Option<Pending>,
    /// Whether [`BOOTSTRAP_REST`] is defined in the guest yet.
    rest: Rest,
    /// The control port (`virtserialport` named [`super::qemu::CTL_PORT`]).
    ctl: Option<Ctl>,
    /// The guest listens on the control port: commands run without a
    /// watcher in the guest, and the host stops them through the port.
    guest_ctl: bool,
    /// The stream not in use: the command port (`virtserialport` named
    /// [`super::qemu::CMD_PORT`]) while the shell reads the console, the
    /// console while it serves the port.
    other: Option<Side>,
    /// The guest has the command port.
    guest_cmd: bool,
    /// The guest's serve loop reads and writes the command port (`stream`
    /// is the port): the host sends records ([`record`]), and the guest
    /// answers there.
    serving: bool,
    /// The nonce of the serve loop that runs (or ran last): it says on the
    /// console `<sync> ended` if it stops reading the port by itself.
    sync: String,
    /// Random per bootstrap; with a command's serial number it marks the
    /// command's answer and output chunks (the command line itself carries
    /// only the serial: the guest reads it a byte at a time).
    key: String,
    serial: u64,
    /// What bash in the guest resolves itself (builtins, keywords,
    /// functions, aliases), as the bootstrap listed it; `None` if it could
    /// not, or if a `command_not_found_handle` is defined: then no command
    /// is run with `exec` ([`exec_form`]).
    shell_names: Option<HashSet<String>>,
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

/// [`BOOTSTRAP_REST`] in the guest. The port bootstrap defines only what
/// the first command needs; the rest, with the list of names bash resolves
/// itself, goes in the record after that command's (so the guest defines
/// it once the answer is out), or before any other request.
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

/// How [`Shell::unit_wait`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitWait {
    /// The unit is active.
    Active,
    /// The unit cannot become active: it failed, or it is inactive and no
    /// job is pending (nixpkgs' messages).
    Hopeless(String),
    /// The time ran out; the unit's last state.
    TimedOut(String),
    /// The guest cannot be asked over D-Bus: poll instead, for the reason
    /// given (for the log).
    Unavailable(String),
}

/// systemd's manager object and interface.
const SYSTEMD: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// How often a unit wait asks systemd again with no signal in between (a
/// safety net: systemd sends every change to private-bus clients).
const UNIT_RECHECK: Duration = Duration::from_secs(2);

/// How long systemd may take to answer over the bridge before the bridge
/// counts as gone (systemd re-executed, say) and the wait polls instead.
const BUS_SILENCE: Duration = Duration::from_secs(10);

/// Bytes as a `printf` format that writes exactly them (bash's `printf`
/// turns `\xHH` into the byte; nothing else in the format is special).
fn printf_format(bytes: &[u8]) -> String {
    let mut f = String::with_capacity(bytes.len() * 4);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"./_-:".contains(&b) {
            f.push(b as char);
        } else {
            f.push_str(&format!("\\x{b:02x}"));
        }
    }
    f
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

/// `command` with its last part run by `exec`, when that part is one
/// plain simple command whose name bash does not resolve itself: the
/// command's subshell then becomes the program instead of forking it once
/// more (`bash -c` does this on its own, but bash does not after `eval`),
/// which halves the forks of most commands. `None` unless that is certain:
/// the part must be words of letters, digits and `_-./:=,+%@~^*?[]`,
/// single-quoted strings, and double-quoted ones without `$`, `` ` `` or
/// `\`; its first word a plain name, not an assignment, and not in
/// `shell_names`. The status is the same either way (127 for a missing
/// program, with bash's `exec: … not found` on the console).
pub fn exec_form(command: &str, shell_names: &HashSet<String>) -> Option<String> {
    const PREFIX: &str = super::USER_COMMAND_PREFIX;
    let (prefix, body) = match command.strip_prefix(PREFIX) {
        Some(rest) => (PREFIX, rest),
        None => ("", command),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,+%@~^".contains(c);
    let body = body.trim_matches([' ', '\t']);
    let name = body.split([' ', '\t']).next()?;
    if name.is_empty()
        || name.starts_with('-')
        || name.contains('=')
        || !name.chars().all(plain)
        || shell_names.contains(name)
    {
        return None;
    }
    // Inside single quotes anything goes; inside double quotes anything
    // but what expands there.
    let mut quote = None;
    for c in body.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if "$`\\".contains(c) => return None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if !(plain(c) || " \t*?[]".contains(c)) => return None,
            None => {}
        }
    }
    quote.is_none().then(|| format!("{prefix}exec {body}"))
}

/// `command` run by a bash of its own, as `bash -c` (nixpkgs' framing), when
/// it names `$$`: that is the pid of the shell that runs the command, and
/// in a subshell of the backdoor shell it would be the backdoor shell's
/// (`kill $$` would kill it). `exec` where the guest's subshell may become
/// the program (see [`exec_form`]).
pub fn own_shell_form(command: &str, exec: bool) -> Option<String> {
    (command.contains("$$") || command.contains("${$}")).then(|| {
        format!(
            "{}\"$BASH\" -c {}",
            if exec { "exec " } else { "" },
            shell_quote(command)
        )
    })
}

/// A record for the guest's serve loop (`__vmt_loop` in [`BOOTSTRAP`]):
/// the body's length as 6 hex digits and a space, then the kind and the
/// body. A record is all ASCII, so that the loop's `read -N` (which counts
/// characters) reads exactly it in any locale: an `e` line with other
/// bytes goes as `eval $'…'` with those bytes escaped.
fn record(kind: char, body: &str) -> Result<Vec<u8>, ShellError> {
    // bash drops NUL bytes from what it reads, as nixpkgs' shell does from
    // its command line; `read -N` would not count them, and wait.
    let without_nul;
    let body = if body.contains('\0') {
        without_nul = body.replace('\0', "");
        &without_nul
    } else {
        body
    };
    let escaped;
    let body = if body.is_ascii() {
        body
    } else {
        debug_assert_eq!(kind, 'e', "only `e` records may carry non-ASCII");
        escaped = format!("eval {}", ascii_quote(body));
        &escaped
    };
    let len = body.len() + 1;
    if len > 0xff_ffff {
        return Err(ShellError::TooLong(len));
    }
    Ok(format!("{len:06x} {kind}{body}").into_bytes())
}

/// `s` as a bash `$'…'` string of ASCII characters only.
fn ascii_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 8);
    q.push_str("$'");
    for &b in s.as_bytes() {
        match b {
            b'\\' | b'\'' => {
                q.push('\\');
                q.push(b as char);
            }
            b' '..=b'~' => q.push(b as char),
            _ => q.push_str(&format!("\\x{b:02x}")),
        }
    }
    q.push('\'');
    q
}

/// Bash source as the console carries it: without comment lines and
/// indentation (bash reads a console a byte at a time; the bootstrap is
/// half as long this way).
fn compact(source: &str) -> String {
    source
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bootstrap as it goes on the console: `PS2=` first, since a shell
/// that reads the console interactively would otherwise prompt for every
/// continuation line; then all the functions, [`init_and_report`] and
/// [`names_report`].
fn console_bootstrap(n: &str, key: &str) -> String {
    format!(
        "PS2=\n{}\n{}\n{}\n{}\n",
        compact(BOOTSTRAP),
        compact(BOOTSTRAP_REST),
        init_and_report(n, key),
        names_report(n, true)
    )
}

/// The bash that runs `__vmt_init` and reports `<n> ok[ ctl][ cmd]`, or
/// `<n> failed`.
fn init_and_report(n: &str, key: &str) -> String {
    format!(
        "if __vmt_init {key}; then \
         printf '%s ok%s%s\\n' {n} \"${{__vmt_listener:+ ctl}}\" \"${{__vmt_cmdport:+ cmd}}\"; \
         else printf '%s failed\\n' {n}; fi"
    )
}

/// The bash that prints `<n> names`, the names bash resolves itself
/// (builtins, keywords, functions, aliases; `#` if it cannot list them),
/// which [`exec_form`] must not exec, then `<n> end`. On the `console`,
/// the names go in one write (bash's stdout is line-buffered: a write a
/// name, and there each one spins in the guest until QEMU took it).
fn names_report(n: &str, console: bool) -> String {
    let names = if console {
        "__vmt_h=; { compgen -b -k -A function -a >\"${__vmt_at}names\" && \
         IFS= read -r -d '' __vmt_h <\"${__vmt_at}names\"; printf '%s' \"${__vmt_h:-#}\"; } 2>/dev/null"
    } else {
        "{ compgen -b -k -A function -a || echo '#'; } 2>/dev/null"
    };
    format!("printf '%s names\\n' {n}; {names}; printf '\\n%s end\\n' {n}")
}

fn nonce() -> String {
    format!("vmt{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The last argument of a command line whose output is not kept (stdout
/// goes there instead of a fresh file).
fn discard(capture: bool) -> &'static str {
    if capture {
        ""
    } else {
        " /dev/null"
    }
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
            ctl: None,
            guest_ctl: false,
            other: None,
            guest_cmd: false,
            serving: false,
            sync: String::new(),
            key: String::new(),
            serial: 0,
            shell_names: None,
            rest: Rest::Done,
        }
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

    /// Sends a line of bash (ending in a newline) to the backdoor shell: as
    /// a record while the guest serves the command port, else as it is.
    pub async fn send_line(&mut self, line: &str) -> Result<(), ShellError> {
        let bytes = self.framed(line)?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// A line of bash as the shell reads it now: a record while the guest
    /// serves the command port, else the line itself.
    fn framed(&self, line: &str) -> Result<Vec<u8>, ShellError> {
        if self.serving {
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
        let n = match self.other.as_mut().filter(|_| self.serving) {
            // The console stays quiet while the loop serves the port, but
            // for a loop that ended by itself.
            Some(console) => tokio::select! {
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
                    let ended = format!("{} ended\n", self.sync);
                    if memmem::find(&console.buf, ended.as_bytes()).is_some() {
                        console.buf.clear();
                        self.switch();
                        self.serving = false;
                        self.pending = None;
                        // What the loop did not run goes again.
                        if let Rest::Sent(_) = self.rest {
                            self.rest = Rest::Unsent;
                        }
                        return Err(ShellError::LoopEnded);
                    }
                    if console.buf.len() > CONSOLE_KEPT {
                        console.buf.drain(..console.buf.len() - ended.len());
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
        if self.serving {
            self.switch();
        }
        self.bootstrapped = false;
        self.guest_ctl = false;
        self.guest_cmd = false;
        self.serving = false;
        self.pending = None;
        self.rest = Rest::Done;
    }

    /// Sets the backdoor shell up after a boot: defines [`BOOTSTRAP`]'s
    /// functions, runs `__vmt_init` and lists the names bash resolves
    /// itself. Through the command port where the guest has it
    /// ([`Shell::bootstrap_on_port`]), else on the console.
    async fn bootstrap(&mut self) -> Result<(), ShellError> {
        let n = nonce();
        let key = format!("{}-", nonce());
        self.rest = Rest::Done;
        self.shell_names = None;
        if self.other.is_some() && self.bootstrap_on_port(&n, &key).await? {
            return Ok(());
        }
        let script = console_bootstrap(&n, &key);
        self.stream.write_all(script.as_bytes()).await?;
        let before = self.read_until(format!("{n} ").as_bytes()).await?;
        self.take_report(&key, before).await?;
        self.rest = Rest::Sent(n);
        self.take_names().await
    }

    /// Reads what `init_and_report` prints after `<n> ` (on the stream in
    /// use): `ok` and the ports.
    async fn take_report(&mut self, key: &str, before: Vec<u8>) -> Result<(), ShellError> {
        let status = self.read_until(b"\n").await?;
        if !status.starts_with(b"ok") {
            return Err(ShellError::Bootstrap(
                String::from_utf8_lossy(&before).trim().to_string(),
            ));
        }
        let has = |port: &[u8]| status.split(|&b| b == b' ').any(|w| w == port);
        self.guest_ctl = has(b"ctl") && self.ctl.is_some();
        self.guest_cmd = has(b"cmd") && self.other.is_some();
        self.key = key.to_string();
        self.bootstrapped = true;
        Ok(())
    }

    /// Defines [`BOOTSTRAP_REST`] in the guest if it is not yet, and reads
    /// the names it lists.
    async fn complete(&mut self) -> Result<(), ShellError> {
        if self.rest == Rest::Unsent {
            let n = nonce();
            let bytes = self.framed(&self.rest_line(&n))?;
            self.rest = Rest::Sent(n);
            self.stream.write_all(&bytes).await?;
        }
        self.take_names().await
    }

    /// [`BOOTSTRAP_REST`] and the [`names_report`], as one line of bash
    /// for the stream in use.
    fn rest_line(&self, n: &str) -> String {
        format!(
            "{}\n{}\n",
            compact(BOOTSTRAP_REST),
            names_report(n, !self.serving)
        )
    }

    /// Reads the answer of [`BOOTSTRAP_REST`]'s line if it is due: the
    /// names bash resolves itself, up to `<n> end`.
    async fn take_names(&mut self) -> Result<(), ShellError> {
        let Rest::Sent(n) = &self.rest else {
            return Ok(());
        };
        let (head, end) = (format!("{n} names\n"), format!("\n{n} end\n"));
        self.read_until(head.as_bytes()).await?;
        let names = self.read_until(end.as_bytes()).await?;
        let names: HashSet<String> = String::from_utf8_lossy(&names)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        self.shell_names =
            (!names.contains("#") && !names.contains("command_not_found_handle")).then_some(names);
        self.rest = Rest::Done;
        Ok(())
    }

    /// The bootstrap in one exchange, through the command port: bash reads
    /// a port in blocks (`read -N`), where it reads the console a byte at a
    /// time (about 30 µs each under TCG, 0.2 s for the functions). A short
    /// line on the console finds the ports, skips what an earlier boot left
    /// on the command port up to `<n>.`, and evaluates one record
    /// ([`record`]) with the functions the first command needs
    /// ([`BOOTSTRAP`]), `__vmt_init`, the report, and then the serve loop
    /// itself (`__vmt_records`), still on the port it opened: the first
    /// command needs no other round trip. The rest ([`Rest`]) comes after
    /// it. `false` if the guest has no such port.
    async fn bootstrap_on_port(&mut self, n: &str, key: &str) -> Result<bool, ShellError> {
        let host_ctl = u8::from(self.ctl.is_some());
        let body = format!(
            "{}\n__vmt_sync={n} __vmt_left=; set --\n{}\n\
             if [[ {host_ctl} == 1 && -n $__vmt_listener && -n $__vmt_cmdport ]]; then \
             __vmt_records 2>/dev/null; else __vmt_sync=; printf '%s idle\\n' {n}; fi\n",
            compact(BOOTSTRAP),
            init_and_report(n, key)
        );
        let mut bytes = format!("{n}.").into_bytes();
        bytes.extend(record('e', &body)?);
        let Some(port) = self.other.as_mut() else {
            return Ok(false);
        };
        port.stream.write_all(&bytes).await?;
        // It finds both ports (what `__vmt_ports` does), so `__vmt_init`
        // need not look again.
        let line = format!(
            "PS2= __vmt_cmdport= __vmt_ctlport=; for __vmt_p in /sys/class/virtio-ports/*; do \
             read -r __vmt_h 2>/dev/null <\"$__vmt_p/name\"; case $__vmt_h in \
             {cmd}) __vmt_cmdport=/dev/${{__vmt_p##*/}};; {ctl}) __vmt_ctlport=/dev/${{__vmt_p##*/}};; \
             esac; done; [[ -c $__vmt_ctlport ]] || __vmt_ctlport=; \
             if [[ -c $__vmt_cmdport ]]; then {{ __vmt_h=; while [[ $__vmt_h != *{n} ]]; do \
             read -r -d . __vmt_h || break; done; [[ $__vmt_h == *{n} ]] && \
             read -r -N 7 __vmt_h && read -r -N $((16#$__vmt_h)) __vmt_h && eval \"${{__vmt_h#e}}\"; \
             }} <>\"$__vmt_cmdport\" >&0; __vmt_st=$?; fi; \
             if declare -F __vmt_served >/dev/null; then __vmt_served $__vmt_st; \
             else printf '%s noport\\n' {n}; fi\n",
            cmd = super::qemu::CMD_PORT,
            ctl = super::qemu::CTL_PORT
        );
        self.stream.write_all(line.as_bytes()).await?;
        // `<n> ok …` on the port, or `<n> noport` on the console.
        let head = format!("{n} ");
        let noport = format!("{n} noport\n");
        let before = loop {
            let Some(port) = self.other.as_mut() else {
                return Ok(false);
            };
            if let Some(i) = memmem::find(&port.buf, head.as_bytes()) {
                let before = port.buf[..i].to_vec();
                port.buf.drain(..i + head.len());
                break before;
            }
            if let Some(i) = memmem::find(&self.buf, noport.as_bytes()) {
                self.buf.drain(..i + noport.len());
                return Ok(false);
            }
            let got = tokio::select! {
                r = port.stream.read_buf(&mut port.buf) => r?,
                r = self.stream.read_buf(&mut self.buf) => r?,
            };
            if got == 0 {
                return Err(ShellError::Closed);
            }
        };
        // The rest comes on the port.
        self.switch();
        self.take_report(key, before).await?;
        self.read_until(format!("{n} ").as_bytes()).await?;
        let state = self.read_until(b"\n").await?;
        if state == b"serving" {
            self.serving = true;
            self.sync = n.to_string();
        } else {
            self.switch();
        }
        self.rest = Rest::Unsent;
        Ok(true)
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
        let delimiter = format!("\n{nonce} c\n");
        let with_output = parts.next();
        if with_output == Some("2") {
            // One small piece of output, not acknowledged.
            output = self.read_until(delimiter.as_bytes()).await?;
        } else if with_output == Some("1") {
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

    /// Ends what a cancelled call left: stops whatever the guest still
    /// does for it and skips what it sent.
    async fn settle(&mut self) -> Result<(), ShellError> {
        match self.pending.take() {
            Some(Pending::Command) => {
                if self.guest_ctl {
                    self.ctl_kill().await?;
                }
                // `cancel.` ends a running command, a wait, or a chunk
                // transfer. An idle serve loop skips it; an idle shell on
                // the console runs it as an unknown command (an error on
                // the serial console, nothing else).
                let n = nonce();
                let word: &[u8] = if self.serving {
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
            }
            Some(Pending::Bus(n)) => {
                self.send_bus_stop(&n).await?;
                self.read_until(format!("{n} bus-stopped\n").as_bytes())
                    .await?;
                self.pending = None;
            }
            Some(Pending::BusStopping(n)) => {
                // Kept until the answer is read, in case this call is
                // cancelled too.
                self.pending = Some(Pending::BusStopping(n.clone()));
                self.read_until(format!("{n} bus-stopped\n").as_bytes())
                    .await?;
                self.pending = None;
            }
            Some(Pending::Serve(n)) => self.serve_answer(n).await?,
            Some(Pending::Leave(n)) => self.leave_answer(n).await?,
            None => {}
        }
        Ok(())
    }

    /// Makes the shell ready for framed commands: settles a cancelled call,
    /// defines the helpers after a boot, and starts the serve loop if the
    /// guest has both ports (with `serve`), or ends it (without).
    async fn ready(&mut self, serve: bool) -> Result<(), ShellError> {
        self.settle().await?;
        if !self.bootstrapped {
            self.bootstrap().await?;
        }
        self.take_names().await?;
        if !serve {
            // Unit waits call the rest's functions on the console.
            self.complete().await?;
            self.leave().await?;
        }
        if serve && !self.serving && self.guest_cmd && self.guest_ctl {
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
        self.sync.clone_from(&n);
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
                self.serving = true;
                break;
            }
            if let Some(i) = memmem::find(&self.buf, failed.as_bytes()) {
                self.buf.drain(..i + failed.len());
                self.guest_cmd = false;
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
        if self.serving {
            // `__vmt_serve` (to serve again) is one of the rest.
            self.complete().await?;
            let n = nonce();
            let bytes = self.framed(&format!("__vmt_left={n}; break\n"))?;
            self.switch();
            self.serving = false;
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
        self.ready(true).await?;
        self.serial += 1;
        let id = self.serial;
        // What marks this command's answer and output chunks.
        let mark = format!("{}{id}", self.key);
        // With the control port, the host stops a command at its deadline
        // (a wait's tries: a little after; the guest checks it between
        // tries), and a command costs the guest one fork and nothing else.
        let kill_after = match req {
            Request::Exec { timeout, .. } => timeout,
            Request::Until { timeout, .. } => timeout.map(|t| t + UNTIL_GRACE),
        }
        .filter(|_| self.guest_ctl);
        // The first plain command after the port bootstrap goes before the
        // rest of the functions; anything else needs them first.
        let plain =
            self.serving && matches!(req, Request::Exec { command, .. } if command.is_ascii());
        if !plain {
            self.complete().await?;
        }
        // The command as sent: in its exec form only where the host stops
        // commands (the guest's own watcher, without the port, needs the
        // subshell it forks).
        let sent = |command: &str| {
            own_shell_form(command, self.guest_ctl)
                .or_else(|| {
                    self.shell_names
                        .as_ref()
                        .filter(|_| self.guest_ctl)
                        .and_then(|names| exec_form(command, names))
                })
                .unwrap_or_else(|| command.to_string())
        };
        let mut sent_bytes = match req {
            // The serve loop runs a plain command itself, with no function
            // call and nothing to parse but the command.
            Request::Exec {
                command, capture, ..
            } if plain => {
                let kind = if capture { 'r' } else { 'n' };
                record(kind, &format!("{id} {}", sent(command)))?
            }
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
        if self.rest == Rest::Unsent {
            let n = nonce();
            sent_bytes.extend(record('e', &self.rest_line(&n))?);
            self.rest = Rest::Sent(n);
        }
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
        Ok(out)
    }

    /// Waits until systemd says `unit` is active, listening to systemd
    /// instead of asking it again and again: the guest runs
    /// `systemd-stdio-bridge` on its private socket with stdout on this
    /// console, and the driver writes D-Bus calls into the bridge through
    /// a FIFO (one `printf` each, so bash never reads D-Bus bytes). systemd
    /// sends every unit change to private-bus clients, so a change is seen
    /// when it happens, and the guest does nothing in between. With
    /// `user`, the bridge (still root's) goes to that user's manager
    /// (`/run/user/<uid>/systemd/private`); a user the guest does not have
    /// is hopeless, and a manager that does not run yet is polled for.
    ///
    /// The checks are those of nixpkgs' `wait_for_unit`: `active` ends the
    /// wait, `failed` is hopeless, and so is `inactive` when no job at all
    /// is pending (asked again once, as nixpkgs does).
    pub async fn unit_wait(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<UnitWait, ShellError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // On the console: systemd-stdio-bridge makes its stdout
        // non-blocking, and on the port that open file is also the serve
        // loop's stdin, whose reads would then fail.
        self.ready(false).await?;
        let n = nonce();
        self.pending = Some(Pending::Bus(n.clone()));
        let user_arg = user.map(|u| format!(" {}", shell_quote(u)));
        self.send_line(&format!(
            "__vmt_bus_start {n}{}\n",
            user_arg.unwrap_or_default()
        ))
        .await?;
        self.read_until(format!("{n} ").as_bytes()).await?;
        let answer = self.read_until(b"\n").await?;
        if answer != b"bridge" {
            self.pending = None;
            let user = user.unwrap_or("root");
            return Ok(match &answer[..] {
                b"no-user" => UnitWait::Hopeless(format!("there is no user \"{user}\" in the guest")),
                b"no-manager" => UnitWait::Unavailable(format!(
                    "the systemd user manager of \"{user}\" does not run (yet)"
                )),
                _ => UnitWait::Unavailable(
                    "systemd-stdio-bridge or systemd's private socket is not available in the guest"
                        .into(),
                ),
            });
        }
        let result = match self.bus_session(&n, unit, deadline).await {
            Err(ShellError::BusGone(what)) => Ok(UnitWait::Unavailable(format!(
                "systemd-stdio-bridge {what} (systemd re-executed?)"
            ))),
            Err(e @ (ShellError::Closed | ShellError::Io(_))) => return Err(e),
            r => r,
        };
        // The wait returns now; the next call reads the guest's answer.
        self.send_bus_stop(&n).await?;
        result
    }

    /// Asks the guest to end a D-Bus session (it kills the bridge); the
    /// next call waits for its answer.
    async fn send_bus_stop(&mut self, n: &str) -> Result<(), ShellError> {
        self.send_line(&format!("__vmt_bus_stop {n}\n")).await?;
        self.pending = Some(Pending::BusStopping(n.to_string()));
        Ok(())
    }

    async fn bus_session(
        &mut self,
        n: &str,
        unit: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<UnitWait, ShellError> {
        let mut bus = Bus {
            ended: format!("{n} bus-ended\n").into_bytes(),
            serial: 0,
            unit_path: None,
            watch_jobs: false,
            changed: false,
            state: None,
        };
        self.bus_write(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").await?;
        // The bridge answers `OK <guid>`, unless it could not connect to
        // systemd and exited.
        let hello = async {
            loop {
                if let Some(i) = memmem::find(&self.buf, b"\r\n") {
                    let line = self.buf[..i].to_vec();
                    self.buf.drain(..i + 2);
                    return Ok::<_, ShellError>(Some(line));
                }
                if let Some(i) = memmem::find(&self.buf, &bus.ended) {
                    self.buf.drain(..i + bus.ended.len());
                    return Ok(None);
                }
                self.fill().await?;
            }
        };
        let Some(hello) = tokio::time::timeout(BUS_SILENCE, hello)
            .await
            .unwrap_or(Ok(None))?
        else {
            return Ok(UnitWait::Unavailable(
                "systemd-stdio-bridge could not connect to systemd".into(),
            ));
        };
        if !hello.starts_with(b"OK ") {
            return Err(ShellError::Protocol(format!(
                "systemd-stdio-bridge refused the connection: {}",
                String::from_utf8_lossy(&hello)
            )));
        }
        let path = match self
            .bus_call(&mut bus, SYSTEMD, MANAGER, "LoadUnit", &[unit])
            .await?
        {
            Ok(m) => m
                .first_string()
                .map_err(|e| ShellError::Protocol(e.to_string()))?,
            Err(message) => {
                return Ok(UnitWait::Hopeless(format!(
                    "systemd cannot load unit \"{unit}\": {message}"
                )))
            }
        };
        bus.unit_path = Some(path.clone());
        let mut asked_again = false;
        loop {
            // The state a signal brought, else systemd's answer now (which
            // is newer than any signal that arrived before it).
            let state = match bus.state.take() {
                Some(state) => state,
                None => {
                    let state = self.bus_active_state(&mut bus, &path).await?;
                    bus.state = None;
                    state
                }
            };
            bus.changed = false;
            bus.watch_jobs = state == "inactive";
            match state.as_str() {
                "active" => return Ok(UnitWait::Active),
                "failed" => {
                    return Ok(UnitWait::Hopeless(format!(
                        "unit \"{unit}\" reached state \"failed\""
                    )))
                }
                "inactive" => {
                    let jobs = self
                        .bus_call(&mut bus, SYSTEMD, MANAGER, "ListJobs", &[])
                        .await?
                        .map_err(ShellError::Protocol)?;
                    let none = jobs
                        .array_is_empty()
                        .map_err(|e| ShellError::Protocol(e.to_string()))?;
                    if none {
                        if asked_again {
                            return Ok(UnitWait::Hopeless(format!(
                                "unit \"{unit}\" is inactive and there are no pending jobs"
                            )));
                        }
                        asked_again = true;
                        continue;
                    }
                }
                _ => {}
            }
            asked_again = false;
            // Wait for a change of the unit (or of the job queue, while it
            // is inactive), the safety recheck, or the deadline.
            let recheck = tokio::time::Instant::now() + UNIT_RECHECK;
            while !bus.changed {
                let until = deadline.map_or(recheck, |d| d.min(recheck));
                match tokio::time::timeout_at(until, self.bus_message(&mut bus)).await {
                    Ok(m) => {
                        m?;
                    }
                    Err(_) if deadline.is_some_and(|d| d <= until) => {
                        return Ok(UnitWait::TimedOut(state));
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// `ActiveState` of the unit at `path`.
    async fn bus_active_state(&mut self, bus: &mut Bus, path: &str) -> Result<String, ShellError> {
        self.bus_call(
            bus,
            path,
            "org.freedesktop.DBus.Properties",
            "Get",
            &["org.freedesktop.systemd1.Unit", "ActiveState"],
        )
        .await?
        .map_err(ShellError::Protocol)?
        .variant_string()
        .map_err(|e| ShellError::Protocol(e.to_string()))
    }

    /// Writes bytes into the bridge.
    async fn bus_write(&mut self, bytes: &[u8]) -> Result<(), ShellError> {
        let line = format!("printf '{}' >&\"$__vmt_bus\"\n", printf_format(bytes));
        self.send_line(&line).await
    }

    /// Calls a method; the reply, or the D-Bus error's name and message.
    async fn bus_call(
        &mut self,
        bus: &mut Bus,
        path: &str,
        interface: &str,
        member: &str,
        args: &[&str],
    ) -> Result<Result<dbus::Message, String>, ShellError> {
        bus.serial += 1;
        let serial = bus.serial;
        self.bus_write(&dbus::method_call(serial, path, interface, member, args))
            .await?;
        loop {
            // The bridge is gone if systemd does not answer (it re-executed,
            // say): the wait polls instead.
            let m = tokio::time::timeout(BUS_SILENCE, self.bus_message(bus))
                .await
                .map_err(|_| ShellError::BusGone("stopped answering"))??;
            if m.reply_serial != Some(serial) {
                continue;
            }
            return Ok(match m.kind {
                dbus::Kind::Error => Err(format!(
                    "{} ({})",
                    m.first_string().unwrap_or_default(),
                    m.error_name.as_deref().unwrap_or("unnamed D-Bus error")
                )),
                _ => Ok(m),
            });
        }
    }

    /// The next message from the bridge; a signal that concerns the wait
    /// marks it as changed.
    async fn bus_message(&mut self, bus: &mut Bus) -> Result<dbus::Message, ShellError> {
        loop {
            if self.buf.starts_with(&bus.ended) {
                self.buf.drain(..bus.ended.len());
                return Err(ShellError::BusGone("ended: systemd closed the connection"));
            }
            if !self.buf.is_empty() && bus.ended.starts_with(&self.buf) {
                self.fill().await?;
                continue;
            }
            match dbus::message_len(&self.buf) {
                Ok(Some(len)) if self.buf.len() >= len => {
                    let m = dbus::parse(&self.buf[..len])
                        .map_err(|e| ShellError::Protocol(e.to_string()))?;
                    self.buf.drain(..len);
                    if m.kind == dbus::Kind::Signal {
                        let about_unit = m.path.is_some() && m.path == bus.unit_path;
                        let about_jobs = bus.watch_jobs
                            && matches!(m.member.as_deref(), Some("JobNew" | "JobRemoved"));
                        bus.changed |= about_unit || about_jobs;
                        if about_unit {
                            if let Some(state) = m
                                .changed_string("org.freedesktop.systemd1.Unit", "ActiveState")
                                .map_err(|e| ShellError::Protocol(e.to_string()))?
                            {
                                bus.state = Some(state);
                            }
                        }
                    }
                    return Ok(m);
                }
                Ok(_) => self.fill().await?,
                Err(e) => return Err(ShellError::Protocol(e.to_string())),
            }
        }
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
        self.bootstrapped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console bootstrap in the host's bash, read interactively from a
    /// pty (as a guest whose backdoor shell were interactive would read
    /// it): no continuation prompts, no job notice for the listener.
    #[test]
    fn an_interactive_shell_takes_the_bootstrap_quietly() {
        let dir = std::env::temp_dir().join(format!("vmt-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctl = dir.join("ctl");
        assert!(std::process::Command::new("mkfifo")
            .arg(&ctl)
            .status()
            .unwrap()
            .success());
        // The guest's ports are a FIFO here (the listener opens it `<>`),
        // set as the port bootstrap's first line sets them.
        let input = format!(
            "PS1=\n__vmt_cmdport= __vmt_ctlport={}\n{}kill \"$__vmt_listener\"; exit\n",
            ctl.display(),
            console_bootstrap("N", "K-")
        );
        let file = dir.join("input");
        std::fs::write(&file, input).unwrap();
        let out = std::process::Command::new("script")
            .args(["-q", "-e", "-c", "bash --norc -i", "/dev/null"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .expect("script(1) from util-linux");
        let _ = std::fs::remove_dir_all(&dir);
        // Without the pty's carriage returns and bracketed-paste switches.
        let text = String::from_utf8_lossy(&out.stdout)
            .replace('\r', "")
            .replace("\x1b[?2004h", "")
            .replace("\x1b[?2004l", "");
        assert!(text.contains("N ok ctl"), "{text}");
        assert!(text.contains("__vmt_init"), "the names: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("[1]")),
            "a job notice: {text}"
        );
        let prompts = text.lines().filter(|l| l.starts_with("> ")).count();
        assert_eq!(prompts, 0, "continuation prompts: {text}");
    }

    #[test]
    fn records_drop_nul_bytes_as_bash_would() {
        assert_eq!(
            record('r', "1 echo a\0b").unwrap(),
            record('r', "1 echo ab").unwrap()
        );
        assert_eq!(
            record('e', "echo \u{e9}\0").unwrap(),
            record('e', "echo \u{e9}").unwrap()
        );
    }

    #[test]
    fn the_compact_bootstrap_is_ascii_bash_that_parses() {
        let defs = format!("{}\n{}", compact(BOOTSTRAP), compact(BOOTSTRAP_REST));
        assert!(defs.is_ascii(), "a record carries ASCII only");
        let whole = BOOTSTRAP.len() + BOOTSTRAP_REST.len();
        assert!(defs.len() < whole * 2 / 3, "{} bytes", defs.len());
        assert!(!defs.lines().any(|l| l.starts_with('#') || l.is_empty()));
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &defs])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every function survives.
        for f in [
            "__vmt_init",
            "__vmt_loop",
            "__vmt_serve",
            "__vmt_until",
            "__vmt_bus_stop",
        ] {
            assert!(format!("\n{defs}").contains(&format!("\n{f}() {{")), "{f}");
        }
    }

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

    #[test]
    fn records_are_ascii_with_their_length_in_front() {
        assert_eq!(record('r', "7 true").unwrap(), b"000007 r7 true");
        let r = record('e', "printf '%s' '\u{e9}'\n").unwrap();
        assert_eq!(
            r,
            &b"000027 eeval $'printf \\'%s\\' \\'\\xc3\\xa9\\'\\x0a'"[..]
        );
        assert_eq!(
            usize::from_str_radix(std::str::from_utf8(&r[..6]).unwrap(), 16).unwrap(),
            r.len() - 7
        );
        assert!(record('e', &"x".repeat(0xff_fffe)).is_ok());
        assert!(matches!(
            record('e', &"x".repeat(0xff_ffff)),
            Err(ShellError::TooLong(0x100_0000))
        ));
    }

    #[test]
    fn ascii_quoting_gives_back_every_byte_in_bash() {
        let text: String = (1..=0x7f_u8)
            .map(char::from)
            .chain("h\u{e9} \u{20ac} \u{1f600}".chars())
            .collect();
        let q = ascii_quote(&text);
        assert!(q.is_ascii());
        let out = std::process::Command::new("bash")
            .args(["-c", "eval \"v=$1\"; printf %s \"$v\"", "_", &q])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    }

    #[test]
    fn a_command_naming_its_shells_pid_gets_a_bash_of_its_own() {
        assert_eq!(
            own_shell_form("set -euo pipefail; kill $$", true).as_deref(),
            Some(r#"exec "$BASH" -c 'set -euo pipefail; kill $$'"#)
        );
        assert_eq!(
            own_shell_form("echo ${$}", false).as_deref(),
            Some(r#""$BASH" -c 'echo ${$}'"#)
        );
        assert_eq!(own_shell_form("echo $BASHPID $1", true), None);
    }

    #[test]
    fn only_plain_simple_commands_of_programs_are_execed() {
        let names: HashSet<String> = ["true", "echo", "[", "if", "exec", "__vmt_exec", "ll"]
            .map(String::from)
            .into();
        let exec = |c: &str| exec_form(c, &names);
        assert_eq!(
            exec("set -euo pipefail; systemctl is-active nginx").as_deref(),
            Some("set -euo pipefail; exec systemctl is-active nginx")
        );
        assert_eq!(
            exec("  grep -q 'a b; $x | y' /etc/x*.conf ~/f:1,2 ").as_deref(),
            Some("exec grep -q 'a b; $x | y' /etc/x*.conf ~/f:1,2")
        );
        assert_eq!(
            exec(r#"grep -c "a 'b'; c | d" x"#).as_deref(),
            Some(r#"exec grep -c "a 'b'; c | d" x"#)
        );
        assert_eq!(
            exec("/run/current-system/sw/bin/curl -f http://[::1]:80/a?b=c%20d").as_deref(),
            Some("exec /run/current-system/sw/bin/curl -f http://[::1]:80/a?b=c%20d")
        );
        for kept in [
            "",
            "set -euo pipefail; ",
            "true",
            "set -euo pipefail; echo hi",
            "[ -e /x ]",
            "if true; then ls; fi",
            "ll /",
            "FOO=1 env",
            "-x a",
            "ls; ls",
            "ls && ls",
            "ls || ls",
            "ls | wc",
            "sleep 1 &",
            "ls >/tmp/x",
            "ls 2>&1",
            "ls $HOME",
            "ls \"$HOME\"",
            "ls `pwd`",
            "ls $(pwd)",
            "ls \\n",
            "ls \"$HOME/x\"",
            "ls \"a\\\"b\"",
            "ls \"`pwd`\"",
            "ls \"unterminated",
            "ls 'unterminated",
            "ls\nrm x",
            "ls # comment",
            "ls {a,b}",
            "l*s",
            "cat /etc/ø",
        ] {
            assert_eq!(exec(kept), None, "{kept:?}");
        }
    }

    /// A fake guest: answers one framed command the way the bootstrap does,
    /// with two chunks of output and noise before the answer.
    #[tokio::test]
    async fn framing_is_exact_for_binary_output_in_chunks() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let payload: Vec<u8> = (0..CHUNK + 10).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let line = next_line(&mut reader).await;
            assert!(line.starts_with("__vmt_exec "), "{line}");
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
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
        let out = run_x(&mut shell).await;
        assert_eq!(fake.await.unwrap(), vec!["more.", "done."]);
        assert_eq!(out.status, 3);
        assert_eq!(out.output, expected);
        assert_eq!(out.ending, Ending::Done);
    }

    /// Small output comes with the answer and is not acknowledged: the next
    /// thing the host sends is the next command.
    #[tokio::test]
    async fn small_output_comes_with_the_answer_unacknowledged() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let mut lines = Vec::new();
            for _ in 0..2 {
                let line = next_line(&mut reader).await;
                let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
                let mut answer = format!("{n} 0 done 2\n").into_bytes();
                answer.extend_from_slice(b"it's\n\0\xff");
                answer.extend_from_slice(format!("\n{n} c\n").as_bytes());
                reader.get_mut().write_all(&answer).await.unwrap();
                lines.push(line);
            }
            lines
        });
        for _ in 0..2 {
            let out = run_x(&mut shell).await;
            assert_eq!(out.output, b"it's\n\0\xff");
            assert_eq!((out.status, out.ending), (0, Ending::Done));
        }
        let lines = fake.await.unwrap();
        assert!(
            lines.iter().all(|l| l.starts_with("__vmt_exec ")),
            "{lines:?}"
        );
    }

    /// Runs the command `x`, keeping its output.
    async fn run_x(shell: &mut Shell) -> Outcome {
        let req = Request::Exec {
            command: "x",
            timeout: None,
            capture: true,
        };
        shell.run(req).await.unwrap()
    }

    /// The next line the host sent to a fake guest.
    async fn next_line(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> String {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(reader, &mut line)
            .await
            .unwrap();
        line
    }

    /// The key of [`bootstrapped_pair`]'s shell.
    const KEY: &str = "vmtkey-";

    /// A shell connected to a fake guest, as if bootstrapped (without a
    /// control port).
    fn bootstrapped_pair() -> (Shell, UnixStream) {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut shell = Shell::new(host);
        shell.bootstrapped = true;
        shell.key = KEY.into();
        (shell, guest)
    }

    /// Undoes [`printf_format`] (what bash's `printf` does with it).
    fn unprintf(f: &str) -> Vec<u8> {
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

    #[test]
    fn printf_formats_give_back_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let f = printf_format(&all);
        assert!(
            !f.contains('%') && !f.contains('\''),
            "nothing printf or the quoting would read: {f}"
        );
        assert_eq!(unprintf(&f), all);
    }

    /// A fake guest for unit waits: answers the bash side of the session
    /// and plays systemd with the given `ActiveState` answers to `Get`,
    /// `ListJobs` always empty; after the first `Get` it sends `signals`
    /// (states carried by `PropertiesChanged`). Returns the calls it saw.
    async fn fake_bus_guest(
        mut guest: UnixStream,
        gets: Vec<&'static str>,
        signals: Vec<&'static str>,
    ) -> Vec<String> {
        use super::dbus::fake;
        const PATH: &str = "/org/freedesktop/systemd1/unit/slow_2eservice";
        let mut reader = tokio::io::BufReader::new(&mut guest);
        let mut calls = Vec::new();
        let mut gets = gets.into_iter();
        let mut signals = Some(signals);
        loop {
            let line = next_line(&mut reader).await;
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer: Vec<u8> = match words[0] {
                "__vmt_bus_start" => format!("{} bridge\n", words[1]).into_bytes(),
                "__vmt_bus_stop" => {
                    let done = format!("{} bus-stopped\n", words[1]);
                    reader.get_mut().write_all(done.as_bytes()).await.unwrap();
                    return calls;
                }
                "printf" => {
                    let f = line.split('\'').nth(1).unwrap();
                    let bytes = unprintf(f);
                    if bytes.starts_with(b"\0AUTH") {
                        b"OK 0123456789abcdef\r\n".to_vec()
                    } else {
                        let m = dbus::parse(&bytes).unwrap();
                        let member = m.member.clone().unwrap();
                        calls.push(member.clone());
                        match member.as_str() {
                            "LoadUnit" => fake::reply_path(m.serial, PATH),
                            "ListJobs" => fake::reply_no_jobs(m.serial),
                            _ => {
                                let mut a = fake::reply_variant(m.serial, gets.next().unwrap());
                                for s in signals.take().unwrap_or_default() {
                                    a.extend(fake::active_state_signal(PATH, s));
                                }
                                a
                            }
                        }
                    }
                }
                other => panic!("unexpected line {other:?}"),
            };
            reader.get_mut().write_all(&answer).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_unit_wait_ends_on_the_signal_that_says_active() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(
            guest,
            vec!["activating"],
            vec!["activating", "active"],
        ));
        let w = shell
            .unit_wait("slow.service", None, Some(Duration::from_secs(30)))
            .await;
        assert_eq!(w.unwrap(), UnitWait::Active);
        // One `Get`: the signals said the rest.
        assert_eq!(fake.await.unwrap(), ["LoadUnit", "Get"]);
        // The wait returned before the guest confirmed the end of the
        // session; the next call reads that first.
        assert!(matches!(shell.pending, Some(Pending::BusStopping(_))));
        shell.ready(true).await.unwrap();
        assert!(shell.pending.is_none());
    }

    #[tokio::test]
    async fn an_inactive_unit_with_no_job_is_hopeless_after_a_second_look() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(guest, vec!["inactive", "inactive"], vec![]));
        let w = shell.unit_wait("slow.service", None, None).await.unwrap();
        assert_eq!(
            w,
            UnitWait::Hopeless(
                "unit \"slow.service\" is inactive and there are no pending jobs".into()
            )
        );
        assert_eq!(
            fake.await.unwrap(),
            ["LoadUnit", "Get", "ListJobs", "Get", "ListJobs"]
        );
    }

    #[tokio::test]
    async fn a_unit_wait_times_out_with_the_last_state() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(
            guest,
            vec!["activating"],
            vec!["deactivating"],
        ));
        let w = shell
            .unit_wait("slow.service", None, Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(w, UnitWait::TimedOut("deactivating".into()));
        assert_eq!(fake.await.unwrap(), ["LoadUnit", "Get"]);
    }

    #[tokio::test]
    async fn without_a_bridge_or_a_manager_the_wait_polls_and_without_the_user_it_fails() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let answers = ["no-bridge", "no-manager", "no-user"];
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let mut lines = Vec::new();
            for answer in answers {
                let line = next_line(&mut reader).await;
                let n = line.split_whitespace().nth(1).unwrap().to_string();
                lines.push(line);
                reader
                    .get_mut()
                    .write_all(format!("{n} {answer}\n").as_bytes())
                    .await
                    .unwrap();
            }
            lines
        });
        let system = shell.unit_wait("slow.service", None, None).await.unwrap();
        let user = Some("al ice");
        let manager = shell.unit_wait("x.service", user, None).await.unwrap();
        let nobody = shell.unit_wait("x.service", user, None).await.unwrap();
        let lines = fake.await.unwrap();
        assert_eq!(lines[0].split_whitespace().count(), 2, "{lines:?}");
        assert!(lines[1].trim_end().ends_with(" 'al ice'"), "{lines:?}");
        assert_eq!(
            system,
            UnitWait::Unavailable(
                "systemd-stdio-bridge or systemd's private socket is not available in the guest"
                    .into()
            )
        );
        assert_eq!(
            manager,
            UnitWait::Unavailable(
                "the systemd user manager of \"al ice\" does not run (yet)".into()
            )
        );
        assert_eq!(
            nobody,
            UnitWait::Hopeless("there is no user \"al ice\" in the guest".into())
        );
        assert!(shell.pending.is_none());
    }
}
