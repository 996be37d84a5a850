//! The users table, one item per user (`user_id`) with a linked external
//! identity: `fallback_to`, where offline fallback reaches them.

use std::collections::HashMap;

use async_trait::async_trait;
use chat_core::store::{Links, StoreError};
use futures::{StreamExt, TryStreamExt};

use super::{DynamoStore, get_s, number_or_zero, s, unavailable};

/// Conversations told of a link at once.
const LINK_UPDATES_IN_FLIGHT: usize = 16;

impl DynamoStore {
    async fn write_link(&self, user_id: &str, external_id: Option<&str>) -> Result<(), StoreError> {
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
}

#[async_trait]
impl Links for DynamoStore {
    async fn link_channel(&self, user_id: &str, external_id: Option<&str>) -> Result<(), StoreError> {
        self.write_link(user_id, external_id).await?;
        // Then every conversation of theirs learns whether fallback may
        // need its messages (a membership written meanwhile reads the link
        // itself).
        let linked = external_id.is_some();
        let conversations = self
            .memberships(user_id, None, None, "listing a user's conversations")
            .await?
            .iter()
            .map(|item| get_s(item, "conversation_id"))
            .collect::<Result<Vec<_>, _>>()?;
        futures::stream::iter(conversations)
            .map(|conversation_id| async move {
                self.set_fallback_members(&conversation_id, vec![user_id.to_owned()], linked).await
            })
            .buffer_unordered(LINK_UPDATES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn linked_channels(&self, user_ids: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let items = self.batch_get(&self.tables.users, "user_id", user_ids).await?;
        Ok(items
            .into_iter()
            .filter_map(|(user, item)| item.get("fallback_to").and_then(|v| v.as_s().ok()).map(|to| (user, to.clone())))
            .collect())
    }

    async fn bound_conversation(&self, member_id: &str) -> Result<Option<String>, StoreError> {
        let items = self.memberships(member_id, None, None, "finding an external member's conversation").await?;
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
