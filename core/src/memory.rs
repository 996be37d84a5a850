//! Every store concern in process memory, for the embedded single-gateway
//! mode. Same rules as the DynamoDB store; nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::conversation::{Conversation, Kind, NewConversation, Role};
use crate::envelope::{ReceiptEvent, ReceiptStatus};
use crate::external::ExternalId;
use crate::store::{
    Accepted, ConversationInfo, Created, Direction, Failure, History, HistoryQuery, Joined, Links, MemberState,
    Membership, Presence, PresenceKey, Receipts, Removal, SendRequest, Sequencer, Settled, StoreError, StoredMessage,
    body_digest, idempotency_key,
};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Member {
    role: Role,
    delivered_seq: u64,
    read_seq: u64,
    joined_at_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    conversations: HashMap<String, Conversation>,
    /// conversation → users kept out
    bans: HashMap<String, BTreeSet<String>>,
    /// conversation → membership version (removals so far)
    members_versions: HashMap<String, u64>,
    last_seq: HashMap<String, u64>,
    /// conversation → member → receipt positions
    members: HashMap<String, BTreeMap<String, Member>>,
    /// conversation → its external members
    externals: HashMap<String, BTreeSet<String>>,
    /// (conversation, user, status) → seq → when the watermark reached it
    steps: HashMap<(String, String, ReceiptStatus), BTreeMap<u64, i64>>,
    /// (conversation, seq) → user → failure
    failures: HashMap<(String, u64), BTreeMap<String, Failure>>,
    /// user → linked external identity
    links: HashMap<String, String>,
    /// conversation → seq → message: embedded mode has no `persist`, the
    /// store keeps what it accepts.
    messages: HashMap<String, BTreeMap<u64, StoredMessage>>,
    /// conversation → seqs settled as void (numbering and recording are one
    /// step here, so only a seq asked about ahead of its numbering).
    voided: HashMap<String, BTreeSet<u64>>,
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

impl State {
    fn record_member(&mut self, conversation_id: &str, member_id: &str, role: Role, now_ms: i64) -> bool {
        if matches!(ExternalId::parse(member_id), Ok(Some(_))) {
            self.externals.entry(conversation_id.to_owned()).or_default().insert(member_id.to_owned());
        }
        let members = self.members.entry(conversation_id.to_owned()).or_default();
        let newly = !members.contains_key(member_id);
        members.entry(member_id.to_owned()).or_insert(Member { role, joined_at_ms: now_ms, ..Member::default() });
        newly
    }

    fn member_mut(&mut self, conversation_id: &str, member_id: &str) -> Option<&mut Member> {
        self.members.get_mut(conversation_id).and_then(|m| m.get_mut(member_id))
    }

    fn is_banned(&self, conversation_id: &str, user_id: &str) -> bool {
        self.bans.get(conversation_id).is_some_and(|b| b.contains(user_id))
    }
}

fn user_online(sessions: Option<&HashMap<(String, String), i64>>, user: &str, now_ms: i64) -> bool {
    sessions.is_some_and(|s| s.iter().any(|((u, _), exp)| u == user && *exp > now_ms))
}

#[async_trait]
impl Sequencer for MemoryStore {
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
        let mut state = self.state();
        let key = (!req.client_message_id.is_empty())
            .then(|| idempotency_key(req.conversation_id, req.sender, req.client_message_id));
        // Only an idempotent send is compared with a retry's body.
        let digest = key.as_ref().map(|_| body_digest(req.body));
        let external_recipients: Vec<String> = state
            .externals
            .get(req.conversation_id)
            .map(|e| e.iter().filter(|id| *id != req.sender).cloned().collect())
            .unwrap_or_default();
        if let Some((first, first_digest)) = key.as_ref().and_then(|k| state.sends.get(k)) {
            if Some(first_digest) != digest.as_ref() {
                return Err(StoreError::ClientMessageIdReused);
            }
            return Ok(Accepted { duplicate: true, ..first.clone() });
        }
        let members_version = state.members_versions.get(req.conversation_id).copied().unwrap_or(0);
        let voided = state.voided.get(req.conversation_id).cloned().unwrap_or_default();
        let seq = state.last_seq.entry(req.conversation_id.to_owned()).or_insert(0);
        *seq += 1;
        // A seq settled as void before it was numbered is never given out.
        while voided.contains(&*seq) {
            *seq += 1;
        }
        let accepted = Accepted {
            message_id: crate::store::message_id(&req.new_message_id, *seq),
            seq: *seq,
            accepted_at_ms: req.now_ms,
            duplicate: false,
            external_recipients,
            members_version,
            routes: None,
        };
        if let (Some(key), Some(digest)) = (key, digest) {
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
                members_version,
            },
        );
        Ok(accepted)
    }

    /// Accepting recorded it already, in the same step as its numbering.
    async fn record_send(&self, _: SendRequest<'_>, accepted: Accepted) -> Result<Accepted, StoreError> {
        Ok(accepted)
    }

    async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        Ok(self.state().last_seq.get(conversation_id).copied().unwrap_or(0))
    }
}

