//! The members table, one item per (`conversation_id`, `user_id`):
//! `joined_at_ms`, and the member's receipt watermarks `delivered_seq` /
//! `delivered_at_ms` and `last_read_seq` / `read_at_ms` (absent until set).
//! Index `by_user` (`user_id`, `conversation_id`) lists a user's
//! conversations.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use chat_core::envelope::ReceiptStatus;
use chat_core::external::ExternalId;
use chat_core::store::{Joined, MemberState, Membership, StoreError};

use super::{DynamoStore, Item, conditional, get_s, n, number_or_zero, query_items, s, unavailable};

impl DynamoStore {
    pub(super) async fn member_item(&self, conversation_id: &str, user_id: &str) -> Result<Option<Item>, StoreError> {
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

    /// Records a member unless they are one; true when they were not.
    async fn put_member(&self, conversation_id: &str, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.members)
            .item("conversation_id", s(conversation_id))
            .item("user_id", s(user_id))
            .item("joined_at_ms", n(now_ms))
            .condition_expression("attribute_not_exists(user_id)")
            .send()
            .await;
        conditional(put, "recording membership")
    }

    /// The members items of `user_id` (index `by_user`), in conversation
    /// order, after the conversation `after`, up to `limit` (all when `None`).
    pub(super) async fn memberships(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: Option<usize>,
        what: &str,
    ) -> Result<Vec<Item>, StoreError> {
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
        query_items(request, limit, what).await
    }
}

pub(super) fn member_state(item: &Item) -> Result<MemberState, StoreError> {
    Ok(MemberState {
        user_id: get_s(item, "user_id")?,
        delivered_seq: number_or_zero(item, "delivered_seq"),
        read_seq: number_or_zero(item, "last_read_seq"),
    })
}

/// The member item attributes of a watermark.
pub(super) fn watermark_attributes(status: ReceiptStatus) -> (&'static str, &'static str) {
    match status {
        ReceiptStatus::Read => ("last_read_seq", "read_at_ms"),
        _ => ("delivered_seq", "delivered_at_ms"),
    }
}

#[async_trait]
impl Membership for DynamoStore {
    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        let newly_member = self.put_member(conversation_id, user_id, chat_core::clock::now_ms()).await?;
        let last_seq = self.last_seq(conversation_id).await?;
        Ok(Joined { newly_member, last_seq })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        if matches!(ExternalId::parse(user_id), Ok(Some(_))) {
            self.set_external(conversation_id, user_id, false).await?;
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

    async fn add_member(&self, conversation_id: &str, member_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        // Recorded on the conversation first: a send accepted after the
        // member exists then always names them.
        if matches!(ExternalId::parse(member_id), Ok(Some(_))) {
            self.set_external(conversation_id, member_id, true).await?;
        }
        self.put_member(conversation_id, member_id, now_ms).await
    }
}
