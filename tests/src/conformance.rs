//! The rules every [`Store`] follows, as one check that runs against any
//! implementation: the memory store and the DynamoDB store (against the
//! emulator) in `tests/tests/store.rs`.

use chat_core::conversation::{self, Kind, NewConversation, Role};
use chat_core::envelope::{ReceiptEvent, ReceiptStatus};
use chat_core::store::{DeliveryStatus, PresenceKey, SendRequest, Store, StoreError, StoredMessage};

fn send<'a>(conversation_id: &'a str, sender: &'a str, cmid: &'a str, body: &'a str, id: &str) -> SendRequest<'a> {
    SendRequest {
        conversation_id,
        sender,
        client_message_id: cmid,
        body,
        new_message_id: id.to_owned(),
        now_ms: 1_700_000_000_000,
        origin: "test",
    }
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn failed(e: StoreError) -> String {
    format!("store call failed: {e}")
}

/// A checked creation plan: `creator` and `members` in a new conversation.
fn plan(id: &str, kind: Kind, creator: &str, members: &[&str]) -> Result<NewConversation, String> {
    let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
    conversation::plan(id.to_owned(), kind, "", creator, &members, 1_700_000_000_000)
        .map_err(|e| format!("planning {id}: {e}"))
}

/// Creates a conversation that must be new.
async fn create(store: &dyn Store, id: &str, kind: Kind, creator: &str, members: &[&str]) -> Result<(), String> {
    let created = store.create(&plan(id, kind, creator, members)?).await.map_err(failed)?;
    check!(created.created && created.conversation.conversation_id == id, "creating {id}: {created:?}");
    Ok(())
}

/// Runs every rule; `prefix` keeps conversations apart from other runs on a
/// shared backend. Returns what was wrong.
pub async fn check(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    // Joins admit only to existing conversations; these two are public.
    create(store, &a, Kind::Public, "creator", &[]).await?;
    create(store, &b, Kind::Public, "creator", &[]).await?;

    // seq: per conversation, dense, starting at 1.
    let a1 = store.accept_send(send(&a, "u", "", "x", "m1")).await.map_err(failed)?;
    let a2 = store.accept_send(send(&a, "u", "", "x", "m2")).await.map_err(failed)?;
    let b1 = store.accept_send(send(&b, "u", "", "x", "m3")).await.map_err(failed)?;
    check!((a1.seq, a2.seq, b1.seq) == (1, 2, 1), "seqs {} {} {}", a1.seq, a2.seq, b1.seq);
    check!(a1.message_id == "m1.1" && !a1.duplicate, "a new send's id names its seq: {a1:?}");

    // Idempotency: the first identity wins; no seq is used by a retry.
    let first = store.accept_send(send(&a, "u", "c1", "hi", "m4")).await.map_err(failed)?;
    let again = store.accept_send(send(&a, "u", "c1", "hi", "m5")).await.map_err(failed)?;
    check!(
        again.message_id == "m4.3" && again.seq == first.seq && again.duplicate && !first.duplicate,
        "retry gave {again:?} after {first:?}"
    );
    check!(
        again.accepted_at_ms == first.accepted_at_ms,
        "retry changed accepted_at_ms: {} vs {}",
        again.accepted_at_ms,
        first.accepted_at_ms
    );
    let other_sender = store.accept_send(send(&a, "v", "c1", "hi", "m6")).await.map_err(failed)?;
    check!(!other_sender.duplicate && other_sender.seq == first.seq + 1, "keys are per sender: {other_sender:?}");
    let reused = store.accept_send(send(&a, "u", "c1", "changed", "m7")).await;
    check!(reused == Err(StoreError::ClientMessageIdReused), "reused key with a new body gave {reused:?}");

    // Membership.
    let joined = store.join(&a, "u").await.map_err(failed)?;
    check!(joined.newly_member && joined.last_seq == other_sender.seq, "first join: {joined:?}");
    let rejoined = store.join(&a, "u").await.map_err(failed)?;
    check!(!rejoined.newly_member, "second join is not new");
    check!(store.join(&b, "w").await.map_err(failed)?.last_seq == 1, "last_seq of b");
    check!(store.is_member(&a, "u").await.map_err(failed)?, "member after join");
    check!(!store.is_member(&a, "w").await.map_err(failed)?, "membership is per conversation");
    let before = store.join(&a, "u").await.map_err(failed)?.members_version;
    let left = store.leave(&a, "u").await.map_err(failed)?;
    check!(left.was_member && left.members_version > before, "leave reports membership and moves the version on");
    check!(!store.leave(&a, "u").await.map_err(failed)?.was_member, "second leave reports none");
    check!(!store.is_member(&a, "u").await.map_err(failed)?, "not a member after leave");
    let back = store.join(&a, "u").await.map_err(failed)?;
    check!(back.newly_member && back.members_version >= left.members_version, "a join after a leave reads its version");
    check!(store.leave(&a, "u").await.map_err(failed)?.was_member, "left again");
    let new = format!("{prefix}-new");
    let absent = store.join(&new, "u").await;
    check!(absent == Err(StoreError::NotAdmitted), "joining no conversation gave {absent:?}");
    check!(store.conversation(&new).await.map_err(failed)?.is_none(), "a refused join created {new}");
    create(store, &new, Kind::Public, "creator", &[]).await?;
    check!(store.join(&new, "u").await.map_err(failed)?.last_seq == 0, "new conversation at 0");

    // Read markers only move forward, for members only.
    let c = format!("{prefix}-c");
    create(store, &c, Kind::Private, "reader", &[]).await?;
    check!(store.mark_read(&c, "reader", 5, 1).await.map_err(failed)? == 5, "marker to 5");
    check!(store.mark_read(&c, "reader", 3, 2).await.map_err(failed)? == 5, "marker never moves back");
    let stranger = store.mark_read(&c, "stranger", 1, 3).await;
    check!(stranger == Err(StoreError::NotMember), "non-member marker gave {stranger:?}");

    // A user's conversations, in id order, in pages.
    let user = format!("{prefix}-lister");
    for suffix in ["x", "y", "z"] {
        create(store, &format!("{prefix}-list-{suffix}"), Kind::Private, &user, &[]).await?;
    }
    store.mark_read(&format!("{prefix}-list-y"), &user, 2, 4).await.map_err(failed)?;
    let (first, more) = store.conversations(&user, 2, None).await.map_err(failed)?;
    let ids: Vec<&str> = first.iter().map(|c| c.conversation_id.as_str()).collect();
    check!(ids == [format!("{prefix}-list-x"), format!("{prefix}-list-y")] && more, "first page {ids:?} more={more}");
    check!(first[1].last_read_seq == 2, "read marker listed: {:?}", first[1]);
    let (rest, more) = store.conversations(&user, 2, Some(&first[1].conversation_id)).await.map_err(failed)?;
    let ids: Vec<&str> = rest.iter().map(|c| c.conversation_id.as_str()).collect();
    check!(ids == [format!("{prefix}-list-z")] && !more, "second page {ids:?} more={more}");
    let (none, more) = store.conversations(&format!("{prefix}-nobody"), 10, None).await.map_err(failed)?;
    check!(none.is_empty() && !more, "a user with no conversations");

    // Presence: a user is online while any of their streams is.
    let now = 1_000_000;
    let key = |user: &str, session: &str| PresenceKey {
        conversation_id: a.clone(),
        user_id: user.to_owned(),
        session_id: session.to_owned(),
    };
    check!(store.presence_online(&key("u", "s1"), now, now + 60_000).await.map_err(failed)?, "first stream online");
    check!(!store.presence_online(&key("u", "s2"), now, now + 60_000).await.map_err(failed)?, "second stream");
    check!(store.presence_online(&key("w", "s3"), now, now + 60_000).await.map_err(failed)?, "other user");
    let online = store.online_users(&a, now).await.map_err(failed)?;
    check!(online == vec!["u".to_string(), "w".to_string()], "online {online:?}");
    check!(!store.presence_offline(&key("u", "s1"), now).await.map_err(failed)?, "u still has s2");
    check!(store.presence_offline(&key("u", "s2"), now).await.map_err(failed)?, "u's last stream");
    let online = store.online_users(&a, now).await.map_err(failed)?;
    check!(online == vec!["w".to_string()], "online after u left {online:?}");
    // A refresh racing a removal does not bring the stream back.
    store.presence_refresh(&[key("u", "s2")], now + 60_000).await.map_err(failed)?;
    let online = store.online_users(&a, now).await.map_err(failed)?;
    check!(online == vec!["w".to_string()], "refresh resurrected a removed stream: {online:?}");
    // Expired leases are not online; a refresh extends them.
    let later = now + 120_000;
    check!(store.online_users(&a, later).await.map_err(failed)?.is_empty(), "expired lease still online");
    store.presence_refresh(&[key("w", "s3")], later + 60_000).await.map_err(failed)?;
    check!(store.online_users(&a, later).await.map_err(failed)? == vec!["w".to_string()], "refreshed lease");
    check!(
        store.presence_online(&key("u", "s4"), later, later + 60_000).await.map_err(failed)?,
        "expired sessions do not count"
    );
    // A removed member's streams all go at once, wherever they are; only
    // that user's.
    check!(!store.presence_online(&key("u", "s5"), later, later + 60_000).await.map_err(failed)?, "u's second stream");
    check!(store.presence_remove_user(&a, "u", later).await.map_err(failed)?, "u was online");
    let online = store.online_users(&a, later).await.map_err(failed)?;
    check!(online == vec!["w".to_string()], "online after u was removed {online:?}");
    check!(!store.presence_remove_user(&a, "u", later).await.map_err(failed)?, "u is gone already");
    check_receipts(store, prefix).await?;
    check_external_members(store, prefix).await?;
    check_conversations(store, prefix).await?;
    check_bans(store, prefix).await?;
    check_roles(store, prefix).await?;
    check_direct(store, prefix).await?;
    check_settle(store, prefix).await
}

/// An accepted send is recorded under its seq before it is published; a seq
/// settled as void is never given a message, and sends (retries included)
/// number past it.
async fn check_settle(store: &dyn Store, prefix: &str) -> Result<(), String> {
    use chat_core::store::{Direction, Settled};
    let v = format!("{prefix}-voids");
    create(store, &v, Kind::Public, "creator", &[]).await?;
    // Accepted, then recorded before it would be published.
    let accept = |cmid: &'static str, body: &'static str, id: &'static str| {
        let v = v.clone();
        async move {
            let accepted = store.accept_send(send(&v, "u", cmid, body, id)).await?;
            store.record_send(send(&v, "u", cmid, body, id), accepted).await
        }
    };
    let first = accept("", "recorded", "v1").await.map_err(failed)?;
    let recorded = store.settle(&v, first.seq).await.map_err(failed)?;
    check!(
        matches!(&recorded, Settled::Message(m) if m.message_id == "v1.1" && m.body == "recorded" && m.sender == "u"),
        "an accepted send is recorded: {recorded:?}"
    );
    // Readers found seq 2 missing before anyone recorded it.
    check!(store.settle(&v, 2).await.map_err(failed)? == Settled::Void, "nothing recorded under 2: void");
    check!(store.settle(&v, 2).await.map_err(failed)? == Settled::Void, "settled once, the same for every reader");
    let second = accept("", "after the void", "v2").await.map_err(failed)?;
    check!(second.seq == 3, "a void seq is not given out again: got {}", second.seq);
    check!(store.settle(&v, 4).await.map_err(failed)? == Settled::Void, "4 voided ahead");
    let keyed = accept("k1", "keyed", "v3").await.map_err(failed)?;
    check!(keyed.seq == 5 && !keyed.duplicate, "an idempotent send numbers past a void: {keyed:?}");
    let retry = accept("k1", "keyed", "v4").await.map_err(failed)?;
    check!(
        retry.duplicate && retry.seq == 5 && retry.message_id == keyed.message_id,
        "its retry answers with the seq it was recorded under: {retry:?}"
    );
    let history = store
        .history(&v, chat_core::store::HistoryQuery { direction: Direction::Forward, from_seq: None, limit: 10 })
        .await
        .map_err(failed)?;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    check!(seqs == vec![1, 3, 5], "history holds the messages and no voids: {seqs:?}");
    // A send whose seq readers voided before it recorded moves to a new
    // seq, keeping its id, which still finds it.
    // (A store that records at accept has nothing to move.)
    let slow = store.accept_send(send(&v, "u", "", "stalled", "v5")).await.map_err(failed)?;
    let moved = match store.settle(&v, slow.seq).await.map_err(failed)? {
        Settled::Message(m) if m.message_id == slow.message_id => slow.clone(),
        Settled::Message(m) => return Err(format!("another message under {}: {m:?}", slow.seq)),
        Settled::Void => {
            let moved = store.record_send(send(&v, "u", "", "stalled", "v5"), slow.clone()).await.map_err(failed)?;
            check!(moved.message_id == slow.message_id && moved.seq > slow.seq, "renumbered {slow:?} → {moved:?}");
            moved
        }
    };
    let found = store.get_message(&v, &slow.message_id).await.map_err(failed)?;
    check!(found.is_some_and(|m| m.seq == moved.seq && m.body == "stalled"), "found by its id after the move");
    let unknown = chat_core::store::message_id("v6", moved.seq);
    check!(store.get_message(&v, &unknown).await.map_err(failed)?.is_none(), "an id naming another's seq");
    check!(store.get_message(&v, "v5").await.map_err(failed)?.is_none(), "an id naming no seq");
    // A listing shows the latest message, passing over a void above it.
    check!(store.settle(&v, moved.seq + 1).await.map_err(failed)? == Settled::Void, "voided ahead");
    let (listed, _) = store.conversations("creator", 1000, None).await.map_err(failed)?;
    let latest = listed.iter().find(|c| c.conversation_id == v).and_then(|c| c.last_message.as_ref());
    check!(latest.is_some_and(|m| m.seq == moved.seq && m.body == "stalled"), "the latest message listed: {latest:?}");
    Ok(())
}

