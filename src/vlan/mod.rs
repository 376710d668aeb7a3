//! One VLAN: an in-process Ethernet switch that QEMU guests join, and the
//! place where network faults are injected (link down, partition, loss,
//! delay).
//!
//! A guest joins in one of two ways, and both kinds of port are ports of
//! the same switch:
//!
//! - `-netdev stream,id=vlan<v>,server=off,addr.type=unix,addr.path=<socket>`
//!   (what the driver gives image nodes; `QEMU_VLAN_SOCKET_<v>`): every
//!   connection to the socket is one switch port. QEMU's stream netdev (like
//!   its `-netdev socket` backend) sends each Ethernet frame as a 4-byte
//!   big-endian length followed by the frame, and expects the same back;
//! - `-netdev vde,id=vlan<i>,sock=<dir>` (what NixOS start scripts pass,
//!   with `QEMU_VDE_SOCKET_<v>`), when the switch was started with
//!   [`Vlan::start_with_vde`]: the switch serves vde_switch's protocol on
//!   `<dir>/ctl`, and each frame is one datagram on the port's own datagram
//!   socket ([`vde`] has the protocol). No vde2 program is involved.
//!
//! The switch learns which port owns a MAC from the source address of the
//! frames it sees, sends unicast frames to the learned port, and floods
//! broadcast, multicast and unknown-unicast frames to every other port. A
//! frame never goes back to the port it came from. A port whose peer
//! disconnects is forgotten together with its MACs. Host network interfaces
//! are never touched.
//!
//! ## Fault model
//!
//! Faults are keyed by MAC, because nodes have known MACs
//! (`52:54:00:12:<vlan>:<n>`); a fault set for a MAC before the switch has
//! seen it applies as soon as a port sends from that MAC. Each port is a link
//! to the switch, and the faults of the MACs learned on it are faults of that
//! link, so a frame from port A to port B suffers A's faults and B's faults:
//!
//! - **link down** ([`Vlan::set_link`]): frames from and to the port are
//!   dropped;
//! - **partition** ([`Vlan::partition`]): frames pass only between ports of
//!   the same group; MACs not listed form one more group together;
//! - **loss** ([`Vlan::set_loss`]): a frame passes with probability
//!   `(1 - vlan) * (1 - from) * (1 - to)`;
//! - **delay** ([`Vlan::set_delay`]): the VLAN's, the sender's and the
//!   receiver's delays add up. Frames leave a port in the order they were
//!   queued for it, so a frame queued behind a delayed one waits for it.
//!
//! A port with several MACs (a bridge in the guest) is down if any of them is
//! down, takes the largest loss and delay among them, and the group of the
//! first MAC it sent from that a partition lists.
//!
//! ## Performance
//!
//! Each port has a reader task (buffered, one frame at a time) that forwards
//! by queueing the frame on the destination ports' bounded queues, and a
//! writer task that drains its queue and writes all queued frames with one
//! `write_all` (a VDE port: one `send` per frame, as datagrams cannot be
//! batched; its reader also watches its control connection). A full queue
//! drops the frame, as a real switch does, instead of slowing every other
//! port down. The MAC table and fault state sit behind one
//! `std::sync::Mutex` that is never held across an `.await`.
//!
//! ## Where things are
//!
//! This file has the [`Vlan`] handle (start, faults, stats, cleanup);
//! `switch.rs` the forwarding core (ports, MAC learning, queues, counters);
//! `faults.rs` the faults and their verdict on a frame; `stream.rs` the
//! stream-socket ports; [`vde`] the VDE protocol and ports.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use switch::{Counters, Shared};

#[cfg(test)]
mod fake_qemu;
mod faults;
mod stream;
mod switch;
pub mod vde;

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// The largest frame length a port may announce; a larger one (or 0) closes
/// a stream port, since its peer is not speaking QEMU's stream framing. A
/// larger datagram on a VDE port is dropped (counted as malformed).
pub const MAX_FRAME_LEN: usize = 65536;

