//! The same chat suite on the embedded memory mode (one gateway, no AWS),
//! plus the limits that do not depend on the bus.

use chat_e2e::client::with_token;
use chat_e2e::cluster::{Cluster, Mode};
use chat_e2e::scenarios;
use chat_proto::pb::SendMessageRequest;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::disconnect::Reason;
use chat_proto::pb::server_event::Event;

#[tokio::test]
async fn two_hundred_messages_exactly_once_in_order() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Memory, 1).await?;
    scenarios::messages_cross_gateways_in_order(&cluster, 200).await
}

#[tokio::test]
async fn membership_presence_typing_and_isolation() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Memory, 1).await?;
    scenarios::membership_presence_typing_and_isolation(&cluster).await
}

#[tokio::test]
async fn same_client_message_id_twice_is_one_message() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Memory, 1).await?;
    scenarios::idempotent_send(&cluster).await
}

#[tokio::test]
async fn bad_input_gets_precise_statuses() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Memory, 1).await?;
    scenarios::bad_input_gets_precise_statuses(&cluster).await
}

#[tokio::test]
async fn flood_beyond_the_rate_limit_is_refused_per_frame() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_SEND_RATE", "0.01"), ("CHAT_SEND_BURST", "3")]).await?;
    scenarios::flood_is_rate_limited(&cluster).await
}

#[tokio::test]
async fn conversations_per_connection_are_limited() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_MAX_CONVERSATIONS_PER_CONNECTION", "2")]).await?;
    let [r1, r2, r3] = [
        cluster.public_room("alice", "r1-").await?,
        cluster.public_room("alice", "r2-").await?,
        cluster.public_room("alice", "r3-").await?,
    ];
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&r1).await?;
    alice.join(&r2).await?;
    alice.join(&r2).await?; // re-joining a joined conversation is not a new one
    alice
        .frame(
            "third",
            chat_proto::pb::client_frame::Frame::Join(chat_proto::pb::JoinFrame {
                conversation_id: r3.clone(),
                resume_after_seq: None,
            }),
        )
        .await?;
    let (code, message) = scenarios::error_for(&mut alice, "third").await?;
    anyhow::ensure!(code == tonic::Code::ResourceExhausted, "{code:?} {message}");
    alice.leave(&r1).await?;
    alice.join(&r3).await?;
    Ok(())
}

/// A client that stops reading is cut off once its buffer overflows, with a
/// resume hint, and the sender is not slowed down.
#[tokio::test]
async fn slow_consumer_is_disconnected_with_a_resume_hint() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_OUTBOUND_BUFFER", "16")]).await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut sleepy = cluster.connect(0, "sleepy").await?;
    alice.join(&room).await?;
    sleepy.join(&room).await?;
    drop(alice); // membership stays; alice sends with the unary API
    let mut unary = ChatServiceClient::new(cluster.channel(0).await?);
    let token = cluster.token("alice")?;
    // Enough bytes to fill the HTTP/2 windows and then the outbox.
    let body = "z".repeat(4000);
    let total = 600;
    for i in 0..total {
        let request = SendMessageRequest {
            conversation_id: room.clone(),
            client_message_id: format!("s-{i}"),
            body: body.clone(),
        };
        unary.send_message(with_token(request, &token)?).await?;
    }
    let disconnect = sleepy
        .wait_for(|e| match e {
            Event::Disconnect(d) => Some(d.clone()),
            _ => None,
        })
        .await?;
    anyhow::ensure!(disconnect.reason == Reason::SlowConsumer as i32, "{disconnect:?}");
    let last = sleepy
        .received
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let hint = disconnect.resume.iter().find(|r| r.conversation_id == room).map(|r| r.last_seq);
    anyhow::ensure!(hint == Some(last), "resume hint {hint:?} but last received seq {last}");
    anyhow::ensure!((last as usize) < total, "the slow client got everything; nothing was tested");
    let end = sleepy.wait_end().await?;
    anyhow::ensure!(end.code() == tonic::Code::ResourceExhausted, "{end:?}");
    Ok(())
}

/// A client that half-closes its side (as grpcurl does) keeps receiving.
#[tokio::test]
async fn half_closed_client_keeps_receiving() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut listener = cluster.connect(0, "listener").await?;
    listener.join(&room).await?;
    listener.close_send();
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    alice.send(&room, "hi", "are you there").await?;
    let m = scenarios::messages(&mut listener, &room, 1).await?;
    anyhow::ensure!(m[0].body == "are you there");
    Ok(())
}

#[tokio::test]
async fn history_paging_and_authorisation() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    chat_e2e::stored::history_paging_and_authorisation(&cluster).await
}

#[tokio::test]
async fn resume_after_reconnect_has_no_gap_and_no_duplicate() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    chat_e2e::stored::resume_after_reconnect(&cluster).await
}

#[tokio::test]
async fn receipts_flow_live_and_only_forward() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Memory, 1).await?;
    scenarios::receipts_flow_live_and_only_forward(&cluster).await
}
