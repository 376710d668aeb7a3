"""Entry point: ``python3 -u -m nix_vmtest`` started by the driver.

Environment: ``NIX_VMTEST_FD`` (connected AF_UNIX stream socket),
``NIX_VMTEST_SCRIPT`` (path of the test script), ``NIX_VMTEST_INTERACTIVE``
(``1``: a REPL instead of running the script).

Exit status: 0 when the script ran to the end, 1 when it raised, whatever
it raised (as nixpkgs' driver: ``sys.exit(1)`` after a ``MachineError`` or
``RequestedAssertionFailed``, Python's own 1 for an uncaught exception), the
script's own code when it called ``sys.exit``.

Output, as under nixpkgs' driver: ``print()`` goes to the driver's stdout
(``sys.stdout`` sends it over the protocol, so that it keeps its order with
the log; fd 1, which subprocesses write to, is forwarded there too); the
failure report, the traceback trimmed to the script's frames, goes to the
log with every line marked ``!!! `` (to stderr if the driver is gone).
"""

import os
import sys
from typing import Any, Dict, TextIO, cast


def _repl(driver: Any, globals_: Dict[str, Any]) -> int:
    import code
    import signal

    # Ctrl-C interrupts the current call (the banner says so), also where
    # the driver was started with SIGINT ignored (a command started with
    # `&` by a non-interactive shell, `nohup`): Python installs its
    # KeyboardInterrupt handler only where SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer(globals_).complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:
        pass
    names = ", ".join(m.name for m in driver.machines) or "(none)"
    banner = (
        "nix-vmtest interactive session.\n"
        f"machines: {names}\n"
        "test_script() runs the test script; start_all() starts every machine;\n"
        "Ctrl-C interrupts the current call, Ctrl-D ends the session."
    )
    console = code.InteractiveConsole(globals_, filename="<repl>")
    console.interact(banner=banner, exitmsg="")
    return 0


def report_failure(driver: Any, exc: BaseException) -> None:
    """The failure report, every line marked ``!!! ``, into the log."""
    from .driver import format_script_error, mark_test_error

    report = format_script_error(exc, driver.script_path).rstrip("\n")
    try:
        driver.log.log_test_error(report)
    except Exception:
        sys.stderr.write(mark_test_error(report) + "\n")
        sys.stderr.flush()


def main() -> int:
    import warnings

    from .driver import Driver, ScriptStdout, formatwarning
    from .rpc import Client

    # Warnings (the `machine` alias's) look as under nixpkgs' driver.
    warnings.formatwarning = formatwarning

    try:
        fd = int(os.environ["NIX_VMTEST_FD"])
    except (KeyError, ValueError):
        print("nix_vmtest: NIX_VMTEST_FD is not set; this module is started by "
              "nixos-test-driver", file=sys.stderr)
        return 2
    script_path = os.environ.get("NIX_VMTEST_SCRIPT", "")
    interactive = os.environ.get("NIX_VMTEST_INTERACTIVE", "0") == "1"
    source = ""
    if script_path:
        with open(script_path, encoding="utf-8") as f:
            source = f.read()
    elif not interactive:
        print("nix_vmtest: NIX_VMTEST_SCRIPT is not set", file=sys.stderr)
        return 2

    client = Client.from_fd(fd)
    hello = client.call("hello", None, {})
    driver = Driver(client, hello or {}, script_path or "<testScript>", source)
    globals_ = driver.make_globals()

    if interactive:
        return _repl(driver, globals_)

    sys.stdout = cast(TextIO, ScriptStdout(client))
    try:
        driver.run_tests()
    except SystemExit:
        raise
    except BaseException as e:
        report_failure(driver, e)
        return 1
    finally:
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
