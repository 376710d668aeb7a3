//! The VDE side of a VLAN switch: the protocol vde2's `vde_switch` speaks
//! with its clients, so that QEMU's `-netdev vde,sock=<dir>` (through
//! libvdeplug's `vde` module) joins our switch. NixOS start scripts join
//! VLAN `v` with `-netdev vde,id=vlan<i>,sock="$QEMU_VDE_SOCKET_<v>"`; the
//! driver sets that variable to the directory this module serves.
//!
//! ## The protocol (request version 3, as libvdeplug of vde2 and of vdeplug4 send it)
//!
//! The switch is a directory holding a listening stream socket `ctl`.
//! A client
//!
//! 1. binds a datagram socket of its own, normally in that directory
//!    (`.<pid>-<n>`), and connects a stream socket to `<dir>/ctl`;
//! 2. sends one request (all fields in host byte order, packed):
//!    `u32 magic = 0xfeedface`, `u32 version = 3`, `u32 type` (low byte 0,
//!    `REQ_NEW_CONTROL`, or 1, `REQ_NEW_PORT0`; a requested port number in
//!    the bits above), `struct sockaddr_un` of its datagram socket
//!    (`u16 family` + 108 bytes of path, 110 bytes), then a description of up
//!    to 128 bytes (libvdeplug: `QEMU user=<user> PID=<pid>`), not
//!    NUL-terminated: 122 bytes and the description in one write;
//! 3. reads the switch's answer: the `sockaddr_un` (110 bytes) of a new
//!    datagram socket the switch made for this port, already connected to
//!    the client's;
//! 4. connects its datagram socket to that address (vdeplug4's libvdeplug
//!    then removes its own socket file; vde2's, which nixpkgs' QEMU links,
//!    removes it when it closes).
//!
//! From then on every datagram is one Ethernet frame, both ways, and the
//! port lives as long as the control connection: the client closing it
//! (QEMU exiting) ends the port. Nothing else is sent on the control
//! connection; anything that is, is ignored.
//!
//! Here a port's socket is `<dir>/<n>.port` (vde_switch's are
//! `<dir>/<port>.<fd>`). A requested port number (`-netdev vde,port=N`) is
//! ignored: the ports of this switch have no numbers a test could see, and
//! faults are keyed by MAC for both kinds of port. A request that is not
//! version 3 with the magic (an old version-1 client, or something that is
//! not a VDE client at all) is refused: the connection is closed, and the
//! switch logs what the client sent.
//!
//! A joined port has a reader, which forwards each datagram (a runt, or one
//! longer than [`MAX_FRAME_LEN`], is dropped) and ends the port when the
//! control connection closes, and a writer, which sends each queued frame
//! as one datagram.

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixDatagram, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::switch::{Counters, PortId, Queued, Shared};
use super::{MAX_FRAME_LEN, MIN_FRAME_LEN};

/// `SWITCH_MAGIC` of vde2: the first field of every request.
pub const SWITCH_MAGIC: u32 = 0xfeed_face;

/// The request version served (libvdeplug's since vde2 2.x).
pub const REQUEST_VERSION: u32 = 3;

/// `REQ_NEW_CONTROL`: a new port.
const REQ_NEW_CONTROL: u32 = 0;

/// `REQ_NEW_PORT0`: a new port on vde_switch's management port 0 (served
/// as any port here).
const REQ_NEW_PORT0: u32 = 1;

/// `AF_UNIX`, as `sockaddr_un.sun_family` holds it.
const AF_UNIX: u16 = 1;

/// Bytes of `sockaddr_un.sun_path`.
const SUN_PATH_LEN: usize = 108;

/// Bytes of a `struct sockaddr_un` on Linux (family + path).
pub const SOCKADDR_UN_LEN: usize = 2 + SUN_PATH_LEN;

/// Bytes of a version-3 request before its description.
pub const HEADER_LEN: usize = 12 + SOCKADDR_UN_LEN;