fn receipt(user: &str, status: ReceiptStatus, up_to_seq: u64) -> ReceiptEvent {
    ReceiptEvent {
        user_id: user.to_owned(),
        status,
        up_to_seq,
        message_id: String::new(),
        reason: if status == ReceiptStatus::Failed { "undeliverable".into() } else { String::new() },
        via: String::new(),
        recorded: false,
    }
}

/// Watermarks move forward only, log when each step happened, and give
/// every recipient the right status.
async fn check_receipts(store: &dyn Store, prefix: &str) -> Result<(), String> {
    use ReceiptStatus::{Delivered, Failed, Read};
    let r = format!("{prefix}-receipts");
    create(store, &r, Kind::Private, "sender", &["bob", "carol", "dave"]).await?;
    let record = |user: &'static str, status, seq, at| {
        let r = r.clone();
        async move { store.record_receipt(&r, &receipt(user, status, seq), at).await.map_err(failed) }
    };
    check!(record("bob", Delivered, 3, 100).await?, "first delivered moves");
    check!(!record("bob", Delivered, 2, 150).await?, "an older ack moves nothing");
    check!(!record("bob", Delivered, 3, 160).await?, "a repeated ack moves nothing");
    check!(record("bob", Delivered, 6, 200).await?, "delivered to 6");
    check!(record("bob", Read, 4, 300).await?, "read to 4");
    check!(!record("stranger", Delivered, 9, 300).await?, "a non-member's receipt moves nothing");
    check!(record("carol", Read, 2, 400).await?, "read without an ack first");
    check!(record("dave", Failed, 2, 500).await?, "failure recorded");
    check!(!record("dave", Failed, 2, 600).await?, "the first failure stands");
    let bob = store.member(&r, "bob").await.map_err(failed)?.ok_or("bob is a member")?;
    check!((bob.delivered_seq, bob.read_seq) == (6, 4), "bob's watermarks {bob:?}");
    let when = store.step_time(&r, "bob", Delivered, 2).await.map_err(failed)?;
    check!(when == Some(100), "seq 2 delivered when the ack of 3 came, not {when:?}");
    let when = store.step_time(&r, "bob", Delivered, 4).await.map_err(failed)?;
    check!(when == Some(200), "seq 4 delivered with the ack of 6, not {when:?}");
    check!(store.step_time(&r, "bob", Delivered, 7).await.map_err(failed)?.is_none(), "seq 7 not delivered");
    check!(store.failures(&r, 2).await.map_err(failed)?.len() == 1, "one failure of seq 2");
    check!(store.failures(&r, 3).await.map_err(failed)?.is_empty(), "no failure of seq 3");

    let message = |seq| StoredMessage {
        conversation_id: r.clone(),
        seq,
        message_id: format!("m{seq}"),
        sender: "sender".into(),
        body: "x".into(),
        sent_at_ms: 1,
        client_message_id: String::new(),
        members_version: 0,
    };
    let statuses = store.message_status(&message(2)).await.map_err(failed)?;
    let of = |user: &str| statuses.iter().find(|s| s.user_id == user).cloned();
    check!(statuses.len() == 3 && of("sender").is_none(), "recipients are the members but the sender: {statuses:?}");
    let bob = of("bob").ok_or("bob listed")?;
    check!(
        bob.status == DeliveryStatus::Read && bob.delivered_at_ms == Some(100) && bob.read_at_ms == Some(300),
        "bob on seq 2: {bob:?}"
    );
    let carol = of("carol").ok_or("carol listed")?;
    check!(
        carol.status == DeliveryStatus::Read && carol.delivered_at_ms == Some(400),
        "read implies delivered at the read: {carol:?}"
    );
    let dave = of("dave").ok_or("dave listed")?;
    check!(
        dave.status == DeliveryStatus::Failed && dave.failed_at_ms == Some(500) && dave.reason == "undeliverable",
        "dave on seq 2: {dave:?}"
    );
    let statuses = store.message_status(&message(5)).await.map_err(failed)?;
    let status = |user: &str| statuses.iter().find(|s| s.user_id == user).map(|s| s.status);
    check!(status("bob") == Some(DeliveryStatus::Delivered), "bob on seq 5: {statuses:?}");
    check!(status("carol") == Some(DeliveryStatus::Sent), "carol on seq 5: {statuses:?}");
    check!(status("dave") == Some(DeliveryStatus::Sent), "dave on seq 5: {statuses:?}");
    Ok(())
}

