//! The conversations table, one item per conversation (`conversation_id`):
//! - `last_seq` (N): the seq counter, `ADD 1` per send (`updated_at_ms`);
//! - `externals` (SS): the external members, read back by the counter
//!   update so a send names its external recipients in the same call;
//! - the settings `CreateConversation` writes once: `kind` (`public`,
//!   `private`, `direct`; absent on conversations created before roles,
//!   which read as public), `title`, `created_by`, `created_at_ms`;
//! - `banned` (SS): users kept out, checked atomically by a join;
//! - `members_version` (N): removals so far, read back by the counter update
//!   so each message carries the version it was numbered under;
//! - `routes` (SS): the gateways (route ids) that receive the conversation's
//!   events directly (member routing), read back by the counter update so
//!   each message goes to the gateways registered before it was numbered;
//!   `routes_overflowed` (BOOL): more registered than a conversation routes
//!   to, so its events go through the topic to every gateway;
//! - `fallback_members` (SS): the members with a linked channel, read back
//!   by the counter update so a message goes to the functions (offline
//!   fallback) only when one of them may need it; kept by `LinkChannel`
//!   across the user's memberships and by every membership change.

use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, Update};
use chat_core::conversation::{Conversation, Kind, NewConversation};
use chat_core::store::{Routes, StoreError};

use super::{DynamoStore, Item, conditional, get_n, n, number_or_zero, s, string_set, text, unavailable};

/// The condition under which `:u` may be added: the conversation does not
/// ban them.
pub(super) const NOT_BANNED: &str = "NOT contains(banned, :u)";

/// The condition under which a non-member may join: the conversation exists,
/// is public (or predates kinds) and does not ban them (`:u`).
pub(super) const ADMITS_JOIN: &str = "attribute_exists(conversation_id) AND (attribute_not_exists(#kind) OR #kind = :public) AND NOT contains(banned, :u)";

/// A seq just taken, with what a send needs to know at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: u64,
    /// The external members, the sender included.
    pub externals: Vec<String>,
    pub members_version: u64,
    /// The gateways registered for its events when the seq was taken.
    pub routes: Routes,
}

/// What registering a gateway for a conversation's events found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The route is in the conversation's set.
    Registered,
    /// The conversation routes to every gateway through the topic.
    Overflowed,
    /// There is no such conversation (the join that asked will say so).
    NoConversation,
}

fn routes(item: &Item) -> Routes {
    Routes {
        gateways: string_set(item, "routes"),
        overflowed: item.get("routes_overflowed").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
        fallback_members: string_set(item, "fallback_members"),
    }
}

impl DynamoStore {
    /// The conversation item written by a creation, conditional on the id
    /// being new.
    pub(super) fn new_conversation_put(&self, new: &NewConversation) -> Result<Put, StoreError> {
        let c = &new.conversation;
        let externals: Vec<String> = new
            .members
            .iter()
            .filter(|(m, _)| chat_core::external::ExternalId::has_channel_prefix(m))
            .map(|(m, _)| m.clone())
            .collect();
        let mut put = Put::builder()
            .table_name(&self.tables.conversations)
            .item("conversation_id", s(&c.conversation_id))
            .item("kind", s(c.kind.as_str()))
            .item("created_by", s(&c.created_by))
            .item("created_at_ms", n(c.created_at_ms))
            .condition_expression("attribute_not_exists(conversation_id)");
        if !c.title.is_empty() {
            put = put.item("title", s(&c.title));
        }
        if !externals.is_empty() {
            put = put.item("externals", AttributeValue::Ss(externals));
        }
        put.build().map_err(|e| StoreError::Corrupt(format!("building a conversation item: {e}")))
    }

    /// A conversation's settings; `None` when it does not exist.
    pub(super) async fn read_conversation(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("conversation_id, #kind, title, created_by, created_at_ms")
            .expression_attribute_names("#kind", "kind")
            .send()
            .await
            .map_err(|e| unavailable("reading a conversation", e))?;
        Ok(out.item().map(|item| conversation(conversation_id, item)))
    }

    /// Adds (`ban`) or lifts a ban; true when the set changed.
    pub(super) async fn set_ban(&self, conversation_id: &str, user_id: &str, ban: bool) -> Result<bool, StoreError> {
        let action = if ban { "ADD" } else { "DELETE" };
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression(format!("{action} banned :u"))
            .expression_attribute_values(":u", AttributeValue::Ss(vec![user_id.to_owned()]))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await
            .map_err(|e| unavailable(if ban { "recording a ban" } else { "lifting a ban" }, e))?;
        let was_banned = out.attributes().is_some_and(|old| string_set(old, "banned").iter().any(|u| u == user_id));
        Ok(was_banned != ban)
    }

    /// Allocates the conversation's next seq (one `UpdateItem`); returns it
    /// with the conversation's external members and membership version.
    pub async fn next_seq(&self, conversation_id: &str, now_ms: i64) -> Result<Numbered, StoreError> {
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
        Ok(Numbered {
            seq: get_n(item, "last_seq")?,
            externals: string_set(item, "externals"),
            members_version: number_or_zero(item, "members_version"),
            routes: routes(item),
        })
    }

