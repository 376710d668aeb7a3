# The vm-test-run-<name> derivation when the plugin is not loaded: its
# builder is the driver itself (docs/contracts.md, Contract 1), reading the
# nodes JSON (Contract 2) and the test script from `.driver`'s output. With
# nixpkgs (hostPkgs) the driver is the package built from this repository
# (nix/package.nix); without it, `driver` must be given.
{
  h,
  fail,
  driver,
  system,
  hostPkgs,
  packageFile,
}:

let
  inherit (builtins)
    isPath
    isString
    pathExists
    substring
    ;

  havePkgs = hostPkgs != null;

  driverPackage =
    if driver != null then
      driver
    else if havePkgs then
      hostPkgs.callPackage packageFile { }
    else
      null;

  noDriver = why: fail ''
    ${why} needs the driver. Either load the plugin
      (nix-build --option plugin-files /path/to/libnix_vmtest.so ...), or give nixpkgs
      (the overlay, or hostPkgs = pkgs; in the test), or import nix-vmtest's nix/ with
      { driver = /path/to/nixos-test-driver; } (the binary, or a directory with bin/nixos-test-driver).'';

  driverBinFor =
    why:
    let
      d = driverPackage;
      asPath = if isString d && substring 0 1 d == "/" then /. + d else d;
    in
    if d == null then
      noDriver why
    else if h.isDerivation d then
      "${d}/bin/nixos-test-driver"
    else if isPath asPath && pathExists (asPath + "/bin/nixos-test-driver") then
      "${asPath}/bin/nixos-test-driver"
    else if isPath asPath && pathExists asPath then
      "${asPath}"
    else
      fail "the driver ${toString d} does not exist";

  # The same derivations as the plugin's (src/plugin/plan.rs): `.driver`
  # and `.driverInteractive` are built by the driver itself
  # (`--write-wrapper`, with the script and nodes passed as files, so they
  # may name derivation outputs), and the run reads both from `.driver`'s
  # output. The library differs in one attribute only: `.driver` checks
  # the script while it builds (`vmTestCheck`), where the plugin checked it
  # at evaluation.
  build =
    {
      name,
      testScript,
      spec,
      globalTimeout,
      requiredSystemFeatures,
      skipLint,
      extraDriverArgs,
      # The run's PATH: QEMU and python3 (and what the test adds).
      path,
      # The nodes that start from a booted snapshot.
      snapshotNodes ? [ ],
    }:
    let
      driverBin = driverBinFor "building a test without the plugin";
      out = builtins.placeholder "out";
      timeout = toString globalTimeout;
      common = {
        system = if havePkgs then hostPkgs.stdenv.hostPlatform.system else system;
        builder = driverBin;
        globalTimeout = timeout;
        vmTestName = name;
      };
      # vm-snapshot-<name>-<node>: the driver boots the node (the others
      # are peers: addressed, not started) and saves it into $out/<node>.
      # Its inputs are the node's own files: not the script, nor the others.
      vlansOf = m: if m ? image then m.image.vlans else [ ];
      snapshotSpec =
        node:
        spec
        // {
          machines = map (
            m:
            if m.name == node then
              m
            else
              {
                inherit (m) name;
                peer.vlans = vlansOf m;
              }
          ) spec.machines;
        };
      snapshots = builtins.listToAttrs (
        map (node: {
          name = node;
          value = derivation {
            name = "vm-snapshot-${name}-${node}";
            inherit (common) system builder;
            args = [
              "--save-snapshots"
              out
            ];
            nodesJson = builtins.toJSON (snapshotSpec node);
            passAsFile = [ "nodesJson" ];
            PATH = path;
            inherit requiredSystemFeatures;
          };
        }) snapshotNodes
      );
      # The run's nodes: each with its snapshot.
      runSpec =
        spec
        // {
          machines = map (
            m: if snapshots ? ${m.name} then m // { snapshot = "${snapshots.${m.name}}/${m.name}"; } else m
          ) spec.machines;
        };
      wrapper =
        interactive:
        derivation (
          common
          // {
            name = "nixos-test-driver-${name}${if interactive then "-interactive" else ""}";
            args = [ "--write-wrapper" ];
            nodesJson = builtins.toJSON runSpec;
            inherit testScript;
            passAsFile = [
              "nodesJson"
              "testScript"
            ];
            vmTestInteractive = if interactive then "1" else "";
            vmTestPath = path;
            vmTestCheck = if skipLint then "syntax" else "lint";
            preferLocalBuild = true;
            allowSubstitutes = false;
          }
          // (if extraDriverArgs == [ ] then { } else { vmTestArgs = builtins.toJSON extraDriverArgs; })
        );
      driver = wrapper false;
      test = derivation (
        common
        // {
          name = "vm-test-run-${name}";
          args = [
            "-o"
            out
            "--junit-xml"
            "${out}/junit.xml"
            "--global-timeout"
            timeout
            "--nodes-json"
            "${driver}/share/nix-vmtest/nodes.json"
            "${driver}/share/nix-vmtest/test-script"
            "--log-file"
            "${out}/log"
          ] ++ extraDriverArgs;
          PATH = path;
          inherit requiredSystemFeatures;
        }
      );
    in
    test
    // {
      inherit driver snapshots;
      driverInteractive = wrapper true;
    };
in
{
  inherit build;
}
