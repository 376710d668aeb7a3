// Every difference between the Nix versions the plugin builds against, in
// one place: `plugin.cc` calls only what is here (and the parts of Nix's API
// that did not move). `build.rs` defines NIX_VERSION_MAJOR/MINOR/PATCH from
// the Nix that `pkg-config` finds.
//
// Built and tested: 2.8 (Debian 12's nix-bin), 2.31 and 2.35 (built from
// source by .ci/build-nix); compiled against 2.28.7's headers. Written for
// 2.28-2.35 from where the API moved (see the README's support table):
//   2.9   positions are `PosIdx` indices, symbols need the symbol table
//   2.17  `RegisterPrimOp(PrimOp &&)`; errors through `state.error<...>()`
//   2.19  string context is a set of `NixStringContextElem`; paths are
//         `SourcePath`s; `addToStore` takes a `SourcePath`
//   2.28  headers under nix/{expr,store,util,main}/
//   2.30  value accessors only (`attrs()`, `boolean()`, ...), `listView()`,
//         lists built with `buildList`
//   2.32  `Bindings::get` only; `state.s.outPath`
//   2.33  `mkString` takes the evaluator's memory; `PrimOp::doc` is optional
//   2.34  `PrimOp::fun` is `PrimOp::impl`
#pragma once

#define NIX_AT_LEAST(maj, min) \
    (NIX_VERSION_MAJOR > (maj) || (NIX_VERSION_MAJOR == (maj) && NIX_VERSION_MINOR >= (min)))

#if NIX_AT_LEAST(2, 28)
#  include <nix/expr/eval.hh>
#  include <nix/expr/eval-inline.hh>
#  include <nix/expr/primops.hh>
#  include <nix/expr/value/context.hh>
#  include <nix/store/derivations.hh>
#  include <nix/store/globals.hh>
#  include <nix/store/store-api.hh>
#elif NIX_AT_LEAST(2, 20)
#  error "nix-vmtest: Nix 2.20-2.27 is not supported (use 2.8 or 2.28 and later)"
#else
#  include <nix/config.h>
#  include <nix/eval.hh>
#  include <nix/eval-inline.hh>
#  include <nix/primops.hh>
#  include <nix/derivations.hh>
#  include <nix/store-api.hh>
#  include <nix/globals.hh>
#endif

#include <sstream>
#include <string>
#include <vector>

