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
//! Environment (set by the plugin, `super::plan`, and by the library without
//! the plugin, `nix/backend.nix`): `out`, `nodesJsonPath` and
//! `testScriptPath` (Nix's `passAsFile`), `globalTimeout`,
//! `vmTestInteractive` (`1` or empty), `vmTestName`; what the test's run
//! has too, which the script sets up the same way: `vmTestPath` (the run's
//! `PATH`, put before the caller's), `vmTestPython` (the run's
//! `NIX_VMTEST_PYTHON`), `vmTestArgs` (more driver arguments, a JSON list);
//! and `vmTestCheck`: `lint` or `syntax` to check the script here and fail
//! the build on an error (the library; the plugin checked it at
//! evaluation and leaves it empty).

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
    #[error("--write-wrapper: {name} is not what it should be ({want}): {source}")]
    Env {
        name: &'static str,
        want: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Script(#[from] super::script_check::ScriptError),
    #[error("--write-wrapper: cannot check the test script: {0}. Set skipLint = true; to build without the check")]
    Unchecked(String),
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
    /// Put before the caller's `PATH` (the run's `PATH`).
    pub path: Option<String>,
    /// Exported as `NIX_VMTEST_PYTHON`.
    pub python: Option<String>,
    /// More arguments for the driver.
    pub args: Vec<String>,
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

/// Writes the wrapper into `$out` from the builder environment, after the
/// script check `vmTestCheck` asks for.
pub fn write_from_env() -> Result<(), WrapperError> {
    let out = env_path(&["out"])?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let args = match var("vmTestArgs") {
        Some(json) => serde_json::from_str(&json).map_err(|source| WrapperError::Env {
            name: "vmTestArgs",
            want: "a JSON list of strings",
            source,
        })?,
        None => Vec::new(),
    };
    let wrapper = Wrapper {
        driver: std::env::current_exe().map_err(WrapperError::SelfPath)?,
        nodes_json: env_path(&["nodesJsonPath", "nodesJson"])?,
        test_script: env_path(&["testScriptPath", "testScript"])?,
        global_timeout: var("globalTimeout").unwrap_or_else(|| "3600".into()),
        interactive: var("vmTestInteractive").is_some_and(|v| v == "1"),
        name: var("vmTestName").unwrap_or_default(),
        path: var("vmTestPath"),
        python: var("vmTestPython"),
        args,
    };
    if let Some(how) = var("vmTestCheck") {
        check(&wrapper, how == "lint")?;
    }
    write(&out, &wrapper)
}

/// The plugin's evaluation-time script check, run while `.driver` builds.
fn check(w: &Wrapper, lint: bool) -> Result<(), WrapperError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| WrapperError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let spec: crate::spec::TestSpec =
        serde_json::from_str(&read(&w.nodes_json)?).map_err(|source| WrapperError::Env {
            name: "nodesJson",
            want: "the nodes JSON",
            source,
        })?;
    let machines: Vec<String> = spec.machines.iter().map(|m| m.name.clone()).collect();
    // The Python the run finds: its `NIX_VMTEST_PYTHON`, else `python3` in
    // its `PATH`.
    let python = match (&w.python, &w.path) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(path)) => crate::machine::qemu::find_in(path.as_ref(), "python3")
            .unwrap_or_else(crate::script::python::python),
        (None, None) => crate::script::python::python(),
    };
    if !python.is_file() {
        return Err(WrapperError::Unchecked(format!(
            "no python3 at {} (the run's PATH has none)",
            python.display()
        )));
    }
    let dir = crate::script::python::python_path();
    if lint && !dir.join("nix_vmtest/check.py").is_file() {
        return Err(WrapperError::Unchecked(format!(
            "the driver's Python client is not at {} (give the driver as its package, with share/nix-vmtest/python)",
            dir.display()
        )));
    }
    super::script_check::check(&read(&w.test_script)?, &machines, &python, Some(&dir), lint)?;
    Ok(())
}

/// Single-quotes a word for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text of `bin/nixos-test-driver`.
pub fn script(out: &Path, w: &Wrapper) -> String {
    let mut env = String::new();
    if let Some(p) = &w.path {
        env += &format!("PATH={}${{PATH:+:$PATH}}\nexport PATH\n", quote(p));
    }
    if let Some(p) = &w.python {
        env += &format!("NIX_VMTEST_PYTHON={}\nexport NIX_VMTEST_PYTHON\n", quote(p));
    }
    let interactive = if w.interactive { " --interactive" } else { "" };
    let args: String = w.args.iter().map(|a| format!(" {}", quote(a))).collect();
    format!(
        "#!/bin/sh\n\
         # nixos-test-driver for the vmTest {name:?}, written by nix-vmtest.\n\
         # Arguments are the driver's (see nixos-test-driver --help); $testScript overrides the script.\n\
         {env}\
         testScript=\"${{testScript:-{script}}}\"\n\
         export testScript\n\
         exec {driver} --nodes-json {nodes} --global-timeout {timeout}{interactive}{args} \"$@\"\n",
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
            path: Some("/nix/store/qqq-qemu/bin".into()),
            python: None,
            args: vec!["--accel".into(), "it's".into()],
        };
        write(&out, &w).unwrap();
        let text = std::fs::read_to_string(out.join("bin/nixos-test-driver")).unwrap();
        assert!(
            text.contains("exec '/nix/store/ddd-nix-vmtest/bin/nixos-test-driver' --nodes-json")
        );
        assert!(text.contains("--interactive '--accel' 'it'\\''s' \"$@\""));
        assert!(text.contains("PATH='/nix/store/qqq-qemu/bin'${PATH:+:$PATH}\nexport PATH\n"));
        assert!(!text.contains("NIX_VMTEST_PYTHON"));
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
