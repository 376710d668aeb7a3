#!/usr/bin/env python3
"""The conformance suite: the same test scripts through nixpkgs' own test
driver (the reference, from ../shared/nixpkgs, never copied into the repo)
and through ours, on the same guest; every observation compared.

    python3 tests/conformance/run.py [--keep] [--list] [SCRIPT...]

SCRIPT names scripts of cases.py (default: all). --keep keeps the work dir
(the generated scripts, each driver's log and results). Environment:
NIX_VMTEST_GUESTS (the guests' dir; default tests/guests/build.sh
--print-dir), NIX_VMTEST_DRIVER (default target/release/nixos-test-driver),
NIX_VMTEST_CONFORMANCE_WRAPPER=1 (use the setpriv wrapper below even where
unshare works), plus what reference-env.sh reads.

For each script of cases.py it generates one test script and runs it
through the reference and through ours (two runs at a time, each under a
time limit, each booting its own QEMU), then compares,
case by case, what the script saw (a value's repr, or an exception's class
and message), then the drivers' exit codes. Prints a table (case, reference,
ours, verdict) and ends with `conformance: N passed, N failed`.

A row passes when both agree, or when it is in KNOWN below (a listed
difference, with its reason) and they differ. An unlisted difference fails;
so does a listed one that no longer differs ("stale": take it off KNOWN and
off the README). Without ../shared/nixpkgs it prints that it did not run and
exits 0.

How the reference is run: `python -c 'import test_driver; ...main()' -c
config.json -o DIR` with the driver's src on PYTHONPATH, in a venv outside
the repo (reference-env.sh). It starts the start script through /bin/sh,
which is dash here: dash forks for the script instead of handing over to
it, so stopping the VM would stop only dash. Under Nix /bin/sh is bash, so
the reference runs in a mount namespace where /bin/sh is bash (`unshare
--mount`); where that is not allowed, the start script it gets is a wrapper
that runs the real one under `setpriv --pdeathsig KILL` (QEMU then dies
with dash). QEMU_OPTS gives it `-machine accel=tcg`, as ours picks TCG
where KVM does not work.
"""

import argparse
import concurrent.futures
import json
import os
import re
import signal
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the tree

import cases  # noqa: E402

# Differences that remain, each with its reason (the README's "What is
# different" lists them too). Keys are case names, or "exit code: SCRIPT".
KNOWN: Dict[str, str] = {
    "console_text":
        "wait_for_console_text returns the line that matched; nixpkgs returns None.",
    "detached_child":
        "nixpkgs reads a command's output until every process holding its stdout has closed it,"
        " so a detached child that keeps stdout makes it wait for the child (nixpkgs #144875;"
        " with `sleep infinity &` for ever); ours returns when the command's shell exits.",
    "command_after_check_output_false":
        "nixpkgs does not read the answer of a check_output=False command, so the next command"
        " reads it as its own and fails (here a ValueError: base64 parsed as the exit status), and"
        " its connection to the shell stays out of step; ours reads and drops that answer.",
    "stdin_cat":
        "A command's stdin is /dev/null. Under nixpkgs it is the backdoor shell's, the console:"
        " `cat` waits for input that never comes (here until its 1 s timeout, 124), and would take"
        " the driver's next commands as its input if it came.",
    "stdin_is_tty":
        "Same cause: stdin is /dev/null, not the console's tty.",
    "check_return_false_non_utf8":
        "With check_return=False nixpkgs decodes the output strictly and raises UnicodeDecodeError"
        " on bytes that are not UTF-8; ours decodes with errors='replace' there too, as nixpkgs"
        " itself does with check_return=True.",
    "error_message_prefix":
        "bash's own error messages (seen with 2>&1) start `/dev/hvc0: line N:` (the backdoor"
        " shell's script and line), not `bash: line 1:`: the command runs in a subshell of that"
        " shell, not in `bash -c`.",
    "return_at_top_level":
        "`return` outside a function: under `bash -c` an error (status 2, which set -e makes the"
        " command's); ours runs the command in a subshell within a function of the backdoor"
        " shell, where `return N` ends the command with status N.",
    "shared_dir_driver_entry":
        "The shared directory holds the driver's hidden `.nix-vmtest-out`, which big command"
        " outputs pass through (each file removed once the host read it); nixpkgs' holds only"
        " what the test put there.",
    "exit code: global_timeout":
        "When the global timeout fires nixpkgs ends its own process with SIGTERM (exit status"
        " 143); ours ends the test, says why, and exits 1.",
    "timedelta_succeed":
        "A datetime.timedelta timeout: nixpkgs' 26.11 driver puts it into `timeout 0:00:30 bash -c"
        " ...`, which refuses it (exit 125, so succeed raises); ours, as nixpkgs from 2026-08"
        " (PR #542374), takes it as its seconds.",
    "timedelta_wait":
        "Same: nixpkgs' 26.11 retry() compares a float with the timedelta and raises TypeError;"
        " ours waits, as later nixpkgs.",
    "wait_for_unit_without_systemd":
        "On a guest without systemctl nixpkgs fails at once (RequestedAssertionFailed: systemctl"
        " exited 127); ours waits out the timeout and raises MachineTimeout (a"
        " RequestedAssertionFailed). NixOS guests always have systemd.",
}

