"""Compares two vm-test-run derivations, one from the library
(nix/backend.nix) and one from the plugin (src/plugin/plan.rs), with their
`.driver` and snapshot (`vm-snapshot-<name>-<node>`, inputs of `.driver`)
derivations: builder, arguments and environment must be the same, and so
must the set of snapshots,
store paths standing as their names. Allowed: `vmTestCheck` (the library's
`.driver` checks the script; the plugin did at evaluation) and the
driver's own store path (each imports it its way).

    python3 same-shape.py LIBRARY.drv PLUGIN.drv

Prints what differs and exits 1, or prints a summary line."""

import json
import re
import subprocess
import sys

STORE = re.compile(r"/nix/store/[0-9a-z]{32}-")


def show(drv):
    out = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "show-derivation", drv],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)[drv]


def driver_of(run):
    found = [d for d in run["inputDrvs"] if re.search(r"-nixos-test-driver-[^/]*\.drv$", d)]
    assert len(found) == 1, f"the run needs one .driver, has {found}"
    return found[0]


def snapshots_of(driver):
    """The snapshot derivations `.driver` needs, by name."""
    found = {}
    for d in show(driver)["inputDrvs"]:
        m = re.search(r"-(vm-snapshot-[^/]*)\.drv$", d)
        if m:
            found[m.group(1)] = d
    return found


def shape(drv):
    d = show(drv)
    env = dict(d["env"])
    env.pop("out", None)
    builder = env.pop("builder", d["builder"])
    assert builder.endswith("/bin/nixos-test-driver"), f"builder {builder} is not the driver"
    if "nodesJson" in env:
        env["nodesJson"] = json.loads(env["nodesJson"])
        # A node's snapshot is a store path: compared as its name (the
        # snapshot derivations themselves are compared on their own).
        for m in env["nodesJson"].get("machines", []):
            if "snapshot" in m:
                m["snapshot"] = STORE.sub("/nix/store/…-", m["snapshot"])
    norm = lambda s: STORE.sub("/nix/store/…-", s) if isinstance(s, str) else s
    return {
        "builder": "<driver>/bin/nixos-test-driver",
        "system": d["system"],
        "args": [norm(a) for a in d["args"]],
        "env": {k: norm(v) for k, v in env.items()},
    }


def main():
    lib_run, plug_run = sys.argv[1], sys.argv[2]
    pairs = [
        ("run", lib_run, plug_run),
        (".driver", driver_of(show(lib_run)), driver_of(show(plug_run))),
    ]
    problems = []
    lib_snaps = snapshots_of(pairs[1][1])
    plug_snaps = snapshots_of(pairs[1][2])
    if sorted(lib_snaps) != sorted(plug_snaps):
        problems.append(f"snapshots:\n  library {sorted(lib_snaps)}\n  plugin  {sorted(plug_snaps)}")
    for name in sorted(set(lib_snaps) & set(plug_snaps)):
        pairs.append((name, lib_snaps[name], plug_snaps[name]))
    for what, lib, plug in pairs:
        a, b = shape(lib), shape(plug)
        check = a["env"].pop("vmTestCheck", None), b["env"].pop("vmTestCheck", None)
        if what == ".driver" and (check[0] not in ("lint", "syntax") or check[1] != ""):
            problems.append(f".driver vmTestCheck: library {check[0]!r}, plugin {check[1]!r}")
        for key in ("builder", "system", "args"):
            if a[key] != b[key]:
                problems.append(f"{what} {key}:\n  library {a[key]}\n  plugin  {b[key]}")
        for k in sorted(set(a["env"]) | set(b["env"])):
            if a["env"].get(k) != b["env"].get(k):
                problems.append(
                    f"{what} env {k}:\n  library {a['env'].get(k)!r}\n  plugin  {b['env'].get(k)!r}"
                )
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    n = sum(len(shape(x)["env"]) for x in [lib_run, driver_of(show(lib_run))] + list(lib_snaps.values()))
    print(f"{n} attributes and the arguments equal, {len(lib_snaps)} snapshot(s)")


main()
