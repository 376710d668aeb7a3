"""Compares NixOS tests evaluated by a real nixpkgs tree upstream (nixpkgs'
own driver) and with nix-vmtest's test module (our driver): see README.md.

Runs where `nix-instantiate` and `nix-store` are a Nix that evaluates the
tree (tests/nixpkgs-eval/run.sh runs it through .ci/with-nix). Prints one
block per case and ends with `nixpkgs-eval: N passed, N failed`; exits 1 if
anything failed.

For a case with both sides it checks that
  - the driver reads the same driverConfiguration.json (the same start
    scripts, VLANs, test script and timeout), the nodes' start scripts and
    system toplevels are the same derivations: the guests are the same;
  - the run derivations differ, and every derivation or source in one
    side's closure and not the other's is the driver: upstream's run, or
    nixpkgs' driver derivation where ours does not build it for its checks;
    our run, our driver wrapper, or nix-vmtest's package and its build
    closure. Anything else is a guest-side difference, and fails the case.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# A guard: Nix's collected heap may not grow past this (Boehm GC reads it);
# a batch that needs more fails and its cases are evaluated one by one.
GC_LIMIT = os.environ.get("NIX_VMTEST_EVAL_HEAP", "8G")
# A large first heap: a third less CPU time here (fewer collections).
GC_INITIAL = os.environ.get("NIX_VMTEST_EVAL_INITIAL_HEAP", "4G")


class Evaluated:
    def __init__(self, returncode, stdout, stderr, seconds, cpu, max_rss_mb):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.seconds, self.cpu, self.max_rss_mb = seconds, cpu, max_rss_mb


def nix_eval(nixpkgs, overlay, extra, check=True):
    """nix-instantiate --eval of eval.nix; its time, CPU time and peak memory too."""
    cmd = ["nix-instantiate", "--option", "substituters", "", "--eval", "--strict", "--json",
           "--read-write-mode", str(HERE / "eval.nix"), "--arg", "nixpkgs", nixpkgs,
           "--arg", "overlays", f"[ (import {overlay}) ]"] + extra
    t0 = time.monotonic()
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, GC_MAXIMUM_HEAP_SIZE=GC_LIMIT,
                                         GC_INITIAL_HEAP_SIZE=GC_INITIAL))
        out, err = proc.communicate()
    # communicate() reaped it; its usage is in RUSAGE_CHILDREN's growth.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - nix_eval.cpu_seen
    nix_eval.cpu_seen = usage.ru_utime + usage.ru_stime
    r = Evaluated(proc.returncode, out, err, time.monotonic() - t0, cpu, usage.ru_maxrss // 1024)
    if check and r.returncode != 0:
        raise RuntimeError(err)
    return r


nix_eval.cpu_seen = 0.0


_closures = {}


def closure(path):
    if path not in _closures:
        out = subprocess.run(["nix-store", "--query", "--requisites", path],
                             capture_output=True, text=True, check=True).stdout
        _closures[path] = set(out.split())
    return _closures[path]


def name_of(path):
    """`/nix/store/<hash>-foo-1.0.drv` -> `foo-1.0.drv`."""
    return re.sub(r"^/nix/store/[a-z0-9]{32}-", "", path)


def summarize(paths, limit=6):
    names = sorted(name_of(p) for p in paths)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def compare(name, case):
    """Returns (ok, lines)."""
    lines = []
    bad = []
    if "failedChecks" in case:
        for c in case["failedChecks"]:
            bad.append(f"check failed: {c}")
        lines.append("nix-vmtest only (no upstream counterpart); checks: "
                     + ("all passed" if not case["failedChecks"] else f"{len(case['failedChecks'])} failed"))
        return not bad, lines + bad
    if "oursFails" in case:
        if case["oursFails"]:
            lines.append("ours: refused at evaluation, as it must be (the message is checked separately)")
        else:
            bad.append("ours: instantiated, but must be refused")
        return not bad, lines + bad

    up, ours = case["up"], case["ours"]
    same = []
    if up["config"] == ours["config"]:
        same.append("driverConfiguration.json")
    else:
        bad.append(f"driverConfiguration.json differs: {up['config']} vs {ours['config']}")
    if up["vms"] == ours["vms"]:
        same.append(f"start scripts ({', '.join(sorted(up['vms']))})")
    else:
        bad.append(f"start scripts differ: {up['vms']} vs {ours['vms']}")
    if up["toplevels"] == ours["toplevels"]:
        same.append("system toplevels")
    else:
        bad.append(f"toplevels differ: {up['toplevels']} vs {ours['toplevels']}")
    lines.append("same: " + ", ".join(same) if same else "same: nothing")

    if bad:
        # The guests differ: what else differs follows from that.
        return False, lines + bad
    if up["run"] == ours["run"]:
        bad.append("the run derivations are the same: the driver was not swapped")
    up_c, ours_c = closure(up["run"]), closure(ours["run"])
    up_only, ours_only = up_c - ours_c, ours_c - up_c
    # With the same driverConfiguration.json (as here), what is left
    # in one closure and not the other must be the driver: upstream's run
    # and nixpkgs' driver derivation (ours builds that one too unless the
    # script checks are skipped); our run and our driver wrapper, i.e.
    # nix-vmtest's package (and its build closure) and whatever else the
    # wrapper takes (a Python with extraPythonPackages, OCR tools).
    unexplained_up = up_only - {up["run"]} - closure(up["driver"])
    up_driver = up_only - {up["run"]} - unexplained_up
    pkg = closure(ours["package"])
    wrapper = closure(ours["driver"])
    unexplained_ours = ours_only - {ours["run"]} - wrapper
    ours_pkg = (ours_only & pkg) - {ours["run"], ours["driver"]}
    ours_other = ours_only - pkg - unexplained_ours - {ours["run"], ours["driver"]}

    lines.append(f"upstream only: {name_of(up['run'])} (runs nixpkgs' driver)"
                 + (f"; nixpkgs' driver, which ours does not build (script checks skipped): "
                    f"{summarize(up_driver, 3)}" if up_driver else ""))
    lines.append(f"ours only: {name_of(ours['run'])}, {name_of(ours['driver'])} (our driver, same --config)"
                 + (f"; nix-vmtest's package and its build closure: {len(ours_pkg)} paths "
                    f"({summarize([p for p in ours_pkg if p.endswith('.drv')], 3)})" if ours_pkg else "")
                 + (f"; what our driver wrapper adds: {summarize(ours_other, 4)}" if ours_other else ""))
    if unexplained_up:
        bad.append("upstream only, not the driver: " + summarize(unexplained_up, 12))
    if unexplained_ours:
        bad.append("ours only, not the driver: " + summarize(unexplained_ours, 12))

    if "interactive" in case:
        i = case["interactive"]
        if i["up"] != i["ours"]:
            lines.append(f"driverInteractive: instantiates ({name_of(i['ours'])}), ours differs from upstream's")
        else:
            bad.append("driverInteractive is upstream's")
    if "interactiveFails" in case:
        if case["interactiveFails"]:
            lines.append("driverInteractive: refused at evaluation (interactive.sshBackdoor), as it must be")
        else:
            bad.append("driverInteractive instantiated, but interactive.sshBackdoor must be refused")
    return not bad, lines + bad


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nixpkgs", required=True)
    p.add_argument("--overlay", required=True, help="no-hackage.nix")
    p.add_argument("cases", nargs="*", help="case names (default: all; see --list)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()

    names = json.loads(nix_eval(args.nixpkgs, args.overlay, ["--arg", "list", "true"]).stdout)
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [c for c in args.cases if c not in names]
    if unknown:
        p.error(f"no such case: {unknown}")
    wanted = args.cases or names

    # Batches: each tutorial test's cases together (they share upstream's
    # evaluations), the others a few at a time (a Nix process keeps what its
    # tests pulled out of nixpkgs: about 0.5 GB a test).
    size = int(os.environ.get("NIX_VMTEST_EVAL_BATCH", "6"))
    groups = {}
    for c in wanted:
        if c.startswith("tutorial"):
            groups.setdefault(c.split(":")[0], []).append(c)
    rest = [c for c in wanted if not c.startswith("tutorial")]
    batches = list(groups.values()) + [rest[i:i + size] for i in range(0, len(rest), size)]

    passed = failed = 0
    t0 = time.monotonic()
    results = {}
    for batch in batches:
        only = ["--arg", "only", "[ " + " ".join(json.dumps(c) for c in batch) + " ]"]
        r = nix_eval(args.nixpkgs, args.overlay, only, check=False)
        print(f"nixpkgs-eval: evaluated {len(batch)} case(s) in {r.seconds:.0f} s"
              f" ({r.cpu:.0f} s CPU, peak {r.max_rss_mb} MB so far)", flush=True)
        if r.returncode == 0:
            results.update(json.loads(r.stdout))
            continue
        # Find which: each case alone.
        print("nixpkgs-eval: that batch failed; each of its cases alone:", flush=True)
        for c in batch:
            r = nix_eval(args.nixpkgs, args.overlay, ["--arg", "only", f"[ {json.dumps(c)} ]"], check=False)
            if r.returncode == 0:
                results.update(json.loads(r.stdout))
            else:
                failed += 1
                err = [l for l in r.stderr.splitlines() if l.strip()]
                tail = [l for l in err if "error" in l.lower() and l.strip() != "error:"][-3:] or err[-5:]
                print(f"\nFAIL {c}\n  does not instantiate:\n" + "\n".join("    " + l.strip() for l in tail),
                      flush=True)
    t_eval = time.monotonic() - t0
    print(f"nixpkgs-eval: evaluation took {t_eval:.0f} s ({nix_eval.cpu_seen:.0f} s CPU)")

    for c in wanted:
        if c not in results:
            continue
        ok, lines = compare(c, results[c])
        print(f"\n{'ok  ' if ok else 'FAIL'} {c}")
        for line in lines:
            print("  " + line)
        if ok:
            passed += 1
        else:
            failed += 1

    print(f"\nnixpkgs-eval: evaluated and compared in {time.monotonic() - t0:.0f} s")
    print(f"nixpkgs-eval: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
