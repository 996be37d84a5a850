//! The browser's API, below the browser: `OpenSession` + `SendFrames` behave
//! as `Connect` does (over native gRPC here), bad session calls get precise
//! statuses, and the gateway answers gRPC-Web over HTTP/1.1 on its one port
//! with CORS only for the origins it was given.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chat_e2e::DEADLINE;
use chat_e2e::client::with_token;
use chat_e2e::cluster::Cluster;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{
    ClientFrame, EchoRequest, EchoResponse, JoinFrame, OpenSessionRequest, SendFrame, SendFramesRequest, ServerEvent,
};
use prost::Message;
use tonic::{Code, Streaming};

const ORIGIN: &str = "http://app.example.test:8080";

fn frame(request_id: &str, frame: Frame) -> ClientFrame {
    ClientFrame { request_id: request_id.to_owned(), frame: Some(frame) }
}

fn join(conversation: &str) -> Frame {
    Frame::Join(JoinFrame { conversation_id: conversation.to_owned(), resume_after_seq: None })
}

fn send(conversation: &str, client_message_id: &str, body: &str) -> Frame {
    Frame::Send(SendFrame {
        conversation_id: conversation.to_owned(),
        client_message_id: client_message_id.to_owned(),
        body: body.to_owned(),
    })
}

/// The next event of a session stream that `pick` wants (bounded).
async fn next<T>(events: &mut Streaming<ServerEvent>, mut pick: impl FnMut(Event) -> Option<T>) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tokio::time::timeout(left, events.message()).await.context("no event in time")??;
        match event {
            Some(ServerEvent { event: Some(event) }) => {
                if let Some(found) = pick(event) {
                    return Ok(found);
                }
            }
            Some(ServerEvent { event: None }) => bail!("an empty event"),
            None => bail!("the session stream ended"),
        }
    }
}

