# nix-vmtest's own evaluator, for tests without nixpkgs: turns test modules
# into the option values of one test, then into its nodes and its
# vm-test-run-<name> derivation. With nixpkgs, tests go through nixpkgs' own
# framework instead (./nixpkgs.nix); default.nix chooses.
#
# This file needs neither nixpkgs nor its `lib`: option handling and image
# nodes are plain Nix. A test with NixOS nodes is handed back to default.nix
# (`delegateTo`) when it names a nixpkgs (hostPkgs or node.pkgs), and fails
# with a message saying what to do otherwise.
{
  # nixpkgs package set given to the library, or null.
  pkgs,
  # The driver: a package with bin/nixos-test-driver, or the binary; or null.
  driver,
  # Use builtins.vmTest (the plugin) when it is there.
  useBuiltin,
  # PATH for the test's build when there is no nixpkgs (QEMU, python3 from the host).
  hostPath,
  # The system the test derivation is for, when there is no nixpkgs.
  system,
}:

let
  h = import ./lib.nix;
  optionTable = import ./options.nix;

  inherit (builtins)
    all
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    foldl'
    getAttr
    hasAttr
    head
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    length
    listToAttrs
    mapAttrs
    removeAttrs
    tail
    ;

  fail = msg: throw "nix-vmtest: ${msg}";

  optionNames = attrNames optionTable;
  # `node.pkgs` -> [ "node" "pkgs" ]
  splitName = n: filter isString (builtins.split "\\." n);
  groups = h.unique (map (n: head (splitName n)) (filter (n: length (splitName n) > 1) optionNames));
  groupMembers = g: map (n: builtins.elemAt (splitName n) 1) (filter (n: head (splitName n) == g && length (splitName n) > 1) optionNames);

  # Options nixpkgs has that nix-vmtest does not: a clear word instead of
  # "unknown option".
  unsupported = {
    containers = "systemd-nspawn containers are not supported by nix-vmtest; use nodes";
    containerDefaults = "systemd-nspawn containers are not supported by nix-vmtest; use nodes";
    sshBackdoor = "the vsock SSH backdoor needs /dev/vhost-vsock; use driverInteractive and shell_interact()";
    enableDebugHook = "the debug hook needs the vsock SSH backdoor, which nix-vmtest does not provide";
  };

  moduleMeta = [
    "imports"
    "_file"
    "key"
  ];

  hasPath =
    path: set:
    if path == [ ] then true else isAttrs set && hasAttr (head path) set && hasPath (tail path) (getAttr (head path) set);
  getPath = path: set: foldl' (s: k: getAttr k s) set path;

  checkType =
    optName: type: file: v:
    let
      ok =
        if type == "string" then
          isString v
        else if type == "int" then
          isInt v
        else if type == "bool" then
          isBool v
        else if type == "strings" then
          isList v && all isString v
        else if type == "script" then
          isString v || isFunction v
        else if type == "snapshots" then
          isBool v || (isAttrs v && all isBool (builtins.attrValues v))
        else
          true;
      want =
        {
          string = "a string";
          int = "an integer";
          bool = "a boolean";
          strings = "a list of strings";
          script = "a string or a function of { nodes, ... }";
          snapshots = "true, false or an attribute set { <node> = false; }";
        }
        .${type};
    in
    if ok then v else fail "option `${optName}` must be ${want}, but ${file} gives ${h.describeType v}";

  isPrimitive = v: isString v || isInt v || isBool v || v == null || (isList v && all isPrimitive v);

  # ---------------------------------------------------------------------
  # evalTest: modules -> everything about one test
  # ---------------------------------------------------------------------
  evalTest =
    {
      modules,
      # "runTest" or "nixosTest" (the latter also takes `machine`, and
      # defaults name to "unnamed", as makeTest does).
      entry,
      # Set when evaluating the interactive variant (interactive.* merged).
      isInteractive ? false,
    }:
    let
      # The module arguments test modules get, like nixpkgs' runTest modules.
      moduleArgs = {
        inherit config;
        lib = if hostPkgs != null && hostPkgs ? lib then hostPkgs.lib else null;
        hostPkgs = hostPkgs;
        pkgs = hostPkgs;
        nodes = nodesCompat;
      };

      knownRoots = map (n: head (splitName n)) optionNames ++ (if entry == "nixosTest" then [ "machine" ] else [ ]);

      checkModule =
        file: m:
        let
          keys = attrNames (removeAttrs m moduleMeta);
          bad = filter (k: !(elem k knownRoots)) keys;
          badGroups = concatMap (
            g:
            if m ? ${g} && isAttrs m.${g} && !(m.${g} ? _type) then
              map (k: "${g}.${k}") (filter (k: !(elem k (groupMembers g))) (attrNames m.${g}))
            else
              [ ]
          ) groups;
          explain =
            k:
            if unsupported ? ${k} then
              fail "option `${k}` (in ${file}) is not supported: ${unsupported.${k}}"
            else
              fail "unknown test option `${k}` (in ${file}). Known options: ${h.showList (h.unique knownRoots)}";
        in
        if bad != [ ] then
          explain (head bad)
        else if badGroups != [ ] then
          fail "unknown test option `${head badGroups}` (in ${file}). Known options: ${h.showList optionNames}"
        else
          m;

      # Flattens `imports`, calling function modules with moduleArgs.
      collect =
        file: m0:
        let
          file' = if builtins.isPath m0 then toString m0 else file;
          m1 = h.loadModule m0;
          m2 = if isFunction m1 then h.callWith m1 moduleArgs else m1;
          # `{ config = { ... }; }` is the same as `{ ... }`.
          m3 = if isAttrs m2 && m2 ? config && !(m2 ? name) && !(m2 ? nodes) && !(m2 ? testScript) then m2.config // { imports = m2.imports or [ ]; } else m2;
          file'' = m3._file or file';
          m = if isAttrs m3 then checkModule file'' m3 else fail "a test module must be an attribute set, a function returning one, or a path to one; ${file'} gives ${h.describeType m3}";
        in
        [
          {
            file = file'';
            defs = removeAttrs m moduleMeta;
          }
        ]
        ++ concatMap (collect file'') (m.imports or [ ]);

      collected = concatMap (m: collect "the test module" m) modules;

      # Every definition of one option, with the file it came from.
      rawDefs = path: concatMap (c: if hasPath path c.defs then [ { inherit (c) file; value = getPath path c.defs; } ] else [ ]) collected;

      prioDefs = path: concatMap (d: map (x: x // { inherit (d) file; }) (h.unwrapDefinition d.value)) (rawDefs path);

      resolve =
        optName:
        let
          opt = optionTable.${optName};
          path = splitName optName;
          raw = rawDefs path;
          best = h.bestDefinitions (prioDefs path);
          files = concatStringsSep ", " (map (d: d.file) best);
        in
        if opt.merge == "unique" then
          (
            if best == [ ] then
              (
                if optName == "name" && entry == "nixosTest" then
                  "unnamed"
                else if opt.required or false then
                  fail "the test has no `${optName}`: set ${optName} = ...; (${opt.description})"
                else
                  opt.default
              )
            else if length best == 1 || (all (d: isPrimitive d.value) best && all (d: d.value == (head best).value) best) then
              checkType optName opt.type (head best).file (head best).value
            else
              fail "option `${optName}` is defined more than once with different values (in ${files})"
          )
        else if opt.merge == "attrs" then
          foldl' (acc: d: acc // d.value) opt.default best
        else if opt.merge == "list" then
          checkType optName opt.type "the test" (concatMap (d: d.value) best)
        else if opt.merge == "modules" then
          map (d: d.value) raw
        else if opt.merge == "pyPkgs" then
          (if raw == [ ] then opt.default else (p: concatMap (d: d.value p) raw))
        else
          # nodes: name -> list of definitions (NixOS modules, or one image)
          foldl' (
            acc: d:
            if isAttrs d.value then
              acc // mapAttrs (n: v: (acc.${n} or [ ]) ++ [ v ]) d.value
            else
              fail "option `nodes` must be an attribute set of nodes (in ${d.file})"
          ) { } raw;

      values = listToAttrs (map (n: { name = n; value = resolve n; }) optionNames);

      # Legacy makeTest: `machine = ...;` is `nodes.machine`.
      machineDefs = if entry == "nixosTest" then map (d: d.value) (rawDefs [ "machine" ]) else [ ];
      givenNodes = if machineDefs == [ ] then values.nodes else values.nodes // { machine = (values.nodes.machine or [ ]) ++ machineDefs; };
      # imageNodes (as with nixpkgs, where only images go there) join nodes.
      bothWays = filter (n: givenNodes ? ${n}) (attrNames values.imageNodes);
      nodeDefs =
        if bothWays != [ ] then
          fail "`${head bothWays}` is in both `nodes` and `imageNodes`; give each machine once"
        else
          givenNodes // values.imageNodes;

      config = {
        inherit (values)
          name
          testScript
          globalTimeout
          skipLint
          skipTypeCheck
          enableOCR
          extraPythonPackages
          passthru
          meta
          hostPkgs
          requiredSystemFeatures
          extraDriverArgs
          snapshots
          ;
        defaults = values.defaults ++ values.nodeDefaults;
        inherit (values) extraBaseModules interactive;
        nodes = nodeDefs;
        node = {
          pkgs = values."node.pkgs";
          pkgsReadOnly = if values."node.pkgsReadOnly" == null then values."node.pkgs" != null else values."node.pkgsReadOnly";
          specialArgs = values."node.specialArgs";
        };
        qemu.package = values."qemu.package";
      };

      # -------------------------------------------------------------------
      # nixpkgs, if there is one
      # -------------------------------------------------------------------
      hostPkgs =
        if config.hostPkgs != null then
          config.hostPkgs
        else if pkgs != null then
          pkgs
        else
          config.node.pkgs;

      # -------------------------------------------------------------------
      # nodes
      # -------------------------------------------------------------------
      nodeNames = attrNames config.nodes;
      numbers = h.nodeNumbers nodeNames;

      classify =
        name: defs:
        let
          kinds = h.unique (map h.nodeKind defs);
          kind = head kinds;
        in
        if defs == [ ] then
          fail "node `${name}` has no definition"
        else if values.imageNodes ? ${name} then
          "image"
        else if length kinds > 1 then
          fail "node `${name}` is defined as ${h.showList kinds} at once; give it one way: a NixOS configuration, an image { kernel; initrd; ... } or a start script"
        else
          kind;

      kinds = mapAttrs classify config.nodes;

      imageAttrs = {
        disk = null;
        memory = 256;
        cpus = 1;
        kernelParams = "";
        qemuFlags = [ ];
        vlans = [ 1 ];
      };

      checkVlans =
        what: vlans:
        if isList vlans && all (v: isInt v && v >= 1 && v <= 255) vlans then
          vlans
        else
          fail "${what}: vlans must be a list of VLAN numbers 1..255";

      checkSnapshot = what: v: if v == null || isBool v then v else fail "${what}: snapshot must be true or false (whether the node starts from a booted snapshot), not ${h.describeType v}";

      normalizeImage =
        name: node:
        let
          unknown = filter (k: !(elem k ([ "kernel" "initrd" "snapshot" ] ++ attrNames imageAttrs))) (attrNames node);
          n = imageAttrs // node;
          what = "image node `${name}`";
          need = k: if h.isPathLike n.${k} then n.${k} else fail "${what}: `${k}` must be a path, a string or a derivation, not ${h.describeType n.${k}}";
        in
        if !(node ? kernel) then
          fail "${what} has no kernel"
        else if unknown != [ ] then
          fail "${what} has unknown attribute${if length unknown > 1 then "s" else ""} ${h.showList unknown}; an image node takes kernel, initrd, disk, memory, cpus, kernelParams, qemuFlags, vlans and snapshot"
        else if !(node ? initrd) then
          fail "${what} has a kernel but no initrd"
        else
          {
            kernel = need "kernel";
            initrd = need "initrd";
            disk = if n.disk == null then null else need "disk";
            memory = if isInt n.memory && n.memory > 0 then n.memory else fail "${what}: memory must be a number of MiB";
            cpus = if isInt n.cpus && n.cpus > 0 then n.cpus else fail "${what}: cpus must be a positive integer";
            kernelParams =
              if isString n.kernelParams then
                n.kernelParams
              else if isList n.kernelParams && all isString n.kernelParams then
                concatStringsSep " " n.kernelParams
              else
                fail "${what}: kernelParams must be a string (or a list of strings)";
            qemuFlags = if isList n.qemuFlags && all isString n.qemuFlags then n.qemuFlags else fail "${what}: qemuFlags must be a list of strings";
            vlans = checkVlans what n.vlans;
            snapshot = checkSnapshot what (node.snapshot or null);
          };

      normalizeStartScript =
        name: node:
        let
          given = if isAttrs node && !(h.isDerivation node) then node else { startScript = node; };
          unknown = filter (k: !(elem k [ "startScript" "vlans" "snapshot" ])) (attrNames given);
        in
        if unknown != [ ] then
          fail "start-script node `${name}` has unknown attribute${if length unknown > 1 then "s" else ""} ${h.showList unknown}; it takes startScript, vlans and snapshot"
        else if !(h.isPathLike given.startScript) then
          fail "node `${name}`: startScript must be a path, a string or a derivation"
        else
          {
            inherit (given) startScript;
            vlans = checkVlans "start-script node `${name}`" (given.vlans or [ 1 ]);
            snapshot = checkSnapshot "start-script node `${name}`" (given.snapshot or null);
          };

      # What a test script and the NixOS nodes see of a node that is not
      # NixOS: the same attribute paths NixOS configs have for addressing.
      plainNodeInfo =
        name: kind: attrs:
        let
          number = numbers.${name};
          primary = if attrs.vlans == [ ] then "" else h.ipAddress (head attrs.vlans) number;
          self =
            attrs
            // {
              inherit name kind;
              nodeNumber = number;
              ipAddresses = listToAttrs (map (v: { name = toString v; value = h.ipAddress v number; }) attrs.vlans);
              macAddresses = listToAttrs (map (v: { name = toString v; value = h.macAddress v number; }) attrs.vlans);
              networking = {
                hostName = name;
                domain = null;
                primaryIPAddress = primary;
                primaryIPv6Address = "";
              };
              virtualisation.vlans = attrs.vlans;
              config = self;
            };
        in
        self;

      plainNodes = mapAttrs (
        name: kind:
        if kind == "image" then
          plainNodeInfo name kind (normalizeImage name (foldl' (a: b: a // b) { } config.nodes.${name}))
        else if kind == "startScript" then
          (
            if length config.nodes.${name} > 1 then
              fail "start-script node `${name}` is defined more than once"
            else
              plainNodeInfo name kind (normalizeStartScript name (head config.nodes.${name}))
          )
        else
          null
      ) kinds;

      nixosNames = filter (n: kinds.${n} == "nixos") nodeNames;

      # A test with NixOS nodes goes to nixpkgs' own framework (default.nix
      # does that) when it names a nixpkgs; without one it cannot be evaluated.
      delegateTo = if nixosNames != [ ] && hostPkgs != null then hostPkgs else null;
      noNixpkgs = fail ''
        node `${head nixosNames}` is a NixOS configuration; evaluating it needs nixpkgs, whose own
          test framework (nixos/lib/testing) then evaluates the test. Import nix-vmtest's nix/ with
          { pkgs = import <nixpkgs> { }; } (or { nixpkgs = <path>; } and hostPkgs = pkgs; in the test),
          use the overlay (pkgs.testers.runNixOSTest), or the flake's lib. Image nodes
          ({ kernel; initrd; ... }, or imageNodes.<name>) need no nixpkgs.'';

      # nodes.<name>: the node's attributes and addressing.
      nodesCompat = mapAttrs (name: kind: if kind == "nixos" then noNixpkgs else plainNodes.${name}) kinds;

      nodeVlans = name: if kinds.${name} == "nixos" then noNixpkgs else plainNodes.${name}.vlans;
      vlans = h.unique (concatMap nodeVlans nodeNames);

      # -------------------------------------------------------------------
      # what the plugin / the driver get
      # -------------------------------------------------------------------
      testScriptString =
        let
          s = config.testScript;
        in
        if isFunction s then
          (
            let
              r = h.callWith s (moduleArgs // { nodes = nodesCompat; });
            in
            if isString r then r else fail "testScript, given as a function, must return a string, not ${h.describeType r}"
          )
        else
          s;

      # Node as the plugin takes it (builtins.vmTest's `nodes`): an image
      # attribute set, or the start script itself (the VLANs of start-script
      # nodes go into the top-level `vlans`).
      builtinNode =
        name:
        if kinds.${name} == "image" then
          imageOf name
        else if kinds.${name} == "startScript" then
          scriptPath plainNodes.${name}.startScript
        else
          noNixpkgs;

      imageOf = name: h.imageOf plainNodes.${name};

      # Node as Contract 2 (the nodes JSON) has it.
      jsonMachine =
        name:
        if kinds.${name} == "image" then
          {
            inherit name;
            image = imageOf name;
          }
        else
          {
            inherit name;
            startScript = if kinds.${name} == "nixos" then noNixpkgs else scriptPath plainNodes.${name}.startScript;
          };

      # The nodes that start from a booted snapshot: all, unless
      # `snapshots` (false, or { <node> = false; }) or the node's own
      # `snapshot` says no (as builtins.vmTest's arguments).
      snapshotNodes =
        let
          given = config.snapshots;
          own = name: if plainNodes.${name} == null then null else plainNodes.${name}.snapshot;
          badNames = if isAttrs given then filter (n: !(elem n nodeNames)) (attrNames given) else [ ];
          clash = if isAttrs given then filter (n: own n != null && own n != given.${n}) (filter (n: elem n nodeNames) (attrNames given)) else [ ];
          on =
            name:
            if own name != null then
              own name
            else if isAttrs given then
              given.${name} or true
            else
              given;
        in
        if badNames != [ ] then
          fail "snapshots.${head badNames}: there is no node `${head badNames}` (the nodes are ${concatStringsSep ", " nodeNames})"
        else if clash != [ ] then
          fail "snapshots.${head clash} and node `${head clash}`'s own snapshot differ; give it in one place"
        else
          filter on nodeNames;

      scriptPath = s: if h.isDerivation s then (if builtins.match "run-.*-vm" (s.name or "") != null then "${s}" else "${s}/bin/run-${s.name}-vm") else s;

      spec = {
        inherit vlans;
        machines = map jsonMachine nodeNames;
      };

      backend = import ./backend.nix {
        inherit
          h
          fail
          driver
          system
          ;
        inherit hostPkgs;
        packageFile = ./package.nix;
      };

      # The run's PATH: QEMU, python3 (with extraPythonPackages) and, with
      # enableOCR, tesseract from nixpkgs when there is one, else the
      # host's (Debian's) programs.
      pythonPackages = if hostPkgs != null then config.extraPythonPackages hostPkgs.python3Packages else [ ];
      runPath =
        if hostPkgs != null then
          concatStringsSep ":" (
            map (p: "${p}/bin") (
              [
                (if config.qemu.package != null then config.qemu.package else hostPkgs.qemu_test)
                (if pythonPackages == [ ] then hostPkgs.python3 else hostPkgs.python3.withPackages (_: pythonPackages))
              ]
              ++ (if config.enableOCR then [ hostPkgs.tesseract ] else [ ])
            )
          )
        else if (rawDefs [ "extraPythonPackages" ]) != [ ] then
          fail "extraPythonPackages needs nixpkgs (give hostPkgs = pkgs;)"
        else
          hostPath;

      # Both make the same derivations (src/plugin/plan.rs, ./backend.nix).
      viaBuiltin = useBuiltin && (builtins ? vmTest);
      built =
        if viaBuiltin then
          builtins.vmTest {
            inherit (config)
              name
              globalTimeout
              requiredSystemFeatures
              skipLint
              skipTypeCheck
              extraDriverArgs
              ;
            inherit vlans;
            snapshots = listToAttrs (map (n: { name = n; value = elem n snapshotNodes; }) nodeNames);
            hostPath = runPath;
            testScript = testScriptString;
            nodes = listToAttrs (map (n: { name = n; value = builtinNode n; }) nodeNames);
          }
        else
          backend.build {
            inherit (config)
              name
              globalTimeout
              requiredSystemFeatures
              skipLint
              extraDriverArgs
              ;
            inherit spec snapshotNodes;
            path = runPath;
            testScript = testScriptString;
          };

      interactiveTest =
        if isInteractive || config.interactive == [ ] then
          null
        else
          evalTest {
            inherit entry;
            modules = modules ++ config.interactive;
            isInteractive = true;
          };

      driverInteractive = if interactiveTest == null then built.driverInteractive else interactiveTest.built.driverInteractive;

      result =
        built
        // config.passthru
        // {
          inherit (built) driver;
          inherit driverInteractive;
          nodes = nodesCompat;
          config = config // {
            testScript = testScriptString;
            inherit vlans;
          };
          test = result;
          passthru = config.passthru;
          meta = (built.meta or { }) // { timeout = config.globalTimeout; } // config.meta;
          # Which way the derivation was made: "builtin" (plugin) or "library".
          vmtestBackend = if viaBuiltin then "builtin" else "library";
        };
    in
    {
      inherit
        config
        result
        built
        spec
        nodesCompat
        delegateTo
        ;
    };
in
{
  inherit evalTest;
}
