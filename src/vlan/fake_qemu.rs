//! Test helpers for the switch: stand-ins for QEMU's `-netdev stream` and
//! `-netdev vde` clients, and switches to join.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixDatagram, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{vde, Mac, Vlan, MAX_FRAME_LEN};

/// How long a test waits for what must happen.
pub(super) const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for what must not happen.
pub(super) const QUIET: Duration = Duration::from_millis(150);

/// Node `n`'s MAC on VLAN 1.
pub(super) fn mac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x12, 0x01, n]
}

/// The broadcast MAC.
pub(super) const BROADCAST: Mac = [0xff; 6];

/// An Ethernet frame (IPv4's type) from `src` to `dst`.
pub(super) fn frame(dst: Mac, src: Mac, payload: &[u8]) -> Vec<u8> {
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
pub(super) struct FakeQemu {
    wire: FakeWire,
    pub(super) frames: mpsc::UnboundedReceiver<Vec<u8>>,
    pub(super) mac: Mac,
}

enum FakeWire {
    Stream(OwnedWriteHalf),
    Vde {
        data: Arc<UnixDatagram>,
        _ctl: OwnedWriteHalf,
    },
}

impl FakeQemu {
    pub(super) async fn connect(vlan: &Vlan, mac: Mac) -> FakeQemu {
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

    pub(super) async fn connect_vde(vlan: &Vlan, mac: Mac) -> FakeQemu {
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
    pub(super) async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.wire {
            FakeWire::Stream(write) => write.write_all(bytes).await.unwrap(),
            FakeWire::Vde { data, .. } => {
                data.send(bytes).await.unwrap();
            }
        }
    }

    pub(super) async fn send_to(&mut self, dst: Mac, payload: &[u8]) {
        let f = frame(dst, self.mac, payload);
        if matches!(self.wire, FakeWire::Vde { .. }) {
            return self.send_raw(&f).await;
        }
        let mut bytes = (f.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&f);
        self.send_raw(&bytes).await;
    }

    /// The next frame, failing the test if none comes.
    pub(super) async fn recv(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("no frame arrived in time")
            .expect("the switch closed the connection")
    }

    pub(super) async fn recv_payload(&mut self) -> Vec<u8> {
        self.recv().await[14..].to_vec()
    }

    /// Fails the test if a frame arrives within a short while.
    pub(super) async fn expect_nothing(&mut self) {
        if let Ok(Some(f)) = tokio::time::timeout(QUIET, self.frames.recv()).await {
            panic!("unexpected frame {:02x?}", &f[..f.len().min(20)]);
        }
    }

    /// Waits until the switch closes the connection.
    pub(super) async fn expect_closed(&mut self) {
        let closed =
            tokio::time::timeout(WAIT, async { while self.frames.recv().await.is_some() {} }).await;
        assert!(closed.is_ok(), "the switch did not close the connection");
    }
}

/// Joins `vlan` through its VDE directory as libvdeplug does: a
/// datagram socket in the directory, the request on `ctl`, the answer,
/// and the datagram socket connected to the port's.
pub(super) async fn vde_handshake(vlan: &Vlan) -> (UnixStream, UnixDatagram) {
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

pub(super) async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn start() -> (tempfile::TempDir, Vlan) {
    let dir = tempfile::tempdir().unwrap();
    let vlan = Vlan::start(1, dir.path().join("vlan1.sock")).await.unwrap();
    (dir, vlan)
}

/// A switch that serves VDE too, on `<tmp>/vde1.ctl`.
pub(super) async fn start_vde() -> (tempfile::TempDir, Vlan) {
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
pub(super) async fn learned_mixed(vlan: &Vlan, kinds: &str) -> Vec<FakeQemu> {
    let mut ports = Vec::new();
    for (i, kind) in kinds.chars().enumerate() {
        let m = mac(i as u8 + 1);
        ports.push(match kind {
            'v' => FakeQemu::connect_vde(vlan, m).await,
            _ => FakeQemu::connect(vlan, m).await,
        });
    }
    learn(ports).await
}

/// Makes the switch learn every port's MAC: each sends a broadcast, which
/// the others drain.
async fn learn(mut ports: Vec<FakeQemu>) -> Vec<FakeQemu> {
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
pub(super) async fn learned(vlan: &Vlan, macs: &[Mac]) -> Vec<FakeQemu> {
    let mut ports = Vec::new();
    for m in macs {
        ports.push(FakeQemu::connect(vlan, *m).await);
    }
    learn(ports).await
}
