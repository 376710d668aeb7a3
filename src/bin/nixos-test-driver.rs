//! `nixos-test-driver`: runs a NixOS-style VM test, with nixpkgs' command
//! line: today's (`--config driverConfiguration.json`, as nixpkgs'
//! `nixos/lib/testing/driver.nix` and `run.nix` call it) and the older one
//! (`--start-scripts`, `--vlans`, the test script as the last argument, or
//! the environment variables `startScripts`, `vlans`, `testScript`,
//! `globalTimeout`). Long options may be shortened while unambiguous, as
//! with nixpkgs' argparse.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use nix_vmtest::config::{ConfigError, DriverConfig, ScriptValueError, TestScript};
use nix_vmtest::driver::{private_temp_dir, temp_base, Driver, DriverError, RunOptions};
use nix_vmtest::log::{Level, Log};
use nix_vmtest::machine::qemu::AccelChoice;
use nix_vmtest::script::python::{python, python_path};
use nix_vmtest::spec::{SpecError, TestSpec};

/// Runs a NixOS VM test script against QEMU machines.
#[derive(Parser, Debug)]
#[command(name = "nixos-test-driver", version, infer_long_args = true)]
struct Args {
    /// nixpkgs' driver configuration (driverConfiguration.json): the
    /// machines, VLANs, global timeout and test script.
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Start a Python REPL with the machines instead of running the script.
    #[arg(short = 'I', long, overrides_with = "no_interactive")]
    interactive: bool,
    /// Run the script (the default; undoes --interactive).
    #[arg(long = "no-interactive", overrides_with = "interactive")]
    no_interactive: bool,
    /// Keep machine state (disk images) between runs, in $TMPDIR/vm-state-MACHINE.
    #[arg(short = 'K', long = "keep-machine-state", visible_aliases = ["keep-vm-state", "keep_vm_state"])]
    keep_state: bool,
    /// Where screenshots, copied files, logs go [default: the current directory].
    #[arg(
        short = 'o',
        long = "output-directory",
        visible_alias = "output_directory",
        env = "out"
    )]
    output_directory: Option<PathBuf>,
    /// Write a JUnit XML report (one case per subtest) here; a relative
    /// path is taken from the output directory, as in nixpkgs.
    #[arg(long = "junit-xml", visible_alias = "junit_xml")]
    junit_xml: Option<PathBuf>,
    /// How much the driver says: debug, info (the default), warning, error.
    #[arg(long = "log-level", env = "logLevel", value_enum)]
    log_level: Option<Level>,
    /// nixpkgs' enableDebugHook: not supported (the driver says why and stops).
    #[arg(
        long = "debug-hook-attach",
        alias = "debug-hook",
        value_name = "COMMAND"
    )]
    debug_hook_attach: Option<String>,
    /// Also write the log to this file.
    #[arg(long = "log-file")]
    log_file: Option<PathBuf>,
    /// End everything after this many seconds [default: 3600].
    #[arg(
        long = "global-timeout",
        visible_alias = "global_timeout",
        env = "globalTimeout"
    )]
    global_timeout: Option<u64>,
    /// NixOS start scripts (`run-<name>-vm`).
    #[arg(long = "start-scripts", visible_aliases = ["vm-start-scripts", "start_scripts"], env = "startScripts", num_args = 0.., value_delimiter = ' ')]
    start_scripts: Vec<PathBuf>,
    /// VLAN numbers to create switches for.
    #[arg(long, env = "vlans", num_args = 0.., value_delimiter = ' ')]
    vlans: Vec<u32>,
    /// A nodes description (JSON, see docs/contracts.md) with start scripts and images.
    #[arg(long = "nodes-json", env = "nodesJson")]
    nodes_json: Option<PathBuf>,
    /// Accelerator: auto (KVM where it really works, else TCG), kvm, tcg.
    #[arg(long, env = "NIX_VMTEST_ACCEL", value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Only check the script (syntax, machine names) and exit; boots nothing.
    #[arg(long)]
    check: bool,
    /// Boot every machine, wait until it has booted (for systemd, until
    /// the boot's jobs are done), save it into DIR/<machine> and exit; runs
    /// no script.
    #[arg(long = "save-snapshots", value_name = "DIR", conflicts_with_all = ["check", "interactive"])]
    save_snapshots: Option<PathBuf>,
    /// Restore machines from the snapshots in DIR/<machine> instead of
    /// booting them (a snapshot that cannot be used is logged, and the
    /// machine boots).
    #[arg(long, value_name = "DIR", env = "NIX_VMTEST_SNAPSHOTS")]
    snapshots: Option<PathBuf>,
    /// Restore machine MACHINE from the snapshot in DIR (as
    /// `--save-snapshots` makes it: `<dir>/<machine>`) instead of booting
    /// it; may be given once per machine, and wins over --snapshots. This
    /// is how a test's `.driver` names each node's snapshot with
    /// `--config`, whose file has no place for one.
    #[arg(long = "snapshot", value_name = "MACHINE=DIR", value_parser = parse_snapshot)]
    snapshot: Vec<(String, PathBuf)>,
    /// The test script: a Python file (or, in $testScript, its text).
    #[arg(env = "testScript")]
    test_script: Option<String>,
}

