#!/usr/bin/env bash
# Tests of the Nix library (nix/), the examples and flake.nix that need no
# nixpkgs: everything parses; the evaluator without nixpkgs (option names,
# defaults and errors; image nodes evaluate and build through runTest and
# nixosTest, with a stand-in driver). With nixpkgs, tests are nixpkgs' own
# plus nix/test-module.nix: tests/nixpkgs-eval checks that against a real tree.
#
#   tests/nix-lib/run.sh            the checks above
#   NIX_VMTEST_PLUGIN=/path/libnix_vmtest.so tests/nix-lib/run.sh
#                                   also: through builtins.vmTest (instantiate only;
#                                   the plugin's driver: NIX_VMTEST_PREFIX, else
#                                   NIX_VMTEST_DRIVER or target/{release,debug})
#   NIX_VMTEST_E2E=1 tests/nix-lib/run.sh
#                                   also: nix-build the Debian examples for real,
#                                   without the plugin (needs the guests:
#                                   NIX_VMTEST_GUESTS, default tests/guests/build.sh
#                                   --print-dir; and a driver: NIX_VMTEST_DRIVER,
#                                   default target/release/nixos-test-driver)
#
# Prints "N passed, N failed" last; exits 1 if anything failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

export NIX_PATH=
# The nix options every call uses: no binary cache, no build users (root,
# single-user), no plugin unless a check loads it.
nixopts=(--option substituters '' --option build-users-group '' --option plugin-files '')

pass=0
failed=0
failures=()

ok() {
    pass=$((pass + 1))
    echo "ok   $1"
}
bad() {
    failed=$((failed + 1))
    failures+=("$1")
    echo "FAIL $1"
    [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/     /' | head -n 20
}

quiet() { grep -v "build-users-group' does not exist" || true; }

# eval NAME EXPR EXPECTED_JSON: the expression (with `f` = fixtures.nix in
# scope) evaluates strictly to EXPECTED_JSON.
eval_is() {
    local name=$1 expr=$2 want=$3 got
    if got=$(nix-instantiate "${nixopts[@]}" --read-write-mode --eval --strict --json \
        -E "let f = import $here/fixtures.nix { }; in $expr" 2>&1); then
        got=$(printf '%s\n' "$got" | quiet | tail -n 1)
        if python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) == json.loads(sys.argv[2]) else 1)' "$got" "$want" 2>/dev/null; then
            ok "$name"
        else
            bad "$name" "want: $want"$'\n'"got:  $got"
        fi
    else
        bad "$name" "$(printf '%s\n' "$got" | quiet)"
    fi
}

# eval_fails NAME EXPR SUBSTRING: evaluation fails, and the error says SUBSTRING.
eval_fails() {
    local name=$1 expr=$2 want=$3 got
    if got=$(nix-instantiate "${nixopts[@]}" --read-write-mode --eval --strict --json \
        -E "let f = import $here/fixtures.nix { }; in $expr" 2>&1); then
        bad "$name" "evaluated, but should have failed with: $want"$'\n'"got: $got"
    elif printf '%s' "$got" | grep -qF -- "$want"; then
        ok "$name"
    else
        bad "$name" "want an error containing: $want"$'\n'"got: $(printf '%s\n' "$got" | quiet)"
    fi
}

echo "== every .nix file parses"
while IFS= read -r -d '' f; do
    if out=$(nix-instantiate "${nixopts[@]}" --parse "$f" 2>&1 >/dev/null | quiet) && [ -z "$out" ]; then
        ok "parse ${f#./}"
    else
        bad "parse ${f#./}" "$out"
    fi
done < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' -print0 | sort -z)

echo "== option names and defaults"
eval_is "option names are nixpkgs' (plus nix-vmtest's own)" \
    'builtins.attrNames f.vmtest.options' \
    '["defaults","enableOCR","extraBaseModules","extraDriverArgs","extraPythonPackages","globalTimeout","hostPkgs","imageNodes","interactive","meta","name","node.pkgs","node.pkgsReadOnly","node.specialArgs","nodeDefaults","nodes","passthru","qemu.package","requiredSystemFeatures","skipLint","skipTypeCheck","snapshots","testScript"]'
