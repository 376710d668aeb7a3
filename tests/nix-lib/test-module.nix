# A test module in a file, for run.sh's "a module path is imported" check.
{
  name = "from-file";
  nodes.m = {
    kernel = ./fixtures/vmlinuz;
    initrd = ./fixtures/initrd;
  };
  testScript = "m.succeed('true')";
}
