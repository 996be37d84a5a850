//! [`Store`] on DynamoDB: the only module of the gateway that talks to it.
//!
//! - `seq`: an atomic counter (`ADD last_seq :one`, `ReturnValues=UPDATED_NEW`)
//!   on the conversation item, the one write every send pays.
//! - Idempotency: a record per (conversation, sender, client_message_id) in
//!   the send-dedup table, written with `attribute_not_exists` so the first
//!   accepted identity wins; TTL'd after a day.
//! - Membership: one item per (conversation, user).
//! - Presence: one TTL'd item per (conversation, user#session), refreshed
//!   while the stream lives, so a crashed gateway's sessions expire.
//! - Receipts: each member item carries the member's watermarks
//!   (`delivered_seq`, `last_read_seq`); the receipts table logs each step a
//!   watermark took (for the time a message got each status) and each
//!   failure. A watermark move and its step are one transaction, conditional
//!   on moving forward, so a late or repeated receipt changes nothing.
//! - External members: the conversation item's `externals` string set, read
//!   back by the seq counter update, names a send's external recipients.
//! - Links for offline fallback: the users table.
//!
//! Table and attribute names match `template.yaml`.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, Select, TransactWriteItem, Update};
use chat_proto::envelope::{ReceiptEvent, ReceiptStatus};
use chat_proto::external::ExternalId;
use futures::StreamExt;

use super::{
    Accepted, ConversationInfo, Direction, Failure, HistoryQuery, Joined, MemberState, PresenceKey, SendRequest, Store,
    StoreError, StoredMessage, body_digest, failure_key, failure_prefix, idempotency_key, step_key, step_range,
};

/// Presence refreshes in flight at once.
const PRESENCE_REFRESH_CONCURRENCY: usize = 16;

/// How long a send stays idempotent.
const SEND_DEDUP_TTL_SECS: i64 = 24 * 3600;

/// The tables' names, as flags with environment fallbacks (the stack's
/// outputs); shared by the gateway and the functions.
#[derive(Debug, Clone, clap::Args)]
pub struct Tables {
    /// DynamoDB table of stored messages (written by function `persist`).
    #[arg(long = "messages-table", env = "CHAT_MESSAGES_TABLE", default_value = "chat-messages")]
    pub messages: String,
    /// DynamoDB table holding each conversation's `last_seq` counter.
    #[arg(long = "conversations-table", env = "CHAT_CONVERSATIONS_TABLE", default_value = "chat-conversations")]
    pub conversations: String,
    /// DynamoDB table of conversation members and their receipt watermarks.
    #[arg(long = "members-table", env = "CHAT_MEMBERS_TABLE", default_value = "chat-members")]
    pub members: String,
    /// DynamoDB table of online sessions per conversation (TTL'd).
    #[arg(long = "presence-table", env = "CHAT_PRESENCE_TABLE", default_value = "chat-presence")]
    pub presence: String,
    /// DynamoDB table of send idempotency records (TTL'd).
    #[arg(long = "send-dedup-table", env = "CHAT_SEND_DEDUP_TABLE", default_value = "chat-send-dedup")]
    pub send_dedup: String,
    /// DynamoDB table of receipt steps and delivery failures.
    #[arg(long = "receipts-table", env = "CHAT_RECEIPTS_TABLE", default_value = "chat-receipts")]
    pub receipts: String,
    /// DynamoDB table of users' linked external identities.
    #[arg(long = "users-table", env = "CHAT_USERS_TABLE", default_value = "chat-users")]
    pub users: String,
}

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    tables: Tables,
}

impl DynamoStore {
    pub fn new(client: Client, tables: Tables) -> Self {
        Self { client, tables }
    }