eval_is "defaults of a test that sets only name, nodes, testScript" \
    'let c = (f.vmtest.runTest (f.twoNodes { })).config; in { inherit (c) globalTimeout skipLint skipTypeCheck enableOCR passthru meta requiredSystemFeatures extraDriverArgs defaults interactive; py = c.extraPythonPackages { }; }' \
    '{"globalTimeout":3600,"skipLint":false,"skipTypeCheck":false,"enableOCR":false,"passthru":{},"meta":{},"requiredSystemFeatures":["nixos-test","kvm"],"extraDriverArgs":[],"defaults":[],"interactive":[],"py":[]}'
eval_is "the result is vm-test-run-<name>, needing nixos-test and kvm" \
    'let t = f.vmtest.runTest (f.twoNodes { }); in { inherit (t) name type requiredSystemFeatures; }' \
    '{"name":"vm-test-run-demo","type":"derivation","requiredSystemFeatures":["nixos-test","kvm"]}'
eval_is "globalTimeout and requiredSystemFeatures are passed on" \
    'let t = f.vmtest.runTest (f.twoNodes { globalTimeout = 120; requiredSystemFeatures = [ "nixos-test" ]; }); in { inherit (t) globalTimeout requiredSystemFeatures; }' \
    '{"globalTimeout":"120","requiredSystemFeatures":["nixos-test"]}'
eval_is "nixosTest: name defaults to unnamed, as makeTest's" \
    '(f.vmtest.nixosTest { nodes.m = f.image; testScript = ""; }).name' '"vm-test-run-unnamed"'
eval_is "nixosTest: legacy machine = ... is nodes.machine" \
    'builtins.attrNames (f.vmtest.nixosTest { machine = f.image; testScript = "machine.succeed(\"true\")"; }).nodes' '["machine"]'
eval_is "nixosTest: a function gets pkgs and lib (null without nixpkgs)" \
    '(f.vmtest.nixosTest ({ pkgs, lib, ... }: { name = if pkgs == null && lib == null then "fn" else "x"; nodes.m = f.image; testScript = ""; })).name' '"vm-test-run-fn"'
eval_is "runTest: a module function gets config" \
    '(f.vmtest.runTest ({ config, ... }: f.twoNodes { meta.description = "t ${config.name}"; })).meta.description' '"t demo"'
eval_is "runTest: a module path is imported" \
    "(f.vmtest.runTest $here/test-module.nix).name" '"vm-test-run-from-file"'
eval_is "testScript function gets nodes (addresses, in name order)" \
    '(f.vmtest.runTest (f.twoNodes { testScript = { nodes, ... }: "${nodes.client.networking.primaryIPAddress} ${nodes.server.ipAddresses."2"} ${nodes.server.config.networking.hostName} ${toString nodes.server.nodeNumber}"; })).config.testScript' \
    '"192.168.1.1 192.168.2.2 server 2"'
eval_is "image node defaults (memory 256, cpus 1, vlans [1], no disk)" \
    'let n = (f.vmtest.runTest (f.twoNodes { })).nodes.client; in { inherit (n) memory cpus vlans disk kernelParams qemuFlags kind; }' \
    '{"memory":256,"cpus":1,"vlans":[1],"disk":null,"kernelParams":"","qemuFlags":[],"kind":"image"}'
eval_is "MACs and addresses as NixOS tests have them (hex MAC)" \
    'let a = f.vmtest.addressing; in [ (a.macAddress 10 18) (a.ipAddress 10 18) (a.ipv6Address 3 4) ]' \
    '["52:54:00:12:0a:12","192.168.10.18","2001:db8:3::4"]'
eval_is "VLANs of the test: the union of the nodes' VLANs" \
    '(f.vmtest.runTest (f.twoNodes { })).config.vlans' '[1,2]'
