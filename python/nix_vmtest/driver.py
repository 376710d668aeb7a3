"""The test script's globals: ``Driver``, ``log``, ``subtest``, ``retry``,
``polling_condition``, VLAN handles.

Ops sent (Contract 3) by this module:

- ``hello {}`` (from ``__main__``), ``log {message}``, ``log_begin {message}``,
  ``log_end {}``, ``subtest_begin {name}``, ``subtest_end {error}`` (``error``
  is ``null`` on success, else ``str(exception)`` or the exception's class name
  when that is empty), ``serial_stdout {on}``, ``stdout {text}`` (what the
  script writes to ``sys.stdout``, see ``ScriptStdout``),
  ``create_machine {start_command, name, keep_machine_state}`` (→ ``{"name"}``),
  ``join_all {}``; ``start {allow_reboot: false}`` per machine from
  ``start_all()``; ``is_up {}`` and ``execute {command: "sync", ...}`` per
  machine after the script in ``run_tests()`` (as nixpkgs does).
- Log messages of a machine are sent with the machine's prefix already in the
  text: ``log {"message": "server: must succeed: true"}`` (``machine`` stays
  ``null`` for these global ops).
- ``vlan`` (``machine`` null), args by method of ``Vlan``:

  ==========================  ====================================================
  ``vlan1.block(m)``          ``{"vlan": 1, "action": "block", "machine": "m"}``
  ``vlan1.unblock(m)``        ``{"vlan": 1, "action": "unblock", "machine": "m"}``
  ``vlan1.partition(g1, g2)`` ``{"vlan": 1, "action": "partition",
                              "groups": [["a", "b"], ["c"]]}``
  ``vlan1.heal()``            ``{"vlan": 1, "action": "heal"}``
  ``vlan1.loss(f, m=None)``   ``{"vlan": 1, "action": "loss", "fraction": f,
                              "machine": "m" | null}`` (null: every port)
  ``vlan1.delay(s, m=None)``  ``{"vlan": 1, "action": "delay", "seconds": s,
                              "machine": "m" | null}``
  ``vlan1.stats()``           ``{"vlan": 1, "action": "stats"}`` → dict
  ==========================  ====================================================

  A machine may be given as a ``Machine`` or as its name.
"""

import contextlib
import io
import math
import os
import re
import sys
import time
import unittest
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from .errors import PollingConditionError, ProtocolError, RequestedAssertionFailed
from .machine import Machine, MachineDeprecationWrapper, Seconds, retry, to_seconds

__all__ = [
    "Driver", "Logger", "Vlan", "PollingCondition", "AssertionTester",
    "ScriptStdout", "pythonize_name", "retry", "mark_test_error", "formatwarning",
]

#: What nixpkgs' driver puts before each line of a failure report
#: (``log_test_error``), and what tools look for.
TEST_ERROR_MARK = "!!! "


def mark_test_error(message: str) -> str:
    """Every line of ``message`` marked ``!!! `` (an empty message is one
    marked empty line, as nixpkgs logs it)."""
    return "\n".join(TEST_ERROR_MARK + line for line in (str(message).splitlines() or [""]))


