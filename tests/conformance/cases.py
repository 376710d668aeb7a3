"""The conformance suite's cases: what a test script observes, run through
nixpkgs' test driver (the reference) and through ours on the same guest.

A case is a piece of test script run against `machine` (the tiny guest, node
1, no VLANs): a Python expression, whose value is the observation, or
statements that set `result`. The runner (run.py) wraps each in try/except
and records its value (`repr`) or the exception (type, the names of its
classes, message). An exception of ours matches the reference's when a class
of the same name is among its classes (so `except RequestedAssertionFailed`
catches both); messages compare as `message` says: "exact", "numbers"
(digits aside: times in timeout messages) or "any".

Cases run in order, in one driver run per script; some depend on the ones
before them (`cd` then `pwd`). Put nothing between `start` and
`console_text`: nixpkgs' `wait_for_console_text` takes one console line per
second from a queue, so it is cheap only while the console has said little.

SCRIPTS are whole test scripts whose driver exit code is compared; the
ones with `cases` also have their cases compared. What still differs is
listed, with the reason, in KNOWN in run.py (and in the README).
"""

from typing import List, NamedTuple, Optional


class Case(NamedTuple):
    name: str
    source: str
    message: str = "exact"
    # Seconds after which the runner stops a driver run still in this case
    # and records the case as hung (for a case that hangs one driver: it must
    # be the last of its script).
    hang_after: Optional[int] = None


class Script(NamedTuple):
    name: str
    cases: List[Case] = []
    # Code run after the cases (or the whole script when there are none).
    source: str = ""
    # Seconds for each driver's own global timeout; the runner stops a run
    # 30 s later.
    global_timeout: int = 300


# nixpkgs runs each command under `timeout N bash -c ...`. NixOS has
# coreutils' timeout (exit 124 when it fires); the tiny guest has busybox's,
# which execs the command in place and kills it with TERM (exit 143). So
# first the guest gets the host's coreutils `timeout` (same Debian release,
# so the same glibc), as under NixOS. Our driver does not use `timeout`.
PRELUDE = r'''
import shutil as _shutil
machine.copy_from_host(_shutil.which("timeout"), "/tmp/conformance/timeout")
result = machine.succeed(
    "rm -f /bin/timeout && cp /tmp/conformance/timeout /bin/timeout"
    " && timeout --version | head -n 1 | cut -d' ' -f2-3"
)
'''

