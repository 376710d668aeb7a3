# shellcheck shell=bash
# The guest's backdoor shell: what the first command after a boot needs
# (`BOOTSTRAP_FIRST` in guest.rs). The port bootstrap runs that command and
# answers it before the functions of guest-core.bash are parsed: under TCG,
# code a boot runs for the first time costs several times what it costs
# later, and parsing them cost the first command more than all else.
__vmt_init() {
  # The driver's files are `$__vmt_at<name>`, in the first tmpfs-like
  # directory bash may write in (access(2), which a read-only mount
  # fails): no process is started (each costs 25 ms or more under TCG),
  # and FIFOs are made when first needed.
  local d
  __vmt_key=$1 __vmt_at=
  for d in /run /dev/shm /tmp; do
    [[ -d $d && -w $d ]] && __vmt_at=$d/.nix-vmtest-$$. && break
  done
  [ -n "$__vmt_at" ] || return 1
  __vmt_pidfile=$d/.nix-vmtest-ctl.pid
  # Commands get this as stderr. The shell's own stderr is /dev/null where
  # it reaps commands: bash reports a child killed at a deadline there
  # ("Killed ( eval ... )"), which would say nothing to a test's reader.
  exec {__vmt_err}>&2
  # Commands see `$0` as under `bash -c` (the shell's is the console).
  BASH_ARGV0=bash
  __vmt_n=0 __vmt_out=${__vmt_at}o.0 __vmt_spent='' __vmt_ctlfd=''
  # The port bootstrap's first line found the ports already.
  [[ -v __vmt_cmdport ]] || __vmt_ports
}
__vmt_ctl_open() {
  # Opens the control port in this shell, as $__vmt_ctlfd (a listener
  # forked later keeps it: the port is never closed while requests may be
  # on their way, since the guest drops what reaches a port being closed).
  local old f i=0
  [[ -n $__vmt_ctlfd ]] && return 0
  [[ -n $__vmt_ctlport ]] || return 1
  # The listener of a backdoor shell that was killed outlives it where no
  # service manager kills what the shell left (init's respawn): it would
  # read requests meant for this one, and kill nothing. It holds the port,
  # which opens once at a time, until it is gone.
  if read -r old 2>/dev/null <"$__vmt_pidfile" && [[ -n $old && $old != *[!0-9]* ]]; then
    for f in /proc/"$old"/fd/*; do
      [[ $f -ef $__vmt_ctlport ]] && { kill -KILL "$old" 2>/dev/null; break; }
    done
  fi
  # A killed listener lets go of the port when it is gone, soon after.
  until exec {__vmt_ctlfd}<>"$__vmt_ctlport"; do
    __vmt_ctlfd=
    (( ++i < 100 )) && continue
    # Not to be tried again: commands go on without being stoppable.
    __vmt_ctlport=
    return 1
  done 2>/dev/null
}
__vmt_kill() {
  local p kids
  for p in "$@"; do
    kill -STOP "$p" 2>/dev/null
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null)
    # One word a pid: split on purpose.
    # shellcheck disable=SC2086
    __vmt_kill $kids
    kill -KILL "$p" 2>/dev/null
  done
}
__vmt_alone() {
  # Runs the first command of the port bootstrap, before the control
  # listener runs (it starts after the answer: its fork cost that answer
  # more than all of this). The command is a process substitution, so that
  # its end (the end of its pipe) wakes this shell; meanwhile the shell
  # serves the control port itself, every 0.1 s. A detached subshell may
  # keep the pipe open: the command's end is then noticed at the next
  # 0.1 s.
  local r pid req kids k
  exec {r}< <(eval "$__vmt_cmd" 2>&"$__vmt_err"- </dev/null >"$__vmt_to")
  pid=$!
  while :; do
    read -r -t 0.1 -u "$r"
    (( $? <= 128 )) && break
    kill -0 "$pid" 2>/dev/null || break
    [[ -n $__vmt_ctlfd ]] || __vmt_ctl_open || continue
    while read -r -t 0 -u "$__vmt_ctlfd" && read -r -d . -u "$__vmt_ctlfd" req; do
      kids=()
      read -r -a kids </proc/$$/task/$$/children
      for k in "${kids[@]}"; do __vmt_kill "$k"; done
      printf '%s done\n' "$req" >&"$__vmt_ctlfd"
    done
  done
  exec {r}<&-
  wait "$pid"
  __vmt_st=$?
}
__vmt_command() {
  # The command of the record in $__vmt_rec: `r<id> <command>` (output
  # kept) or `n<id> <command>` (not).
  __vmt_id=${__vmt_rec%% *} __vmt_cmd=${__vmt_rec#* } __vmt_to=$__vmt_out
  [[ $__vmt_id == n* ]] && __vmt_to=/dev/null
  __vmt_id=${__vmt_id#?}
}
__vmt_answer() {
  # The answer of a command whose output is small: none, or up to 4096
  # characters without a NUL byte, which go in one write with the answer
  # (no acknowledgement is awaited). `read` stops at a NUL or after 4097
  # characters (bytes kept as they are; a character is a byte in the C
  # locale, at most 6 in a UTF-8 one), and fails only at the end. (`LC_ALL=C`
  # here would make bash switch locales twice per command: 0.4 to 1.9 ms
  # under TCG with LANG=C.UTF-8.) Fails, having sent nothing, for more:
  # `__vmt_send_output` answers then.
  local small
  if [[ ! -s $__vmt_to ]]; then
    printf '%s%s %s %s 0\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" "${__vmt_why:-done}"
    return
  fi
  __vmt_spent=1
  IFS= read -r -d '' -n 4097 small <"$__vmt_to" && return 1
  printf '%s%s %s %s 2\n%s\n%s%s c\n' "$__vmt_key" "$__vmt_id" "$__vmt_st" \
    "${__vmt_why:-done}" "$small" "$__vmt_key" "$__vmt_id"
}
__vmt_head() {
  # The first command, whose record came with the bootstrap's: run (no
  # control listener runs yet: __vmt_alone) and answered if its output is
  # small; else `__vmt_big` says the answer waits for __vmt_send_output.
  read -r -N 7 __vmt_h && read -r -N $((16#$__vmt_h)) __vmt_rec || return 0
  
  __vmt_command
  __vmt_alone
  
  __vmt_answer || __vmt_big=1
  
  __vmt_ran=1
}