/// The longest unix socket path, in bytes: `sun_path` holds 108 bytes
/// including the terminating NUL, and QEMU refuses longer paths too.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Frames shorter than an Ethernet header are dropped (counted as malformed).
const MIN_FRAME_LEN: usize = 14;

/// Why a VLAN switch cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    /// The socket path does not fit in a `sockaddr_un`.
    #[error(
        "VLAN {vlan}: the switch socket path {path} is {len} bytes long, but unix socket \
         paths are limited to {MAX_SOCKET_PATH_LEN} bytes: use a shorter state directory \
         (e.g. a shorter TMPDIR)"
    )]
    PathTooLong {
        vlan: u32,
        path: PathBuf,
        len: usize,
    },
    /// The socket's directory could not be created.
    #[error("VLAN {vlan}: cannot create the directory {path} for the switch socket: {source}")]
    CreateDir {
        vlan: u32,
        path: PathBuf,
        source: io::Error,
    },
    /// Something already listens on the socket path, or the path is not a
    /// socket.
    #[error(
        "VLAN {vlan}: {path} already exists and is in use (another switch listens there, \
         or it is not a socket): stop that process or remove the file, or use another \
         state directory"
    )]
    InUse { vlan: u32, path: PathBuf },
    /// Binding the listening socket failed.
    #[error("VLAN {vlan}: cannot listen on {path}: {source}")]
    Bind {
        vlan: u32,
        path: PathBuf,
        source: io::Error,
    },
    /// The socket could not be made private to this user.
    #[error("VLAN {vlan}: cannot set mode 0600 on the switch socket {path}: {source}")]
    Permissions {
        vlan: u32,
        path: PathBuf,
        source: io::Error,
    },
    /// The VDE directory's path leaves no room for the socket names in it.
    #[error(
        "VLAN {vlan}: the VDE switch directory {path} is {len} bytes long, but the sockets \
         in it need it to be at most {max} bytes (unix socket paths are limited to \
         {MAX_SOCKET_PATH_LEN} bytes): use a shorter state directory (e.g. a shorter TMPDIR)"
    )]
    VdeDirTooLong {
        vlan: u32,
        path: PathBuf,
        len: usize,
        max: usize,
    },
}

/// Counters of one VLAN since it started, as [`Vlan::stats`] returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VlanStats {
    /// Ports connected now.
    pub ports: usize,
    /// Of these, the ports that joined through VDE (`QEMU_VDE_SOCKET_<v>`).
    pub vde_ports: usize,
    /// Frames the ports sent to the switch.
    pub frames_received: u64,
    /// Bytes of those frames (without the length prefix).
    pub bytes_received: u64,
    /// Frame copies the switch wrote to ports (a flooded frame counts once
    /// per port it reached).
    pub frames_forwarded: u64,
    /// Bytes of those frame copies.
    pub bytes_forwarded: u64,
    /// Frame copies dropped, by reason.
    pub dropped: DroppedFrames,
}

/// Frame copies dropped, by reason (a flooded frame counts once per port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DroppedFrames {
    /// The sending or receiving port's link is down ([`Vlan::set_link`]).
    pub link_down: u64,
    /// Sender and receiver are in different groups ([`Vlan::partition`]).
    pub partitioned: u64,
    /// Dropped by the configured loss ([`Vlan::set_loss`]).
    pub loss: u64,
    /// The receiving port's queue was full (its guest does not keep up), or
    /// the port was closing.
    pub queue_full: u64,
    /// Shorter than an Ethernet header (or, on a VDE port, a datagram longer
    /// than [`MAX_FRAME_LEN`]).
    pub malformed: u64,
}

impl DroppedFrames {
    /// All dropped frame copies.
    pub fn total(&self) -> u64 {
        self.link_down + self.partitioned + self.loss + self.queue_full + self.malformed
    }
}

