# The one module nix-vmtest adds to nixpkgs' own test framework
# (nixos/lib/testing: evalTest, runTest, testers.runNixOSTest, makeTest):
#
#   pkgs.testers.runNixOSTest { imports = [ nix-vmtest/nix/test-module.nix ]; ... }
#
# What it changes, and only that:
#   - `driver` (the test's bin/nixos-test-driver) runs nix-vmtest's driver,
#     with nixpkgs' command line: --config driverConfiguration.json (the file
#     nixpkgs' driver-configuration.nix writes), --log-level, extraDriverArgs.
#     nixpkgs' own driver derivation is still built when the script is to be
#     linted or type-checked: its build is where those checks run.
#   - `imageNodes.<name>`: machines given as kernel/initrd/disk, beside
#     `nodes`, on the same VLANs and in each other's /etc/hosts.
#   - `snapshots`: each machine that can be saved (not a NixOS node that
#     mounts the host's Nix store over 9p) gets a derivation
#     `vm-snapshot-<name>-<node>` (`.snapshots.<node>`): nix-vmtest's
#     driver boots it alone and saves it (`--save-snapshots`); `driver`
#     restores it (`--snapshot <node>=<path>`). Its inputs are the node's
#     start script, the test's VLANs and the driver: not the test script.
#   - options that need what nix-vmtest's driver does not offer
#     (`containers`, `sshBackdoor`, `enableDebugHook`) fail the evaluation
#     of the test, its .driver and .driverInteractive, with a message that
#     says so.
# Everything else (nodes, network, start scripts, run.nix's test derivation,
# interactive, passthru, meta, extend, ...) is nixpkgs' own, unchanged: a
# test without image nodes has the same guests, the same start scripts and
# the same driverConfiguration.json as under nixpkgs' driver.
{
  config,
  lib,
  options,
  hostPkgs,
  ...
}:

