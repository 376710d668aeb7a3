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
// Nix's C++ API differs between versions; `build.rs` defines
// NIX_VERSION_MAJOR/MINOR from pkg-config for the `#if`s here.

#if NIX_VERSION_MAJOR > 2 || (NIX_VERSION_MAJOR == 2 && NIX_VERSION_MINOR >= 28)
#include <nix/expr/eval.hh>
#include <nix/expr/primops.hh>
#include <nix/store/derivations.hh>
#include <nix/store/store-api.hh>
#include <nix/store/globals.hh>
#else
#include <nix/config.h>
#include <nix/eval.hh>
#include <nix/eval-inline.hh>
#include <nix/primops.hh>
#include <nix/derivations.hh>
#include <nix/store-api.hh>
#include <nix/globals.hh>
#endif

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>

#include "rust/cxx.h"
#include "nix-vmtest/src/plugin/ffi.rs.h"

#if NIX_VERSION_MAJOR > 2 || (NIX_VERSION_MAJOR == 2 && NIX_VERSION_MINOR >= 10)
#define NIX_VMTEST_POSIDX 1
using PosArg = nix::PosIdx;
#else
using PosArg = const nix::Pos &;
#endif

namespace {

using json = nlohmann::json;
using nix::EvalState;
using nix::Value;

// How deep `encode` forces values: args → nodes → node → image attribute →
// list element. Anything deeper is not looked at (and not forced).
constexpr int maxDepth = 5;

std::string symbolName(EvalState & state, const nix::Symbol & sym)
{
#ifdef NIX_VMTEST_POSIDX
    return std::string(state.symbols[sym]);
#else
    (void) state;
    return std::string((const std::string &) sym);
#endif
}

std::string posString(EvalState & state, const nix::Attr & attr)
{
#ifdef NIX_VMTEST_POSIDX
    auto pos = state.positions[attr.pos];
    if (!pos) return "";
    std::ostringstream s;
    s << pos;
    return s.str();
#else
    (void) state;
    const nix::Pos & pos = *attr.pos;
    if (!pos) return "";
    return std::string((const std::string &) pos.file) + ":" + std::to_string(pos.line) + ":"
        + std::to_string(pos.column);
#endif
}

json contextJson(const nix::PathSet & context)
{
    json ctx = json::array();
    for (auto & c : context) ctx.push_back(c);
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
        return {{"t", "bool"}, {"v", v.boolean}};
    case nix::nInt:
        return {{"t", "int"}, {"v", v.integer}};
    case nix::nFloat:
        return {{"t", "float"}, {"v", v.fpoint}};
    case nix::nString: {
        nix::PathSet context;
        auto s = state.forceString(v, context, pos);
        return {{"t", "string"}, {"v", std::string(s)}, {"ctx", contextJson(context)}};
    }
    case nix::nPath: {
        nix::PathSet context;
        std::string original = v.path;
        auto stored = state.copyPathToStore(context, original);
        return {{"t", "path"}, {"v", original}, {"store", stored}, {"ctx", contextJson(context)}};
    }
    case nix::nAttrs: {
        // Derivations and other things with an out path stand for that path.
        if (state.isDerivation(v) || v.attrs->find(state.sOutPath) != v.attrs->end()) {
            nix::PathSet context;
            std::string s = state.coerceToString(pos, v, context, false, true).toOwned();
            return {{"t", "drv"}, {"v", s}, {"ctx", contextJson(context)}};
        }
        json attrs = json::object();
        json positions = json::object();
        for (auto & attr : *v.attrs) {
            auto name = symbolName(state, attr.name);
            if (depth < maxDepth)
                attrs[name] = encode(state, *attr.value, pos, depth + 1);
            else
                attrs[name] = {{"t", "unforced"}};
            auto p = posString(state, attr);
            if (!p.empty()) positions[name] = p;
        }
        return {{"t", "attrs"}, {"v", attrs}, {"pos", positions}};
    }
    case nix::nList: {
        json items = json::array();
        for (size_t i = 0; i < v.listSize(); ++i) {
            if (depth < maxDepth)
                items.push_back(encode(state, *v.listElems()[i], pos, depth + 1));
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

nix::PathSet contextFrom(const json & j)
{
    nix::PathSet context;
    if (j.contains("ctx"))
        for (auto & c : j["ctx"]) context.insert(c.get<std::string>());
    return context;
}

using Refs = std::map<std::string, Value *>;

// `{ "s": "...", "ctx": [...] }` (a string; with `"outOf": "driver"` it is
// prefixed by that derivation's out path, context included) or
// `{ "list": [ those... ] }` → a Nix value.
void decodeAttrValue(EvalState & state, const json & j, Value & v, const Refs & refs, PosArg pos)
{
    if (j.contains("list")) {
        auto & items = j["list"];
        state.mkList(v, items.size());
        for (size_t i = 0; i < items.size(); ++i) {
            auto item = state.allocValue();
            decodeAttrValue(state, items[i], *item, refs, pos);
            v.listElems()[i] = item;
        }
        return;
    }
    auto context = contextFrom(j);
    std::string s = j["s"].get<std::string>();
    if (j.contains("outOf")) {
        Value * drv = refs.at(j["outOf"].get<std::string>());
        std::string out = state.coerceToString(pos, *drv, context, false, false).toOwned();
        s = out + s;
    }
    v.mkString(s, context);
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
    state.forceAttrs(*result, pos);
    return result;
}

// The store path of the driver (`bin/nixos-test-driver` + the Python
// client), with its context. Added once per process.
std::pair<std::string, nix::PathSet> driverStorePath(EvalState & state)
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
            auto storePath = state.store->addToStore(
                prefix["name"].get<std::string>(), path, nix::FileIngestionMethod::Recursive,
                nix::htSHA256, nix::defaultPathFilter, nix::NoRepair);
            cached = state.store->printStorePath(storePath);
        }
    }
    return {*cached, nix::PathSet{*cached}};
}

[[noreturn]] void fail(PosArg pos, const std::string & message)
{
#ifdef NIX_VMTEST_POSIDX
    throw nix::EvalError({.msg = nix::hintfmt("%s", nix::normaltxt(message))});
#else
    throw nix::EvalError({.msg = nix::hintfmt("%s", nix::normaltxt(message)), .errPos = pos});
#endif
}

void prim_vmTest(EvalState & state, PosArg pos, Value ** args, Value & v)
{
    state.forceAttrs(*args[0], pos);
    Value & input = *args[0];

    // A testScript that is a function gets `{ nodes }`, as nixpkgs' tests do.
    auto sTestScript = state.symbols.create("testScript");
    auto sNodes = state.symbols.create("nodes");
    Value * argsValue = &input;
    auto script = input.attrs->find(sTestScript);
    if (script != input.attrs->end()) {
        state.forceValue(*script->value, pos);
        if (script->value->isLambda() || script->value->isPrimOp() || script->value->isPrimOpApp()) {
            auto nodes = input.attrs->find(sNodes);
            auto fnArgs = state.buildBindings(1);
            if (nodes != input.attrs->end())
                fnArgs.insert(sNodes, nodes->value);
            else {
                auto empty = state.buildBindings(0);
                fnArgs.alloc(sNodes).mkAttrs(empty);
            }
            auto fnArg = state.allocValue();
            fnArg->mkAttrs(fnArgs);
            auto text = state.allocValue();
            state.callFunction(*script->value, *fnArg, *text, pos);

            auto copy = state.buildBindings(input.attrs->size());
            for (auto & attr : *input.attrs)
                if (attr.name != sTestScript) copy.insert(attr);
            copy.insert(sTestScript, text, script->pos);
            argsValue = state.allocValue();
            argsValue->mkAttrs(copy);
        }
    }

    json encoded = encode(state, *argsValue, pos, 0);
    auto [driver, driverContext] = driverStorePath(state);
    json drvs;
    try {
        drvs = json::parse(std::string(nix_vmtest::plan_test(
            encoded.dump(), driver, nix::hashPlaceholder("out"), state.store->storeDir, nix::settings.thisSystem.get())));
    } catch (rust::Error & e) {
        fail(pos, e.what());
    }

    // The run reads its script and nodes from `.driver`'s output.
    Refs refs;
    Value * driverDrv = callDerivation(state, drvs["driver"], pos, refs);
    Value * interactiveDrv = callDerivation(state, drvs["driverInteractive"], pos, refs);
    refs["driver"] = driverDrv;
    Value * test = callDerivation(state, drvs["test"], pos, refs);

    auto result = state.buildBindings(test->attrs->size() + 2);
    for (auto & attr : *test->attrs) result.insert(attr);
    result.insert(state.symbols.create("driver"), driverDrv);
    result.insert(state.symbols.create("driverInteractive"), interactiveDrv);
    v.mkAttrs(result);
}

nix::RegisterPrimOp registerVmTest({
    .name = "__vmTest",
    .args = {"args"},
    .arity = 1,
    .doc = R"(
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
      `skipLint`, `vlans`. The result has `.driver` and `.driverInteractive`.
    )",
    .fun = prim_vmTest,
});

} // namespace