/// External members are named as a send's recipients, bind inbound
/// messages to their newest conversation, and leave cleanly; links for
/// fallback are per user.
async fn check_external_members(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let x = format!("{prefix}-ext-x");
    let y = format!("{prefix}-ext-y");
    let wa = "whatsapp:+5511999990000";
    create(store, &x, Kind::Private, "alice", &[]).await?;
    create(store, &y, Kind::Private, "bob", &[]).await?;
    check!(store.add_member(&x, wa, 10).await.map_err(failed)?, "external member added");
    check!(!store.add_member(&x, wa, 11).await.map_err(failed)?, "added once");
    check!(store.is_member(&x, wa).await.map_err(failed)?, "external member is a member");
    let sent = store.accept_send(send(&x, "alice", "", "hi", "e1")).await.map_err(failed)?;
    check!(sent.external_recipients == vec![wa.to_string()], "recipients {:?}", sent.external_recipients);
    let reply = store.accept_send(send(&x, wa, "wamid.1", "hello", "e2")).await.map_err(failed)?;
    check!(reply.external_recipients.is_empty(), "the external sender is not its own recipient");
    let again = store.accept_send(send(&x, wa, "wamid.1", "hello", "e3")).await.map_err(failed)?;
    check!(again.duplicate && again.seq == reply.seq, "inbound retries are idempotent: {again:?}");
    check!(store.bound_conversation(wa).await.map_err(failed)? == Some(x.clone()), "bound to x");
    store.add_member(&y, wa, 20).await.map_err(failed)?;
    check!(store.bound_conversation(wa).await.map_err(failed)? == Some(y.clone()), "bound to the newest, y");
    check!(store.bound_conversation("telegram:1").await.map_err(failed)?.is_none(), "unknown identity");
    check!(store.leave(&x, wa).await.map_err(failed)?.was_member, "external member leaves");
    let after = store.accept_send(send(&x, "alice", "", "bye", "e4")).await.map_err(failed)?;
    check!(after.external_recipients.is_empty(), "no recipients after leaving: {:?}", after.external_recipients);

    let users = vec![format!("{prefix}-linked"), format!("{prefix}-unlinked")];
    store.link_channel(&users[0], Some("telegram:42")).await.map_err(failed)?;
    let links = store.linked_channels(&users).await.map_err(failed)?;
    check!(links.len() == 1 && links.get(&users[0]).map(String::as_str) == Some("telegram:42"), "links {links:?}");
    store.link_channel(&users[0], None).await.map_err(failed)?;
    check!(store.linked_channels(&users).await.map_err(failed)?.is_empty(), "link removed");
    Ok(())
}

