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
//! ## Script protocol
//!
//! The script protocol's `vlan {vlan, action, ...}` op carries a
//! [`VlanAction`], applied with [`Vlan::apply`]; MACs are written
//! `52:54:00:12:01:02`:
//!
//! ```json
//! {"action": "set_link", "mac": "52:54:00:12:01:02", "up": false}
//! {"action": "partition", "groups": [["52:54:00:12:01:01"], ["52:54:00:12:01:02"]]}
//! {"action": "heal"}
//! {"action": "set_loss", "mac": null, "fraction": 0.1}
//! {"action": "set_delay", "mac": "52:54:00:12:01:01", "ms": 50}
//! {"action": "stats"}
//! ```
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

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixDatagram, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

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

/// Frames a port's queue holds before the switch drops frames for it
/// (netem's default limit is 1000).
const PORT_QUEUE_FRAMES: usize = 1024;

/// A writer flushes its batch once it holds this many bytes.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Buffer of each port's reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Why a VLAN switch cannot be started, or a VLAN action not applied.
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
    /// A MAC in a VLAN action is not written `52:54:00:12:01:02`.
    #[error("{0:?} is not a MAC address: write it as six hex bytes, e.g. 52:54:00:12:01:02")]
    BadMac(String),
    /// A loss fraction outside 0.0..=1.0.
    #[error("packet loss {0} is not a fraction: use a number from 0.0 to 1.0")]
    BadFraction(f64),
    /// A negative or non-finite delay.
    #[error("delay {0} ms is not usable: use a number of milliseconds >= 0")]
    BadDelay(f64),
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

/// One request of the script protocol's `vlan` op (see the module docs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum VlanAction {
    /// [`Vlan::set_link`].
    SetLink { mac: String, up: bool },
    /// [`Vlan::partition`].
    Partition { groups: Vec<Vec<String>> },
    /// [`Vlan::heal`].
    Heal,
    /// [`Vlan::set_loss`]; `mac` null or missing means the whole VLAN.
    SetLoss { mac: Option<String>, fraction: f64 },
    /// [`Vlan::set_delay`] in milliseconds; `mac` null or missing means the
    /// whole VLAN.
    SetDelay { mac: Option<String>, ms: f64 },
    /// [`Vlan::stats`].
    Stats,
}

