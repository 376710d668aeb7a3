//! `nixos-test-driver --write-wrapper`: the builder of a test's `.driver`
//! and `.driverInteractive`. Run by Nix with the test's environment, it
//! writes
//!
//! ```text
//! $out/bin/nixos-test-driver          sh script: exec <driver> --nodes-json ... "$@"
//! $out/share/nix-vmtest/nodes.json    the test's machines
//! $out/share/nix-vmtest/test-script   the test script
//! ```
//!
//! so that `$(nix-build -A driver)/bin/nixos-test-driver` runs the test by
//! hand, as nixpkgs' `.driver` does (the interactive one adds `--interactive`).
//! It needs nothing but the driver binary itself, so it builds in the sandbox
//! on a host whose shell is outside the store. The script it writes runs
//! outside the sandbox, with the host's `/bin/sh`.
//!
//! Environment (set by the plugin, `super::plan`): `out`, `nodesJsonPath`
//! and `testScriptPath` (Nix's `passAsFile`), `globalTimeout`,
//! `vmTestInteractive` (`1` or empty), `vmTestName`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The hidden first argument that selects this mode.
pub const FLAG: &str = "--write-wrapper";

/// The nodes description, relative to `$out`.
pub const NODES_JSON: &str = "share/nix-vmtest/nodes.json";

/// The test script, relative to `$out`.
pub const TEST_SCRIPT: &str = "share/nix-vmtest/test-script";

/// Why the wrapper could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WrapperError {
    #[error("--write-wrapper: environment variable {0} is not set (this mode is run by Nix, as the builder of a vmTest's .driver)")]
    MissingEnv(&'static str),
    #[error("--write-wrapper: cannot find the driver's own path: {0}")]
    SelfPath(std::io::Error),
    #[error("--write-wrapper: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the wrapper runs.
#[derive(Debug, Clone)]
pub struct Wrapper {
    /// The store path of the driver binary.
    pub driver: PathBuf,
    pub nodes_json: PathBuf,
    pub test_script: PathBuf,
    pub global_timeout: String,
    pub interactive: bool,
    pub name: String,
}

/// For the driver's `main`: when the first argument is [`FLAG`], writes the
/// wrapper from the environment and returns the exit code; else `None`.
///
/// ```no_run
/// use std::process::ExitCode;
///
/// fn main() -> ExitCode {
///     if let Some(code) = nix_vmtest::plugin::wrapper::run_if_requested() {
///         return code;
///     }
///     ExitCode::SUCCESS
/// }
/// ```
pub fn run_if_requested() -> Option<ExitCode> {
    if std::env::args_os().nth(1).as_deref() != Some(FLAG.as_ref()) {
        return None;
    }
    Some(match write_from_env() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixos-test-driver: {e}");
            ExitCode::FAILURE
        }
    })
}

fn env_path(names: &[&'static str]) -> Result<PathBuf, WrapperError> {
    names
        .iter()
        .find_map(std::env::var_os)
        .map(PathBuf::from)
        .ok_or(WrapperError::MissingEnv(names[0]))
}

/// Writes the wrapper into `$out` from the builder environment.
pub fn write_from_env() -> Result<(), WrapperError> {
    let out = env_path(&["out"])?;
    let wrapper = Wrapper {
        driver: std::env::current_exe().map_err(WrapperError::SelfPath)?,
        nodes_json: env_path(&["nodesJsonPath", "nodesJson"])?,
        test_script: env_path(&["testScriptPath", "testScript"])?,
        global_timeout: std::env::var("globalTimeout").unwrap_or_else(|_| "3600".into()),
        interactive: std::env::var("vmTestInteractive").is_ok_and(|v| v == "1"),
        name: std::env::var("vmTestName").unwrap_or_default(),
    };
    write(&out, &wrapper)
}

/// Single-quotes a word for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text of `bin/nixos-test-driver`.
pub fn script(out: &Path, w: &Wrapper) -> String {
    let interactive = if w.interactive { " --interactive" } else { "" };
    format!(
        "#!/bin/sh\n\
         # nixos-test-driver for the vmTest {name:?}, written by nix-vmtest.\n\
         # Arguments are the driver's (see nixos-test-driver --help); $testScript overrides the script.\n\
         testScript=\"${{testScript:-{script}}}\"\n\
         export testScript\n\
         exec {driver} --nodes-json {nodes} --global-timeout {timeout}{interactive} \"$@\"\n",
        name = w.name,
        script = out.join(TEST_SCRIPT).display(),
        driver = quote(&w.driver.to_string_lossy()),
        nodes = quote(&out.join(NODES_JSON).to_string_lossy()),
        timeout = quote(&w.global_timeout),
    )
}

/// Writes the wrapper and its two data files under `out`.
pub fn write(out: &Path, w: &Wrapper) -> Result<(), WrapperError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WrapperError::Io { path, source }
    };
    let bin = out.join("bin");
    let nodes = out.join(NODES_JSON);
    let script_file = out.join(TEST_SCRIPT);
    for dir in [nodes.parent().unwrap_or(out), &bin] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::copy(&w.nodes_json, &nodes).map_err(io(&w.nodes_json))?;
    std::fs::copy(&w.test_script, &script_file).map_err(io(&w.test_script))?;
    for f in [&nodes, &script_file] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).map_err(io(f))?;
    }
    let exe = bin.join("nixos-test-driver");
    std::fs::write(&exe, script(out, w)).map_err(io(&exe))?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o555)).map_err(io(&exe))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_executable_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = dir.path().join("n");
        let script_in = dir.path().join("s");
        std::fs::write(&nodes, "{\"machines\":[]}").unwrap();
        std::fs::write(&script_in, "start_all()\n").unwrap();
        let out = dir.path().join("out");
        let w = Wrapper {
            driver: "/nix/store/ddd-nix-vmtest/bin/nixos-test-driver".into(),
            nodes_json: nodes,
            test_script: script_in,
            global_timeout: "60".into(),
            interactive: true,
            name: "t".into(),
        };
        write(&out, &w).unwrap();
        let text = std::fs::read_to_string(out.join("bin/nixos-test-driver")).unwrap();
        assert!(
            text.contains("exec '/nix/store/ddd-nix-vmtest/bin/nixos-test-driver' --nodes-json")
        );
        assert!(text.contains("--interactive \"$@\""));
        assert_eq!(
            std::fs::read_to_string(out.join("share/nix-vmtest/test-script")).unwrap(),
            "start_all()\n"
        );
        let mode = std::fs::metadata(out.join("bin/nixos-test-driver"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        // The script is valid sh.
        let status = std::process::Command::new("/bin/sh")
            .arg("-n")
            .arg(out.join("bin/nixos-test-driver"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}
