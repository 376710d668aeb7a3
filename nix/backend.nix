# The vm-test-run-<name> derivation when the plugin is not loaded: its
# builder is the driver itself (Contract 1 of ARCHITECTURE.md), reading the
# nodes JSON (Contract 2), the test script and the timeout from the
# environment. With nixpkgs (hostPkgs) the driver is the package built from
# this repository (nix/package.nix); without it, `driver` must be given.
{
  h,
  fail,
  driver,
  hostPath,
  system,
  hostPkgs,
  packageFile,
}:

let
  inherit (builtins)
    any
    attrValues
    concatStringsSep
    getContext
    isPath
    isString
    pathExists
    replaceStrings
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

  hasOutputContext = s: any (c: (c ? outputs) || (c.allOutputs or false)) (attrValues (getContext s));

  writeText =
    name: text:
    if havePkgs then
      hostPkgs.writeText name text
    else if hasOutputContext text then
      fail "${name} refers to the output of a derivation; writing such a file needs nixpkgs (give hostPkgs = pkgs;) or the plugin"
    else
      builtins.toFile name text;

  shellQuote = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";

  binPath = pkgs: concatStringsSep ":" (map (p: "${p}/bin") pkgs);

  build =
    {
      name,
      testScript,
      spec,
      globalTimeout,
      requiredSystemFeatures,
      skipLint,
      skipTypeCheck,
      enableOCR,
      extraPythonPackages,
      extraDriverArgs,
      # Why the library builds this test itself (for the error without a driver).
      why ? "building a test without the plugin",
    }:
    let
      driverBin = driverBinFor why;
      pythonPackages = if havePkgs then extraPythonPackages hostPkgs.python3Packages else [ ];
      pythonEnv =
        if pythonPackages == [ ] then
          null
        else
          hostPkgs.python3.withPackages (_: pythonPackages);

      runtimePath =
        if havePkgs then
          binPath ((if pythonEnv != null then [ pythonEnv ] else [ ]) ++ (if enableOCR then [ hostPkgs.tesseract ] else [ ]))
        else if pythonPackages != [ ] then
          fail "extraPythonPackages needs nixpkgs (hostPkgs)"
        else
          hostPath;

      scriptFile = writeText "vm-test-script-${name}" testScript;
      nodesJson = writeText "vm-test-nodes-${name}.json" (builtins.toJSON spec);
      vlans = concatStringsSep " " (map toString spec.vlans);

      env =
        {
          testScript = scriptFile;
          nodesJson = nodesJson;
          globalTimeout = toString globalTimeout;
          inherit vlans;
          NIX_VMTEST_SKIP_LINT = if skipLint then "1" else "";
          NIX_VMTEST_SKIP_TYPE_CHECK = if skipTypeCheck then "1" else "";
        }
        // (if pythonEnv != null then { NIX_VMTEST_PYTHON = "${pythonEnv}/bin/python3"; } else { })
        // (if runtimePath != "" then { PATH = runtimePath; } else { });

      drvSystem = if havePkgs then hostPkgs.stdenv.hostPlatform.system else system;

      test = derivation (
        env
        // {
          name = "vm-test-run-${name}";
          system = drvSystem;
          builder = driverBin;
          args = [
            "--junit-xml"
            "${builtins.placeholder "out"}/junit.xml"
          ] ++ extraDriverArgs;
          inherit requiredSystemFeatures;
        }
      );

      # bin/nixos-test-driver with the test baked in, as nixpkgs' .driver.
      wrapper =
        interactive:
        let
          shell = if havePkgs then hostPkgs.runtimeShell else "/bin/sh";
          exports = concatStringsSep "\n" (
            map (k: "export ${k}=${shellQuote env.${k}}") (builtins.filter (k: k != "PATH") (builtins.attrNames env))
          );
          text = ''
            #!${shell}
            ${exports}
            ${if env ? PATH then "export PATH=${shellQuote env.PATH}\${PATH:+:$PATH}" else ""}
            exec ${driverBin} ${if interactive then "--interactive " else ""}${concatStringsSep " " (map shellQuote extraDriverArgs)} "$@"
          '';
          wname = "nixos-test-driver-${name}${if interactive then "-interactive" else ""}";
        in
        if havePkgs then
          hostPkgs.writeTextFile {
            name = wname;
            destination = "/bin/nixos-test-driver";
            executable = true;
            inherit text;
          }
        else
          # No nixpkgs: /bin/sh and coreutils of the host (needs the sandbox
          # off, or those paths in extra-sandbox-paths).
          derivation {
            name = wname;
            system = drvSystem;
            builder = "/bin/sh";
            args = [
              "-c"
              ''mkdir -p "$out/bin" && printf '%s' "$text" > "$out/bin/nixos-test-driver" && chmod +x "$out/bin/nixos-test-driver"''
            ];
            inherit text;
            PATH = hostPath;
          };
    in
    test
    // {
      driver = wrapper false;
      driverInteractive = wrapper true;
      inherit scriptFile nodesJson;
    };
in
{
  inherit build;
  driverBin = driverBinFor "building a test without the plugin";
}
