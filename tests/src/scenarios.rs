//! Chat scenarios written once and run on both the AWS path (gateways as
//! processes on the emulator) and the embedded memory mode. Gateway indexes
//! name different gateways on AWS; memory mode maps them all to its one.

use std::collections::HashSet;

use anyhow::{Context, ensure};
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::{Message, SendAccepted, SendMessageRequest, server_event::Event};
use tonic::Code;

use crate::client::{TestClient, summarize, with_token};
use crate::cluster::Cluster;
use crate::unique;

/// Reads `count` messages of `conversation` from `client`.
pub async fn messages(client: &mut TestClient, conversation: &str, count: usize) -> anyhow::Result<Vec<Message>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let m = client
            .wait_for(|e| match e {
                Event::Message(m) if m.conversation_id == conversation => Some(m.clone()),
                _ => None,
            })
            .await
            .with_context(|| format!("{} had {} of {count} messages", client.user, out.len()))?;
        out.push(m);
    }
    Ok(out)
}

pub async fn accepted(client: &mut TestClient, count: usize) -> anyhow::Result<Vec<SendAccepted>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let a = client
            .wait_for(|e| match e {
                Event::SendAccepted(a) => Some(Ok(a.clone())),
                Event::Error(err) => Some(Err(anyhow::anyhow!("send failed: {} {}", err.code, err.message))),
                _ => None,
            })
            .await??;
        out.push(a);
    }
    Ok(out)
}

/// The error event answering `request_id`.
pub async fn error_for(client: &mut TestClient, request_id: &str) -> anyhow::Result<(Code, String)> {
    client
        .wait_for(|e| match e {
            Event::Error(err) if err.request_id == request_id => Some((Code::from_i32(err.code), err.message.clone())),
            _ => None,
        })
        .await
}

/// Sends a sentinel and waits for it: everything published before it by the
/// same sender has been dispatched by then.
pub async fn flush(sender: &mut TestClient, receiver: &mut TestClient, conversation: &str) -> anyhow::Result<u64> {
    let marker = unique("flush-");
    sender.send(conversation, &marker, &marker).await?;
    receiver
        .wait_for(|e| match e {
            Event::Message(m) if m.client_message_id == marker => Some(m.seq),
            _ => None,
        })
        .await
}

/// alice on gateway 0 sends `n` messages back to back to bob on gateway 1:
/// every one arrives exactly once, in `seq` order, and alice gets a
/// send-accepted for each.
pub async fn messages_cross_gateways_in_order(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    for i in 0..n {
        alice.send(&room, &format!("m-{i}"), &format!("message {i}")).await?;
    }
    let acks = accepted(&mut alice, n).await?;
    let got = messages(&mut bob, &room, n).await?;

    let mut acked_seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    acked_seqs.sort_unstable();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    ensure!(seqs == acked_seqs, "bob's seqs {seqs:?} differ from the accepted {acked_seqs:?}");
    ensure!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs not contiguous: {seqs:?}");
    for (i, m) in got.iter().enumerate() {
        ensure!(m.body == format!("message {i}"), "message {i} out of order: {:?}", m.body);
        ensure!(m.sender == "alice" && !m.message_id.is_empty() && m.sent_at_ms > 0, "bad message {m:?}");
    }
    // Nothing arrives twice: after a sentinel, bob has exactly n + 1.
    flush(&mut alice, &mut bob, &room).await?;
    let ids: Vec<&str> = bob
        .received
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.message_id.as_str()),
            _ => None,
        })
        .collect();
    let unique_ids: HashSet<&str> = ids.iter().copied().collect();
    ensure!(
        ids.len() == n + 1 && unique_ids.len() == n + 1,
        "bob got {} messages, {} distinct",
        ids.len(),
        unique_ids.len()
    );
    Ok(())
}

