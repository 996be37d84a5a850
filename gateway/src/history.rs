//! Paging rules for the read APIs, as plain functions: page sizes, and the
//! cursors `GetHistory` and `ListConversations` hand out.
//!
//! Cursors are opaque to clients but simple inside: `h1:<f|b>:<seq>:<conversation>`
//! (continue strictly after/before `seq`) and `c1:<conversation>` (continue
//! after that conversation). A cursor names its conversation so it cannot be
//! replayed against another one; anything malformed is `INVALID_ARGUMENT`.

use crate::error::GatewayError;
use chat_core::limits;
use chat_core::store::{Direction, HistoryQuery, StoredMessage};

pub(crate) const DEFAULT_PAGE: usize = 50;
pub(crate) const MAX_HISTORY_PAGE: usize = 200;
pub(crate) const MAX_LIST_PAGE: usize = 100;

/// A `GetHistory` request, as the gateway reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRequest<'a> {
    pub(crate) conversation_id: &'a str,
    pub(crate) forward: bool,
    pub(crate) from_seq: u64,
    pub(crate) cursor: &'a str,
    pub(crate) page_size: u32,
}

/// 0 means the default; above `max` is refused rather than silently cut.
pub(crate) fn page_size(requested: u32, max: usize) -> Result<usize, GatewayError> {
    match usize::try_from(requested).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_PAGE.min(max)),
        n if n <= max => Ok(n),
        n => Err(GatewayError::InvalidArgument(format!("page_size {n} is over the limit of {max}"))),
    }
}

fn direction_code(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "f",
        Direction::Backward => "b",
    }
}

pub(crate) fn history_cursor(conversation_id: &str, direction: Direction, from_seq: u64) -> String {
    format!("h1:{}:{from_seq}:{conversation_id}", direction_code(direction))
}

fn bad_cursor(why: &str) -> GatewayError {
    GatewayError::InvalidArgument(format!("cursor is not valid ({why}); pass a cursor from a previous response"))
}

/// The query a `GetHistory` request asks for.
pub(crate) fn history_query(
    conversation_id: &str,
    forward: bool,
    from_seq: u64,
    cursor: &str,
    limit: usize,
) -> Result<HistoryQuery, GatewayError> {
    if cursor.is_empty() {
        let direction = if forward { Direction::Forward } else { Direction::Backward };
        return Ok(HistoryQuery { direction, from_seq: (from_seq > 0).then_some(from_seq), limit });
    }
    let mut parts = cursor.splitn(4, ':');
    let (Some("h1"), Some(dir), Some(seq), Some(conversation)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_cursor("unknown format"));
    };
    if conversation != conversation_id {
        return Err(bad_cursor("it belongs to another conversation"));
    }
    let direction = match dir {
        "f" => Direction::Forward,
        "b" => Direction::Backward,
        _ => return Err(bad_cursor("unknown direction")),
    };
    let seq: u64 = seq.parse().map_err(|_| bad_cursor("bad position"))?;
    Ok(HistoryQuery { direction, from_seq: Some(seq), limit })
}

/// `next_cursor` (same direction, after the last message, only when more
/// follow) and `prev_cursor` (the other way from the first message).
pub(crate) fn page_cursors(
    conversation_id: &str,
    direction: Direction,
    page: &[StoredMessage],
    more: bool,
) -> (String, String) {
    let opposite = match direction {
        Direction::Forward => Direction::Backward,
        Direction::Backward => Direction::Forward,
    };
    let next = match page.last() {
        Some(last) if more => history_cursor(conversation_id, direction, last.seq),
        _ => String::new(),
    };
    let prev = page.first().map(|first| history_cursor(conversation_id, opposite, first.seq)).unwrap_or_default();
    (next, prev)
}

pub(crate) fn list_cursor(last_conversation_id: &str) -> String {
    format!("c1:{last_conversation_id}")
}