/// One VLAN's switch: a listening unix socket (and a VDE directory, if
/// asked for), tasks per connected port, the MAC table and the faults.
/// Dropping it stops every task and removes the sockets it made.
pub struct Vlan {
    number: u32,
    socket_path: PathBuf,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
    vde: Option<VdeServer>,
}

/// The VDE directory a switch serves.
struct VdeServer {
    dir: PathBuf,
    /// The switch made the directory (so it removes it again).
    made_dir: bool,
    accept_task: JoinHandle<()>,
}

impl Vlan {
    /// Starts VLAN `number`'s switch listening on `socket_path` (creating
    /// its directory, mode 0700, if needed; the socket gets mode 0600). A
    /// stale socket left by a dead switch is replaced. Must be called
    /// inside the tokio runtime, before the guests that join it start.
    pub async fn start(number: u32, socket_path: PathBuf) -> Result<Vlan, VlanError> {
        let len = socket_path.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(VlanError::PathTooLong {
                vlan: number,
                path: socket_path,
                len,
            });
        }
        if let Some(dir) = socket_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| VlanError::CreateDir {
                        vlan: number,
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
        }
        remove_stale_socket(number, &socket_path)?;
        let listener = UnixListener::bind(&socket_path).map_err(|source| VlanError::Bind {
            vlan: number,
            path: socket_path.clone(),
            source,
        })?;
        let private = std::fs::Permissions::from_mode(0o600);
        if let Err(source) = std::fs::set_permissions(&socket_path, private) {
            let _ = std::fs::remove_file(&socket_path);
            return Err(VlanError::Permissions {
                vlan: number,
                path: socket_path,
                source,
            });
        }
        let shared = Arc::new(Shared::new(number));
        let accept_task = tokio::spawn(stream::accept_ports(Arc::clone(&shared), listener));
        Ok(Vlan {
            number,
            socket_path,
            shared,
            accept_task,
            vde: None,
        })
    }

    /// Like [`Vlan::start`], and serves VDE clients too (QEMU's
    /// `-netdev vde,sock=<vde_dir>`) on the control socket `<vde_dir>/ctl`,
    /// making `vde_dir` (mode 0700) if needed; the ports' sockets go there
    /// too. A stale `ctl` left by a dead switch is replaced; a live one is
    /// refused.
    pub async fn start_with_vde(
        number: u32,
        socket_path: PathBuf,
        vde_dir: PathBuf,
    ) -> Result<Vlan, VlanError> {
        let len = vde_dir.as_os_str().len();
        let max = MAX_SOCKET_PATH_LEN - vde::DIR_NAME_ROOM;
        if len > max {
            return Err(VlanError::VdeDirTooLong {
                vlan: number,
                path: vde_dir,
                len,
                max,
            });
        }
        let mut vlan = Vlan::start(number, socket_path).await?;
        let made_dir = match std::fs::symlink_metadata(&vde_dir) {
            Ok(meta) if meta.is_dir() => false,
            Ok(_) => {
                return Err(VlanError::InUse {
                    vlan: number,
                    path: vde_dir,
                })
            }
            Err(_) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&vde_dir)
                    .map_err(|source| VlanError::CreateDir {
                        vlan: number,
                        path: vde_dir.clone(),
                        source,
                    })?;
                true
            }
        };
        let ctl = vde_dir.join("ctl");
        let listener = remove_stale_socket(number, &ctl)
            .and_then(|()| {
                UnixListener::bind(&ctl).map_err(|source| VlanError::Bind {
                    vlan: number,
                    path: ctl.clone(),
                    source,
                })
            })
            .and_then(|listener| {
                let private = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(&ctl, private)
                    .map(|()| listener)
                    .map_err(|source| {
                        let _ = std::fs::remove_file(&ctl);
                        VlanError::Permissions {
                            vlan: number,
                            path: ctl.clone(),
                            source,
                        }
                    })
            });
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                if made_dir {
                    let _ = std::fs::remove_dir(&vde_dir);
                }
                return Err(e);
            }
        };
        let accept_task = tokio::spawn(vde::accept_clients(
            Arc::clone(&vlan.shared),
            listener,
            vde_dir.clone(),
        ));
        vlan.vde = Some(VdeServer {
            dir: vde_dir,
            made_dir,
            accept_task,
        });
        Ok(vlan)
    }

    /// The VLAN's number (the `<v>` of `192.168.<v>.<n>`).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The unix socket QEMU connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The VDE switch directory (`QEMU_VDE_SOCKET_<v>`), if the switch
    /// serves VDE ([`Vlan::start_with_vde`]).
    pub fn vde_dir(&self) -> Option<&Path> {
        self.vde.as_ref().map(|v| v.dir.as_path())
    }

    /// Takes the link of the port that owns `mac` down (`up == false`) or
    /// back up: while down, frames from and to that port are dropped. This
    /// is the driver's `block()`/`unblock()`.
    pub fn set_link(&self, mac: Mac, up: bool) {
        self.shared.change_faults(|f| f.set_link(mac, up));
    }

    /// Splits the VLAN: frames pass only between MACs of the same group;
    /// MACs not listed form one more group together. Replaces an earlier
    /// partition.
    pub fn partition(&self, groups: Vec<Vec<Mac>>) {
        self.shared.change_faults(|f| f.partition(groups));
    }

    /// Undoes [`Vlan::partition`].
    pub fn heal(&self) {
        self.partition(Vec::new());
    }

    /// Drops this fraction (0.0..=1.0, clamped) of the frames sent from and
    /// to `mac`, or of all frames on the VLAN for `None`; 0.0 clears it.
    pub fn set_loss(&self, mac: Option<Mac>, fraction: f64) {
        self.shared.change_faults(|f| f.set_loss(mac, fraction));
    }

    /// Adds `delay` of latency to frames sent from and to `mac`, or to all
    /// frames on the VLAN for `None`; zero clears it. Frames leave a port in
    /// the order they were queued for it; frames already queued keep the
    /// delay they were queued with.
    pub fn set_delay(&self, mac: Option<Mac>, delay: Duration) {
        self.shared.change_faults(|f| f.set_delay(mac, delay));
    }

    /// Counters since the switch started, and the ports connected now.
    pub fn stats(&self) -> VlanStats {
        let c = &self.shared.counters;
        let (ports, vde_ports) = self.shared.ports();
        VlanStats {
            ports,
            vde_ports,
            frames_received: Counters::get(&c.frames_received),
            bytes_received: Counters::get(&c.bytes_received),
            frames_forwarded: Counters::get(&c.frames_forwarded),
            bytes_forwarded: Counters::get(&c.bytes_forwarded),
            dropped: DroppedFrames {
                link_down: Counters::get(&c.link_down),
                partitioned: Counters::get(&c.partitioned),
                loss: Counters::get(&c.loss),
                queue_full: Counters::get(&c.queue_full),
                malformed: Counters::get(&c.malformed),
            },
        }
    }

    /// How many ports (QEMU connections) are connected now.
    pub fn ports(&self) -> usize {
        self.shared.ports().0
    }
}