#[async_trait]
impl Membership for MemoryStore {
    async fn create(&self, new: &NewConversation) -> Result<Created, StoreError> {
        let mut state = self.state();
        let id = &new.conversation.conversation_id;
        let (conversation, created) = match state.conversations.get(id) {
            Some(existing) => (existing.clone(), false),
            None => {
                state.conversations.insert(id.clone(), new.conversation.clone());
                (new.conversation.clone(), true)
            }
        };
        if created || conversation.kind == Kind::Direct {
            for (member, role) in &new.members {
                state.record_member(id, member, *role, new.conversation.created_at_ms);
            }
        }
        Ok(Created { conversation, created })
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        Ok(self.state().conversations.get(conversation_id).cloned())
    }

    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        let mut state = self.state();
        let last_seq = state.last_seq.get(conversation_id).copied().unwrap_or(0);
        let members_version = state.members_versions.get(conversation_id).copied().unwrap_or(0);
        if let Some(member) = state.member_mut(conversation_id, user_id) {
            return Ok(Joined { newly_member: false, role: member.role, last_seq, members_version });
        }
        let public = state.conversations.get(conversation_id).is_some_and(|c| c.kind == Kind::Public);
        if !public || state.is_banned(conversation_id, user_id) {
            return Err(StoreError::NotAdmitted);
        }
        state.record_member(conversation_id, user_id, Role::Member, crate::clock::now_ms());
        Ok(Joined { newly_member: true, role: Role::Member, last_seq, members_version })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<Removal, StoreError> {
        let mut state = self.state();
        if let Some(externals) = state.externals.get_mut(conversation_id) {
            externals.remove(user_id);
        }
        let was_member = state.members.get_mut(conversation_id).is_some_and(|m| m.remove(user_id).is_some());
        if !was_member {
            return Ok(Removal { was_member, members_version: 0 });
        }
        let version = state.members_versions.entry(conversation_id.to_owned()).or_insert(0);
        *version += 1;
        Ok(Removal { was_member: true, members_version: *version })
    }

    async fn role(&self, conversation_id: &str, user_id: &str) -> Result<Option<Role>, StoreError> {
        Ok(self.state().members.get(conversation_id).and_then(|m| m.get(user_id)).map(|m| m.role))
    }

    async fn add_member(&self, conversation_id: &str, member_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.state();
        if state.is_banned(conversation_id, member_id) {
            return Err(StoreError::Banned);
        }
        Ok(state.record_member(conversation_id, member_id, Role::Member, now_ms))
    }

    async fn remove_member(&self, conversation_id: &str, member_id: &str, ban: bool) -> Result<Removal, StoreError> {
        if ban {
            self.state().bans.entry(conversation_id.to_owned()).or_default().insert(member_id.to_owned());
        }
        self.leave(conversation_id, member_id).await
    }

    async fn unban(&self, conversation_id: &str, member_id: &str) -> Result<bool, StoreError> {
        Ok(self.state().bans.get_mut(conversation_id).is_some_and(|b| b.remove(member_id)))
    }

    async fn set_role(&self, conversation_id: &str, member_id: &str, role: Role) -> Result<bool, StoreError> {
        let mut state = self.state();
        Ok(state.member_mut(conversation_id, member_id).map(|m| m.role = role).is_some())
    }

