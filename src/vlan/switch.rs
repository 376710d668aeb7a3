//! The forwarding core of a VLAN switch: the port table, MAC learning, the
//! faults' verdict on each frame copy, the ports' queues and the counters.
//! It does not know how a port's peer is connected: [`super::stream`] and
//! [`super::vde`] start a port's reader and writer, the reader hands frames
//! to [`Shared::forward`], and the writer drains the port's queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::faults::{Faults, Link, Verdict};
use super::Mac;

/// Frames a port's queue holds before the switch drops frames for it
/// (netem's default limit is 1000).
const PORT_QUEUE_FRAMES: usize = 1024;

/// A port's number, unique for the switch's life.
pub(super) type PortId = u64;

/// What the accept loops, the port tasks and the `Vlan` handle share.
pub(super) struct Shared {
    /// The VLAN's number, for log lines.
    pub(super) number: u32,
    state: Mutex<State>,
    pub(super) counters: Counters,
}

/// Counters since the switch started ([`super::VlanStats`] names them).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    pub(super) frames_forwarded: AtomicU64,
    pub(super) bytes_forwarded: AtomicU64,
    pub(super) link_down: AtomicU64,
    pub(super) partitioned: AtomicU64,
    pub(super) loss: AtomicU64,
    pub(super) queue_full: AtomicU64,
    pub(super) malformed: AtomicU64,
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
pub(super) struct Queued {
    pub(super) frame: Vec<u8>,
    /// Not before this time (a delay fault), or at once.
    pub(super) deliver_at: Option<Instant>,
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
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// The core of VLAN `number`'s switch, with no ports yet.
    pub(super) fn new(number: u32) -> Shared {
        Shared {
            number,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the
        // state is still consistent enough to keep switching.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the faults, and with them every port's link.
    pub(super) fn change_faults(&self, change: impl FnOnce(&mut Faults)) {
        let mut state = self.lock();
        change(&mut state.faults);
        state.refresh_links();
    }

    /// The ports connected now, and how many of them are VDE ports.
    pub(super) fn ports(&self) -> (usize, usize) {
        let state = self.lock();
        let vde = state.ports.values().filter(|p| p.socket_file.is_some());
        (state.ports.len(), vde.count())
    }

    /// Switches one frame (at least an Ethernet header long) from `from`.
    pub(super) fn forward(&self, from: PortId, mut frame: Vec<u8>) {
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

    /// Adds a port: `start` spawns its reader and writer, given the port's
    /// id and the queue its writer drains. `socket_file` is a VDE port's
    /// datagram socket, removed with the port. After the `Vlan` was
    /// dropped, nothing is started and `start` (with the connection it
    /// holds) is dropped.
    pub(super) fn add_port(
        &self,
        socket_file: Option<PathBuf>,
        start: impl FnOnce(PortId, mpsc::Receiver<Queued>) -> (JoinHandle<()>, JoinHandle<()>),
    ) {
        // Spawning under the lock keeps the tasks from running before the
        // port is in the table (they take the lock first thing they forward
        // or leave), and from being added after the `Vlan` was dropped.
        let mut state = self.lock();
        if state.closed {
            if let Some(file) = &socket_file {
                let _ = std::fs::remove_file(file);
            }
            return;
        }
        let id = state.next_port;
        state.next_port += 1;
        let (queue, queued) = mpsc::channel(PORT_QUEUE_FRAMES);
        let (reader, writer) = start(id, queued);
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
    pub(super) fn remove_port(&self, id: PortId) {
        let mut state = self.lock();
        if let Some(port) = state.ports.remove(&id) {
            for mac in &port.macs {
                state.macs.remove(mac);
            }
            port.close();
        }
    }

    /// Closes every port and refuses new ones (the `Vlan` is dropped).
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for (_, port) in state.ports.drain() {
            port.close();
        }
        state.macs.clear();
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

#[cfg(test)]
mod tests {
    use crate::vlan::fake_qemu::{frame, learned, mac, start, wait_for, FakeQemu, BROADCAST};

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
}
