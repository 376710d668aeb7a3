"""nixpkgs' driver package name, for test scripts that import from it
(``from test_driver.errors import RequestedAssertionFailed``): the same
objects as ``nix_vmtest``'s."""
