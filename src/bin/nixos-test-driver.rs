//! `nixos-test-driver`: runs a NixOS-style VM test (nixpkgs' command line).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use nix_vmtest::driver::{Driver, RunOptions};
use nix_vmtest::log::Log;
use nix_vmtest::machine::qemu::AccelChoice;
use nix_vmtest::spec::TestSpec;

/// Runs a NixOS VM test script against QEMU machines.
#[derive(Parser, Debug)]
#[command(name = "nixos-test-driver", version)]
struct Args {
    /// Start a Python REPL with the machines instead of running the script.
    #[arg(short = 'I', long)]
    interactive: bool,
    /// Keep machine state (disk images) between runs, in $TMPDIR/vm-state-MACHINE.
    #[arg(short = 'K', long = "keep-machine-state", visible_aliases = ["keep-vm-state", "keep_vm_state"])]
    keep_state: bool,
    /// Where screenshots, copied files, logs go.
    #[arg(
        short = 'o',
        long = "output-directory",
        visible_alias = "output_directory",
        env = "out"
    )]
    output_directory: Option<PathBuf>,
    /// Write a JUnit XML report (one case per subtest) here.
    #[arg(long = "junit-xml", visible_alias = "junit_xml")]
    junit_xml: Option<PathBuf>,
    /// Also write the log to this file.
    #[arg(long = "log-file")]
    log_file: Option<PathBuf>,
    /// End everything after this many seconds.
    #[arg(
        long = "global-timeout",
        visible_alias = "global_timeout",
        env = "globalTimeout",
        default_value_t = 3600
    )]
    global_timeout: u64,
    /// NixOS start scripts (`run-<name>-vm`).
    #[arg(long = "start-scripts", visible_aliases = ["vm-start-scripts", "start_scripts"], env = "startScripts", num_args = 0.., value_delimiter = ' ')]
    start_scripts: Vec<PathBuf>,
    /// VLAN numbers to create switches for.
    #[arg(long, env = "vlans", num_args = 0.., value_delimiter = ' ')]
    vlans: Vec<u32>,
    /// A nodes description (JSON, see ARCHITECTURE.md) with start scripts and images.
    #[arg(long = "nodes-json", env = "nodesJson")]
    nodes_json: Option<PathBuf>,
    /// Accelerator: auto (KVM where it really works, else TCG), kvm, tcg.
    #[arg(long, env = "NIX_VMTEST_ACCEL", value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Only check the script (syntax, machine names) and exit; boots nothing.
    #[arg(long)]
    check: bool,
    /// The test script (a Python file).
    #[arg(env = "testScript")]
    test_script: Option<PathBuf>,
}

fn main() -> ExitCode {
    // The builder of a test's `.driver` (see `plugin::wrapper`).
    if let Some(code) = nix_vmtest::plugin::wrapper::run_if_requested() {
        return code;
    }
    let args = Args::parse();
    let log = Log::new();
    match run(args, log.clone()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log.info(&format!("error: {e}"));
            ExitCode::from(2)
        }
    }
}

fn run(args: Args, log: Log) -> Result<i32, Box<dyn std::error::Error>> {
    let mut spec = match &args.nodes_json {
        Some(p) => TestSpec::from_json_file(p)?,
        None => TestSpec::default(),
    };
    let from_scripts = TestSpec::from_start_scripts(&args.start_scripts, &args.vlans)?;
    spec.machines.extend(from_scripts.machines);
    spec.vlans.extend(from_scripts.vlans);
    let spec = spec.normalize()?;

    if args.check {
        let script = args
            .test_script
            .as_ref()
            .ok_or("--check needs the test script")?;
        let names: Vec<&str> = spec.machines.iter().map(|m| m.name.as_str()).collect();
        let status = std::process::Command::new(Driver::python())
            .args(["-m", "nix_vmtest.check", "--machines", &names.join(",")])
            .arg(script)
            .env("PYTHONPATH", Driver::python_path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .status()?;
        return Ok(status.code().unwrap_or(1));
    }

    if let Some(f) = &args.log_file {
        if let Some(dir) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {} for the log file: {e}", dir.display()))?;
        }
        log.tee_to(f)
            .map_err(|e| format!("cannot write the log file {}: {e}", f.display()))?;
    }
    // Absolute: QEMU (screendump) resolves paths from its own directory.
    let cwd = std::env::current_dir()?;
    let out_dir = match args.output_directory {
        Some(d) => cwd.join(d),
        None => cwd,
    };
    let opts = RunOptions {
        spec,
        test_script: args.test_script,
        out_dir,
        junit_xml: args.junit_xml,
        log_file: args.log_file,
        global_timeout: Duration::from_secs(args.global_timeout),
        interactive: args.interactive,
        keep_state: args.keep_state,
        accel: args.accel,
    };
    // One thread: child processes get PR_SET_PDEATHSIG, which follows the
    // thread that spawned them, so every spawn happens on the main thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(async move {
        let mut driver = Driver::new(opts, log).await?;
        let code = driver.run().await?;
        drop(driver);
        Ok::<i32, nix_vmtest::driver::DriverError>(code)
    })?;
    Ok(code)
}
