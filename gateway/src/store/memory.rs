//! [`Store`] in process memory, for the embedded single-gateway mode. Same
//! rules as the DynamoDB store; nothing survives a restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Accepted, Joined, PresenceKey, SendRequest, Store, StoreError, body_digest, idempotency_key};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_seq: HashMap<String, u64>,
    members: HashMap<String, BTreeSet<String>>,
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
        Ok(accepted)
    }

    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        let mut state = self.state();
        let newly_member = state.members.entry(conversation_id.to_owned()).or_default().insert(user_id.to_owned());
        let last_seq = state.last_seq.get(conversation_id).copied().unwrap_or(0);
        Ok(Joined { newly_member, last_seq })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        Ok(state.members.get_mut(conversation_id).is_some_and(|m| m.remove(user_id)))
    }

    async fn is_member(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.state().members.get(conversation_id).is_some_and(|m| m.contains(user_id)))
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