def pythonize_name(name: str) -> str:
    """``[^A-Za-z0-9_]`` → ``_`` (driver-api.md)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def identifier_name(name: str) -> str:
    """nixpkgs' form, which also replaces a leading digit (so the result is an
    identifier); bound too when it differs from ``pythonize_name``."""
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def formatwarning(message: Union[Warning, str], category: type, filename: str, lineno: int,
                  line: Optional[str] = None) -> str:
    """A warning as nixpkgs' driver shows it (``warnings.formatwarning``,
    set by ``__main__``), without its colours: the script's stderr goes to
    the log."""
    return (
        f"??? Warning ({category.__name__}): {message}\n"
        f'    File "{filename}", line {lineno}\n'
        + (f"      {line.strip()}\n" if line else "")
    )


class AssertionTester(unittest.TestCase):
    """``t``: a TestCase whose failures are ``RequestedAssertionFailed``."""

    failureException = RequestedAssertionFailed


class Logger:
    """``log``: nixpkgs' logger interface on top of the driver's log ops."""

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc

    @staticmethod
    def _prefix(message: str, attributes: Optional[Dict[str, str]]) -> str:
        if attributes and "machine" in attributes:
            return f"{attributes['machine']}: {message}"
        return message

    def log(self, message: str, attributes: Optional[Dict[str, str]] = None) -> None:
        self.rpc.notify("log", None, {"message": self._prefix(str(message), attributes)})

    def debug(self, message: str, attributes: Optional[Dict[str, str]] = None, **kw: Any) -> None:
        self.log(message, attributes or kw or None)

    def info(self, message: str, attributes: Optional[Dict[str, str]] = None, **kw: Any) -> None:
        self.log(message, attributes or kw or None)

    def warning(self, message: str, attributes: Optional[Dict[str, str]] = None, **kw: Any) -> None:
        self.log(message, attributes or kw or None)

    def error(self, message: str, attributes: Optional[Dict[str, str]] = None, **kw: Any) -> None:
        self.log(message, attributes or kw or None)

    def log_test_error(self, message: str, *args: Any, **kw: Any) -> None:
        """A line of a failure report: marked ``!!! `` (every line of it)."""
        self.log(mark_test_error(message))

    def log_serial(self, message: str, machine: str) -> None:
        self.log(f"{machine} # {message}")

    def print_serial_logs(self, enable: bool) -> None:
        self.rpc.call("serial_stdout", None, {"on": bool(enable)})

    def set_log_level(self, level: Any) -> None:
        pass

    @contextlib.contextmanager
    def nested(self, message: str, attributes: Optional[Dict[str, str]] = None) -> Iterator[None]:
        """A nested, timed block: ``log_begin`` … ``log_end``."""
        self.rpc.notify("log_begin", None, {"message": self._prefix(str(message), attributes)})
        try:
            yield
        finally:
            self.rpc.notify("log_end", None, {})

    @contextlib.contextmanager
    def subtest(self, name: str, attributes: Optional[Dict[str, str]] = None) -> Iterator[None]:
        self.rpc.call("subtest_begin", None, {"name": str(name)})
        try:
            yield
        except BaseException as e:
            self.rpc.call("subtest_end", None, {"error": str(e) or type(e).__name__})
            raise
        self.rpc.call("subtest_end", None, {"error": None})


class PollingCondition:
    """One polling condition (nixpkgs semantics): checked before commands at
    most every ``seconds_interval`` seconds, never while it is itself running;
    a condition returning ``None`` counts as success, raising as failure."""

    def __init__(
        self,
        condition: Callable[[], Optional[bool]],
        logger: Logger,
        seconds_interval: Seconds = 2.0,
        description: Optional[str] = None,
    ) -> None:
        self.condition = condition
        interval = to_seconds(seconds_interval, "polling_condition()'s seconds_interval")
        self.seconds_interval: float = 2.0 if interval is None else float(interval)
        self.logger = logger
        if description is None:
            self.description = condition.__doc__ or getattr(condition, "__name__", repr(condition))
        else:
            self.description = str(description)
        self.last_called = float("-inf")
        self.entry_count = 0

    def check(self, force: bool = False) -> bool:
        if (self.entered or not self.overdue) and not force:
            return True
        with self, self.logger.nested(self.nested_message):
            since = time.monotonic() - self.last_called
            self.logger.info(
                f"Time since last: {since:.2f}s" if math.isfinite(since) else "(not called yet)"
            )
            try:
                res = self.condition()
            except Exception:
                res = False
            ok = res is None or bool(res)
            self.logger.info(self.status_message(ok))
            return ok

    def maybe_raise(self) -> None:
        if not self.check():
            raise PollingConditionError(self.status_message(False))

    def status_message(self, status: bool) -> str:
        return f"Polling condition {'succeeded' if status else 'failed'}: {self.description}"

    @property
    def nested_message(self) -> str:
        return f"Checking polling condition {self.description!r}"

    @property
    def overdue(self) -> bool:
        return self.last_called + self.seconds_interval < time.monotonic()

    @property
    def entered(self) -> bool:
        return self.entry_count > 0

    def __enter__(self) -> None:
        self.entry_count += 1

    def __exit__(self, *exc: Any) -> None:
        self.entry_count -= 1
        self.last_called = time.monotonic()


class Poll:
    """What ``polling_condition`` returns: a context manager that keeps the
    condition active inside its block, and ``.wait(timeout)``."""

    def __init__(self, driver: "Driver", fun: Callable, seconds_interval: Seconds,
                 description: Optional[str]) -> None:
        self.driver = driver
        self.condition = PollingCondition(fun, driver.log, seconds_interval, description)

    @property
    def seconds_interval(self) -> float:
        return self.condition.seconds_interval

    @property
    def description(self) -> str:
        return self.condition.description

    def __call__(self) -> Any:
        return self.condition.condition()

    def __enter__(self) -> None:
        self.driver.polling_conditions.append(self.condition)

    def __exit__(self, *exc: Any) -> None:
        res = self.driver.polling_conditions.pop()
        assert res is self.condition

    def wait(self, timeout: Seconds = 900, timeout_seconds: Optional[Seconds] = None) -> None:
        """Check the condition once a second until it holds, for up to
        ``timeout`` (or ``timeout_seconds``, which later nixpkgs accepts
        too); either may be a ``timedelta``."""
        if timeout_seconds is not None:
            if timeout != 900:
                raise TypeError("wait() got both 'timeout' and 'timeout_seconds': pass only one")
            timeout = timeout_seconds
        log = self.driver.log

        def condition(last: bool) -> bool:
            if last:
                log.info(f"Last chance for {self.condition.description}")
            ret = self.condition.check(force=True)
            if not ret and not last:
                log.info(f"({self.condition.description} failure not fatal yet)")
            return ret

        with log.nested(f"waiting for {self.condition.description}"):
            retry(condition, timeout_seconds=timeout)


def _machine_name(m: Union[Machine, str]) -> str:
    return m if isinstance(m, str) else m.name


class Vlan:
    """``vlan<N>``: one VLAN switch; fault injection through the ``vlan`` op."""

    def __init__(self, driver: "Driver", nr: int) -> None:
        self.driver = driver
        self.nr = nr

    def __repr__(self) -> str:
        return f"<Vlan Nr. {self.nr}>"

    def _op(self, action: str, **args: Any) -> Any:
        return self.driver.rpc.call("vlan", None, {"vlan": self.nr, "action": action, **args})

    def block(self, machine: Union[Machine, str]) -> None:
        """Take ``machine``'s link on this VLAN down."""
        self._op("block", machine=_machine_name(machine))

    def unblock(self, machine: Union[Machine, str]) -> None:
        self._op("unblock", machine=_machine_name(machine))

    def partition(self, *groups: List[Union[Machine, str]]) -> None:
        """Only machines in the same group reach each other."""
        self._op("partition", groups=[[_machine_name(m) for m in g] for g in groups])

    def heal(self) -> None:
        """Undo ``partition``, ``block``, ``loss`` and ``delay`` on this VLAN."""
        self._op("heal")

    def loss(self, fraction: float, machine: Optional[Union[Machine, str]] = None) -> None:
        """Drop ``fraction`` (0..1) of the frames (to/from ``machine``, or all)."""
        self._op("loss", fraction=float(fraction),
                 machine=None if machine is None else _machine_name(machine))

    def delay(self, seconds: Seconds, machine: Optional[Union[Machine, str]] = None) -> None:
        """Delay frames by ``seconds`` (or a ``timedelta``; to/from
        ``machine``, or all)."""
        self._op("delay", seconds=float(to_seconds(seconds, "delay") or 0),
                 machine=None if machine is None else _machine_name(machine))

    def stats(self) -> Any:
        """The switch's ports and counters (for debugging)."""
        return self._op("stats")


