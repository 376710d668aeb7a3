# Shared values for tests/nix-lib/run.sh: the library without nixpkgs and
# without the plugin, and small image nodes made of files in this directory.
{
  useBuiltin ? false,
  # The stand-in, or the real driver binary (a path).
  driver ? ./fake-driver,
}:
rec {
  vmtest = import ../../nix {
    inherit useBuiltin driver;
  };
  kernel = ./fixtures/vmlinuz;
  initrd = ./fixtures/initrd;
  disk = ./fixtures/disk.qcow2;
  image = { inherit kernel initrd; };
  # A test with two image nodes; `extra` is merged into it.
  twoNodes = extra: {
    name = "demo";
    nodes = {
      server = image // { vlans = [ 1 2 ]; };
      client = image;
    };
    testScript = "start_all()";
  } // extra;
}
