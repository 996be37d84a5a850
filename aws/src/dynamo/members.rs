//! The members table, one item per (`conversation_id`, `user_id`):
//! `joined_at_ms`, `role` (`owner`, `admin`, `member`; absent on items
//! written before roles, which are members), and the member's receipt watermarks `delivered_seq` /
//! `delivered_at_ms` and `last_read_seq` / `read_at_ms` (absent until set).
//! Index `by_user` (`user_id`, `conversation_id`) lists a user's
//! conversations.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update};
use chat_core::conversation::{Conversation, Kind, NewConversation, Role};
use chat_core::envelope::ReceiptStatus;
use chat_core::external::ExternalId;
use chat_core::store::{Created, Joined, Links, MemberState, Membership, Removal, StoreError};

use super::conversations::{ADMITS_JOIN, NOT_BANNED};
use super::{DynamoStore, Item, conditional, get_s, n, number_or_zero, query_items, s, text, unavailable};
use crate::error::{failed_transaction_conditions, is_transaction_condition_failure};

fn built<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::Corrupt(format!("building a request: {e}")))
}

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

    /// A new member's item, conditional on them not being one.
    fn member_put(&self, conversation_id: &str, user_id: &str, role: Role, now_ms: i64) -> Result<Put, StoreError> {
        built(
            Put::builder()
                .table_name(&self.tables.members)
                .item("conversation_id", s(conversation_id))
                .item("user_id", s(user_id))
                .item("joined_at_ms", n(now_ms))
                .item("role", s(role.as_str()))
                .condition_expression("attribute_not_exists(user_id)")
                .build(),
        )
    }

    /// Records a member unless they are one; true when they were not.
    async fn put_member(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let put = self.member_put(conversation_id, user_id, role, now_ms)?;
        let result = self
            .client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .set_condition_expression(put.condition_expression)
            .send()
            .await;
        conditional(result, "recording membership")
    }

    /// Records a new member in one transaction with `gate`, a write or check
    /// on the conversation item that carries the conversation's admission
    /// condition. Per failed condition: `(gate refused, already a member)`;
    /// `None` when both passed.
    async fn gated_member_put(
        &self,
        gate: TransactWriteItem,
        conversation_id: &str,
        user_id: &str,
        now_ms: i64,
        what: &str,
    ) -> Result<Option<(bool, bool)>, StoreError> {
        let put = self.member_put(conversation_id, user_id, Role::Member, now_ms)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(gate)
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match failed_transaction_conditions(&e) {
                Some(failed) => Ok(Some((failed.first() == Some(&true), failed.get(1) == Some(&true)))),
                None => Err(unavailable(what, e)),
            },
        }
    }

    /// A non-member's join, in one transaction with the conversation's
    /// admission check; false when the conversation does not admit them
    /// (or they became a member meanwhile).
    async fn admit(&self, conversation_id: &str, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let check = built(
            ConditionCheck::builder()
                .table_name(&self.tables.conversations)
                .key("conversation_id", s(conversation_id))
                .condition_expression(ADMITS_JOIN)
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":public", s(Kind::Public.as_str()))
                .expression_attribute_values(":u", s(user_id))
                .build(),
        )?;
        let gate = TransactWriteItem::builder().condition_check(check).build();
        Ok(self.gated_member_put(gate, conversation_id, user_id, now_ms, "joining a conversation").await?.is_none())
    }

    fn role_update(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
        condition: &str,
    ) -> Result<Update, StoreError> {
        built(
            Update::builder()
                .table_name(&self.tables.members)
                .key("conversation_id", s(conversation_id))
                .key("user_id", s(user_id))
                .update_expression("SET #role = :role")
                .condition_expression(condition)
                .expression_attribute_names("#role", "role")
                .expression_attribute_values(":role", s(role.as_str()))
                .build(),
        )
    }

    /// Records which of `users`, members of the conversation now, have a
    /// linked channel (read after their member items were written, so a
    /// link made meanwhile is either read here or finds the membership).
    async fn note_fallback_members(&self, conversation_id: &str, users: &[String]) -> Result<(), StoreError> {
        let internal: Vec<String> =
            users.iter().filter(|u| !matches!(ExternalId::parse(u), Ok(Some(_)))).cloned().collect();
        if internal.is_empty() {
            return Ok(());
        }
        let linked: Vec<String> = self.linked_channels(&internal).await?.into_keys().collect();
        self.set_fallback_members(conversation_id, linked, true).await
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
        role: Role::parse_stored(text(item, "role").as_deref()),
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
    async fn create(&self, new: &NewConversation) -> Result<Created, StoreError> {
        let id = new.conversation.conversation_id.as_str();
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(self.new_conversation_put(new)?).build());
        for (member, role) in &new.members {
            let put = self.member_put(id, member, *role, new.conversation.created_at_ms)?;
            transaction = transaction.transact_items(TransactWriteItem::builder().put(put).build());
        }
        let members: Vec<String> = new.members.iter().map(|(member, _)| member.clone()).collect();
        match transaction.send().await {
            Ok(_) => {
                self.note_fallback_members(id, &members).await?;
                return Ok(Created { conversation: new.conversation.clone(), created: true });
            }
            Err(e) if is_transaction_condition_failure(&e) => {}
            Err(e) => return Err(unavailable("creating a conversation", e)),
        }
        // The id exists (members are new with their conversation, so only
        // its condition can have failed).
        let existing: Conversation = self
            .read_conversation(id)
            .await?
            .ok_or_else(|| StoreError::Unavailable("a conversation vanished while being created".into()))?;
        if existing.kind == Kind::Direct {
            for (member, role) in &new.members {
                self.put_member(id, member, *role, new.conversation.created_at_ms).await?;
            }
            self.note_fallback_members(id, &members).await?;
        }
        Ok(Created { conversation: existing, created: false })
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        self.read_conversation(conversation_id).await
    }

    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError> {
        // Read before the membership is checked or written: a removal of a
        // later version may have taken it away again (see `Removal`).
        let (last_seq, members_version) = self.position(conversation_id).await?;
        let (role, newly_member) = match self.role(conversation_id, user_id).await? {
            Some(role) => (role, false),
            None if self.admit(conversation_id, user_id, chat_core::clock::now_ms()).await? => (Role::Member, true),
            // A concurrent join of the same user may have won.
            None => (self.role(conversation_id, user_id).await?.ok_or(StoreError::NotAdmitted)?, false),
        };
        if newly_member {
            self.note_fallback_members(conversation_id, &[user_id.to_owned()]).await?;
        }
        Ok(Joined { newly_member, role, last_seq, members_version })
    }

    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<Removal, StoreError> {
        if matches!(ExternalId::parse(user_id), Ok(Some(_))) {
            self.remove_external(conversation_id, user_id).await?;
        } else {
            self.set_fallback_members(conversation_id, vec![user_id.to_owned()], false).await?;
        }
        // The membership goes and the version moves on in one write: a send
        // numbered after it carries the new version, and a join that read
        // the new version came after it.
        let delete = built(
            Delete::builder()
                .table_name(&self.tables.members)
                .key("conversation_id", s(conversation_id))
                .key("user_id", s(user_id))
                .condition_expression("attribute_exists(user_id)")
                .build(),
        )?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .transact_items(
                TransactWriteItem::builder().update(built(self.members_version_step(conversation_id))?).build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_transaction_condition_failure(&e) => {
                return Ok(Removal { was_member: false, members_version: 0 });
            }
            Err(e) => return Err(unavailable("removing membership", e)),
        }
        // A transaction returns no values: read the version back. At worst it
        // is a later removal's, and a stream that joined between the two is
        // ended needlessly: the safe side.
        let (_, members_version) = self.position(conversation_id).await?;
        Ok(Removal { was_member: true, members_version })
    }

    async fn role(&self, conversation_id: &str, user_id: &str) -> Result<Option<Role>, StoreError> {
        let item = self.member_item(conversation_id, user_id).await?;
        Ok(item.map(|item| Role::parse_stored(text(&item, "role").as_deref())))
    }

    async fn add_member(&self, conversation_id: &str, member_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        // One transaction with the ban check, so a ban cannot race an add;
        // an external member is recorded on the conversation in the same
        // write, so every send accepted after the member exists names them.
        let gate = if matches!(ExternalId::parse(member_id), Ok(Some(_))) {
            let update = built(
                Update::builder()
                    .table_name(&self.tables.conversations)
                    .key("conversation_id", s(conversation_id))
                    .update_expression("ADD externals :m")
                    .condition_expression(NOT_BANNED)
                    .expression_attribute_values(":m", AttributeValue::Ss(vec![member_id.to_owned()]))
                    .expression_attribute_values(":u", s(member_id))
                    .build(),
            )?;
            TransactWriteItem::builder().update(update).build()
        } else {
            let check = built(
                ConditionCheck::builder()
                    .table_name(&self.tables.conversations)
                    .key("conversation_id", s(conversation_id))
                    .condition_expression(NOT_BANNED)
                    .expression_attribute_values(":u", s(member_id))
                    .build(),
            )?;
            TransactWriteItem::builder().condition_check(check).build()
        };
        match self.gated_member_put(gate, conversation_id, member_id, now_ms, "adding a member").await? {
            None => {
                self.note_fallback_members(conversation_id, &[member_id.to_owned()]).await?;
                Ok(true)
            }
            Some((true, _)) => Err(StoreError::Banned),
            Some((false, _)) => Ok(false),
        }
    }

    async fn remove_member(&self, conversation_id: &str, member_id: &str, ban: bool) -> Result<Removal, StoreError> {
        if ban {
            self.set_ban(conversation_id, member_id, true).await?;
        }
        self.leave(conversation_id, member_id).await
    }

    async fn unban(&self, conversation_id: &str, member_id: &str) -> Result<bool, StoreError> {
        self.set_ban(conversation_id, member_id, false).await
    }

    async fn set_role(&self, conversation_id: &str, member_id: &str, role: Role) -> Result<bool, StoreError> {
        let update = self.role_update(conversation_id, member_id, role, "attribute_exists(user_id)")?;
        let result = self
            .client
            .update_item()
            .table_name(update.table_name)
            .set_key(Some(update.key))
            .update_expression(update.update_expression)
            .set_condition_expression(update.condition_expression)
            .set_expression_attribute_names(update.expression_attribute_names)
            .set_expression_attribute_values(update.expression_attribute_values)
            .send()
            .await;
        conditional(result, "setting a role")
    }

    async fn transfer_ownership(&self, conversation_id: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let mut demote = self.role_update(conversation_id, from, Role::Admin, "#role = :owner")?;
        demote
            .expression_attribute_values
            .get_or_insert_with(Default::default)
            .insert(":owner".into(), s(Role::Owner.as_str()));
        let promote = self.role_update(conversation_id, to, Role::Owner, "attribute_exists(user_id)")?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(demote).build())
            .transact_items(TransactWriteItem::builder().update(promote).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_transaction_condition_failure(&e) => Err(StoreError::NotMember),
            Err(e) => Err(unavailable("transferring ownership", e)),
        }
    }
}
