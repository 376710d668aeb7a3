# shellcheck shell=bash
# The guest's backdoor shell: the control port's side in the shell
# (`BOOTSTRAP_STOP` in guest.rs). The control listener (guest-core.bash)
# uses these once the shell is set up; before that, while the first
# command after a boot runs straight from the console (`first_line` in
# guest.rs), the host stops it by sending these as one console line, which
# that command's wait reads (`stop_line`), and one request on the port.
# The pid file of __vmt_init (guest-first.bash), or of the stop line.
# shellcheck disable=SC2154
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
__vmt_kill_children() {
  # Kills the trees of the shell's children (the running command), but the
  # process this runs in (the listener, a child itself).
  local kids k
  kids=()
  read -r -a kids </proc/$$/task/$$/children
  for k in "${kids[@]}"; do
    [[ $k == "$BASHPID" ]] || __vmt_kill "$k"
  done
}
# Globals of the first command's console line (`first_line` in guest.rs).
# shellcheck disable=SC2154
__vmt_stop() {
  # The one request the host sends on the control port after the line
  # that defined this: waited for (the port delivers what was written
  # before it was opened only once it is), then whatever the shell runs
  # is killed (the first command, if it still runs), and the request
  # answered.
  local req
  __vmt_ctl_open || return 0
  read -r -t 10 -d . -u "$__vmt_ctlfd" req || return 0
  __vmt_kill_children
  printf '%s done\n' "$req" >&"$__vmt_ctlfd"
}
