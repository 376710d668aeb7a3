//! The switch's stream-socket ports: QEMU's `-netdev stream` (and
//! `-netdev socket`) connects to the switch socket, and each connection is
//! one port. Each Ethernet frame goes as a 4-byte big-endian length and the
//! frame, both ways. The reader reads one frame at a time through a large
//! buffer; the writer gathers what is queued into one `write_all`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::switch::{Counters, PortId, Queued, Shared};
use super::{MAX_FRAME_LEN, MIN_FRAME_LEN};

/// A writer flushes its batch once it holds this many bytes.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Buffer of each port's reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Accepts connections until the `Vlan` is dropped.
pub(super) async fn accept_ports(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => add_port(&shared, stream),
            Err(e) => {
                // E.g. out of file descriptors: try again shortly rather
                // than spinning.
                eprintln!("vlan{}: cannot accept a connection: {e}", shared.number);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Makes a connection a port of the switch.
fn add_port(shared: &Arc<Shared>, stream: UnixStream) {
    shared.add_port(None, |id, queued| {
        let (read, write) = stream.into_split();
        let reader = tokio::spawn(read_port(Arc::clone(shared), id, read));
        let writer = tokio::spawn(write_port(Arc::clone(shared), id, queued, write));
        (reader, writer)
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::fake_qemu::{frame, learned, mac, start, wait_for, FakeQemu, BROADCAST};

    #[tokio::test]
    async fn a_batch_is_length_prefixed_frames_in_one_write() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_, mut write) = ours.into_split();
        let c = Counters::default();
        let mut batch = Batch {
            buf: Vec::new(),
            frames: 0,
            bytes: 0,
        };
        batch.flush(&mut write, &c).await.unwrap();
        batch.push(b"first");
        batch.push(&[7; 300]);
        batch.flush(&mut write, &c).await.unwrap();
        assert!(batch.buf.is_empty());
        drop(write);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        let mut want = vec![0, 0, 0, 5];
        want.extend_from_slice(b"first");
        want.extend_from_slice(&[0, 0, 1, 44]);
        want.extend_from_slice(&[7; 300]);
        assert_eq!(got, want);
        assert_eq!(Counters::get(&c.frames_forwarded), 2);
        assert_eq!(Counters::get(&c.bytes_forwarded), 305);
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
}