MAIN: List[Case] = [
    # -- boot ---------------------------------------------------------------
    # nixpkgs' QemuMachine attributes, before and after the start.
    Case("attributes_before_start", "(machine.booted, machine.connected, machine.pid)"),
    Case("attribute_types",
         "tuple(type(d).__name__ for d in (machine.state_dir, machine.shared_dir, machine.tmp_dir))"),
    Case("attribute_dirs",
         "(machine.state_dir.is_dir(), machine.shared_dir.is_dir(),"
         " machine.state_dir.parent == machine.tmp_dir)"),
    Case("machines_qemu", "([m.name for m in machines_qemu], machines_nspawn)"),
    Case("start", "machine.start()"),
    Case("console_text", 'machine.wait_for_console_text("connecting to host", timeout=120)'),
    Case("is_up_before_first_command", "machine.is_up()"),
    Case("first_command", 'machine.succeed("echo hello")'),
    Case("is_up", "machine.is_up()"),
    Case("name", "machine.name"),
    Case("attributes_after_boot", "(machine.booted, machine.connected, type(machine.pid).__name__)"),
    Case("shared_dir_in_guest",
         '(machine.shared_dir / "conf-shared.txt").write_text("from the host\\n")\n'
         'result = machine.succeed("cat /tmp/shared/conf-shared.txt")'),
    # What else a script sees in the shared directory.
    Case("shared_dir_driver_entry",
         'machine.succeed("ls -A /tmp/shared | grep -cx .nix-vmtest-out || true")'),
    Case("prelude_coreutils_timeout", PRELUDE),

    # -- errexit (commands run under `set -euo pipefail`) ------------------
    Case("errexit_semicolon", 'machine.execute("false; echo after")'),
    Case("errexit_newline", 'machine.execute("false\\necho after")'),
    Case("errexit_and_last", 'machine.execute("true && false; echo after")'),
    Case("errexit_and_first", 'machine.execute("false && true; echo after")'),
    Case("errexit_if_condition", 'machine.execute("if false; then echo then; else echo else; fi; echo after")'),
    Case("errexit_if_body", 'machine.execute("if true; then false; echo in-if; fi; echo after")'),
    Case("errexit_or", 'machine.execute("false || echo rescued; echo after")'),
    Case("errexit_or_last", 'machine.execute("true || true; false || false; echo after")'),
    Case("errexit_bang_false", 'machine.execute("! false; echo after")'),
    Case("errexit_bang_true", 'machine.execute("! true; echo after")'),
    Case("errexit_bang_pipeline", 'machine.execute("! echo x | grep -q y; echo after")'),
    Case("errexit_while_condition", 'machine.execute("while false; do echo body; done; echo after")'),
    Case("errexit_while_body", 'machine.execute("i=0; while [ $i -lt 3 ]; do i=$((i+1)); echo $i; false; done; echo after")'),
    Case("errexit_until", 'machine.execute("until true; do :; done; echo after")'),
    Case("errexit_function", 'machine.execute("f() { false; echo in-f; }; f; echo after")'),
    Case("errexit_function_in_or", 'machine.execute("f() { false; echo in-f; }; f || echo failed; echo after")'),
    Case("errexit_group", 'machine.execute("{ false; echo in-group; }; echo after")'),
    Case("errexit_case", 'machine.execute("case x in x) false; echo in-case;; esac; echo after")'),
    Case("errexit_arithmetic", 'machine.execute("(( 0 )); echo after")'),
    Case("errexit_test", 'machine.execute("[ 1 = 2 ]; echo after")'),
    Case("errexit_eval", 'machine.execute("eval false; echo after")'),
    Case("errexit_set_plus_e", 'machine.execute("set +e; false; echo after")'),
    Case("errexit_last_command", 'machine.execute("echo before; false")'),
    Case("errexit_lines", 'machine.execute("echo one\\nfalse\\necho two\\n")'),

    # -- pipefail -----------------------------------------------------------
    Case("pipefail_first", 'machine.execute("false | true; echo after")'),
    Case("pipefail_middle", 'machine.execute("true | (exit 3) | true")'),
    Case("pipefail_last", 'machine.execute("true | false")'),
    Case("pipefail_output", 'machine.execute("echo data | (cat; exit 5) | cat")'),
    Case("pipefail_in_or", 'machine.execute("false | true || echo caught")'),
    Case("pipefail_sigpipe", 'machine.execute("yes | head -n 1")'),

    # -- nounset ------------------------------------------------------------
    Case("nounset", 'machine.execute("echo ${NO_SUCH_VAR}; echo after")'),
    Case("nounset_default", 'machine.execute("echo ${NO_SUCH_VAR:-default}")'),
    Case("nounset_in_substitution", 'machine.execute("x=$(echo $NO_SUCH_VAR); echo after")'),
    Case("nounset_positional", 'machine.execute("echo $1")'),
    Case("positional_count", 'machine.execute("echo $#")'),

    # -- subshells and command substitutions --------------------------------
    Case("subshell_fails", 'machine.execute("(false); echo after")'),
    Case("subshell_inner", 'machine.execute("(false; echo inner); echo after")'),
    Case("subshell_in_or", 'machine.execute("(false; echo inner) || echo outer; echo after")'),
    Case("subshell_status", 'machine.execute("(exit 42)")'),
    Case("substitution_assignment", 'machine.execute("x=$(false); echo after")'),
    Case("substitution_assignment_status", 'machine.execute("x=$(exit 7); echo after")'),
    Case("substitution_in_argument", 'machine.execute("echo \\"[$(false)]\\" after")'),
    Case("substitution_no_errexit_inside", 'machine.execute("echo \\"$(false; echo inner)\\"")'),
    Case("substitution_masked_by_local", 'machine.execute("f() { local x=$(false); echo in-f; }; f")'),
    Case("process_substitution", 'machine.execute("cat <(echo from-process-substitution)")'),
    Case("background_status", 'machine.execute("(exit 3) & wait $!")'),

    # -- what does not carry over to the next command -----------------------
    Case("cd", 'machine.execute("cd /proc && pwd")'),
    Case("cd_not_carried", 'machine.execute("pwd")'),
    Case("export", 'machine.execute("export CONF_FOO=bar; echo $CONF_FOO")'),
    Case("export_not_carried", 'machine.execute("echo ${CONF_FOO-unset}")'),
    Case("variable_not_carried", 'machine.execute("CONF_V=1")\nresult = machine.execute("echo ${CONF_V-unset}")'),
    Case("function_not_carried", 'machine.execute("conf_f() { echo f; }")\nresult = machine.execute("conf_f")'),
    Case("options_not_carried", 'machine.execute("set +euo pipefail")\nresult = machine.execute("false; echo after")'),
    Case("umask_not_carried", 'machine.execute("umask 077")\nresult = machine.execute("umask")'),
    Case("trap_exit", 'machine.execute("trap \\"echo trapped\\" EXIT; echo body")'),
    Case("trap_not_carried", 'machine.execute("trap \\"echo trapped\\" EXIT")\nresult = machine.execute("echo next")'),
    Case("shell_options", "machine.execute(\"set -o | grep -E '^(errexit|nounset|pipefail)' | tr -s ' \\t' ' '\")"),
    Case("exec_builtin", 'machine.execute("exec echo replaced")'),
    Case("exit_builtin", 'machine.execute("exit")'),
    Case("return_at_top_level", 'machine.execute("return 3; echo after")'),
    Case("dollar_zero", 'machine.execute("echo $0")'),
    Case("error_message_prefix", 'machine.execute("no-such-command-xyz 2>&1")'),

    # -- heredocs -----------------------------------------------------------
    Case("heredoc", 'machine.execute("cat <<EOF\\nhello $((1+1))\\nEOF")'),
    Case("heredoc_quoted", "machine.execute(\"cat <<'EOF'\\n$HOME `x` \\\\\\nEOF\\necho after\")"),
    Case("heredoc_tabs", 'machine.execute("cat <<-EOF\\n\\tindented\\n\\tEOF")'),
    Case("heredoc_then_fail", 'machine.execute("cat <<EOF\\nx\\nEOF\\nfalse\\necho after")'),
    Case("heredoc_unterminated", 'machine.execute("cat <<EOF\\nno end")'),
    Case("herestring", 'machine.execute("cat <<< \\"here string\\"")'),

    # -- multi-line commands, comments, syntax ------------------------------
    Case("multiline_for", 'machine.execute("for i in 1 2 3; do\\n  echo $i\\ndone")'),
    Case("line_continuation", 'machine.execute("echo a \\\\\\n  b")'),
    Case("trailing_newline_in_command", 'machine.execute("echo a\\n")'),
    Case("blank_lines", 'machine.execute("\\n\\necho a\\n\\n")'),
    Case("comment_only", 'machine.execute("# just a comment")'),
    Case("comment_trailing", 'machine.execute("echo a # comment")'),
    Case("comment_last_line", 'machine.execute("echo a\\n# no newline after this comment")'),
    Case("empty_command", 'machine.execute("")'),
    Case("whitespace_command", 'machine.execute("   ")'),
    Case("semicolon_at_end", 'machine.execute("echo a;")'),
    Case("syntax_error", 'machine.execute("if then fi")'),
    Case("unterminated_quote", "machine.execute(\"echo 'unterminated\")"),
    Case("quoting", "machine.execute(\"echo 'single' \\\"double\\\" $'tab\\\\there' \\\\\\\\ \\\"$((6*7))\\\"\")"),
    Case("unicode_command", 'machine.execute("echo héllo ✓")'),
    Case("long_command", 'machine.succeed("echo " + "x" * 10000) == "x" * 10000 + "\\n"'),
    Case("many_lines", 'result = machine.execute("\\n".join(f"echo {i}" for i in range(200)))'),

    # -- stdin --------------------------------------------------------------
    Case("stdin_cat", 'machine.execute("cat", timeout=1)'),
    Case("stdin_is_tty", 'machine.execute("[ -t 0 ] && echo tty || echo not-a-tty")'),
    Case("stdin_redirected", 'machine.execute("cat </dev/null; echo ok")'),
    Case("stdin_pipe", 'machine.execute("echo piped | cat")'),
    Case("stdout_is_tty", 'machine.execute("[ -t 1 ] && echo tty || echo not-a-tty")'),

    # -- output bytes -------------------------------------------------------
    Case("stderr_not_captured", 'machine.execute("echo out; echo err >&2")'),
    Case("trailing_newlines", "machine.execute(\"printf 'a\\\\n\\\\n\\\\n'\")"),
    Case("no_trailing_newline", 'machine.execute("printf a")'),
    Case("only_newlines", "machine.execute(\"printf '\\\\n\\\\n'\")"),
    Case("empty_output", 'machine.execute("true")'),
    Case("crlf_output", "machine.execute(\"printf 'a\\\\r\\\\nb\\\\r\\\\n'\")"),
    Case("cr_output", "machine.execute(\"printf 'a\\\\rb'\")"),
    Case("crlf_command", 'machine.execute("echo a\\r\\necho b\\r\\n")'),
    Case("nul_output", "machine.execute(\"printf 'a\\\\0b\\\\0'\")"),
    Case("utf8_output", "machine.execute(\"printf 'h\\\\303\\\\251llo'\")"),
    Case("non_utf8_output", "machine.execute(\"printf '\\\\377\\\\376 ok\\\\n'\")"),
    Case("truncated_utf8_output", "machine.execute(\"printf 'x\\\\303'\")"),
    Case("non_utf8_succeed", "machine.succeed(\"printf '\\\\377x'\")"),
    Case("all_bytes", "machine.execute(\"printf '" + "".join("\\\\%03o" % i for i in range(256)) + "'\")"),
    Case("large_output", 'out = machine.succeed("seq 1 60000")\nresult = (len(out), out == "".join(f"{i}\\n" for i in range(1, 60001)))'),
    Case("large_utf8_output", 'out = machine.succeed("printf x; { yes é | head -n 70000; } || true")\nresult = (len(out), out == "x" + "é\\n" * 70000)'),
    Case("large_non_utf8_output", "status, out = machine.execute(\"head -c 200000 /dev/zero | tr '\\\\000' '\\\\377'\")\nresult = (status, len(out), set(out))"),

    # -- exit codes ---------------------------------------------------------
    Case("exit_codes_0_255", 'result = [machine.execute(f"exit {i}")[0] for i in range(256)]'),
    Case("exit_256", 'machine.execute("exit 256")'),
    Case("exit_negative", 'machine.execute("exit -1")'),
    Case("exit_with_output", 'machine.execute("echo out; exit 7")'),
    Case("command_not_found", 'machine.execute("no-such-command-xyz")'),
    Case("not_executable", 'machine.execute("/etc/passwd")'),
    Case("killed_by_term", 'machine.execute("echo before; kill -TERM $$")'),
    Case("killed_by_kill", 'machine.execute("kill -KILL $$")'),
    Case("killed_by_term_no_timeout", 'machine.execute("kill -TERM $$", timeout=None)'),

    # -- per-command timeout -------------------------------------------------
    Case("timeout_execute", 'machine.execute("sleep 30", timeout=1)'),
    Case("timeout_execute_output", 'machine.execute("echo before; sleep 30", timeout=1)'),
    Case("timeout_succeed", 'machine.succeed("sleep 30", timeout=1)'),
    Case("timeout_fail", 'machine.fail("sleep 30", timeout=1)'),
    Case("alive_after_timeouts", 'machine.succeed("echo alive")'),
    Case("timeout_not_reached", 'machine.execute("sleep 1; echo done", timeout=10)'),
    Case("timeout_none", 'machine.execute("echo none", timeout=None)'),

    # -- check_return=False --------------------------------------------------
    Case("check_return_false", 'machine.execute("echo out; exit 3", check_return=False)'),
    Case("check_return_false_success", 'machine.execute("echo ok", check_return=False)'),
    Case("check_return_false_non_utf8", "machine.execute(\"printf '\\\\377'\", check_return=False)"),

    # -- succeed / fail -----------------------------------------------------
    Case("succeed_several", 'machine.succeed("echo a", "echo b")'),
    Case("succeed_nothing", "machine.succeed()"),
    Case("succeed_fails", 'machine.succeed("echo out; exit 4")'),
    Case("succeed_second_fails", 'machine.succeed("echo a", "false", "echo c")'),
    Case("fail_fails", 'machine.fail("echo out; exit 2")'),
    Case("fail_several", 'machine.fail("false", "exit 3")'),
    Case("fail_succeeds", 'machine.fail("true")'),

    # -- waits --------------------------------------------------------------
    # A wait that times out raises RequestedAssertionFailed in both (ours: its
    # subclass MachineTimeout); the message is not compared: nixpkgs says
    # "action timed out after X seconds (timeout=N)", ours what it waited for.
    Case("wait_until_succeeds", 'machine.wait_until_succeeds("echo ready")'),
    Case("wait_until_succeeds_later",
         'machine.succeed("(sleep 2; touch /tmp/conf-flag) >/dev/null 2>&1 &")\n'
         'result = machine.wait_until_succeeds("cat /tmp/conf-flag && echo found", timeout=30)'),
    Case("wait_until_succeeds_timeout", 'machine.wait_until_succeeds("echo no; false", timeout=1)', "any"),
    Case("wait_until_fails", 'machine.wait_until_fails("echo bye; false")'),
    Case("wait_until_fails_timeout", 'machine.wait_until_fails("true", timeout=1)', "any"),
    Case("wait_for_file", 'machine.succeed("touch /tmp/conf-file")\nresult = machine.wait_for_file("/tmp/conf-file")'),
    Case("wait_for_file_later",
         'machine.succeed("(sleep 2; touch /tmp/conf-later) >/dev/null 2>&1 &")\n'
         'result = machine.wait_for_file("/tmp/conf-later", timeout=30)'),
    Case("wait_for_file_timeout", 'machine.wait_for_file("/tmp/no-such-file", timeout=1)', "any"),
    # (No wait_for_open_port that succeeds: nixpkgs' `nc -z` is not in the
    # tiny guest's busybox nc, so the reference never sees a port open.)
    Case("wait_for_closed_port", "machine.wait_for_closed_port(4444, timeout=10)"),
    Case("wait_for_open_port_timeout", "machine.wait_for_open_port(4444, timeout=1)", "any"),
    Case("wait_for_open_unix_socket_timeout", 'machine.wait_for_open_unix_socket("/tmp/no.sock", timeout=1)', "any"),
    Case("wait_for_console_text_timeout", 'machine.wait_for_console_text("NEVER-ON-THE-CONSOLE", timeout=1)', "any"),
    Case("wait_for_unit_without_systemd", 'machine.wait_for_unit("foo.service", timeout=2)'),
    # No systemctl in the tiny guest: both raise RequestedAssertionFailed
    # with nixpkgs' message (exit code 127).
    Case("get_unit_info_fails", 'machine.get_unit_info("foo.service")'),
    Case("get_unit_info_fails_user", 'machine.get_unit_info("foo.service", user="alice")'),
    Case("sleep", "machine.sleep(1)"),
    Case("retry_timeout", "retry(lambda last: False, timeout_seconds=1)", "numbers"),
    # A datetime.timedelta as a timeout: nixpkgs takes one from 2026-08
    # (PR #542374); the 26.11 reference does not.
    Case("timedelta_succeed",
         'import datetime\nresult = machine.succeed("echo td", timeout=datetime.timedelta(seconds=30))',
         "any"),
    Case("timedelta_wait",
         'import datetime\n'
         'result = machine.wait_until_succeeds("echo td", timeout=datetime.timedelta(seconds=30))',
         "any"),
    Case("retry_second_try", "n = [0]\ndef f(last):\n    n[0] += 1\n    return n[0] >= 2\nretry(f, timeout_seconds=10)\nresult = n[0]"),

    # -- exceptions from the script's own helpers ----------------------------
    Case("t_assert_equal", "t.assertEqual(1, 2)"),
    Case("t_assert_in", 't.assertIn("a", "xyz")'),
    Case("subtest_raises", 'with subtest("conformance subtest"):\n    raise ValueError("boom")'),
    Case("subtest_value", 'with subtest("a passing subtest"):\n    result = machine.succeed("echo in-subtest")'),

    # -- a detached child holding stdout -------------------------------------
    # nixpkgs reads the output until every writer has closed it, so it waits
    # for the child (here 6 s; `sleep infinity &` hangs it for good).
    Case("detached_child",
         't0 = time.monotonic()\nr = machine.execute("sleep 6 &")\n'
         'result = (r, "returned within 4 s" if time.monotonic() - t0 < 4 else "waited for the child")'),
    Case("detached_child_redirected",
         't0 = time.monotonic()\nr = machine.execute("sleep 6 >/dev/null 2>&1 &")\n'
         'result = (r, "returned within 4 s" if time.monotonic() - t0 < 4 else "waited for the child")'),
    Case("after_detached_child", 'machine.succeed("echo still-works")'),
]