/// Why the driver could not run the test: what `error: ...` says, with
/// exit status 2.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(
        "--config {} gives the machines, VLANs, global timeout and test script: \
         do not also give {flag}",
        config.display()
    )]
    ConfigAndLegacy { config: PathBuf, flag: &'static str },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the test script {0}")]
    TestScript(#[from] ScriptValueError),
    #[error("cannot write the XML log $LOGFILE={}: {source}", path.display())]
    XmlLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--debug-hook-attach (nixpkgs' enableDebugHook) is not supported: this \
         driver has no breakpoint hook that keeps a failed test's sandbox open to \
         attach to. Set enableDebugHook = false; to debug a test, run its \
         .driverInteractive (-I)"
    )]
    DebugHook,
    #[error("--check needs the test script")]
    CheckWithoutScript,
    #[error("cannot write the script to check to {}: {source}", path.display())]
    CheckFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {} to check the script: {source}. Set NIX_VMTEST_PYTHON to a python3.", python.display())]
    Checker {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {} for the log file: {source}", dir.display())]
    LogDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the log file {}: {source}", path.display())]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write the test script to {}: {source}", path.display())]
    ScriptText {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--snapshot {name}=...: there is no machine `{name}` in this test (its machines: {known})"
    )]
    SnapshotMachine { name: String, known: String },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// `--snapshot MACHINE=DIR`.
fn parse_snapshot(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "`{arg}` is not MACHINE=DIR (a machine's name and its snapshot directory)"
        )),
    }
}

/// The options of the older command line, which `--config` replaces:
/// argument id, how it is written, its environment variable.
const LEGACY: &[(&str, &str, &str)] = &[
    ("start_scripts", "--start-scripts", "startScripts"),
    ("vlans", "--vlans", "vlans"),
    ("nodes_json", "--nodes-json", "nodesJson"),
    ("global_timeout", "--global-timeout", "globalTimeout"),
    ("test_script", "the test script argument", "testScript"),
];

fn main() -> ExitCode {
    // The builder of a test's `.driver` (see `plugin::wrapper`).
    if let Some(code) = nix_vmtest::plugin::wrapper::run_if_requested() {
        return code;
    }
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let log = Log::new();
    let result = run(args, &matches, log.clone());
    let code = match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log.info(&format!("error: {e}"));
            ExitCode::from(2)
        }
    };
    log.finish();
    code
}

/// The machines, VLANs, timeout and script, from `--config` or from the
/// older options.
struct Test {
    spec: TestSpec,
    global_timeout: Duration,
    script: Option<TestScript>,
}

