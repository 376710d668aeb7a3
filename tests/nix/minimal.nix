# The issue's example with a stand-in start script: evaluates and
# instantiates without any guest (tests/plugin.rs checks the derivation).
{ startScript ? ./fixtures/run-machine-vm }:
builtins.vmTest {
  name = "minimal-test";
  nodes.machine = startScript;
  testScript = ''
    machine.succeed("true")
  '';
}
