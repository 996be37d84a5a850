//! The chat tables on DynamoDB. This module tree is the one owner of their
//! schema (key and attribute names, sort-key formats, TTLs): the gateway and
//! the functions read and write the tables only through it.
//! [`DynamoStore`] implements every store trait of `chat-core`.
//!
//! One module per table, each opening with its item layout:
//! - `conversations`: the `seq` counter (`ADD last_seq :one`, the one write
//!   every send pays), the external members set and the routes (a
//!   conversation's latest message is read from `messages`, not kept here);
//! - `sends`: send idempotency records ([`chat_core::store::Sequencer`]);
//! - `members`: membership and receipt watermarks ([`chat_core::store::Membership`]);
//! - `presence`: leased online streams ([`chat_core::store::Presence`]);
//! - `messages`: stored messages, recorded by their publishers before they
//!   publish ([`chat_core::store::History`]), also read for each listed
//!   conversation's latest message;
//! - `receipts`: watermark steps and failures ([`chat_core::store::Receipts`]);
//! - `users`: links for offline fallback ([`chat_core::store::Links`]);
//! - [`connector`]: the connector's idempotency records, channel message
//!   references and reply bindings.
//!
//! Table and attribute names match `template.yaml`.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_core::store::StoreError;

pub mod connector;
mod conversations;
mod members;
mod messages;
mod presence;
mod receipts;
mod sends;
mod users;

pub use conversations::{Numbered, Registration};
pub use receipts::{failure_key, step_key};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

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

    /// Items of `table` by their one-attribute key `key_name` (BatchGetItem,
    /// unprocessed keys retried), by key value.
    pub(crate) async fn batch_get(
        &self,
        table: &str,
        key_name: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Item>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let keys: Vec<Item> = chunk.iter().map(|id| HashMap::from([(key_name.to_owned(), s(id))])).collect();
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

/// Runs a query across pages until `limit` items are read (all of them when
/// `None`).
pub(crate) async fn query_items(
    request: QueryFluentBuilder,
    limit: Option<usize>,
    what: &str,
) -> Result<Vec<Item>, StoreError> {
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

pub(crate) fn unavailable<E, R>(what: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!("DynamoDB {what}: {}", crate::error::describe(&err)))
}

/// A conditional write's outcome: whether its condition held and the write
/// happened. A refused condition is an answer, not a failure.
pub(crate) fn conditional<O, E, R>(result: Result<O, SdkError<E, R>>, what: &str) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if crate::error::is_condition_failure(&e) => Ok(false),
        Err(e) => Err(unavailable(what, e)),
    }
}

pub(crate) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(crate) fn n<T: ToString>(v: T) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A seq as DynamoDB stores it (numbers are signed there).
pub(crate) fn seq_value(seq: u64) -> AttributeValue {
    n(i64::try_from(seq).unwrap_or(i64::MAX))
}

pub(crate) fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a string")))
}

pub(crate) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a number")))
}

/// A string attribute, `None` when absent.
pub(crate) fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// A string set attribute's members, sorted; empty when absent.
pub(crate) fn string_set(item: &Item, name: &str) -> Vec<String> {
    let mut values = item.get(name).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    values.sort();
    values
}

/// A numeric attribute, 0 when absent (a marker never set).
pub(crate) fn number_or_zero(item: &Item, name: &str) -> u64 {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}