/// The longest description libvdeplug sends (`MAXDESCR`).
pub const MAX_DESCRIPTION_LEN: usize = 128;

/// How long a client has to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a VDE directory's path leaves for the names in it: libvdeplug's
/// `/.<pid>-<n>` (13 to 15 bytes) and this switch's `/<n>.port`.
pub const DIR_NAME_ROOM: usize = 16;

/// What a client asked for, from its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's datagram socket, which the port's socket connects to.
    pub client: PathBuf,
    /// The description the client gave (QEMU: `QEMU user=<u> PID=<pid>`).
    pub description: String,
}

/// Why a client's request was refused. Each message names what the client
/// sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The first four bytes are not `SWITCH_MAGIC`.
    #[error(
        "it sent magic {found:#010x}, not {SWITCH_MAGIC:#010x} (first bytes {first:02x?}): \
         it does not speak vde_switch's protocol (QEMU's -netdev vde, libvdeplug's vde module \
         do; QEMU's -netdev stream belongs on the switch's stream socket, QEMU_VLAN_SOCKET_<v>)"
    )]
    BadMagic { found: u32, first: Vec<u8> },
    /// Not a version-3 request.
    #[error(
        "it sent protocol version {found}, but only version {REQUEST_VERSION} (libvdeplug's) \
         is served (a version-1 request has its request type there)"
    )]
    BadVersion { found: u32 },
    /// A request type other than a new port.
    #[error(
        "it sent request type {found:#x} (type {}, port {}), but only a new port \
         (type 0, REQ_NEW_CONTROL, or 1, REQ_NEW_PORT0) is served",
        found & 0xff,
        found >> 8
    )]
    BadType { found: u32 },
    /// The client's socket address is not a unix socket address.
    #[error("its data socket address has family {found}, not AF_UNIX ({AF_UNIX})")]
    BadFamily { found: u16 },
    /// The client's socket address has no path.
    #[error(
        "its data socket address has no path (empty or abstract): only a client socket \
         that is a file can be joined"
    )]
    NoPath,
    /// The connection ended before a whole request came.
    #[error(
        "the connection ended after {len} bytes of the request; a version-{REQUEST_VERSION} \
         request has at least {HEADER_LEN}"
    )]
    Short { len: usize },
    /// The request did not come in time.
    #[error(
        "it sent {len} bytes of its request in {limit:?}, and a request has at least \
         {HEADER_LEN}"
    )]
    Timeout { len: usize, limit: Duration },
    /// Reading the request failed.
    #[error("reading its request failed: {0}")]
    Io(#[from] io::Error),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(b)
}

/// Checks the fields of a request that have arrived so far (magic and
/// version), so that a client that is wrong from its first bytes is refused
/// without waiting for a whole request.
fn check_start(bytes: &[u8]) -> Result<(), RequestError> {
    if bytes.len() >= 4 {
        let magic = u32_at(bytes, 0);
        if magic != SWITCH_MAGIC {
            return Err(RequestError::BadMagic {
                found: magic,
                first: bytes[..bytes.len().min(16)].to_vec(),
            });
        }
    }
    if bytes.len() >= 8 {
        let version = u32_at(bytes, 4);
        if version != REQUEST_VERSION {
            return Err(RequestError::BadVersion { found: version });
        }
    }
    Ok(())
}

