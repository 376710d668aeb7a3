//! nixpkgs' driver configuration: the `driverConfiguration.json` that
//! `nixos/lib/testing/driver-configuration.nix` writes and
//! `nixos-test-driver --config` reads, turned into a [`TestSpec`], the
//! global timeout and the test script. And the test script as nixpkgs'
//! drivers have been given it: a file, or (`testScript` up to nixpkgs
//! 20.09) the script's text itself.
//!
//! ```json
//! { "vms": { "server": { "name": "server",
//!                        "start_script": "/nix/store/…-nixos-vm/bin/run-server-vm" } },
//!   "containers": {}, "vlans": [1], "global_timeout": 3600,
//!   "enable_ssh_backdoor": false, "test_script": "/nix/store/…-test-script" }
//! ```
//!
//! A machine is named by its key in `vms` (as in nixpkgs), not by its start
//! script's file name, which carries the node's host name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::spec::{MachineSpec, TestSpec};

/// The fields nixpkgs' configuration has (nixpkgs 26.11), in its order.
pub const FIELDS: &[&str] = &[
    "vms",
    "containers",
    "vlans",
    "global_timeout",
    "enable_ssh_backdoor",
    "test_script",
];

/// Why a driver configuration cannot be used. Each names the file, the
/// field and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the driver configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the driver configuration {path} is not JSON: {source}; it is the driverConfiguration.json that nixpkgs' nixos/lib/testing/driver-configuration.nix writes")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the driver configuration {path}: field `{field}` is missing; {fix}")]
    Missing {
        path: PathBuf,
        field: String,
        fix: String,
    },
    #[error("the driver configuration {path}: field `{field}` must be {expected}, not {found}")]
    Type {
        path: PathBuf,
        field: String,
        expected: String,
        found: String,
    },
    #[error("the driver configuration {path}: unknown field `{field}`; this driver knows {known} (nixpkgs 26.11's). Remove it, or update nix-vmtest if a newer nixpkgs writes it")]
    Unknown {
        path: PathBuf,
        field: String,
        known: String,
    },
    #[error("the driver configuration {path}: field `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("the driver configuration {path}: field `{field}` asks for {what}, which nix-vmtest does not support: {why}")]
    Unsupported {
        path: PathBuf,
        field: String,
        what: String,
        why: String,
    },
    #[error("the driver configuration {path}: field `test_script` names no test script: {source}")]
    TestScript {
        path: PathBuf,
        source: ScriptValueError,
    },
}

/// Why a value names no test script (see [`TestScript::from_value`]).
#[derive(Debug, thiserror::Error)]
pub enum ScriptValueError {
    /// Something other than a file is there (a directory, say).
    #[error("{} is not a file", path.display())]
    NotAFile { path: PathBuf },
    /// Nothing can be found there: the value is one line, so it is not
    /// the script's text either.
    #[error("{}: {source} (give the test script's file, or its text, which spans lines)", path.display())]
    NoFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The test script: a file, or its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestScript {
    File(PathBuf),
    Inline(String),
}

impl TestScript {
    /// Reads a value that names the script's file or holds the script:
    /// a file when one exists there; otherwise text with a line break is
    /// the script itself (nixpkgs up to 20.09 put it in `testScript` so;
    /// a script written in Nix ends with one). Anything else names a file
    /// that does not exist: the error says which.
    pub fn from_value(value: &str) -> Result<TestScript, ScriptValueError> {
        let path = PathBuf::from(value);
        if !value.contains('\n') {
            return match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(TestScript::File(path)),
                Ok(_) => Err(ScriptValueError::NotAFile { path }),
                Err(source) => Err(ScriptValueError::NoFile { path, source }),
            };
        }
        Ok(TestScript::Inline(value.to_string()))
    }
}

