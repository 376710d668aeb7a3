# nodes: machine=tiny
# expect: pass
# What nixpkgs test scripts import from the driver's package (e.g.
# nixos/tests/systemd-*.nix, pipewire, ly):
# `from test_driver.errors import RequestedAssertionFailed`.
from test_driver.errors import RequestedAssertionFailed

start_all()
try:
    machine.succeed("false")
except RequestedAssertionFailed as e:
    log.info(f"caught {e}")