/// Parses a MAC written as six hex bytes separated by `:` or `-`.
pub fn parse_mac(text: &str) -> Result<Mac, VlanError> {
    let bad = || VlanError::BadMac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
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

/// How a port's peer is connected.
enum Wire {
    /// QEMU's `-netdev stream`: length-prefixed frames on one stream.
    Stream(UnixStream),
    /// A VDE client: its control connection, and the port's datagram
    /// socket (a file the switch made, connected to the client's).
    Vde {
        ctl: UnixStream,
        data: UnixDatagram,
        socket_file: PathBuf,
    },
}

type PortId = u64;

/// What the accept loop, the port tasks and the `Vlan` handle share.
struct Shared {
    number: u32,
    state: Mutex<State>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    link_down: AtomicU64,
    partitioned: AtomicU64,
    loss: AtomicU64,
    queue_full: AtomicU64,
    malformed: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Set when the `Vlan` is dropped: no port may be added any more.
    closed: bool,
    next_port: PortId,
    ports: HashMap<PortId, Port>,
    /// Learned MAC → port.
    macs: HashMap<Mac, PortId>,
    faults: Faults,
}

/// Faults as the user set them, by MAC.
#[derive(Default)]
struct Faults {
    down: HashSet<Mac>,
    /// MAC → partition group (1..); MACs not listed are in group 0.
    groups: HashMap<Mac, usize>,
    loss: HashMap<Mac, f64>,
    delay: HashMap<Mac, Duration>,
    vlan_loss: f64,
    vlan_delay: Duration,
}

/// The faults of one port's link, derived from its MACs' faults.
#[derive(Clone, Copy, Default)]
struct Link {
    down: bool,
    group: usize,
    loss: f64,
    delay: Duration,
}

struct Port {
    queue: mpsc::Sender<Queued>,
    /// MACs learned on this port, in the order they were first seen.
    macs: Vec<Mac>,
    link: Link,
    reader: AbortHandle,
    writer: AbortHandle,
    /// A VDE port's datagram socket, removed with the port.
    socket_file: Option<PathBuf>,
}

/// A frame waiting in a port's queue.
struct Queued {
    frame: Vec<u8>,
    /// Not before this time (a delay fault), or at once.
    deliver_at: Option<Instant>,
}

enum Verdict {
    Pass(Option<Instant>),
    LinkDown,
    Partitioned,
    Lost,
}

impl Faults {
    fn link_of(&self, macs: &[Mac]) -> Link {
        let mut link = Link::default();
        for mac in macs {
            link.down |= self.down.contains(mac);
            if let Some(loss) = self.loss.get(mac) {
                link.loss = link.loss.max(*loss);
            }
            if let Some(delay) = self.delay.get(mac) {
                link.delay = link.delay.max(*delay);
            }
        }
        link.group = macs
            .iter()
            .find_map(|mac| self.groups.get(mac).copied())
            .unwrap_or(0);
        link
    }

    /// Whether a frame from `from` to `to` passes, and when it is due.
    /// `now` is taken at most once per frame, when a delay needs it.
    fn judge(&self, from: &Link, to: &Link, now: &mut Option<Instant>) -> Verdict {
        if from.down || to.down {
            return Verdict::LinkDown;
        }
        if from.group != to.group {
            return Verdict::Partitioned;
        }
        if self.vlan_loss > 0.0 || from.loss > 0.0 || to.loss > 0.0 {
            let pass = (1.0 - self.vlan_loss) * (1.0 - from.loss) * (1.0 - to.loss);
            if fastrand::f64() >= pass {
                return Verdict::Lost;
            }
        }
        let delay = self.vlan_delay + from.delay + to.delay;
        if delay.is_zero() {
            return Verdict::Pass(None);
        }
        let now = *now.get_or_insert_with(Instant::now);
        Verdict::Pass(Some(now + delay))
    }
}

impl State {
    /// Records that `mac` sent from `port`.
    fn learn(&mut self, mac: Mac, port: PortId) {
        if mac[0] & 1 != 0 {
            return; // a multicast source address is bogus; do not learn it
        }
        let old = self.macs.insert(mac, port);
        if old == Some(port) {
            return;
        }
        if let Some(old) = old {
            if let Some(p) = self.ports.get_mut(&old) {
                p.macs.retain(|m| *m != mac);
                p.link = self.faults.link_of(&p.macs);
            }
        }
        if let Some(p) = self.ports.get_mut(&port) {
            p.macs.push(mac);
            p.link = self.faults.link_of(&p.macs);
        }
    }

    /// Recomputes every port's link after the faults changed.
    fn refresh_links(&mut self) {
        for port in self.ports.values_mut() {
            port.link = self.faults.link_of(&port.macs);
        }
    }
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the
        // state is still consistent enough to keep switching.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches one frame (at least an Ethernet header long) from `from`.
    fn forward(&self, from: PortId, mut frame: Vec<u8>) {
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);

        let mut state = self.lock();
        state.learn(src, from);
        let state = &*state;
        let Some(from_link) = state.ports.get(&from).map(|p| p.link) else {
            return; // the port is being closed
        };
        let mut now = None;

        if dst[0] & 1 == 0 {
            if let Some(&to) = state.macs.get(&dst) {
                if to != from {
                    if let Some(port) = state.ports.get(&to) {
                        self.offer(&state.faults, &from_link, port, frame, &mut now);
                    }
                }
                return; // a frame for the sender's own port is filtered
            }
        }

        // Broadcast, multicast or unknown unicast: flood.
        let mut others = state.ports.iter().filter(|(id, _)| **id != from).peekable();
        while let Some((_, port)) = others.next() {
            let copy = if others.peek().is_some() {
                frame.clone()
            } else {
                std::mem::take(&mut frame)
            };
            self.offer(&state.faults, &from_link, port, copy, &mut now);
        }
    }

    /// Queues `frame` for `port` unless a fault or a full queue drops it.
    fn offer(
        &self,
        faults: &Faults,
        from: &Link,
        port: &Port,
        frame: Vec<u8>,
        now: &mut Option<Instant>,
    ) {
        let c = &self.counters;
        match faults.judge(from, &port.link, now) {
            Verdict::Pass(deliver_at) => {
                if port.queue.try_send(Queued { frame, deliver_at }).is_err() {
                    Counters::add(&c.queue_full, 1);
                }
            }
            Verdict::LinkDown => Counters::add(&c.link_down, 1),
            Verdict::Partitioned => Counters::add(&c.partitioned, 1),
            Verdict::Lost => Counters::add(&c.loss, 1),
        }
    }

    /// Starts the tasks of a new port.
    fn add_port(self: &Arc<Self>, wire: Wire) {
        // Spawning under the lock keeps the tasks from running before the
        // port is in the table (they take the lock first thing they forward
        // or leave), and from being added after the `Vlan` was dropped.
        let mut state = self.lock();
        if state.closed {
            if let Wire::Vde { socket_file, .. } = &wire {
                let _ = std::fs::remove_file(socket_file);
            }
            return;
        }
        let id = state.next_port;
        state.next_port += 1;
        let (queue, queued) = mpsc::channel(PORT_QUEUE_FRAMES);
        let (reader, writer, socket_file) = match wire {
            Wire::Stream(stream) => {
                let (read, write) = stream.into_split();
                let reader = tokio::spawn(read_port(Arc::clone(self), id, read));
                let writer = tokio::spawn(write_port(Arc::clone(self), id, queued, write));
                (reader, writer, None)
            }
            Wire::Vde {
                ctl,
                data,
                socket_file,
            } => {
                let data = Arc::new(data);
                let reader =
                    tokio::spawn(read_vde_port(Arc::clone(self), id, ctl, Arc::clone(&data)));
                let writer = tokio::spawn(write_vde_port(Arc::clone(self), id, queued, data));
                (reader, writer, Some(socket_file))
            }
        };
        state.ports.insert(
            id,
            Port {
                queue,
                macs: Vec::new(),
                link: Link::default(),
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
                socket_file,
            },
        );
    }

    /// Forgets a port and its MACs and stops its tasks (the calling task
    /// returns right after, so aborting it too is harmless).
    fn remove_port(&self, id: PortId) {
        let mut state = self.lock();
        if let Some(port) = state.ports.remove(&id) {
            for mac in &port.macs {
                state.macs.remove(mac);
            }
            port.close();
        }
    }
}

