//! [`Store`] in process memory, for the embedded single-gateway mode. Same
//! rules as the DynamoDB store; nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Accepted, ConversationInfo, Direction, HistoryQuery, Joined, PresenceKey, SendRequest, Store, StoreError,
    StoredMessage, body_digest, idempotency_key,
};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_seq: HashMap<String, u64>,
    /// conversation → member → read marker
    members: HashMap<String, BTreeMap<String, u64>>,
    /// conversation → seq → message: embedded mode has no `persist`, the
    /// store keeps what it accepts.
    messages: HashMap<String, BTreeMap<u64, StoredMessage>>,
    sends: HashMap<String, (Accepted, String)>,
    /// conversation → (user, session) → expires_at_ms
    presence: HashMap<String, HashMap<(String, String), i64>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn user_online(sessions: Option<&HashMap<(String, String), i64>>, user: &str, now_ms: i64) -> bool {
    sessions.is_some_and(|s| s.iter().any(|((u, _), exp)| u == user && *exp > now_ms))
}

#[async_trait]
impl Store for MemoryStore {
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
        let mut state = self.state();
        let key = (!req.client_message_id.is_empty())
            .then(|| idempotency_key(req.conversation_id, req.sender, req.client_message_id));
        let digest = body_digest(req.body);
        if let Some((first, first_digest)) = key.as_ref().and_then(|k| state.sends.get(k)) {
            if *first_digest != digest {
                return Err(StoreError::ClientMessageIdReused);
            }
            return Ok(Accepted { duplicate: true, ..first.clone() });
        }
        let seq = state.last_seq.entry(req.conversation_id.to_owned()).or_insert(0);
        *seq += 1;
        let accepted =
            Accepted { message_id: req.new_message_id, seq: *seq, accepted_at_ms: req.now_ms, duplicate: false };
        if let Some(key) = key {
            state.sends.insert(key, (accepted.clone(), digest));
        }
        state.messages.entry(req.conversation_id.to_owned()).or_default().insert(
            accepted.seq,
            StoredMessage {
                conversation_id: req.conversation_id.to_owned(),
                seq: accepted.seq,
                message_id: accepted.message_id.clone(),
                sender: req.sender.to_owned(),
                body: req.body.to_owned(),
                sent_at_ms: req.now_ms,
                client_message_id: req.client_message_id.to_owned(),
            },
        );
        Ok(accepted)
    }

    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        let mut state = self.state();
        let members = state.members.entry(conversation_id.to_owned()).or_default();
        let newly_member = !members.contains_key(user_id);
        members.entry(user_id.to_owned()).or_insert(0);
        let last_seq = state.last_seq.get(conversation_id).copied().unwrap_or(0);
        Ok(Joined { newly_member, last_seq })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        Ok(state.members.get_mut(conversation_id).is_some_and(|m| m.remove(user_id).is_some()))
    }

    async fn is_member(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.state().members.get(conversation_id).is_some_and(|m| m.contains_key(user_id)))
    }

    async fn presence_online(&self, key: &PresenceKey, now_ms: i64, expires_at_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.state();
        let sessions = state.presence.entry(key.conversation_id.clone()).or_default();
        sessions.remove(&(key.user_id.clone(), key.session_id.clone()));
        let others_online = user_online(Some(sessions), &key.user_id, now_ms);
        sessions.insert((key.user_id.clone(), key.session_id.clone()), expires_at_ms);
        Ok(!others_online)
    }

    async fn presence_offline(&self, key: &PresenceKey, now_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.state();
        let sessions = state.presence.get_mut(&key.conversation_id);
        if let Some(sessions) = sessions {
            sessions.remove(&(key.user_id.clone(), key.session_id.clone()));
        }
        Ok(!user_online(state.presence.get(&key.conversation_id), &key.user_id, now_ms))
    }

    async fn presence_refresh(&self, keys: &[PresenceKey], expires_at_ms: i64) -> Result<(), StoreError> {
        let mut state = self.state();
        for key in keys {
            if let Some(exp) = state
                .presence
                .get_mut(&key.conversation_id)
                .and_then(|s| s.get_mut(&(key.user_id.clone(), key.session_id.clone())))
            {
                *exp = expires_at_ms;
            }
        }
        Ok(())
    }

    async fn online_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let state = self.state();
        let users: BTreeSet<String> = state
            .presence
            .get(conversation_id)
            .map(|s| s.iter().filter(|(_, exp)| **exp > now_ms).map(|((u, _), _)| u.clone()).collect())
            .unwrap_or_default();
        Ok(users.into_iter().collect())
    }

    async fn history(&self, conversation_id: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let state = self.state();
        let Some(log) = state.messages.get(conversation_id) else { return Ok(Vec::new()) };
        let page = match (query.direction, query.from_seq) {
            (Direction::Forward, from) => {
                log.range(from.map_or(0, |s| s.saturating_add(1))..).take(query.limit).map(|(_, m)| m.clone()).collect()
            }
            (Direction::Backward, None) => log.values().rev().take(query.limit).cloned().collect(),
            (Direction::Backward, Some(from)) => {
                log.range(..from).rev().take(query.limit).map(|(_, m)| m.clone()).collect()
            }
        };
        Ok(page)
    }

    async fn get_message(&self, conversation_id: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let state = self.state();
        Ok(state
            .messages
            .get(conversation_id)
            .and_then(|log| log.values().find(|m| m.message_id == message_id))
            .cloned())
    }

    async fn conversations(
        &self,
        user_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<ConversationInfo>, bool), StoreError> {
        let state = self.state();
        let mut mine: Vec<(&String, u64)> = state
            .members
            .iter()
            .filter_map(|(c, members)| members.get(user_id).map(|read| (c, *read)))
            .filter(|(c, _)| after.is_none_or(|a| c.as_str() > a))
            .collect();
        mine.sort();
        let more = mine.len() > limit;
        let page = mine
            .into_iter()
            .take(limit)
            .map(|(c, read)| ConversationInfo {
                conversation_id: c.clone(),
                last_message: state
                    .messages
                    .get(c)
                    .and_then(|log| log.values().next_back())
                    .map(|m| StoredMessage { body: chat_proto::envelope::preview(&m.body), ..m.clone() }),
                last_read_seq: read,
            })
            .collect();
        Ok((page, more))
    }

    async fn mark_read(&self, conversation_id: &str, user_id: &str, seq: u64) -> Result<u64, StoreError> {
        let mut state = self.state();
        let marker =
            state.members.get_mut(conversation_id).and_then(|m| m.get_mut(user_id)).ok_or(StoreError::NotMember)?;
        *marker = (*marker).max(seq);
        Ok(*marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_the_store_rules() {
        let store = MemoryStore::new();
        super::super::conformance::check(&store, "t").await.expect("memory store conforms");
    }
}
