# The tutorial's minimal test (examples/nixos/minimal.nix) on a Debian guest:
# the same test script, run through nixosTest with an image node. In the
# guest, alice's own program is `cowsay-alice` (only her PATH has it).
#
#   nix-build examples/debian/minimal.nix --arg guests "$(tests/guests/build.sh --print-dir)"
# (plus --option plugin-files .../libnix_vmtest.so, or --arg driver ./target/release/nixos-test-driver)
{
  guests ? builtins.getEnv "NIX_VMTEST_GUESTS",
  driver ? null,
  vmtest ? import ../../nix { inherit driver; },
}:

let
  images = import ./guests.nix guests;
in
vmtest.nixosTest {
  name = "minimal-test";

  imageNodes.machine = images.systemd;

  testScript = ''
    machine.wait_for_unit("default.target")
    machine.succeed("su -- alice -c 'which cowsay-alice'")
    machine.fail("su -- root -c 'which cowsay-alice'")
  '';
}
