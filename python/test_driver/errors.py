"""``test_driver.errors`` as nixpkgs has it, backed by ``nix_vmtest.errors``."""
from nix_vmtest.errors import *  # noqa: F401,F403
from nix_vmtest.errors import RequestedAssertionFailed  # noqa: F401
