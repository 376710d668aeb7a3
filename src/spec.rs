//! The test description the driver runs: which machines, how each starts,
//! which VLANs it sits on, and the addressing every node gets
//! (`192.168.<vlan>.<n>`, MAC `52:54:00:12:<vlan>:<n>`, nodes numbered 1..N in
//! name order, as NixOS tests have it).
//!
//! The Nix side (the plugin, `nix/`) writes this as JSON (`--nodes-json`); the
//! nixpkgs-style command line (`--start-scripts`, `--vlans`) is turned into the
//! same value.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a test description cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the nodes description {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the nodes description {path} is not valid JSON for nix-vmtest: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("start script {0} is not named run-<name>-vm: rename it, or give the node a name in --nodes-json")]
    ScriptName(PathBuf),
    #[error("two machines are named {0:?}: machine names must be unique")]
    DuplicateName(String),
    #[error("machine name {0:?} is not usable: use letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("machine {machine:?} is on VLAN {vlan}, but VLANs are numbered 1..=255")]
    BadVlan { machine: String, vlan: u32 },
    #[error("machine {0:?} is a peer (only addressed) and has a start script or an image too: give it one of them")]
    PeerThatBoots(String),
    #[error("there are {0} machines, but addresses 192.168.<vlan>.<n> allow at most 254")]
    TooMany(usize),
}

/// The whole test: its machines and VLANs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TestSpec {
    /// VLAN numbers the driver makes a switch for (the union of every
    /// machine's VLANs is added to this).
    #[serde(default)]
    pub vlans: Vec<u32>,
    /// The machines, in any order; they are numbered in name order.
    pub machines: Vec<MachineSpec>,
}

/// One machine of the test.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The name scripts use (`server` → `server.succeed(...)`).
    pub name: String,
    /// A NixOS-style `run-<name>-vm` script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script: Option<PathBuf>,
    /// Or an image the driver builds the QEMU command for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// A snapshot directory (made with `--save-snapshots`) to restore the
    /// machine from instead of booting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
    /// Or only a place in the addressing: a node of the test that this run
    /// does not start (a snapshot's build has the other nodes so), which
    /// still takes its node number and gives its name and address to the
    /// others' `vmtest.hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerSpec>,
}

/// A node that is only addressed, not started (see [`MachineSpec::peer`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerSpec {
    /// Its VLANs, as its image has them (empty for a start script, which
    /// wires its own).
    #[serde(default)]
    pub vlans: Vec<u32>,
}

/// A machine given as kernel, initrd and optional disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A base disk image; the driver boots a qcow2 overlay on top of it.
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// Memory in MiB.
    #[serde(default = "default_memory")]
    pub memory: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default)]
    pub kernel_params: String,
    #[serde(default)]
    pub qemu_flags: Vec<String>,
    /// VLANs this machine has an interface on (`eth0` is the first).
    #[serde(default = "default_vlans")]
    pub vlans: Vec<u32>,
}

fn default_memory() -> u32 {
    256
}
fn default_cpus() -> u32 {
    1
}
fn default_vlans() -> Vec<u32> {
    vec![1]
}

impl MachineSpec {
    /// The VLANs the driver wires this machine to itself (image nodes);
    /// a start script wires its own.
    pub fn vlans(&self) -> &[u32] {
        match (&self.image, &self.peer) {
            (Some(i), _) => &i.vlans,
            (None, Some(p)) => &p.vlans,
            (None, None) => &[],
        }
    }

    /// Whether the run starts this machine (a peer is only addressed).
    pub fn is_peer(&self) -> bool {
        self.peer.is_some()
    }
}

/// The machine name a NixOS start script implies: `run-<name>-vm`.
pub fn name_from_start_script(path: &Path) -> Result<String, SpecError> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    // Store paths of scripts are `<hash>-run-<name>-vm` or `.../bin/run-<name>-vm`.
    let base = file
        .split_once("-run-")
        .map(|(_, rest)| rest)
        .or_else(|| file.strip_prefix("run-"));
    match base.and_then(|b| b.strip_suffix("-vm")) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(SpecError::ScriptName(path.to_path_buf())),
    }
}

/// The MAC NixOS tests give node `n` on VLAN `vlan`.
pub fn mac_address(vlan: u32, n: u32) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, vlan as u8, n as u8]
}

/// `52:54:00:12:01:02` for a MAC.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address NixOS tests give node `n` on VLAN `vlan`.
pub fn ip_address(vlan: u32, n: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, vlan as u8, n as u8)
}