    /// Fails fast at start-up when a table is missing or unreachable.
    pub async fn check_tables(&self) -> Result<(), StoreError> {
        let tables = [
            &self.tables.conversations,
            &self.tables.members,
            &self.tables.presence,
            &self.tables.send_dedup,
            &self.tables.receipts,
            &self.tables.users,
        ];
        for table in tables {
            self.client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| unavailable(&format!("table {table}"), e))?;
        }
        Ok(())
    }

    /// Allocates the next seq; also returns the conversation's external
    /// members, read in the same call.
    /// Allocates the conversation's next seq (one `UpdateItem`); returns it
    /// with the conversation's external members.
    pub async fn next_seq(&self, conversation_id: &str, now_ms: i64) -> Result<(u64, Vec<String>), StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression("ADD last_seq :one SET updated_at_ms = :now")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| unavailable("allocating seq", e))?;
        let item = out.attributes().ok_or_else(|| StoreError::Corrupt("counter update returned nothing".into()))?;
        Ok((get_n(item, "last_seq")?, string_set(item, "externals")))
    }

    async fn read_send(&self, key: &str) -> Result<Option<(Accepted, String)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.send_dedup)
            .key("idem_key", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading send record", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let accepted = Accepted {
            message_id: get_s(item, "message_id")?,
            seq: get_n(item, "seq")?,
            accepted_at_ms: get_n(item, "accepted_at_ms")?,
            duplicate: true,
            external_recipients: string_set(item, "externals"),
        };
        Ok(Some((accepted, get_s(item, "body_digest")?)))
    }

    async fn last_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("last_seq")
            .send()
            .await
            .map_err(|e| unavailable("reading last_seq", e))?;
        match out.item() {
            Some(item) if item.contains_key("last_seq") => get_n(item, "last_seq"),
            _ => Ok(0),
        }
    }

    /// Live sessions of `user` in a conversation other than `except_session`.
    async fn other_sessions(&self, key: &PresenceKey, now_ms: i64) -> Result<usize, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.tables.presence)
            .key_condition_expression("conversation_id = :c AND begins_with(session_key, :u)")
            .filter_expression("expires_at_ms > :now AND session_key <> :me")
            .expression_attribute_values(":c", s(&key.conversation_id))
            .expression_attribute_values(":u", s(&format!("{}#", key.user_id)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":me", s(&session_key(key)))
            .select(Select::Count)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("querying presence", e))?;
        Ok(usize::try_from(out.count()).unwrap_or(0))
    }

    async fn put_presence(&self, key: &PresenceKey, expires_at_ms: i64) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.presence)
            .item("conversation_id", s(&key.conversation_id))
            .item("session_key", s(&session_key(key)))
            .item("user_id", s(&key.user_id))
            .item("expires_at_ms", n(expires_at_ms))
            // The table's TTL attribute is in seconds.
            .item("expires_at", n(expires_at_ms / 1000 + 1))
            .send()
            .await
            .map_err(|e| unavailable("writing presence", e))?;
        Ok(())
    }
}

impl DynamoStore {
    async fn touch_presence(&self, key: &PresenceKey, expires_at_ms: i64) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.presence)
            .key("conversation_id", s(&key.conversation_id))
            .key("session_key", s(&session_key(key)))
            .update_expression("SET expires_at_ms = :ms, expires_at = :secs")
            .condition_expression("attribute_exists(session_key)")
            .expression_attribute_values(":ms", n(expires_at_ms))
            .expression_attribute_values(":secs", n(expires_at_ms / 1000 + 1))
            .send()
            .await;
        match update {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(unavailable("refreshing presence", e)),
        }
    }
}

fn stored_message(item: &HashMap<String, AttributeValue>) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        conversation_id: get_s(item, "conversation_id")?,
        seq: get_n(item, "seq")?,
        message_id: get_s(item, "message_id")?,
        sender: get_s(item, "sender")?,
        body: get_s(item, "body")?,
        sent_at_ms: get_n(item, "sent_at_ms")?,
        client_message_id: item.get("client_message_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
    })
}

/// The summary `persist` keeps on the conversation item, as a message.
fn last_message(conversation_id: &str, item: &HashMap<String, AttributeValue>) -> Option<StoredMessage> {
    Some(StoredMessage {
        conversation_id: conversation_id.to_owned(),
        seq: get_n(item, "last_persisted_seq").ok()?,
        message_id: get_s(item, "last_message_id").ok()?,
        sender: get_s(item, "last_sender").ok()?,
        body: get_s(item, "last_preview").ok()?,
        sent_at_ms: get_n(item, "last_sent_at_ms").ok()?,
        client_message_id: String::new(),
    })
}

