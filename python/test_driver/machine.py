"""``test_driver.machine`` as nixpkgs has it, backed by ``nix_vmtest.machine``."""
from nix_vmtest.machine import *  # noqa: F401,F403
from nix_vmtest.machine import Machine  # noqa: F401
