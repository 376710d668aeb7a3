# shellcheck shell=bash
# The rest of the guest's functions (`BOOTSTRAP_REST` in guest.rs), defined
# after the first command's answer (see guest-first.bash, whose __vmt_init
# sets the globals these use: __vmt_at, __vmt_err, __vmt_key, ...). @CMD_PORT@ and
# @CTL_PORT@ are filled in from the Rust constants.
__vmt_ports() {
  # The devices of the driver's virtio ports, in __vmt_cmdport and
  # __vmt_ctlport (empty if the guest has none).
  local p name
  __vmt_cmdport='' __vmt_ctlport=''
  for p in /sys/class/virtio-ports/*; do
    # The next port if any test fails.
    # shellcheck disable=SC2015
    [ -r "$p/name" ] && read -r name <"$p/name" && [ -c "/dev/${p##*/}" ] || continue
    case $name in
      @CMD_PORT@) __vmt_cmdport=/dev/${p##*/} ;;
      @CTL_PORT@) __vmt_ctlport=/dev/${p##*/} ;;
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
  # (The port bootstrap says `serving` with its report.)
  printf '%s serving\n' "$__vmt_sync"
  __vmt_records
}
__vmt_cancelled() {
  local line
  read -t 0 -u 0 && read -r -d . -u 0 line && [[ $line == cancel ]]
}
__vmt_now() {
  __vmt_t=${EPOCHREALTIME//[!0-9]/}
}
# __vmt_at, __vmt_err and __vmt_key are set by __vmt_init (guest-first.bash).
# shellcheck disable=SC2154
__vmt_try() {
  # Runs the command once (deadline: $__vmt_dl); no positional parameters,
  # so the command sees none.
  local pid r line kills=0
  if [[ -n $__vmt_listener ]]; then
    # The host stops a command through the control port.
    { ( eval "$__vmt_cmd" ) 2>&"$__vmt_err"- </dev/null >"$__vmt_to"; } 2>/dev/null
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
    read -r -t 0.2 -u "$r" line
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
# __vmt_at, __vmt_err and __vmt_key are set by __vmt_init (guest-first.bash).
# shellcheck disable=SC2154
__vmt_reply() {
  __vmt_answer || __vmt_send_output
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
  __vmt_bus='' __vmt_bus_pid=''
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
    # Whether this try ends the wait: UntilMode::ends is the same rule.
    case $3 in
      succeed) (( __vmt_st == 0 )) && break ;;
      fail) (( __vmt_st != 0 )) && break ;;
      *) (( __vmt_st != 1 )) && break ;;
    esac
    __vmt_now
    if [[ -n $__vmt_dl ]] && (( __vmt_t >= __vmt_dl )); then __vmt_why=timeout; break; fi
    # A pause: nothing ever writes the FIFO. (Opened for the pause only,
    # so that commands inherit no descriptor of the driver's.)
    __vmt_fifo "${__vmt_at}tick" && read -r -t 0.05 <>"${__vmt_at}tick"
    if __vmt_cancelled; then __vmt_why=cancel; break; fi
    # This try's output is not sent: free it.
    __vmt_spent=1
    __vmt_next
  done
  __vmt_reply
  __vmt_next
}
