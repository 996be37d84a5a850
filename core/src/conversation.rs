//! Conversations as resources: their kind, their members' roles, and the
//! rules of who may change whom. Pure; the gateway's `App` applies these
//! rules (one place per operation) and the stores record the outcome.
//!
//! - **Public**: anyone may join by id, and joining makes them a member.
//! - **Private**: only members may join, read, send or watch presence; to
//!   anyone else it looks exactly like a conversation that does not exist.
//! - **Direct**: two users, one deterministic id per pair ([`direct_id`]);
//!   nobody can add, remove or promote anyone in it.
//!
//! Roles rank `Member < Admin < Owner`. An admin adds members, removes and
//! bans those ranked below them, and grants roles up to their own; the
//! owner transfers ownership. Leaving is always allowed.
//!
//! Conversations created before roles existed have no recorded kind: they
//! read as **public** (what they were: anyone with the id could join), and
//! their members as plain members.

use crate::limits::LimitError;

/// How a conversation admits members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Public,
    Private,
    Direct,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::Private => "private",
            Kind::Direct => "direct",
        }
    }

    /// A stored kind; `None` for one this build does not know.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "public" => Some(Kind::Public),
            "private" => Some(Kind::Private),
            "direct" => Some(Kind::Direct),
            _ => None,
        }
    }
}

/// A member's standing in a conversation, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    #[default]
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The role with its article, for messages: "a member", "an admin",
    /// "the owner".
    pub fn described(self) -> &'static str {
        match self {
            Role::Member => "a member",
            Role::Admin => "an admin",
            Role::Owner => "the owner",
        }
    }

    /// A stored role; an absent or unknown one is a plain member (items
    /// written before roles existed).
    pub fn parse_stored(value: Option<&str>) -> Self {
        match value {
            Some("owner") => Role::Owner,
            Some("admin") => Role::Admin,
            _ => Role::Member,
        }
    }
}

/// A conversation's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub conversation_id: String,
    pub kind: Kind,
    pub title: String,
    /// Empty for conversations created before roles existed.
    pub created_by: String,
    pub created_at_ms: i64,
}

/// A conversation to create, checked: its creator becomes its owner (in a
/// direct conversation both users are plain members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    pub conversation: Conversation,
    /// Everyone who starts as a member, with their role, the creator first.
    pub members: Vec<(String, Role)>,
}

/// Longest conversation title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Most members a conversation can be created with (creator included):
/// creation is one atomic write of the conversation and every member.
pub const MAX_INITIAL_MEMBERS: usize = 64;

/// The prefix of direct conversations' ids, which no other may use.
pub const DIRECT_PREFIX: &str = "dm-";

/// The one id of the direct conversation between two users, whoever
/// creates it: a digest of the sorted pair, so it names neither user.
pub fn direct_id(a: &str, b: &str) -> String {
    use sha2::{Digest, Sha256};
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(first.as_bytes());
    // Ids cannot contain a newline, so the pair is unambiguous.
    hasher.update(b"\n");
    hasher.update(second.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{DIRECT_PREFIX}{hex}")
}

/// Checks a creation request and lays out who starts with which role.
/// `members` are the others to add (user ids or external identities);
/// a direct conversation names exactly one other user.
pub fn plan(
    conversation_id: String,
    kind: Kind,
    title: &str,
    creator: &str,
    members: &[String],
    now_ms: i64,
) -> Result<NewConversation, LimitError> {
    crate::limits::conversation_id(&conversation_id)?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(LimitError::TooLarge(format!("title is {} bytes; the limit is {MAX_TITLE_BYTES}", title.len())));
    }
    if title.chars().any(char::is_control) {
        return Err(LimitError::Invalid("title contains control characters".into()));
    }
    let mut others: Vec<String> = Vec::with_capacity(members.len());
    for member in members {
        crate::limits::member_id(member)?;
        if member != creator && !others.contains(member) {
            others.push(member.clone());
        }
    }
    if others.len() + 1 > MAX_INITIAL_MEMBERS {
        return Err(LimitError::TooLarge(format!(
            "{} initial members; a conversation starts with at most {MAX_INITIAL_MEMBERS} (add more afterwards)",
            others.len() + 1
        )));
    }
    let creator_role = match kind {
        Kind::Direct => {
            let [other] = others.as_slice() else {
                return Err(LimitError::Invalid(
                    "a direct conversation names exactly one other user in members".into(),
                ));
            };
            if crate::external::ExternalId::has_channel_prefix(other) {
                return Err(LimitError::Invalid(
                    "a direct conversation is between two users; add external identities to a group".into(),
                ));
            }
            Role::Member
        }
        Kind::Public | Kind::Private => Role::Owner,
    };
    let mut roles = vec![(creator.to_owned(), creator_role)];
    roles.extend(others.into_iter().map(|m| (m, Role::Member)));
    Ok(NewConversation {
        conversation: Conversation {
            conversation_id,
            kind,
            title: title.to_owned(),
            created_by: creator.to_owned(),
            created_at_ms: now_ms,
        },
        members: roles,
    })
}

