//! Which machines a test script's first statement starts, so that they
//! boot while Python is still starting up.

/// The Python client's `Machine`: a method that starts its machine is
/// marked there, on the line before its `def`.
const CLIENT_MACHINE: &str = include_str!("../../python/nix_vmtest/machine.py");

/// The marker of such a method (a decorator of `machine.py` that does
/// nothing but mark it).
const STARTS_MACHINE: &str = "    @_starts_machine";

/// The `Machine` methods that start their machine: the `def` names after
/// the marker in `machine.py`.
fn starting_methods() -> impl Iterator<Item = &'static str> {
    let mut lines = CLIENT_MACHINE.lines();
    std::iter::from_fn(move || {
        lines.find(|l| l.trim_end() == STARTS_MACHINE)?;
        Some(lines.next())
    })
    .filter_map(|def| def?.strip_prefix("    def ")?.split_once('('))
    .map(|(name, _)| name)
}

fn starts_its_machine(method: &str) -> bool {
    starting_methods().any(|m| m == method)
}

/// The names a script has for machine `name`, as the Python client binds
/// them (`pythonize_name` and `identifier_name` in `driver.py`; this copy
/// is needed before Python runs): every character but `[A-Za-z0-9_]`
/// replaced by `_`, and nixpkgs' form, which also replaces a first
/// character that is no letter or `_`.
fn script_names(name: &str) -> [String; 2] {
    let pythonized: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let identifier = match pythonized.chars().next() {
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => format!("_{}", &pythonized[1..]),
        _ => pythonized.clone(),
    };
    [pythonized, identifier]
}

/// Which machines (indexes into `names`) a script's first statement
/// starts: every one for `start_all()`, or the machine whose method that
/// starts it comes first (`server.succeed(...)`).
pub fn early_starts(script: &str, names: &[String]) -> Vec<usize> {
    let Some(first) = script
        .lines()
        .map(str::trim_end)
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    else {
        return Vec::new();
    };
    if first == "start_all()" {
        return (0..names.len()).collect();
    }
    let Some((object, rest)) = first.split_once('.') else {
        return Vec::new();
    };
    let method = rest.split('(').next().unwrap_or("");
    if !rest.contains('(') || !starts_its_machine(method) {
        return Vec::new();
    }
    let found = if object == "machine" && names.len() == 1 {
        Some(0)
    } else {
        names
            .iter()
            .position(|n| script_names(n).iter().any(|s| s == object))
    };
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_first_statement_that_starts_machines_starts_them_early() {
        let names = vec!["client".to_string(), "my-server".to_string()];
        assert_eq!(
            early_starts("# a test\n\nstart_all()\nx", &names),
            vec![0, 1]
        );
        assert_eq!(early_starts("my_server.succeed('true')", &names), vec![1]);
        assert_eq!(
            early_starts("client.start(allow_reboot=True)", &names),
            Vec::<usize>::new()
        );
        assert_eq!(
            early_starts("import os\nstart_all()", &names),
            Vec::<usize>::new()
        );
        assert_eq!(early_starts("  start_all()", &names), Vec::<usize>::new());
        let one = vec!["m".to_string()];
        assert_eq!(early_starts("machine.wait_for_unit('x')", &one), vec![0]);
        assert_eq!(early_starts("machine.is_up()", &one), Vec::<usize>::new());
        // nixpkgs' form of a name that starts with a digit.
        let digits = vec!["1node".to_string(), "x".to_string()];
        assert_eq!(early_starts("_node.succeed('true')", &digits), vec![0]);
    }

    #[test]
    fn the_marked_methods_are_read() {
        for m in ["succeed", "wait_for_unit", "stop_job", "connect"] {
            assert!(starts_its_machine(m), "{m}");
        }
        for m in ["", "#", "start", "is_up", "The", "_starts_machine"] {
            assert!(!starts_its_machine(m), "{m}");
        }
        // tests/python/test_api.py checks that they are exactly these.
        assert_eq!(starting_methods().count(), 18);
    }

    /// The Python client binds the same names (`PYTHONPATH=python/`).
    #[test]
    fn script_names_are_the_clients() {
        let names = ["my-server", "1node", "a.b", "ü", "x_y", "", "9", "Ab-1.ü_z"];
        let program = "import json, sys\n\
                       from nix_vmtest.driver import identifier_name, pythonize_name\n\
                       print(json.dumps([[pythonize_name(n), identifier_name(n)] \
                       for n in json.loads(sys.argv[1])]))";
        let out = std::process::Command::new("python3")
            .args(["-c", program, &serde_json::to_string(&names).unwrap()])
            .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python: Vec<[String; 2]> = serde_json::from_slice(&out.stdout).unwrap();
        let rust: Vec<[String; 2]> = names.iter().map(|n| script_names(n)).collect();
        assert_eq!(rust, python);
    }
}