/// Join, presence, typing and leave are seen across gateways; a user in
/// another conversation sees none of it.
pub async fn membership_presence_typing_and_isolation(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "room-").await?;
    let other = cluster.public_room("carol", "other-").await?;
    let mut carol = cluster.connect(0, "carol").await?;
    carol.join(&other).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let first = alice.join(&room).await?;
    ensure!(first.online == vec!["alice".to_string()], "alice alone online: {:?}", first.online);

    let mut bob = cluster.connect(1, "bob").await?;
    let snapshot = bob.join(&room).await?;
    ensure!(snapshot.online.contains(&"alice".to_string()), "bob's snapshot lacks alice: {snapshot:?}");
    alice
        .wait_for(|e| {
            matches!(e, Event::MemberJoined(j) if j.user_id == "bob" && j.conversation_id == room).then_some(())
        })
        .await?;
    alice.wait_for(|e| matches!(e, Event::PresenceChanged(p) if p.user_id == "bob" && p.online).then_some(())).await?;

    bob.typing(&room, true).await?;
    alice.wait_for(|e| matches!(e, Event::Typing(t) if t.user_id == "bob" && t.typing).then_some(())).await?;

    alice.send(&room, "hello", "hello bob").await?;
    let m = messages(&mut bob, &room, 1).await?;
    ensure!(m[0].body == "hello bob");

    bob.leave(&room).await?;
    bob.wait_for(|e| matches!(e, Event::MemberLeft(l) if l.user_id == "bob").then_some(())).await?;
    alice.wait_for(|e| matches!(e, Event::PresenceChanged(p) if p.user_id == "bob" && !p.online).then_some(())).await?;
    alice.wait_for(|e| matches!(e, Event::MemberLeft(l) if l.user_id == "bob").then_some(())).await?;

    // A disconnect (not a leave) takes a user offline but keeps membership.
    let mut dave = cluster.connect(1, "dave").await?;
    dave.join(&room).await?;
    alice.wait_for(|e| matches!(e, Event::PresenceChanged(p) if p.user_id == "dave" && p.online).then_some(())).await?;
    drop(dave);
    alice
        .wait_for(|e| matches!(e, Event::PresenceChanged(p) if p.user_id == "dave" && !p.online).then_some(()))
        .await?;

    // Leaving on one device leaves on all: erin's other stream (on the other
    // gateway) is told and can no longer send there.
    let mut erin_laptop = cluster.connect(0, "erin").await?;
    let mut erin_phone = cluster.connect(1, "erin").await?;
    erin_laptop.join(&room).await?;
    erin_phone.join(&room).await?;
    erin_laptop.leave(&room).await?;
    erin_phone.wait_for(|e| matches!(e, Event::MemberLeft(l) if l.user_id == "erin").then_some(())).await?;
    erin_phone.send(&room, "after-leave", "still here?").await?;
    let (code, message) = error_for(&mut erin_phone, "after-leave").await?;
    ensure!(code == Code::FailedPrecondition, "send after leaving elsewhere: {code:?} {message}");

    // carol's conversation heard nothing of room's events.
    let mut carol2 = cluster.connect(1, "carol2").await?;
    carol2.join(&other).await?;
    flush(&mut carol2, &mut carol, &other).await?;
    let leaked: Vec<_> = carol.received.iter().filter(|e| format!("{e:?}").contains(&room)).collect();
    ensure!(leaked.is_empty(), "carol received events of another conversation: {:?}", summarize(&carol.received));
    Ok(())
}

/// The same `client_message_id` sent twice (on the stream, then unary on the
/// other gateway) yields one message.
pub async fn idempotent_send(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    alice.send(&room, "same-id", "only once").await?;
    alice.send(&room, "same-id", "only once").await?;
    let acks = accepted(&mut alice, 2).await?;
    ensure!(acks[0].message_id == acks[1].message_id && acks[0].seq == acks[1].seq, "two identities: {acks:?}");
    // Answers may come in either order (publishing overlaps); one is the
    // original, one the duplicate.
    ensure!(acks[0].duplicate != acks[1].duplicate, "duplicate flags wrong: {acks:?}");

    let reply = cluster.send_unary(1, "alice", &room, "same-id", "only once").await??;
    ensure!(
        reply.message_id == acks[0].message_id && reply.seq == acks[0].seq && reply.duplicate,
        "unary retry: {reply:?}"
    );

    // Reusing the key for other content is refused.
    alice.send(&room, "same-id", "different body").await?;
    let (code, message) = error_for(&mut alice, "same-id").await?;
    ensure!(code == Code::AlreadyExists, "reused key gave {code:?}: {message}");

    flush(&mut alice, &mut bob, &room).await?;
    let copies =
        bob.received.iter().filter(|e| matches!(e, Event::Message(m) if m.client_message_id == "same-id")).count();
    ensure!(copies == 1, "bob received {copies} copies");
    Ok(())
}