eval_is "start-script nodes: a string, or { startScript; vlans; }" \
    'let t = f.vmtest.runTest { name = "s"; nodes.a = "/nix/store/x-run-a-vm"; nodes.b = { startScript = "/nix/store/y-run-b-vm"; vlans = [ 3 ]; }; testScript = ""; }; in { v = t.config.vlans; k = t.nodes.b.kind; m = map (m: m.startScript) (f.vmtest.evalTest { name = "s"; nodes.a = "/nix/store/x-run-a-vm"; nodes.b = { startScript = "/nix/store/y-run-b-vm"; vlans = [ 3 ]; }; testScript = ""; }).spec.machines; }' \
    '{"v":[1,3],"k":"startScript","m":["/nix/store/x-run-a-vm","/nix/store/y-run-b-vm"]}'
eval_is "imports: modules merge (nodes by name, passthru and meta by attribute)" \
    'let t = f.vmtest.runTest { imports = [ { nodes.a = f.image; passthru.x = 1; meta.a = 1; } { nodes.b = f.image; passthru.y = 2; } ]; name = "i"; testScript = ""; meta.b = 2; }; in { n = builtins.attrNames t.nodes; inherit (t) x y; m = { inherit (t.meta) a b; }; }' \
    '{"n":["a","b"],"x":1,"y":2,"m":{"a":1,"b":2}}'
eval_is "priorities: mkForce beats a plain value, which beats mkDefault" \
    'let mk = p: v: { _type = "override"; priority = p; content = v; }; t = f.vmtest.runTest { imports = [ { globalTimeout = mk 1000 1; } { globalTimeout = 2; } { skipLint = mk 50 true; } ]; skipLint = false; name = "p"; nodes = { }; testScript = ""; }; in { inherit (t.config) globalTimeout skipLint; }' \
    '{"globalTimeout":2,"skipLint":true}'
eval_is "passthru lands on the result, meta.timeout follows globalTimeout" \
    'let t = f.vmtest.runTest (f.twoNodes { passthru.hello = "x"; globalTimeout = 99; }); in { inherit (t) hello; inherit (t.meta) timeout; }' \
    '{"hello":"x","timeout":99}'
eval_is "result has .driver, .driverInteractive and .nodes" \
    'let t = f.vmtest.runTest (f.twoNodes { }); in { d = t.driver.name; i = t.driverInteractive.name; n = builtins.attrNames t.nodes; b = t.vmtestBackend; }' \
    '{"d":"nixos-test-driver-demo","i":"nixos-test-driver-demo-interactive","n":["client","server"],"b":"library"}'
eval_is "interactive: merged over the test for .driverInteractive only" \
    'let t = f.vmtest.runTest (f.twoNodes { interactive.globalTimeout = 7; }); in { same = t.driver.drvPath == (f.vmtest.runTest (f.twoNodes { })).driver.drvPath; differs = t.driverInteractive.drvPath != (f.vmtest.runTest (f.twoNodes { })).driverInteractive.drvPath; }' \
    '{"same":true,"differs":true}'
eval_is "imageNodes (as with nixpkgs) are image nodes beside nodes" \
    'let t = f.vmtest.runTest { name = "i"; nodes.a = f.image; imageNodes.b = f.image // { vlans = [ 2 ]; }; testScript = ""; }; in { n = builtins.attrNames t.nodes; k = t.nodes.b.kind; v = t.config.vlans; }' \
    '{"n":["a","b"],"k":"image","v":[1,2]}'
eval_is "the nodes JSON the driver gets (Contract 2)" \
    'let t = f.vmtest.runTest (f.twoNodes { nodes = { client = f.image; server = f.image // { disk = f.disk; memory = 512; kernelParams = [ "a" "b" ]; vlans = [ 2 ]; }; }; }); j = builtins.fromJSON (builtins.unsafeDiscardStringContext t.driver.nodesJson); strip = m: removeAttrs m [ "snapshot" ] // { image = removeAttrs m.image [ "kernel" "initrd" "disk" ]; }; in j // { machines = map strip j.machines; disks = map (m: m.image.disk != null) j.machines; }' \
    '{"vlans":[1,2],"machines":[{"name":"client","image":{"cpus":1,"kernelParams":"","memory":256,"qemuFlags":[],"vlans":[1]}},{"name":"server","image":{"cpus":1,"kernelParams":"a b","memory":512,"qemuFlags":[],"vlans":[2]}}],"disks":[false,true]}'

