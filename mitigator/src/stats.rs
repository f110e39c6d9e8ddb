//! Turns raw (reason, class) counter cells into the report operators read.

use std::collections::BTreeMap;

use mitigator_common::{Action, Class, Counter, Reason};

use crate::protocol::{CounterCell, PacketsBytes, StatsReport};

pub fn report(iface: &str, at: u64, cells: &[(Reason, Class, Counter)]) -> StatsReport {
    let mut reasons: BTreeMap<String, PacketsBytes> = Reason::ALL
        .iter()
        .map(|r| (r.name().to_string(), PacketsBytes::default()))
        .collect();
    let mut classes: BTreeMap<String, PacketsBytes> = Class::ALL
        .iter()
        .map(|c| (c.name().to_string(), PacketsBytes::default()))
        .collect();
    let (mut total, mut passed, mut dropped) = Default::default();
    let mut nonzero = Vec::new();
    for (reason, class, c) in cells {
        let pb = PacketsBytes {
            packets: c.packets,
            bytes: c.bytes,
        };
        reasons
            .get_mut(reason.name())
            .expect("all reasons listed")
            .add(&pb);
        classes
            .get_mut(class.name())
            .expect("all classes listed")
            .add(&pb);
        PacketsBytes::add(&mut total, &pb);
        match reason.action() {
            Action::Drop => PacketsBytes::add(&mut dropped, &pb),
            Action::Pass | Action::Tx => PacketsBytes::add(&mut passed, &pb),
        }
        if c.packets > 0 {
            nonzero.push(CounterCell {
                reason: reason.name().to_string(),
                class: class.name().to_string(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
    }
    StatsReport {
        interface: iface.to_string(),
        at,
        total,
        passed,
        dropped,
        reasons,
        classes,
        cells: nonzero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_reason_class_and_verdict() {
        let c = |p, b| Counter {
            packets: p,
            bytes: b,
        };
        let cells = [
            (Reason::Pass, Class::Udp, c(10, 1000)),
            (Reason::DropBlocklist, Class::Udp, c(5, 500)),
            (Reason::DropBlocklist, Class::TcpSyn, c(2, 120)),
            (Reason::PassAllowlist, Class::Icmp, c(0, 0)),
        ];
        let r = report("eth0", 7, &cells);
        assert_eq!(
            r.total,
            PacketsBytes {
                packets: 17,
                bytes: 1620
            }
        );
        assert_eq!(
            r.dropped,
            PacketsBytes {
                packets: 7,
                bytes: 620
            }
        );
        assert_eq!(
            r.passed,
            PacketsBytes {
                packets: 10,
                bytes: 1000
            }
        );
        assert_eq!(r.reasons["drop_blocklist"].packets, 7);
        assert_eq!(r.classes["udp"].packets, 15);
        assert_eq!(r.classes["fragment"].packets, 0);
        assert_eq!(r.cells.len(), 3);
    }
}