impl Port {
    /// Stops the port's tasks and removes its socket file (VDE).
    fn close(self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(file) = &self.socket_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Accepts connections until the `Vlan` is dropped.
async fn accept_ports(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => shared.add_port(Wire::Stream(stream)),
            Err(e) => {
                // E.g. out of file descriptors: try again shortly rather
                // than spinning.
                eprintln!("vlan{}: cannot accept a connection: {e}", shared.number);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads a port's frames and forwards them, until its peer disconnects or
/// breaks the framing.
async fn read_port(shared: Arc<Shared>, id: PortId, read: OwnedReadHalf) {
    let mut read = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let c = &shared.counters;
    let reason = loop {
        let mut len = [0u8; 4];
        match read.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break None,
            Err(e) => break Some(format!("read failed: {e}")),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            break Some(format!(
                "it announced a frame of {len} bytes, outside 1..={MAX_FRAME_LEN} \
                 (is the peer QEMU's -netdev stream?)"
            ));
        }
        let mut frame = vec![0u8; len];
        if let Err(e) = read.read_exact(&mut frame).await {
            break Some(format!("the connection ended inside a frame: {e}"));
        }
        Counters::add(&c.frames_received, 1);
        Counters::add(&c.bytes_received, len as u64);
        if len < MIN_FRAME_LEN {
            Counters::add(&c.malformed, 1);
            continue;
        }
        shared.forward(id, frame);
    };
    if let Some(reason) = reason {
        eprintln!("vlan{}: closing port {id}: {reason}", shared.number);
    }
    shared.remove_port(id);
}

/// Frames gathered for one `write_all`.
struct Batch {
    buf: Vec<u8>,
    frames: u64,
    bytes: u64,
}

impl Batch {
    fn push(&mut self, frame: &[u8]) {
        // MAX_FRAME_LEN fits in a u32, so the cast is exact.
        self.buf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(frame);
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }

    async fn flush(&mut self, write: &mut OwnedWriteHalf, c: &Counters) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        write.write_all(&self.buf).await?;
        Counters::add(&c.frames_forwarded, self.frames);
        Counters::add(&c.bytes_forwarded, self.bytes);
        self.buf.clear();
        self.frames = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// Writes a port's queued frames, batching what is queued, waiting for
/// delayed frames to be due.
async fn write_port(
    shared: Arc<Shared>,
    id: PortId,
    mut queued: mpsc::Receiver<Queued>,
    mut write: OwnedWriteHalf,
) {
    let c = &shared.counters;
    let mut batch = Batch {
        buf: Vec::with_capacity(64 * 1024),
        frames: 0,
        bytes: 0,
    };
    let result: io::Result<()> = async {
        while let Some(first) = queued.recv().await {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                if let Some(at) = item.deliver_at {
                    if at > Instant::now() {
                        batch.flush(&mut write, c).await?;
                        tokio::time::sleep_until(at).await;
                    }
                }
                batch.push(&item.frame);
                if batch.buf.len() >= WRITE_BATCH_BYTES {
                    batch.flush(&mut write, c).await?;
                }
                next = queued.try_recv().ok();
            }
            batch.flush(&mut write, c).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!(
            "vlan{}: closing port {id}: write failed: {e}",
            shared.number
        );
        shared.remove_port(id);
    }
}

/// Reads a VDE port's datagrams and forwards them, until the client closes
/// its control connection.
async fn read_vde_port(
    shared: Arc<Shared>,
    id: PortId,
    mut ctl: UnixStream,
    data: Arc<UnixDatagram>,
) {
    // One byte more than the largest frame tells an oversized datagram
    // (the kernel cuts a datagram to the buffer) from the largest.
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    let mut ignored = [0u8; 256];
    let c = &shared.counters;
    let reason = loop {
        tokio::select! {
            read = ctl.read(&mut ignored) => match read {
                Ok(0) => break None,
                // Nothing is defined after the request: ignore it.
                Ok(_) => {}
                Err(e) => break Some(format!("its control connection failed: {e}")),
            },
            received = data.recv(&mut buf) => match received {
                Ok(len) => {
                    Counters::add(&c.frames_received, 1);
                    Counters::add(&c.bytes_received, len as u64);
                    if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
                        Counters::add(&c.malformed, 1);
                        continue;
                    }
                    shared.forward(id, buf[..len].to_vec());
                }
                Err(e) => break Some(format!("receiving failed: {e}")),
            },
        }
    };
    if let Some(reason) = reason {
        eprintln!("vlan{}: closing VDE port {id}: {reason}", shared.number);
    }
    shared.remove_port(id);
}

/// Sends a VDE port's queued frames, one datagram each, waiting for
/// delayed frames to be due. A client whose socket is full makes the send
/// wait, so its queue fills and the switch drops frames for it, as for a
/// stream port.
async fn write_vde_port(
    shared: Arc<Shared>,
    id: PortId,
    mut queued: mpsc::Receiver<Queued>,
    data: Arc<UnixDatagram>,
) {
    let c = &shared.counters;
    while let Some(item) = queued.recv().await {
        if let Some(at) = item.deliver_at {
            tokio::time::sleep_until(at).await;
        }
        match data.send(&item.frame).await {
            Ok(_) => {
                Counters::add(&c.frames_forwarded, 1);
                Counters::add(&c.bytes_forwarded, item.frame.len() as u64);
            }
            Err(e) => {
                // Refused: the client's socket is gone (QEMU exited); its
                // control connection is ending too.
                if e.kind() != io::ErrorKind::ConnectionRefused {
                    eprintln!(
                        "vlan{}: closing VDE port {id}: sending failed: {e}",
                        shared.number
                    );
                }
                shared.remove_port(id);
                return;
            }
        }
    }
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
        let shared = Arc::new(Shared {
            number,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        });
        let accept_task = tokio::spawn(accept_ports(Arc::clone(&shared), listener));
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
        let mut state = self.shared.lock();
        if up {
            state.faults.down.remove(&mac);
        } else {
            state.faults.down.insert(mac);
        }
        state.refresh_links();
    }

    /// Splits the VLAN: frames pass only between MACs of the same group;
    /// MACs not listed form one more group together. Replaces an earlier
    /// partition.
    pub fn partition(&self, groups: Vec<Vec<Mac>>) {
        let mut state = self.shared.lock();
        state.faults.groups = groups
            .into_iter()
            .enumerate()
            .flat_map(|(i, group)| group.into_iter().map(move |mac| (mac, i + 1)))
            .collect();
        state.refresh_links();
    }

    /// Undoes [`Vlan::partition`].
    pub fn heal(&self) {
        self.partition(Vec::new());
    }

    /// Drops this fraction (0.0..=1.0, clamped) of the frames sent from and
    /// to `mac`, or of all frames on the VLAN for `None`; 0.0 clears it.
    pub fn set_loss(&self, mac: Option<Mac>, fraction: f64) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let mut state = self.shared.lock();
        match mac {
            None => state.faults.vlan_loss = fraction,
            Some(mac) if fraction == 0.0 => {
                state.faults.loss.remove(&mac);
            }
            Some(mac) => {
                state.faults.loss.insert(mac, fraction);
            }
        }
        state.refresh_links();
    }

    /// Adds `delay` of latency to frames sent from and to `mac`, or to all
    /// frames on the VLAN for `None`; zero clears it. Frames leave a port in
    /// the order they were queued for it; frames already queued keep the
    /// delay they were queued with.
    pub fn set_delay(&self, mac: Option<Mac>, delay: Duration) {
        let mut state = self.shared.lock();
        match mac {
            None => state.faults.vlan_delay = delay,
            Some(mac) if delay.is_zero() => {
                state.faults.delay.remove(&mac);
            }
            Some(mac) => {
                state.faults.delay.insert(mac, delay);
            }
        }
        state.refresh_links();
    }

    /// Counters since the switch started, and the ports connected now.
    pub fn stats(&self) -> VlanStats {
        let c = &self.shared.counters;
        let (ports, vde_ports) = {
            let state = self.shared.lock();
            let vde = state.ports.values().filter(|p| p.socket_file.is_some());
            (state.ports.len(), vde.count())
        };
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
        self.shared.lock().ports.len()
    }

    /// Applies one script-protocol request; returns the stats for
    /// `stats` and `null` for the others.
    pub fn apply(&self, action: &VlanAction) -> Result<serde_json::Value, VlanError> {
        let mac = |m: &Option<String>| m.as_deref().map(parse_mac).transpose();
        match action {
            VlanAction::SetLink { mac, up } => self.set_link(parse_mac(mac)?, *up),
            VlanAction::Partition { groups } => {
                let groups = groups
                    .iter()
                    .map(|g| g.iter().map(|m| parse_mac(m)).collect())
                    .collect::<Result<_, _>>()?;
                self.partition(groups);
            }
            VlanAction::Heal => self.heal(),
            VlanAction::SetLoss { mac: m, fraction } => {
                if !(0.0..=1.0).contains(fraction) {
                    return Err(VlanError::BadFraction(*fraction));
                }
                self.set_loss(mac(m)?, *fraction);
            }
            VlanAction::SetDelay { mac: m, ms } => {
                let delay = Duration::try_from_secs_f64(ms / 1000.0)
                    .map_err(|_| VlanError::BadDelay(*ms))?;
                self.set_delay(mac(m)?, delay);
            }
            VlanAction::Stats => {
                return Ok(serde_json::to_value(self.stats()).unwrap_or_default());
            }
        }
        Ok(serde_json::Value::Null)
    }
}

impl Drop for Vlan {
    fn drop(&mut self) {
        self.accept_task.abort();
        if let Some(vde) = &self.vde {
            vde.accept_task.abort();
        }
        let mut state = self.shared.lock();
        state.closed = true;
        for (_, port) in state.ports.drain() {
            port.close();
        }
        state.macs.clear();
        drop(state);
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
    use std::os::unix::ffi::OsStrExt;

    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(150);

    fn mac(n: u8) -> Mac {
        [0x52, 0x54, 0x00, 0x12, 0x01, n]
    }

    const BROADCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(payload);
        f
    }