echo "== errors say what is wrong"
eval_fails "unknown option" '(f.vmtest.runTest (f.twoNodes { globalTimout = 1; })).drvPath' 'unknown test option `globalTimout`'
eval_fails "unknown nested option" '(f.vmtest.runTest (f.twoNodes { node.pkgz = 1; })).drvPath' 'unknown test option `node.pkgz`'
eval_fails "nixpkgs option nix-vmtest lacks" '(f.vmtest.runTest (f.twoNodes { containers = { }; })).drvPath' 'option `containers` (in the test module) is not supported'
eval_fails "runTest needs a name" '(f.vmtest.runTest { nodes = { }; testScript = ""; }).drvPath' 'the test has no `name`'
eval_fails "a test needs testScript" '(f.vmtest.runTest { name = "x"; nodes = { }; }).drvPath' 'the test has no `testScript`'
eval_fails "type of globalTimeout" '(f.vmtest.runTest (f.twoNodes { globalTimeout = "60"; })).drvPath' 'option `globalTimeout` must be an integer'
eval_fails "conflicting definitions" '(f.vmtest.runTest { imports = [ { globalTimeout = 1; } ]; globalTimeout = 2; name = "c"; nodes = { }; testScript = ""; }).drvPath' 'option `globalTimeout` is defined more than once'
eval_fails "testScript function must return a string" '(f.vmtest.runTest (f.twoNodes { testScript = { nodes }: 1; })).drvPath' 'must return a string'
eval_fails "image node: unknown attribute" '(f.vmtest.runTest (f.twoNodes { nodes.a = f.image // { memroy = 1; }; })).drvPath' 'image node `a` has unknown attribute memroy'
eval_fails "image node: initrd missing" '(f.vmtest.runTest (f.twoNodes { nodes.a = { kernel = f.kernel; }; })).drvPath' 'image node `a` has a kernel but no initrd'
eval_fails "image node: bad VLAN" '(f.vmtest.runTest (f.twoNodes { nodes.a = f.image // { vlans = [ 0 ]; }; })).drvPath' 'vlans must be a list of VLAN numbers 1..255'
eval_fails "a name in nodes and imageNodes" '(f.vmtest.runTest { name = "c"; nodes.a = f.image; imageNodes.a = f.image; testScript = ""; }).drvPath' '`a` is in both `nodes` and `imageNodes`'
eval_fails "imageNodes: an image needs a kernel" '(f.vmtest.runTest { name = "k"; imageNodes.a = { initrd = f.initrd; }; testScript = ""; }).drvPath' 'image node `a` has no kernel'
eval_fails "a node given two ways" '(f.vmtest.runTest { imports = [ { nodes.a = f.image; } ]; nodes.a = { services.x = 1; }; name = "m"; testScript = ""; }).drvPath' 'node `a` is defined as nixos and image at once'
eval_fails "NixOS node without nixpkgs" '(f.vmtest.runTest { name = "n"; nodes.machine = { pkgs, ... }: { }; testScript = ""; }).drvPath' 'node `machine` is a NixOS configuration; evaluating it needs nixpkgs'
eval_fails "no plugin and no driver" "(let v = import $root/nix { useBuiltin = false; }; in (v.runTest (f.twoNodes { })).drvPath)" 'building a test without the plugin needs the driver'