impl DynamoStore {
    async fn member_item(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.members)
            .key("conversation_id", s(conversation_id))
            .key("user_id", s(user_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading membership", e))?;
        Ok(out.item)
    }

    /// Items of `table` by their one-attribute key `key_name` (BatchGetItem,
    /// unprocessed keys retried), by key value.
    async fn batch_get(
        &self,
        table: &str,
        key_name: &str,
        ids: &[String],
    ) -> Result<HashMap<String, HashMap<String, AttributeValue>>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let keys: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|id| HashMap::from([(key_name.to_owned(), s(id))])).collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            );
            for _attempt in 0..5 {
                let Some(keys) = request.take() else { break };
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, keys)
                    .send()
                    .await
                    .map_err(|e| unavailable(&format!("reading {table}"), e))?;
                for item in out.responses().and_then(|r| r.get(table)).into_iter().flatten() {
                    found.insert(get_s(item, key_name)?, item.clone());
                }
                request = out.unprocessed_keys().and_then(|u| u.get(table)).filter(|k| !k.keys().is_empty()).cloned();
            }
            if request.is_some() {
                return Err(StoreError::Unavailable(format!("DynamoDB left reads of {table} unprocessed")));
            }
        }
        Ok(found)
    }
}

fn session_key(key: &PresenceKey) -> String {
    // User ids cannot contain '#', so the prefix query matches one user only.
    format!("{}#{}", key.user_id, key.session_id)
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Result<String, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a string")))
}

fn get_n<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Result<T, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a number")))
}

/// A string set attribute's members, sorted; empty when absent.
fn string_set(item: &HashMap<String, AttributeValue>, name: &str) -> Vec<String> {
    let mut values = item.get(name).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    values.sort();
    values
}

fn member_state(item: &HashMap<String, AttributeValue>) -> Result<MemberState, StoreError> {
    Ok(MemberState {
        user_id: get_s(item, "user_id")?,
        delivered_seq: number_or_zero(item, "delivered_seq"),
        read_seq: number_or_zero(item, "last_read_seq"),
    })
}

/// The member item attributes of a watermark.
fn watermark_attributes(status: ReceiptStatus) -> (&'static str, &'static str) {
    match status {
        ReceiptStatus::Read => ("last_read_seq", "read_at_ms"),
        _ => ("delivered_seq", "delivered_at_ms"),
    }
}

/// A numeric attribute, 0 when absent (a marker never set).
fn number_or_zero(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Runs a query across pages until `limit` items are read (all of them when
/// `None`).
async fn query_items(
    request: QueryFluentBuilder,
    limit: Option<usize>,
    what: &str,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let mut page = request.clone().set_exclusive_start_key(start.take());
        if let Some(limit) = limit {
            if items.len() >= limit {
                break;
            }
            page = page.limit(i32::try_from(limit - items.len()).unwrap_or(i32::MAX));
        }
        let out = page.send().await.map_err(|e| unavailable(what, e))?;
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => break,
        }
    }
    Ok(items)
}

