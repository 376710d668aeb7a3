# Real runs (tests/plugin.rs, `boot_*`): the tiny Debian test guest built by
# tests/guests/build.sh, given as an image node (kernel and initrd are copied
# into the store) or as its start script (which reads the guest directory:
# that needs the directory in extra-sandbox-paths).
#
# `guests` is the directory as a string (`--argstr guests DIR`).
# `marker` changes the test (and so its store path) without changing what
# it does; `fail = true` makes line 4 of the script fail.
# `hostPython = true` gives the run a hostPath whose python3 (a store
# derivation that says so on stderr, then runs /usr/bin/python3) comes first.
{ guests, marker ? "0", fail ? false, startScript ? false, hostPython ? false }:
let
  python = derivation {
    name = "host-path-python";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [
      "-c"
      ''
        /bin/mkdir -p $out/bin
        printf '#!/bin/sh\necho "python3 from hostPath" >&2\nexec /usr/bin/python3 "$@"\n' > $out/bin/python3
        /bin/chmod +x $out/bin/python3
      ''
    ];
  };
in
builtins.vmTest {
  name = "minimal-test";
  nodes.machine =
    if startScript then /. + "${guests}/run-tiny-vm"
    else {
      kernel = /. + "${guests}/vmlinuz";
      initrd = /. + "${guests}/tiny/initrd";
      memory = 128;
    };
  globalTimeout = 600;
  ${if hostPython then "hostPath" else null} = "${python}/bin:/usr/bin:/bin";
  testScript = ''
    # marker ${marker}
    machine.succeed("true")
    machine.succeed("echo hello > /tmp/hello")
    ${if fail then ''machine.succeed("false")'' else ''machine.succeed("test -f /tmp/hello")''}
    machine.copy_from_machine("/tmp/hello")
  '';
}