/// Every bad input gets its precise status, and the stream survives errors
/// that concern one frame.
pub async fn bad_input_gets_precise_statuses(cluster: &Cluster) -> anyhow::Result<()> {
    use chat_proto::pb::{ClientFrame, JoinFrame, SendFrame, client_frame::Frame};
    let room = cluster.public_room("alice", "room-").await?;

    // Authentication.
    for token in [None, Some("garbage".to_string()), Some(bad_secret_token()?)] {
        let mut client = ChatServiceClient::new(cluster.channel(0).await?);
        let (tx, rx) = tokio::sync::mpsc::channel::<ClientFrame>(1);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(token) = &token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        }
        let status = match client.connect(request).await {
            Err(status) => status,
            Ok(mut stream) => match stream.get_mut().message().await {
                Err(status) => status,
                Ok(other) => anyhow::bail!("unauthenticated stream got {other:?}"),
            },
        };
        drop(tx);
        ensure!(status.code() == Code::Unauthenticated, "token {token:?} gave {status:?}");
        ensure!(!status.message().is_empty(), "status without a message");
        let unary = client
            .send_message(match &token {
                Some(t) => with_token(SendMessageRequest::default(), t)?,
                None => tonic::Request::new(SendMessageRequest::default()),
            })
            .await;
        ensure!(
            unary.as_ref().err().map(|s| s.code()) == Some(Code::Unauthenticated),
            "unary with {token:?}: {unary:?}"
        );
    }

    let mut alice = cluster.connect(0, "alice").await?;
    // Frame-level errors: each answered, the stream goes on.
    alice.send(&room, "before-join", "hi").await?;
    ensure!(error_for(&mut alice, "before-join").await?.0 == Code::FailedPrecondition);
    alice
        .frame("join-empty", Frame::Join(JoinFrame { conversation_id: String::new(), resume_after_seq: None }))
        .await?;
    ensure!(error_for(&mut alice, "join-empty").await?.0 == Code::InvalidArgument);
    alice
        .frame(
            "join-bad",
            Frame::Join(JoinFrame { conversation_id: "no spaces allowed".into(), resume_after_seq: None }),
        )
        .await?;
    ensure!(error_for(&mut alice, "join-bad").await?.0 == Code::InvalidArgument);
    alice.send_raw(ClientFrame { request_id: "empty-frame".into(), frame: None }).await?;
    ensure!(error_for(&mut alice, "empty-frame").await?.0 == Code::InvalidArgument);
    alice.join(&room).await?;
    alice.send(&room, "too-big", &"x".repeat(5000)).await?;
    let (code, message) = error_for(&mut alice, "too-big").await?;
    ensure!(code == Code::ResourceExhausted && message.contains("4096"), "oversized body: {code:?} {message}");
    alice.send(&room, "blank", "   ").await?;
    ensure!(error_for(&mut alice, "blank").await?.0 == Code::InvalidArgument);
    alice
        .frame(
            "empty-conv",
            Frame::Send(SendFrame { conversation_id: String::new(), client_message_id: "c".into(), body: "b".into() }),
        )
        .await?;
    ensure!(error_for(&mut alice, "empty-conv").await?.0 == Code::InvalidArgument);
    alice.send(&room, "bad id with spaces", "b").await?;
    ensure!(error_for(&mut alice, "bad id with spaces").await?.0 == Code::InvalidArgument);
    // Still alive: a valid send is accepted.
    alice.send(&room, "valid", "still here").await?;
    accepted(&mut alice, 1).await?;

    // Unary: membership and validation.
    let denied = cluster.send_unary(1, "mallory", &room, "", "let me in").await?;
    ensure!(denied.as_ref().err().map(|s| s.code()) == Some(Code::PermissionDenied), "non-member: {denied:?}");
    let empty = cluster.send_unary(1, "alice", &room, "", "").await?;
    ensure!(empty.as_ref().err().map(|s| s.code()) == Some(Code::InvalidArgument), "empty body: {empty:?}");

    // A frame over the gRPC size limit ends that stream with a status, and
    // the gateway serves others.
    let mut big = cluster.connect(0, "big").await?;
    big.join(&room).await?;
    big.send(&room, "huge", &"y".repeat(200 * 1024)).await?;
    let status = big.wait_end().await?;
    ensure!(status.code() == Code::ResourceExhausted, "oversized frame ended the stream with {status:?}");
    alice.send(&room, "after-big", "fine").await?;
    accepted(&mut alice, 1).await?;
    Ok(())
}

