//! How far each member has got, as receipts pass: the rule that a user's
//! receipts never go backwards, kept by the hub per conversation (what the
//! gateway passes on) and by each stream's outbox (what that stream has
//! been shown, its join snapshot included).

use std::collections::HashMap;

use chat_core::envelope::ReceiptStatus;

use chat_core::store::MemberState;

/// (conversation, user, DELIVERED or READ) → the highest seq passed on.
#[derive(Debug, Default)]
pub(crate) struct ReceiptPositions(HashMap<(String, String, ReceiptStatus), u64>);

impl ReceiptPositions {
    /// Whether a receipt moves its user forward (and records it if so).
    /// FAILED names one message and always passes (duplicates are caught by
    /// event id); READ implies DELIVERED.
    pub(crate) fn advance(&mut self, conversation_id: &str, user_id: &str, status: ReceiptStatus, seq: u64) -> bool {
        let key = |s| (conversation_id.to_owned(), user_id.to_owned(), s);
        let read = self.0.get(&key(ReceiptStatus::Read)).copied().unwrap_or(0);
        let floor = match status {
            ReceiptStatus::Failed => return true,
            ReceiptStatus::Read => read,
            ReceiptStatus::Delivered => read.max(self.0.get(&key(ReceiptStatus::Delivered)).copied().unwrap_or(0)),
        };
        if seq <= floor {
            return false;
        }
        self.0.insert(key(status), seq);
        true
    }

    /// Raises the positions to what a join snapshot showed.
    pub(crate) fn seed(&mut self, conversation_id: &str, members: &[MemberState]) {
        for member in members {
            for (status, seq) in
                [(ReceiptStatus::Delivered, member.delivered_up_to()), (ReceiptStatus::Read, member.read_seq)]
            {
                let known = self.0.entry((conversation_id.to_owned(), member.user_id.clone(), status)).or_default();
                *known = (*known).max(seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward_and_read_implies_delivered() {
        let mut p = ReceiptPositions::default();
        assert!(p.advance("r", "bob", ReceiptStatus::Delivered, 2));
        assert!(!p.advance("r", "bob", ReceiptStatus::Delivered, 2));
        assert!(p.advance("r", "bob", ReceiptStatus::Read, 3));
        assert!(!p.advance("r", "bob", ReceiptStatus::Delivered, 3), "read 3 covers delivered 3");
        assert!(p.advance("r", "bob", ReceiptStatus::Delivered, 4));
        assert!(p.advance("r", "carol", ReceiptStatus::Delivered, 1), "per user");
        assert!(p.advance("q", "bob", ReceiptStatus::Delivered, 1), "per conversation");
        assert!(p.advance("r", "bob", ReceiptStatus::Failed, 1));
        p.seed("r", &[MemberState { user_id: "dave".into(), role: Default::default(), delivered_seq: 5, read_seq: 2 }]);
        assert!(!p.advance("r", "dave", ReceiptStatus::Delivered, 5));
        assert!(!p.advance("r", "dave", ReceiptStatus::Read, 2));
        assert!(p.advance("r", "dave", ReceiptStatus::Read, 3));
    }
}
