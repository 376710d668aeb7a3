# The Debian test guests (tests/guests/build.sh) as image nodes.
#   guests: the directory `tests/guests/build.sh --print-dir` prints, as a
#   path (--arg guests /var/cache/...) or a string (NIX_VMTEST_GUESTS).
guests:

let
  dir =
    if guests == null || guests == "" then
      throw "nix-vmtest examples: give the guests directory: --arg guests \"$(tests/guests/build.sh --print-dir)\" (or set NIX_VMTEST_GUESTS)"
    else if builtins.isPath guests then
      guests
    else
      /. + guests;
in
{
  # Busybox + bash initramfs: boots in seconds, backdoor shell, no systemd.
  tiny = {
    kernel = dir + "/vmlinuz";
    initrd = dir + "/tiny/initrd";
    memory = 128;
  };

  # Debootstrapped Debian with systemd, nginx-light, curl, sudo and the user
  # alice (whose own program is cowsay-alice), on a qcow2 disk the driver
  # never writes (each machine boots an overlay).
  systemd = {
    kernel = dir + "/vmlinuz";
    initrd = dir + "/systemd/initrd";
    disk = dir + "/systemd/base.qcow2";
    memory = 512;
    kernelParams = "root=/dev/vda";
  };
}