/// Parses a whole version-3 request (header and description).
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    check_start(bytes)?;
    if bytes.len() < HEADER_LEN {
        return Err(RequestError::Short { len: bytes.len() });
    }
    let kind = u32_at(bytes, 8);
    if !matches!(kind & 0xff, REQ_NEW_CONTROL | REQ_NEW_PORT0) {
        return Err(RequestError::BadType { found: kind });
    }
    let family = u16::from_ne_bytes([bytes[12], bytes[13]]);
    if family != AF_UNIX {
        return Err(RequestError::BadFamily { found: family });
    }
    let path = &bytes[14..HEADER_LEN];
    let path = &path[..memchr::memchr(0, path).unwrap_or(path.len())];
    if path.is_empty() {
        return Err(RequestError::NoPath);
    }
    let description = &bytes[HEADER_LEN..];
    let description = &description[..memchr::memchr(0, description)
        .unwrap_or(description.len())
        .min(MAX_DESCRIPTION_LEN)];
    Ok(Request {
        client: PathBuf::from(std::ffi::OsString::from_vec(path.to_vec())),
        description: String::from_utf8_lossy(description).into_owned(),
    })
}

/// Writes a request as libvdeplug does (tests, and a reference for the
/// layout).
pub fn encode_request(client: &Path, description: &str) -> Vec<u8> {
    let mut req = Vec::with_capacity(HEADER_LEN + description.len());
    req.extend_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    req.extend_from_slice(&REQUEST_VERSION.to_ne_bytes());
    req.extend_from_slice(&REQ_NEW_CONTROL.to_ne_bytes());
    req.extend_from_slice(&encode_address(client).unwrap_or([0; SOCKADDR_UN_LEN]));
    let description = description.as_bytes();
    req.extend_from_slice(&description[..description.len().min(MAX_DESCRIPTION_LEN)]);
    req
}

/// The `struct sockaddr_un` of a socket file, as the switch answers a
/// request; `None` if the path does not fit (with its NUL).
pub fn encode_address(path: &Path) -> Option<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_LEN {
        return None;
    }
    let mut addr = [0u8; SOCKADDR_UN_LEN];
    addr[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
    addr[2..2 + bytes.len()].copy_from_slice(bytes);
    Some(addr)
}

/// Reads one request from a client's control connection, refusing it as
/// soon as its first bytes are wrong.
pub async fn read_request(ctl: &mut UnixStream, limit: Duration) -> Result<Request, RequestError> {
    let mut buf = [0u8; HEADER_LEN + MAX_DESCRIPTION_LEN];
    let mut len = 0;
    let deadline = Instant::now() + limit;
    // libvdeplug writes the request in one send, so the reads that bring
    // the header bring the description too.
    while len < HEADER_LEN {
        let n = match tokio::time::timeout_at(deadline, ctl.read(&mut buf[len..])).await {
            Ok(read) => read?,
            Err(_) => return Err(RequestError::Timeout { len, limit }),
        };
        if n == 0 {
            return Err(RequestError::Short { len });
        }
        len += n;
        check_start(&buf[..len])?;
    }
    parse_request(&buf[..len])
}

/// Accepts VDE clients on `<dir>/ctl` until the `Vlan` is dropped (which
/// aborts this task, and with it the handshakes in progress).
pub(super) async fn accept_clients(shared: Arc<Shared>, listener: UnixListener, dir: PathBuf) {
    let mut joining = JoinSet::new();
    let mut next = 1u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let socket = dir.join(format!("{next:03}.port"));
                    next += 1;
                    joining.spawn(join(Arc::clone(&shared), stream, socket));
                }
                Err(e) => {
                    eprintln!(
                        "vlan{}: cannot accept a VDE connection on {}/ctl: {e}",
                        shared.number,
                        dir.display()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = joining.join_next(), if !joining.is_empty() => {}
        }
    }
}

