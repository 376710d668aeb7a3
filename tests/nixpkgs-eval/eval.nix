# What tests/nixpkgs-eval/compare.py checks: NixOS tests evaluated by a real
# nixpkgs tree twice, upstream (nixpkgs' own driver) and with nix-vmtest's
# test module (nix/test-module.nix: our driver), through each entry point
# (the overlay, testers.runNixOSTest + the module, nix/'s runTest, the
# flake's lib). For each case it gives the store paths compare.py compares:
# the test's run derivation, its driver, the driverConfiguration.json the
# driver reads, the nodes' start scripts and system toplevels.
#
#   nix-instantiate --eval --strict --json --read-write-mode eval.nix \
#     --arg nixpkgs /path/to/nixpkgs --arg overlays '[ (import no-hackage.nix) ]' \
#     [--arg only '[ "case name" ]']
{
  nixpkgs,
  # Overlays for both package sets (../shared/nixpkgs/no-hackage.nix here).
  overlays ? [ ],
  # Case names to evaluate (null: all).
  only ? null,
  # Just list the cases.
  list ? false,
  system ? "x86_64-linux",
}:

let
  repo = ../..;
  pkgs = import nixpkgs {
    inherit system overlays;
    config = { };
  };
  # The same nixpkgs with nix-vmtest's overlay.
  pkgsOurs = import nixpkgs {
    inherit system;
    config = { };
    overlays = overlays ++ [ (import (repo + "/nix/overlay.nix")) ];
  };
  inherit (pkgs) lib;
  # The checks' helpers: a failed check is its description.
  check = what: ok: if ok then null else what;
  # hasInfix is a regex match, which takes no string context.
  has =
    needle: hay:
    lib.hasInfix (builtins.unsafeDiscardStringContext needle) (builtins.unsafeDiscardStringContext hay);
  nixosLib = import (nixpkgs + "/nixos/lib") { inherit lib; };
  module = repo + "/nix/test-module.nix";
  withModule = t: {
    imports = [
      module
      t
    ];
  };
  # nix-vmtest's library with nixpkgs, and the flake's lib (its nixpkgs
  # input stood for by this tree).
  vmtest = import (repo + "/nix") { inherit pkgs; };
  flakeOutputs =
    let
      fl = import (repo + "/flake.nix");
      out = fl.outputs {
        self = out;
        nixpkgs = {
          outPath = nixpkgs;
          inherit lib;
        };
      };
    in
    out;

  # The tutorial's tests as examples/nixos/ has them, given to upstream's
  # functions, to ours, or captured as plain test attribute sets.
  example = name: p: import (repo + "/examples/nixos/${name}.nix") { pkgs = p; };
  capture = pkgs // {
    nixosTest = t: t;
    testers.runNixOSTest = t: t;
  };
  minimal = example "minimal" capture;
  clientServer = example "client-server" capture;
  # Upstream's evaluations that several cases compare with (made once).
  # examples/nixos/minimal.nix given upstream's pkgs.nixosTest is this too.
  upMinimalNixosTest = pkgs.testers.nixosTest minimal;
  upMinimalRunNixOSTest = pkgs.testers.runNixOSTest minimal;
  upMinimalRunTest = nixosLib.runTest (withPkgs minimal);
  # examples/nixos/client-server.nix given upstream's pkgs is this.
  upClientServer = pkgs.testers.runNixOSTest clientServer;
  # For runTest-style entry points: nodes get pkgs (as runNixOSTest does),
  # so that each node does not import nixpkgs again.
  withPkgs = t: {
    imports = [ t ];
    hostPkgs = pkgs;
    node.pkgs = pkgs;
  };

  real = name: nixpkgs + "/nixos/tests/${name}.nix";

  # Real nixos/tests/*.nix (test modules, as all-tests.nix's runTest takes
  # them), chosen to cover the options nixpkgs tests use: VLANs and routing
  # (babeld, bittorrent), _module.args (login,
  # systemd-analyze), interactive.* (go-httpbin, and flap-alerted below),
  # extraPythonPackages (webhook), enableOCR (cage), skipTypeCheck (sway),
  # a specialisation (autobrr), defaults (atuin), a name with spaces
  # (blint), several nodes (mosquitto, samba, sudo, ...); and cheap to
  # evaluate (about 5-15 s of CPU per test and side here).
  realTests = [
    "atd"
    "autobrr"
    "atuin"
    "babeld"
    "beanstalkd"
    "bittorrent"
    "blint"
    "cage"
    "cgit"
    "go-httpbin"
    "lighttpd"
    "login"
    "mosquitto"
    "ntpd"
    "samba"
    "sudo"
    "sway"
    "systemd-analyze"
    "timezone"
    "webhook"
  ];
  # Their interactive drivers too (.driverInteractive: the test re-evaluated
  # with `interactive.*`).
  withInteractive = [ "go-httpbin" ];

  # Each case is a function (of nothing): its evaluation is made when the
  # case is compared and is garbage once its store paths are out, so that
  # one Nix process can go through every case (a shared attribute set of
  # evaluated tests would keep them all, several GB).
  cases =
    {
      "tutorial minimal: examples/nixos/minimal.nix, pkgs.nixosTest of the overlay" = _: {
        up = upMinimalNixosTest;
        ours = example "minimal" pkgsOurs;
      };
      "tutorial minimal: testers.nixosTest of the overlay" = _: {
        up = upMinimalNixosTest;
        ours = pkgsOurs.testers.nixosTest minimal;
      };
      "tutorial minimal: testers.runNixOSTest + test module" = _: {
        up = upMinimalRunNixOSTest;
        ours = pkgs.testers.runNixOSTest (withModule minimal);
      };
      "tutorial minimal: runTest of nix/ (import nix { pkgs })" = _: {
        up = upMinimalRunTest;
        ours = vmtest.runTest (withPkgs minimal);
      };
      # nix/ without nixpkgs hands a test with NixOS nodes and hostPkgs to
      # that nixpkgs' framework.
      "tutorial minimal: runTest of nix/ without nixpkgs, hostPkgs in the test" = _: {
        up = upMinimalRunTest;
        ours = (import (repo + "/nix") { }).runTest (withPkgs minimal);
      };
      "tutorial minimal: the flake's lib.runTest" = _: {
        up = upMinimalRunTest;
        ours = flakeOutputs.lib.runTest (withPkgs minimal);
      };
      "tutorial client-server: examples/nixos/client-server.nix, testers.runNixOSTest of the overlay" = _: {
        up = upClientServer;
        ours = example "client-server" pkgsOurs;
      };
      "tutorial client-server: testers.runNixOSTest + test module" = _: {
        up = upClientServer;
        ours = pkgs.testers.runNixOSTest (withModule clientServer);
      };
      # Test-level containers (upstream evaluates it; not redone here):
      # nix-vmtest refuses it.
      "nixos/tests/simple-container.nix (containers: refused)" = _: {
        ours = pkgs.testers.runNixOSTest (withModule (real "simple-container"));
        oursFails = true;
      };
      # interactive.sshBackdoor.enable: the test is the same, its
      # interactive driver is refused.
      "nixos/tests/flap-alerted.nix (interactive.sshBackdoor: its driverInteractive refused)" = _: {
        up = pkgs.testers.runNixOSTest (real "flap-alerted");
        ours = pkgs.testers.runNixOSTest (withModule (real "flap-alerted"));
        interactiveFails = true;
      };
    }
    // lib.listToAttrs (
      map (
        name:
        lib.nameValuePair "nixos/tests/${name}.nix" (_: {
          up = pkgs.testers.runNixOSTest (real name);
          ours = pkgs.testers.runNixOSTest (withModule (real name));
          interactive = lib.elem name withInteractive;
        })
      ) realTests
    )
    // {
      # nix-vmtest's own: image nodes beside NixOS nodes.
      "image nodes beside nodes (nix-vmtest's imageNodes)" = _: {
        ours = pkgsOurs.testers.runNixOSTest imageTest;
        checks = imageChecks;
      };
      # nix-vmtest's own: booted snapshots of the nodes.
      "booted snapshots (nix-vmtest's snapshots)" = _: {
        ours = snapshotRun { };
        checks = snapshotChecks;
      };
    };

  # ---------------------------------------------------------------------
  # booted snapshots
  # ---------------------------------------------------------------------
  # a and b take their store as an image (no 9p store: they can be
  # saved); c mounts the host's store over 9p (the default: it cannot);
  # img is an image node. `script`, `aEtc` and `extra` vary the test.
  snapshotRun =
    {
      script ? "start_all()",
      aEtc ? "a",
      extra ? { },
    }:
    pkgsOurs.testers.runNixOSTest {
      imports = [ extra ];
      name = "snaps";
      nodes.a = {
        virtualisation.useNixStoreImage = true;
        virtualisation.vlans = [ 1 ];
        environment.etc.marker.text = aEtc;
        system.stateVersion = "24.05";
      };
      nodes.b = {
        virtualisation.useNixStoreImage = true;
        virtualisation.vlans = [ 2 ];
        system.stateVersion = "24.05";
      };
      nodes.c.system.stateVersion = "24.05";
      imageNodes.img = {
        kernel = fixtures + "/vmlinuz";
        initrd = fixtures + "/initrd";
      };
      testScript = script;
    };
  snapshotChecks =
    let
      t = snapshotRun { };
      snap = node: t.snapshots.${node};
      cmd = d: d.drvAttrs.buildCommand;
      restores = d: node: has "--snapshot ${node}=${snap node}/${node}" (cmd d);
      other = snapshotRun { script = "start_all()\na.succeed('true')"; };
      aChanged = snapshotRun { aEtc = "changed"; };
      off = snapshotRun { extra.snapshots = false; };
      aOff = snapshotRun { extra.snapshots.a = false; };
      nodesJson = builtins.fromJSON (
        builtins.unsafeDiscardStringContext (snap "a").drvAttrs.nodesJson
      );
      i = t.driverInteractive;
    in
    lib.filter (x: x != null) [
      (check "a snapshot derivation per machine that can be saved: a, b, img (not c: its store is 9p)" (
        lib.attrNames t.snapshots == [
          "a"
          "b"
          "img"
        ]
      ))
      (check "named vm-snapshot-<test>-<node>" ((snap "a").name == "vm-snapshot-snaps-a"))
      (check "built by nix-vmtest's driver with --save-snapshots $out" (
        has "${t.config.vmtestDriverPackage}/bin/nixos-test-driver" (cmd (snap "a"))
        && has "--save-snapshots \"$out\"" (cmd (snap "a"))
      ))
      (check "its nodes: the node's start script alone, and every VLAN of the test" (
        nodesJson == {
          vlans = [
            1
            2
          ];
          machines = [
            {
              name = "a";
              startScript = builtins.unsafeDiscardStringContext (
                t.config.driverConfiguration.vms.a.start_script
              );
            }
          ];
        }
      ))
      (check "the test script is not an input: another script, the same snapshots" (
        other.snapshots.a.drvPath == (snap "a").drvPath
        && other.snapshots.b.drvPath == (snap "b").drvPath
        && other.driver.drvPath != t.driver.drvPath
      ))
      (check "a's configuration is an input: another /etc of a, another snapshot of a only" (
        aChanged.snapshots.a.drvPath != (snap "a").drvPath
        && aChanged.snapshots.b.drvPath == (snap "b").drvPath
      ))
      (check ".driver restores each from its store path (--snapshot <node>=<path>/<node>)" (
        restores t.driver "a"
        && restores t.driver "b"
        && restores t.driver "img"
        && !(has "--snapshot c=" (cmd t.driver))
      ))
      (check "the driverConfiguration.json is nixpkgs' (it names no snapshot)" (
        !(has "snapshot" (builtins.toJSON t.config.driverConfiguration))
      ))
      (check ".driverInteractive restores too, from snapshots of its own nodes (interactive.qemu.package)" (
        has "--interactive" (cmd i)
        && has "--snapshot a=${i.snapshots.a}/a" (cmd i)
        && i.snapshots.a.drvPath != (snap "a").drvPath
      ))
      (check "snapshots = false: none, and the driver restores nothing" (
        off.snapshots == { } && !(has "--snapshot" (cmd off.driver))
      ))
      (check "snapshots.a = false: b and img only" (
        lib.attrNames aOff.snapshots == [
          "b"
          "img"
        ]
        && !(has "--snapshot a=" (cmd aOff.driver))
        && has "--snapshot b=" (cmd aOff.driver)
      ))
    ];

  # ---------------------------------------------------------------------
  # image nodes
  # ---------------------------------------------------------------------
  fixtures = repo + "/tests/nix-lib/fixtures";
  imageTest = {
    name = "images";
    nodes.server = {
      virtualisation.vlans = [
        1
        2
      ];
      system.stateVersion = "24.05";
    };
    imageNodes.tiny = {
      kernel = fixtures + "/vmlinuz";
      initrd = fixtures + "/initrd";
      vlans = [
        2
        3
      ];
    };
    imageNodes.disky = {
      kernel = fixtures + "/vmlinuz";
      initrd = fixtures + "/initrd";
      disk = fixtures + "/disk.qcow2";
      memory = 512;
      kernelParams = [ "a=1" ];
    };
    testScript =
      { nodes, ... }:
      ''
        start_all()
        server.succeed("ping -c1 ${nodes.tiny.networking.primaryIPAddress}")
        tiny.succeed("true")
        disky.succeed("true")
      '';
  };
  imageChecks =
    let
      t = pkgsOurs.testers.runNixOSTest imageTest;
      c = t.config;
      dc = c.driverConfiguration;
      # The start script's text (it is not built here).
      script = name: t.nodes.${name}.system.build.vm.text;
      hosts = c.nodes.server.networking.extraHosts;
    in
    lib.filter (x: x != null) [
      (check "the driver gets every machine (NixOS and image) as a start script" (
        lib.attrNames dc.vms == [
          "disky"
          "server"
          "tiny"
        ]
      ))
      (check "the driver gets the image nodes' VLANs too" (
        lib.sort lib.lessThan dc.vlans == [
          1
          2
          3
        ]
      ))
      (check "image nodes are numbered after the NixOS nodes, in name order" (
        t.nodes.disky.nodeNumber == 2 && t.nodes.tiny.nodeNumber == 3
      ))
      (check "the test script's nodes has the image nodes' addresses" (
        has "ping -c1 192.168.2.3" c.testScriptString
      ))
      (check "NixOS nodes resolve image nodes by name (shared VLAN and primary address)" (
        has "192.168.1.2 disky\n" hosts && has "192.168.2.3 tiny\n" hosts
      ))
      (check "image start script: NIC on VLAN 2 as node 3, on the driver's socket" (
        has "mac=52:54:00:12:02:03" (script "tiny")
        && has "QEMU_VLAN_SOCKET_2" (script "tiny")
        && has "QEMU_VDE_SOCKET_3" (script "tiny")
      ))
      (check "image start script: hostname and every node in vmtest.hosts" (
        has "vmtest.hostname=tiny" (script "tiny")
        && has "vmtest.hosts=server=192.168.1.1,disky=192.168.1.2,tiny=192.168.2.3" (script "tiny")
      ))
      (check "image start script: a disk gets a qcow2 overlay, root=/dev/vda, kernelParams, memory" (
        has "qemu-img create -q -f qcow2 -F qcow2 -b" (script "disky")
        && has "root=/dev/vda a=1" (script "disky")
        && has "-m 512" (script "disky")
      ))
      (check "image start script: no disk, no overlay" (!has "qemu-img" (script "tiny")))
      (check "the run derivation is nixpkgs' vm-test-run-<name>" (t.name == "vm-test-run-images"))
    ];

  # ---------------------------------------------------------------------
  # what compare.py gets
  # ---------------------------------------------------------------------
  facts = t: {
    run = t.drvPath;
    driver = t.driver.drvPath;
    config = t.config.driverConfigurationFile;
    vms = lib.mapAttrs (_: v: v.start_script) t.config.driverConfiguration.vms;
    toplevels = lib.mapAttrs (_: n: n.system.build.toplevel.drvPath) t.config.nodes;
  };
  oursFacts =
    t:
    facts t
    // {
      package = t.config.vmtestDriverPackage.drvPath;
    };
  fails = x: !(builtins.tryEval (builtins.seq x true)).success;

  evalCase =
    name: case:
    let
      c = case null;
    in
    if c ? checks then
      {
        ours = oursFacts c.ours;
        failedChecks = c.checks;
      }
    else if c.oursFails or false then
      {
        oursFails = fails c.ours.drvPath;
      }
    else
      {
        up = facts c.up;
        ours = oursFacts c.ours;
      }
      // lib.optionalAttrs (c.interactive or false) {
        interactive = {
          up = c.up.driverInteractive.drvPath;
          ours = c.ours.driverInteractive.drvPath;
        };
      }
      // lib.optionalAttrs (c.interactiveFails or false) {
        interactiveFails = fails c.ours.driverInteractive.drvPath;
      };

  selected = if only == null then cases else lib.getAttrs only cases;
in
if list then lib.attrNames cases else lib.mapAttrs evalCase selected
