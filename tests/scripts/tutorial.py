# nodes: machine=systemd
# expect: pass
# expect-log: waiting for unit default.target
# expect-log: must fail: su -- root -c 'which cowsay-alice'
# The minimal test of the NixOS tutorial (nix.dev "Integration testing with
# NixOS virtual machines"), word for word; the guest's alice has a program
# only on her PATH.
machine.wait_for_unit("default.target")
machine.succeed("su -- alice -c 'which cowsay-alice'")
machine.fail("su -- root -c 'which cowsay-alice'")