/// Serves one client's request: makes the port's datagram socket at
/// `socket`, answers, and adds the port. A refused or failed client gets
/// its connection closed and a log line saying why.
async fn join(shared: Arc<Shared>, mut ctl: UnixStream, socket: PathBuf) {
    let ctl_path = socket.parent().map(|d| d.join("ctl")).unwrap_or_default();
    let refuse = |who: &str, what: String| {
        eprintln!(
            "vlan{}: refused a VDE client{who} on {}: {what}",
            shared.number,
            ctl_path.display()
        );
    };
    let request = match read_request(&mut ctl, REQUEST_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => return refuse("", e.to_string()),
    };
    let who = format!(" ({:?})", request.description);
    let Some(answer) = encode_address(&socket) else {
        return refuse(
            &who,
            format!(
                "the port socket path {} does not fit in a sockaddr_un",
                socket.display()
            ),
        );
    };
    // The directory is the switch's own (mode 0700): a file left at this
    // name by an earlier switch is stale.
    let _ = std::fs::remove_file(&socket);
    let data = match UnixDatagram::bind(&socket) {
        Ok(d) => d,
        Err(e) => {
            return refuse(
                &who,
                format!("cannot make the port socket {}: {e}", socket.display()),
            )
        }
    };
    if let Err(e) = data.connect(&request.client) {
        let _ = std::fs::remove_file(&socket);
        return refuse(
            &who,
            format!(
                "cannot connect to its data socket {}: {e}",
                request.client.display()
            ),
        );
    }
    if let Err(e) = ctl.write_all(&answer).await {
        let _ = std::fs::remove_file(&socket);
        return refuse(&who, format!("cannot answer it: {e}"));
    }
    add_port(&shared, ctl, data, socket);
}

/// Makes a joined client a port of the switch: `data` is the port's
/// datagram socket (the file `socket_file`), connected to the client's.
fn add_port(shared: &Arc<Shared>, ctl: UnixStream, data: UnixDatagram, socket_file: PathBuf) {
    shared.add_port(Some(socket_file), |id, queued| {
        let data = Arc::new(data);
        let reader = tokio::spawn(read_port(Arc::clone(shared), id, ctl, Arc::clone(&data)));
        let writer = tokio::spawn(write_port(Arc::clone(shared), id, queued, data));
        (reader, writer)
    });
}

