"""Exceptions a test script can see.

The hierarchy follows nixpkgs' ``test_driver.errors`` (``TestScriptError`` is
the base whose tracebacks are trimmed to the script's own frames) and adds the
standard-library bases that authors may already catch:

- ``RequestedAssertionFailed`` is also an ``AssertionError`` (``succeed``,
  ``fail``, ``t.assertEqual``, ``retry`` timing out);
- ``MachineTimeout`` (driver error kind ``timeout``) is a
  ``RequestedAssertionFailed``, because nixpkgs reports every timed-out wait as
  ``RequestedAssertionFailed("action timed out ...")``;
- ``MachineError`` (kind ``machine``): the guest died or failed;
- ``UsageError`` (kind ``usage``) is a ``ValueError``;
- ``Unsupported`` (kind ``unsupported``, a tool is missing) is a
  ``NotImplementedError``;
- ``Cancelled`` (kind ``cancelled``): the call was cancelled (Ctrl-C).
"""

from typing import Any, Dict, Type


class TestScriptError(Exception):
    """Base class of errors that mean "the test script failed"."""

    __test__ = False  # not a unittest/pytest test class


class RequestedAssertionFailed(TestScriptError, AssertionError):
    """A requested assertion failed, e.g. ``machine.succeed(...)``."""


class MachineTimeout(RequestedAssertionFailed):
    """A wait or command ran past its timeout (driver error kind ``timeout``)."""


class MachineError(TestScriptError):
    """The machine died or failed (driver error kind ``machine``)."""


class UsageError(TestScriptError, ValueError):
    """A bad argument (driver error kind ``usage``)."""


class Unsupported(TestScriptError, NotImplementedError):
    """A needed tool is missing (driver error kind ``unsupported``)."""


class Cancelled(TestScriptError):
    """The call was interrupted (driver error kind ``cancelled``, after a
    ``cancel`` request; the client then raises ``KeyboardInterrupt``)."""


class PollingConditionError(Exception):
    """A polling condition failed before a command (as in nixpkgs)."""


class ProtocolError(Exception):
    """The driver connection broke or sent something malformed."""


ERROR_KINDS: Dict[str, Type[Exception]] = {
    "assertion": RequestedAssertionFailed,
    "timeout": MachineTimeout,
    "machine": MachineError,
    "usage": UsageError,
    "unsupported": Unsupported,
    "cancelled": Cancelled,
}


def error_from_reply(err: Any) -> Exception:
    """Map a reply's ``err`` object to an exception (message kept verbatim)."""
    kind = str(err.get("kind")) if isinstance(err, dict) else None
    message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    cls: Type[Exception] = ERROR_KINDS.get(kind or "", MachineError)  # unknown kinds: MachineError
    if cls is MachineError and kind not in ERROR_KINDS:
        message = f"{message} (driver error kind {kind!r})"
    return cls(message)