    /// A stand-in for QEMU's `-netdev stream` client: sends length-prefixed
    /// frames; a background task collects what the switch sends back (the
    /// channel closes when the switch closes the connection).
    ///
    /// [`FakeQemu::connect_vde`] makes a stand-in for QEMU's `-netdev vde`
    /// instead: it joins through the VDE directory as libvdeplug does, and
    /// sends and receives frames as datagrams; the channel closes when the
    /// switch closes the control connection. Dropping it closes its side of
    /// the control connection, as QEMU exiting does.
    struct FakeQemu {
        wire: FakeWire,
        frames: mpsc::UnboundedReceiver<Vec<u8>>,
        mac: Mac,
    }

    enum FakeWire {
        Stream(OwnedWriteHalf),
        Vde {
            data: Arc<UnixDatagram>,
            _ctl: OwnedWriteHalf,
        },
    }

    impl FakeQemu {
        async fn connect(vlan: &Vlan, mac: Mac) -> FakeQemu {
            let before = vlan.ports();
            let stream = UnixStream::connect(vlan.socket_path()).await.unwrap();
            let (read, write) = stream.into_split();
            let (tx, frames) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut read = BufReader::new(read);
                loop {
                    let mut len = [0u8; 4];
                    if read.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
                    if read.read_exact(&mut f).await.is_err() || tx.send(f).is_err() {
                        return;
                    }
                }
            });
            wait_for(|| vlan.ports() > before).await;
            FakeQemu {
                wire: FakeWire::Stream(write),
                frames,
                mac,
            }
        }

