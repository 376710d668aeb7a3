//! Checks a test script at evaluation time, before any VM starts: syntax
//! (Python's own parser) and names that are neither defined in the script,
//! nor driver globals, nor machines. The check itself is the Python client's
//! `python3 -m nix_vmtest.check --machines a,b FILE` (`python/nix_vmtest/check.py`);
//! without it only the syntax is checked (`ast.parse`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why a script was refused, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script has problems: each `vmTest: testScript line N: message`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("vmTest: cannot check testScript: {0}")]
    Io(#[from] std::io::Error),
}

const SYNTAX_ONLY: &str = r#"
import ast, sys
path = sys.argv[1]
try:
    ast.parse(open(path, encoding="utf-8").read(), filename=path)
except SyntaxError as e:
    print(f"{path}:{e.lineno or 0}: syntax error: {e.msg}", file=sys.stderr)
    sys.exit(1)
"#;

/// Checks `script` for a test with these machines, with this `python`
/// (the driver's: [`crate::script::python::python`]). `python_dir` holds
/// the `nix_vmtest` package; `lint` adds the undefined-name check to the
/// syntax check. A missing Python interpreter skips the check (the script
/// is parsed again when it runs).
pub fn check(
    script: &str,
    machines: &[String],
    python: &Path,
    python_dir: Option<&Path>,
    lint: bool,
) -> Result<(), ScriptError> {
    // The script goes in on stdin; both checks read it as the file /dev/stdin.
    const FILE: &str = "/dev/stdin";
    let checker = python_dir.filter(|d| d.join("nix_vmtest/check.py").is_file());
    let mut cmd = Command::new(python);
    match checker {
        Some(dir) if lint => {
            cmd.env("PYTHONPATH", dir)
                .args(["-s", "-m", "nix_vmtest.check", "--machines"])
                .arg(machines.join(","))
                .arg(FILE);
        }
        _ => {
            cmd.args(["-s", "-E", "-c", SYNTAX_ONLY, FILE]);
        }
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A checker that exits early closes the pipe; its output says why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    Err(ScriptError::Invalid(messages(&text, FILE)))
}

/// `FILE:LINE: message` lines → `testScript line LINE: message`.
fn messages(output: &str, file: &str) -> Vec<String> {
    let prefix = format!("{file}:");
    let found: Vec<String> = output
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| match rest.split_once(": ") {
            Some((line, msg)) if line.chars().all(|c| c.is_ascii_digit()) => {
                format!("vmTest: testScript line {line}: {msg}")
            }
            _ => format!("vmTest: testScript: {rest}"),
        })
        .collect();
    if found.is_empty() {
        vec![format!(
            "vmTest: testScript: the check failed: {}",
            output.trim()
        )]
    } else {
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::python::python;
    use std::path::PathBuf;

    fn repo_python() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = check("start_all()\nif x\n", &[], &python(), None, true).unwrap_err();
        let ScriptError::Invalid(m) = e else { panic!() };
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("vmTest: testScript line 2: "), "{m:?}");
    }

    #[test]
    fn unknown_machines_are_reported_by_the_client_check() {
        let dir = repo_python();
        if !dir.join("nix_vmtest/check.py").is_file() {
            return;
        }
        let machines = vec!["client".to_string(), "server".to_string()];
        check(
            "server.succeed('true')\nclient.succeed('true')\n",
            &machines,
            &python(),
            Some(&dir),
            true,
        )
        .unwrap();
        let e = check(
            "start_all()\nservr.succeed('true')\n",
            &machines,
            &python(),
            Some(&dir),
            true,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("testScript line 2: name 'servr' is not defined"),
            "{msg}"
        );
        assert!(msg.contains("client, server"), "{msg}");
        // skipLint keeps the syntax check only.
        check(
            "servr.succeed('true')\n",
            &machines,
            &python(),
            Some(&dir),
            false,
        )
        .unwrap();
    }

    #[test]
    fn output_lines_are_mapped() {
        assert_eq!(
            messages("/tmp/s.py:3: syntax error: invalid\n", "/tmp/s.py"),
            vec!["vmTest: testScript line 3: syntax error: invalid"]
        );
    }
}
