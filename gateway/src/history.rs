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
}
