//! Scenarios over stored messages: history paging, the read APIs'
//! authorisation, read markers, and resume after a reconnect. On the AWS
//! path they need function `persist` running (`Cluster::start_runner`).

use std::time::{Duration, Instant};

use anyhow::ensure;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::get_history_request::Direction;
use chat_proto::pb::{
    GetHistoryRequest, GetHistoryResponse, GetMessageRequest, ListConversationsRequest, MarkReadRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::client::with_token;
use crate::cluster::Cluster;
use crate::{DEADLINE, scenarios};

#[derive(Debug)]
pub struct Reader {
    client: ChatServiceClient<Channel>,
    token: String,
}

impl Reader {
    pub async fn new(cluster: &Cluster, gateway: usize, user: &str) -> anyhow::Result<Self> {
        Ok(Self { client: ChatServiceClient::new(cluster.channel(gateway).await?), token: cluster.token(user)? })
    }

    pub async fn history(&mut self, request: GetHistoryRequest) -> Result<GetHistoryResponse, tonic::Status> {
        let request = with_token(request, &self.token).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(self.client.get_history(request).await?.into_inner())
    }

    /// Seqs of a history page.
    pub async fn seqs(&mut self, request: GetHistoryRequest) -> anyhow::Result<(Vec<u64>, GetHistoryResponse)> {
        let page = self.history(request).await?;
        Ok((page.messages.iter().map(|m| m.seq).collect(), page))
    }

    /// Waits until the conversation has `count` stored messages.
    pub async fn wait_stored(&mut self, conversation: &str, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let page = self
                .history(GetHistoryRequest {
                    conversation_id: conversation.into(),
                    page_size: 200,
                    direction: Direction::Forward as i32,
                    ..Default::default()
                })
                .await?;
            if page.messages.len() >= count {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "only {} of {count} messages stored", page.messages.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn code<T: std::fmt::Debug>(r: &Result<T, tonic::Status>) -> Option<Code> {
    r.as_ref().err().map(|s| s.code())
}

/// Paging in both directions, boundaries, page limits, bad cursors, read
/// markers and unread counts, and non-members refused.
pub async fn history_paging_and_authorisation(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "hist-").await?;
    let empty = cluster.public_room("alice", "empty-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    alice.join(&empty).await?;
    for i in 1..=25 {
        alice.send(&room, &format!("h-{i}"), &format!("history {i}")).await?;
    }
    let mut acks = scenarios::accepted(&mut alice, 25).await?;
    // Answers may arrive in any order; index them by seq.
    acks.sort_by_key(|a| a.seq);
    ensure!(
        acks.iter().map(|a| a.seq).eq(1..=25),
        "accepted seqs {:?}",
        acks.iter().map(|a| a.seq).collect::<Vec<_>>()
    );
    let mut reader = Reader::new(cluster, 1, "alice").await?;
    reader.wait_stored(&room, 25).await?;
    let req = |direction: Direction, page_size: u32, from_seq: u64, cursor: &str| GetHistoryRequest {
        conversation_id: room.clone(),
        page_size,
        direction: direction as i32,
        from_seq,
        cursor: cursor.into(),
    };

    // Newest first, in pages of 10.
    let (p1, r1) = reader.seqs(req(Direction::Backward, 10, 0, "")).await?;
    ensure!(p1 == (16..=25).rev().collect::<Vec<_>>(), "page 1 {p1:?}");
    let (p2, r2) = reader.seqs(req(Direction::Backward, 10, 0, &r1.next_cursor)).await?;
    ensure!(p2 == (6..=15).rev().collect::<Vec<_>>(), "page 2 {p2:?}");
    let (p3, r3) = reader.seqs(req(Direction::Backward, 10, 0, &r2.next_cursor)).await?;
    ensure!(p3 == (1..=5).rev().collect::<Vec<_>>() && r3.next_cursor.is_empty(), "last page {p3:?} {r3:?}");
    // And back the other way from page 2.
    let (back, _) = reader.seqs(req(Direction::Forward, 10, 0, &r2.prev_cursor)).await?;
    ensure!(back == (16..=25).collect::<Vec<_>>(), "prev of page 2 {back:?}");
    // Oldest first after a seq; the default page size.
    let (after20, r) = reader.seqs(req(Direction::Forward, 0, 20, "")).await?;
    ensure!(after20 == vec![21, 22, 23, 24, 25] && r.next_cursor.is_empty(), "after 20 {after20:?}");
    let (exact, r) = reader.seqs(req(Direction::Forward, 25, 0, "")).await?;
    ensure!(exact.len() == 25 && r.next_cursor.is_empty(), "a page that ends exactly at the end has no next");
    let page = reader.history(req(Direction::Forward, 1, 0, "")).await?;
    let first = &page.messages[0];
    ensure!(first.body == "history 1" && first.sender == "alice" && first.message_id == acks[0].message_id);

    // A retried send (same client_message_id, other gateway, unary) returns
    // the first identity and adds nothing to history.
    let retry = cluster.send_unary(1, "alice", &room, "h-5", "history 5").await??;
    ensure!(retry.duplicate && retry.seq == 5 && retry.message_id == acks[4].message_id, "{retry:?}");
    let (all, _) = reader.seqs(req(Direction::Forward, 200, 0, "")).await?;
    ensure!(all == (1..=25).collect::<Vec<_>>(), "history after a retried send {all:?}");

    // Empty conversation.
    let nothing = reader.history(GetHistoryRequest { conversation_id: empty.clone(), ..Default::default() }).await?;
    ensure!(nothing.messages.is_empty() && nothing.next_cursor.is_empty() && nothing.prev_cursor.is_empty());

    // Limits and bad cursors.
    ensure!(code(&reader.history(req(Direction::Backward, 201, 0, "")).await) == Some(Code::InvalidArgument));
    for bad in ["garbage", "h1:b:x:room", &r1.next_cursor.replace(&room, &empty)] {
        ensure!(
            code(&reader.history(req(Direction::Backward, 10, 0, bad)).await) == Some(Code::InvalidArgument),
            "{bad}"
        );
    }
    let bad_conversation =
        reader.history(GetHistoryRequest { conversation_id: "bad id".into(), ..Default::default() }).await;
    ensure!(code(&bad_conversation) == Some(Code::InvalidArgument));

    // GetMessage.
    let mut client = ChatServiceClient::new(cluster.channel(0).await?);
    let token = cluster.token("alice")?;
    let get = |message_id: &str| GetMessageRequest { conversation_id: room.clone(), message_id: message_id.into() };
    let found = client.get_message(with_token(get(&acks[4].message_id), &token)?).await?.into_inner();
    ensure!(found.message.is_some_and(|m| m.seq == acks[4].seq && m.body == "history 5"));
    let missing = client.get_message(with_token(get("01NOTAMESSAGE"), &token)?).await;
    ensure!(code(&missing) == Some(Code::NotFound), "{missing:?}");
    // A malformed id is refused by the same rule as every other id.
    for bad in ["", "has space", "slash/x", &"x".repeat(129)] {
        let refused = client.get_message(with_token(get(bad), &token)?).await;
        ensure!(code(&refused) == Some(Code::InvalidArgument), "message_id {bad:?}: {refused:?}");
    }

    // Read markers and unread counts.
    let mark = |seq| MarkReadRequest { conversation_id: room.clone(), seq };
    let marked = client.mark_read(with_token(mark(20), &token)?).await?.into_inner();
    ensure!(marked.last_read_seq == 20);
    let marked = client.mark_read(with_token(mark(10), &token)?).await?.into_inner();
    ensure!(marked.last_read_seq == 20, "the marker moved back");
    let list = client.list_conversations(with_token(ListConversationsRequest::default(), &token)?).await?.into_inner();
    let summary = list.conversations.iter().find(|c| c.conversation_id == room);
    ensure!(
        summary.is_some_and(|c| c.unread == 5
            && c.last_read_seq == 20
            && c.last_message.as_ref().is_some_and(|m| m.seq == 25)),
        "summary {summary:?}"
    );
    let empty_summary = list.conversations.iter().find(|c| c.conversation_id == empty);
    ensure!(empty_summary.is_some_and(|c| c.unread == 0 && c.last_message.is_none()), "{empty_summary:?}");
    // Pages of one.
    let one = ListConversationsRequest { page_size: 1, cursor: String::new() };
    let first_page = client.list_conversations(with_token(one, &token)?).await?.into_inner();
    ensure!(first_page.conversations.len() == 1 && !first_page.next_cursor.is_empty());
    let next = ListConversationsRequest { page_size: 1, cursor: first_page.next_cursor };
    let second_page = client.list_conversations(with_token(next, &token)?).await?.into_inner();
    ensure!(
        second_page.conversations.len() == 1
            && second_page.conversations[0].conversation_id != first_page.conversations[0].conversation_id
    );
    let too_big = client
        .list_conversations(with_token(ListConversationsRequest { page_size: 101, cursor: String::new() }, &token)?)
        .await;
    ensure!(code(&too_big) == Some(Code::InvalidArgument));
    let bad = client
        .list_conversations(with_token(ListConversationsRequest { page_size: 1, cursor: "nope".into() }, &token)?)
        .await;
    ensure!(code(&bad) == Some(Code::InvalidArgument));

    // Non-members read nothing.
    let mallory = cluster.token("mallory")?;
    let mut snoop = Reader { client: ChatServiceClient::new(cluster.channel(1).await?), token: mallory.clone() };
    ensure!(code(&snoop.history(req(Direction::Backward, 10, 0, "")).await) == Some(Code::PermissionDenied));
    let denied = client.get_message(with_token(get(&acks[0].message_id), &mallory)?).await;
    ensure!(code(&denied) == Some(Code::PermissionDenied), "{denied:?}");
    let denied = client.mark_read(with_token(mark(1), &mallory)?).await;
    ensure!(code(&denied) == Some(Code::PermissionDenied), "{denied:?}");
    let theirs = client.list_conversations(with_token(ListConversationsRequest::default(), &mallory)?).await?;
    ensure!(theirs.into_inner().conversations.is_empty());
    Ok(())
}

/// bob drops off, misses messages, and reconnects (to the other gateway)
/// with his last seq: he gets exactly what he missed, then live ones.
pub async fn resume_after_reconnect(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "resume-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    for i in 1..=10 {
        alice.send(&room, &format!("r-{i}"), &format!("before {i}")).await?;
    }
    let seen = scenarios::messages(&mut bob, &room, 10).await?;
    let last = seen.last().map(|m| m.seq).unwrap_or(0);
    drop(bob);
    for i in 11..=30 {
        alice.send(&room, &format!("r-{i}"), &format!("missed {i}")).await?;
    }
    scenarios::accepted(&mut alice, 30).await?;

    let mut bob = cluster.connect(0, "bob").await?;
    bob.join_resume(&room, last).await?;
    for i in 31..=35 {
        alice.send(&room, &format!("r-{i}"), &format!("live {i}")).await?;
    }
    let got = scenarios::messages(&mut bob, &room, 25).await?;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    ensure!(seqs == (11..=35).collect::<Vec<_>>(), "resumed seqs {seqs:?}");
    ensure!(got[0].body == "missed 11" && got[24].body == "live 35");
    scenarios::flush(&mut alice, &mut bob, &room).await?;
    ensure!(bob.messages_of(&room).len() == 26, "a duplicate arrived: {}", bob.messages_of(&room).len());

    // A resume point beyond the conversation is refused clearly.
    let mut carol = cluster.connect(1, "carol").await?;
    carol.join_resume(&room, 10_000).await?;
    let (code, message) = scenarios::error_for(&mut carol, &format!("join-{room}")).await?;
    ensure!(code == Code::InvalidArgument && message.contains("beyond"), "{code:?} {message}");
    Ok(())
}