# check_output=False: nixpkgs sends the command and returns (-2, "") without
# reading its answer, which the next command then reads as its own: its
# connection to the shell is out of step from then on, so this is a script
# of its own, ending with a crash (nixpkgs would run `sync` at the end).
CHECK_OUTPUT: List[Case] = [
    Case("check_output_false", 'machine.execute("echo hi", check_output=False)'),
    Case("command_after_check_output_false", 'time.sleep(3)\nresult = machine.execute("echo x")'),
]

SCRIPTS: List[Script] = [
    Script("main", MAIN),
    # Bytes in the command itself that bash drops (NUL) or that cannot be
    # sent at all (a lone surrogate: nixpkgs' str.encode raises).
    Script("nul_in_command", [
        Case("boot_for_nul", 'machine.succeed("true")'),
        Case("nul_in_command", 'machine.execute("echo a\\x00b")', hang_after=8),
    ]),
    Script("surrogate_in_command", [
        Case("boot_for_surrogate", 'machine.succeed("true")'),
        # The position in the message counts the framing around the command.
        Case("surrogate_in_command", 'machine.execute("echo \\udcff")', "numbers", hang_after=8),
    ]),
    # The first command after a boot, which ours runs from one console line
    # before the shell is set up: errexit, and output that waits for the
    # setup (a NUL byte) with `$0`.
    Script("first_command_errexit", [
        Case("first_command_errexit", 'machine.execute("true && false; echo after")'),
        Case("second_command_errexit", 'machine.execute("true && false; echo after")'),
    ]),
    Script("first_command_nul_output", [
        Case("first_command_nul_output", 'machine.execute("printf \'a\\\\0b \'; echo $0")'),
    ]),
    Script("check_output", [Case("boot_for_check_output", 'machine.succeed("true")')] + CHECK_OUTPUT,
           source="machine.crash()\n"),
    # Scripts that fail: the driver's exit code.
    Script("uncaught_succeed_failure", source='machine.succeed("false")\n'),
    Script("uncaught_python_exception", source='raise ValueError("boom")\n'),
    Script("uncaught_assert", source="assert 1 == 2\n"),
    Script("uncaught_t_assert", source="t.assertEqual(1, 2)\n"),
    Script("subtest_exception", source='with subtest("failing"):\n    raise RuntimeError("boom")\n'),
    Script("subtest_assertion", source='with subtest("failing"):\n    t.assertTrue(False)\n'),
    Script("sys_exit_3", source="import sys\nsys.exit(3)\n"),
    Script("syntax_error", source="def broken(:\n    pass\n"),
    Script("passes_without_boot", source="x = 1\n"),
    Script("global_timeout", source="import time\ntime.sleep(60)\n", global_timeout=3),
]