/// Reads a VDE port's datagrams and forwards them, until the client closes
/// its control connection.
async fn read_port(shared: Arc<Shared>, id: PortId, mut ctl: UnixStream, data: Arc<UnixDatagram>) {
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
async fn write_port(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::fake_qemu::{frame, learned_mixed, mac, start_vde, vde_handshake, wait_for};
    use crate::vlan::fake_qemu::{BROADCAST, WAIT};

    fn request(client: &str, description: &str) -> Vec<u8> {
        encode_request(Path::new(client), description)
    }

    #[test]
    fn parses_what_libvdeplug_sends() {
        // The layout strace shows for `vde_plug <dir>` against vde_switch:
        // 149 bytes = 122 + "vdeplug: user=root pid=7248".
        let req = request("/tmp/sw/.07248-00000", "vdeplug: user=root pid=7248");
        assert_eq!(req.len(), 149);
        assert_eq!(&req[..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&req[12..14], &1u16.to_ne_bytes());
        assert_eq!(&req[14..34], b"/tmp/sw/.07248-00000");
        let parsed = parse_request(&req).unwrap();
        assert_eq!(parsed.client, Path::new("/tmp/sw/.07248-00000"));
        assert_eq!(parsed.description, "vdeplug: user=root pid=7248");

        // No description; a requested port number (type 0 + port << 8),
        // and management port 0 (type 1): all served.
        assert_eq!(parse_request(&request("/x", "")).unwrap().description, "");
        for kind in [5u32 << 8, 1] {
            let mut r = request("/x", "d");
            r[8..12].copy_from_slice(&kind.to_ne_bytes());
            assert_eq!(parse_request(&r).unwrap().client, Path::new("/x"));
        }
    }

    #[test]
    fn refuses_bad_requests_naming_what_was_sent() {
        let good = request("/tmp/sw/.1-0", "QEMU");
        let with = |at: usize, bytes: &[u8]| {
            let mut r = good.clone();
            r[at..at + bytes.len()].copy_from_slice(bytes);
            parse_request(&r).unwrap_err()
        };
        let e = with(0, &0x1234_5678u32.to_ne_bytes());
        assert!(matches!(
            e,
            RequestError::BadMagic {
                found: 0x1234_5678,
                ..
            }
        ));
        assert!(e.to_string().contains("0x12345678"), "{e}");
        let e = with(4, &1u32.to_ne_bytes());
        assert!(matches!(e, RequestError::BadVersion { found: 1 }));
        assert!(e.to_string().contains("version 1"), "{e}");
        let e = with(8, &2u32.to_ne_bytes());
        assert!(matches!(e, RequestError::BadType { found: 2 }), "{e}");
        let e = with(12, &2u16.to_ne_bytes());
        assert!(matches!(e, RequestError::BadFamily { found: 2 }), "{e}");
        let e = with(14, &[0]);
        assert!(matches!(e, RequestError::NoPath), "{e}");
        let e = parse_request(&good[..100]).unwrap_err();
        assert!(matches!(e, RequestError::Short { len: 100 }), "{e}");
        // A QEMU -netdev stream frame (a 4-byte length first) is no magic.
        let e = parse_request(&[0, 0, 0, 60, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("QEMU_VLAN_SOCKET"), "{e}");
    }

    #[test]
    fn a_long_description_is_cut_and_a_nul_ends_it() {
        let long = "x".repeat(200);
        let mut r = request("/x", "");
        r.extend_from_slice(long.as_bytes());
        assert_eq!(parse_request(&r).unwrap().description.len(), 128);
        let mut r = request("/x", "QEMU");
        r.extend_from_slice(b"\0junk");
        assert_eq!(parse_request(&r).unwrap().description, "QEMU");
    }

    #[test]
    fn encodes_the_answer_as_a_sockaddr_un() {
        let a = encode_address(Path::new("/tmp/sw/001.port")).unwrap();
        assert_eq!(a.len(), 110);
        assert_eq!(&a[..2], &1u16.to_ne_bytes());
        assert_eq!(&a[2..18], b"/tmp/sw/001.port");
        assert!(a[18..].iter().all(|b| *b == 0));
        assert!(encode_address(Path::new(&"x".repeat(107))).is_some());
        assert!(encode_address(Path::new(&"x".repeat(108))).is_none());
    }

    #[tokio::test]
    async fn reads_a_request_and_refuses_early_or_late_ones() {
        // Whole, in two writes.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let req = request("/tmp/c", "QEMU user=u PID=1");
        b.write_all(&req[..50]).await.unwrap();
        let reader = tokio::spawn(async move { read_request(&mut a, WAIT).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.write_all(&req[50..]).await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.client, Path::new("/tmp/c"));

        // A wrong magic is refused at once, without waiting for 122 bytes.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[1, 2, 3, 4]).await.unwrap();
        let e = read_request(&mut a, WAIT).await.unwrap_err();
        assert!(matches!(e, RequestError::BadMagic { .. }), "{e}");
        // So is a wrong version.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&req[..4]).await.unwrap();
        b.write_all(&7u32.to_ne_bytes()).await.unwrap();
        let e = read_request(&mut a, WAIT).await.unwrap_err();
        assert!(matches!(e, RequestError::BadVersion { found: 7 }), "{e}");

        // Cut short, or too slow.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&req[..30]).await.unwrap();
        drop(b);
        let e = read_request(&mut a, WAIT).await.unwrap_err();
        assert!(matches!(e, RequestError::Short { len: 30 }), "{e}");
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&req[..30]).await.unwrap();
        let e = read_request(&mut a, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Timeout { len: 30, .. }), "{e}");
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
        let mut v1 = encode_request(client, "old");
        v1[4..8].copy_from_slice(&0u32.to_ne_bytes());
        let mut abstract_ = encode_request(client, "abstract");
        abstract_[14] = 0;
        for bad in [
            vec![0, 0, 0, 60, 0xff, 0xff, 0xff, 0xff],
            v1,
            abstract_,
            encode_request(client, "gone"),
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
}
