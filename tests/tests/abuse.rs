//! Abuse limits and the edges an attacker finds, against a real gateway
//! (memory mode: none of this depends on the bus). Raw HTTP/2 clients play
//! the attacker where a gRPC library would hide what goes on the wire: a
//! client that stops reading, and frames written back to back, each in its
//! own DATA frame.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use chat_e2e::client::with_token;
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{ClientFrame, JoinFrame, ListConversationsRequest, SendMessageRequest, ServerEvent};
use prost::Message;
use tonic::Code;

/// A raw HTTP/2 `Connect` stream: what is sent and what comes back, with no
/// gRPC library in between.
struct RawStream {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

async fn raw_connect(cluster: &Cluster, user: &str) -> anyhow::Result<RawStream> {
    let authority = cluster.url(0).trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    // The connection task answers pings and takes in frames whether or not
    // the stream is read, as any HTTP/2 client does.
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/chat.v1.ChatService/Connect"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", cluster.token(user)?))
        .body(())?;
    let (response, send) = client.send_request(request, false)?;
    Ok(RawStream { send, response, connection })
}

/// One gRPC message: flag, length, bytes.
fn grpc_message(frame: &ClientFrame) -> Bytes {
    let body = frame.encode_to_vec();
    let mut buf = BytesMut::with_capacity(5 + body.len());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    buf.put_slice(&body);
    buf.freeze()
}

fn join_frame(request_id: &str, conversation: &str) -> ClientFrame {
    ClientFrame {
        request_id: request_id.into(),
        frame: Some(Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: None })),
    }
}

/// Splits gRPC messages off the front of `buf`.
fn decode_events(buf: &mut BytesMut) -> anyhow::Result<Vec<ServerEvent>> {
    let mut events = Vec::new();
    while buf.len() >= 5 {
        let len = usize::try_from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))?;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        events.push(ServerEvent::decode(buf.split_to(len))?);
    }
    Ok(events)
}

/// A `grpc-message` trailer as text (it is percent-encoded on the wire).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a raw stream ended.
#[derive(Debug)]
enum Ending {
    /// Trailers: the gRPC status code and message.
    Status(i32, String),
    /// The stream or connection failed at the HTTP/2 layer.
    Transport(String),
}

/// Reads a raw stream (releasing flow control as it goes) to its end.
async fn read_to_end(response: h2::client::ResponseFuture) -> anyhow::Result<(Vec<ServerEvent>, Ending)> {
    let response = match response.await {
        Ok(response) => response,
        Err(e) => return Ok((Vec::new(), Ending::Transport(e.to_string()))),
    };
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                events.extend(decode_events(&mut buf)?);
            }
            Err(e) => return Ok((events, Ending::Transport(e.to_string()))),
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => {
            let code = trailers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(-1);
            let message = percent_decode(trailers.get("grpc-message").map(|v| v.as_bytes()).unwrap_or_default());
            Ok((events, Ending::Status(code, message)))
        }
        Ok(None) => Ok((events, Ending::Transport("no trailers".into()))),
        Err(e) => Ok((events, Ending::Transport(e.to_string()))),
    }
}

/// A client that stops reading is cut off once its buffer overflows, as
/// designed; the `Disconnect` and the status then wait behind HTTP/2 flow
/// control that the client never opens. After the stall grace its
/// connection is closed, so it learns at once instead of never.
#[tokio::test]
async fn a_client_that_stops_reading_learns_of_the_cut_off_within_the_grace() -> anyhow::Result<()> {
    let grace = Duration::from_millis(500);
    let cluster = Cluster::memory_with(&[("CHAT_OUTBOUND_BUFFER", "16"), ("CHAT_STALL_GRACE_MS", "500")]).await?;
    let room = cluster.public_room("alice", "stall-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;

    let RawStream { mut send, response, mut connection } = raw_connect(&cluster, "sleepy").await?;
    send.send_data(grpc_message(&join_frame("j", &room)), false)?;
    let response = response.await.context("response headers")?;
    ensure!(response.status() == 200, "{response:?}");
    let mut body = response.into_body();
    // Read up to the join's answer, then never again (nor release window).
    let mut buf = BytesMut::new();
    'joined: while let Some(chunk) = body.data().await {
        buf.extend_from_slice(&chunk?);
        for event in decode_events(&mut buf)? {
            if matches!(event.event, Some(Event::PresenceSnapshot(_))) {
                break 'joined;
            }
        }
    }

    // Enough bytes to fill the HTTP/2 windows and then the outbox.
    let mut unary = ChatServiceClient::new(cluster.channel(0).await?);
    let token = cluster.token("alice")?;
    let body_text = "z".repeat(4000);
    for i in 0..200 {
        let request = SendMessageRequest {
            conversation_id: room.clone(),
            client_message_id: format!("s-{i}"),
            body: body_text.clone(),
        };
        unary.send_message(with_token(request, &token)?).await?;
    }
    let flooded = Instant::now();
    // The connection task ends when the gateway closes the connection.
    let ended = tokio::time::timeout(grace + Duration::from_secs(10), &mut connection).await;
    let took = flooded.elapsed();
    let Ok(outcome) = ended else {
        bail!("the stalled client heard nothing {took:?} after its cut-off (grace {grace:?}):\n{}", cluster.log_tail(0))
    };
    eprintln!("stalled client's connection ended {took:?} after the flood: {outcome:?}");
    ensure!(
        cluster.log_tail(0).contains("did not read the end of its stream; closing its connection"),
        "{}",
        cluster.log_tail(0)
    );
    // The body fails too: the client's next read says the stream is gone.
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.data().await {
                Some(Ok(_)) => continue, // what was already buffered
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    })
    .await
    .context("reading the stalled stream after the close hangs")?;
    ensure!(next.is_some() || body.trailers().await.is_err(), "the stalled stream ended cleanly: {next:?}");
    // Other clients are unaffected.
    alice.send(&room, "after", "still here").await?;
    scenarios::messages(&mut alice, &room, 1).await?;
    Ok(())
}