/// The conversation a `ListConversations` cursor continues after.
pub(crate) fn list_after(cursor: &str) -> Result<Option<String>, GatewayError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let conversation = cursor.strip_prefix("c1:").ok_or_else(|| bad_cursor("unknown format"))?;
    limits::conversation_id(conversation).map_err(|_| bad_cursor("bad position"))?;
    Ok(Some(conversation.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> StoredMessage {
        StoredMessage {
            conversation_id: "r".into(),
            seq,
            message_id: format!("m{seq}"),
            sender: "a".into(),
            body: "b".into(),
            sent_at_ms: 0,
            client_message_id: String::new(),
            members_version: 0,
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, MAX_HISTORY_PAGE).expect("default"), DEFAULT_PAGE);
        assert_eq!(page_size(200, MAX_HISTORY_PAGE).expect("max"), 200);
        assert_eq!(page_size(1, MAX_HISTORY_PAGE).expect("one"), 1);
        assert_eq!(page_size(201, MAX_HISTORY_PAGE).map_err(|e| e.code()), Err(tonic::Code::InvalidArgument));
        assert_eq!(page_size(u32::MAX, MAX_LIST_PAGE).map_err(|e| e.code()), Err(tonic::Code::InvalidArgument));
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_conversation() {
        let cursor = history_cursor("team:eng", Direction::Backward, 42);
        let q = history_query("team:eng", true, 0, &cursor, 10).expect("valid");
        assert_eq!(q, HistoryQuery { direction: Direction::Backward, from_seq: Some(42), limit: 10 });
        for bad in [
            "garbage",
            "h1:b:42",
            "h1:x:42:team:eng",
            "h1:b:-1:team:eng",
            "h2:b:1:team:eng",
            &history_cursor("other", Direction::Forward, 1),
        ] {
            let err = history_query("team:eng", true, 0, bad, 10).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn first_page_follows_direction_and_start() {
        let q = history_query("r", false, 0, "", 5).expect("latest");
        assert_eq!(q, HistoryQuery { direction: Direction::Backward, from_seq: None, limit: 5 });
        let q = history_query("r", true, 7, "", 5).expect("after 7");
        assert_eq!(q, HistoryQuery { direction: Direction::Forward, from_seq: Some(7), limit: 5 });
    }

    #[test]
    fn page_cursors_point_both_ways() {
        let page = [message(9), message(8), message(7)];
        let (next, prev) = page_cursors("r", Direction::Backward, &page, true);
        assert_eq!(next, "h1:b:7:r");
        assert_eq!(prev, "h1:f:9:r");
        let (next, prev) = page_cursors("r", Direction::Backward, &page, false);
        assert!(next.is_empty());
        assert!(!prev.is_empty());
        assert_eq!(page_cursors("r", Direction::Forward, &[], false), (String::new(), String::new()));
    }

    #[test]
    fn list_cursors() {
        assert_eq!(list_after("").expect("empty"), None);
        assert_eq!(list_after(&list_cursor("room1")).expect("valid"), Some("room1".into()));
        for bad in ["room1", "c1:", "c1:has space"] {
            assert_eq!(list_after(bad).map_err(|e| e.code()), Err(tonic::Code::InvalidArgument), "{bad}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn direction() -> impl Strategy<Value = Direction> {
            prop_oneof![Just(Direction::Forward), Just(Direction::Backward)]
        }

        /// A cursor-like string: the right prefix with any parts, or anything.
        fn cursor_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                (
                    prop_oneof![Just("h1"), Just("h2"), Just("")],
                    prop_oneof![Just("f".to_owned()), Just("b".to_owned()), any::<String>()],
                    prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[-+0-9 ]{0,24}", any::<String>()],
                    prop_oneof![Just("room".to_owned()), any::<String>()],
                )
                    .prop_map(|(v, d, seq, c)| format!("{v}:{d}:{seq}:{c}")),
                prop_oneof![Just("room".to_owned()), any::<String>()].prop_map(|c| format!("c1:{c}")),
            ]
        }

        proptest! {
            #[test]
            fn history_cursors_round_trip(
                conversation in any::<String>(),
                direction in direction(),
                seq in any::<u64>(),
                forward in any::<bool>(),
                from_seq in any::<u64>(),
                limit in 1..=MAX_HISTORY_PAGE,
            ) {
                let cursor = history_cursor(&conversation, direction, seq);
                let query = history_query(&conversation, forward, from_seq, &cursor, limit).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(query, HistoryQuery { direction, from_seq: Some(seq), limit });
            }

            #[test]
            fn cursors_of_other_conversations_are_refused(a in any::<String>(), b in any::<String>(), seq in any::<u64>(), direction in direction()) {
                prop_assume!(a != b);
                let refused = history_query(&a, true, 0, &history_cursor(&b, direction, seq), 10).map_err(|e| e.code());
                prop_assert_eq!(refused, Err(tonic::Code::InvalidArgument));
            }

            /// Any cursor is refused as INVALID_ARGUMENT or read to a
            /// position in this conversation that re-encodes to itself.
            #[test]
            fn arbitrary_cursors_are_refused_or_read_consistently(cursor in cursor_like(), conversation in prop_oneof![Just("room".to_owned()), any::<String>()]) {
                prop_assume!(!cursor.is_empty(), "no cursor is the first page");
                match history_query(&conversation, true, 0, &cursor, 10) {
                    Ok(query) => {
                        let seq = query.from_seq.ok_or_else(|| TestCaseError::fail("a cursor names a position"))?;
                        let named = format!(":{conversation}");
                        prop_assert!(cursor.ends_with(&named));
                        let again = history_query(&conversation, false, 0, &history_cursor(&conversation, query.direction, seq), 10);
                        prop_assert_eq!(again.ok(), Some(query));
                    }
                    Err(e) => prop_assert_eq!(e.code(), tonic::Code::InvalidArgument),
                }
                match list_after(&cursor) {
                    Ok(Some(after)) => {
                        prop_assert_eq!(list_cursor(&after), cursor);
                        prop_assert!(limits::conversation_id(&after).is_ok());
                    }
                    Ok(None) => prop_assert!(false, "a cursor is read"),
                    Err(e) => prop_assert_eq!(e.code(), tonic::Code::InvalidArgument),
                }
            }

            #[test]
            fn list_cursors_round_trip(conversation in "[A-Za-z0-9_.:@+-]{1,128}") {
                prop_assert_eq!(list_after(&list_cursor(&conversation)).ok(), Some(Some(conversation)));
            }

            #[test]
            fn page_sizes_are_defaulted_kept_or_refused(requested in any::<u32>(), max in 1..=MAX_HISTORY_PAGE) {
                match page_size(requested, max) {
                    Ok(n) if requested == 0 => prop_assert_eq!(n, DEFAULT_PAGE.min(max)),
                    Ok(n) => prop_assert_eq!(n, requested as usize),
                    Err(e) => {
                        prop_assert!(requested as usize > max);
                        prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    }
                }
            }

            /// A page's cursors lead on from its last message and back from
            /// its first.
            #[test]
            fn page_cursors_lead_both_ways(
                seqs in prop::collection::vec(any::<u64>(), 0..5),
                direction in direction(),
                more in any::<bool>(),
            ) {
                let page: Vec<StoredMessage> = seqs.iter().map(|&seq| message(seq)).collect();
                let (next, prev) = page_cursors("r", direction, &page, more);
                let read = |cursor: &str| history_query("r", true, 0, cursor, 1).ok().map(|q| (q.direction, q.from_seq));
                match (seqs.first(), seqs.last()) {
                    (Some(&first), Some(&last)) => {
                        let opposite = if direction == Direction::Forward { Direction::Backward } else { Direction::Forward };
                        prop_assert_eq!(read(&prev), Some((opposite, Some(first))));
                        if more {
                            prop_assert_eq!(read(&next), Some((direction, Some(last))));
                        } else {
                            prop_assert!(next.is_empty());
                        }
                    }
                    _ => prop_assert!(next.is_empty() && prev.is_empty()),
                }
            }
        }
    }
}
