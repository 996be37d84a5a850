//! Per-channel fault injection and the pure choice of a send's outcome, so
//! tests can make the connector meet slow, throttled, failing and
//! unreachable recipients on demand.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// The status a permanently failing recipient is answered with.
pub(crate) const PERMANENT_STATUS: u16 = 400;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChannelFaults {
    pub(crate) latency: Duration,
    pub(crate) fail_next: VecDeque<u16>,
    pub(crate) permanent: HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accept,
    /// Answer this HTTP status with the channel's error body.
    Fail(u16),
}

/// Decides one well-formed send to `recipient`. Queued failures come first,
/// as an outage hits every recipient; each send consumes one.
pub(crate) fn decide(faults: &mut ChannelFaults, recipient: &str) -> Outcome {
    if let Some(status) = faults.fail_next.pop_front() {
        return Outcome::Fail(status);
    }
    if faults.permanent.contains(recipient) {
        return Outcome::Fail(PERMANENT_STATUS);
    }
    Outcome::Accept
}

/// Only error statuses can be injected: a queued 200 or 302 would answer
/// a success-shaped status with an error body.
pub(crate) fn validate_fail_next(statuses: &[u16]) -> Result<(), String> {
    match statuses.iter().find(|s| !(400..=599).contains(*s)) {
        Some(bad) => Err(format!("fail_next status {bad} is not an HTTP error status (400..=599)")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_failures_pop_one_per_send_then_success() {
        let mut faults = ChannelFaults { fail_next: [503, 503].into(), ..ChannelFaults::default() };
        assert_eq!(decide(&mut faults, "1"), Outcome::Fail(503));
        assert_eq!(decide(&mut faults, "1"), Outcome::Fail(503));
        assert_eq!(decide(&mut faults, "1"), Outcome::Accept);
    }

    #[test]
    fn permanent_recipients_always_fail_and_others_pass() {
        let mut faults = ChannelFaults { permanent: ["15550001".to_owned()].into(), ..ChannelFaults::default() };
        assert_eq!(decide(&mut faults, "15550001"), Outcome::Fail(400));
        assert_eq!(decide(&mut faults, "15550001"), Outcome::Fail(400));
        assert_eq!(decide(&mut faults, "15550002"), Outcome::Accept);
    }

    #[test]
    fn queued_failure_wins_over_permanent_and_is_consumed() {
        let mut faults =
            ChannelFaults { fail_next: [429].into(), permanent: ["7".to_owned()].into(), ..ChannelFaults::default() };
        assert_eq!(decide(&mut faults, "7"), Outcome::Fail(429));
        assert_eq!(decide(&mut faults, "7"), Outcome::Fail(400));
        assert!(faults.fail_next.is_empty());
    }

    #[test]
    fn only_error_statuses_are_injectable() {
        assert!(validate_fail_next(&[400, 429, 500, 503, 599]).is_ok());
        assert!(validate_fail_next(&[]).is_ok());
        assert!(validate_fail_next(&[503, 200]).is_err());
        assert!(validate_fail_next(&[600]).is_err());
        assert!(validate_fail_next(&[399]).is_err());
    }
}