fn from_config(path: &Path, matches: &ArgMatches, log: &Log) -> Result<Test, CliError> {
    for &(id, flag, env) in LEGACY {
        match matches.value_source(id) {
            Some(ValueSource::CommandLine) => {
                return Err(CliError::ConfigAndLegacy {
                    config: path.to_path_buf(),
                    flag,
                })
            }
            Some(ValueSource::EnvVariable) => log.at(
                Level::Warning,
                &format!(
                    "ignoring ${env} from the environment: --config {} gives what it would",
                    path.display()
                ),
            ),
            _ => {}
        }
    }
    let config = DriverConfig::from_file(path)?;
    Ok(Test {
        spec: config.spec,
        global_timeout: config.global_timeout,
        script: Some(config.test_script),
    })
}

fn from_legacy(args: &Args) -> Result<Test, CliError> {
    // A derivation that passes its nodes as a file (`passAsFile`) has
    // `$nodesJsonPath`, as the snapshot derivations do.
    let passed = std::env::var_os("nodesJsonPath").map(PathBuf::from);
    let mut spec = match args.nodes_json.as_ref().or(passed.as_ref()) {
        Some(p) => TestSpec::from_json_file(p)?,
        None => TestSpec::default(),
    };
    let from_scripts = TestSpec::from_start_scripts(&args.start_scripts, &args.vlans)?;
    spec.machines.extend(from_scripts.machines);
    spec.vlans.extend(from_scripts.vlans);
    let script = match &args.test_script {
        Some(s) => Some(TestScript::from_value(s)?),
        None => None,
    };
    Ok(Test {
        spec,
        global_timeout: Duration::from_secs(args.global_timeout.unwrap_or(3600)),
        script,
    })
}

/// A file holding the script's text, for `--check` (removed on drop).
struct ScriptFile(PathBuf);

impl Drop for ScriptFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn run(args: Args, matches: &ArgMatches, log: Log) -> Result<i32, CliError> {
    if let Some(level) = args.log_level {
        log.set_level(level);
    }
    if let Some(f) = std::env::var_os("LOGFILE").filter(|f| !f.is_empty()) {
        let f = PathBuf::from(f);
        log.xml_to(&f)
            .map_err(|source| CliError::XmlLog { path: f, source })?;
    }
    if std::env::args().any(|a| a == "--keep-vm-state") {
        log.at(
            Level::Warning,
            "??? Warning (DeprecationWarning): The flag '--keep-vm-state' is deprecated. \
             Use '--keep-machine-state' instead.",
        );
    }
    if args.debug_hook_attach.is_some() {
        return Err(CliError::DebugHook);
    }
    let interactive = args.interactive && !args.no_interactive;
    let test = match args.config.clone() {
        Some(path) => from_config(&path, matches, &log)?,
        None => from_legacy(&args)?,
    };
    let mut spec = test.spec.normalize()?;
    for (name, dir) in &args.snapshot {
        let Some(m) = spec
            .machines
            .iter_mut()
            .find(|m| &m.name == name && !m.is_peer())
        else {
            let names: Vec<&str> = spec.machines.iter().map(|m| m.name.as_str()).collect();
            return Err(CliError::SnapshotMachine {
                name: name.clone(),
                known: names.join(", "),
            });
        };
        m.snapshot = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    }

