# shellcheck shell=bash
# The guest's backdoor shell: what the port bootstrap's first record
# defines before its report (`BOOTSTRAP_FIRST` in guest.rs): the shell's
# setup and what the serve loop runs for every command. The first command
# after a boot does not wait for it: it runs straight from the console
# (`first_line` in guest.rs), and leaves its output where this setup puts
# the first command's (`${__vmt_at}o.0`).
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
  # Kept from the first command's line: `__vmt_spent` (its output is in
  # o.0) and `__vmt_ctlfd` (the control port, if the host stopped it).
  __vmt_n=0 __vmt_out=${__vmt_at}o.0
  # The port bootstrap's first line found the ports already.
  [[ -v __vmt_cmdport ]] || __vmt_ports
}
# The record __vmt_records (guest-core.bash) read.
# shellcheck disable=SC2154
__vmt_command() {
  # The command of the record in $__vmt_rec: `r<id> <command>` (output
  # kept) or `n<id> <command>` (not).
  __vmt_id=${__vmt_rec%% *} __vmt_cmd=${__vmt_rec#* } __vmt_to=$__vmt_out
  [[ $__vmt_id == n* ]] && __vmt_to=/dev/null
  __vmt_id=${__vmt_id#?}
}
# The status of the command __vmt_records ran.
# shellcheck disable=SC2154
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