echo "== booted snapshots (library)"
# One vm-snapshot-<name>-<node> per node: its nodes JSON has the node and
# the others as peers, no script; the run's nodes name $snapshot/<node>.
eval_is "each node gets a snapshot derivation" '(let t = f.vmtest.runTest (f.twoNodes { }); in builtins.mapAttrs (n: s: s.name) t.snapshots)' '{"client":"vm-snapshot-demo-client","server":"vm-snapshot-demo-server"}'
eval_is "a snapshot boots its node, the others are peers" '(let s = (f.vmtest.runTest (f.twoNodes { })).snapshots.client; j = builtins.fromJSON (builtins.unsafeDiscardStringContext s.nodesJson); in { args = builtins.head s.args; inherit (j) vlans; peer = (builtins.elemAt j.machines 1); client = (builtins.head j.machines).image.memory; script = s ? testScript; })' '{"args":"--save-snapshots","client":256,"peer":{"name":"server","peer":{"vlans":[1,2]}},"script":false,"vlans":[1,2]}'
eval_is "the run's nodes name their snapshots" '(let t = f.vmtest.runTest (f.twoNodes { }); j = builtins.fromJSON (builtins.unsafeDiscardStringContext t.driver.nodesJson); in map (m: m.snapshot == builtins.unsafeDiscardStringContext "${t.snapshots.${m.name}}/${m.name}") j.machines)' '[true,true]'
eval_is "the script does not change a snapshot, the node does" '(let p = x: (f.vmtest.runTest (f.twoNodes x)).snapshots.client.outPath; in [ (p { } == p { testScript = "pass"; }) (p { } == p { nodes.client = f.image // { memory = 300; }; nodes.server = f.image; }) ])' '[true,false]'
eval_is "snapshots = false: none" '(let t = f.vmtest.runTest (f.twoNodes { snapshots = false; }); in [ t.snapshots (builtins.any (m: m ? snapshot) (builtins.fromJSON (builtins.unsafeDiscardStringContext t.driver.nodesJson)).machines) ])' '[{},false]'
eval_is "snapshots per node, and a node's own" '(builtins.attrNames (f.vmtest.runTest (f.twoNodes { snapshots.client = false; })).snapshots ++ builtins.attrNames (f.vmtest.runTest (f.twoNodes { nodes = { client = f.image // { snapshot = false; }; server = f.image; }; })).snapshots)' '["server","server"]'
eval_fails "snapshots: a node that is not there" '(f.vmtest.runTest (f.twoNodes { snapshots.clinet = false; })).drvPath' 'snapshots.clinet: there is no node `clinet` (the nodes are client, server)'
eval_fails "snapshots: not a boolean" '(f.vmtest.runTest (f.twoNodes { snapshots = "no"; })).drvPath' 'option `snapshots` must be true, false or an attribute set { <node> = false; }'
eval_fails "a node's snapshot: not a boolean" '(f.vmtest.runTest (f.twoNodes { nodes.client = f.image // { snapshot = 1; }; })).drvPath' 'snapshot must be true or false'
eval_fails "snapshots given twice, differently" '(f.vmtest.runTest (f.twoNodes { snapshots.client = true; nodes.client = f.image // { snapshot = false; }; })).drvPath' 'give it in one place'

echo "== flake.nix output names (with a stand-in for nixpkgs)"
eval_is "flake outputs" \
    "let fl = import $root/flake.nix; out = fl.outputs { self = out; nixpkgs = { lib = import $here/fake-nixpkgs/lib; outPath = $here/fake-nixpkgs; }; }; in { top = builtins.attrNames out; systems = builtins.attrNames out.packages; lib = builtins.attrNames out.lib; overlay = builtins.isFunction out.overlays.default; }" \
    '{"top":["checks","devShells","lib","nixosModules","overlays","packages"],"systems":["aarch64-linux","x86_64-linux"],"lib":["addressing","evalTest","forNix","forPkgs","haveBuiltin","makeTest","nixosModule","nixosTest","options","overlay","runNixOSTest","runTest","testModule"],"overlay":true}'
# The flake's lib runs tests through nixpkgs' framework (its nixpkgs input):
# tests/nixpkgs-eval checks lib.runTest against a real tree.

