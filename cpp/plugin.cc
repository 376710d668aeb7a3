// The C++ side of `builtins.vmTest`: registers the primop with Nix and
// converts values. No test logic lives here; that is `src/plugin/` (Rust),
// reached through the `cxx` bridge in `src/plugin/ffi.rs`.
//
// The call goes:
//   1. force the argument set; if `testScript` is a function, call it with
//      `{ nodes }` (the user's nodes, as given);
//   2. encode the arguments as tagged JSON (`encode` below), copying path
//      values into the store and keeping each string's context;
//   3. put the driver into the store (once per process, `driverStorePath`);
//   4. ask Rust (`plan_test`) to check everything and describe the
//      derivations; a Rust error becomes a Nix evaluation error at the call;
//   5. call Nix's own `derivation` for each (`.driver` first: the run reads
//      its script and nodes from it) and return the test's result with
//      `.driver` and `.driverInteractive` added.
//
// Nix's C++ API differs between versions: every difference is in
// `nix-compat.hh` (namespace `nix_compat`, `compat` here); this file has no
// `#if` of its own.
// The loader in `src/plugin/loader.rs` checks the running Nix's version
// before this code is loaded, then calls `nix_vmtest_glue_register`.

#include "nix-compat.hh"

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>

#include "rust/cxx.h"
#include "nix-vmtest/src/plugin/ffi.rs.h"