/// Creation: all members at once with their roles; an existing id is left
/// as it is; private conversations admit members only, and nothing joins
/// a conversation that does not exist.
async fn check_conversations(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let p = format!("{prefix}-private");
    create(store, &p, Kind::Private, "owner", &["m1", "whatsapp:+5511999990001"]).await?;
    let settings = store.conversation(&p).await.map_err(failed)?.ok_or("the created conversation reads back")?;
    check!(
        settings.kind == Kind::Private && settings.created_by == "owner" && settings.created_at_ms == 1_700_000_000_000,
        "settings {settings:?}"
    );
    check!(store.role(&p, "owner").await.map_err(failed)? == Some(Role::Owner), "the creator owns it");
    check!(store.role(&p, "m1").await.map_err(failed)? == Some(Role::Member), "m1 is a plain member");
    let sent = store.accept_send(send(&p, "owner", "", "hi", "p1")).await.map_err(failed)?;
    check!(
        sent.external_recipients == vec!["whatsapp:+5511999990001".to_string()],
        "an external identity created in is a recipient: {:?}",
        sent.external_recipients
    );
    let members = store.members(&p).await.map_err(failed)?;
    let roles: Vec<(&str, Role)> = members.iter().map(|m| (m.user_id.as_str(), m.role)).collect();
    check!(
        roles.len() == 3 && roles.contains(&("owner", Role::Owner)) && roles.contains(&("m1", Role::Member)),
        "members with roles: {roles:?}"
    );
    let owner = store.member(&p, "owner").await.map_err(failed)?.ok_or("the owner is a member")?;
    check!(owner.role == Role::Owner, "member() carries the role: {owner:?}");

    // The same id again: nothing changes, the existing one is returned.
    let again = store.create(&plan(&p, Kind::Public, "intruder", &["friend"])?).await.map_err(failed)?;
    check!(
        !again.created && again.conversation.kind == Kind::Private && again.conversation.created_by == "owner",
        "creating a taken id gave {again:?}"
    );
    check!(store.role(&p, "intruder").await.map_err(failed)?.is_none(), "a refused creation added its creator");
    check!(store.role(&p, "friend").await.map_err(failed)?.is_none(), "a refused creation added its members");

    // Private: members rejoin as they are, nobody else gets in.
    let stranger = store.join(&p, "stranger").await;
    check!(stranger == Err(StoreError::NotAdmitted), "a stranger joining a private conversation: {stranger:?}");
    check!(store.role(&p, "stranger").await.map_err(failed)?.is_none(), "a refused join left a member");
    let m1 = store.join(&p, "m1").await.map_err(failed)?;
    check!(!m1.newly_member && m1.role == Role::Member && m1.last_seq == 1, "a member's join: {m1:?}");
    let owner = store.join(&p, "owner").await.map_err(failed)?;
    check!(owner.role == Role::Owner, "the owner joins as the owner: {owner:?}");

    // Public: anyone joins, as a plain member.
    let q = format!("{prefix}-public");
    create(store, &q, Kind::Public, "owner", &[]).await?;
    let walker = store.join(&q, "walker").await.map_err(failed)?;
    check!(walker.newly_member && walker.role == Role::Member, "joining a public conversation: {walker:?}");
    check!(store.conversation(&format!("{prefix}-nowhere")).await.map_err(failed)?.is_none(), "no such conversation");
    Ok(())
}