echo "== image-node tests build through runTest and nixosTest (stand-in driver)"
build_check() {
    local name=$1 expr=$2 file=$3 want=$4 out
    if out=$(nix-build "${nixopts[@]}" --option sandbox true \
        --option extra-sandbox-paths "/bin /usr /lib /lib64" --no-out-link \
        -E "let f = import $here/fixtures.nix { }; in $expr" 2>&1); then
        out=$(printf '%s\n' "$out" | quiet | tail -n 1)
        if [ "$(cat "$out/$file" 2>/dev/null)" = "$want" ]; then
            ok "$name"
        else
            bad "$name" "$file: want $want, got $(cat "$out/$file" 2>&1)"
        fi
    else
        bad "$name" "$(printf '%s\n' "$out" | quiet | tail -n 20)"
    fi
}
build_check "runTest builds; the driver gets the script" \
    'f.vmtest.runTest (f.twoNodes { testScript = "print(42)"; })' test-script 'print(42)'
build_check "nixosTest builds; the driver gets the timeout" \
    'f.vmtest.nixosTest { name = "nt"; machine = f.image; testScript = ""; globalTimeout = 77; }' global-timeout '77'
build_check "the driver gets the VLANs (in the nodes JSON)" \
    'f.vmtest.runTest (f.twoNodes { })' nodes.json \
    "$(nix-instantiate "${nixopts[@]}" --eval --strict --json -E "let f = import $here/fixtures.nix { }; in (f.vmtest.runTest (f.twoNodes { })).driver.nodesJson" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin))')"