#[tokio::test]
async fn a_session_of_open_session_and_send_frames_chats_like_connect() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    let room = cluster.public_room("alice", "web").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    bob.join(&room).await?;

    let token = cluster.token("alice")?;
    let mut client = ChatServiceClient::new(cluster.channel(0).await?);
    let mut events = client.open_session(with_token(OpenSessionRequest {}, &token)?).await?.into_inner();
    let opened = match events.message().await? {
        Some(ServerEvent { event: Some(Event::SessionOpened(opened)) }) => opened,
        other => bail!("the first event is not SessionOpened: {other:?}"),
    };
    ensure!(!opened.session_id.is_empty() && !opened.gateway_id.is_empty(), "{opened:?}");
    ensure!(opened.expires_at_ms > chat_core::clock::now_ms(), "expiry in the past: {opened:?}");

    // Join and two sends in one call, handled in order.
    let frames =
        vec![frame("j", join(&room)), frame("s1", send(&room, "c1", "one")), frame("s2", send(&room, "c2", "two"))];
    let request = SendFramesRequest { session_id: opened.session_id.clone(), frames };
    client.send_frames(with_token(request, &token)?).await?;
    next(&mut events, |e| matches!(e, Event::PresenceSnapshot(_)).then_some(())).await?;
    let mut accepted = Vec::new();
    while accepted.len() < 2 {
        accepted.push(next(&mut events, |e| if let Event::SendAccepted(a) = e { Some(a) } else { None }).await?);
    }
    // Ordered in the order written; answered in any order (as on Connect).
    let mut seqs: Vec<(String, u64)> = accepted.iter().map(|a| (a.request_id.clone(), a.seq)).collect();
    seqs.sort();
    ensure!(seqs == [("s1".to_owned(), 1), ("s2".to_owned(), 2)], "{seqs:?}");
    for body in ["one", "two"] {
        bob.wait_for(|e| match e {
            Event::Message(m) if m.body == body && m.sender == "alice" => Some(()),
            _ => None,
        })
        .await?;
    }

    // A frame's error comes back on the stream, as on `Connect`.
    let request = SendFramesRequest {
        session_id: opened.session_id.clone(),
        frames: vec![frame("bad", send(&room, "c3", &"x".repeat(5000)))],
    };
    client.send_frames(with_token(request, &token)?).await?;
    let err = next(&mut events, |e| if let Event::Error(err) = e { Some(err) } else { None }).await?;
    ensure!(err.request_id == "bad" && err.code == Code::ResourceExhausted as i32, "{err:?}");

    // Another user naming alice's session finds nothing.
    let request = SendFramesRequest { session_id: opened.session_id.clone(), frames: vec![frame("j", join(&room))] };
    let status = client.send_frames(with_token(request, &cluster.token("mallory")?)?).await.expect_err("not hers");
    ensure!(status.code() == Code::NotFound, "{status:?}");
    let request = SendFramesRequest { session_id: opened.session_id.clone(), frames: vec![] };
    let status = client.send_frames(with_token(request, &token)?).await.expect_err("empty");
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    let request = SendFramesRequest { session_id: "no-such-session".into(), frames: vec![frame("j", join(&room))] };
    let status = client.send_frames(with_token(request, &token)?).await.expect_err("unknown");
    ensure!(status.code() == Code::NotFound && status.message().contains("open a new session"), "{status:?}");

    // Ending the stream ends the session: alice goes offline, and the id
    // names nothing any more.
    drop(events);
    bob.wait_for(|e| match e {
        Event::PresenceChanged(p) if p.user_id == "alice" && !p.online => Some(()),
        _ => None,
    })
    .await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request =
            SendFramesRequest { session_id: opened.session_id.clone(), frames: vec![frame("j", join(&room))] };
        match client.send_frames(with_token(request, &token)?).await {
            Err(status) if status.code() == Code::NotFound => break,
            other => ensure!(tokio::time::Instant::now() < deadline, "still open: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A gRPC-Web call's body: one length-prefixed message.
fn grpc_web_body(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

/// A gRPC-Web answer: its messages and the trailers frame's text.
fn grpc_web_frames(mut body: &[u8]) -> anyhow::Result<(Vec<Vec<u8>>, String)> {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while !body.is_empty() {
        ensure!(body.len() >= 5, "a truncated frame");
        let flags = body[0];
        let len = usize::try_from(u32::from_be_bytes([body[1], body[2], body[3], body[4]]))?;
        let payload = body.get(5..5 + len).context("a truncated frame")?;
        if flags & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    Ok((messages, trailers))
}

#[tokio::test]
async fn grpc_web_over_http1_answers_on_the_grpc_port_with_cors_for_given_origins_only() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_CORS_ALLOW_ORIGINS", ORIGIN)]).await?;
    let http = reqwest::Client::builder().http1_only().timeout(DEADLINE).build()?;
    let echo = format!("{}/chat.v1.EchoService/Echo", cluster.url(0));

    // The browser's preflight: allowed for the configured origin only.
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, &echo)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web,x-user-agent")
            .send()
    };
    let allowed = preflight(ORIGIN).await?;
    ensure!(allowed.version() == reqwest::Version::HTTP_11, "{:?}", allowed.version());
    let headers = allowed.headers();
    ensure!(headers.get("access-control-allow-origin").is_some_and(|v| v == ORIGIN), "{headers:?}");
    let allowed_headers = headers.get("access-control-allow-headers").context("allowed headers")?.to_str()?;
    ensure!(allowed_headers.contains("authorization") && allowed_headers.contains("x-grpc-web"), "{allowed_headers}");
    let refused = preflight("http://evil.example.test").await?;
    ensure!(refused.headers().get("access-control-allow-origin").is_none(), "{:?}", refused.headers());

    // A gRPC-Web call over HTTP/1.1: the message, then the status in a
    // trailers frame; the page may read grpc-status.
    let answer = http
        .post(&echo)
        .header("origin", ORIGIN)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(grpc_web_body(&EchoRequest { message: "hi from a browser".into() }))
        .send()
        .await?;
    ensure!(answer.status() == 200, "{answer:?}");
    ensure!(answer.headers().get("access-control-allow-origin").is_some_and(|v| v == ORIGIN), "{answer:?}");
    let exposed = answer.headers().get("access-control-expose-headers").context("exposed headers")?.to_str()?;
    ensure!(exposed.contains("grpc-status") && exposed.contains("grpc-message"), "{exposed}");
    let (messages, trailers) = grpc_web_frames(&answer.bytes().await?)?;
    let reply = EchoResponse::decode(messages.first().context("a reply")?.as_slice())?;
    ensure!(reply.message == "hi from a browser", "{reply:?}");
    ensure!(trailers.contains("grpc-status:0"), "{trailers}");

    // An unauthenticated chat call over gRPC-Web: the status, readable.
    let answer = http
        .post(format!("{}/chat.v1.ChatService/OpenSession", cluster.url(0)))
        .header("origin", ORIGIN)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(grpc_web_body(&OpenSessionRequest {}))
        .send()
        .await?;
    let status = answer.headers().get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned());
    let (_, trailers) = grpc_web_frames(&answer.bytes().await?)?;
    let unauthenticated = (Code::Unauthenticated as i32).to_string();
    ensure!(
        status.as_deref() == Some(unauthenticated.as_str())
            || trailers.contains(&format!("grpc-status:{unauthenticated}")),
        "{status:?} {trailers}"
    );
    Ok(())
}

#[tokio::test]
async fn without_origins_a_gateway_grants_no_browser_origin() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    let http = reqwest::Client::builder().http1_only().timeout(DEADLINE).build()?;
    let answer = http
        .request(reqwest::Method::OPTIONS, format!("{}/chat.v1.EchoService/Echo", cluster.url(0)))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    ensure!(answer.headers().get("access-control-allow-origin").is_none(), "{:?}", answer.headers());
    Ok(())
}