# Environment variables either driver reads as defaults for its options, or
# that change how the reference starts QEMU: none may leak in from the caller.
SCRUB = (
    "startScripts", "vlans", "testScript", "out", "globalTimeout", "nodesJson",
    "NIX_VMTEST_ACCEL", "LOGFILE", "logLevel", "DISPLAY", "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR", "QEMU_OPTS", "QEMU_KERNEL_PARAMS", "PYTHONPATH",
    "PYTHONHOME", "VIRTUAL_ENV", "NIX_VMTEST_CONFORMANCE_RESULTS",
    "NIX_VMTEST_CONFORMANCE_WRAPPER",
)

HEADER = '''\
# Generated by tests/conformance/run.py from tests/conformance/cases.py
# (script "{name}"); the same file runs through both drivers.
import json as _json
import os as _os
import time

_RESULTS = _os.environ["NIX_VMTEST_CONFORMANCE_RESULTS"]


def _record(obs):
    with open(_RESULTS, "a", encoding="utf-8") as f:
        f.write(_json.dumps(obs) + "\\n")


def _case(name, source, mode):
    _record({{"begin": name}})
    t0 = time.monotonic()
    try:
        code = compile(source, "<case " + name + ">", mode)
        if mode == "eval":
            value = eval(code, globals())
        else:
            ns = dict(globals())
            exec(code, ns)
            value = ns.get("result")
        obs = {{"kind": "value", "value": repr(value)}}
    except Exception as e:
        obs = {{
            "kind": "exception",
            "type": type(e).__name__,
            "classes": [c.__name__ for c in type(e).__mro__],
            "message": str(e),
        }}
    obs["name"] = name
    obs["seconds"] = round(time.monotonic() - t0, 3)
    _record(obs)


'''


def generate(script: cases.Script) -> str:
    text = HEADER.format(name=script.name)
    for case in script.cases:
        try:
            compile(case.source, case.name, "eval")
            mode = "eval"
        except SyntaxError:
            mode = "exec"
        text += f"_case({case.name!r}, {case.source!r}, {mode!r})\n"
    if script.source:
        text += "\n" + script.source
    return text


# -- running a driver ---------------------------------------------------------

# The driver runs under way, by session id (= pid): a SIGTERM or SIGINT to
# the runner ends them (their sessions are their own, so a signal to the
# runner's process group does not reach them) and no new ones start.
ACTIVE: Dict[int, "subprocess.Popen[bytes]"] = {}
ABORTED: List[int] = []


def kill_session(sid: int) -> None:
    for pid in [sid] + session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def on_signal(signum: int, _frame: Any) -> None:
    ABORTED.append(signum)
    for sid in list(ACTIVE):
        kill_session(sid)
    print(f"conformance: stopped by signal {signum}; its driver runs killed", flush=True)
    raise SystemExit(128 + signum)


