"""``Machine``: the handle a test script uses for one VM.

Every method of driver-api.md "Machine" is here with nixpkgs' names, arguments
and defaults. Methods backed by a driver op (Contract 3) send it; the rest are
written on top of those ops the way nixpkgs' driver writes them.

Polling conditions are checked (as nixpkgs does it through its callbacks)
before every call that talks to the guest or to QEMU: ``execute``,
``wait_until``, the ``wait_for_*`` ops, ``get_unit_info``,
``send_monitor_command``, ``qmp``, ``send_console``, ``screenshot``,
``copy_from_host``, ``copy_from_machine``, ``crash``, ``reboot``, ``block``,
``unblock``. The waits for a condition in the guest
(``wait_until_succeeds/fails``, ``wait_for_file``, ``wait_for_open_port``,
``wait_for_closed_port``, ``wait_for_open_unix_socket``, ``wait_for_unit``)
are one driver op each (``_wait``), which waits in the guest. While a
polling condition is active they loop in Python as nixpkgs does: ``retry``
asks the driver for one try a second (the op with ``once``), and the
conditions are checked before each.

Timeouts, intervals and delays (``timeout=``, ``secs``, ``delay=``) are
seconds, as nixpkgs' 26.11 driver takes them, or a ``datetime.timedelta``,
as nixpkgs takes them from 2026-08 on (``to_seconds``); the driver gets
seconds. A number gives no warning: the 26.11 driver has none to give.

Attributes of nixpkgs' ``QemuMachine`` (``state_dir``, ``shared_dir``,
``tmp_dir``, ``booted``, ``connected``, ``pid``) are read from the driver
(op ``status``) each time, so they are what the driver has at that moment.

Logging: the Python side sends the nested headers nixpkgs prints for command,
wait, systemd, keyboard and screen methods (``log_begin``/``log_end``, message
prefixed ``<machine>: ``). Lifecycle ops (start, connect, shutdown, crash,
reboot, wait_for_shutdown, release), screenshot, block/unblock,
copy_from_host/machine and the ``join_all`` op are logged by the driver.
"""

import base64
import contextlib
import datetime
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from .errors import MachineError, MachineTimeout, RequestedAssertionFailed, Unsupported

__all__ = [
    "Machine", "QemuMachine", "BaseMachine", "retry", "CHAR_TO_KEY", "make_command",
    "Seconds", "to_seconds", "MachineDeprecationWrapper",
]

#: A timeout, interval or delay: a number of seconds or a ``timedelta``.
Seconds = Union[int, float, datetime.timedelta]


def to_seconds(value: Optional[Seconds], what: str = "timeout") -> Optional[Union[int, float]]:
    """``value`` in seconds: a ``timedelta``'s ``total_seconds()``, a number
    as it is, ``None`` as ``None``; anything else is a ``TypeError`` that
    names ``what``."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise TypeError(
        f"{what} must be a datetime.timedelta or a number of seconds, "
        f"not {type(value).__name__} ({value!r})"
    )


def _shown(seconds: Union[int, float]) -> str:
    """Seconds as a message or a guest's ``sleep`` shows them: ``5``, ``1.5``."""
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _build_char_to_key() -> Dict[str, str]:
    """Characters that QEMU's ``sendkey`` does not name directly."""
    keys: Dict[str, str] = {}
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        keys[c] = f"shift-{c.lower()}"
    # (plain, shifted) pairs sharing one scancode
    for plain, shifted, code in [
        ("-", "_", "0x0C"), ("=", "+", "0x0D"), ("[", "{", "0x1A"),
        ("]", "}", "0x1B"), (";", ":", "0x27"), ("'", '"', "0x28"),
        ("`", "~", "0x29"), ("\\", "|", "0x2B"), (",", "<", "0x33"),
        (".", ">", "0x34"), ("/", "?", "0x35"),
    ]:
        keys[plain] = code
        keys[shifted] = f"shift-{code}"
    # shifted digits row: ! on 1 (0x02) ... ) on 0 (0x0B)
    for i, c in enumerate("!@#$%^&*()"):
        keys[c] = f"shift-0x{i + 2:02X}"
    keys[" "] = "spc"
    keys["\n"] = "ret"
    return keys