impl TestSpec {
    /// Reads a nodes description written by the Nix side.
    pub fn from_json_file(path: &Path) -> Result<TestSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| SpecError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the description from nixpkgs-style `--start-scripts` and `--vlans`.
    /// A relative script path is taken from the current directory (QEMU
    /// runs in the machine's state directory, where it would not resolve).
    pub fn from_start_scripts(scripts: &[PathBuf], vlans: &[u32]) -> Result<TestSpec, SpecError> {
        let machines = scripts
            .iter()
            .map(|s| {
                Ok(MachineSpec {
                    name: name_from_start_script(s)?,
                    start_script: Some(std::path::absolute(s).unwrap_or_else(|_| s.clone())),
                    image: None,
                    snapshot: None,
                    peer: None,
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        Ok(TestSpec {
            vlans: vlans.to_vec(),
            machines,
        })
    }

    /// Checks names and VLANs, sorts machines by name (their node number is
    /// their position + 1) and adds every machine's VLANs to `vlans`.
    pub fn normalize(mut self) -> Result<TestSpec, SpecError> {
        self.machines.sort_by(|a, b| a.name.cmp(&b.name));
        if self.machines.len() > 254 {
            return Err(SpecError::TooMany(self.machines.len()));
        }
        for pair in self.machines.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(SpecError::DuplicateName(pair[0].name.clone()));
            }
        }
        for m in &self.machines {
            let ok = !m.name.is_empty()
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ok {
                return Err(SpecError::BadName(m.name.clone()));
            }
            if m.is_peer() && (m.start_script.is_some() || m.image.is_some()) {
                return Err(SpecError::PeerThatBoots(m.name.clone()));
            }
            for &v in m.vlans() {
                if !(1..=255).contains(&v) {
                    return Err(SpecError::BadVlan {
                        machine: m.name.clone(),
                        vlan: v,
                    });
                }
                if !self.vlans.contains(&v) {
                    self.vlans.push(v);
                }
            }
        }
        self.vlans.sort_unstable();
        self.vlans.dedup();
        Ok(self)
    }

    /// The node number (1-based, name order) of a machine. Call on a normalized spec.
    pub fn node_number(&self, name: &str) -> Option<u32> {
        self.machines
            .iter()
            .position(|m| m.name == name)
            .map(|i| i as u32 + 1)
    }

    /// The kernel parameters that tell a Debian test guest its network:
    /// `vmtest.hostname=`, `vmtest.net=<mac>=<ip>/24,...`, `vmtest.hosts=<name>=<ip>,...`.
    pub fn network_kernel_params(&self, name: &str) -> String {
        let Some(n) = self.node_number(name) else {
            return String::new();
        };
        let me = &self.machines[n as usize - 1];
        let nets: Vec<String> = me
            .vlans()
            .iter()
            .map(|&v| format!("{}={}/24", format_mac(mac_address(v, n)), ip_address(v, n)))
            .collect();
        let hosts: Vec<String> = self
            .machines
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.vlans()
                    .first()
                    .map(|&v| format!("{}={}", m.name, ip_address(v, i as u32 + 1)))
            })
            .collect();
        let mut params = format!("vmtest.hostname={name}");
        if !nets.is_empty() {
            params.push_str(&format!(" vmtest.net={}", nets.join(",")));
        }
        if !hosts.is_empty() {
            params.push_str(&format!(" vmtest.hosts={}", hosts.join(",")));
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(vlans: Vec<u32>) -> Option<ImageSpec> {
        Some(ImageSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            disk: None,
            memory: 128,
            cpus: 1,
            kernel_params: String::new(),
            qemu_flags: vec![],
            vlans,
        })
    }

    #[test]
    fn names_come_from_start_scripts() {
        let n = |p: &str| name_from_start_script(Path::new(p)).ok();
        assert_eq!(
            n("/nix/store/abc-nixos-vm/bin/run-server-vm"),
            Some("server".into())
        );
        assert_eq!(
            n("/nix/store/abc-run-my-client-vm"),
            Some("my-client".into())
        );
        assert_eq!(n("/tmp/start"), None);
    }

    #[test]
    fn nodes_are_numbered_in_name_order_and_addressed_per_vlan() {
        let spec = TestSpec {
            vlans: vec![],
            machines: vec![
                MachineSpec {
                    name: "server".into(),
                    start_script: None,
                    image: image(vec![1, 2]),
                    snapshot: None,
                    peer: None,
                },
                MachineSpec {
                    name: "client".into(),
                    start_script: None,
                    image: image(vec![2]),
                    snapshot: None,
                    peer: None,
                },
            ],
        }
        .normalize()
        .unwrap();
        assert_eq!(spec.vlans, vec![1, 2]);
        assert_eq!(spec.node_number("client"), Some(1));
        assert_eq!(spec.node_number("server"), Some(2));
        assert_eq!(
            spec.network_kernel_params("server"),
            "vmtest.hostname=server vmtest.net=52:54:00:12:01:02=192.168.1.2/24,\
             52:54:00:12:02:02=192.168.2.2/24 vmtest.hosts=client=192.168.2.1,server=192.168.1.2"
        );
    }

    #[test]
    fn a_peer_keeps_its_number_and_address_for_the_others() {
        // A snapshot's build of `server` has `client` as a peer: `server`
        // gets the kernel parameters (so the QEMU arguments) of the run
        // with both machines.
        let json = r#"{"vlans": [1, 2], "machines": [
            {"name": "server", "image": {"kernel": "/k", "initrd": "/i", "memory": 128, "vlans": [1, 2]}},
            {"name": "client", "peer": {"vlans": [2]}}]}"#;
        let spec: TestSpec = serde_json::from_str(json).unwrap();
        let spec = spec.normalize().unwrap();
        assert!(spec.machines[0].is_peer());
        assert_eq!(spec.node_number("server"), Some(2));
        assert_eq!(
            spec.network_kernel_params("server"),
            "vmtest.hostname=server vmtest.net=52:54:00:12:01:02=192.168.1.2/24,\
             52:54:00:12:02:02=192.168.2.2/24 vmtest.hosts=client=192.168.2.1,server=192.168.1.2"
        );
        let both = r#"{"machines": [{"name": "c", "startScript": "/s", "peer": {}}]}"#;
        let spec: TestSpec = serde_json::from_str(both).unwrap();
        assert!(matches!(spec.normalize(), Err(SpecError::PeerThatBoots(n)) if n == "c"));
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let m = |n: &str| MachineSpec {
            name: n.into(),
            start_script: None,
            image: image(vec![1]),
            snapshot: None,
            peer: None,
        };
        let dup = TestSpec {
            vlans: vec![],
            machines: vec![m("a"), m("a")],
        }
        .normalize();
        assert!(matches!(dup, Err(SpecError::DuplicateName(n)) if n == "a"));
        let bad = TestSpec {
            vlans: vec![],
            machines: vec![m("a b")],
        }
        .normalize();
        assert!(matches!(bad, Err(SpecError::BadName(_))));
    }
}