fn bad_secret_token() -> anyhow::Result<String> {
    Ok(chat_proto::token::mint(
        b"some-other-secret-entirely",
        "alice",
        chat_proto::token::DEFAULT_ISSUER,
        chat_proto::token::DEFAULT_AUDIENCE,
        std::time::Duration::from_secs(60),
    )?)
}

/// A flood beyond the per-user rate gets `RESOURCE_EXHAUSTED` per frame and
/// the stream survives. The cluster must run with a send burst of 3.
pub async fn flood_is_rate_limited(cluster: &Cluster) -> anyhow::Result<()> {
    // Created by someone else: creating takes a token from the creator's
    // bucket, and alice's burst is what is measured.
    let room = cluster.public_room("host", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    for i in 0..10 {
        alice.send(&room, &format!("f-{i}"), "flood").await?;
    }
    let mut ok = 0;
    let mut limited = 0;
    while ok + limited < 10 {
        match alice
            .wait_for(|e| match e {
                Event::SendAccepted(_) => Some(Code::Ok),
                Event::Error(err) => Some(Code::from_i32(err.code)),
                _ => None,
            })
            .await?
        {
            Code::Ok => ok += 1,
            Code::ResourceExhausted => limited += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    ensure!((3..10).contains(&ok) && limited > 0, "accepted {ok}, limited {limited}");
    let msg = alice
        .received
        .iter()
        .find_map(|e| match e {
            Event::Error(err) => Some(err.message.clone()),
            _ => None,
        })
        .unwrap_or_default();
    ensure!(msg.contains("rate limit"), "message does not say why: {msg}");
    let reply = cluster.send_unary(0, "alice", &room, "", "more").await?;
    ensure!(reply.as_ref().err().map(|s| s.code()) == Some(Code::ResourceExhausted), "unary flood: {reply:?}");
    Ok(())
}

/// Receipts from acks and reads reach the sender live, only move forward,
/// are validated, and are what `GetMessageStatus` reports. On AWS the
/// cluster needs a `persist` runner (it records statuses).
pub async fn receipts_flow_live_and_only_forward(cluster: &Cluster) -> anyhow::Result<()> {
    use chat_proto::pb::MessageStatus;
    let room = cluster.public_room("alice", "receipts-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    let mut carol = cluster.connect(1, "carol").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    for i in 1..=3 {
        alice.send(&room, &format!("r-{i}"), &format!("receipt me {i}")).await?;
    }
    let sent = accepted(&mut alice, 3).await?;
    let first = sent.iter().find(|a| a.seq == 1).context("seq 1 accepted")?.message_id.clone();
    let third = sent.iter().find(|a| a.seq == 3).context("seq 3 accepted")?.message_id.clone();
    messages(&mut bob, &room, 3).await?;

    bob.ack(&room, 3).await?;
    let delivered = alice.wait_receipt("bob", MessageStatus::Delivered, 3).await?;
    ensure!(delivered.up_to_seq == 3 && delivered.at_ms > 0, "delivered receipt {delivered:?}");
    bob.read(&room, 2).await?;
    alice.wait_receipt("bob", MessageStatus::Read, 2).await?;
    // Bob's other streams and the other members hear it too (read sync).
    carol.wait_receipt("bob", MessageStatus::Read, 2).await?;

    // Repeats and acks past what the stream knows do nothing / are refused.
    bob.ack(&room, 2).await?;
    bob.frame(
        "too-far",
        chat_proto::pb::client_frame::Frame::Ack(chat_proto::pb::AckFrame { conversation_id: room.clone(), seq: 99 }),
    )
    .await?;
    let (code, message) = error_for(&mut bob, "too-far").await?;
    ensure!(code == Code::InvalidArgument && message.contains("1..=3"), "ack past the end: {code:?} {message}");
    bob.frame(
        "unjoined",
        chat_proto::pb::client_frame::Frame::Read(chat_proto::pb::ReadFrame {
            conversation_id: unique("elsewhere-"),
            seq: 1,
        }),
    )
    .await?;
    let (code, _) = error_for(&mut bob, "unjoined").await?;
    ensure!(code == Code::FailedPrecondition, "read of an unjoined conversation: {code:?}");

    // A sentinel message: every receipt published before it has arrived.
    flush(&mut alice, &mut bob, &room).await?;
    let bobs: Vec<(i32, u64)> =
        alice.receipts().iter().filter(|r| r.user_id == "bob").map(|r| (r.status, r.up_to_seq)).collect();
    ensure!(
        bobs == vec![(MessageStatus::Delivered as i32, 3), (MessageStatus::Read as i32, 2)],
        "bob's receipts as alice saw them: {bobs:?}"
    );

    let status = cluster
        .wait_message_status("alice", &room, &first, |s| {
            s.recipients.iter().any(|r| r.user_id == "bob" && r.status == MessageStatus::Read as i32)
        })
        .await?;
    let of = |user: &str| status.recipients.iter().find(|r| r.user_id == user).cloned();
    let bob_status = of("bob").context("bob listed")?;
    ensure!(
        bob_status.delivered_at_ms > 0 && bob_status.read_at_ms >= bob_status.delivered_at_ms,
        "bob's timestamps: {bob_status:?}"
    );
    let carol_status = of("carol").context("carol listed")?;
    ensure!(carol_status.status == MessageStatus::Sent as i32, "carol never acked: {carol_status:?}");
    ensure!(of("alice").is_none(), "the sender is not a recipient: {status:?}");

    // Only members may ask; unknown messages are NOT_FOUND.
    let stranger = cluster.message_status(0, "mallory", &room, &first).await?;
    ensure!(stranger.as_ref().err().map(tonic::Status::code) == Some(Code::PermissionDenied), "{stranger:?}");
    let missing = cluster.message_status(0, "alice", &room, "01J00000000000000000000000").await?;
    ensure!(missing.as_ref().err().map(tonic::Status::code) == Some(Code::NotFound), "{missing:?}");
    let bad = cluster.message_status(0, "alice", &room, "").await?;
    ensure!(bad.as_ref().err().map(tonic::Status::code) == Some(Code::InvalidArgument), "{bad:?}");

    // AddMember: admins (alice created the room: its owner) only,
    // well-formed ids only; external identities never connect.
    let code = |r: Result<bool, tonic::Status>| r.err().map(|s| s.code());
    ensure!(code(cluster.add_member(0, "alice", &room, "whatsapp:12345").await?) == Some(Code::InvalidArgument));
    ensure!(code(cluster.add_member(0, "alice", &room, "").await?) == Some(Code::InvalidArgument));
    ensure!(code(cluster.add_member(0, "alice", &room, "has space").await?) == Some(Code::InvalidArgument));
    ensure!(code(cluster.add_member(0, "mallory", &room, "eve").await?) == Some(Code::PermissionDenied));
    let plain = cluster.add_member(1, "bob", &room, "eve").await?;
    ensure!(
        plain.as_ref().err().is_some_and(|s| s.code() == Code::PermissionDenied && s.message().contains("admins")),
        "a plain member added someone: {plain:?}"
    );
    ensure!(matches!(cluster.add_member(0, "alice", &room, "erin").await?, Ok(true)), "alice adds erin");
    let impostor = cluster.connect(0, "telegram:123456").await;
    ensure!(
        impostor.as_ref().err().is_some_and(|e| e.to_string().contains("Unauthenticated")),
        "an external identity connected: {impostor:?}"
    );

    // Unary MarkRead past the conversation's end is refused.
    let mut unary = ChatServiceClient::new(cluster.channel(0).await?);
    let request = chat_proto::pb::MarkReadRequest { conversation_id: room.clone(), seq: 1_000_000 };
    let beyond = unary.mark_read(with_token(request, &cluster.token("bob")?)?).await;
    ensure!(beyond.as_ref().err().map(tonic::Status::code) == Some(Code::InvalidArgument), "{beyond:?}");

    // A later join sees everyone's position in its snapshot (once `persist`
    // has recorded bob's DELIVERED 3).
    cluster
        .wait_message_status("alice", &room, &third, |s| {
            s.recipients.iter().any(|r| r.user_id == "bob" && r.status == MessageStatus::Delivered as i32)
        })
        .await?;
    let mut dave = cluster.connect(0, "dave").await?;
    let snapshot = dave.join(&room).await?;
    let bob_state = snapshot.receipts.iter().find(|r| r.user_id == "bob").context("bob in the snapshot")?;
    ensure!((bob_state.delivered_seq, bob_state.read_seq) == (3, 2), "snapshot receipts {:?}", snapshot.receipts);
    Ok(())
}