    /// Adds `users` to the conversation's members with a linked channel
    /// (`linked`), or takes them out. A conversation gone meanwhile is left
    /// alone.
    pub(super) async fn set_fallback_members(
        &self,
        conversation_id: &str,
        users: Vec<String>,
        linked: bool,
    ) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let expression = if linked { "ADD fallback_members :v" } else { "DELETE fallback_members :v" };
        self.update_existing(conversation_id, expression, AttributeValue::Ss(users), "keeping fallback members")
            .await
            .map(drop)
    }

    /// Adds `route` to the conversation's routes, unless `limit` routes are
    /// there already: the conversation then overflows to the topic for
    /// good. Call it before reading the conversation's latest seq for a
    /// join: every message numbered after it names the route.
    pub async fn register_route(
        &self,
        conversation_id: &str,
        route: &str,
        limit: usize,
    ) -> Result<Registration, StoreError> {
        for _ in 0..3 {
            let added = self
                .client
                .update_item()
                .table_name(&self.tables.conversations)
                .key("conversation_id", s(conversation_id))
                .update_expression("ADD routes :r")
                .condition_expression(
                    "attribute_exists(conversation_id) AND attribute_not_exists(routes_overflowed) \
                     AND (attribute_not_exists(routes) OR size(routes) < :limit OR contains(routes, :route))",
                )
                .expression_attribute_values(":r", AttributeValue::Ss(vec![route.to_owned()]))
                .expression_attribute_values(":route", s(route))
                .expression_attribute_values(":limit", n(limit))
                .send()
                .await;
            if conditional(added, "registering a route")? {
                return Ok(Registration::Registered);
            }
            // Refused: no conversation, overflowed already, or full.
            let Some((_, current)) = self.read_routes(conversation_id).await? else {
                return Ok(Registration::NoConversation);
            };
            if current.overflowed {
                return Ok(Registration::Overflowed);
            }
            if current.gateways.len() >= limit {
                let overflowed = self
                    .update_existing(
                        conversation_id,
                        "SET routes_overflowed = :v",
                        AttributeValue::Bool(true),
                        "overflowing routes",
                    )
                    .await?;
                return Ok(if overflowed { Registration::Overflowed } else { Registration::NoConversation });
            }
            // A route left between the two calls: try again.
        }
        Err(StoreError::Unavailable(format!("the routes of conversation {conversation_id} keep changing")))
    }

    /// Takes `route` out of the conversation's routes (its gateway has no
    /// member streaming there any more, or its queue is gone).
    pub async fn unregister_route(&self, conversation_id: &str, route: &str) -> Result<(), StoreError> {
        let route = AttributeValue::Ss(vec![route.to_owned()]);
        self.update_existing(conversation_id, "DELETE routes :v", route, "unregistering a route").await.map(drop)
    }

    /// One update (`:v` its value) of an existing conversation's item; false
    /// when there is no such conversation.
    async fn update_existing(
        &self,
        conversation_id: &str,
        expression: &str,
        value: AttributeValue,
        what: &str,
    ) -> Result<bool, StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression(expression)
            .condition_expression("attribute_exists(conversation_id)")
            .expression_attribute_values(":v", value)
            .send()
            .await;
        conditional(updated, what)
    }

    /// The conversation's latest seq and its routes now (a consistent
    /// read); `None` when it does not exist.
    pub async fn read_routes(&self, conversation_id: &str) -> Result<Option<(u64, Routes)>, StoreError> {
        let item = self.counters(conversation_id, "reading routes").await?;
        Ok(item.map(|item| (number_or_zero(&item, "last_seq"), routes(&item))))
    }

    /// The conversation's counters and routes (a consistent read); `None`
    /// when it does not exist.
    async fn counters(&self, conversation_id: &str, what: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("conversation_id, last_seq, members_version, routes, routes_overflowed")
            .send()
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(out.item)
    }

    /// Moves the membership version on, for the transaction that takes a
    /// membership away (a leave or removal); the conversation must exist.
    pub(super) fn members_version_step(&self, conversation_id: &str) -> Result<Update, BuildError> {
        Update::builder()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression("ADD members_version :one")
            .condition_expression("attribute_exists(conversation_id)")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .build()
    }

    pub(super) async fn last_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        Ok(self.position(conversation_id).await?.0)
    }

    /// The conversation's latest seq and membership version (0 before any).
    pub(super) async fn position(&self, conversation_id: &str) -> Result<(u64, u64), StoreError> {
        let item = self.counters(conversation_id, "reading last_seq").await?;
        Ok(item.map_or((0, 0), |item| (number_or_zero(&item, "last_seq"), number_or_zero(&item, "members_version"))))
    }

    /// Removes an external member from the conversation, so later sends
    /// stop naming them as recipients (adding one is part of
    /// `Membership::add_member`'s transaction).
    pub(super) async fn remove_external(&self, conversation_id: &str, member_id: &str) -> Result<(), StoreError> {
        let member = AttributeValue::Ss(vec![member_id.to_owned()]);
        self.update_existing(conversation_id, "DELETE externals :v", member, "removing an external member")
            .await
            .map(drop)
    }
}

/// A conversation item's settings; one without a kind predates kinds and
/// reads as public, one with a kind this build does not know as private
/// (failing closed).
fn conversation(conversation_id: &str, item: &Item) -> Conversation {
    let kind = match text(item, "kind") {
        None => Kind::Public,
        Some(kind) => Kind::parse(&kind).unwrap_or(Kind::Private),
    };
    Conversation {
        conversation_id: conversation_id.to_owned(),
        kind,
        title: text(item, "title").unwrap_or_default(),
        created_by: text(item, "created_by").unwrap_or_default(),
        created_at_ms: get_n(item, "created_at_ms").unwrap_or(0),
    }
}