def session_pids(sid: int) -> List[int]:
    """Processes (still) in session `sid`, the one a driver run was given."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid and int(entry) != sid:
            pids.append(int(entry))
    return pids


class Run:
    """One driver run of one script: its exit code and what its cases saw."""

    def __init__(self, label: str, exit_code: Optional[int], hung: bool, stopped_in: Optional[str],
                 seconds: float, results: Dict[str, Dict[str, Any]], running: Optional[str],
                 log: Path, leftovers: int):
        self.label = label
        self.exit_code = exit_code
        self.hung = hung  # the whole run went past its time limit
        self.stopped_in = stopped_in  # a case went past its hang_after: the run was stopped
        self.seconds = seconds
        self.results = results
        self.running = running  # the case that had begun and not ended
        self.log = log
        self.leftovers = leftovers


def read_results(path: Path) -> Tuple[Dict[str, Dict[str, Any]], Optional[str]]:
    results: Dict[str, Dict[str, Any]] = {}
    running = None
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                obs = json.loads(line)
            except ValueError:
                continue  # a line being written
            if "begin" in obs:
                running = obs["begin"]
            else:
                results[obs["name"]] = obs
                running = None
    return results, running


def stop(proc: "subprocess.Popen[bytes]") -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_driver(label: str, cmd: List[str], env: Dict[str, str], cwd: Path, limit: float,
               results_file: Path, log: Path, hang_after: Dict[str, int]) -> Run:
    env = dict(env, NIX_VMTEST_CONFORMANCE_RESULTS=str(results_file))
    t0 = time.monotonic()
    hung = False
    stopped_in = None
    pending: Optional[str] = None
    pending_since = t0
    with open(log, "wb") as logf:
        # A session of its own: whatever the run starts can be found (and
        # ended) afterwards, and nothing else is touched.
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        ACTIVE[proc.pid] = proc
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - t0 > limit:
                hung = True
                stop(proc)
                break
            _, running = read_results(results_file)
            if running != pending:
                pending, pending_since = running, now
            if pending in hang_after and now - pending_since > hang_after[pending]:
                stopped_in = pending
                stop(proc)
                break
    del ACTIVE[proc.pid]
    seconds = time.monotonic() - t0
    # Whatever the run left in its session (a QEMU it did not stop) is ours
    # to end: count it, then kill it.
    left = session_pids(proc.pid)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_pids(proc.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code = proc.returncode
    exit_code = None if hung or stopped_in else (128 - code if code < 0 else code)
    results, running = read_results(results_file)
    if running and (hung or stopped_in):
        results[running] = {"kind": "hung", "name": running,
                            "seconds": round(time.monotonic() - pending_since, 1)}
    return Run(label, exit_code, hung, stopped_in, seconds, results, running, log, len(left))


# -- comparing ----------------------------------------------------------------

def normalize(message: str, how: str) -> Optional[str]:
    if how == "any":
        return None
    if how == "numbers":
        return re.sub(r"\d+(\.\d+)?", "N", message)
    return message


def same(case: cases.Case, ref: Dict[str, Any], ours: Dict[str, Any]) -> bool:
    if ref["kind"] != ours["kind"]:
        return False
    if ref["kind"] == "hung":
        return True
    if ref["kind"] == "value":
        return bool(ref["value"] == ours["value"])
    return (ref["type"] in ours["classes"]
            and normalize(ref["message"], case.message) == normalize(ours["message"], case.message))


def show(obs: Optional[Dict[str, Any]]) -> str:
    if obs is None:
        return "(no result)"
    if obs["kind"] == "value":
        return obs["value"]
    if obs["kind"] == "hung":
        return f"hung (no answer in {obs['seconds']} s)"
    return f"{obs['type']}: {obs['message']}"


def show_exit(run: Run) -> str:
    if run.stopped_in:
        return f"stopped (case {run.stopped_in} hung)"
    return "hung" if run.hung else str(run.exit_code)


def clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


class Row:
    def __init__(self, name: str, ref: str, ours: str, verdict: str, ok: bool, detail: str = ""):
        self.name, self.ref, self.ours, self.verdict, self.ok, self.detail = name, ref, ours, verdict, ok, detail


def verdict(name: str, equal: bool, both_present: bool) -> Tuple[str, bool]:
    if not both_present:
        return "MISSING", False
    if name in KNOWN:
        return ("STALE", False) if equal else ("known", True)
    return ("same", True) if equal else ("DIFF", False)


def compare(script: cases.Script, ref: Run, ours: Run) -> List[Row]:
    rows = []
    for case in script.cases:
        r, o = ref.results.get(case.name), ours.results.get(case.name)
        equal = r is not None and o is not None and same(case, r, o)
        v, ok = verdict(case.name, equal, r is not None and o is not None)
        detail = ""
        if not ok:
            detail = f"  reference: {show(r)}\n  ours:      {show(o)}"
        rows.append(Row(case.name, show(r), show(o), v, ok, detail))
    name = f"exit code: {script.name}"
    if ref.stopped_in or ours.stopped_in:
        # The hung case has its row; an exit code the runner caused is none.
        return rows + leftover_rows(script, ref, ours)
    equal = not ref.hung and not ours.hung and ref.exit_code == ours.exit_code
    v, ok = verdict(name, equal, True)
    rows.append(Row(name, show_exit(ref), show_exit(ours), v, ok,
                    "" if ok else f"  reference: {show_exit(ref)}\n  ours:      {show_exit(ours)}"))
    return rows + leftover_rows(script, ref, ours)


def leftover_rows(script: cases.Script, ref: Run, ours: Run) -> List[Row]:
    return [Row(f"leftovers: {script.name} ({run.label})", "", "", "LEFTOVERS", False,
                f"  {run.leftovers} process(es) of the run were still there after it; killed")
            for run in (ref, ours) if run.leftovers and not (run.hung or run.stopped_in)]


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in lines[-n:])


# -- main ---------------------------------------------------------------------

def reference_env() -> Tuple[Optional[Dict[str, str]], int]:
    proc = subprocess.run(["bash", str(HERE / "reference-env.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return None, proc.returncode
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return values, 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--list", action="store_true", help="list the scripts and cases")
    parser.add_argument("scripts", nargs="*", help="scripts to run (default: all)")
    args = parser.parse_args()

    by_name = {s.name: s for s in cases.SCRIPTS}
    names = [c.name for s in cases.SCRIPTS for c in s.cases] + [f"exit code: {s.name}" for s in cases.SCRIPTS]
    twice = sorted({n for n in names if names.count(n) > 1})
    unused = sorted(set(KNOWN) - set(names))
    if twice or unused:
        print(f"conformance: cases.py names twice: {twice}; KNOWN names no case: {unused}")
        print("conformance: 0 passed, 1 failed")
        return 1
    if args.list:
        for s in cases.SCRIPTS:
            print(s.name + ": " + (", ".join(c.name for c in s.cases) or "(exit code only)"))
        return 0
    unknown = [n for n in args.scripts if n not in by_name]
    if unknown:
        parser.error(f"no such script: {', '.join(unknown)} (see --list)")
    selected = [by_name[n] for n in args.scripts] if args.scripts else list(cases.SCRIPTS)

    ref_env, rc = reference_env()
    if rc == 3:
        print("conformance: did not run: ../shared/nixpkgs is missing")
        return 0
    if ref_env is None:
        print("conformance: the reference driver could not be set up (reference-env.sh failed)")
        print("conformance: 0 passed, 1 failed")
        return 1

    driver = Path(os.environ.get("NIX_VMTEST_DRIVER") or ROOT / "target/release/nixos-test-driver")
    guests = os.environ.get("NIX_VMTEST_GUESTS")
    if not guests:
        guests = subprocess.run(["bash", str(ROOT / "tests/guests/build.sh"), "--print-dir"],
                                stdout=subprocess.PIPE, text=True).stdout.strip()
    if not driver.exists() or not guests or not Path(guests).is_dir():
        print(f"conformance: needs the driver ({driver}) and the guests ({guests or 'not built'}):"
              " run .ci/setup")
        print("conformance: 0 passed, 1 failed")
        return 1

    base_env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    work = Path(tempfile.mkdtemp(prefix="nix-vmtest-conformance."))
    try:
        scripts_dir = work / "start"
        scripts_dir.mkdir()
        subprocess.run(["bash", str(ROOT / "tests/guests/make-start-script"),
                        "machine", "tiny", "1", "", "", str(scripts_dir)],
                       env=dict(base_env, NIX_VMTEST_GUESTS_DIR=guests), check=True)
        start = scripts_dir / "run-machine-vm"

        # /bin/sh for the reference: bash, in a mount namespace of its own.
        # (NIX_VMTEST_CONFORMANCE_WRAPPER=1 takes the fallback anyway.)
        if (not os.environ.get("NIX_VMTEST_CONFORMANCE_WRAPPER")
                and subprocess.run(["unshare", "--mount", "true"],
                                   stderr=subprocess.DEVNULL).returncode == 0):
            ref_start = start
            ref_prefix = ["unshare", "--mount", "sh", "-c",
                          'mount --bind /bin/bash /bin/sh && exec "$@"', "sh"]
            how = "/bin/sh is bash (unshare --mount)"
        else:
            wrapped = work / "wrapped"
            wrapped.mkdir()
            ref_start = wrapped / "run-machine-vm"
            ref_start.write_text(f"#!/bin/sh\nexec setpriv --pdeathsig KILL {shlex.quote(str(start))} \"$@\"\n")
            ref_start.chmod(0o755)
            ref_prefix = []
            how = "start script under setpriv --pdeathsig (no mount namespace allowed)"
        python, driver_src = ref_env["python"], ref_env["driver_src"]
        print(f"reference: nixpkgs' driver at {driver_src}")
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip()
        print(f"reference: Python {version} ({python}); {how}")
        print(f"ours: {driver}")

        # Each run's TMPDIR (state dirs, sockets) is short: work/t/<n><r|o>,
        # as a unix socket's path has at most 107 bytes.
        prepared = {}
        for n, script in enumerate(selected):
            d = work / script.name
            test = d / "script.py"
            for label in ("reference", "ours"):
                (d / label / "out").mkdir(parents=True)
                (work / "t" / f"{n}{label[0]}").mkdir(parents=True)
            test.write_text(generate(script))
            config = d / "reference" / "config.json"
            config.write_text(json.dumps({
                "vms": {"machine": {"name": "machine", "start_script": str(ref_start)}},
                "containers": {}, "vlans": [], "global_timeout": script.global_timeout,
                "enable_ssh_backdoor": False, "test_script": str(test),
            }))
            prepared[script.name] = (d, test, config, n)

        def run(label: str, script: cases.Script) -> Run:
            if ABORTED:
                return Run(label, None, True, None, 0.0, {}, None, Path("/dev/null"), 0)
            d, test, config, n = prepared[script.name]
            tmp = str(work / "t" / f"{n}{label[0]}")
            if label == "reference":
                cmd = ref_prefix + [
                    python, "-c",
                    "import sys, test_driver; sys.argv[0] = 'nixos-test-driver'; test_driver.main()",
                    "-c", str(config), "-o", str(d / "reference/out")]
                env = dict(base_env, TMPDIR=tmp, QEMU_OPTS="-machine accel=tcg",
                           PYTHONPATH=driver_src)
            else:
                cmd = [str(driver), "--start-scripts", str(start), "-o", str(d / "ours/out"),
                       "--global-timeout", str(script.global_timeout), str(test)]
                env = dict(base_env, TMPDIR=tmp)
            r = run_driver(label, cmd, env, d / label, script.global_timeout + 30,
                           d / label / "results.jsonl", d / label / "log",
                           {c.name: c.hang_after for c in script.cases if c.hang_after})
            print(f"{time.strftime('%T')} {script.name}: {label} exit {show_exit(r)} in {r.seconds:.1f} s",
                  flush=True)
            return r

        # Two runs at a time (at most two QEMUs, one per core), taken in
        # order from one list: the longest (main, the reference's first) first.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = {(label, s.name): pool.submit(run, label, s)
                    for s in selected for label in ("reference", "ours")}
            runs = {key: job.result() for key, job in jobs.items()}

        rows: List[Row] = []
        notes: List[str] = []
        for script in selected:
            ref, ours = runs[("reference", script.name)], runs[("ours", script.name)]
            for r in (ref, ours):
                if r.stopped_in:
                    limit = next(c.hang_after for c in script.cases if c.name == r.stopped_in)
                    notes.append(f"{script.name} ({r.label}): stopped by the runner: case"
                                 f" {r.stopped_in} had no answer after {limit} s")
                elif r.running or (script.cases and r.exit_code != 0):
                    what = f"stopped in case {r.running}" if r.running else f"exit {show_exit(r)}"
                    notes.append(f"{script.name} ({r.label}): {what}; the end of its log:\n{tail(r.log)}")
            rows += compare(script, ref, ours)

        w = max(len(row.name) for row in rows)
        print(f"\n{'case':<{w}}  {'reference':<40}  {'ours':<40}  verdict")
        for row in rows:
            print(f"{row.name:<{w}}  {clip(row.ref, 40):<40}  {clip(row.ours, 40):<40}  {row.verdict}")
        failed = [row for row in rows if not row.ok]
        known = [row for row in rows if row.verdict == "known"]
        if known:
            print("\nlisted differences (KNOWN in tests/conformance/run.py, and the README):")
            for row in known:
                print(f"- {row.name}: {KNOWN[row.name]}")
        if failed:
            print("\nfailures:")
            for row in failed:
                print(f"{row.verdict} {row.name}\n{row.detail}")
                if row.verdict == "STALE":
                    print("  listed in KNOWN (and the README) but no longer differs: take it off both")
        for note in notes:
            print("\n" + note)
        if args.keep:
            print(f"\nwork dir kept: {work}")
        print(f"conformance: {len(rows) - len(failed)} passed, {len(failed)} failed")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