    async fn transfer_ownership(&self, conversation_id: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let from_is_owner = state.member_mut(conversation_id, from).is_some_and(|m| m.role == Role::Owner);
        if !from_is_owner || state.member_mut(conversation_id, to).is_none() {
            return Err(StoreError::NotMember);
        }
        for (user, role) in [(to, Role::Owner), (from, Role::Admin)] {
            if let Some(member) = state.member_mut(conversation_id, user) {
                member.role = role;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Presence for MemoryStore {
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

    async fn presence_remove_user(
        &self,
        conversation_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some(sessions) = state.presence.get_mut(conversation_id) else { return Ok(false) };
        let was_online = user_online(Some(sessions), user_id, now_ms);
        sessions.retain(|(user, _), _| user != user_id);
        Ok(was_online)
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

#[async_trait]
impl History for MemoryStore {
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

    async fn settle(&self, conversation_id: &str, seq: u64) -> Result<Settled, StoreError> {
        let mut state = self.state();
        if let Some(message) = state.messages.get(conversation_id).and_then(|log| log.get(&seq)) {
            return Ok(Settled::Message(message.clone()));
        }
        state.voided.entry(conversation_id.to_owned()).or_default().insert(seq);
        Ok(Settled::Void)
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
            .filter_map(|(c, members)| members.get(user_id).map(|m| (c, m.read_seq)))
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
                    .map(|m| StoredMessage { body: crate::envelope::preview(&m.body), ..m.clone() }),
                last_read_seq: read,
            })
            .collect();
        Ok((page, more))
    }
}

#[async_trait]
impl Receipts for MemoryStore {
    async fn members(&self, conversation_id: &str) -> Result<Vec<MemberState>, StoreError> {
        let state = self.state();
        Ok(state
            .members
            .get(conversation_id)
            .map(|members| members.iter().map(|(user, m)| member_state(user, m)).collect())
            .unwrap_or_default())
    }

    async fn member(&self, conversation_id: &str, user_id: &str) -> Result<Option<MemberState>, StoreError> {
        let state = self.state();
        Ok(state.members.get(conversation_id).and_then(|m| m.get(user_id)).map(|m| member_state(user_id, m)))
    }

    async fn record_receipt(
        &self,
        conversation_id: &str,
        receipt: &ReceiptEvent,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let seq = receipt.up_to_seq;
        if receipt.status == ReceiptStatus::Failed {
            let failures = state.failures.entry((conversation_id.to_owned(), seq)).or_default();
            if failures.contains_key(&receipt.user_id) {
                return Ok(false);
            }
            let failure = Failure { user_id: receipt.user_id.clone(), at_ms, reason: receipt.reason.clone() };
            failures.insert(receipt.user_id.clone(), failure);
            return Ok(true);
        }
        let Some(member) = state.members.get_mut(conversation_id).and_then(|m| m.get_mut(&receipt.user_id)) else {
            return Ok(false);
        };
        let watermark = match receipt.status {
            ReceiptStatus::Read => &mut member.read_seq,
            _ => &mut member.delivered_seq,
        };
        if *watermark >= seq {
            return Ok(false);
        }
        *watermark = seq;
        let key = (conversation_id.to_owned(), receipt.user_id.clone(), receipt.status);
        state.steps.entry(key).or_default().insert(seq, at_ms);
        Ok(true)
    }

    async fn failures(&self, conversation_id: &str, seq: u64) -> Result<Vec<Failure>, StoreError> {
        let state = self.state();
        Ok(state
            .failures
            .get(&(conversation_id.to_owned(), seq))
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn step_time(
        &self,
        conversation_id: &str,
        user_id: &str,
        status: ReceiptStatus,
        seq: u64,
    ) -> Result<Option<i64>, StoreError> {
        let state = self.state();
        let key = (conversation_id.to_owned(), user_id.to_owned(), status);
        Ok(state.steps.get(&key).and_then(|steps| steps.range(seq..).next()).map(|(_, at)| *at))
    }
}

#[async_trait]
impl Links for MemoryStore {
    async fn link_channel(&self, user_id: &str, external_id: Option<&str>) -> Result<(), StoreError> {
        let mut state = self.state();
        match external_id {
            Some(id) => state.links.insert(user_id.to_owned(), id.to_owned()),
            None => state.links.remove(user_id),
        };
        Ok(())
    }

    async fn linked_channels(&self, user_ids: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let state = self.state();
        Ok(user_ids.iter().filter_map(|u| state.links.get(u).map(|l| (u.clone(), l.clone()))).collect())
    }

    async fn bound_conversation(&self, member_id: &str) -> Result<Option<String>, StoreError> {
        let state = self.state();
        Ok(state
            .members
            .iter()
            .filter_map(|(c, members)| members.get(member_id).map(|m| (m.joined_at_ms, c)))
            .max()
            .map(|(_, c)| c.clone()))
    }
}

fn member_state(user_id: &str, m: &Member) -> MemberState {
    MemberState { user_id: user_id.to_owned(), role: m.role, delivered_seq: m.delivered_seq, read_seq: m.read_seq }
}