fn unavailable<E, R>(what: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    let detail = match err.as_service_error() {
        Some(service) => {
            format!("{}: {}", service.code().unwrap_or("error"), service.message().unwrap_or("no message"))
        }
        None => format!("{err:?}").chars().take(300).collect(),
    };
    StoreError::Unavailable(format!("DynamoDB {what}: {detail}"))
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(|e| e.code()).is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// A transaction cancelled because one of its conditions failed.
fn is_transaction_condition_failure<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            e.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed"))
        }
        _ => false,
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
        let recipients =
            |externals: Vec<String>| -> Vec<String> { externals.into_iter().filter(|id| id != req.sender).collect() };
        if req.client_message_id.is_empty() {
            let (seq, externals) = self.next_seq(req.conversation_id, req.now_ms).await?;
            return Ok(Accepted {
                message_id: req.new_message_id,
                seq,
                accepted_at_ms: req.now_ms,
                duplicate: false,
                external_recipients: recipients(externals),
            });
        }
        let key = idempotency_key(req.conversation_id, req.sender, req.client_message_id);
        let digest = body_digest(req.body);
        let check = |(first, first_digest): (Accepted, String)| {
            if first_digest == digest { Ok(first) } else { Err(StoreError::ClientMessageIdReused) }
        };
        // A retry is answered from the record without touching the counter,
        // so retries leave no hole in the conversation's seq.
        if let Some(found) = self.read_send(&key).await? {
            return check(found);
        }
        let (seq, externals) = self.next_seq(req.conversation_id, req.now_ms).await?;
        let accepted = Accepted {
            message_id: req.new_message_id,
            seq,
            accepted_at_ms: req.now_ms,
            duplicate: false,
            external_recipients: recipients(externals),
        };
        let mut put = self.client.put_item();
        if !accepted.external_recipients.is_empty() {
            // DynamoDB has no empty sets: the attribute is absent instead.
            put = put.item("externals", AttributeValue::Ss(accepted.external_recipients.clone()));
        }
        let put = put
            .table_name(&self.tables.send_dedup)
            .item("idem_key", s(&key))
            .item("message_id", s(&accepted.message_id))
            .item("seq", n(i64::try_from(seq).unwrap_or(i64::MAX)))
            .item("accepted_at_ms", n(req.now_ms))
            .item("body_digest", s(&digest))
            .item("expires_at", n(req.now_ms / 1000 + SEND_DEDUP_TTL_SECS))
            .condition_expression("attribute_not_exists(idem_key)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(accepted),
            // A concurrent duplicate won the race; its identity stands and
            // the seq this call allocated stays unused.
            Err(e) if is_condition_failure(&e) => {
                tracing::warn!(
                    conversation_id = req.conversation_id,
                    seq,
                    "concurrent duplicate send; seq left unused"
                );
                match self.read_send(&key).await? {
                    Some(found) => check(found),
                    None => Err(StoreError::Unavailable("send record vanished during a race".into())),
                }
            }
            Err(e) => Err(unavailable("writing send record", e)),
        }
    }

    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.members)
            .item("conversation_id", s(conversation_id))
            .item("user_id", s(user_id))
            .item("joined_at_ms", n(crate::clock::now_ms()))
            .condition_expression("attribute_not_exists(user_id)")
            .send()
            .await;
        let newly_member = match put {
            Ok(_) => true,
            Err(e) if is_condition_failure(&e) => false,
            Err(e) => return Err(unavailable("recording membership", e)),
        };
        let last_seq = self.last_seq(conversation_id).await?;
        Ok(Joined { newly_member, last_seq })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        if matches!(ExternalId::parse(user_id), Ok(Some(_))) {
            self.client
                .update_item()
                .table_name(&self.tables.conversations)
                .key("conversation_id", s(conversation_id))
                .update_expression("DELETE externals :m")
                .expression_attribute_values(":m", AttributeValue::Ss(vec![user_id.to_owned()]))
                .send()
                .await
                .map_err(|e| unavailable("removing an external member", e))?;
        }
        let out = self
            .client
            .delete_item()
            .table_name(&self.tables.members)
            .key("conversation_id", s(conversation_id))
            .key("user_id", s(user_id))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("removing membership", e))?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn is_member(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.member_item(conversation_id, user_id).await?.is_some())
    }

    async fn presence_online(&self, key: &PresenceKey, now_ms: i64, expires_at_ms: i64) -> Result<bool, StoreError> {
        // Write first, then look for others (offline deletes first, then
        // looks): whichever way a join and a leave of two streams of one user
        // interleave, one of them sees the other, so an online user is never
        // announced offline.
        self.put_presence(key, expires_at_ms).await?;
        Ok(self.other_sessions(key, now_ms).await? == 0)
    }

    async fn presence_offline(&self, key: &PresenceKey, now_ms: i64) -> Result<bool, StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.presence)
            .key("conversation_id", s(&key.conversation_id))
            .key("session_key", s(&session_key(key)))
            .send()
            .await
            .map_err(|e| unavailable("removing presence", e))?;
        Ok(self.other_sessions(key, now_ms).await? == 0)
    }

    async fn presence_refresh(&self, keys: &[PresenceKey], expires_at_ms: i64) -> Result<(), StoreError> {
        // Conditional updates, so a refresh racing a stream's removal cannot
        // bring its presence back; a few in flight at a time, so a gateway
        // with many streams refreshes well inside the lease.
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(keys.to_vec())
            .map(|key| async move { self.touch_presence(&key, expires_at_ms).await })
            .buffer_unordered(PRESENCE_REFRESH_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn online_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.presence)
            .key_condition_expression("conversation_id = :c")
            .filter_expression("expires_at_ms > :now")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":now", n(now_ms))
            .projection_expression("user_id")
            .consistent_read(true);
        let users = query_items(request, None, "querying presence")
            .await?
            .iter()
            .map(|item| get_s(item, "user_id"))
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(users.into_iter().collect())
    }

    async fn history(&self, conversation_id: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.messages)
            .consistent_read(true)
            .scan_index_forward(query.direction == Direction::Forward)
            .expression_attribute_values(":c", s(conversation_id));
        request = match (query.direction, query.from_seq) {
            (_, None) => request.key_condition_expression("conversation_id = :c"),
            (Direction::Forward, Some(from)) => request
                .key_condition_expression("conversation_id = :c AND seq > :s")
                .expression_attribute_values(":s", AttributeValue::N(from.to_string())),
            (Direction::Backward, Some(from)) => request
                .key_condition_expression("conversation_id = :c AND seq < :s")
                .expression_attribute_values(":s", AttributeValue::N(from.to_string())),
        };
        query_items(request, Some(query.limit), "reading history").await?.iter().map(stored_message).collect()
    }

    async fn get_message(&self, conversation_id: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.tables.messages)
            .index_name("by_message_id")
            .key_condition_expression("message_id = :m")
            .expression_attribute_values(":m", s(message_id))
            .send()
            .await
            .map_err(|e| unavailable("reading a message", e))?;
        for item in out.items() {
            let message = stored_message(item)?;
            if message.conversation_id == conversation_id {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    async fn conversations(
        &self,
        user_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<ConversationInfo>, bool), StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.members)
            .index_name("by_user")
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", s(user_id));
        if let Some(after) = after {
            request = request
                .key_condition_expression("user_id = :u AND conversation_id > :after")
                .expression_attribute_values(":after", s(after));
        }
        // One more than asked tells whether another page follows.
        let mut members = query_items(request, Some(limit + 1), "listing conversations")
            .await?
            .iter()
            .map(|item| Ok((get_s(item, "conversation_id")?, number_or_zero(item, "last_read_seq"))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let more = members.len() > limit;
        members.truncate(limit);
        let ids: Vec<String> = members.iter().map(|(c, _)| c.clone()).collect();
        let items = self.batch_get(&self.tables.conversations, "conversation_id", &ids).await?;
        let page = members
            .into_iter()
            .map(|(conversation_id, last_read_seq)| ConversationInfo {
                last_message: items.get(&conversation_id).and_then(|item| last_message(&conversation_id, item)),
                conversation_id,
                last_read_seq,
            })
            .collect();
        Ok((page, more))
    }

    async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        self.last_seq(conversation_id).await
    }

    async fn add_member(&self, conversation_id: &str, member_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        // Recorded on the conversation first: a send accepted after the
        // member exists then always names them.
        if matches!(ExternalId::parse(member_id), Ok(Some(_))) {
            self.client
                .update_item()
                .table_name(&self.tables.conversations)
                .key("conversation_id", s(conversation_id))
                .update_expression("ADD externals :m")
                .expression_attribute_values(":m", AttributeValue::Ss(vec![member_id.to_owned()]))
                .send()
                .await
                .map_err(|e| unavailable("recording an external member", e))?;
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.members)
            .item("conversation_id", s(conversation_id))
            .item("user_id", s(member_id))
            .item("joined_at_ms", n(now_ms))
            .condition_expression("attribute_not_exists(user_id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("adding a member", e)),
        }
    }

    async fn members(&self, conversation_id: &str) -> Result<Vec<MemberState>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.members)
            .key_condition_expression("conversation_id = :c")
            .expression_attribute_values(":c", s(conversation_id))
            .consistent_read(true);
        query_items(request, None, "listing members").await?.iter().map(member_state).collect()
    }

    async fn member(&self, conversation_id: &str, user_id: &str) -> Result<Option<MemberState>, StoreError> {
        self.member_item(conversation_id, user_id).await?.as_ref().map(member_state).transpose()
    }

    async fn record_receipt(
        &self,
        conversation_id: &str,
        receipt: &ReceiptEvent,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let seq = i64::try_from(receipt.up_to_seq).unwrap_or(i64::MAX);
        if receipt.status == ReceiptStatus::Failed {
            let mut put = self
                .client
                .put_item()
                .table_name(&self.tables.receipts)
                .item("conversation_id", s(conversation_id))
                .item("receipt_key", s(&failure_key(receipt.up_to_seq, &receipt.user_id)))
                .item("user_id", s(&receipt.user_id))
                .item("at_ms", n(at_ms))
                .condition_expression("attribute_not_exists(receipt_key)");
            if !receipt.reason.is_empty() {
                put = put.item("reason", s(&receipt.reason));
            }
            return match put.send().await {
                Ok(_) => Ok(true),
                Err(e) if is_condition_failure(&e) => Ok(false),
                Err(e) => Err(unavailable("recording a failure", e)),
            };
        }
        let (seq_attr, at_attr) = watermark_attributes(receipt.status);
        let watermark = Update::builder()
            .table_name(&self.tables.members)
            .key("conversation_id", s(conversation_id))
            .key("user_id", s(&receipt.user_id))
            .update_expression(format!("SET {seq_attr} = :s, {at_attr} = :t"))
            .condition_expression(format!(
                "attribute_exists(user_id) AND (attribute_not_exists({seq_attr}) OR {seq_attr} < :s)"
            ))
            .expression_attribute_values(":s", n(seq))
            .expression_attribute_values(":t", n(at_ms))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building a watermark update: {e}")))?;
        let step = Put::builder()
            .table_name(&self.tables.receipts)
            .item("conversation_id", s(conversation_id))
            .item("receipt_key", s(&step_key(&receipt.user_id, receipt.status, receipt.up_to_seq)))
            .item("at_ms", n(at_ms))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building a receipt step: {e}")))?;
        let out = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(watermark).build())
            .transact_items(TransactWriteItem::builder().put(step).build())
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            // Not a member, or the watermark is already there.
            Err(e) if is_transaction_condition_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("recording a receipt", e)),
        }
    }

    async fn failures(&self, conversation_id: &str, seq: u64) -> Result<Vec<Failure>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.receipts)
            .key_condition_expression("conversation_id = :c AND begins_with(receipt_key, :p)")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":p", s(&failure_prefix(seq)))
            .consistent_read(true);
        query_items(request, None, "reading failures")
            .await?
            .iter()
            .map(|item| {
                Ok(Failure {
                    user_id: get_s(item, "user_id")?,
                    at_ms: get_n(item, "at_ms")?,
                    reason: item.get("reason").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn step_time(
        &self,
        conversation_id: &str,
        user_id: &str,
        status: ReceiptStatus,
        seq: u64,
    ) -> Result<Option<i64>, StoreError> {
        let (from, to) = step_range(user_id, status, seq);
        let out = self
            .client
            .query()
            .table_name(&self.tables.receipts)
            .key_condition_expression("conversation_id = :c AND receipt_key BETWEEN :from AND :to")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":from", s(&from))
            .expression_attribute_values(":to", s(&to))
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading a receipt step", e))?;
        out.items().first().map(|item| get_n(item, "at_ms")).transpose()
    }

    async fn link_channel(&self, user_id: &str, external_id: Option<&str>) -> Result<(), StoreError> {
        match external_id {
            Some(external_id) => self
                .client
                .put_item()
                .table_name(&self.tables.users)
                .item("user_id", s(user_id))
                .item("fallback_to", s(external_id))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("linking a channel", e)),
            None => self
                .client
                .delete_item()
                .table_name(&self.tables.users)
                .key("user_id", s(user_id))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("unlinking a channel", e)),
        }
    }

    async fn linked_channels(&self, user_ids: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let items = self.batch_get(&self.tables.users, "user_id", user_ids).await?;
        Ok(items
            .into_iter()
            .filter_map(|(user, item)| item.get("fallback_to").and_then(|v| v.as_s().ok()).map(|to| (user, to.clone())))
            .collect())
    }

    async fn bound_conversation(&self, member_id: &str) -> Result<Option<String>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.members)
            .index_name("by_user")
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", s(member_id));
        let items = query_items(request, None, "finding an external member's conversation").await?;
        let mut newest: Option<(i64, String)> = None;
        for item in &items {
            let candidate = (number_or_zero(item, "joined_at_ms") as i64, get_s(item, "conversation_id")?);
            if newest.as_ref().is_none_or(|n| candidate > *n) {
                newest = Some(candidate);
            }
        }
        Ok(newest.map(|(_, c)| c))
    }
}
