"""``test_driver.driver`` as nixpkgs has it, backed by ``nix_vmtest.driver``."""
from nix_vmtest.driver import *  # noqa: F401,F403
from nix_vmtest.driver import Driver  # noqa: F401
