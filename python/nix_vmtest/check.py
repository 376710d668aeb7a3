"""Fast static check of a test script (no VM, no driver connection).

``python3 -m nix_vmtest.check --machines a,b[,c] SCRIPTFILE``

- a syntax error → ``SCRIPTFILE:LINE: syntax error: <msg>``;
- a name that is read but is not a builtin, not a driver global, not a
  machine (pythonized; ``machine`` when there is exactly one), not ``vlan<N>``,
  and not bound anywhere in the script (assignment, import, def, class,
  parameter, ``for``/``with``/``except``/comprehension/walrus/``match``
  target, ``global``/``nonlocal``) →
  ``SCRIPTFILE:LINE: name 'servr' is not defined (machines: client, server)``;
- a method that ``Machine`` lacks, called on a machine global the script never
  rebinds → ``SCRIPTFILE:LINE: machine 'server' has no method 'succed' (did
  you mean 'succeed'?)``.

Messages go to stderr. Exit status 1 if anything was reported, else 0.
``--prelude [--machines ...] [--vlans 1,2]`` prints the mypy prelude instead. ``check_script(source,
filename, machines)`` returns the messages as a list.
"""

import argparse
import ast
import builtins
import re
import sys
from typing import Iterable, List, Set

DRIVER_GLOBALS = frozenset({
    "start_all", "join_all", "test_script", "run_tests", "subtest", "retry",
    "polling_condition", "serial_stdout_on", "serial_stdout_off", "log",
    "driver", "machines", "vlans", "os", "create_machine", "t",
    # also bound, as nixpkgs binds them
    "machines_qemu", "machines_nspawn", "Machine", "BaseMachine", "QemuMachine",
    "debug",
    # module-level names every exec'd script has
    "__name__", "__builtins__", "__doc__", "__file__",
})

_VLAN = re.compile(r"vlan\d+\Z")
# `match` patterns (Python >= 3.10)
_MATCH_NAMED = tuple(getattr(ast, n) for n in ("MatchAs", "MatchStar") if hasattr(ast, n))
_MATCH_MAPPING = tuple(getattr(ast, n) for n in ("MatchMapping",) if hasattr(ast, n))


def _machine_attributes() -> Set[str]:
    from .machine import Machine

    return set(dir(Machine)) | {"driver", "name", "vlans", "out_dir", "logger"}


def _machine_names(machines: Iterable[str]) -> Set[str]:
    """The names the driver binds for these machines (``driver.py``)."""
    from .driver import identifier_name, pythonize_name

    machines = list(machines)
    names = set()
    for m in machines:
        names.add(pythonize_name(m))
        names.add(identifier_name(m))
    if len(machines) == 1:
        names.add("machine")
    return names


def _bound_names(tree: ast.AST) -> "tuple[Set[str], bool]":
    bound: Set[str] = set()
    star_import = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star_import = True
                elif alias.asname:
                    bound.add(alias.asname)
                else:
                    bound.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, _MATCH_NAMED + _MATCH_MAPPING):
            # MatchAs/MatchStar bind `name`, MatchMapping binds `rest`
            for attr in ("name", "rest"):
                value = getattr(node, attr, None)
                if isinstance(value, str):
                    bound.add(value)
    return bound, star_import


def check_script(source: str, filename: str, machines: Iterable[str]) -> List[str]:
    """Return the problems found, each ``FILE:LINE: message``."""
    machines = sorted(machines)
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno or 0}: syntax error: {e.msg}"]
    except ValueError as e:  # e.g. NUL bytes
        return [f"{filename}:0: syntax error: {e}"]
    bound, star_import = _bound_names(tree)
    if star_import:
        return []
    known = set(dir(builtins)) | DRIVER_GLOBALS | _machine_names(machines) | bound
    listing = ", ".join(machines) if machines else "none"
    errors = []
    seen = set()
    loads = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for node in loads:
        name = node.id
        if name in known or _VLAN.match(name):
            continue
        key = (name, node.lineno)
        if key in seen:
            continue
        seen.add(key)
        errors.append(f"{filename}:{node.lineno}: name '{name}' is not defined (machines: {listing})")
    errors += _check_machine_attributes(tree, filename, _machine_names(machines) - bound)
    errors.sort(key=lambda e: int(e[len(filename) + 1:].split(":", 1)[0]))
    return errors


def _check_machine_attributes(tree: ast.AST, filename: str, machine_vars: Set[str]) -> List[str]:
    """``server.succed(...)`` → an error, for names that are surely machines
    (a machine global never rebound in the script)."""
    import difflib

    stored = {n.attr for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load)}
    known = _machine_attributes() | stored
    errors = []
    for n in ast.walk(tree):
        if (isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)
                and isinstance(n.value, ast.Name) and n.value.id in machine_vars
                and n.attr not in known):
            close = difflib.get_close_matches(n.attr, [a for a in known if not a.startswith("_")], 1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(f"{filename}:{n.lineno}: machine '{n.value.id}' has no method '{n.attr}'{hint}")
    return errors


def prelude(machines: Iterable[str], vlans: Iterable[int] = ()) -> str:
    """Declarations to put before a script for mypy (``skipTypeCheck = false``):
    the driver globals from ``nix_vmtest/script_globals.pyi`` plus one line per
    machine and VLAN."""
    machines = sorted(machines)
    lines = [
        "from nix_vmtest.script_globals import *",
        "from nix_vmtest.machine import Machine as _Machine",
        "from nix_vmtest.driver import Vlan as _Vlan",
    ]
    for name in sorted(_machine_names(machines) - {"machine"}):
        lines.append(f"{name}: _Machine")
    if len(machines) == 1:
        lines.append("machine: _Machine")
    for v in sorted(set(int(v) for v in vlans)):
        lines.append(f"vlan{v}: _Vlan")
    return "\n".join(lines) + "\n"


def main(argv: "List[str] | None" = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m nix_vmtest.check",
                                description="Check a NixOS test script without booting anything.")
    p.add_argument("--machines", default="", help="comma-separated machine names")
    p.add_argument("--vlans", default="", help="comma-separated VLAN numbers (for --prelude)")
    p.add_argument("--prelude", action="store_true",
                   help="print the mypy prelude for these machines and VLANs instead of checking")
    p.add_argument("script", metavar="SCRIPTFILE", nargs="?")
    a = p.parse_args(argv)
    machines = [m for m in a.machines.split(",") if m]
    if a.prelude:
        sys.stdout.write(prelude(machines, [int(v) for v in a.vlans.split(",") if v]))
        return 0
    if a.script is None:
        p.error("SCRIPTFILE is required")
    try:
        with open(a.script, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"{a.script}:0: cannot read: {e}", file=sys.stderr)
        return 1
    errors = check_script(source, a.script, machines)
    for msg in errors:
        print(msg, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
