//! Starting QEMU: the accelerator choice, the command line (a NixOS start
//! script with the driver's options appended, or one built from an image),
//! and the process group that makes sure nothing outlives the machine.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::spec::{format_mac, mac_address, ImageSpec};

/// The accelerator QEMU runs guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for: `auto` (the default), `kvm` or `tcg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator to use and why, for the log.
#[derive(Debug, Clone)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// Picks KVM only where it really works: `/dev/kvm` opens read-write, speaks
/// API version 12, and is backed by a hardware virtualisation module
/// (`kvm_intel` or `kvm_amd`). Paravirtual KVM modules (`kvm_pvm`, seen on
/// these CI machines) make QEMU abort (`failed to set MSR`) or crawl with
/// NixOS' `-cpu max`, so they count as unusable. Everything else is TCG.
pub fn choose_accel(choice: AccelChoice) -> AccelDecision {
    match choice {
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            reason: "asked for with --accel kvm".into(),
        },
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            reason: "asked for with --accel tcg".into(),
        },
        AccelChoice::Auto => match kvm_usable() {
            Ok(()) => AccelDecision {
                accel: Accel::Kvm,
                reason: "/dev/kvm is usable".into(),
            },
            Err(why) => AccelDecision {
                accel: Accel::Tcg,
                reason: format!("KVM is not usable ({why}); falling back to TCG software emulation, which is slower"),
            },
        },
    }
}

fn kvm_usable() -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != 12 {
        return Err(format!("/dev/kvm reports API version {version}, not 12"));
    }
    let modules = Path::new("/sys/module");
    if modules.join("kvm_pvm").exists() {
        return Err(
            "/dev/kvm is provided by kvm_pvm, a paravirtual KVM on which QEMU aborts or crawls"
                .into(),
        );
    }
    if !modules.join("kvm_intel").exists() && !modules.join("kvm_amd").exists() {
        return Err("neither kvm_intel nor kvm_amd is loaded".into());
    }
    Ok(())
}

/// The sockets and files of one machine the command line refers to.
pub struct Paths<'a> {
    pub monitor: &'a Path,
    pub qmp: &'a Path,
    pub shell: &'a Path,
    /// The control port (stops a running command; see `Shell`).
    pub ctl: &'a Path,
    /// The command port (carries commands to the guest; see `Shell`).
    pub cmd: &'a Path,
}

/// The name of the guest's control port (`/sys/class/virtio-ports/*/name`).
pub const CTL_PORT: &str = "org.nix-vmtest.ctl";

/// The name of the guest's command port.
pub const CMD_PORT: &str = "org.nix-vmtest.cmd";

/// The ports' numbers on the driver's virtio-serial bus (at most 30 there):
/// the guest names their devices `vport<bus>p<nr>`, so the port bootstrap
/// finds them by a glob over `/sys/class/virtio-ports` without reading
/// each port's name (the first command after a boot pays for every
/// file it reads).
pub const CMD_NR: u32 = 30;
/// See [`CMD_NR`].
pub const CTL_NR: u32 = 29;

/// The options the driver appends to every start script, as nixpkgs' driver
/// does, plus the accelerator: a later `-machine accel=tcg` overrides the
/// `accel=kvm:tcg` NixOS start scripts carry.
pub fn driver_args(paths: &Paths<'_>, allow_reboot: bool, accel: Accel) -> Vec<String> {
    let mut args = vec![
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", paths.qmp.display()),
        "-monitor".to_string(),
        format!("unix:{}", paths.monitor.display()),
        "-chardev".to_string(),
        format!("socket,id=shell,path={}", paths.shell.display()),
        "-device".to_string(),
        "virtio-serial,id=vmtserial".to_string(),
        "-device".to_string(),
        "virtconsole,chardev=shell,bus=vmtserial.0".to_string(),
        "-chardev".to_string(),
        format!("socket,id=vmtctl,path={}", paths.ctl.display()),
        "-device".to_string(),
        format!("virtserialport,chardev=vmtctl,id=vmtctlport,bus=vmtserial.0,nr={CTL_NR},name={CTL_PORT}"),
        "-chardev".to_string(),
        format!("socket,id=vmtcmd,path={}", paths.cmd.display()),
        "-device".to_string(),
        format!("virtserialport,chardev=vmtcmd,id=vmtcmdport,bus=vmtserial.0,nr={CMD_NR},name={CMD_PORT}"),
        "-device".to_string(),
        "virtio-rng-pci".to_string(),
        "-serial".to_string(),
        "stdio".to_string(),
        "-display".to_string(),
        "none".to_string(),
    ];
    if !allow_reboot {
        args.push("-no-reboot".to_string());
    }
    if accel == Accel::Tcg {
        args.extend(["-machine".to_string(), "accel=tcg".to_string()]);
    }
    args
}