namespace {

namespace compat = nix_compat;
using json = nlohmann::json;
using compat::PosArg;
using nix::EvalState;
using nix::Value;

// How deep `encode` forces values: args → nodes → node → image attribute →
// list element. Anything deeper is not looked at (and not forced).
constexpr int maxDepth = 5;

json contextJson(const compat::Context & context)
{
    json ctx = json::array();
    for (auto & c : compat::contextStrings(context)) ctx.push_back(c);
    return ctx;
}

// Tagged JSON for a Nix value, read by `src/plugin/value.rs`.
json encode(EvalState & state, Value & v, PosArg pos, int depth)
{
    state.forceValue(v, pos);
    switch (v.type()) {
    case nix::nNull:
        return {{"t", "null"}};
    case nix::nBool:
        return {{"t", "bool"}, {"v", compat::boolean(v)}};
    case nix::nInt:
        return {{"t", "int"}, {"v", compat::integer(v)}};
    case nix::nFloat:
        return {{"t", "float"}, {"v", compat::fpoint(v)}};
    case nix::nString: {
        compat::Context context;
        auto s = compat::forceString(state, v, context, pos);
        return {{"t", "string"}, {"v", s}, {"ctx", contextJson(context)}};
    }
    case nix::nPath: {
        compat::Context context;
        auto [original, stored] = compat::copyPathToStore(state, v, context);
        return {{"t", "path"}, {"v", original}, {"store", stored}, {"ctx", contextJson(context)}};
    }
    case nix::nAttrs: {
        // Derivations and other things with an out path stand for that path.
        if (state.isDerivation(v) || compat::getAttr(v, compat::outPathSymbol(state))) {
            compat::Context context;
            std::string s = compat::coerceToString(state, pos, v, context, true);
            return {{"t", "drv"}, {"v", s}, {"ctx", contextJson(context)}};
        }
        json attrs = json::object();
        json positions = json::object();
        for (auto & attr : compat::attrs(v)) {
            auto name = compat::symbolName(state, attr.name);
            if (depth < maxDepth)
                attrs[name] = encode(state, *attr.value, pos, depth + 1);
            else
                attrs[name] = {{"t", "unforced"}};
            auto p = compat::attrPos(state, attr);
            if (!p.empty()) positions[name] = p;
        }
        return {{"t", "attrs"}, {"v", attrs}, {"pos", positions}};
    }
    case nix::nList: {
        json items = json::array();
        for (auto * item : compat::listItems(v)) {
            if (depth < maxDepth)
                items.push_back(encode(state, *item, pos, depth + 1));
            else
                items.push_back({{"t", "unforced"}});
        }
        return {{"t", "list"}, {"v", items}};
    }
    case nix::nFunction:
        return {{"t", "function"}};
    default:
        return {{"t", "other"}, {"v", nix::showType(v)}};
    }
}

compat::Context contextFrom(EvalState & state, const json & j)
{
    compat::Context context;
    if (j.contains("ctx"))
        for (auto & c : j["ctx"]) compat::addContext(state, context, c.get<std::string>());
    return context;
}

using Refs = std::map<std::string, Value *>;

// `{ "s": "...", "ctx": [...] }` (a string; with `"outOf": "driver"` it is
// prefixed by that derivation's out path, context included; `"subst"`
// below) or
// `{ "list": [ those... ] }` → a Nix value.
void decodeAttrValue(EvalState & state, const json & j, Value & v, const Refs & refs, PosArg pos)
{
    if (j.contains("list")) {
        std::vector<Value *> items;
        for (auto & item : j["list"]) {
            items.push_back(state.allocValue());
            decodeAttrValue(state, item, *items.back(), refs, pos);
        }
        compat::mkList(state, v, items);
        return;
    }
    auto context = contextFrom(state, j);
    std::string s = j["s"].get<std::string>();
    if (j.contains("outOf")) {
        Value * drv = refs.at(j["outOf"].get<std::string>());
        std::string out = compat::coerceToString(state, pos, *drv, context, false);
        s = out + s;
    }
    // `"subst": [[placeholder, ref]...]`: each placeholder becomes that
    // derivation's out path (a node's snapshot in the nodes JSON).
    if (j.contains("subst"))
        for (auto & pair : j["subst"]) {
            auto placeholder = pair[0].get<std::string>();
            Value * drv = refs.at(pair[1].get<std::string>());
            std::string out = compat::coerceToString(state, pos, *drv, context, false);
            for (size_t at = s.find(placeholder); at != std::string::npos;
                 at = s.find(placeholder, at + out.size()))
                s.replace(at, placeholder.size(), out);
        }
    compat::mkString(state, v, s, context);
}

// Calls Nix's `derivation` with the attributes Rust described.
Value * callDerivation(EvalState & state, const json & drv, PosArg pos, const Refs & refs)
{
    auto & attrs = drv["attrs"];
    auto bindings = state.buildBindings(attrs.size());
    for (auto & [key, value] : attrs.items()) {
        auto & slot = bindings.alloc(state.symbols.create(key));
        decodeAttrValue(state, value, slot, refs, pos);
    }
    auto arg = state.allocValue();
    arg->mkAttrs(bindings);
    auto & derivation = state.getBuiltin("derivation");
    state.forceValue(derivation, pos);
    auto result = state.allocValue();
    state.callFunction(derivation, *arg, *result, pos);
    compat::forceAttrs(state, *result, pos);
    return result;
}

// The store path of the driver (`bin/nixos-test-driver` + the Python
// client); the Rust side makes it the builder's context. Added once per
// process.
std::string driverStorePath(EvalState & state)
{
    static std::optional<std::string> cached;
    if (!cached) {
        auto prefix = json::parse(std::string(nix_vmtest::driver_prefix(state.store->storeDir)));
        auto path = prefix["path"].get<std::string>();
        if (prefix["inStore"].get<bool>()) {
            auto [storePath, rest] = state.store->toStorePath(path);
            state.store->ensurePath(storePath);
            cached = state.store->printStorePath(storePath);
        } else {
            // The staging directory goes, whether or not Nix could add it.
            struct Release {
                std::string path;
                ~Release() { nix_vmtest::release_prefix(path); }
            } release{path};
            cached = compat::addDirToStore(state, prefix["name"].get<std::string>(), path);
        }
    }
    return *cached;
}

void prim_vmTest(EvalState & state, PosArg pos, Value ** args, Value & v)
{
    compat::forceAttrs(state, *args[0], pos);
    Value & input = *args[0];

    // A testScript that is a function gets `{ nodes }`, as nixpkgs' tests do.
    auto sTestScript = state.symbols.create("testScript");
    auto sNodes = state.symbols.create("nodes");
    Value * argsValue = &input;
    auto script = compat::getAttr(input, sTestScript);
    if (script) {
        state.forceValue(*script->value, pos);
        if (script->value->isLambda() || script->value->isPrimOp() || script->value->isPrimOpApp()) {
            auto nodes = compat::getAttr(input, sNodes);
            auto fnArgs = state.buildBindings(1);
            if (nodes)
                fnArgs.insert(sNodes, nodes->value);
            else {
                auto empty = state.buildBindings(0);
                fnArgs.alloc(sNodes).mkAttrs(empty);
            }
            auto fnArg = state.allocValue();
            fnArg->mkAttrs(fnArgs);
            auto text = state.allocValue();
            state.callFunction(*script->value, *fnArg, *text, pos);

            auto copy = state.buildBindings(compat::attrs(input).size());
            for (auto & attr : compat::attrs(input))
                if (attr.name != sTestScript) copy.insert(attr);
            copy.insert(sTestScript, text, script->pos);
            argsValue = state.allocValue();
            argsValue->mkAttrs(copy);
        }
    }

    json encoded = encode(state, *argsValue, pos, 0);
    auto driver = driverStorePath(state);
    json drvs;
    try {
        drvs = json::parse(std::string(nix_vmtest::plan_test(
            encoded.dump(), driver, nix::hashPlaceholder("out"), state.store->storeDir, nix::settings.thisSystem.get())));
    } catch (rust::Error & e) {
        compat::throwEvalError(state, pos, e.what());
    }

    // The nodes name their snapshots' out paths; the run reads its script
    // and nodes from `.driver`'s output.
    Refs refs;
    auto & snapshotDrvs = drvs["snapshots"];
    auto snapshots = state.buildBindings(snapshotDrvs.size());
    for (auto & [node, drv] : snapshotDrvs.items()) {
        Value * snapshot = callDerivation(state, drv, pos, refs);
        refs["snapshot-" + node] = snapshot;
        snapshots.insert(state.symbols.create(node), snapshot);
    }
    Value * driverDrv = callDerivation(state, drvs["driver"], pos, refs);
    Value * interactiveDrv = callDerivation(state, drvs["driverInteractive"], pos, refs);
    refs["driver"] = driverDrv;
    Value * test = callDerivation(state, drvs["test"], pos, refs);

    auto result = state.buildBindings(compat::attrs(*test).size() + 3);
    for (auto & attr : compat::attrs(*test)) result.insert(attr);
    auto snapshotsValue = state.allocValue();
    snapshotsValue->mkAttrs(snapshots);
    result.insert(state.symbols.create("snapshots"), snapshotsValue);
    result.insert(state.symbols.create("driver"), driverDrv);
    result.insert(state.symbols.create("driverInteractive"), interactiveDrv);
    v.mkAttrs(result);
}

const char * const vmTestDoc = R"(
      Describes a NixOS-style VM test and returns the derivation that runs it
      (`vm-test-run-<name>`), built by nix-vmtest's driver:

      ```nix
      builtins.vmTest {
        name = "minimal-test";
        nodes.machine = ./run-machine-vm;   # or { kernel; initrd; disk ? null; memory; vlans; ... }
        testScript = ''
          machine.succeed("true")
        '';
      }
      ```

      Arguments: `name`, `nodes`, `testScript` (string or `{ nodes }: string`),
      and optionally `globalTimeout` (seconds), `requiredSystemFeatures`,
      `skipLint`, `vlans`, `snapshots` (true, false or `{ <node> = false; }`;
      an image node may say `snapshot = false;` itself). The result has
      `.driver`, `.driverInteractive` and `.snapshots.<node>` (each node's
      booted snapshot, `vm-snapshot-<name>-<node>`, which the run restores).
    )";

} // namespace

// Called once by the loader (src/plugin/loader.rs) after it has checked
// that the running Nix is the one this was built for: from
// `nix_plugin_entry` on Nix >= 2.22, while the plugin loads before that.
extern "C" void nix_vmtest_glue_register()
{
    compat::registerPrimOp("__vmTest", {"args"}, vmTestDoc, prim_vmTest);
}
