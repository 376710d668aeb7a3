# Small helpers the library needs, written against builtins only, so that the
# nixpkgs-free paths (image nodes) evaluate without nixpkgs' `lib`.
let
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    elemAt
    filter
    foldl'
    genList
    isAttrs
    isFunction
    isList
    isPath
    isString
    length
    listToAttrs
    substring
    typeOf
    ;

  hexDigits = "0123456789abcdef";
in
rec {
  # [ a b c ] -> [ { fst = 1; snd = a; } ... ] without lib.imap1.
  imap1 = f: list: genList (i: f (i + 1) (elemAt list i)) (length list);

  # Numbers of the nodes: 1..N in name order (attrNames is sorted).
  nodeNumbers = names: listToAttrs (imap1 (n: name: { inherit name; value = n; }) names);

  unique = list: foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] list;

  # Two lower-case hex digits: 18 -> "12", 1 -> "01".
  toHex2 =
    n:
    if n < 0 || n > 255 then
      throw "nix-vmtest: ${toString n} does not fit in one byte (VLANs and nodes are numbered 1..255)"
    else
      let
        hi = n / 16;
        lo = n - hi * 16;
      in
      substring hi 1 hexDigits + substring lo 1 hexDigits;

  # The addressing NixOS tests use (nixos/lib/testing/network.nix and
  # qemu-common.nix): node n on VLAN v.
  macAddress = vlan: n: "52:54:00:12:${toHex2 vlan}:${toHex2 n}";
  ipAddress = vlan: n: "192.168.${toString vlan}.${toString n}";
  ipv6Address = vlan: n: "2001:db8:${toString vlan}::${toString n}";

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";

  # What an image node is (Contract 2's `image`), taken from its options.
  imageAttrs = [
    "kernel"
    "initrd"
    "disk"
    "memory"
    "cpus"
    "kernelParams"
    "qemuFlags"
    "vlans"
  ];
  imageOf = node: listToAttrs (map (a: { name = a; value = node.${a}; }) imageAttrs);

  # A value that can stand for a file: a path, a string, or a derivation.
  isPathLike = v: isPath v || isString v || isDerivation v;

  # How a node is given: an image the driver boots itself, a NixOS-style start
  # script, or a NixOS configuration (module) that needs nixpkgs.
  nodeKind =
    node:
    if isAttrs node && !(isDerivation node) && node ? kernel then
      "image"
    else if isAttrs node && !(isDerivation node) && node ? startScript then
      "startScript"
    else if isString node || isDerivation node then
      "startScript"
    else
      "nixos";

  # Calls f with the arguments it names (like callPackage); a function without
  # formals gets all of them.
  callWith =
    f: args:
    let
      formals = builtins.functionArgs f;
    in
    if formals == { } then f args else f (builtins.intersectAttrs formals args);

  # Modules may be given as a path to import, a function or an attribute set.
  loadModule = m: if isPath m || (isString m && substring 0 1 m == "/") then import m else m;

  # Strips the module-system wrappers nixpkgs' lib produces (mkDefault,
  # mkForce, mkOverride, mkIf, mkMerge, mkOrder) from one definition, giving
  # a list of { priority; value; } (priority: lower wins, plain = 100).
  unwrapDefinition =
    def:
    let
      go =
        prio: v:
        if isAttrs v && v ? _type then
          if v._type == "override" then
            go v.priority v.content
          else if v._type == "if" then
            (if v.condition then go prio v.content else [ ])
          else if v._type == "merge" then
            concatMap (go prio) v.contents
          else if v._type == "order" then
            go prio v.content
          else
            [ { priority = prio; value = v; } ]
        else
          [ { priority = prio; value = v; } ];
    in
    go 100 def;

  # Keeps the definitions with the best (lowest) priority.
  bestDefinitions =
    defs:
    let
      best = foldl' (m: d: if d.priority < m then d.priority else m) 1000000 defs;
    in
    filter (d: d.priority == best) defs;

  # "a, b and c"
  showList =
    list:
    let
      n = length list;
    in
    if n == 0 then
      "(none)"
    else if n == 1 then
      elemAt list 0
    else
      concatStringsSep ", " (genList (i: elemAt list i) (n - 1)) + " and " + elemAt list (n - 1);

  describeType =
    v:
    if isDerivation v then
      "a derivation"
    else if isFunction v then
      "a function"
    else if isList v then
      "a list"
    else
      "a ${typeOf v}";

  names = attrNames;
}