/// 10,000 join frames written back to back, each in its own DATA frame:
/// the stream ends with `RESOURCE_EXHAUSTED` from the gateway's frame limit
/// (what the README promises), not with HTTP/2's `ENHANCE_YOUR_CALM`.
#[tokio::test]
async fn ten_thousand_frames_back_to_back_end_with_resource_exhausted() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(FRAME_LIMIT).await?;
    frame_flood(&cluster).await
}

/// The same on the emulator, where each join takes storage and bus round
/// trips: frames keep being read (and counted) while joins are handled.
#[tokio::test]
async fn ten_thousand_frames_on_aws_end_with_resource_exhausted() -> anyhow::Result<()> {
    let cluster = Cluster::aws_with(1, FRAME_LIMIT).await?;
    frame_flood(&cluster).await
}

const FRAME_LIMIT: &[(&str, &str)] = &[("CHAT_FRAME_RATE", "100"), ("CHAT_FRAME_BURST", "200")];

async fn frame_flood(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "flood-").await?;
    let RawStream { mut send, response, connection: _connection } = raw_connect(cluster, "mallory").await?;
    // Answers are read while the frames are written, as a client would.
    let reader = tokio::spawn(read_to_end(response));
    let frame = grpc_message(&join_frame("j", &room));
    let mut written = 0;
    for _ in 0..10_000 {
        if send.send_data(frame.clone(), false).is_err() {
            break; // the stream was reset: the gateway is done with it
        }
        written += 1;
    }
    let (events, ending) = tokio::time::timeout(Duration::from_secs(30), reader).await.context("no end")???;
    let snapshots = events.iter().filter(|e| matches!(e.event, Some(Event::PresenceSnapshot(_)))).count();
    eprintln!("wrote {written} frames; {snapshots} joins answered; ended with {ending:?}");
    match ending {
        Ending::Status(code, message) => {
            ensure!(code == Code::ResourceExhausted as i32, "status {code}: {message}");
            ensure!(message.contains("frames per connection rate limit"), "{message}");
        }
        Ending::Transport(e) => bail!("ended at the HTTP/2 layer ({e}), not with RESOURCE_EXHAUSTED"),
    }
    ensure!(snapshots <= 200, "more joins handled than the frame burst: {snapshots}");
    // The gateway is fine, and so is mallory once the burst refills.
    let mut mallory = cluster.connect(0, "mallory").await?;
    mallory.join(&room).await?;
    Ok(())
}

/// Joins over a user's limit get `RESOURCE_EXHAUSTED` error events saying
/// when to retry; the stream goes on.
#[tokio::test]
async fn joins_over_the_user_limit_are_refused_with_a_retry_time() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_JOIN_RATE", "0.01"), ("CHAT_JOIN_BURST", "2")]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let rooms = [
        cluster.public_room("alice", "a-").await?,
        cluster.public_room("alice", "b-").await?,
        cluster.public_room("alice", "c-").await?,
    ];
    alice.join(&rooms[0]).await?;
    alice.join(&rooms[1]).await?;
    alice.frame("third", Frame::Join(JoinFrame { conversation_id: rooms[2].clone(), resume_after_seq: None })).await?;
    let (code, message) = scenarios::error_for(&mut alice, "third").await?;
    ensure!(code == Code::ResourceExhausted, "{code:?} {message}");
    ensure!(
        message.contains("join rate limit of 0.01 per second (burst 2)") && message.contains("retry in"),
        "{message}"
    );
    // Another user is not held back by alice's joins.
    let mut bob = cluster.connect(0, "bob").await?;
    bob.join(&rooms[2]).await?;
    Ok(())
}