/// What an image node's QEMU is made of, besides the image itself.
pub struct ImageRun<'a> {
    /// The per-machine qcow2 overlay over the image's disk, if it has one.
    pub overlay: Option<&'a Path>,
    /// The host directory shared as 9p tag `shared`.
    pub shared_dir: &'a Path,
    /// The switch socket of each VLAN the node is on.
    pub vlan_sockets: &'a [(u32, PathBuf)],
    /// 1-based node number (for the MAC addresses).
    pub node: u32,
    /// `vmtest.*` kernel parameters.
    pub network_params: &'a str,
}

/// The QEMU command for an image node (a start script brings its own).
pub fn image_command(qemu: &Path, image: &ImageSpec, run: &ImageRun, accel: Accel) -> Vec<String> {
    let ImageRun {
        overlay,
        shared_dir,
        vlan_sockets,
        node,
        network_params,
    } = *run;
    let mut cmd = vec![
        qemu.display().to_string(),
        "-machine".into(),
        "q35".into(),
        "-cpu".into(),
        if accel == Accel::Kvm { "host" } else { "max" }.into(),
        "-m".into(),
        image.memory.to_string(),
        "-smp".into(),
        image.cpus.to_string(),
        "-nodefaults".into(),
        "-vga".into(),
        "std".into(),
        "-kernel".into(),
        image.kernel.display().to_string(),
        "-initrd".into(),
        image.initrd.display().to_string(),
        "-append".into(),
        format!(
            "console=ttyS0 panic=-1 quiet {}{} {network_params}",
            if overlay.is_some() {
                "root=/dev/vda "
            } else {
                ""
            },
            image.kernel_params
        ),
        "-virtfs".into(),
        format!(
            "local,path={},security_model=none,mount_tag=shared",
            shared_dir.display()
        ),
    ];
    if accel == Accel::Kvm {
        cmd.extend(["-accel".into(), "kvm".into()]);
    }
    if let Some(disk) = overlay {
        cmd.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                disk.display()
            ),
        ]);
    }
    for (v, socket) in vlan_sockets {
        cmd.extend([
            "-netdev".into(),
            format!(
                "stream,id=vlan{v},server=off,addr.type=unix,addr.path={}",
                socket.display()
            ),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=vlan{v},mac={}",
                format_mac(mac_address(*v, node))
            ),
        ]);
    }
    cmd.extend(image.qemu_flags.iter().cloned());
    cmd
}

/// Spawns a machine's start command in its own process group, with stdin
/// and stdout (the serial console) and stderr piped, and `PR_SET_PDEATHSIG`
/// so that the child dies with the driver even if the driver is killed.
/// The caller must spawn from a thread that lives as long as the driver
/// (the death signal follows the spawning thread).
pub fn spawn(argv: &[String], env: &[(String, String)], cwd: &Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `signal` to a whole process group (a start script and the QEMU it
/// started, even when the script's shell did not `exec`).
pub fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
}

/// Finds `qemu-system-x86_64`: `$NIX_VMTEST_QEMU`, then `$PATH`, then `/usr/bin`.
pub fn find_qemu() -> PathBuf {
    if let Some(q) = std::env::var_os("NIX_VMTEST_QEMU") {
        return PathBuf::from(q);
    }
    find_in_path("qemu-system-x86_64")
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
}

/// Looks a program up in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    find_in(&std::env::var_os("PATH")?, name)
}

/// Looks a program up in a `PATH`-style list of directories.
pub fn find_in(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_overrides_the_start_scripts_accelerator_and_reboot_is_opt_in() {
        let p = Paths {
            monitor: Path::new("/s/monitor"),
            qmp: Path::new("/s/qmp"),
            shell: Path::new("/s/shell"),
            ctl: Path::new("/s/ctl"),
            cmd: Path::new("/s/cmd"),
        };
        let args = driver_args(&p, false, Accel::Tcg);
        let joined = args.join(" ");
        assert!(joined.contains("-chardev socket,id=shell,path=/s/shell"));
        assert!(joined.contains(
            "-chardev socket,id=vmtctl,path=/s/ctl -device virtserialport,chardev=vmtctl,id=vmtctlport,bus=vmtserial.0,nr=29,name=org.nix-vmtest.ctl"
        ));
        assert!(joined.contains(
            "-chardev socket,id=vmtcmd,path=/s/cmd -device virtserialport,chardev=vmtcmd,id=vmtcmdport,bus=vmtserial.0,nr=30,name=org.nix-vmtest.cmd"
        ));
        assert!(
            joined.ends_with("-no-reboot -machine accel=tcg"),
            "{joined}"
        );
        let args = driver_args(&p, true, Accel::Kvm).join(" ");
        assert!(!args.contains("-no-reboot") && !args.contains("accel"));
    }
}