/// Why a membership change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller's role is too low: `PERMISSION_DENIED`.
    #[error("{0}")]
    Rank(String),
    /// The change makes no sense here: `FAILED_PRECONDITION`.
    #[error("{0}")]
    Precondition(String),
}

/// A role change that may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The target gets `role`.
    Set(Role),
    /// The owner hands over: the target becomes owner, the caller admin.
    TransferOwnership,
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn refuse_direct(kind: Kind, what: &str) -> Result<(), Refusal> {
    if kind == Kind::Direct {
        return Err(Refusal::Precondition(format!(
            "a direct conversation has exactly its two users: nobody can {what} in it"
        )));
    }
    Ok(())
}

/// Whether `caller` may add members (users or external identities).
pub fn may_add(kind: Kind, caller: Role) -> Result<(), Refusal> {
    refuse_direct(kind, "add members")?;
    if caller < Role::Admin {
        return Err(Refusal::Rank("only admins and the owner add members".into()));
    }
    Ok(())
}

/// Whether `caller` may remove (or ban) a member ranked `target`; `None`
/// when the target is not a member (a ban keeps them out all the same).
pub fn may_remove(kind: Kind, caller: Role, target: Option<Role>) -> Result<(), Refusal> {
    refuse_direct(kind, "remove or ban members")?;
    if caller < Role::Admin {
        return Err(Refusal::Rank("only admins and the owner remove or ban members".into()));
    }
    if let Some(target) = target
        && target >= caller
    {
        return Err(Refusal::Rank(format!(
            "{} cannot remove or ban {}; only those ranked below you",
            capitalized(caller.described()),
            target.described()
        )));
    }
    Ok(())
}

