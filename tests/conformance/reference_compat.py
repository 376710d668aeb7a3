"""Lets nixpkgs' test driver, written for Python 3.13, run on 3.11 and 3.12.

Installed (with a .pth file that imports it) only into a reference venv whose
Python is older than 3.13, by reference-env.sh. Nothing of the driver is
changed; what it uses of 3.13 is given to the older Python here:

- ``warnings.deprecated`` (PEP 702), used as a decorator when its machine
  module is imported: ``typing_extensions.deprecated`` is the same thing;
- ``typing.Generator[X]`` with one argument (3.13 gave its other parameters
  defaults, PEP 696): ``collections.abc.Generator`` accepts that.
"""

import collections.abc
import typing
import warnings

if not hasattr(warnings, "deprecated"):
    from typing_extensions import deprecated  # type: ignore[attr-defined]

    warnings.deprecated = deprecated  # type: ignore[attr-defined]

try:
    typing.Generator[None]  # type: ignore[misc]
except TypeError:
    typing.Generator = collections.abc.Generator  # type: ignore[misc]
