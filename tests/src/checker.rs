//! The delivery checker: compares what was sent (accepted), what is stored,
//! and what each member received, per conversation, and counts messages
//! lost, duplicated and reordered.

use std::collections::{BTreeSet, HashMap};

/// What one member saw of one conversation, in arrival order (seqs).
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub member: String,
    pub seqs: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Accepted seqs missing from storage or from a member's stream.
    pub lost: usize,
    /// Seqs a member received more than once, or stored but never accepted.
    pub duplicated: usize,
    /// Places where a member received a seq lower than one before it.
    pub reordered: usize,
    pub details: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0
    }
}

/// `accepted`: seqs acknowledged to senders; `stored`: seqs in storage (None
/// to skip that check); `received`: each member's stream, expected to hold
/// every accepted seq above `from` (what the member joined after).
pub fn check(accepted: &BTreeSet<u64>, stored: Option<&[u64]>, received: &[(Received, u64)]) -> Report {
    let mut report = Report::default();
    if let Some(stored) = stored {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for seq in stored {
            *counts.entry(*seq).or_default() += 1;
        }
        for seq in accepted {
            if !counts.contains_key(seq) {
                report.lost += 1;
                report.details.push(format!("seq {seq} accepted but not stored"));
            }
        }
        for (seq, count) in &counts {
            if *count > 1 || !accepted.contains(seq) {
                report.duplicated += 1;
                report.details.push(format!("seq {seq} stored {count} times (accepted: {})", accepted.contains(seq)));
            }
        }
    }
    for (member, from) in received {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for seq in &member.seqs {
            *seen.entry(*seq).or_default() += 1;
        }
        for seq in accepted.iter().filter(|s| **s > *from) {
            if !seen.contains_key(seq) {
                report.lost += 1;
                report.details.push(format!("{} never received seq {seq}", member.member));
            }
        }
        for (seq, count) in &seen {
            if *count > 1 {
                report.duplicated += count - 1;
                report.details.push(format!("{} received seq {seq} {count} times", member.member));
            }
        }
        for pair in member.seqs.windows(2) {
            if pair[1] < pair[0] {
                report.reordered += 1;
                report.details.push(format!("{} received seq {} after {}", member.member, pair[1], pair[0]));
            }
        }
    }
    report.details.truncate(20);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seqs: &[u64]) -> Received {
        Received { member: "m".into(), seqs: seqs.to_vec() }
    }

    #[test]
    fn clean_run_is_clean() {
        let accepted: BTreeSet<u64> = (1..=5).collect();
        let r = check(&accepted, Some(&[1, 2, 3, 4, 5]), &[(member(&[1, 2, 3, 4, 5]), 0), (member(&[4, 5]), 3)]);
        assert!(r.is_clean(), "{r:?}");
    }

    #[test]
    fn counts_each_kind_of_fault() {
        let accepted: BTreeSet<u64> = (1..=5).collect();
        let r = check(&accepted, Some(&[1, 2, 2, 4, 5, 9]), &[(member(&[1, 3, 2, 2, 5]), 0)]);
        assert_eq!(r.lost, 2, "3 not stored, 4 not received: {r:?}");
        assert_eq!(r.duplicated, 3, "2 stored twice, 9 never accepted, 2 received twice: {r:?}");
        assert_eq!(r.reordered, 1, "2 after 3: {r:?}");
    }
}
