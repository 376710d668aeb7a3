//! `cargo bench --bench network`: TCP throughput between two `tiny` guests
//! through our in-process switch (`src/vlan/`), next to the same transfer
//! between two other `tiny` guests through Debian's `vde_switch` (vde2), in
//! the same run, on the same host.
//!
//! All four guests run at once (so idle guests cost both cases the same):
//! `s1`, `s2` on VLAN 1 of the driver (QEMU `-netdev stream` to our switch's
//! unix socket); `v1`, `v2` with no driver VLAN but QEMU's own
//! `-netdev vde,sock=<dir>` to a `vde_switch -s <dir>` this bench starts
//! (libvdeplug: unix datagrams through the vde_switch process), given their
//! addresses with `vmtest.net=` kernel parameters. A transfer is busybox
//! `dd if=/dev/zero bs=64k count=N > /dev/tcp/<ip>/5000` (bash) into busybox
//! `nc -l -p 5000 | wc -c`,
//! timed on the host from the sending command's start to the receiver's
//! count being written (one command round trip, a few ms, is included); the
//! received byte count is checked. Rounds alternate ours / vde; medians are printed, with each
//! switch's evidence of having carried the bytes (our switch's forwarded
//! bytes, vde_switch's CPU time).
//!
//! `NIX_VMTEST_BENCH_QUICK=1`: 8 MiB × 2 rounds instead of 16 MiB × 3.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix_vmtest::driver::Driver;
use nix_vmtest::machine::shell::UntilMode;
use nix_vmtest::machine::Machine;

async fn run(m: &mut Machine, cmd: &str) -> String {
    let o = m
        .execute(cmd, Some(Duration::from_secs(300)), true)
        .await
        .unwrap_or_else(|e| panic!("{}: `{cmd}`: {e}", m.name));
    let out = String::from_utf8_lossy(&o.output).into_owned();
    assert_eq!(
        o.status, 0,
        "{}: `{cmd}` exited with {}: {out}",
        m.name, o.status
    );
    out
}

/// Waits (in the guest) until `cmd` succeeds; panics after `secs`.
async fn wait_for(m: &mut Machine, what: &str, cmd: &str, secs: u64) {
    m.wait_until(
        what,
        cmd,
        UntilMode::Succeed,
        Some(Duration::from_secs(secs)),
    )
    .await
    .unwrap();
}

/// One transfer of `blocks` × 64 KiB from `tx` to `rx` (at `rx_ip`);
/// returns MB/s (10^6 bytes per second), timed on the host from the start
/// of the sending command to the receiver's byte count being written (both
/// guests' clocks are not comparable at the millisecond).
async fn transfer(tx: &mut Machine, rx: &mut Machine, rx_ip: &str, blocks: u64) -> f64 {
    // busybox nc half-closes when its stdin ends, and the sending nc quits
    // when it reads the end from the socket: keep the receiver's stdin open
    // (a process substitution, which the pipeline does not wait for).
    run(
        rx,
        "rm -f /tmp/got /tmp/got.t; \
         (nc -l -p 5000 < <(exec sleep 1000001) | wc -c > /tmp/got.t; mv /tmp/got.t /tmp/got; \
          pkill -f 'sleep 1000001') </dev/null >/dev/null 2>&1 &",
    )
    .await;
    // Listening: port 5000 = 0x1388 in state 0A (LISTEN), IPv4 or IPv6.
    wait_for(
        rx,
        "nc to listen",
        "grep -q ':1388 0*:0000 0A' /proc/net/tcp /proc/net/tcp6",
        30,
    )
    .await;
    let t = Instant::now();
    run(
        tx,
        // bash's /dev/tcp: dd writes 64 KiB at a time straight into the
        // socket (busybox nc would copy it in small chunks).
        &format!("dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null > /dev/tcp/{rx_ip}/5000"),
    )
    .await;
    wait_for(rx, "the byte count", "test -e /tmp/got", 300).await;
    let secs = t.elapsed().as_secs_f64();
    let got: u64 = run(rx, "cat /tmp/got").await.trim().parse().unwrap();
    assert_eq!(got, blocks * 65536, "{} received {got} bytes", rx.name);
    (blocks * 65536) as f64 / secs / 1e6
}

