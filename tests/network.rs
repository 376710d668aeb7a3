//! Multi-machine tests against real guests: the in-process VLAN switches,
//! names from `vmtest.hosts`, and the network faults (block, partition,
//! loss, delay), plus the cleanup of switches, sockets and QEMUs.
//!
//! Three tests, to keep boots few:
//! - `client_server_tutorial`: the NixOS tutorial's nginx server and curl
//!   client (two `systemd` guests);
//! - `vlans_and_faults`: four `tiny` guests on two VLANs for reachability,
//!   block/unblock, partition/heal, loss, delay and the cleanup;
//! - `vde_start_scripts`: two `tiny` guests whose start scripts join VLAN 1
//!   with `-netdev vde,sock=$QEMU_VDE_SOCKET_1` as NixOS' do, and one image
//!   node on the same VLAN through `-netdev stream`.

mod common;

use common::{sh, succeed};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix_vmtest::driver::Driver;
use nix_vmtest::log::Log;
use nix_vmtest::machine::shell::UntilMode;
use nix_vmtest::machine::Machine;
use nix_vmtest::script::probe::port_probe;
use nix_vmtest::spec::{format_mac, ip_address, mac_address, MachineSpec};

/// How long one test may take: each boots several guests under TCG and
/// takes 1 to 2 min on a loaded host.
const LIMIT: Duration = Duration::from_secs(600);

fn idx(d: &Driver, name: &str) -> usize {
    d.machine_index(name)
        .unwrap_or_else(|| panic!("no machine {name}"))
}

/// Starts every machine at once (the boots overlap), then waits for each
/// shell; prints how long that took.
async fn boot_all(d: &mut Driver) {
    let t = Instant::now();
    for m in &mut d.machines {
        m.start(false).await.unwrap();
    }
    for m in &mut d.machines {
        m.connect().await.unwrap();
        println!("{}: shell after {:.1}s", m.name, t.elapsed().as_secs_f64());
    }
}

/// The tutorial (nix.dev "Integration testing with NixOS VMs"): a server
/// with nginx, a client that curls it by name.
#[tokio::test(flavor = "current_thread")]
async fn client_server_tutorial() {
    common::within(LIMIT, async {
        let t0 = Instant::now();
        let mut d = common::driver(vec![
            common::systemd("server", vec![1]),
            common::systemd("client", vec![1]),
        ])
        .await;
        let out_dir = d.opts.out_dir.clone();
        let (client, server) = (idx(&d, "client"), idx(&d, "server"));
        boot_all(&mut d).await;

        // The shell answers only once the network and /etc/hosts are applied:
        // the very first command already resolves the other machine.
        let first = succeed(
            &mut d.machines[client],
            "systemctl is-active vmtest-net.service; getent hosts server; ip -4 -o addr show eth0",
        )
        .await;
        assert!(first.starts_with("active\n"), "{first}");
        assert!(first.contains("192.168.1.2 "), "{first}");
        assert!(first.contains("server"), "{first}");
        assert!(first.contains("inet 192.168.1.1/24"), "{first}");

        // server.wait_for_unit("nginx.service"); server.wait_for_open_port(80)
        let t = Instant::now();
        let s = &mut d.machines[server];
        s.wait_for_unit("nginx.service", None, Some(Duration::from_secs(300)))
            .await
            .unwrap();
        s.wait_until(
            "port 80 on localhost to be open",
            &port_probe("localhost", 80),
            UntilMode::Succeed,
            Some(Duration::from_secs(300)),
        )
        .await
        .unwrap();
        println!(
            "server: nginx up and port 80 open {:.1}s later",
            t.elapsed().as_secs_f64()
        );

        // client.succeed("curl http://server/ | grep -o \"Welcome to nginx!\"")
        let t = Instant::now();
        let out = succeed(
            &mut d.machines[client],
            "curl --silent --show-error http://server/ | grep -o \"Welcome to nginx!\"",
        )
        .await;
        // The page says it twice (title and heading).
        assert!(
            !out.is_empty() && out.lines().all(|l| l == "Welcome to nginx!"),
            "{out:?}"
        );
        println!("client: curl by name in {:.2}s", t.elapsed().as_secs_f64());

        // The server blocked: the client's request fails; unblocked: it works.
        d.set_links(server, false);
        let (st, out) = sh(
            &mut d.machines[client],
            "curl --silent --show-error --max-time 3 http://server/ 2>&1",
        )
        .await;
        assert_ne!(st, 0, "curl reached a blocked server: {out}");
        d.set_links(server, true);
        let out = succeed(
            &mut d.machines[client],
            "curl --silent --show-error --max-time 20 http://server/ | grep -c \"Welcome to nginx!\"",
        )
        .await;
        assert_ne!(out.trim(), "0");

        drop(d);
        let _ = std::fs::remove_dir_all(&out_dir);
        println!("client_server_tutorial: {:.1}s", t0.elapsed().as_secs_f64());
    })
    .await;
}

