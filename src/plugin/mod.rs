//! The Rust side of the Nix plugin's `builtins.vmTest` (feature
//! `nix-plugin`; the C++ glue is `cpp/plugin.cc`, the bridge `ffi.rs`).
//!
//! One call: the C++ side encodes the evaluated arguments ([`value`]); they
//! are checked ([`args`]), the test script is checked by Python's parser and
//! the client's name check ([`script_check`]), and the derivations are
//! described ([`plan`]) for Nix's `derivation` to make. The driver the
//! derivation is built with is found and staged by [`prefix`]; the
//! `.driver` attribute is built by the driver itself ([`wrapper`]).
//!
//! Everything but the `cxx` bridge builds without Nix, so the driver binary
//! (which needs [`wrapper`]) and the unit tests do not need Nix's headers.

pub mod args;
pub mod plan;
pub mod prefix;
pub mod script_check;
pub mod value;
pub mod wrapper;

#[cfg(feature = "nix-plugin")]
mod ffi;
#[cfg(feature = "nix-plugin")]
pub mod loader;

use std::path::Path;

/// Why a `builtins.vmTest` call was refused. Each message is what the user
/// sees as the evaluation error.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Args(#[from] args::ArgError),
    #[error(transparent)]
    Script(#[from] script_check::ScriptError),
    #[error(transparent)]
    Prefix(#[from] prefix::PrefixError),
    #[error("vmTest: internal error: the C++ side sent arguments that do not decode: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// Checks one call's arguments (`args_json`: the C++ encoding) and returns
/// the derivations to make, as JSON (see [`plan::plan`]).
pub fn plan_test(
    args_json: &str,
    host: &plan::Host,
    store_dir: &str,
    python_dir: Option<&Path>,
) -> Result<String, PluginError> {
    let value: value::NixValue = serde_json::from_str(args_json)?;
    let test = args::parse(&value, store_dir)?;
    let machines: Vec<String> = test.spec.machines.iter().map(|m| m.name.clone()).collect();
    script_check::check(
        &test.test_script.text,
        &machines,
        &crate::script::python::python(),
        python_dir,
        !test.skip_lint,
    )?;
    Ok(plan::plan(&test, host).to_string())
}
