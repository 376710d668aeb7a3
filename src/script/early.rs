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
    let pythonized = |n: &str| -> String {
        n.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
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
        names.iter().position(|n| pythonized(n) == object)
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
}