/// What a driver configuration says.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The machines (`vms`) and `vlans`.
    pub spec: TestSpec,
    /// `global_timeout`.
    pub global_timeout: Duration,
    /// `test_script`.
    pub test_script: TestScript,
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b} (a boolean)"),
        Value::Number(n) => format!("{n} (a number)"),
        Value::String(s) if s.len() <= 60 => format!("{s:?} (a string)"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The checks, with the file's path for every message.
struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn type_error(&self, field: &str, expected: &str, found: &Value) -> ConfigError {
        ConfigError::Type {
            path: self.path.to_path_buf(),
            field: field.into(),
            expected: expected.into(),
            found: kind(found),
        }
    }

    fn invalid(&self, field: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            problem,
        }
    }

    fn required<'v>(
        &self,
        obj: &'v Map<String, Value>,
        prefix: &str,
        field: &str,
        fix: &str,
    ) -> Result<&'v Value, ConfigError> {
        obj.get(field).ok_or_else(|| ConfigError::Missing {
            path: self.path.to_path_buf(),
            field: format!("{prefix}{field}"),
            fix: fix.into(),
        })
    }

    fn only_known(
        &self,
        obj: &Map<String, Value>,
        prefix: &str,
        known: &[&str],
    ) -> Result<(), ConfigError> {
        match obj.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ConfigError::Unknown {
                path: self.path.to_path_buf(),
                field: format!("{prefix}{k}"),
                known: known.join(", "),
            }),
            None => Ok(()),
        }
    }

    fn string<'v>(
        &self,
        v: &'v Value,
        field: &str,
        expected: &str,
    ) -> Result<&'v str, ConfigError> {
        v.as_str()
            .ok_or_else(|| self.type_error(field, expected, v))
    }

    fn object<'v>(
        &self,
        v: &'v Value,
        field: &str,
        expected: &str,
    ) -> Result<&'v Map<String, Value>, ConfigError> {
        v.as_object()
            .ok_or_else(|| self.type_error(field, expected, v))
    }

    fn machine(&self, name: &str, node: &Value) -> Result<MachineSpec, ConfigError> {
        let field = format!("vms.{name}");
        let obj = self.object(
            node,
            &field,
            "an object { \"name\": …, \"start_script\": … }",
        )?;
        self.only_known(obj, &format!("{field}."), &["name", "start_script"])?;
        if let Some(n) = obj.get("name") {
            let n = self.string(n, &format!("{field}.name"), "the machine's name (a string)")?;
            if n != name {
                return Err(self.invalid(
                    &format!("{field}.name"),
                    format!("is {n:?}, but the machine is named {name:?} by its key in `vms` (nixpkgs writes the key there): make them equal"),
                ));
            }
        }
        let script_field = format!("{field}.start_script");
        let script = self.required(
            obj,
            &format!("{field}."),
            "start_script",
            "it names the machine's NixOS start script (config.system.build.vm's bin/run-<host>-vm)",
        )?;
        let script = self.string(script, &script_field, "a path (a string)")?;
        if script.is_empty() {
            return Err(self.invalid(
                &script_field,
                "is empty: give the machine's start script".into(),
            ));
        }
        let script = Path::new(script);
        if !script.exists() {
            return Err(self.invalid(
                &script_field,
                format!(
                    "names {}, which does not exist: build the test's driver (it builds the nodes), or fix the path",
                    script.display()
                ),
            ));
        }
        Ok(MachineSpec {
            name: name.to_string(),
            // Relative paths from here: QEMU runs in the machine's state dir.
            start_script: Some(std::path::absolute(script).unwrap_or_else(|_| script.into())),
            image: None,
            snapshot: None,
            peer: None,
        })
    }

    fn read(&self, v: &Value) -> Result<DriverConfig, ConfigError> {
        let top = self.object(
            v,
            "(top level)",
            "an object { \"vms\": …, \"vlans\": …, \"global_timeout\": …, \"test_script\": … }",
        )?;
        self.only_known(top, "", FIELDS)?;
        let whole = "nixpkgs' driver configuration has vms, containers, vlans, global_timeout, \
                     enable_ssh_backdoor and test_script (nixos/lib/testing/driver-configuration.nix)";

        let vms = self.required(top, "", "vms", whole)?;
        let vms = self.object(
            vms,
            "vms",
            "an object of machines { \"<name>\": { \"start_script\": … } }",
        )?;
        let machines = vms
            .iter()
            .map(|(name, node)| self.machine(name, node))
            .collect::<Result<Vec<_>, _>>()?;

        if let Some(c) = top.get("containers") {
            let c = self.object(c, "containers", "an object of containers (empty: {})")?;
            if !c.is_empty() {
                let names: Vec<&str> = c.keys().map(String::as_str).collect();
                return Err(ConfigError::Unsupported {
                    path: self.path.to_path_buf(),
                    field: "containers".into(),
                    what: format!("systemd-nspawn containers ({})", names.join(", ")),
                    why: "this driver runs QEMU machines only; make them `nodes` of the test"
                        .into(),
                });
            }
        }

        let vlans_v = self.required(top, "", "vlans", whole)?;
        let list = vlans_v.as_array().ok_or_else(|| {
            self.type_error("vlans", "a list of VLAN numbers, like [1, 2]", vlans_v)
        })?;
        let mut vlans = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let field = format!("vlans[{i}]");
            let n = v
                .as_u64()
                .ok_or_else(|| self.type_error(&field, "a VLAN number (0 to 255)", v))?;
            if n > 255 {
                return Err(self.invalid(
                    &field,
                    format!(
                        "is {n}, but VLANs are 0 to 255 (the third byte of 192.168.<vlan>.<node>)"
                    ),
                ));
            }
            vlans.push(n as u32);
        }

        let timeout = self.required(top, "", "global_timeout", whole)?;
        let global_timeout = timeout.as_u64().ok_or_else(|| {
            self.type_error(
                "global_timeout",
                "a whole number of seconds (globalTimeout)",
                timeout,
            )
        })?;

        if let Some(b) = top.get("enable_ssh_backdoor") {
            let on = b
                .as_bool()
                .ok_or_else(|| self.type_error("enable_ssh_backdoor", "true or false", b))?;
            if on {
                return Err(ConfigError::Unsupported {
                    path: self.path.to_path_buf(),
                    field: "enable_ssh_backdoor".into(),
                    what: "the SSH backdoor (sshBackdoor.enable)".into(),
                    why: "it has no vhost-device-vsock; set sshBackdoor.enable = false, and use the \
                          interactive driver (.driverInteractive, machine.shell_interact()) for a shell"
                        .into(),
                });
            }
        }

        let script = self.required(top, "", "test_script", whole)?;
        let script = self.string(script, "test_script", "the test script's path (a string)")?;
        let test_script =
            TestScript::from_value(script).map_err(|source| ConfigError::TestScript {
                path: self.path.to_path_buf(),
                source,
            })?;

        Ok(DriverConfig {
            spec: TestSpec { vlans, machines },
            global_timeout: Duration::from_secs(global_timeout),
            test_script,
        })
    }
}

