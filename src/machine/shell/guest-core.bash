# shellcheck shell=bash
# The guest's backdoor shell: the serve loop and the rest of what every
# command needs (`BOOTSTRAP` in guest.rs; guest-first.bash has the shell's
# setup). Defined once per boot, on the console or in the port bootstrap's
# second record, after its report; comment lines and indentation are
# dropped before they are sent.
# @CHUNK@ and @SHARED_OUT@ are filled in from the Rust constants.
__vmt_ctl_start() {
  if [[ -n $__vmt_listener ]] && kill -0 "$__vmt_listener" 2>/dev/null; then return; fi
  __vmt_listener=
  [[ -n $__vmt_ctlport ]] || return 0
  __vmt_ctl_open || return 0
  # An interactive shell would note the job on the console ("[1] 123").
  # The listener holds no port but its own: a virtio port opens once at a
  # time, and the command port must close when the serve loop leaves.
  { __vmt_listen </dev/null >/dev/null & } 2>/dev/null
  __vmt_listener=$!
  exec {__vmt_ctlfd}>&-
  __vmt_ctlfd=
}
# Globals of __vmt_init and __vmt_command (guest-first.bash).
# shellcheck disable=SC2154
__vmt_listen() {
  # The listener writes its own pid file: the shell goes on meanwhile.
  local req
  echo "$BASHPID" 2>/dev/null >"$__vmt_pidfile"
  while read -r -d . -u "$__vmt_ctlfd" req; do
    __vmt_kill_children
    # The shell is not signalled: bash catches a trapped signal without
    # SA_RESTART, so it could cut the shell's write of an answer short
    # (EINTR; on a tty, bash's printf writes a line at a time). A wait
    # loop whose try was killed sees its deadline passed, or `cancel.`.
    printf '%s done\n' "$req" >&"$__vmt_ctlfd"
  done
}
# Globals of __vmt_init and __vmt_command (guest-first.bash).
# shellcheck disable=SC2154
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
# Globals of __vmt_init and __vmt_command (guest-first.bash).
# shellcheck disable=SC2154
__vmt_records() {
  # A record is `<length: 6 hex digits> <kind><body>`, all ASCII, so `read
  # -N` (one read(2) for all of it; a tty or a newline delimiter would make
  # bash read a byte at a time) counts bytes in any locale. `cancel.` (7
  # bytes, like a header) may come between records and is skipped.
  # Kinds: `r<id> <command>` and `n<id> <command>` run a command as
  # `__vmt_exec` does when the host stops commands (output kept, or not);
  # `e<line>` is evaluated here, with the console as stderr again.
  # Seen by what the loop calls (bash's locals are dynamic): answers go on
  # the port, which QEMU throttles rather than drops.
  local __vmt_onport=1
  # The control listener, if it is not running (after the port
  # bootstrap: it takes over the control port a stopped first command
  # left open).
  __vmt_ctl_start
  while read -r -N 7 __vmt_h; do
    [[ $__vmt_h == cancel. ]] && continue
    read -r -N $((16#$__vmt_h)) __vmt_rec || break
    case $__vmt_rec in
      [rn]*)
        __vmt_command
        ( eval "$__vmt_cmd" ) 2>&"$__vmt_err"- </dev/null >"$__vmt_to"
        __vmt_st=$?
        __vmt_why=
        __vmt_answer || __vmt_send_output
        __vmt_next
        ;;
      *) eval "${__vmt_rec#?}" 2>&"$__vmt_err" ;;
    esac
  done
  return 0
}
# Globals of __vmt_init and __vmt_command (guest-first.bash).
# shellcheck disable=SC2154
__vmt_send_output() {
  # The answer of a command whose output is not small: __vmt_answer said
  # so, and marked the output file spent. Such output goes through the
  # shared directory where the host made its directory there (so the
  # share is mounted), in one process, if it is writable; else on the
  # port or console. The host reads the file and removes it. No fsync:
  # it would flush the host's disk, and a share without a cache (NixOS'
  # /tmp/shared) writes through at once.
  if [[ -d @SHARED_OUT@ ]]; then
    if dd if="$__vmt_to" of="@SHARED_OUT@/$__vmt_key$__vmt_id" bs=1048576 2>/dev/null; then
      printf '%s%s %s %s 3\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
      return
    fi
    rm -f "@SHARED_OUT@/$__vmt_key$__vmt_id" 2>/dev/null
  fi
  if [[ -n $__vmt_onport ]]; then
    # On the port, more output goes the same way, in one process and
    # without acknowledgements: nothing is dropped (a chunk at a time
    # cost a process and a round trip per 128 KiB).
    printf '%s%s %s %s 2\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
    dd if="$__vmt_to" bs=1048576 2>/dev/null
    printf '\n%s%s c\n' "$__vmt_key" "$__vmt_id"
    return
  fi
  printf '%s%s %s %s 1\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
  __vmt_send
}
__vmt_send() {
  local i=0 ack
  while :; do
    dd if="$__vmt_to" bs=@CHUNK@ skip=$i count=1 2>/dev/null
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