/// Whether `caller` may give `member`, ranked `target`, the role `new`.
/// External identities never connect, so they stay plain members.
pub fn may_set_role(kind: Kind, caller: Role, member: &str, target: Role, new: Role) -> Result<RoleChange, Refusal> {
    refuse_direct(kind, "change roles")?;
    if new != Role::Member && crate::external::ExternalId::has_channel_prefix(member) {
        return Err(Refusal::Precondition(format!(
            "{member} is an external identity: it cannot act in the conversation, so it cannot hold a role"
        )));
    }
    if new == Role::Owner {
        if caller != Role::Owner {
            return Err(Refusal::Rank("only the owner transfers ownership".into()));
        }
        return Ok(RoleChange::TransferOwnership);
    }
    if caller < Role::Admin {
        return Err(Refusal::Rank("only admins and the owner set roles".into()));
    }
    if target >= caller {
        return Err(Refusal::Rank(format!("a {} cannot change the role of a {}", caller.as_str(), target.as_str())));
    }
    Ok(RoleChange::Set(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_one_per_pair_and_name_nobody() {
        assert_eq!(direct_id("alice", "bob"), direct_id("bob", "alice"));
        assert_ne!(direct_id("alice", "bob"), direct_id("alice", "carol"));
        assert_ne!(direct_id("ab", "c"), direct_id("a", "bc"));
        let id = direct_id("alice", "bob");
        assert!(!id.contains("alice") && crate::limits::conversation_id(&id).is_ok());
    }

    #[test]
    fn plan_makes_the_creator_owner_and_dedupes_members() {
        let members = vec!["bob".to_owned(), "alice".to_owned(), "bob".to_owned()];
        let plan = plan("c1".into(), Kind::Private, "Team", "alice", &members, 5).expect("valid");
        assert_eq!(plan.members, vec![("alice".into(), Role::Owner), ("bob".into(), Role::Member)]);
        assert_eq!(plan.conversation.created_by, "alice");
    }

    #[test]
    fn plan_refuses_bad_input() {
        let long = "x".repeat(MAX_TITLE_BYTES + 1);
        assert!(matches!(plan("c".into(), Kind::Public, &long, "a", &[], 0), Err(LimitError::TooLarge(_))));
        assert!(matches!(plan("c".into(), Kind::Public, "a\u{7}", "a", &[], 0), Err(LimitError::Invalid(_))));
        assert!(matches!(plan("c c".into(), Kind::Public, "", "a", &[], 0), Err(LimitError::Invalid(_))));
        let bad = vec!["no spaces".to_owned()];
        assert!(matches!(plan("c".into(), Kind::Public, "", "a", &bad, 0), Err(LimitError::Invalid(_))));
        let many: Vec<String> = (0..MAX_INITIAL_MEMBERS).map(|i| format!("u{i}")).collect();
        assert!(matches!(plan("c".into(), Kind::Public, "", "a", &many, 0), Err(LimitError::TooLarge(_))));
    }

    #[test]
    fn a_direct_conversation_names_one_other_user() {
        let d = plan("dm".into(), Kind::Direct, "", "alice", &["bob".into()], 0).expect("valid");
        assert!(d.members.iter().all(|(_, r)| *r == Role::Member));
        assert!(plan("dm".into(), Kind::Direct, "", "alice", &[], 0).is_err());
        assert!(plan("dm".into(), Kind::Direct, "", "alice", &["alice".into()], 0).is_err());
        assert!(plan("dm".into(), Kind::Direct, "", "alice", &["bob".into(), "carol".into()], 0).is_err());
        assert!(plan("dm".into(), Kind::Direct, "", "alice", &["whatsapp:+5511999990000".into()], 0).is_err());
    }

    #[test]
    fn only_admins_add_and_never_in_a_direct_conversation() {
        assert!(may_add(Kind::Public, Role::Admin).is_ok());
        assert!(may_add(Kind::Private, Role::Owner).is_ok());
        assert!(matches!(may_add(Kind::Public, Role::Member), Err(Refusal::Rank(_))));
        assert!(matches!(may_add(Kind::Direct, Role::Owner), Err(Refusal::Precondition(_))));
    }

    #[test]
    fn removal_needs_a_higher_rank() {
        assert!(may_remove(Kind::Private, Role::Admin, Some(Role::Member)).is_ok());
        assert!(may_remove(Kind::Private, Role::Owner, Some(Role::Admin)).is_ok());
        assert!(may_remove(Kind::Private, Role::Admin, None).is_ok(), "a pre-emptive ban");
        assert!(matches!(may_remove(Kind::Private, Role::Admin, Some(Role::Admin)), Err(Refusal::Rank(_))));
        assert!(matches!(may_remove(Kind::Private, Role::Admin, Some(Role::Owner)), Err(Refusal::Rank(_))));
        assert!(matches!(may_remove(Kind::Private, Role::Member, Some(Role::Member)), Err(Refusal::Rank(_))));
        assert!(matches!(may_remove(Kind::Direct, Role::Owner, Some(Role::Member)), Err(Refusal::Precondition(_))));
    }

    #[test]
    fn roles_are_granted_up_to_ones_own_and_ownership_only_by_the_owner() {
        assert_eq!(
            may_set_role(Kind::Public, Role::Admin, "bob", Role::Member, Role::Admin),
            Ok(RoleChange::Set(Role::Admin))
        );
        assert_eq!(
            may_set_role(Kind::Public, Role::Owner, "bob", Role::Admin, Role::Member),
            Ok(RoleChange::Set(Role::Member))
        );
        assert_eq!(
            may_set_role(Kind::Public, Role::Owner, "bob", Role::Member, Role::Owner),
            Ok(RoleChange::TransferOwnership)
        );
        assert!(matches!(
            may_set_role(Kind::Public, Role::Admin, "bob", Role::Member, Role::Owner),
            Err(Refusal::Rank(_))
        ));
        assert!(matches!(
            may_set_role(Kind::Public, Role::Admin, "bob", Role::Admin, Role::Member),
            Err(Refusal::Rank(_))
        ));
        assert!(matches!(
            may_set_role(Kind::Public, Role::Member, "bob", Role::Member, Role::Admin),
            Err(Refusal::Rank(_))
        ));
    }

    #[test]
    fn external_identities_hold_no_role_and_refusals_read_well() {
        let wa = "whatsapp:+5511999990000";
        assert!(matches!(
            may_set_role(Kind::Public, Role::Owner, wa, Role::Member, Role::Admin),
            Err(Refusal::Precondition(_))
        ));
        assert!(matches!(
            may_set_role(Kind::Public, Role::Owner, wa, Role::Member, Role::Owner),
            Err(Refusal::Precondition(_))
        ));
        assert_eq!(
            may_remove(Kind::Public, Role::Admin, Some(Role::Owner)).map_err(|e| e.to_string()),
            Err("An admin cannot remove or ban the owner; only those ranked below you".to_owned())
        );
    }

    #[test]
    fn stored_values_parse_back() {
        for kind in [Kind::Public, Kind::Private, Kind::Direct] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        for role in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse_stored(Some(role.as_str())), role);
        }
        assert_eq!(Role::parse_stored(None), Role::Member);
    }
}