/// A user's open streams are limited; one that ends frees its place.
#[tokio::test]
async fn streams_per_user_are_limited() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_MAX_STREAMS_PER_USER", "2")]).await?;
    let first = cluster.connect(0, "alice").await?;
    let _second = cluster.connect(0, "alice").await?;
    let third = cluster.connect(0, "alice").await;
    let refusal = format!("{:?}", third.err().context("a third stream was accepted")?);
    ensure!(refusal.contains("ResourceExhausted") && refusal.contains("2 streams of this user are open"), "{refusal}");
    let _bob = cluster.connect(0, "bob").await?;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.connect(0, "alice").await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = e;
            }
            Err(e) => bail!("the ended stream's place was never freed: {e}"),
        }
    }
}

/// Connections from one source address beyond the limit are answered
/// `RESOURCE_EXHAUSTED` (then closed), not dropped without a word.
#[tokio::test]
async fn connections_per_address_are_limited() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "2")]).await?;
    let token = cluster.token("alice")?;
    let list = |channel| {
        let token = token.clone();
        async move {
            ChatServiceClient::new(channel)
                .list_conversations(with_token(
                    ListConversationsRequest { page_size: 0, cursor: String::new() },
                    &token,
                )?)
                .await
                .map(|_| ())
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        }
    };
    // The readiness check's connection may still be closing: wait for room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (a, b) = loop {
        let (a, b) = (cluster.channel(0).await?, cluster.channel(0).await?);
        if list(a.clone()).await.is_ok() && list(b.clone()).await.is_ok() {
            break (a, b);
        }
        ensure!(Instant::now() < deadline, "two connections were never admitted");
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = list(cluster.channel(0).await?).await.err().context("a third connection was served")?;
    let refused = refused.to_string();
    ensure!(refused.starts_with("ResourceExhausted") && refused.contains("connections from your address"), "{refused}");
    list(a.clone()).await.context("admitted connections go on")?;
    drop((a, b));
    Ok(())
}

/// A process frozen with SIGSTOP until this is dropped (SIGCONT).
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> anyhow::Result<Self> {
        signal(pid, "-STOP")?;
        Ok(Self(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([which, &pid.to_string()]).status()?;
    ensure!(status.success(), "kill {which} {pid}: {status}");
    Ok(())
}

/// While the emulator is frozen, every send is answered `UNAVAILABLE` at
/// its deadline (unary and on the stream), not after the SDK's own
/// timeouts; once it answers again, the retry with the same
/// `client_message_id` goes through.
#[tokio::test]
async fn sends_answer_unavailable_at_their_deadline_while_aws_is_frozen() -> anyhow::Result<()> {
    let deadline = Duration::from_secs(2);
    let cluster = Cluster::aws_with(1, &[("CHAT_SEND_DEADLINE_MS", "2000")]).await?;
    let Some(pid) = cluster.emulator.as_ref().and_then(|e| e.pid()) else {
        eprintln!("skipped: the emulator was not started by this harness, so it cannot be frozen");
        return Ok(());
    };
    let room = cluster.public_room("alice", "frozen-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    cluster.send_unary(0, "alice", &room, "before", "hello").await?.context("send before the freeze")?;

    let frozen = Frozen::new(pid)?;
    let started = Instant::now();
    let unary = cluster.send_unary(0, "alice", &room, "unary-during", "hello").await?;
    let unary_took = started.elapsed();
    let status = unary.err().context("a send succeeded with the emulator frozen")?;
    ensure!(status.code() == Code::Unavailable, "{status:?}");
    ensure!(status.message().contains("retry with the same client_message_id"), "{status:?}");

    let started = Instant::now();
    alice.send(&room, "stream-during", "hello").await?;
    let (code, message) = scenarios::error_for(&mut alice, "stream-during").await?;
    let stream_took = started.elapsed();
    ensure!(code == Code::Unavailable, "{code:?} {message}");
    ensure!(message.contains("retry with the same client_message_id"), "{message}");
    eprintln!("frozen emulator: unary send answered in {unary_took:?}, stream send in {stream_took:?}");
    for took in [unary_took, stream_took] {
        ensure!(
            took >= deadline - Duration::from_millis(100) && took < deadline + Duration::from_millis(1500),
            "answered after {took:?}, the deadline is {deadline:?}"
        );
    }

    drop(frozen);
    let retried = cluster.send_unary(0, "alice", &room, "unary-during", "hello").await?.context("unary retry")?;
    alice.send(&room, "stream-during", "hello").await?;
    let accepted = alice
        .wait_for(|e| match e {
            Event::SendAccepted(a) if a.client_message_id == "stream-during" => Some(a.seq),
            _ => None,
        })
        .await?;
    ensure!(retried.seq > 1 && accepted > 1, "retries got seqs {} and {accepted}", retried.seq);
    Ok(())
}