impl DriverConfig {
    /// Reads and checks a driver configuration file.
    pub fn from_file(path: &Path) -> Result<DriverConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Reader { path }.read(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("run-server-vm"), "#!/bin/sh\n").unwrap();
            std::fs::write(dir.path().join("test-script"), "start_all()\n").unwrap();
            Files { dir }
        }

        fn p(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        /// Writes `json` (with `$D` for the directory) and loads it.
        fn load(&self, json: &str) -> Result<DriverConfig, String> {
            let path = self.dir.path().join("driverConfiguration.json");
            std::fs::write(&path, json.replace("$D", &self.p(""))).unwrap();
            DriverConfig::from_file(&path).map_err(|e| e.to_string())
        }

        fn good(&self) -> serde_json::Value {
            serde_json::json!({
                "vms": {"server": {"name": "server", "start_script": self.p("run-server-vm")}},
                "containers": {},
                "vlans": [1, 2],
                "global_timeout": 60,
                "enable_ssh_backdoor": false,
                "test_script": self.p("test-script"),
            })
        }

        fn with(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> Result<DriverConfig, String> {
            let mut v = self.good();
            edit(v.as_object_mut().unwrap());
            self.load(&v.to_string())
        }
    }

    #[test]
    fn nixpkgs_configuration_is_read() {
        let f = Files::new();
        let c = f.with(|_| {}).unwrap();
        assert_eq!(c.spec.vlans, vec![1, 2]);
        assert_eq!(c.spec.machines.len(), 1);
        assert_eq!(c.spec.machines[0].name, "server");
        assert_eq!(
            c.spec.machines[0].start_script.as_deref(),
            Some(Path::new(&f.p("run-server-vm")))
        );
        assert_eq!(c.global_timeout, Duration::from_secs(60));
        assert_eq!(c.test_script, TestScript::File(f.p("test-script").into()));
        // Older configurations without containers and the backdoor flag.
        let c = f
            .with(|m| {
                m.remove("containers");
                m.remove("enable_ssh_backdoor");
                m.insert("test_script".into(), "start_all()\n".into());
            })
            .unwrap();
        assert_eq!(c.test_script, TestScript::Inline("start_all()\n".into()));
    }

    #[test]
    fn malformed_configurations_name_the_file_and_the_field() {
        let f = Files::new();
        let err = |edit: &dyn Fn(&mut Map<String, Value>)| f.with(edit).unwrap_err();
        let e = f.load("{\"vms\": ").unwrap_err();
        assert!(e.contains("driverConfiguration.json is not JSON"), "{e}");
        let e = f.load("[]").unwrap_err();
        assert!(e.contains("must be an object"), "{e}");
        let e = err(&|m| {
            m.remove("vms");
        });
        assert!(
            e.contains("driverConfiguration.json") && e.contains("field `vms` is missing"),
            "{e}"
        );
        let e = err(&|m| {
            m.insert("vlans".into(), "1".into());
        });
        assert!(
            e.contains("field `vlans` must be a list of VLAN numbers"),
            "{e}"
        );
        let e = err(&|m| {
            m.insert("vlans".into(), serde_json::json!([1, 300]));
        });
        assert!(e.contains("field `vlans[1]` is 300"), "{e}");
        let e = err(&|m| {
            m.insert("global_timeout".into(), serde_json::json!(-1));
        });
        assert!(
            e.contains("field `global_timeout` must be a whole number"),
            "{e}"
        );
        let e = err(&|m| {
            m.insert("extra".into(), serde_json::json!(1));
        });
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = err(&|m| {
            m.insert(
                "vms".into(),
                serde_json::json!({"server": {"start_script": 3}}),
            );
        });
        assert!(
            e.contains("field `vms.server.start_script` must be a path"),
            "{e}"
        );
        let e = err(&|m| {
            m.insert(
                "vms".into(),
                serde_json::json!({"server": {"name": "client", "start_script": "/bin/sh"}}),
            );
        });
        assert!(e.contains("`vms.server.name` is \"client\""), "{e}");
        let e = err(&|m| {
            m.insert(
                "vms".into(),
                serde_json::json!({"server": {"start_script": "/no/such/run-server-vm"}}),
            );
        });
        assert!(
            e.contains("vms.server.start_script") && e.contains("/no/such/run-server-vm"),
            "{e}"
        );
        let e = err(&|m| {
            m.insert("test_script".into(), "/no/such/script".into());
        });
        assert!(
            e.contains("field `test_script`") && e.contains("/no/such/script"),
            "{e}"
        );
    }

    #[test]
    fn what_is_not_supported_is_refused_with_the_reason() {
        let f = Files::new();
        let e = f
            .with(|m| {
                m.insert(
                    "containers".into(),
                    serde_json::json!({"c1": {"name": "c1", "start_script": "/bin/sh"}}),
                );
            })
            .unwrap_err();
        assert!(
            e.contains("systemd-nspawn containers (c1)") && e.contains("QEMU machines only"),
            "{e}"
        );
        let e = f
            .with(|m| {
                m.insert("enable_ssh_backdoor".into(), true.into());
            })
            .unwrap_err();
        assert!(e.contains("sshBackdoor.enable = false"), "{e}");
    }

    #[test]
    fn a_script_value_is_a_file_or_text_spanning_lines() {
        let f = Files::new();
        assert_eq!(
            TestScript::from_value(&f.p("test-script")).unwrap(),
            TestScript::File(f.p("test-script").into())
        );
        assert_eq!(
            TestScript::from_value("start_all()\nmachine.succeed('true')\n").unwrap(),
            TestScript::Inline("start_all()\nmachine.succeed('true')\n".into())
        );
        let missing = TestScript::from_value("start_all()").unwrap_err();
        assert!(matches!(missing, ScriptValueError::NoFile { .. }));
        assert!(
            missing.to_string().starts_with("start_all(): "),
            "{missing}"
        );
        let dir = TestScript::from_value(&f.p("")).unwrap_err();
        assert!(matches!(dir, ScriptValueError::NotAFile { .. }));
        assert!(dir.to_string().ends_with("is not a file"), "{dir}");
    }
}
