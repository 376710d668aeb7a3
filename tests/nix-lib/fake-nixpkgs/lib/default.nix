# A stand-in for nixpkgs' lib, for tests/nix-lib/run.sh only: the handful of
# functions nix/nixos/*.nix call, and a crude evalModules (declared options
# with defaults; definitions merged by priority; lists concatenated; several
# strings joined by lines; attribute sets merged). It checks how the library
# wires NixOS nodes together, not NixOS itself: that needs real nixpkgs.
let
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    filter
    foldl'
    isAttrs
    isFunction
    isList
    isPath
    isString
    listToAttrs
    mapAttrs
    removeAttrs
    ;
  h = import ../../../../nix/lib.nix;
in
rec {
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = _: mkOption { default = false; };
  literalExpression = x: x;
  types = {
    str = "str";
    int = "int";
    package = "package";
  };
  optional = c: x: if c then [ x ] else [ ];
  optionalAttrs = c: x: if c then x else { };
  optionalString = c: s: if c then s else "";
  concatMapStrings = f: l: concatStringsSep "" (map f l);
  concatLists = l: concatMap (x: x) l;
  attrValues = s: map (n: s.${n}) (attrNames s);
  mapAttrsToList = f: s: map (n: f n s.${n}) (attrNames s);
  genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);

  # Pushes mkIf / mkMerge down: one definition -> list of plain ones (with
  # mkOverride kept on leaves).
  flatten =
    v:
    if isAttrs v && (v._type or null) == "if" then
      (if v.condition then flatten v.content else [ ])
    else if isAttrs v && (v._type or null) == "merge" then
      concatMap flatten v.contents
    else
      [ v ];

  isOption = v: isAttrs v && (v._type or null) == "option";
  isDrv = v: isAttrs v && (v.type or null) == "derivation";

  mergeLeaf =
    decl: defs:
    let
      prioDefs = concatMap h.unwrapDefinition defs;
      best = h.bestDefinitions prioDefs;
      values = map (d: d.value) best;
    in
    if defs == [ ] then
      decl.default or (throw "fake lib: option without a value")
    else if values == [ ] then
      decl.default or null
    else if builtins.all isList values then
      concatMap (x: x) values
    else if builtins.length values > 1 && builtins.all isString values then
      concatStringsSep "\n" values
    else if builtins.length values > 1 && builtins.all (x: isAttrs x && !(isDrv x)) values then
      mergeTree { } values
    else
      builtins.head values;

  mergeTree =
    decls: defs0:
    let
      defs = filter isAttrs (concatMap flatten defs0);
      keys = h.unique (concatMap attrNames defs ++ (if isOption decls then [ ] else attrNames decls));
    in
    listToAttrs (
      map (k: {
        name = k;
        value =
          let
            sub = map (d: d.${k}) (filter (d: d ? ${k}) defs);
            decl = decls.${k} or { };
          in
          if k == "_module" then
            { args = foldl' (a: d: a // (d.args or { })) { } sub; }
          else if isOption decl then
            mergeLeaf decl sub
          else if sub != [ ] && builtins.all (s: isAttrs s && !(s ? _type) && !(isDrv s)) (concatMap flatten sub) then
            mergeTree decl sub
          else if sub == [ ] then
            mergeTree decl [ ]
          else
            mergeLeaf { } sub;
      }) keys
    );

  evalModules =
    {
      modules,
      specialArgs ? { },
    }:
    let
      lib = import ./default.nix;
      base = specialArgs // { inherit config lib options; };
      # Only the arguments a module names; _module.args ones lazily.
      call =
        f:
        f (
          listToAttrs (
            concatMap (
              n:
              if base ? ${n} then
                [ { name = n; value = base.${n}; } ]
              else if (builtins.functionArgs f).${n} then
                [ ]
              else
                [ { name = n; value = config._module.args.${n}; } ]
            ) (attrNames (builtins.functionArgs f))
          )
        );
      load = m: if isPath m || isString m then import m else m;
      collect =
        m:
        let
          m1 = load m;
          m2 = if isFunction m1 then call m1 else m1;
        in
        [ m2 ] ++ concatMap collect (m2.imports or [ ]);
      all = concatMap collect modules;
      options = foldl' recursiveUpdate { } (map (m: m.options or { }) all);
      recursiveUpdate =
        a: b:
        a
        // mapAttrs (n: v: if a ? ${n} && isAttrs v && isAttrs a.${n} && !(isOption v) then recursiveUpdate a.${n} v else v) b;
      configOf =
        m:
        if m ? config then
          m.config
        else
          removeAttrs m [
            "imports"
            "options"
            "key"
            "_file"
          ];
      config = mergeTree options (map configOf all);
    in
    {
      inherit config options;
    };
}
