//! Finds the driver the test derivation is built with, and lays it out for
//! the store as one directory `nix-vmtest-<version>`:
//!
//! ```text
//! bin/nixos-test-driver
//! share/nix-vmtest/python/nix_vmtest/*.py
//! ```
//!
//! Where it comes from, first match wins:
//! 1. `$NIX_VMTEST_PREFIX`: a directory with that layout (what
//!    `.ci/install-plugin PREFIX` writes);
//! 2. the directory above the loaded plugin (`PREFIX/lib/libnix_vmtest.so`,
//!    found with `dladdr`) when it has that layout; when that is a store
//!    path (Nix installed the plugin) it is used as it is;
//! 3. cargo's target directory: `nixos-test-driver` next to the plugin
//!    (`target/release/`), with the Python client from this source tree.
//!
//! Outside the store, the driver and the client are copied into a staging
//! directory, which Nix then adds to the store (content-addressed, so the
//! same build gives the same path) and which [`release`] removes.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// The driver could not be found or staged.
#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    #[error(
        "vmTest: cannot find nixos-test-driver for the plugin {plugin}: looked in {looked}; \
         install the plugin with .ci/install-plugin PREFIX, or set NIX_VMTEST_PREFIX to a \
         directory holding bin/nixos-test-driver and share/nix-vmtest/python"
    )]
    NotFound { plugin: String, looked: String },
    #[error("vmTest: cannot stage the driver for the store in {path}: {source}")]
    Stage {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the driver is, for the C++ side.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Prefix {
    /// The directory to add to the store (or, in the store, to use).
    pub path: PathBuf,
    /// The store name to add it under.
    pub name: String,
    /// Already a store path: use it, do not add.
    pub in_store: bool,
}

/// The store name of the driver directory.
pub fn store_name() -> String {
    format!("nix-vmtest-{}", env!("CARGO_PKG_VERSION"))
}

/// The file the running plugin was loaded from.
pub fn plugin_file() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = plugin_file as *const () as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated file name.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(name.to_string_lossy().into_owned());
    std::fs::canonicalize(&path).ok().or(Some(path))
}

fn has_layout(dir: &Path) -> bool {
    dir.join("bin/nixos-test-driver").is_file()
        && dir.join("share/nix-vmtest/python/nix_vmtest").is_dir()
}

/// Where the driver binary and the Python client are on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub driver: PathBuf,
    pub python: PathBuf,
    /// The whole layout, when the files already sit in one.
    pub layout: Option<PathBuf>,
}

/// Looks for the driver as the module documentation says.
pub fn find(store_dir: &str) -> Result<Found, PrefixError> {
    let mut looked = Vec::new();
    let from_layout = |dir: &Path| Found {
        driver: dir.join("bin/nixos-test-driver"),
        python: dir.join("share/nix-vmtest/python"),
        layout: Some(dir.to_path_buf()),
    };
    if let Some(p) = std::env::var_os("NIX_VMTEST_PREFIX") {
        let dir = PathBuf::from(p);
        if has_layout(&dir) {
            return Ok(from_layout(&dir));
        }
        looked.push(format!("$NIX_VMTEST_PREFIX={}", dir.display()));
    }
    let plugin = plugin_file();
    if let Some(lib_dir) = plugin.as_deref().and_then(Path::parent) {
        if let Some(prefix) = lib_dir.parent() {
            if has_layout(prefix) {
                return Ok(from_layout(prefix));
            }
            looked.push(prefix.display().to_string());
        }
        let driver = lib_dir.join("nixos-test-driver");
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        if driver.is_file() && python.join("nix_vmtest").is_dir() {
            return Ok(Found {
                driver,
                python,
                layout: None,
            });
        }
        looked.push(lib_dir.display().to_string());
    }
    let _ = store_dir;
    Err(PrefixError::NotFound {
        plugin: plugin
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(unknown)".into()),
        looked: looked.join(", "),
    })
}

/// The directory to put into the store for `found`.
pub fn prepare(found: &Found, store_dir: &str) -> Result<Prefix, PrefixError> {
    if let Some(layout) = &found.layout {
        if let Some(rest) = layout.to_str().and_then(|l| l.strip_prefix(store_dir)) {
            if rest.starts_with('/') {
                return Ok(Prefix {
                    path: layout.clone(),
                    name: store_name(),
                    in_store: true,
                });
            }
        }
    }
    let stage = std::env::temp_dir().join(format!(
        "nix-vmtest-stage-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let io = |source| PrefixError::Stage {
        path: stage.clone(),
        source,
    };
    std::fs::create_dir_all(stage.join("bin")).map_err(io)?;
    std::fs::copy(&found.driver, stage.join("bin/nixos-test-driver")).map_err(io)?;
    let python = stage.join("share/nix-vmtest/python");
    copy_python(&found.python, &python).map_err(io)?;
    Ok(Prefix {
        path: stage,
        name: store_name(),
        in_store: false,
    })
}

/// Copies the Python client: directories and `.py`/`.pyi`/`py.typed` files,
/// no caches, with fixed permissions so the store path does not depend on
/// the umask.
fn copy_python(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name_str == "__pycache__" || name_str.starts_with('.') {
                continue;
            }
            copy_python(&entry.path(), &to.join(&name))?;
        } else if kind.is_file()
            && (name_str.ends_with(".py") || name_str.ends_with(".pyi") || name_str == "py.typed")
        {
            let dest = to.join(&name);
            std::fs::copy(entry.path(), &dest)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// Removes a staging directory made by [`prepare`] (never anything else).
pub fn release(path: &Path) {
    let is_stage = path
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with("nix-vmtest-stage-"))
        && path.parent() == Some(std::env::temp_dir().as_path());
    if is_stage {
        let _ = std::fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_driver_and_client_then_releases() {
        let dir = tempfile::tempdir().unwrap();
        let driver = dir.path().join("nixos-test-driver");
        std::fs::write(&driver, "#!/bin/sh\n").unwrap();
        let py = dir.path().join("python");
        std::fs::create_dir_all(py.join("nix_vmtest/__pycache__")).unwrap();
        std::fs::write(py.join("nix_vmtest/__init__.py"), "").unwrap();
        std::fs::write(py.join("nix_vmtest/__pycache__/x.pyc"), "").unwrap();
        let found = Found {
            driver,
            python: py,
            layout: None,
        };
        let p = prepare(&found, "/nix/store").unwrap();
        assert!(!p.in_store);
        assert!(has_layout(&p.path));
        assert!(!p
            .path
            .join("share/nix-vmtest/python/nix_vmtest/__pycache__")
            .exists());
        release(&p.path);
        assert!(!p.path.exists());

        let in_store = Found {
            driver: "/nix/store/abc-nix-vmtest/bin/nixos-test-driver".into(),
            python: "/nix/store/abc-nix-vmtest/share/nix-vmtest/python".into(),
            layout: Some("/nix/store/abc-nix-vmtest".into()),
        };
        let p = prepare(&in_store, "/nix/store").unwrap();
        assert!(p.in_store);
    }
}