class Debug:
    """``debug``: nixpkgs' debugger hook; a no-op here."""

    def breakpoint(self) -> None:
        pass


class Driver:
    """``driver``: one test run, as seen from the script."""

    def __init__(self, rpc: Any, hello: Dict[str, Any], script_path: str = "<testScript>",
                 source: str = "") -> None:
        self.rpc = rpc
        self.log = Logger(rpc)
        self.logger = self.log
        self.out_dir = hello.get("out_dir") or os.getcwd()
        self.interactive = bool(hello.get("interactive", False))
        self.polling_conditions: List[PollingCondition] = []
        self.script_path = script_path
        self.tests = source
        self.debug = Debug()
        self.machines: List[Machine] = sorted(
            (Machine(self, m["name"], m.get("vlans")) for m in hello.get("machines", [])),
            key=lambda m: m.name,
        )
        # nixpkgs: the test's VMs and its containers (which we do not
        # have), each a list of its own; `machines` is both, by name.
        self.machines_qemu: List[Machine] = list(self.machines)
        self.machines_nspawn: List[Machine] = []
        self.vlans: List[Vlan] = [Vlan(self, int(nr)) for nr in hello.get("vlans", [])]
        self.globals: Dict[str, Any] = {}

    # -- globals --------------------------------------------------------
    def test_symbols(self) -> Dict[str, Any]:
        driver = self

        @contextlib.contextmanager
        def subtest(name: str) -> Iterator[None]:
            with driver.subtest(name):
                yield

        general: Dict[str, Any] = dict(
            start_all=self.start_all,
            test_script=self.test_script,
            machines=self.machines,
            machines_qemu=self.machines_qemu,
            machines_nspawn=self.machines_nspawn,
            vlans=self.vlans,
            driver=self,
            log=self.log,
            os=os,
            create_machine=self.create_machine,
            subtest=subtest,
            run_tests=self.run_tests,
            join_all=self.join_all,
            retry=retry,
            serial_stdout_off=self.serial_stdout_off,
            serial_stdout_on=self.serial_stdout_on,
            polling_condition=self.polling_condition,
            Machine=Machine,
            BaseMachine=Machine,
            QemuMachine=Machine,
            t=AssertionTester(),
            debug=self.debug,
        )
        machine_symbols: Dict[str, Any] = {}
        for m in self.machines:
            machine_symbols.setdefault(identifier_name(m.name), m)
            machine_symbols[pythonize_name(m.name)] = m
        # As nixpkgs: with exactly one machine, `machine` is it too, if
        # no machine is called that; under another name, every use warns.
        if len(self.machines) == 1 and "machine" not in machine_symbols:
            only = identifier_name(self.machines[0].name)
            machine_symbols["machine"] = MachineDeprecationWrapper(
                "It's deprecated to use the `machine` variable when the only machine "
                f"is called {only}. This behavior will no longer work in NixOS 27.05.",
                self.machines[0],
            )
        vlan_symbols = {f"vlan{v.nr}": v for v in self.vlans}
        return {**general, **machine_symbols, **vlan_symbols}

    def make_globals(self) -> Dict[str, Any]:
        g = self.test_symbols()
        g["__name__"] = "__main__"
        g["__file__"] = self.script_path
        g["__builtins__"] = __builtins__
        self.globals = g
        return g

    # -- running the script ---------------------------------------------
    def test_script(self) -> None:
        """Run the test script (in the same globals as the REPL)."""
        if not self.globals:
            self.make_globals()
        code = compile(self.tests, self.script_path, "exec")
        with self.log.nested("run the VM test script"):
            exec(code, self.globals)

    def run_tests(self) -> None:
        """Run the test script, then ``sync`` every machine that is up."""
        self.test_script()
        for m in self.machines:
            if m.is_up():
                m.execute("sync")

    def start_all(self) -> None:
        """Start every machine; each ``start`` returns at once, so they boot in parallel."""
        with self.log.nested("start all VMs"):
            for m in self.machines:
                m.start()

    def join_all(self) -> None:
        """Wait for every machine to shut down."""
        self.rpc.call("join_all", None, {})

    def create_machine(self, start_command: str, *, name: Optional[str] = None,
                       keep_machine_state: bool = False) -> Machine:
        reply = self.rpc.call("create_machine", None, {
            "start_command": start_command, "name": name,
            "keep_machine_state": keep_machine_state,
        })
        return Machine(self, reply["name"] if isinstance(reply, dict) else str(reply))

    def serial_stdout_on(self) -> None:
        self.log.print_serial_logs(True)

    def serial_stdout_off(self) -> None:
        self.log.print_serial_logs(False)

    @contextlib.contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        """A subtest; a failure logs nixpkgs' ``!!! Test "<name>" failed with
        error: "<error>"`` in it, and the driver marks the JUnit case failed."""
        with self.log.subtest(name):
            try:
                yield
            except Exception as e:
                self.log.log_test_error(f'Test "{name}" failed with error: "{e}"')
                raise

    def check_polling_conditions(self) -> None:
        for condition in list(self.polling_conditions):
            condition.maybe_raise()

    def polling_condition(
        self,
        fun: Optional[Callable] = None,
        *,
        seconds_interval: float = 2.0,
        description: Optional[str] = None,
    ) -> Any:
        """Decorator (with or without arguments) or context manager."""
        if fun is None:
            return lambda f: Poll(self, f, seconds_interval, description)
        return Poll(self, fun, seconds_interval, description)