CHAR_TO_KEY = _build_char_to_key()


def make_command(args: list) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def retry(fn: Callable, timeout_seconds: Seconds = 900, timeout: Optional[Seconds] = None) -> None:
    """Call ``fn(False)`` once a second until it returns true; when
    ``timeout_seconds`` have passed, call ``fn(True)`` a last time and raise
    ``RequestedAssertionFailed("action timed out ...")`` if that is false too.
    ``timeout`` is the same limit under the name later nixpkgs gives it."""
    if timeout is not None:
        if timeout_seconds != 900:
            raise TypeError("retry() got both 'timeout' and 'timeout_seconds': pass only one")
        timeout_seconds = timeout
    limit = to_seconds(timeout_seconds, "retry()'s timeout")
    if limit is None:
        limit = timeout_seconds = 900
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        shown = timeout_seconds if not isinstance(timeout_seconds, datetime.timedelta) else _shown(limit)
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={shown})"
        )


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _starts_machine(method: _Method) -> _Method:
    """Marks a ``Machine`` method that connects to, and so starts, its
    machine (as in nixpkgs). When a test script's first statement calls
    one, the driver starts that machine while Python is still starting up:
    ``src/script/early.rs`` reads this file when it is built and takes the
    ``def`` right after each ``@_starts_machine`` line (so this decorator
    goes last, just above the ``def``). Otherwise it does nothing."""
    setattr(method, "starts_machine", True)
    return method


def _decode(data: Optional[bytes]) -> str:
    return (data or b"").decode("utf-8", errors="replace")


_OEM_CHOICES: List[List[str]] = [["--oem", "2"], []]


def _run_tesseract(image: str) -> str:
    base = [image, "-", "-c", "debug_file=/dev/null", "--psm", "11"]
    # nixpkgs asks for OEM 2 (legacy + LSTM); data packs without the legacy
    # model (Debian's) refuse it, then the default engine is used from then on.
    for extra in list(_OEM_CHOICES):
        proc = subprocess.run(["tesseract"] + base + extra, capture_output=True)
        if proc.returncode == 0:
            while _OEM_CHOICES and _OEM_CHOICES[0] != extra:
                _OEM_CHOICES.pop(0)
            return proc.stdout.decode("utf-8", errors="replace")
    raise MachineError(
        f"OCR failed with exit code {proc.returncode}: "
        f"{proc.stderr.decode(errors='replace').strip()}"
    )


