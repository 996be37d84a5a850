//! The presence table, one leased item per online stream
//! (`conversation_id`, `session_key` = `user#session`): `user_id`,
//! `expires_at_ms`, and `expires_at` (the table's TTL, in seconds). Refreshed
//! while the stream lives, so a crashed gateway's sessions expire.

use std::collections::BTreeSet;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::Select;
use chat_core::store::{Presence, PresenceKey, StoreError};
use futures::StreamExt;

use super::{DynamoStore, conditional, get_n, get_s, n, query_items, s, unavailable};

/// Presence refreshes in flight at once.
const PRESENCE_REFRESH_CONCURRENCY: usize = 16;

impl DynamoStore {
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
        // Refused: the stream was removed, and a refresh must not revive it.
        conditional(update, "refreshing presence").map(|_| ())
    }
}

fn session_key(key: &PresenceKey) -> String {
    // User ids cannot contain '#', so the prefix query matches one user only.
    format!("{}#{}", key.user_id, key.session_id)
}

#[async_trait]
impl Presence for DynamoStore {
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

    async fn presence_remove_user(
        &self,
        conversation_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.presence)
            .key_condition_expression("conversation_id = :c AND begins_with(session_key, :u)")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":u", s(&format!("{user_id}#")))
            .consistent_read(true);
        let items = query_items(request, None, "querying a user's presence").await?;
        let mut was_online = false;
        for item in &items {
            was_online |= get_n::<i64>(item, "expires_at_ms").is_ok_and(|exp| exp > now_ms);
            let key = get_s(item, "session_key")?;
            self.client
                .delete_item()
                .table_name(&self.tables.presence)
                .key("conversation_id", s(conversation_id))
                .key("session_key", s(&key))
                .send()
                .await
                .map_err(|e| unavailable("removing presence", e))?;
        }
        Ok(was_online)
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
}