namespace nix_compat {

using nix::EvalState;
using nix::Value;

#if NIX_AT_LEAST(2, 9)
using PosArg = const nix::PosIdx;
#else
using PosArg = const nix::Pos &;
#endif

// The string context of a value, and its text form (what the Rust side
// carries around unchanged). New Nix writes store paths in context elements
// as base names; the Rust side may give back full paths (the driver's store
// path): `toContext` accepts both.
#if NIX_AT_LEAST(2, 19)
using Context = nix::NixStringContext;
#else
using Context = nix::PathSet;
#endif

inline std::vector<std::string> contextStrings(const Context & context)
{
    std::vector<std::string> out;
    for (auto & c : context) {
#if NIX_AT_LEAST(2, 19)
        out.push_back(c.to_string());
#else
        out.push_back(c);
#endif
    }
    return out;
}

inline void addContext(EvalState & state, Context & context, const std::string & elem)
{
#if NIX_AT_LEAST(2, 19)
    std::string s = elem;
    std::string prefix = state.store->storeDir + "/";
    for (size_t at; (at = s.find(prefix)) != std::string::npos;) s.erase(at, prefix.size());
    context.insert(nix::NixStringContextElem::parse(s));
#else
    (void) state;
    context.insert(elem);
#endif
}

inline std::string symbolName(EvalState & state, const nix::Symbol & sym)
{
#if NIX_AT_LEAST(2, 9)
    return std::string(std::string_view(state.symbols[sym]));
#else
    (void) state;
    return std::string((const std::string &) sym);
#endif
}

// "file:line:column" of an attribute's definition, or "".
inline std::string attrPos(EvalState & state, const nix::Attr & attr)
{
#if NIX_AT_LEAST(2, 9)
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

// --- Values ---------------------------------------------------------------

inline decltype(auto) attrs(Value & v)
{
#if NIX_AT_LEAST(2, 24)
    return *v.attrs();
#else
    return *v.attrs;
#endif
}

// The attribute `name` of an attribute set, or nullptr.
inline const nix::Attr * getAttr(Value & v, nix::Symbol name)
{
#if NIX_AT_LEAST(2, 24)
    return v.attrs()->get(name);
#else
    auto i = v.attrs->find(name);
    return i == v.attrs->end() ? nullptr : &*i;
#endif
}

inline nix::Symbol outPathSymbol(EvalState & state)
{
#if NIX_AT_LEAST(2, 32)
    return state.s.outPath;
#else
    return state.sOutPath;
#endif
}

inline bool boolean(const Value & v)
{
#if NIX_AT_LEAST(2, 24)
    return v.boolean();
#else
    return v.boolean;
#endif
}

inline long long integer(const Value & v)
{
#if NIX_AT_LEAST(2, 25)
    return v.integer().value;
#elif NIX_AT_LEAST(2, 24)
    return v.integer();
#else
    return v.integer;
#endif
}

inline double fpoint(const Value & v)
{
#if NIX_AT_LEAST(2, 24)
    return v.fpoint();
#else
    return v.fpoint;
#endif
}

inline std::vector<Value *> listItems(Value & v)
{
    std::vector<Value *> out;
#if NIX_AT_LEAST(2, 30)
    for (auto * item : v.listView()) out.push_back(item);
#else
    for (size_t i = 0; i < v.listSize(); ++i) out.push_back(v.listElems()[i]);
#endif
    return out;
}

inline void mkList(EvalState & state, Value & v, const std::vector<Value *> & items)
{
#if NIX_AT_LEAST(2, 23)
    auto list = state.buildList(items.size());
    for (size_t i = 0; i < items.size(); ++i) list[i] = items[i];
    v.mkList(list);
#else
    state.mkList(v, items.size());
    for (size_t i = 0; i < items.size(); ++i) v.listElems()[i] = items[i];
#endif
}

inline void mkString(EvalState & state, Value & v, const std::string & s, const Context & context)
{
#if NIX_AT_LEAST(2, 33)
    v.mkString(s, context, state.mem);
#else
    (void) state;
    v.mkString(s, context);
#endif
}

// --- Evaluation -----------------------------------------------------------

constexpr const char * errorContext = "while evaluating an argument of builtins.vmTest";

inline void forceAttrs(EvalState & state, Value & v, PosArg pos)
{
#if NIX_AT_LEAST(2, 13)
    state.forceAttrs(v, pos, errorContext);
#else
    state.forceAttrs(v, pos);
#endif
}

inline std::string forceString(EvalState & state, Value & v, Context & context, PosArg pos)
{
#if NIX_AT_LEAST(2, 13)
    return std::string(state.forceString(v, context, pos, errorContext));
#else
    return std::string(state.forceString(v, context, pos));
#endif
}

inline std::string coerceToString(EvalState & state, PosArg pos, Value & v, Context & context, bool copyToStore)
{
#if NIX_AT_LEAST(2, 13)
    return state.coerceToString(pos, v, context, errorContext, false, copyToStore).toOwned();
#else
    return state.coerceToString(pos, v, context, false, copyToStore).toOwned();
#endif
}

// A path value: its text, and the store path it is copied to.
inline std::pair<std::string, std::string> copyPathToStore(EvalState & state, Value & v, Context & context)
{
#if NIX_AT_LEAST(2, 19)
    auto path = v.path();
    std::string original = path.path.abs();
    auto stored = state.copyPathToStore(context, path);
    return {original, state.store->printStorePath(stored)};
#else
    std::string original = v.path;
    return {original, state.copyPathToStore(context, original)};
#endif
}

// Adds a directory of the host to the store (NAR, SHA-256), as `name`.
inline std::string addDirToStore(EvalState & state, const std::string & name, const std::string & dir)
{
#if NIX_AT_LEAST(2, 19)
    auto storePath = state.store->addToStore(
        name, nix::SourcePath(nix::getFSSourceAccessor(), nix::CanonPath(dir)),
        nix::ContentAddressMethod::Raw::NixArchive, nix::HashAlgorithm::SHA256);
#else
    auto storePath = state.store->addToStore(
        name, dir, nix::FileIngestionMethod::Recursive, nix::htSHA256, nix::defaultPathFilter, nix::NoRepair);
#endif
    return state.store->printStorePath(storePath);
}

[[noreturn]] inline void throwEvalError(EvalState & state, PosArg pos, const std::string & message)
{
#if NIX_AT_LEAST(2, 20)
    state.error<nix::EvalError>("%s", message).atPos(pos).debugThrow();
#elif NIX_AT_LEAST(2, 9)
    (void) state;
    (void) pos;
    throw nix::EvalError({.msg = nix::hintfmt("%s", nix::normaltxt(message))});
#else
    (void) state;
    throw nix::EvalError({.msg = nix::hintfmt("%s", nix::normaltxt(message)), .errPos = pos});
#endif
}

// --- Registration -----------------------------------------------------------

#if NIX_AT_LEAST(2, 9)
using PrimOpFun = void(EvalState &, const nix::PosIdx, Value **, Value &);
#else
using PrimOpFun = void(EvalState &, const nix::Pos &, Value **, Value &);
#endif

// Registers a builtin (`__name` is `builtins.name`). Called from
// `nix_plugin_entry` where Nix has it, or while the plugin is loaded.
inline void registerPrimOp(const char * name, std::vector<std::string> args, const char * doc, PrimOpFun * fun)
{
    size_t arity = args.size();
    // The constructor adds the primop to Nix's list; the object holds nothing.
#if NIX_AT_LEAST(2, 34)
    nix::RegisterPrimOp r(nix::PrimOp{.name = name, .args = std::move(args), .arity = arity, .doc = doc, .impl = fun});
#elif NIX_AT_LEAST(2, 17)
    nix::RegisterPrimOp r(nix::PrimOp{.name = name, .args = std::move(args), .arity = arity, .doc = doc, .fun = fun});
#else
    nix::RegisterPrimOp r(
        nix::RegisterPrimOp::Info{.name = name, .args = std::move(args), .arity = arity, .doc = doc, .fun = fun});
#endif
    (void) r;
}

} // namespace nix_compat