let
  inherit (lib)
    mkIf
    mkForce
    mkOption
    types
    ;
  images = import ./image-node.nix { inherit lib; };

  # nixpkgs' driver.nix, from the framework that evaluates this test.
  driverModuleFile =
    if options ? pythonTestDriverPackage && options ? driverConfigurationFile then
      /. + builtins.unsafeDiscardStringContext (builtins.head options.pythonTestDriverPackage.declarations)
    else
      throw "nix-vmtest: this nixpkgs' test framework (nixos/lib/testing) has no driverConfiguration; nix-vmtest's test module needs a nixpkgs whose tests hand the driver a driverConfiguration.json (as nixpkgs 26.11 does); older ones are not supported.";
  # nixpkgs' own driver derivation for this test (its build lints and
  # type-checks the script); called as the module system would.
  nixpkgsDriver = (import driverModuleFile { inherit config lib hostPkgs; }).config.driver;

  checksScript = !config.skipLint || !config.skipTypeCheck;

  pythonPackages = config.extraPythonPackages hostPkgs.python3Packages;
  pythonEnv = hostPkgs.python3.withPackages (_: pythonPackages);
  # What nixpkgs' driver package takes for OCR.
  ocrTools = [
    hostPkgs.imagemagick_light
    (hostPkgs.tesseract4.override { enableLanguages = [ "eng" ]; })
  ];

  # With `-o DIR` (nixpkgs' run.nix passes `-o $out`) and no --junit-xml,
  # the JUnit report goes to DIR/junit.xml.
  junitInOutputDir = ''
    junit= prev=
    for arg in "$@"; do
      case $prev in -o|--output-directory) junit=$arg/junit.xml ;; esac
      case $arg in
        --output-directory=*) junit=''${arg#*=}/junit.xml ;;
        --junit-xml|--junit-xml=*|--junit_xml|--junit_xml=*) junit= ; break ;;
      esac
      prev=$arg
    done
    if [ -n "$junit" ]; then set -- --junit-xml "$junit" "$@"; fi
  '';

  # ---------------------------------------------------------------------
  # booted snapshots
  # ---------------------------------------------------------------------
  vms = config.driverConfiguration.vms;
  vmNames = lib.attrNames vms;
  # A NixOS node whose Nix store is the host's over 9p cannot be saved:
  # QEMU refuses to migrate a guest with a 9p share mounted, and that one
  # (under /nix/store's overlay) cannot be unmounted. Image nodes can.
  savable =
    name: !(config.nodes ? ${name}) || !config.nodes.${name}.virtualisation.mountHostNixStore;
  snapshotsWanted =
    name: if lib.isBool config.snapshots then config.snapshots else config.snapshots.${name} or true;
  snapshotNames = lib.filter (n: snapshotsWanted n && savable n) vmNames;
  givenSnapshots = if lib.isBool config.snapshots then { } else config.snapshots;
  unknownSnapshots = lib.subtractLists vmNames (lib.attrNames givenSnapshots);
  unsavableSnapshots = lib.filter (n: !savable n && (givenSnapshots.${n} or false)) vmNames;
  # What the driver needs to boot one node alone as the run would: its
  # start script and the test's VLANs (every VLAN's switch is in QEMU's
  # environment, which a snapshot records). The script is not in it.
  snapshotVlans = lib.sort lib.lessThan (lib.unique config.driverConfiguration.vlans);
  snapshotDrv =
    name:
    hostPkgs.runCommand (lib.strings.sanitizeDerivationName "vm-snapshot-${config.name}-${name}")
      {
        nodesJson = builtins.toJSON {
          vlans = snapshotVlans;
          machines = [
            {
              inherit name;
              startScript = vms.${name}.start_script;
            }
          ];
        };
        passAsFile = [ "nodesJson" ];
        # As the run's (nixpkgs' run.nix).
        requiredSystemFeatures = lib.attrNames (lib.filterAttrs (_: v: v) config.requiredFeatures);
      }
      ''
        ${lib.getExe' config.vmtestDriverPackage "nixos-test-driver"} \
          --nodes-json "$nodesJsonPath" --log-level ${config.logLevel} --save-snapshots "$out"
      '';
  snapshots = lib.genAttrs snapshotNames snapshotDrv;

  driver =
    hostPkgs.runCommand "nixos-test-driver-${config.name}"
      {
        nativeBuildInputs = [ hostPkgs.makeWrapper ];
        # nixpkgs' driver derivation, built for its lint and type check of
        # the script only (nothing of it is in this output).
        scriptChecks = if checksScript then nixpkgsDriver else "";
        preferLocalBuild = true;
        passthru = config.passthru;
        meta = config.meta // {
          mainProgram = "nixos-test-driver";
        };
      }
      ''
        mkdir -p $out/bin
        cp ${config.driverConfiguration.test_script} $out/test-script
        ln -s ${lib.getExe' config.vmtestDriverPackage "nixos-test-driver"} $out/bin/nixos-test-driver
        wrapProgram $out/bin/nixos-test-driver \
          --add-flags "--config ${config.driverConfigurationFile}" \
          --add-flags "--log-level ${config.logLevel}" \
          ${lib.concatMapStringsSep " " (
            name: "--add-flags ${lib.escapeShellArg "--snapshot ${name}=${snapshots.${name}}/${name}"}"
          ) snapshotNames} \
          ${lib.optionalString (pythonPackages != [ ]) "--set NIX_VMTEST_PYTHON ${pythonEnv}/bin/python3"} \
          ${lib.optionalString config.enableOCR "--prefix PATH : ${lib.makeBinPath ocrTools}"} \
          --run ${lib.escapeShellArg junitInOutputDir} \
          ${lib.escapeShellArgs (
            lib.concatMap (arg: [
              "--add-flags"
              arg
            ]) config.extraDriverArgs
          )}
      '';

  # ---------------------------------------------------------------------
  # image nodes
  # ---------------------------------------------------------------------
  # NixOS nodes are 1..N (nixpkgs' network.nix numbers allMachines in name
  # order); image nodes follow, in name order.
  machineNames = lib.attrNames config.allMachines;
  imageNames = lib.attrNames config.imageNodes;
  imageInfo = lib.listToAttrs (
    lib.imap1 (
      i: name:
      lib.nameValuePair name (
        images.info name (lib.length machineNames + i) config.imageNodes.${name} (imageScript name)
      )
    ) imageNames
  );
  haveImages = config.imageNodes != { };

  # Every node with an address, for the image guests' /etc/hosts.
  hosts =
    lib.concatMap (
      name:
      let
        net = config.nodes.${name}.networking;
      in
      lib.optional (net.primaryIPAddress != "") {
        name = net.hostName;
        ip = net.primaryIPAddress;
      }
    ) (lib.attrNames config.nodes)
    ++ lib.concatMap (
      i:
      lib.optional (i.networking.primaryIPAddress != "") {
        inherit (i) name;
        ip = i.networking.primaryIPAddress;
      }
    ) (lib.attrValues imageInfo);

  imageScript =
    name:
    images.startScript {
      inherit hostPkgs name hosts;
      qemu = config.qemu.package;
      number = imageInfo.${name}.nodeNumber;
      node = config.imageNodes.${name};
    };

  # The VLANs nixpkgs' driver-configuration.nix lists (from the NixOS nodes).
  nodeVlans = lib.concatMap (
    m: m.virtualisation.vlans ++ lib.mapAttrsToList (_: v: v.vlan) m.virtualisation.interfaces
  ) (lib.attrValues config.nodes);

  unsupported = what: "nix-vmtest: ${what}";
  # What nix-vmtest's driver cannot do: test assertions (nixpkgs checks them
  # when the test is evaluated), and an error from `driver` itself, so that
  # .driver and .driverInteractive (whose `interactive.*` may set them) say
  # it too.
  checks = [
    {
      assertion = config.containers == { };
      message = unsupported "`containers` (systemd-nspawn machines) are not supported by nix-vmtest's driver; give them as `nodes` (QEMU VMs) instead.";
    }
    {
      assertion = !config.sshBackdoor.enable;
      message = unsupported "`sshBackdoor` (SSH into the VMs over vsock) is not supported by nix-vmtest's driver; use the interactive driver (.driverInteractive) and machine.shell_interact().";
    }
    {
      assertion = !config.enableDebugHook;
      message = unsupported "`enableDebugHook` is not supported by nix-vmtest's driver (it needs the vsock SSH backdoor).";
    }
    {
      assertion = lib.intersectLists imageNames machineNames == [ ];
      message = unsupported "these names are both in `imageNodes` and `nodes`: ${lib.concatStringsSep ", " (lib.intersectLists imageNames machineNames)}.";
    }
    {
      assertion = unknownSnapshots == [ ];
      message = unsupported "snapshots.${lib.head unknownSnapshots}: there is no node `${lib.head unknownSnapshots}` (the nodes are ${lib.concatStringsSep ", " vmNames}).";
    }
    {
      assertion = unsavableSnapshots == [ ];
      message = unsupported "`snapshots.<node> = true` for a node that mounts the host's Nix store over 9p (${lib.concatStringsSep ", " unsavableSnapshots}): QEMU cannot save a guest with a 9p share mounted. Give the node its store as an image (virtualisation.useNixStoreImage = true) or boot it from a disk (virtualisation.useBootLoader = true), or leave its snapshot off.";
    }
    {
      assertion = lib.length machineNames + lib.length imageNames <= 254;
      message = unsupported "a test has at most 254 machines (nodes and imageNodes).";
    }
  ];
  failedChecks = map (c: c.message) (lib.filter (c: !c.assertion) checks);
  checked =
    drv:
    if failedChecks != [ ] then
      throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failedChecks}"
    else
      drv;
