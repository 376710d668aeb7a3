//! The `cxx` bridge: the functions `cpp/plugin.cc` calls. Only Rust
//! functions are exported; Rust calls nothing in C++, so only the plugin
//! (cdylib) links the glue.

use std::path::Path;

#[cxx::bridge(namespace = "nix_vmtest")]
mod bridge {
    extern "Rust" {
        /// `{"path", "name", "inStore"}`: the driver directory to put into the store.
        fn driver_prefix(store_dir: &str) -> Result<String>;
        /// Removes a staging directory once Nix has copied it.
        fn release_prefix(path: &str);
        /// Checks the encoded arguments and returns the derivations to make.
        fn plan_test(
            args_json: &str,
            driver: &str,
            out_placeholder: &str,
            store_dir: &str,
            system: &str,
        ) -> Result<String>;
    }
}

fn driver_prefix(store_dir: &str) -> Result<String, super::PluginError> {
    let found = super::prefix::find(store_dir)?;
    let prefix = super::prefix::prepare(&found, store_dir)?;
    Ok(serde_json::to_string(&prefix)?)
}

fn release_prefix(path: &str) {
    super::prefix::release(Path::new(path));
}

fn plan_test(
    args_json: &str,
    driver: &str,
    out_placeholder: &str,
    store_dir: &str,
    system: &str,
) -> Result<String, super::PluginError> {
    // The checker runs from the host's copy (the store copy may be elsewhere
    // on a remote store); fall back to the store copy.
    let python = super::prefix::find(store_dir)
        .map(|f| f.python)
        .unwrap_or_else(|_| Path::new(driver).join("share/nix-vmtest/python"));
    let host = super::plan::Host {
        driver,
        out_placeholder,
        system,
    };
    super::plan_test(args_json, &host, store_dir, Some(&python))
}
