# The tutorial's client/server test (examples/nixos/client-server.nix) on
# Debian guests, through runTest: nginx on `server` serves its default page,
# `client` fetches it by name (every node is in every node's /etc/hosts).
#
#   nix-build examples/debian/client-server.nix --arg guests "$(tests/guests/build.sh --print-dir)"
# (plus --option plugin-files .../libnix_vmtest.so, or --arg driver ./target/release/nixos-test-driver)
{
  guests ? builtins.getEnv "NIX_VMTEST_GUESTS",
  driver ? null,
  vmtest ? import ../../nix { inherit driver; },
}:

let
  images = import ./guests.nix guests;
in
vmtest.runTest {
  name = "client-server-test";

  imageNodes.server = images.systemd;
  imageNodes.client = images.systemd;

  testScript = ''
    start_all()
    server.wait_for_open_port(80)
    expected = "Welcome to nginx!"
    actual = client.succeed("curl http://server/ | grep -o \"Welcome to nginx!\"")
    assert expected in actual, "Page did not load properly"
  '';
}