in
{
  options = {
    vmtestDriverPackage = mkOption {
      type = types.package;
      default = hostPkgs.callPackage ./package.nix { withPlugin = false; };
      defaultText = lib.literalExpression "hostPkgs.callPackage nix-vmtest/nix/package.nix { withPlugin = false; }";
      description = "nix-vmtest's package whose bin/nixos-test-driver runs the test (instead of nixpkgs' Python driver).";
    };

    snapshots = mkOption {
      type = types.either types.bool (types.attrsOf types.bool);
      default = true;
      example = lib.literalExpression "{ server = false; }";
      description = ''
        Whether machines start from booted snapshots (nix-vmtest): each
        machine that can be saved gets a derivation
        `vm-snapshot-<name>-<node>` (`.snapshots.<node>`) in which
        nix-vmtest's driver boots it alone and saves it once booted; the
        test's driver (and `.driverInteractive`) restores it instead of
        booting it, on the machine's first start. `false` turns them off;
        `{ <node> = false; }` for one node. A NixOS node that mounts the
        host's Nix store over 9p (the default) cannot be saved and gets
        none (`{ <node> = true; }` for it is an error): QEMU does not
        migrate a guest with a 9p share mounted.
      '';
    };

    imageNodes = mkOption {
      type = types.attrsOf (types.submodule images.submodule);
      default = { };
      example = lib.literalExpression ''
        {
          router = { kernel = ./vmlinuz; initrd = ./initrd; disk = ./root.qcow2; memory = 512; vlans = [ 1 2 ]; };
        }
      '';
      description = ''
        Machines given as a kernel, an initrd and an optional qcow2 disk,
        beside `nodes` (nix-vmtest). They are numbered after the NixOS nodes,
        get 192.168.<vlan>.<n> and MAC 52:54:00:12:<vlan>:<n> on their VLANs,
        are in every NixOS node's /etc/hosts and in `nodes` (module argument,
        testScript), and learn their own network from kernel parameters
        (vmtest.hostname=, vmtest.net=, vmtest.hosts=; tests/guests/README.md).
        The test script gets a machine object for each, as for `nodes`.
      '';
    };
  };

  config = {
    driver = mkForce (checked (if checksScript then driver else lib.warnIf config.skipLint "Linting is disabled" driver));

    assertions = checks;

    passthru.snapshots = snapshots;

    driverConfiguration = mkIf haveImages {
      vms = lib.mapAttrs (name: _: {
        inherit name;
        start_script = lib.getExe imageInfo.${name}.system.build.vm;
      }) config.imageNodes;
      vlans = lib.subtractLists nodeVlans (lib.unique (lib.concatMap (i: i.vlans) (lib.attrValues imageInfo)));
    };

    # Image nodes in `nodes` (NixOS nodes' module argument, testScript) and
    # in every NixOS node's /etc/hosts.
    nodesCompat = mkIf haveImages imageInfo;
    extraBaseModules = mkIf haveImages (
      { config, ... }:
      {
        networking.extraHosts = lib.concatMapStrings (images.hostsLines config.virtualisation.vlans) (
          lib.attrValues imageInfo
        );
      }
    );
  };
}
