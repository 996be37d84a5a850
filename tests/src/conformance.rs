//! The rules every [`Store`] follows, as one check that runs against any
//! implementation: the memory store and the DynamoDB store (against the
//! emulator) in `tests/tests/store.rs`.

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

/// Runs every rule; `prefix` keeps conversations apart from other runs on a
/// shared backend. Returns what was wrong.
pub async fn check(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");

    // seq: per conversation, dense, starting at 1.
    let a1 = store.accept_send(send(&a, "u", "", "x", "m1")).await.map_err(failed)?;
    let a2 = store.accept_send(send(&a, "u", "", "x", "m2")).await.map_err(failed)?;
    let b1 = store.accept_send(send(&b, "u", "", "x", "m3")).await.map_err(failed)?;
    check!((a1.seq, a2.seq, b1.seq) == (1, 2, 1), "seqs {} {} {}", a1.seq, a2.seq, b1.seq);
    check!(a1.message_id == "m1" && !a1.duplicate, "new send kept its id: {a1:?}");

    // Idempotency: the first identity wins; no seq is used by a retry.
    let first = store.accept_send(send(&a, "u", "c1", "hi", "m4")).await.map_err(failed)?;
    let again = store.accept_send(send(&a, "u", "c1", "hi", "m5")).await.map_err(failed)?;
    check!(
        again.message_id == "m4" && again.seq == first.seq && again.duplicate && !first.duplicate,
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
    check!(store.leave(&a, "u").await.map_err(failed)?, "leave reports membership");
    check!(!store.leave(&a, "u").await.map_err(failed)?, "second leave reports none");
    check!(!store.is_member(&a, "u").await.map_err(failed)?, "not a member after leave");
    check!(store.join(&format!("{prefix}-new"), "u").await.map_err(failed)?.last_seq == 0, "new conversation at 0");

    // Read markers only move forward, for members only.
    let c = format!("{prefix}-c");
    store.join(&c, "reader").await.map_err(failed)?;
    check!(store.mark_read(&c, "reader", 5, 1).await.map_err(failed)? == 5, "marker to 5");
    check!(store.mark_read(&c, "reader", 3, 2).await.map_err(failed)? == 5, "marker never moves back");
    let stranger = store.mark_read(&c, "stranger", 1, 3).await;
    check!(stranger == Err(StoreError::NotMember), "non-member marker gave {stranger:?}");

    // A user's conversations, in id order, in pages.
    let user = format!("{prefix}-lister");
    for suffix in ["x", "y", "z"] {
        store.join(&format!("{prefix}-list-{suffix}"), &user).await.map_err(failed)?;
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
    check_receipts(store, prefix).await?;
    check_external_members(store, prefix).await
}

fn receipt(user: &str, status: ReceiptStatus, up_to_seq: u64) -> ReceiptEvent {
    ReceiptEvent {
        user_id: user.to_owned(),
        status,
        up_to_seq,
        message_id: String::new(),
        reason: if status == ReceiptStatus::Failed { "undeliverable".into() } else { String::new() },
        via: String::new(),
    }
}

/// Watermarks move forward only, log when each step happened, and give
/// every recipient the right status.
async fn check_receipts(store: &dyn Store, prefix: &str) -> Result<(), String> {
    use ReceiptStatus::{Delivered, Failed, Read};
    let r = format!("{prefix}-receipts");
    for user in ["sender", "bob", "carol", "dave"] {
        store.join(&r, user).await.map_err(failed)?;
    }
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
    store.join(&x, "alice").await.map_err(failed)?;
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
    check!(store.leave(&x, wa).await.map_err(failed)?, "external member leaves");
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
