//! The faults of a VLAN (link down, partition, loss, delay) as the user set
//! them, keyed by MAC, and the verdict they give on one frame from one port
//! to another. The fault model is in the [module docs](super).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Mac;

/// Faults as the user set them, by MAC.
#[derive(Default)]
pub(super) struct Faults {
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
pub(super) struct Link {
    down: bool,
    group: usize,
    loss: f64,
    delay: Duration,
}

/// What happens to one copy of a frame.
pub(super) enum Verdict {
    /// It passes, due at once or at the given time.
    Pass(Option<Instant>),
    LinkDown,
    Partitioned,
    Lost,
}

impl Faults {
    /// [`super::Vlan::set_link`].
    pub(super) fn set_link(&mut self, mac: Mac, up: bool) {
        if up {
            self.down.remove(&mac);
        } else {
            self.down.insert(mac);
        }
    }

    /// [`super::Vlan::partition`].
    pub(super) fn partition(&mut self, groups: Vec<Vec<Mac>>) {
        self.groups = groups
            .into_iter()
            .enumerate()
            .flat_map(|(i, group)| group.into_iter().map(move |mac| (mac, i + 1)))
            .collect();
    }

    /// [`super::Vlan::set_loss`].
    pub(super) fn set_loss(&mut self, mac: Option<Mac>, fraction: f64) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        match mac {
            None => self.vlan_loss = fraction,
            Some(mac) if fraction == 0.0 => {
                self.loss.remove(&mac);
            }
            Some(mac) => {
                self.loss.insert(mac, fraction);
            }
        }
    }

    /// [`super::Vlan::set_delay`].
    pub(super) fn set_delay(&mut self, mac: Option<Mac>, delay: Duration) {
        match mac {
            None => self.vlan_delay = delay,
            Some(mac) if delay.is_zero() => {
                self.delay.remove(&mac);
            }
            Some(mac) => {
                self.delay.insert(mac, delay);
            }
        }
    }

    /// The link of a port that has sent from `macs` (in the order first
    /// seen).
    pub(super) fn link_of(&self, macs: &[Mac]) -> Link {
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
    pub(super) fn judge(&self, from: &Link, to: &Link, now: &mut Option<Instant>) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::fake_qemu::{learned, mac, start, wait_for, FakeQemu};
    use crate::vlan::fake_qemu::{BROADCAST, QUIET};

    #[test]
    fn a_port_with_several_macs_takes_the_worst_of_them() {
        let mut faults = Faults::default();
        faults.set_link(mac(2), false);
        faults.set_loss(Some(mac(1)), 0.2);
        faults.set_loss(Some(mac(3)), 0.5);
        faults.set_delay(Some(mac(1)), Duration::from_millis(30));
        faults.set_delay(Some(mac(3)), Duration::from_millis(10));
        faults.partition(vec![vec![mac(4)], vec![mac(3), mac(1)]]);
        let link = faults.link_of(&[mac(1), mac(3)]);
        assert!(!link.down);
        assert_eq!(link.loss, 0.5);
        assert_eq!(link.delay, Duration::from_millis(30));
        assert_eq!(link.group, 2);
        // Down if any MAC is; the group of the first MAC a partition lists.
        let link = faults.link_of(&[mac(5), mac(2), mac(4), mac(1)]);
        assert!(link.down);
        assert_eq!(link.group, 1);
        assert_eq!(faults.link_of(&[mac(5)]).group, 0);

        // 0.0 and zero clear; a loss outside 0..=1 is clamped, NaN is 0.
        faults.set_loss(Some(mac(3)), 0.0);
        faults.set_delay(Some(mac(1)), Duration::ZERO);
        faults.set_link(mac(2), true);
        let link = faults.link_of(&[mac(1), mac(2), mac(3)]);
        assert!(!link.down);
        assert_eq!((link.loss, link.delay), (0.2, Duration::from_millis(10)));
        faults.set_loss(None, 7.0);
        assert_eq!(faults.vlan_loss, 1.0);
        faults.set_loss(None, f64::NAN);
        assert_eq!(faults.vlan_loss, 0.0);
    }

    #[test]
    fn verdicts_in_order_down_partition_loss_delay() {
        let mut faults = Faults::default();
        let quiet = Link::default();
        let mut now = None;
        assert!(matches!(
            faults.judge(&quiet, &quiet, &mut now),
            Verdict::Pass(None)
        ));
        assert!(now.is_none(), "no clock read without a delay");
        let down = Link {
            down: true,
            group: 1,
            ..quiet
        };
        let other_group = Link { group: 1, ..quiet };
        assert!(matches!(
            faults.judge(&down, &quiet, &mut now),
            Verdict::LinkDown
        ));
        assert!(matches!(
            faults.judge(&quiet, &other_group, &mut now),
            Verdict::Partitioned
        ));
        faults.vlan_loss = 1.0;
        assert!(matches!(
            faults.judge(&quiet, &quiet, &mut now),
            Verdict::Lost
        ));
        faults.vlan_loss = 0.0;
        faults.vlan_delay = Duration::from_millis(5);
        let slow = Link {
            delay: Duration::from_millis(7),
            ..quiet
        };
        let Verdict::Pass(Some(at)) = faults.judge(&slow, &slow, &mut now) else {
            panic!("a delayed frame passes with a due time");
        };
        assert_eq!(
            at - now.unwrap(),
            Duration::from_millis(19),
            "delays add up"
        );
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
}
