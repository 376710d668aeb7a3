"""Types of the globals a test script sees (for editors and mypy only; there
is no runtime module). A per-test prelude adds one line per machine and VLAN:
``python3 -m nix_vmtest.check --prelude --machines a,b --vlans 1`` prints it."""

import os as os
import unittest
from contextlib import AbstractContextManager
from typing import Any, Callable, List, Optional, overload

from .driver import Debug, Driver, Logger, Poll, Vlan
from .machine import Seconds
from .machine import Machine as Machine
from .machine import Machine as BaseMachine
from .machine import Machine as QemuMachine
from .machine import retry as retry

def start_all() -> None: ...
def join_all() -> None: ...
def test_script() -> None: ...
def run_tests() -> None: ...
def subtest(name: str) -> AbstractContextManager[None]: ...
def serial_stdout_on() -> None: ...
def serial_stdout_off() -> None: ...
def create_machine(
    start_command: str, *, name: Optional[str] = None, keep_machine_state: bool = False
) -> Machine: ...
@overload
def polling_condition(
    fun: None = None, *, seconds_interval: Seconds = 2.0, description: Optional[str] = None
) -> Callable[[Callable[[], Any]], Poll]: ...
@overload
def polling_condition(
    fun: Callable[[], Any], *, seconds_interval: Seconds = 2.0, description: Optional[str] = None
) -> Poll: ...

log: Logger
driver: Driver
machines: List[Machine]
machines_qemu: List[Machine]
machines_nspawn: List[Machine]
vlans: List[Vlan]
t: unittest.TestCase
debug: Debug