build_check "the driver gets -o, --junit-xml, --log-file and extraDriverArgs" \
    'f.vmtest.runTest (f.twoNodes { name = "args"; extraDriverArgs = [ "--accel" "tcg" ]; })' args \
    "$(out=$(nix-instantiate "${nixopts[@]}" --eval --json -E "let f = import $here/fixtures.nix { }; in (f.vmtest.runTest (f.twoNodes { name = \"args\"; extraDriverArgs = [ \"--accel\" \"tcg\" ]; })).outPath" 2>/dev/null | tr -d '"')
      drv=$(nix-instantiate "${nixopts[@]}" --eval --json -E "let f = import $here/fixtures.nix { }; in (f.vmtest.runTest (f.twoNodes { name = \"args\"; extraDriverArgs = [ \"--accel\" \"tcg\" ]; })).driver.outPath" 2>/dev/null | tr -d '"')
      printf -- '-o\n%s\n--junit-xml\n%s/junit.xml\n--global-timeout\n3600\n--nodes-json\n%s/share/nix-vmtest/nodes.json\n%s/share/nix-vmtest/test-script\n--log-file\n%s/log\n--accel\ntcg' "$out" "$out" "$drv" "$drv" "$out")"
build_check ".driver checks the script (names too), and has extraDriverArgs" \
    'let t = f.vmtest.runTest (f.twoNodes { name = "ck"; extraDriverArgs = [ "--accel" "tcg" ]; }); in t.driver' check 'lint'
build_check "skipLint: .driver checks the syntax only" \
    'let t = f.vmtest.runTest (f.twoNodes { name = "sl"; skipLint = true; }); in t.driverInteractive' check 'syntax'

# The real driver's `.driver` build checks the script as the plugin does at
# evaluation: a misspelt machine fails it, with the line; skipLint lets it by.
real_driver=${NIX_VMTEST_DRIVER:-$root/target/release/nixos-test-driver}
if [ -x "$real_driver" ]; then
    # The driver as its package lays it out (the check needs its Python
    # client), copied: the sandbox has no way to the source tree.
    real_prefix=$(mktemp -d)
    trap 'rm -rf "$real_prefix"' EXIT
    mkdir -p "$real_prefix/bin" "$real_prefix/share/nix-vmtest"
    cp "$real_driver" "$real_prefix/bin/"
    cp -r "$root/python" "$real_prefix/share/nix-vmtest/python"
    find "$real_prefix" -name __pycache__ -prune -exec rm -rf {} +
    driver_build() {
        nix-build "${nixopts[@]}" --option sandbox true \
            --option extra-sandbox-paths "/bin /usr /lib /lib64" --no-out-link \
            -E "let f = import $here/fixtures.nix { driver = $real_prefix; }; in (f.vmtest.runTest (f.twoNodes { $1 })).driver" 2>&1
    }
    # `.driver` names the nodes' snapshots, so building it would build
    # them first: without them here (the fixture's nodes do not boot).
    out=$(driver_build 'name = "typo"; snapshots = false; testScript = "start_all()\nservr.succeed(\"true\")\n";')
    if [ $? -ne 0 ] && printf '%s' "$out" | grep -q "testScript line 2: name 'servr' is not defined"; then
        ok "with the real driver, .driver fails on a misspelt machine (line 2)"
    else
        bad "with the real driver, .driver fails on a misspelt machine (line 2)" "$(printf '%s\n' "$out" | quiet | tail -n 8)"
    fi
    if out=$(driver_build 'name = "typo"; snapshots = false; skipLint = true; testScript = "start_all()\nservr.succeed(\"true\")\n";') \
        && [ -x "$(printf '%s\n' "$out" | tail -n 1)/bin/nixos-test-driver" ]; then
        ok "with skipLint, .driver builds despite the name"
    else
        bad "with skipLint, .driver builds despite the name" "$(printf '%s\n' "$out" | quiet | tail -n 8)"
    fi
else
    bad "the real driver's .driver check" "no driver at $real_driver: cargo build --release first"
fi

plugin=${NIX_VMTEST_PLUGIN:-}
if [ -n "$plugin" ] && [ -f "$plugin" ]; then
    echo "== through builtins.vmTest ($plugin)"
    popts=(--option substituters '' --option build-users-group '' --option plugin-files "$plugin")
    # The plugin looks for bin/nixos-test-driver and share/nix-vmtest/python
    # beside itself, or in $NIX_VMTEST_PREFIX: lay one out from this tree.
    if [ -z "${NIX_VMTEST_PREFIX:-}" ]; then
        drv_bin=${NIX_VMTEST_DRIVER:-}
        for c in "$root/target/release/nixos-test-driver" "$root/target/debug/nixos-test-driver"; do
            [ -z "$drv_bin" ] && [ -x "$c" ] && drv_bin=$c
        done
        if [ -n "$drv_bin" ]; then
            prefix=$(mktemp -d)
            trap 'rm -rf "$prefix" "${real_prefix:-}"' EXIT
            mkdir -p "$prefix/bin" "$prefix/share/nix-vmtest"
            ln -s "$drv_bin" "$prefix/bin/nixos-test-driver"
            ln -s "$root/python" "$prefix/share/nix-vmtest/python"
            export NIX_VMTEST_PREFIX=$prefix
        fi
    fi
    if out=$(nix-instantiate "${popts[@]}" --read-write-mode --eval --strict --json \
        -E "let f = import $here/fixtures.nix { useBuiltin = true; }; t = f.vmtest.runTest (f.twoNodes { }); in { b = t.vmtestBackend; n = t.name; d = t.driver.name; }" 2>&1); then
        out=$(printf '%s\n' "$out" | quiet | tail -n 1)
        if [ "$out" = '{"b":"builtin","d":"nixos-test-driver-demo","n":"vm-test-run-demo"}' ]; then
            ok "runTest uses builtins.vmTest when the plugin is loaded"
        else
            bad "runTest uses builtins.vmTest when the plugin is loaded" "$out"
        fi
    else
        bad "runTest uses builtins.vmTest when the plugin is loaded" "$(printf '%s\n' "$out" | quiet)"
    fi
    for t in runTest nixosTest; do
        if out=$(nix-instantiate "${popts[@]}" \
            -E "let f = import $here/fixtures.nix { useBuiltin = true; }; in f.vmtest.$t (f.twoNodes { name = \"plugin-$t\"; })" 2>&1) \
            && printf '%s\n' "$out" | grep -q 'vm-test-run-plugin-.*\.drv$'; then
            ok "$t instantiates to a .drv through the plugin"
        else
            bad "$t instantiates to a .drv through the plugin" "$(printf '%s\n' "$out" | quiet)"
        fi
    done
    # The run's PATH: QEMU and python3 of the test's nixpkgs, or the host's.
    run_path() {
        local drv
        drv=$(nix-instantiate "${popts[@]}" -E "let f = import $here/fixtures.nix { useBuiltin = true; }; in f.vmtest.runTest (f.twoNodes { $1 })" 2>/dev/null | tail -n 1) \
            && grep -o '("PATH","[^"]*")' "$drv"
    }
    p=$(run_path "hostPkgs = import $here/fake-nixpkgs { };")
    if printf '%s' "$p" | grep -q -- '-fake-qemu_test/bin:/nix/store/[a-z0-9]*-fake-python3/bin"'; then
        ok "with nixpkgs, the plugin's run takes QEMU and python3 from it (hostPath)"
    else
        bad "with nixpkgs, the plugin's run takes QEMU and python3 from it (hostPath)" "PATH entry: ${p:-none}"
    fi
    p=$(run_path '')
    if [ "$p" = '("PATH","/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")' ]; then
        ok "without nixpkgs, the plugin's run uses the host's programs"
    else
        bad "without nixpkgs, the plugin's run uses the host's programs" "PATH entry: ${p:-none}"
    fi
    # One test, instantiated through the plugin and through the library:
    # the same derivations, attribute for attribute (store paths stand as
    # their names), but the one documented difference (vmTestCheck).
    same_shape() {
        local args=$1 lib plug
        # The library with the plugin's driver, so that both run one binary.
        lib=$(nix-instantiate "${nixopts[@]}" -E "let f = import $here/fixtures.nix { driver = $NIX_VMTEST_PREFIX; }; in f.vmtest.runTest (f.twoNodes { $args })" 2>/dev/null | tail -n 1)
        plug=$(nix-instantiate "${popts[@]}" -E "let f = import $here/fixtures.nix { useBuiltin = true; }; in f.vmtest.runTest (f.twoNodes { $args })" 2>/dev/null | tail -n 1)
        if [ -z "$lib" ] || [ -z "$plug" ]; then
            echo "could not instantiate: library '$lib', plugin '$plug'"
            return 1
        fi
        python3 "$here/same-shape.py" "$lib" "$plug"
    }
    for args in '' 'extraDriverArgs = [ "--accel" "tcg" ]; skipLint = true; globalTimeout = 99; requiredSystemFeatures = [ ]; hostPkgs = import '"$here"'/fake-nixpkgs { };' \
        'snapshots = false;' 'snapshots = { client = false; };' \
        'nodes = { server = f.image // { vlans = [ 1 2 ]; snapshot = false; }; client = f.image // { disk = f.disk; }; };'; do
        if out=$(same_shape "$args" 2>&1); then
            ok "plugin and library make the same derivations ($(printf '%s' "$out" | tail -n 1))"
        else
            bad "plugin and library make the same derivations (${args:-defaults})" "$out"
        fi
    done
else
    echo "== builtins.vmTest: skipped (set NIX_VMTEST_PLUGIN to the plugin's .so)"
fi

if [ "${NIX_VMTEST_E2E:-}" = 1 ]; then
    echo "== Debian examples, for real"
    guests=${NIX_VMTEST_GUESTS:-$("$root/tests/guests/build.sh" --print-dir 2>/dev/null || true)}
    driver=${NIX_VMTEST_DRIVER:-$root/target/release/nixos-test-driver}
    if [ -z "$guests" ] || [ ! -x "$driver" ]; then
        bad "Debian examples" "need the guests (tests/guests/build.sh) and a driver ($driver)"
    else
        for ex in tiny minimal client-server; do
            if out=$(timeout 1500 nix-build "${nixopts[@]}" --option sandbox false --no-out-link \
                "$root/examples/debian/$ex.nix" --arg guests "$guests" --arg driver "$driver" 2>&1); then
                ok "examples/debian/$ex.nix passes"
            else
                bad "examples/debian/$ex.nix passes" "$(printf '%s\n' "$out" | quiet | tail -n 25)"
            fi
        done
    fi
fi

echo
if [ "$failed" -gt 0 ]; then
    echo "failed:"
    printf '  %s\n' "${failures[@]}"
fi
echo "$pass passed, $failed failed"
[ "$failed" -eq 0 ]