class _ScriptStdoutBytes:
    """``sys.stdout.buffer`` of a ``ScriptStdout``: bytes, sent as text."""

    def __init__(self, text: "ScriptStdout") -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", errors="replace"))
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._text.fileno()

    def isatty(self) -> bool:
        return False


class ScriptStdout(io.TextIOBase):
    """``sys.stdout`` of a script the driver runs: each write goes to the
    driver as a ``stdout {text}`` request (no reply), which writes it to its
    stdout and its log file. Requests are handled in order, so what the
    script prints and what it logs come out in the order it did them.
    ``fileno()`` is the process's fd 1, which the driver also forwards to its
    stdout (for subprocesses). Once the driver is gone, writes go to fd 1."""

    def __init__(self, rpc: Any, fd: int = 1) -> None:
        super().__init__()
        self._rpc = rpc
        self._fd = fd
        self._broken = False
        self.buffer = _ScriptStdoutBytes(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def flush(self) -> None:
        pass

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        try:
            s.encode("utf-8")
            text = s
        except UnicodeEncodeError:  # lone surrogates: JSON would carry them, serde not
            text = s.encode("utf-8", errors="replace").decode("utf-8")
        if not self._broken:
            try:
                self._rpc.notify("stdout", None, {"text": text})
                return len(s)
            except ProtocolError:
                self._broken = True
        try:
            os.write(self._fd, text.encode("utf-8"))
        except OSError:
            pass
        return len(s)


def format_script_error(exc: BaseException, script_path: str) -> str:
    """The traceback trimmed to the script's own frames, plus the exception line."""
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename == script_path:
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == script_path]
    if not frames:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    msg = str(exc)
    text += f"{type(exc).__name__}: {msg}\n" if msg else f"{type(exc).__name__}\n"
    return text