    if args.check {
        let (script, _file) = match test.script.as_ref().ok_or(CliError::CheckWithoutScript)? {
            TestScript::File(p) => (p.clone(), None),
            TestScript::Inline(text) => {
                let base = temp_base();
                let dir = private_temp_dir(&base, "nix-vmtest-check.").map_err(|source| {
                    CliError::CheckFile {
                        path: base.join("nix-vmtest-check.XXXXXX"),
                        source,
                    }
                })?;
                let file = ScriptFile(dir.join("test-script"));
                std::fs::write(&file.0, text).map_err(|source| CliError::CheckFile {
                    path: file.0.clone(),
                    source,
                })?;
                (file.0.clone(), Some(file))
            }
        };
        let names: Vec<&str> = spec.machines.iter().map(|m| m.name.as_str()).collect();
        let python = python();
        let status = std::process::Command::new(&python)
            .args(["-m", "nix_vmtest.check", "--machines", &names.join(",")])
            .arg(script)
            .env("PYTHONPATH", python_path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .status()
            .map_err(|source| CliError::Checker { python, source })?;
        return Ok(status.code().unwrap_or(1));
    }

    if !args.keep_state {
        log.at(
            Level::Info,
            "Machine state will be reset. To keep it, pass --keep-machine-state",
        );
    }
    if let Some(f) = &args.log_file {
        if let Some(dir) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CliError::LogDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        log.tee_to(f).map_err(|source| CliError::LogFile {
            path: f.clone(),
            source,
        })?;
    }
    // Absolute: QEMU (screendump) resolves paths from its own directory.
    let cwd = std::env::current_dir().map_err(CliError::Cwd)?;
    let out_dir = match args.output_directory {
        Some(d) => cwd.join(d),
        None => cwd.clone(),
    };
    let (script_file, script_text) = match test.script {
        Some(TestScript::File(p)) => (Some(p), None),
        Some(TestScript::Inline(text)) => (None, Some(text)),
        None => (None, None),
    };
    let opts = RunOptions {
        spec,
        test_script: script_file,
        // As nixpkgs: taken from the output directory (an absolute path stays).
        junit_xml: args.junit_xml.map(|j| out_dir.join(j)),
        out_dir,
        log_file: args.log_file,
        global_timeout: test.global_timeout,
        interactive,
        keep_state: args.keep_state,
        accel: args.accel,
        snapshots: args.snapshots.map(|d| cwd.join(d)),
    };
    let save_to = args.save_snapshots.map(|d| cwd.join(d));
    // One thread: child processes get PR_SET_PDEATHSIG, which follows the
    // thread that spawned them, so every spawn happens on the main thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let code = rt.block_on(async move {
        let mut driver = Driver::new(opts, log).await?;
        if let Some(dir) = save_to {
            driver.save_snapshots(&dir).await?;
            return Ok(0);
        }
        if let Some(text) = script_text {
            // The script's text goes into a file in the run's state dir
            // (removed with it), which the script host reads.
            let path = driver.state_dir().join("test-script");
            std::fs::write(&path, text).map_err(|source| CliError::ScriptText {
                path: path.clone(),
                source,
            })?;
            driver.opts.test_script = Some(path);
        }
        let code = driver.run().await?;
        drop(driver);
        Ok::<i32, CliError>(code)
    })?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("nixos-test-driver").chain(args.iter().copied()))
    }

    #[test]
    fn the_last_of_interactive_and_no_interactive_wins() {
        let a = parse(&["-c", "x", "--interactive", "--no-interactive"]).unwrap();
        assert!(!a.interactive && a.no_interactive);
        let a = parse(&["-c", "x", "--no-interactive", "-I"]).unwrap();
        assert!(a.interactive && !a.no_interactive);
    }

    #[test]
    fn long_options_may_be_shortened_as_with_argparse() {
        let a = parse(&[
            "--conf",
            "x",
            "--debug-hook=y",
            "--output_dir",
            "o",
            "--junit",
            "j",
        ])
        .unwrap();
        assert_eq!(a.config, Some(PathBuf::from("x")));
        assert_eq!(a.debug_hook_attach.as_deref(), Some("y"));
        assert_eq!(a.output_directory, Some(PathBuf::from("o")));
        assert_eq!(a.junit_xml, Some(PathBuf::from("j")));
        let a = parse(&["--keep-machine", "--log-level", "debug"]).unwrap();
        assert!(a.keep_state);
        assert_eq!(a.log_level, Some(Level::Debug));
    }

    #[test]
    fn snapshot_takes_a_machine_and_a_directory() {
        let a = parse(&["-c", "x", "--snapshot", "a=/s/a", "--snapshot=b=/s/b=c"]).unwrap();
        assert_eq!(
            a.snapshot,
            vec![
                ("a".to_string(), PathBuf::from("/s/a")),
                ("b".to_string(), PathBuf::from("/s/b=c"))
            ]
        );
        for bad in ["a", "=/s", "a="] {
            let e = parse(&["--snapshot", bad]).unwrap_err().to_string();
            assert!(e.contains("is not MACHINE=DIR"), "{bad}: {e}");
        }
    }
}