/// `ping -c1 -W2`: whether `ip` answers.
async fn reaches(m: &mut Machine, ip: &str) -> bool {
    sh(m, &format!("ping -c1 -W2 {ip}")).await.0 == 0
}

/// Pings each `(from, to, expected)` pair and fails listing every pair
/// whose answer differed, under the heading `what`.
async fn expect_reach(d: &mut Driver, what: &str, cases: &[(usize, &str, bool)]) {
    let mut wrong = vec![];
    for &(i, to, want) in cases {
        let got = reaches(&mut d.machines[i], to).await;
        if got != want {
            let from = &d.machines[i].name;
            wrong.push(format!("{from} -> {to}: reached={got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{what}: {wrong:#?}");
}

/// One ping run: packets sent and received, and the RTTs in ms.
struct Pings {
    sent: u32,
    received: u32,
    rtts: Vec<f64>,
}

impl Pings {
    fn median(&self) -> f64 {
        let mut v = self.rtts.clone();
        assert!(!v.is_empty(), "no ping replies");
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn min(&self) -> f64 {
        self.rtts.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// busybox `ping -c COUNT -i INTERVAL -W 3 IP`, parsed.
async fn ping(m: &mut Machine, ip: &str, count: u32, interval: &str) -> Pings {
    let (_, out) = sh(m, &format!("ping -c {count} -i {interval} -W 3 {ip}")).await;
    let mut p = Pings {
        sent: 0,
        received: 0,
        rtts: vec![],
    };
    for line in out.lines() {
        if let Some(t) = line.split(" time=").nth(1) {
            p.rtts.push(
                t.trim_end_matches(" ms")
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{line}")),
            );
        }
        if line.contains("packets transmitted") {
            let n: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            p.sent = n[0];
            p.received = n[1];
        }
    }
    assert_eq!(p.sent, count, "{}: ping output: {out}", m.name);
    p
}

/// Every QEMU pid of the driver's machines.
fn qemu_pids(d: &Driver) -> Vec<u32> {
    d.machines.iter().filter_map(|m| m.qemu_pid()).collect()
}

/// Four tiny guests: a on VLAN 1, b on 1 and 2, c on 2, d on 1.
#[tokio::test(flavor = "current_thread")]
async fn vlans_and_faults() {
    common::within(LIMIT, async {
        let t0 = Instant::now();
        let mut d = common::driver(vec![
            common::tiny("a", vec![1]),
            common::tiny("b", vec![1, 2]),
            common::tiny("c", vec![2]),
            common::tiny("d", vec![1]),
        ])
        .await;
        let out_dir = d.opts.out_dir.clone();
        let (a, b, c, dd) = (idx(&d, "a"), idx(&d, "b"), idx(&d, "c"), idx(&d, "d"));
        // Nodes are numbered in name order: a=1, b=2, c=3, d=4.
        let ip = |v: u32, n: u32| ip_address(v, n).to_string();
        let (a1, b1, b2, c2, d1) = (ip(1, 1), ip(1, 2), ip(2, 2), ip(2, 3), ip(1, 4));
        let mac = mac_address;
        boot_all(&mut d).await;
        assert_eq!(d.vlans[&1].ports(), 3, "a, b and d joined VLAN 1");
        assert_eq!(d.vlans[&2].ports(), 2, "b and c joined VLAN 2");

        // --- 2. Reachability: exactly the nodes that share a VLAN. -----------
        let t = Instant::now();
        // Names from vmtest.hosts (each node's address on its first VLAN).
        let hosts = succeed(&mut d.machines[a], "cat /etc/hosts").await;
        for line in [
            format!("{a1} a"),
            format!("{b1} b"),
            format!("{c2} c"),
            format!("{d1} d"),
        ] {
            assert!(hosts.lines().any(|l| l == line), "{line:?} in {hosts}");
        }
        #[rustfmt::skip]
        expect_reach(&mut d, "reachability", &[
            (a, "b", true),
            (a, &b1, true),
            (a, &d1, true),
            (a, &b2, false), // b's VLAN 2 address: no route from VLAN 1 only
            (a, &c2, false),
            (b, "a", true),
            (b, "c", true),
            (b, &d1, true),
            (c, "b", false), // "b" is b's VLAN 1 address, which c cannot reach
            (c, &b2, true),
            (c, &a1, false),
            (c, &d1, false),
            (dd, "a", true),
            (dd, &b1, true),
            (dd, &c2, false),
        ]).await;
        // Not only routing: a given an address in c's subnet still cannot
        // reach c, because VLAN 1 and VLAN 2 are separate switches.
        succeed(&mut d.machines[a], "ip addr add 192.168.2.101/24 dev eth0").await;
        succeed(&mut d.machines[c], "ip addr add 192.168.1.103/24 dev eth0").await;
        #[rustfmt::skip]
        expect_reach(&mut d, "separate switches", &[
            (a, &c2, false),
            (c, &a1, false),
            (c, &d1, false),
        ]).await;
        succeed(&mut d.machines[a], "ip addr del 192.168.2.101/24 dev eth0").await;
        succeed(&mut d.machines[c], "ip addr del 192.168.1.103/24 dev eth0").await;
        println!("reachability: {:.1}s", t.elapsed().as_secs_f64());

        // --- 3. block / unblock. ----------------------------------------------
        let t = Instant::now();
        let before = d.vlans[&1].stats().dropped.link_down;
        d.set_links(b, false); // both of b's links (VLAN 1 and 2)
        #[rustfmt::skip]
        expect_reach(&mut d, "b blocked", &[
            (a, &b1, false),
            (c, &b2, false),
            (b, &d1, false),
            (a, &d1, true), // others on the VLAN are unaffected
        ]).await;
        assert!(d.vlans[&1].stats().dropped.link_down > before);
        d.set_links(b, true);
        #[rustfmt::skip]
        expect_reach(&mut d, "b unblocked", &[
            (a, &b1, true),
            (c, &b2, true),
            (b, &d1, true),
        ]).await;
        println!("block/unblock: {:.1}s", t.elapsed().as_secs_f64());

        // --- 4. partition / heal on VLAN 1: {a, d} | {b}. -------------------
        let t = Instant::now();
        d.vlans[&1].partition(vec![vec![mac(1, 1), mac(1, 4)], vec![mac(1, 2)]]);
        #[rustfmt::skip]
        expect_reach(&mut d, "partition {a, d} | {b}", &[
            (a, &d1, true),
            (dd, &a1, true),
            (a, &b1, false),
            (dd, &b1, false),
            (b, &a1, false),
            (b, &c2, true), // VLAN 2 is not partitioned
        ]).await;
        // Unlisted MACs form one group: [a] listed, b and d together.
        d.vlans[&1].partition(vec![vec![mac(1, 1)]]);
        #[rustfmt::skip]
        expect_reach(&mut d, "partition {a} | the rest", &[
            (b, &d1, true),
            (dd, &a1, false),
        ]).await;
        d.vlans[&1].heal();
        #[rustfmt::skip]
        expect_reach(&mut d, "healed", &[
            (a, &b1, true),
            (b, &a1, true),
            (dd, &a1, true),
        ]).await;
        assert!(d.vlans[&1].stats().dropped.partitioned > 0);
        println!("partition/heal: {:.1}s", t.elapsed().as_secs_f64());

        // --- 5a. delay: 200 ms on b's VLAN 1 link. -----------------------------
        // A MAC's delay applies to every frame through its link, both ways, so
        // a ping a -> b -> a is held 2 x 200 ms.
        let t = Instant::now();
        let base = ping(&mut d.machines[a], &b1, 10, "0.2").await;
        assert_eq!(base.received, 10, "baseline pings lost");
        d.vlans[&1].set_delay(Some(mac(1, 2)), Duration::from_millis(200));
        let slow = ping(&mut d.machines[a], &b1, 10, "0.2").await;
        assert!(
            slow.received >= 9,
            "delayed pings lost: {}/10",
            slow.received
        );
        d.vlans[&1].set_delay(Some(mac(1, 2)), Duration::ZERO);
        let back = ping(&mut d.machines[a], &b1, 10, "0.2").await;
        println!(
            "delay 200 ms on b: RTT median {:.1} ms -> {:.1} ms (min {:.1}) -> cleared {:.1} ms ({:.1}s)",
            base.median(),
            slow.median(),
            slow.min(),
            back.median(),
            t.elapsed().as_secs_f64()
        );
        assert!(
            slow.median() > base.median() + 150.0,
            "delayed median {:.1} ms vs baseline {:.1} ms",
            slow.median(),
            base.median()
        );
        // The switch never delivers early: each RTT holds both delays.
        assert!(slow.min() >= 395.0, "delayed RTT min {:.1} ms", slow.min());
        assert!(
            slow.median() < base.median() + 400.0 + 300.0,
            "delayed median {:.1} ms vs baseline {:.1} ms",
            slow.median(),
            base.median()
        );
        assert!(
            back.median() < base.median() + 150.0,
            "cleared delay: median {:.1} ms vs baseline {:.1} ms",
            back.median(),
            base.median()
        );

        // --- 5b. loss: 0.5 VLAN-wide on VLAN 1 (requests and replies each). --
        let t = Instant::now();
        let dropped_before = d.vlans[&1].stats().dropped.loss;
        d.vlans[&1].set_loss(None, 0.5);
        let lossy = ping(&mut d.machines[a], &b1, 40, "0.2").await;
        // VLAN 2 is not affected.
        let other = ping(&mut d.machines[b], &c2, 10, "0.2").await;
        d.vlans[&1].set_loss(None, 0.0);
        let clear = ping(&mut d.machines[a], &b1, 40, "0.2").await;
        let frac = |p: &Pings| p.received as f64 / p.sent as f64;
        println!(
            "loss 0.5 on VLAN 1: received {}/40 ({:.0}%, expected ~25%); VLAN 2 {}/10; cleared {}/40 ({:.1}s)",
            lossy.received,
            frac(&lossy) * 100.0,
            other.received,
            clear.received,
            t.elapsed().as_secs_f64()
        );
        assert!(
            (0.05..=0.60).contains(&frac(&lossy)),
            "received {}/40 at loss 0.5",
            lossy.received
        );
        assert!(d.vlans[&1].stats().dropped.loss > dropped_before);
        assert_eq!(other.received, 10, "VLAN 2 lost pings");
        assert!(
            frac(&clear) >= 0.95,
            "received {}/40 after clearing loss",
            clear.received
        );

        // --- 6. Everything is gone after the run. ------------------------------
        let sockets: Vec<PathBuf> = d
            .vlans
            .values()
            .map(|v| v.socket_path().to_path_buf())
            .collect();
        let state_dir = sockets[0].parent().unwrap().to_path_buf();
        for s in &sockets {
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(s).unwrap_or_else(|e| panic!("{}: {e}", s.display()));
            assert!(meta.file_type().is_socket(), "{}", s.display());
        }
        assert!(state_dir.is_dir());
        let pids = qemu_pids(&d);
        assert_eq!(pids.len(), 4, "four QEMUs run");
        for pid in &pids {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(String::from_utf8_lossy(&cmd).contains("qemu-system"));
        }
        drop(d);
        for s in &sockets {
            assert!(!s.exists(), "{} left behind", s.display());
        }
        assert!(!state_dir.exists(), "{} left behind", state_dir.display());
        // The QEMUs are killed at once; their exit is reaped shortly after.
        let t = Instant::now();
        loop {
            let left: Vec<&u32> = pids
                .iter()
                .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "QEMU pids {left:?} still exist 10 s after the driver was dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("QEMUs gone {:.2}s after drop", t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&out_dir);
        println!("vlans_and_faults: {:.1}s", t0.elapsed().as_secs_f64());
    })
    .await;
}

/// Guests a and c join VLAN 1 through VDE (NixOS start scripts), b through
/// `-netdev stream` (an image node): all three talk through the one switch,
/// and block, partition and delay act on the VDE ports as on stream ports.
#[tokio::test(flavor = "current_thread")]
async fn vde_start_scripts() {
    common::within(LIMIT, async {
        let t0 = Instant::now();
        let scripts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "vde-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&scripts).unwrap();
        // Nodes are numbered in name order: a=1, b=2, c=3.
        let hosts = "a=192.168.1.1,b=192.168.1.2,c=192.168.1.3";
        let start_script = |name: &str, node: u32| MachineSpec {
            name: name.into(),
            start_script: Some(common::vde_start_script(&scripts, name, node, hosts)),
            image: None,
            snapshot: None,
            peer: None,
        };
        let machines = vec![
            start_script("a", 1),
            common::tiny("b", vec![1]),
            start_script("c", 3),
        ];
        let script_a = std::fs::read_to_string(scripts.join("run-a-vm")).unwrap();
        assert!(
            script_a.contains(r#"-netdev vde,id=vlan1,sock="$QEMU_VDE_SOCKET_1""#),
            "{script_a}"
        );
        let mut opts = common::options(machines);
        opts.spec.vlans = vec![1];
        let out_dir = opts.out_dir.clone();
        let mut d = Driver::new(opts, Log::new()).await.unwrap();
        let vde_dir = d.vlans[&1].vde_dir().unwrap().to_path_buf();
        assert!(vde_dir.join("ctl").exists());
        let (a, b, c) = (idx(&d, "a"), idx(&d, "b"), idx(&d, "c"));
        let ip = |n: u32| ip_address(1, n).to_string();
        let (a1, b1, c1) = (ip(1), ip(2), ip(3));
        let mac = |n: u32| mac_address(1, n);
        boot_all(&mut d).await;
        let stats = d.vlans[&1].stats();
        assert_eq!(
            (stats.ports, stats.vde_ports),
            (3, 2),
            "a and c joined through VDE, b through the stream socket"
        );
        let link = succeed(&mut d.machines[a], "ip -o link show eth0").await;
        assert!(link.contains(&format_mac(mac(1))), "{link}");

        // --- Reachability: VDE <-> VDE and VDE <-> stream, by name too. -----
        let t = Instant::now();
        #[rustfmt::skip]
        expect_reach(&mut d, "one switch", &[
            (a, "c", true),
            (c, &a1, true),
            (a, "b", true),
            (b, &a1, true),
            (b, &c1, true),
            (c, "b", true),
        ]).await;
        // Full-size frames both ways (1400 bytes of ICMP payload).
        succeed(&mut d.machines[a], &format!("ping -c 3 -s 1400 -W 3 {c1}")).await;
        succeed(&mut d.machines[b], &format!("ping -c 3 -s 1400 -W 3 {a1}")).await;
        println!("vde reachability: {:.1}s", t.elapsed().as_secs_f64());

        // --- Partition {a} | {b, c}, then heal. ------------------------------
        let t = Instant::now();
        let before = d.vlans[&1].stats().dropped.partitioned;
        d.vlans[&1].partition(vec![vec![mac(1)], vec![mac(2), mac(3)]]);
        #[rustfmt::skip]
        expect_reach(&mut d, "partition {a} | {b, c}", &[
            (a, &c1, false),
            (c, &a1, false),
            (a, &b1, false),
            (b, &c1, true), // stream <-> VDE on one side
            (c, &b1, true),
        ]).await;
        assert!(d.vlans[&1].stats().dropped.partitioned > before);
        d.vlans[&1].heal();
        #[rustfmt::skip]
        expect_reach(&mut d, "healed", &[
            (a, &c1, true),
            (c, &a1, true),
            (a, &b1, true),
        ]).await;
        println!("vde partition/heal: {:.1}s", t.elapsed().as_secs_f64());

        // --- block / unblock a VDE node. --------------------------------------
        d.set_links(c, false);
        #[rustfmt::skip]
        expect_reach(&mut d, "c blocked", &[
            (a, &c1, false),
            (b, &c1, false),
            (a, &b1, true),
        ]).await;
        d.set_links(c, true);
        expect_reach(&mut d, "c unblocked", &[(a, &c1, true)]).await;

        // --- Delay on a VDE port: 200 ms on c's link, both ways. -------------
        d.vlans[&1].set_delay(Some(mac(3)), Duration::from_millis(200));
        let slow = ping(&mut d.machines[a], &c1, 5, "0.3").await;
        d.vlans[&1].set_delay(Some(mac(3)), Duration::ZERO);
        assert!(
            slow.received >= 4,
            "delayed pings lost: {}/5",
            slow.received
        );
        assert!(slow.min() >= 395.0, "delayed RTT min {:.1} ms", slow.min());

        // --- Cleanup: the VDE directory goes with the driver. ------------------
        let pids = qemu_pids(&d);
        assert_eq!(pids.len(), 3, "three QEMUs run");
        drop(d);
        assert!(!vde_dir.exists(), "{} left behind", vde_dir.display());
        let t = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "QEMUs still run 10 s after the driver was dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_dir_all(&out_dir);
        let _ = std::fs::remove_dir_all(&scripts);
        println!("vde_start_scripts: {:.1}s", t0.elapsed().as_secs_f64());
    })
    .await;
}