/// A ban is kept before the membership goes, keeps the user from joining
/// and from being added, and is lifted once.
async fn check_bans(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let q = format!("{prefix}-bans");
    create(store, &q, Kind::Public, "owner", &[]).await?;
    store.join(&q, "troll").await.map_err(failed)?;
    let before = store.join(&q, "owner").await.map_err(failed)?.members_version;
    let removal = store.remove_member(&q, "troll", true).await.map_err(failed)?;
    check!(removal.was_member, "a member was removed");
    check!(removal.members_version > before, "a removal moves the membership version on: {removal:?} after {before}");
    let accepted =
        store.accept_send(send(&q, "owner", "after-removal", "after", "m-after-removal")).await.map_err(failed)?;
    check!(
        accepted.members_version == removal.members_version,
        "a send after a removal carries its version: {accepted:?}"
    );
    let joined = store.join(&q, "owner").await.map_err(failed)?;
    check!(joined.members_version == removal.members_version, "a join reads the version: {joined:?}");
    check!(store.role(&q, "troll").await.map_err(failed)?.is_none(), "not a member after removal");
    check!(store.join(&q, "troll").await == Err(StoreError::NotAdmitted), "a banned user joined");
    check!(store.add_member(&q, "troll", 5).await == Err(StoreError::Banned), "a banned user was added");
    check!(store.role(&q, "troll").await.map_err(failed)?.is_none(), "a refused add left a member");
    check!(
        !store.remove_member(&q, "troll", true).await.map_err(failed)?.was_member,
        "banning a non-member removes nobody"
    );
    check!(store.unban(&q, "troll").await.map_err(failed)?, "the ban is lifted");
    check!(!store.unban(&q, "troll").await.map_err(failed)?, "a second unban finds no ban");
    check!(store.join(&q, "troll").await.map_err(failed)?.newly_member, "unbanned, they join again");

    // A ban of someone who never was a member keeps them out all the same.
    check!(
        !store.remove_member(&q, "future", true).await.map_err(failed)?.was_member,
        "a pre-emptive ban removes nobody"
    );
    check!(store.join(&q, "future").await == Err(StoreError::NotAdmitted), "a pre-emptively banned user joined");
    // Removal without a ban: a public conversation takes them back.
    check!(store.remove_member(&q, "troll", false).await.map_err(failed)?.was_member, "removed without a ban");
    check!(store.join(&q, "troll").await.map_err(failed)?.newly_member, "rejoined after a plain removal");
    check!(!store.unban(&q, "troll").await.map_err(failed)?, "a plain removal bans nobody");
    // A banned external identity is neither added nor named as a recipient.
    let phone = "whatsapp:+5511999990042";
    check!(!store.remove_member(&q, phone, true).await.map_err(failed)?.was_member, "pre-emptive ban of a number");
    check!(store.add_member(&q, phone, 5).await == Err(StoreError::Banned), "a banned number was added");
    let accepted = store.accept_send(send(&q, "owner", "to-banned", "hi", "m-to-banned")).await.map_err(failed)?;
    check!(accepted.external_recipients.is_empty(), "a banned number is a recipient: {accepted:?}");
    check!(store.unban(&q, phone).await.map_err(failed)?, "the number is unbanned");
    check!(store.add_member(&q, phone, 6).await.map_err(failed)?, "the unbanned number is added");
    let accepted = store.accept_send(send(&q, "owner", "to-number", "hi", "m-to-number")).await.map_err(failed)?;
    check!(accepted.external_recipients == vec![phone.to_owned()], "the added number is a recipient: {accepted:?}");
    check!(!store.add_member(&q, phone, 7).await.map_err(failed)?, "a second add is not new");
    // Bans are per conversation.
    let other = format!("{prefix}-bans-other");
    create(store, &other, Kind::Public, "owner", &[]).await?;
    check!(store.join(&other, "future").await.map_err(failed)?.newly_member, "a ban elsewhere does not apply");
    Ok(())
}