        async fn connect_vde(vlan: &Vlan, mac: Mac) -> FakeQemu {
            let before = vlan.ports();
            let (ctl, data) = vde_handshake(vlan).await;
            let data = Arc::new(data);
            let (mut ctl_read, ctl_write) = ctl.into_split();
            let (tx, frames) = mpsc::unbounded_channel();
            let recv = Arc::clone(&data);
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_FRAME_LEN];
                let mut ctl_buf = [0u8; 16];
                loop {
                    tokio::select! {
                        read = ctl_read.read(&mut ctl_buf) => {
                            if !matches!(read, Ok(n) if n > 0) {
                                return;
                            }
                        }
                        got = recv.recv(&mut buf) => {
                            let Ok(n) = got else { return };
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            wait_for(|| vlan.ports() > before).await;
            FakeQemu {
                wire: FakeWire::Vde {
                    data,
                    _ctl: ctl_write,
                },
                frames,
                mac,
            }
        }

        /// Bytes as they are: on a stream port, into the stream; on a VDE
        /// port, as one datagram.
        async fn send_raw(&mut self, bytes: &[u8]) {
            match &mut self.wire {
                FakeWire::Stream(write) => write.write_all(bytes).await.unwrap(),
                FakeWire::Vde { data, .. } => {
                    data.send(bytes).await.unwrap();
                }
            }
        }

        async fn send_to(&mut self, dst: Mac, payload: &[u8]) {
            let f = frame(dst, self.mac, payload);
            if matches!(self.wire, FakeWire::Vde { .. }) {
                return self.send_raw(&f).await;
            }
            let mut bytes = (f.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&f);
            self.send_raw(&bytes).await;
        }

        /// The next frame, failing the test if none comes.
        async fn recv(&mut self) -> Vec<u8> {
            tokio::time::timeout(WAIT, self.frames.recv())
                .await
                .expect("no frame arrived in time")
                .expect("the switch closed the connection")
        }

        async fn recv_payload(&mut self) -> Vec<u8> {
            self.recv().await[14..].to_vec()
        }

        /// Fails the test if a frame arrives within a short while.
        async fn expect_nothing(&mut self) {
            if let Ok(Some(f)) = tokio::time::timeout(QUIET, self.frames.recv()).await {
                panic!("unexpected frame {:02x?}", &f[..f.len().min(20)]);
            }
        }

        /// Waits until the switch closes the connection.
        async fn expect_closed(&mut self) {
            let closed =
                tokio::time::timeout(WAIT, async { while self.frames.recv().await.is_some() {} })
                    .await;
            assert!(closed.is_ok(), "the switch did not close the connection");
        }
    }

    /// Joins `vlan` through its VDE directory as libvdeplug does: a
    /// datagram socket in the directory, the request on `ctl`, the answer,
    /// and the datagram socket connected to the port's.
    async fn vde_handshake(vlan: &Vlan) -> (UnixStream, UnixDatagram) {
        let dir = vlan.vde_dir().expect("the switch serves VDE");
        let client = dir.join(format!(".{}-{:05}", std::process::id(), fastrand::u32(..)));
        let data = UnixDatagram::bind(&client).unwrap();
        let mut ctl = UnixStream::connect(dir.join("ctl")).await.unwrap();
        ctl.write_all(&vde::encode_request(&client, "fake QEMU"))
            .await
            .unwrap();
        let mut answer = [0u8; vde::SOCKADDR_UN_LEN];
        ctl.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[..2], 1u16.to_ne_bytes(), "AF_UNIX");
        let path = &answer[2..];
        let path = &path[..path.iter().position(|b| *b == 0).unwrap()];
        let port = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        assert_eq!(
            port.parent(),
            Some(dir),
            "the port socket is in the directory"
        );
        data.connect(&port).unwrap();
        std::fs::remove_file(&client).unwrap();
        (ctl, data)
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn start() -> (tempfile::TempDir, Vlan) {
        let dir = tempfile::tempdir().unwrap();
        let vlan = Vlan::start(1, dir.path().join("vlan1.sock")).await.unwrap();
        (dir, vlan)
    }

    /// A switch that serves VDE too, on `<tmp>/vde1.ctl`.
    async fn start_vde() -> (tempfile::TempDir, Vlan) {
        let dir = tempfile::tempdir().unwrap();
        let vlan = Vlan::start_with_vde(
            1,
            dir.path().join("vlan1.sock"),
            dir.path().join("vde1.ctl"),
        )
        .await
        .unwrap();
        (dir, vlan)
    }

    /// Ports for `kinds` (`'s'` stream, `'v'` VDE) with MACs 1, 2, ...,
    /// learned by the switch as [`learned`] does.
    async fn learned_mixed(vlan: &Vlan, kinds: &str) -> Vec<FakeQemu> {
        let mut ports = Vec::new();
        for (i, kind) in kinds.chars().enumerate() {
            let m = mac(i as u8 + 1);
            ports.push(match kind {
                'v' => FakeQemu::connect_vde(vlan, m).await,
                _ => FakeQemu::connect(vlan, m).await,
            });
        }
        for i in 0..ports.len() {
            ports[i].send_to(BROADCAST, b"hello").await;
            for (j, p) in ports.iter_mut().enumerate() {
                if j != i {
                    assert_eq!(p.recv_payload().await, b"hello");
                }
            }
        }
        ports
    }

    /// Connects ports for `macs` and makes the switch learn each of them
    /// (each sends a broadcast, which the others drain).
    async fn learned(vlan: &Vlan, macs: &[Mac]) -> Vec<FakeQemu> {
        let mut ports = Vec::new();
        for m in macs {
            ports.push(FakeQemu::connect(vlan, *m).await);
        }
        for i in 0..ports.len() {
            ports[i].send_to(BROADCAST, b"hello").await;
            for (j, p) in ports.iter_mut().enumerate() {
                if j != i {
                    assert_eq!(p.recv_payload().await, b"hello");
                }
            }
        }
        ports
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn learns_and_sends_unicast_to_the_learned_port_only() {
        let (_dir, vlan) = start().await;
        assert_eq!(vlan.number(), 1);
        let mut p = learned(&vlan, &[mac(1), mac(2), mac(3)]).await;
        p[1].send_to(mac(1), b"to one").await;
        let f = p[0].recv().await;
        assert_eq!(f, frame(mac(1), mac(2), b"to one"));
        p[2].expect_nothing().await;
        p[1].expect_nothing().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn floods_broadcast_multicast_and_unknown_unicast_but_never_echoes() {
        let (_dir, vlan) = start().await;
        let mut p = [
            FakeQemu::connect(&vlan, mac(1)).await,
            FakeQemu::connect(&vlan, mac(2)).await,
            FakeQemu::connect(&vlan, mac(3)).await,
        ];
        let multicast = [0x33, 0x33, 0, 0, 0, 1];
        for dst in [BROADCAST, multicast, mac(9)] {
            p[0].send_to(dst, b"all").await;
            assert_eq!(p[1].recv().await, frame(dst, mac(1), b"all"));
            assert_eq!(p[2].recv().await, frame(dst, mac(1), b"all"));
            p[0].expect_nothing().await;
        }
        let s = vlan.stats();
        assert_eq!(s.ports, 3);
        assert_eq!(s.frames_received, 3);
        assert_eq!(s.frames_forwarded, 6);
        assert_eq!(s.dropped.total(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_for_the_senders_own_port_is_filtered() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        p[0].send_to(mac(1), b"self").await;
        p[0].expect_nothing().await;
        p[1].expect_nothing().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_and_unblock() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        vlan.set_link(mac(1), false);
        p[0].send_to(mac(2), b"out").await;
        p[1].send_to(mac(1), b"in").await;
        p[1].send_to(BROADCAST, b"bcast").await;
        p[0].expect_nothing().await;
        p[1].expect_nothing().await;
        wait_for(|| vlan.stats().dropped.link_down == 3).await;

        vlan.set_link(mac(1), true);
        p[0].send_to(mac(2), b"out").await;
        assert_eq!(p[1].recv_payload().await, b"out");
        p[1].send_to(mac(1), b"in").await;
        assert_eq!(p[0].recv_payload().await, b"in");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fault_set_before_the_mac_is_seen_applies_once_it_appears() {
        let (_dir, vlan) = start().await;
        vlan.set_link(mac(1), false);
        vlan.set_delay(Some(mac(2)), Duration::from_millis(200));
        let mut a = FakeQemu::connect(&vlan, mac(1)).await;
        let mut b = FakeQemu::connect(&vlan, mac(2)).await;
        a.send_to(BROADCAST, b"first").await;
        b.expect_nothing().await;
        wait_for(|| vlan.stats().dropped.link_down == 1).await;
        vlan.set_link(mac(1), true);
        // b's first frame already suffers its own delay.
        let sent = Instant::now();
        b.send_to(BROADCAST, b"late").await;
        assert_eq!(a.recv_payload().await, b"late");
        assert!(sent.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_and_heal() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2), mac(3), mac(4)]).await;
        // {1, 2} | {3} | unlisted {4}
        vlan.partition(vec![vec![mac(1), mac(2)], vec![mac(3)]]);
        p[0].send_to(mac(2), b"same group").await;
        assert_eq!(p[1].recv_payload().await, b"same group");
        p[0].send_to(mac(3), b"across").await;
        p[2].send_to(mac(1), b"across").await;
        p[3].send_to(mac(1), b"across").await;
        p[0].send_to(BROADCAST, b"bcast").await;
        assert_eq!(p[1].recv_payload().await, b"bcast");
        for q in &mut p {
            q.expect_nothing().await;
        }
        // across ×3 and the broadcast to 3 and 4.
        wait_for(|| vlan.stats().dropped.partitioned == 5).await;

        vlan.heal();
        p[0].send_to(mac(3), b"healed").await;
        assert_eq!(p[2].recv_payload().await, b"healed");
        p[3].send_to(mac(1), b"healed").await;
        assert_eq!(p[0].recv_payload().await, b"healed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unlisted_macs_form_a_group_together() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2), mac(3)]).await;
        vlan.partition(vec![vec![mac(1)]]);
        p[1].send_to(mac(3), b"unlisted").await;
        assert_eq!(p[2].recv_payload().await, b"unlisted");
        p[1].send_to(mac(1), b"listed").await;
        p[0].expect_nothing().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loss_drops_about_the_given_fraction() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        vlan.set_loss(Some(mac(1)), 0.3);
        let before = vlan.stats();
        for i in 0..1000u32 {
            p[0].send_to(mac(2), &i.to_be_bytes()).await;
        }
        wait_for(|| {
            let s = vlan.stats();
            s.frames_forwarded - before.frames_forwarded + s.dropped.total() >= 1000
        })
        .await;
        let s = vlan.stats();
        assert_eq!(s.dropped.queue_full, 0);
        assert!(
            (200..=400).contains(&s.dropped.loss),
            "dropped {} of 1000 at 0.3 loss",
            s.dropped.loss
        );
        let mut got = 0;
        while tokio::time::timeout(QUIET, p[1].frames.recv())
            .await
            .is_ok()
        {
            got += 1;
        }
        assert_eq!(got, 1000 - s.dropped.loss);

        // 0.0 clears it; the VLAN-wide loss of 1.0 drops everything.
        vlan.set_loss(Some(mac(1)), 0.0);
        p[0].send_to(mac(2), b"clear").await;
        assert_eq!(p[1].recv_payload().await, b"clear");
        vlan.set_loss(None, 1.0);
        p[1].send_to(mac(1), b"lost").await;
        p[0].expect_nothing().await;
        vlan.set_loss(None, 0.0);
        p[1].send_to(mac(1), b"back").await;
        assert_eq!(p[0].recv_payload().await, b"back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_holds_frames_back_and_keeps_their_order() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        let delay = Duration::from_millis(200);
        vlan.set_delay(Some(mac(2)), delay);
        let sent = Instant::now();
        for i in 0..20u8 {
            p[0].send_to(mac(2), &[i]).await;
        }
        for i in 0..20u8 {
            assert_eq!(p[1].recv_payload().await, [i]);
        }
        assert!(
            sent.elapsed() >= delay,
            "arrived after {:?}",
            sent.elapsed()
        );

        // The VLAN's delay and the sender's add to the receiver's.
        vlan.set_delay(None, delay);
        let sent = Instant::now();
        p[0].send_to(mac(2), b"slow").await;
        assert_eq!(p[1].recv_payload().await, b"slow");
        assert!(
            sent.elapsed() >= 2 * delay,
            "arrived after {:?}",
            sent.elapsed()
        );

        vlan.set_delay(None, Duration::ZERO);
        vlan.set_delay(Some(mac(2)), Duration::ZERO);
        let sent = Instant::now();
        p[1].send_to(mac(1), b"fast").await;
        assert_eq!(p[0].recv_payload().await, b"fast");
        assert!(sent.elapsed() < delay);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disconnected_port_and_its_macs_are_forgotten() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2), mac(3)]).await;
        let gone = p.pop().unwrap();
        drop(gone);
        wait_for(|| vlan.ports() == 2).await;
        // mac(3) is unknown again, so a frame for it is flooded.
        p[0].send_to(mac(3), b"where are you").await;
        assert_eq!(p[1].recv_payload().await, b"where are you");
        assert_eq!(vlan.stats().dropped.queue_full, 0);
        // A new port may take the MAC over.
        let mut again = FakeQemu::connect(&vlan, mac(3)).await;
        again.send_to(mac(1), b"back").await;
        assert_eq!(p[0].recv_payload().await, b"back");
        p[1].send_to(mac(3), b"unicast").await;
        assert_eq!(again.recv_payload().await, b"unicast");
        p[0].expect_nothing().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mac_moving_to_another_port_is_relearned() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2), mac(3)]).await;
        // Port 3 now sends from mac(2) too (e.g. a bridge).
        p[2].mac = mac(2);
        p[2].send_to(mac(1), b"moved").await;
        assert_eq!(p[0].recv_payload().await, b"moved");
        p[0].send_to(mac(2), b"follow").await;
        assert_eq!(p[2].recv_payload().await, b"follow");
        p[1].expect_nothing().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_or_empty_frames_close_the_port() {
        let (_dir, vlan) = start().await;
        for len in [MAX_FRAME_LEN as u32 + 1, 0] {
            let mut good = FakeQemu::connect(&vlan, mac(1)).await;
            let mut bad = FakeQemu::connect(&vlan, mac(2)).await;
            bad.send_raw(&len.to_be_bytes()).await;
            bad.expect_closed().await;
            wait_for(|| vlan.ports() == 1).await;
            good.send_to(BROADCAST, b"still here").await;
            good.expect_nothing().await;
            drop(good);
            wait_for(|| vlan.ports() == 0).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_largest_frame_passes_and_runts_are_dropped() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        let big = vec![0xab; MAX_FRAME_LEN - 14];
        p[0].send_to(mac(2), &big).await;
        assert_eq!(p[1].recv_payload().await, big);
        p[0].send_raw(&[0, 0, 0, 3, 1, 2, 3]).await;
        p[1].expect_nothing().await;
        wait_for(|| vlan.stats().dropped.malformed == 1).await;
        assert_eq!(vlan.ports(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_that_does_not_read_loses_frames_without_stalling_others() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        // A port that never reads: its socket buffer and queue fill up.
        let mut stalled = UnixStream::connect(vlan.socket_path()).await.unwrap();
        wait_for(|| vlan.ports() == 3).await;
        let f = frame(mac(1), mac(3), b"learn me");
        stalled
            .write_all(&(f.len() as u32).to_be_bytes())
            .await
            .unwrap();
        stalled.write_all(&f).await.unwrap();
        assert_eq!(p[0].recv_payload().await, b"learn me");
        let payload = vec![0u8; 1500];
        for _ in 0..4000 {
            p[0].send_to(mac(3), &payload).await;
        }
        wait_for(|| vlan.stats().dropped.queue_full > 0).await;
        p[0].send_to(mac(2), b"unaffected").await;
        assert_eq!(p[1].recv_payload().await, b"unaffected");
    }

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
    async fn vde_and_stream_ports_switch_together() {
        let (_dir, vlan) = start_vde().await;
        let mut p = learned_mixed(&vlan, "svv").await;
        let s = vlan.stats();
        assert_eq!((s.ports, s.vde_ports), (3, 2));
        for (from, to) in [(0, 1), (1, 0), (1, 2), (2, 0)] {
            p[from].send_to(mac(to as u8 + 1), b"unicast").await;
            let f = p[to].recv().await;
            assert_eq!(f, frame(mac(to as u8 + 1), mac(from as u8 + 1), b"unicast"));
        }
        for q in &mut p {
            q.expect_nothing().await;
        }
        // The largest frame passes both ways between the kinds.
        let big = vec![0xcd; MAX_FRAME_LEN - 14];
        p[1].send_to(mac(1), &big).await;
        assert_eq!(p[0].recv_payload().await, big);
        p[0].send_to(mac(3), &big).await;
        assert_eq!(p[2].recv_payload().await, big);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faults_apply_to_vde_ports_as_to_stream_ports() {
        let (_dir, vlan) = start_vde().await;
        // 1 stream, 2 and 3 VDE.
        let mut p = learned_mixed(&vlan, "svv").await;

        vlan.set_link(mac(2), false);
        p[0].send_to(mac(2), b"to blocked").await;
        p[1].send_to(mac(3), b"from blocked").await;
        p[1].expect_nothing().await;
        p[2].expect_nothing().await;
        vlan.set_link(mac(2), true);
        p[1].send_to(mac(3), b"unblocked").await;
        assert_eq!(p[2].recv_payload().await, b"unblocked");

        // {1, 2} | {3}: stream and VDE on one side.
        vlan.partition(vec![vec![mac(1), mac(2)], vec![mac(3)]]);
        p[0].send_to(mac(2), b"same side").await;
        assert_eq!(p[1].recv_payload().await, b"same side");
        p[1].send_to(mac(3), b"across").await;
        p[0].send_to(mac(3), b"across").await;
        p[2].send_to(BROADCAST, b"across").await;
        for q in &mut p {
            q.expect_nothing().await;
        }
        vlan.heal();
        p[2].send_to(mac(2), b"healed").await;
        assert_eq!(p[1].recv_payload().await, b"healed");

        vlan.set_loss(Some(mac(3)), 1.0);
        p[1].send_to(mac(3), b"lost").await;
        p[2].expect_nothing().await;
        vlan.set_loss(Some(mac(3)), 0.0);

        let delay = Duration::from_millis(200);
        vlan.set_delay(Some(mac(2)), delay);
        let sent = Instant::now();
        for i in 0..10u8 {
            p[0].send_to(mac(2), &[i]).await;
        }
        for i in 0..10u8 {
            assert_eq!(p[1].recv_payload().await, [i]);
        }
        assert!(sent.elapsed() >= delay, "after {:?}", sent.elapsed());

        let d = vlan.stats().dropped;
        assert_eq!((d.link_down, d.partitioned, d.loss), (2, 4, 1), "{d:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vde_port_ends_with_its_control_connection() {
        let (dir, vlan) = start_vde().await;
        let mut p = learned_mixed(&vlan, "svv").await;
        let port_files = || {
            std::fs::read_dir(dir.path().join("vde1.ctl"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".port"))
                .count()
        };
        assert_eq!(port_files(), 2);
        drop(p.pop());
        wait_for(|| vlan.ports() == 2).await;
        assert_eq!(vlan.stats().vde_ports, 1);
        assert_eq!(port_files(), 1, "the port's socket file is removed");
        // mac(3) is unknown again: flooded.
        p[0].send_to(mac(3), b"where").await;
        assert_eq!(p[1].recv_payload().await, b"where");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vde_runts_and_oversized_datagrams_are_dropped() {
        let (_dir, vlan) = start_vde().await;
        let mut p = learned_mixed(&vlan, "vv").await;
        p[0].send_raw(&[1, 2, 3]).await;
        p[0].send_raw(&vec![0; MAX_FRAME_LEN + 1]).await;
        p[1].expect_nothing().await;
        wait_for(|| vlan.stats().dropped.malformed == 2).await;
        p[0].send_to(mac(2), b"still here").await;
        assert_eq!(p[1].recv_payload().await, b"still here");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vde_client_that_does_not_read_loses_frames_without_stalling_others() {
        let (_dir, vlan) = start_vde().await;
        let mut p = learned_mixed(&vlan, "sv").await;
        // A VDE client that never reads its datagram socket.
        let (_ctl, stalled) = vde_handshake(&vlan).await;
        wait_for(|| vlan.ports() == 3).await;
        stalled
            .send(&frame(mac(1), mac(3), b"learn me"))
            .await
            .unwrap();
        assert_eq!(p[0].recv_payload().await, b"learn me");
        let payload = vec![0u8; 1500];
        for _ in 0..2000 {
            p[0].send_to(mac(3), &payload).await;
        }
        wait_for(|| vlan.stats().dropped.queue_full > 0).await;
        p[0].send_to(mac(2), b"unaffected").await;
        assert_eq!(p[1].recv_payload().await, b"unaffected");
        p[1].send_to(mac(1), b"back").await;
        assert_eq!(p[0].recv_payload().await, b"back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_vde_client_is_refused_and_others_still_join() {
        let (_dir, vlan) = start_vde().await;
        let ctl = vlan.vde_dir().unwrap().join("ctl");
        // A stream netdev's first frame, a version-1 request, a request
        // naming no socket.
        let client = Path::new("/nonexistent/.1-0");
        let mut v1 = vde::encode_request(client, "old");
        v1[4..8].copy_from_slice(&0u32.to_ne_bytes());
        let mut abstract_ = vde::encode_request(client, "abstract");
        abstract_[14] = 0;
        for bad in [
            vec![0, 0, 0, 60, 0xff, 0xff, 0xff, 0xff],
            v1,
            abstract_,
            vde::encode_request(client, "gone"),
        ] {
            let mut s = UnixStream::connect(&ctl).await.unwrap();
            s.write_all(&bad).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
            assert!(matches!(read, Ok(Ok(0))), "refused: {read:?} {answer:?}");
        }
        assert_eq!(vlan.ports(), 0);
        let mut p = learned_mixed(&vlan, "vs").await;
        p[0].send_to(mac(2), b"fine").await;
        assert_eq!(p[1].recv_payload().await, b"fine");
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

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("52:54:00:12:01:02").unwrap(), mac(2));
        assert_eq!(parse_mac("52-54-00-12-01-0A").unwrap(), mac(10));
        for bad in [
            "",
            "52:54:00:12:01",
            "52:54:00:12:01:02:03",
            "52:54:00:12:01:xx",
            "525:4:00:12:01:02",
        ] {
            assert!(matches!(parse_mac(bad), Err(VlanError::BadMac(_))), "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_script_protocol_actions() {
        let (_dir, vlan) = start().await;
        let mut p = learned(&vlan, &[mac(1), mac(2)]).await;
        let act = |json: &str| -> Result<serde_json::Value, VlanError> {
            let action: VlanAction = serde_json::from_str(json).unwrap();
            vlan.apply(&action)
        };
        act(r#"{"action": "set_link", "mac": "52:54:00:12:01:01", "up": false}"#).unwrap();
        p[1].send_to(mac(1), b"x").await;
        p[0].expect_nothing().await;
        act(r#"{"action": "set_link", "mac": "52:54:00:12:01:01", "up": true}"#).unwrap();
        act(r#"{"action": "partition", "groups": [["52:54:00:12:01:01"]]}"#).unwrap();
        p[1].send_to(mac(1), b"x").await;
        p[0].expect_nothing().await;
        act(r#"{"action": "heal"}"#).unwrap();
        act(r#"{"action": "set_loss", "fraction": 1.0}"#).unwrap();
        p[1].send_to(mac(1), b"x").await;
        p[0].expect_nothing().await;
        act(r#"{"action": "set_loss", "mac": null, "fraction": 0}"#).unwrap();
        act(r#"{"action": "set_delay", "mac": "52:54:00:12:01:01", "ms": 100}"#).unwrap();
        let sent = Instant::now();
        p[1].send_to(mac(1), b"y").await;
        assert_eq!(p[0].recv_payload().await, b"y");
        assert!(sent.elapsed() >= Duration::from_millis(100));

        let stats = act(r#"{"action": "stats"}"#).unwrap();
        assert_eq!(stats["ports"], 2);
        assert_eq!(stats["dropped"]["link_down"], 1);
        assert_eq!(stats["dropped"]["partitioned"], 1);
        assert_eq!(stats["dropped"]["loss"], 1);

        let err = act(r#"{"action": "set_loss", "fraction": 1.5}"#).unwrap_err();
        assert!(matches!(err, VlanError::BadFraction(_)));
        let err = act(r#"{"action": "set_delay", "ms": -1}"#).unwrap_err();
        assert!(matches!(err, VlanError::BadDelay(_)));
        let err = act(r#"{"action": "set_link", "mac": "nope", "up": true}"#).unwrap_err();
        assert!(matches!(err, VlanError::BadMac(_)));
    }
}