def _preprocess(image: str, negate: bool) -> str:
    """ImageMagick variant of the screenshot, as nixpkgs makes them."""
    out = image + (".negative.png" if negate else ".positive.png")
    args = ["magick", "convert", "-filter", "Catrom", "-density", "72", "-resample", "300",
            "-contrast", "-normalize", "-despeckle", "-type", "grayscale",
            "-sharpen", "1", "-posterize", "3"]
    if negate:
        args.append("-negate")
    args += ["-gamma", "100", "-blur", "1x65535", image, out]
    proc = subprocess.run(args, capture_output=True)
    if proc.returncode != 0:
        raise MachineError(
            f"Image processing failed with exit code {proc.returncode}, "
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return out


class Machine:
    """A handle to one machine of the test (nixpkgs' ``QemuMachine`` API)."""

    def __init__(self, driver: Any, name: str, vlans: Optional[List[int]] = None) -> None:
        self.driver = driver
        self.name = name
        self.vlans = list(vlans or [])
        self.out_dir = Path(driver.out_dir)
        self.logger = driver.log

    def __repr__(self) -> str:
        return f"<Machine '{self.name}'>"

    # -- nixpkgs' QemuMachine attributes, as the driver has them --------
    def _status(self) -> Dict[str, Any]:
        """Op ``status``: ``booted``, ``connected``, ``pid`` and the
        directories, as the driver has them now."""
        status = self._op("status")
        return status if isinstance(status, dict) else {}

    @property
    def state_dir(self) -> Path:
        """The machine's private directory on the host: its start script's
        ``TMPDIR`` and working directory (disk image, sockets). Assigning
        it (``target.state_dir = installer.state_dir``) moves the machine
        there from its next start; refused while it runs."""
        return Path(self._status()["state_dir"])

    @state_dir.setter
    def state_dir(self, path: Union["os.PathLike[str]", str]) -> None:
        self._op("set_state_dir", path=os.path.abspath(os.fspath(path)))

    @property
    def shared_dir(self) -> Path:
        """The host directory the guest has as 9p tag ``shared``, mounted
        at ``/tmp/shared`` (``copy_from_host`` goes through it)."""
        return Path(self._status()["shared_dir"])

    @property
    def tmp_dir(self) -> Path:
        """The directory ``state_dir`` is in."""
        return Path(self._status()["tmp_dir"])

    @property
    def booted(self) -> bool:
        """QEMU was started and has not exited."""
        return bool(self._status().get("booted"))

    @property
    def connected(self) -> bool:
        """The guest's backdoor shell is connected (and QEMU runs).
        Assigning ``False`` takes the shell for gone (the guest kexecs, or
        switches root), so ``connect()`` and the next command wait for a
        new boot's backdoor shell; assigning ``True`` is ``connect()``."""
        return bool(self._status().get("connected"))

    @connected.setter
    def connected(self, value: bool) -> None:
        if value:
            self.connect()
        else:
            self._op("disconnect")

    @property
    def pid(self) -> Optional[int]:
        """The pid of the process the driver started for the machine (its
        start script or QEMU) while it runs, else ``None``."""
        pid = self._status().get("pid")
        return None if pid is None else int(pid)

    # -- plumbing -------------------------------------------------------
    def _op(self, op: str, _check: bool = False, **args: Any) -> Any:
        if _check:
            self.run_callbacks()
        return self.driver.rpc.call(op, self.name, args)

    def _op_bytes(self, op: str, _check: bool = False, **args: Any) -> Tuple[Any, Optional[bytes]]:
        if _check:
            self.run_callbacks()
        return self.driver.rpc.call_bytes(op, self.name, args)

    def run_callbacks(self) -> None:
        """Check the active polling conditions (raises if one fails)."""
        self.driver.check_polling_conditions()

    def _polling_active(self) -> bool:
        return bool(self.driver.polling_conditions)

    def log(self, msg: str) -> None:
        self.logger.log(msg, {"machine": self.name})

    def nested(self, msg: str, attrs: Optional[Dict[str, str]] = None) -> Any:
        a = {"machine": self.name}
        a.update(attrs or {})
        return self.logger.nested(msg, a)

    # -- commands -------------------------------------------------------
    @_starts_machine
    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: Optional[Seconds] = 900,
    ) -> Tuple[int, str]:
        """Run a shell command (``set -euo pipefail``, bash); return
        ``(status, output)``. ``check_output=False`` returns ``(-2, "")``,
        ``check_return=False`` returns ``(-1, output)``."""
        value, data = self._op_bytes(
            "execute", True, command=command, check_return=check_return,
            check_output=check_output, timeout=to_seconds(timeout),
        )
        if not check_output:
            return (-2, "")
        output = _decode(data)
        status = value.get("status") if isinstance(value, dict) else None
        if status is None and isinstance(value, dict) and value.get("timed_out"):
            status = 124  # what nixpkgs' `timeout N bash -c ...` gives
        if not check_return or status is None:
            return (-1, output)
        return (int(status), output)

    @_starts_machine
    def succeed(self, *commands: str, timeout: Optional[Seconds] = None) -> str:
        output = ""
        for command in commands:
            with self.nested(f"must succeed: {command}"):
                status, out = self.execute(command, timeout=timeout)
                if status != 0:
                    self.log(f"output: {out}")
                    raise RequestedAssertionFailed(
                        f"command `{command}` failed (exit code {status})"
                    )
                output += out
        return output

    @_starts_machine
    def fail(self, *commands: str, timeout: Optional[Seconds] = None) -> str:
        output = ""
        for command in commands:
            with self.nested(f"must fail: {command}"):
                status, out = self.execute(command, timeout=timeout)
                if status == 0:
                    raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
                output += out
        return output

    def _wait(self, op: str, timeout: Seconds, **args: Any) -> str:
        """A wait for a condition in the guest: op ``op`` (``wait_until``
        or a ``wait_for_*``, whose probe the driver has); returns the last
        try's output. The driver waits, in the guest, unless a polling
        condition is active: then ``retry`` asks it for one try a second
        (``once``), as nixpkgs runs these waits, and the conditions are
        checked before each try. A timeout raises ``MachineTimeout`` from
        the driver, or ``retry``'s ``RequestedAssertionFailed``."""
        seconds = to_seconds(timeout)
        if not self._polling_active():
            _value, data = self._op_bytes(op, True, timeout=seconds, **args)
            return _decode(data)
        output = ""

        def holds(_last_try: bool) -> bool:
            nonlocal output
            value, data = self._op_bytes(op, True, timeout=seconds, once=True, **args)
            output = _decode(data)
            return isinstance(value, dict) and bool(value.get("done"))

        retry(holds, timeout)
        return output

    @_starts_machine
    def wait_until_succeeds(self, command: str, timeout: Seconds = 900) -> str:
        with self.nested(f"waiting for success: {command}"):
            return self._wait("wait_until", timeout, command=command, want_success=True)

    @_starts_machine
    def wait_until_fails(self, command: str, timeout: Seconds = 900) -> str:
        with self.nested(f"waiting for failure: {command}"):
            return self._wait("wait_until", timeout, command=command, want_success=False)

    @_starts_machine
    def sleep(self, secs: Optional[Seconds] = None, duration: Optional[Seconds] = None) -> None:
        """Sleep in guest time. ``duration`` is the same under the name
        later nixpkgs gives it."""
        if duration is not None:
            if secs is not None:
                raise TypeError("sleep() got both 'secs' and 'duration': pass only one")
            secs = duration
        seconds = to_seconds(secs, "sleep()'s duration")
        if seconds is None:
            raise TypeError("sleep() needs a duration: sleep(5) or sleep(timedelta(seconds=5))")
        self.succeed(f"sleep {_shown(seconds)}")

    # -- waits ----------------------------------------------------------
    @_starts_machine
    def wait_for_file(self, filename: str, timeout: Seconds = 900) -> None:
        with self.nested(f"waiting for file '{filename}'"):
            self._wait("wait_for_file", timeout, path=filename)

    @_starts_machine
    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: Seconds = 900) -> None:
        with self.nested(f"waiting for TCP port {port} on {addr}"):
            self._wait("wait_for_open_port", timeout, port=port, addr=addr)

    @_starts_machine
    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: Seconds = 900) -> None:
        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            self._wait("wait_for_closed_port", timeout, port=port, addr=addr)

    @_starts_machine
    def wait_for_open_unix_socket(self, addr: str, is_datagram: bool = False,
                                  timeout: Seconds = 900) -> None:
        kind = "datagram" if is_datagram else "stream"
        with self.nested(f"waiting for UNIX-domain {kind} on '{addr}'"):
            self._wait("wait_for_open_unix_socket", timeout, addr=addr, is_datagram=is_datagram)

    def wait_for_console_text(self, regex: str, timeout: Optional[Seconds] = None) -> Any:
        """Wait until ``regex`` matches the serial console output; returns the
        matched line (nixpkgs returns None)."""
        with self.nested(f"waiting for {regex} to appear on console"):
            return self._op("wait_for_console_text", True, regex=regex,
                            timeout=to_seconds(timeout))

    def wait_for_shutdown(self) -> None:
        self._op("wait_for_shutdown")

    # -- systemd --------------------------------------------------------
    @_starts_machine
    def systemctl(self, q: str, user: Optional[str] = None) -> Tuple[int, str]:
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(
                f"su -l {user} --shell /bin/sh -c "
                "$'XDG_RUNTIME_DIR=/run/user/`id -u` "
                f"systemctl --user {q}'"
            )
        return self.execute(f"systemctl {q}")

    @_starts_machine
    def wait_for_unit(self, unit: str, user: Optional[str] = None, timeout: Seconds = 900) -> None:
        with self.nested(
            f"waiting for unit {unit}" + (f" with user {user}" if user is not None else "")
        ):
            self._wait("wait_for_unit", timeout, unit=unit, user=user)

    @_starts_machine
    def get_unit_info(self, unit: str, user: Optional[str] = None) -> Dict[str, str]:
        return self._op("get_unit_info", True, unit=unit, user=user)

    def get_unit_property(self, unit: str, property: str, user: Optional[str] = None) -> str:
        status, lines = self.systemctl(f'--no-pager show "{unit}" --property="{property}"', user)
        if status != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl property "{property}" for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {status}"
            )
        invalid = f'systemctl show --property "{property}" "{unit}" produced invalid output: {lines}'
        match = re.match(r"^([^=]+)=(.*)$", lines)
        if match is None or match[1] != property:
            raise RequestedAssertionFailed(invalid)
        return match[2]

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        with self.nested(f"checking if unit '{unit}' has reached state '{require_state}'"):
            state = self.get_unit_info(unit)["ActiveState"]
            if state != require_state:
                raise RequestedAssertionFailed(
                    f"Expected unit '{unit}' to to be in state "
                    f"'{require_state}' but it is in state '{state}'"
                )

    @_starts_machine
    def start_job(self, jobname: str, user: Optional[str] = None) -> Tuple[int, str]:
        return self.systemctl(f"start {jobname}", user)

    @_starts_machine
    def stop_job(self, jobname: str, user: Optional[str] = None) -> Tuple[int, str]:
        return self.systemctl(f"stop {jobname}", user)

    # -- files ----------------------------------------------------------
    @_starts_machine
    def copy_from_host(self, source: str, target: str) -> None:
        self._op("copy_from_host", True, source=os.path.abspath(source), target=target)

    def copy_from_host_via_shell(self, source: str, target: str) -> None:
        with open(source, "rb") as fh:
            content_b64 = base64.b64encode(fh.read()).decode()
        self.succeed(
            f"mkdir -p $(dirname {target})",
            f"echo -n {content_b64} | base64 -d > {target}",
        )

    @_starts_machine
    def copy_from_machine(self, source: str, target_dir: str = "") -> Any:
        """Copy ``source`` from the guest into ``<out>/<target_dir>/``;
        returns what the driver answers (the host path)."""
        return self._op("copy_from_machine", True, source=source, target_dir=target_dir)

    def copy_from_vm(self, source: str, target_dir: str = "") -> Any:
        """Old name of ``copy_from_machine``."""
        return self.copy_from_machine(source, target_dir)

    # -- lifecycle ------------------------------------------------------
    def start(self, allow_reboot: bool = False) -> None:
        """Start the VM; returns at once (the boot goes on in the background)."""
        self._op("start", allow_reboot=allow_reboot)

    @_starts_machine
    def connect(self) -> None:
        self._op("connect")

    def is_up(self) -> bool:
        return bool(self._op("is_up"))

    def shutdown(self) -> None:
        self._op("shutdown")

    def crash(self) -> None:
        self._op("crash", True)

    def reboot(self) -> None:
        self._op("reboot", True)

    def release(self) -> None:
        self._op("release")

    def switch_root(self) -> None:
        """Stage 1 → stage 2 (``testing.initrdBackdoor``); then reconnect."""
        self.wait_for_unit("initrd.target")
        self.execute(
            "systemctl isolate --no-block initrd-switch-root.target 2>/dev/null >/dev/null",
            check_return=False,
            check_output=False,
        )
        self.connected = False
        self.connect()

    # -- QEMU and consoles ----------------------------------------------
    def send_monitor_command(self, command: str) -> str:
        return self._op("send_monitor_command", True, command=command)

    def qmp(self, execute: str, arguments: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Run one QMP command (extension; nixpkgs reaches QMP only for events)."""
        return self._op("qmp", True, execute=execute, arguments=arguments)

    def wait_for_qmp_event(
        self, event_filter: Callable[[Dict[str, Any]], bool], timeout: Seconds = 60 * 10
    ) -> Dict[str, Any]:
        limit = to_seconds(timeout)
        if limit is None:
            limit = 600
        start = time.monotonic()
        while True:
            remaining = max(0.0, limit - (time.monotonic() - start))
            try:
                evt = self._op("next_qmp_event", timeout=remaining)
            except MachineTimeout as e:
                raise TimeoutError(str(e)) from None
            if event_filter(evt):
                return evt
            if time.monotonic() - start >= limit:
                raise TimeoutError(f"no matching QMP event within {_shown(limit)} seconds")

    def send_key(self, key: str, delay: Optional[Seconds] = 0.01, log: Optional[bool] = True) -> None:
        key = CHAR_TO_KEY.get(key, key)
        pause = to_seconds(delay, "send_key()'s delay")
        ctx = self.nested(f"sending key {key!r}") if log else contextlib.nullcontext()
        with ctx:
            self.send_monitor_command(f"sendkey {key}")
            if pause is not None:
                time.sleep(pause)

    def send_chars(self, chars: str, delay: Optional[Seconds] = 0.01) -> None:
        with self.nested(f"sending keys {chars!r}"):
            for char in chars:
                self.send_key(char, delay, log=False)

    def send_console(self, chars: str) -> None:
        self._op("send_console", True, chars=chars)

    def shell_interact(self, address: Optional[str] = None) -> None:
        args = {} if address is None else {"address": address}
        try:
            self._op("shell_interact", **args)
        except KeyboardInterrupt:
            pass

    def console_interact(self) -> None:
        try:
            self._op("console_interact")
        except KeyboardInterrupt:
            pass

    def get_tty_text(self, tty: str) -> str:
        _status, output = self.execute(
            f"fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}"
        )
        return output

    def wait_until_tty_matches(self, tty: str, regexp: str, timeout: Seconds = 900) -> None:
        matcher = re.compile(regexp)

        def tty_matches(last_try: bool) -> bool:
            text = self.get_tty_text(tty)
            if last_try:
                self.log(f"Last chance to match /{regexp}/ on TTY{tty}, which currently contains: {text}")
            return len(matcher.findall(text)) > 0

        with self.nested(f"waiting for {regexp} to appear on tty {tty}"):
            retry(tty_matches, timeout)

    def dump_tty_contents(self, tty: str) -> None:
        self.execute(f"fold -w 80 /dev/vcs{tty} | systemd-cat")

    def get_console_log(self) -> str:
        return self._op("get_console_log")

    # -- screen ---------------------------------------------------------
    def screenshot(self, filename: str) -> Any:
        """PNG into the output directory unless ``filename`` has a ``/``;
        returns the path written."""
        return self._op("screenshot", True, filename=filename)

    @contextlib.contextmanager
    def _temp_screenshot(self) -> Any:
        with tempfile.TemporaryDirectory(prefix="nix-vmtest-ocr-") as d:
            path = os.path.join(d, "screen.png")
            written = self.screenshot(path)
            yield written if isinstance(written, str) and written else path

    def _ocr(self, variants: bool) -> List[str]:
        if shutil.which("tesseract") is None:
            raise Unsupported("OCR requested but `tesseract` is not available (enableOCR = true)")
        with self._temp_screenshot() as image:
            results = [_run_tesseract(image)]
            if variants and shutil.which("magick") is not None:
                for negate in (False, True):
                    results.append(_run_tesseract(_preprocess(image, negate)))
            return results

    def get_screen_text_variants(self) -> List[str]:
        return self._ocr(True)

    def get_screen_text(self) -> str:
        return self._ocr(False)[0]

    def wait_for_text(self, regex: str, timeout: Seconds = 900) -> None:
        def screen_matches(last_try: bool) -> bool:
            variants = self.get_screen_text_variants()
            if any(re.search(regex, text) is not None for text in variants):
                return True
            if last_try:
                self.log(f"Last OCR attempt failed. Text was: {variants}")
            return False

        with self.nested(f"waiting for {regex} to appear on screen"):
            retry(screen_matches, timeout)

    def wait_for_x(self, timeout: Seconds = 900) -> None:
        def check_x(_last_try: bool) -> bool:
            cmd = 'journalctl -b SYSLOG_IDENTIFIER=systemd | grep "Reached target Current graphical"'
            status, _ = self.execute(cmd)
            if status != 0:
                return False
            status, _ = self.execute("[ -e /tmp/.X11-unix/X0 ]")
            return status == 0

        with self.nested("waiting for the X11 server"):
            retry(check_x, timeout)

    def get_window_names(self) -> List[str]:
        return self.succeed(
            r"xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\([^\"]*\)\".*/\1/; t; d'"
        ).splitlines()

    def wait_for_window(self, regexp: str, timeout: Seconds = 900) -> None:
        pattern = re.compile(regexp)

        def window_is_visible(last_try: bool) -> bool:
            names = self.get_window_names()
            if last_try:
                self.log(
                    f"Last chance to match {regexp} on the window list, which currently contains: "
                    + ", ".join(names)
                )
            return any(pattern.search(name) for name in names)

        with self.nested("waiting for a window to appear"):
            retry(window_is_visible, timeout)

    # -- network --------------------------------------------------------
    def forward_port(self, host_port: int = 8080, guest_port: int = 80) -> None:
        self.send_monitor_command(f"hostfwd_add tcp::{host_port}-:{guest_port}")

    def block(self) -> None:
        """Take this machine's VLAN links down."""
        self._op("block", True)

    def unblock(self) -> None:
        self._op("unblock", True)


# nixpkgs names the class QemuMachine and exposes BaseMachine for typing.
QemuMachine = Machine
BaseMachine = Machine


class MachineDeprecationWrapper:
    """``machine`` in a test whose only machine has another name, as nixpkgs
    binds it: each attribute read warns (``UserWarning``, nixpkgs' text)
    and is the machine's. An assignment goes to the machine (nixpkgs'
    wrapper keeps it on itself, where no read sees it)."""

    def __init__(self, msg: str, machine: Machine) -> None:
        object.__setattr__(self, "msg", msg)
        object.__setattr__(self, "machine", machine)

    def __getattribute__(self, name: str) -> Any:
        if name in ("msg", "machine"):
            return object.__getattribute__(self, name)
        msg = object.__getattribute__(self, "msg")
        machine = object.__getattribute__(self, "machine")
        # nixpkgs names the machine's class, QemuMachine for a VM.
        warnings.warn(f"invoking 'QemuMachine.{name}' is deprecated: {msg}")
        return getattr(machine, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "machine"), name, value)