/// Roles are set on members only; ownership moves whole, at once.
async fn check_roles(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let q = format!("{prefix}-roles");
    create(store, &q, Kind::Private, "owner", &["helper", "heir"]).await?;
    check!(store.set_role(&q, "helper", Role::Admin).await.map_err(failed)?, "a member made admin");
    check!(store.role(&q, "helper").await.map_err(failed)? == Some(Role::Admin), "helper is admin");
    check!(!store.set_role(&q, "nobody", Role::Admin).await.map_err(failed)?, "a role for a non-member");
    check!(store.role(&q, "nobody").await.map_err(failed)?.is_none(), "setting a role made a member");
    check!(store.join(&q, "helper").await.map_err(failed)?.role == Role::Admin, "a join keeps the role");

    store.transfer_ownership(&q, "owner", "heir").await.map_err(failed)?;
    check!(store.role(&q, "heir").await.map_err(failed)? == Some(Role::Owner), "heir owns it");
    check!(store.role(&q, "owner").await.map_err(failed)? == Some(Role::Admin), "the former owner is an admin");
    let stale = store.transfer_ownership(&q, "owner", "helper").await;
    check!(stale == Err(StoreError::NotMember), "a former owner transferred ownership: {stale:?}");
    check!(store.role(&q, "helper").await.map_err(failed)? == Some(Role::Admin), "a refused transfer moved nothing");
    let to_stranger = store.transfer_ownership(&q, "heir", "stranger").await;
    check!(to_stranger == Err(StoreError::NotMember), "ownership to a non-member: {to_stranger:?}");
    check!(
        store.role(&q, "heir").await.map_err(failed)? == Some(Role::Owner)
            && store.role(&q, "stranger").await.map_err(failed)?.is_none(),
        "a refused transfer changes nobody"
    );
    let owners = store.members(&q).await.map_err(failed)?.into_iter().filter(|m| m.role == Role::Owner).count();
    check!(owners == 1, "one owner, not {owners}");
    Ok(())
}

/// A direct conversation: one per pair, both plain members, created again
/// by either user it is the same one, with both its users in it.
async fn check_direct(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let (ann, ben) = (format!("{prefix}-ann"), format!("{prefix}-ben"));
    let d = conversation::direct_id(&ann, &ben);
    create(store, &d, Kind::Direct, &ann, &[&ben]).await?;
    for user in [&ann, &ben] {
        check!(store.role(&d, user).await.map_err(failed)? == Some(Role::Member), "{user} in the direct conversation");
    }
    check!(store.leave(&d, &ann).await.map_err(failed)?.was_member, "ann leaves");
    let again = store.create(&plan(&d, Kind::Direct, &ben, &[&ann])?).await.map_err(failed)?;
    check!(
        !again.created && again.conversation.kind == Kind::Direct && again.conversation.created_by == ann,
        "the pair's conversation again: {again:?}"
    );
    check!(store.role(&d, &ann).await.map_err(failed)? == Some(Role::Member), "creating it again brings ann back");
    check!(store.join(&d, "cat").await == Err(StoreError::NotAdmitted), "a third user joined a direct conversation");
    Ok(())
}
