"""nix-vmtest's Python client: the globals and ``Machine`` API a NixOS test
script uses, talking to the Rust driver over a socketpair (docs/contracts.md,
Contract 3). Standard library only."""

from .errors import (
    Cancelled,
    MachineError,
    MachineTimeout,
    PollingConditionError,
    RequestedAssertionFailed,
    TestScriptError,
    Unsupported,
    UsageError,
)

__all__ = [
    "Cancelled",
    "MachineError", "MachineTimeout", "PollingConditionError",
    "RequestedAssertionFailed", "TestScriptError", "Unsupported", "UsageError",
]