impl Drop for Vlan {
    fn drop(&mut self) {
        self.accept_task.abort();
        if let Some(vde) = &self.vde {
            vde.accept_task.abort();
        }
        self.shared.close();
        if let Some(vde) = &self.vde {
            let ctl = vde.dir.join("ctl");
            if let Err(e) = std::fs::remove_file(&ctl) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!(
                        "vlan{}: cannot remove the VDE control socket {}: {e}",
                        self.number,
                        ctl.display()
                    );
                }
            }
            // Only when empty: a client that died in its handshake may have
            // left its socket there (the driver removes its state dir).
            if vde.made_dir {
                let _ = std::fs::remove_dir(&vde.dir);
            }
        }
        if let Err(e) = std::fs::remove_file(&self.socket_path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "vlan{}: cannot remove the switch socket {}: {e}",
                    self.number,
                    self.socket_path.display()
                );
            }
        }
    }
}

/// Removes a socket file nobody listens on any more; refuses a live socket
/// or a file that is not a socket.
fn remove_stale_socket(vlan: u32, path: &Path) -> Result<(), VlanError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    let in_use = || VlanError::InUse {
        vlan,
        path: path.to_path_buf(),
    };
    if !meta.file_type().is_socket() {
        return Err(in_use());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(in_use()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| VlanError::Bind {
                vlan,
                path: path.to_path_buf(),
                source,
            }),
        Err(_) => Err(in_use()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fake_qemu::{mac, start, start_vde, FakeQemu};
    use tokio::net::UnixStream;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_removes_the_socket_and_closes_the_ports() {
        let (dir, vlan) = start().await;
        let path = dir.path().join("vlan1.sock");
        assert!(path.exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut port = FakeQemu::connect(&vlan, mac(1)).await;
        drop(vlan);
        assert!(!path.exists());
        port.expect_closed().await;
        assert!(UnixStream::connect(&path).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_creates_the_directory_and_checks_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/vlan2.sock");
        let vlan = Vlan::start(2, nested.clone()).await.unwrap();
        assert_eq!(vlan.socket_path(), nested);
        let parent = std::fs::metadata(dir.path().join("a/b")).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        // Live: refused.
        let err = Vlan::start(2, nested.clone()).await.err().unwrap();
        assert!(matches!(err, VlanError::InUse { .. }), "{err}");
        drop(vlan);

        // Stale (nobody listens): replaced.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let vlan = Vlan::start(3, stale.clone()).await.unwrap();
        let _port = FakeQemu::connect(&vlan, mac(1)).await;

        // Not a socket: refused.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = Vlan::start(4, file).await.err().unwrap();
        assert!(matches!(err, VlanError::InUse { .. }), "{err}");

        let long = dir.path().join("x".repeat(MAX_SOCKET_PATH_LEN));
        let err = Vlan::start(5, long).await.err().unwrap();
        assert!(matches!(err, VlanError::PathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("shorter"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_with_vde_checks_and_drop_removes_the_vde_directory() {
        let (dir, vlan) = start_vde().await;
        let vde_dir = dir.path().join("vde1.ctl");
        assert_eq!(vlan.vde_dir(), Some(vde_dir.as_path()));
        let meta = std::fs::metadata(&vde_dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let ctl = std::fs::metadata(vde_dir.join("ctl")).unwrap();
        assert!(ctl.file_type().is_socket());
        assert_eq!(ctl.permissions().mode() & 0o777, 0o600);
        // Live: refused.
        let err = Vlan::start_with_vde(1, dir.path().join("other.sock"), vde_dir.clone())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, VlanError::InUse { .. }), "{err}");
        let mut port = FakeQemu::connect_vde(&vlan, mac(1)).await;
        drop(vlan);
        port.expect_closed().await;
        assert!(!vde_dir.exists(), "the VDE directory is removed");

        // A stale ctl in an existing directory is replaced, and the
        // directory, not made by the switch, stays.
        std::fs::create_dir(&vde_dir).unwrap();
        drop(std::os::unix::net::UnixListener::bind(vde_dir.join("ctl")).unwrap());
        let vlan = Vlan::start_with_vde(1, dir.path().join("vlan1.sock"), vde_dir.clone())
            .await
            .unwrap();
        let _port = FakeQemu::connect_vde(&vlan, mac(1)).await;
        drop(vlan);
        assert!(vde_dir.is_dir());
        assert!(!vde_dir.join("ctl").exists());

        // Not a directory; too long.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = Vlan::start_with_vde(2, dir.path().join("v2.sock"), file)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, VlanError::InUse { .. }), "{err}");
        let long = dir.path().join("x".repeat(100));
        let err = Vlan::start_with_vde(3, dir.path().join("v3.sock"), long)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, VlanError::VdeDirTooLong { .. }), "{err}");
        assert!(err.to_string().contains("shorter"), "{err}");
    }
}