/// Two distinct machines, mutably.
fn pair(d: &mut Driver, a: usize, b: usize) -> (&mut Machine, &mut Machine) {
    let (lo, hi) = (a.min(b), a.max(b));
    let (left, right) = d.machines.split_at_mut(hi);
    let (x, y) = (&mut left[lo], &mut right[0]);
    if a < b {
        (x, y)
    } else {
        (y, x)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("NIX_VMTEST_BENCH_QUICK").is_some();
    let (mb, rounds) = if quick { (8u64, 2) } else { (16u64, 3) };
    let blocks = mb * 1024 * 1024 / 65536;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("== nix-vmtest network bench: two tiny guests, {mb} MiB over TCP, {rounds} rounds each ==");
        // vde_switch in the foreground; it exits when its stdin closes, so
        // the pipe is held for the whole run.
        let vde_dir = tempfile::Builder::new()
            .prefix("nv-vde.")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = vde_dir.path().join("sw");
        let mut vde = tokio::process::Command::new("vde_switch")
            .arg("-s")
            .arg(&sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting vde_switch (Debian package vde2)");
        let vde_pid = vde.id().unwrap();
        let t = Instant::now();
        while !sock.join("ctl").exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "vde_switch did not create {}", sock.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let vde_node = |name: &str, n: u32| {
            let mut spec = common::tiny(name, vec![]);
            let img = spec.image.as_mut().unwrap();
            let mac = format!("52:54:00:12:09:{n:02x}");
            img.qemu_flags = vec![
                "-netdev".into(),
                format!("vde,id=vde0,sock={}", sock.display()),
                "-device".into(),
                format!("virtio-net-pci,netdev=vde0,mac={mac}"),
            ];
            img.kernel_params = format!(
                "vmtest.net={mac}=192.168.9.{n}/24 vmtest.hosts=v1=192.168.9.1,v2=192.168.9.2"
            );
            spec
        };
        let mut d = common::driver_quiet(vec![
            common::tiny("s1", vec![1]),
            common::tiny("s2", vec![1]),
            vde_node("v1", 1),
            vde_node("v2", 2),
        ])
        .await;
        let out_dir = d.opts.out_dir.clone();
        let t = Instant::now();
        for m in &mut d.machines {
            m.start(false).await.unwrap();
        }
        for m in &mut d.machines {
            m.connect().await.unwrap();
        }
        println!("4 guests booted in {:.1}s", t.elapsed().as_secs_f64());
        let i = |n: &str| d.machine_index(n).unwrap();
        let (s1, s2, v1, v2) = (i("s1"), i("s2"), i("v1"), i("v2"));
        // s1, s2 are nodes 1 and 2 of VLAN 1.
        let s2_ip = "192.168.1.2";
        let v2_ip = "192.168.9.2";
        for (a, ip) in [(s1, s2_ip), (v1, v2_ip)] {
            wait_for(&mut d.machines[a], "ping", &format!("ping -c1 -W1 {ip}"), 60).await;
        }
        println!("both pairs answer pings");
        // Warm-up (ARP, TCP caches, page cache of dd/nc).
        {
            let (tx, rx) = pair(&mut d, s1, s2);
            transfer(tx, rx, s2_ip, 64).await;
            let (tx, rx) = pair(&mut d, v1, v2);
            transfer(tx, rx, v2_ip, 64).await;
        }
        let mut ours = vec![];
        let mut theirs = vec![];
        let ours_bytes0 = d.vlans[&1].stats().bytes_forwarded;
        let mut vde_cpu = 0.0;
        for r in 0..rounds {
            let (tx, rx) = pair(&mut d, s1, s2);
            let x = transfer(tx, rx, s2_ip, blocks).await;
            ours.push(x);
            let (tx, rx) = pair(&mut d, v1, v2);
            let cpu0 = cpu_seconds(vde_pid);
            let y = transfer(tx, rx, v2_ip, blocks).await;
            vde_cpu += cpu_seconds(vde_pid) - cpu0;
            theirs.push(y);
            println!("round {}: ours {x:.1} MB/s, vde_switch {y:.1} MB/s", r + 1);
        }
        let st = d.vlans[&1].stats();
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
        println!(
            "throughput, our switch (-netdev stream):  median {:>7.1} MB/s  [{}]",
            median(ours.clone()),
            fmt(&ours)
        );
        println!(
            "throughput, vde_switch (-netdev vde):     median {:>7.1} MB/s  [{}]",
            median(theirs.clone()),
            fmt(&theirs)
        );
        println!(
            "evidence: our switch forwarded {:.1} MB in the timed rounds (dropped {:?}); \
             vde_switch (pid {vde_pid}) used {:.2} s CPU during its rounds",
            (st.bytes_forwarded - ours_bytes0) as f64 / 1e6,
            st.dropped,
            vde_cpu
        );
        drop(d);
        let _ = vde.start_kill();
        let _ = vde.wait().await;
        let _ = std::fs::remove_dir_all(&out_dir);
        drop(vde_dir);
    });
}
