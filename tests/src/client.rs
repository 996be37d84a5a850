//! A test's view of one `Connect` stream: frames out, events in, and waits
//! with deadlines.

use std::time::Duration;

use anyhow::{Context, bail};
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::{
    AckFrame, ClientFrame, JoinFrame, LeaveFrame, MessageStatus, PresenceSnapshot, ReadFrame, Receipt, SendFrame,
    ServerEvent, TypingFrame, client_frame::Frame, server_event::Event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::DEADLINE;

#[derive(Debug)]
pub struct TestClient {
    pub user: String,
    tx: mpsc::Sender<ClientFrame>,
    events: Streaming<ServerEvent>,
    /// Every event received, in arrival order.
    pub received: Vec<Event>,
    /// The status the stream ended with, once it has.
    pub ended: Option<tonic::Status>,
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn with_token<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().context("token as metadata")?);
    Ok(request)
}

impl TestClient {
    pub async fn connect(channel: Channel, user: &str, token: &str) -> anyhow::Result<Self> {
        Self::connect_with(channel, user, token, &[]).await
    }

    /// `connect` with more call metadata (e.g. a `traceparent`).
    pub async fn connect_with(
        channel: Channel,
        user: &str,
        token: &str,
        metadata: &[(&'static str, &str)],
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let mut client = ChatServiceClient::new(channel);
        let mut request = with_token(ReceiverStream::new(rx), token)?;
        for (key, value) in metadata {
            request.metadata_mut().insert(*key, value.parse().with_context(|| format!("{key} as metadata"))?);
        }
        let events = client
            .connect(request)
            .await
            .map_err(|s| anyhow::anyhow!("connect as {user}: {:?} {}", s.code(), s.message()))?
            .into_inner();
        Ok(Self { user: user.to_owned(), tx, events, received: Vec::new(), ended: None })
    }

    pub async fn frame(&self, request_id: &str, frame: Frame) -> anyhow::Result<()> {
        self.tx
            .send(ClientFrame { request_id: request_id.to_owned(), frame: Some(frame) })
            .await
            .context("stream closed")
    }

    pub async fn send_raw(&self, frame: ClientFrame) -> anyhow::Result<()> {
        self.tx.send(frame).await.context("stream closed")
    }

    /// Joins and waits for the snapshot that answers the join.
    pub async fn join(&mut self, conversation: &str) -> anyhow::Result<PresenceSnapshot> {
        self.frame(
            &format!("join-{conversation}"),
            Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: None }),
        )
        .await?;
        self.wait_for(|e| match e {
            Event::PresenceSnapshot(s) if s.conversation_id == conversation => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Joins resuming after `after` and waits for the snapshot.
    pub async fn join_resume(&mut self, conversation: &str, after: u64) -> anyhow::Result<PresenceSnapshot> {
        self.frame(
            &format!("join-{conversation}"),
            Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: Some(after) }),
        )
        .await?;
        self.wait_for(|e| match e {
            Event::PresenceSnapshot(s) if s.conversation_id == conversation => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Every message of `conversation` received so far, in arrival order.
    pub fn messages_of(&self, conversation: &str) -> Vec<chat_proto::pb::Message> {
        self.received
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.conversation_id == conversation => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    pub async fn leave(&self, conversation: &str) -> anyhow::Result<()> {
        self.frame("leave", Frame::Leave(LeaveFrame { conversation_id: conversation.into() })).await
    }

    pub async fn send(&self, conversation: &str, client_message_id: &str, body: &str) -> anyhow::Result<()> {
        self.frame(
            client_message_id,
            Frame::Send(SendFrame {
                conversation_id: conversation.into(),
                client_message_id: client_message_id.into(),
                body: body.into(),
            }),
        )
        .await
    }

    pub async fn typing(&self, conversation: &str, typing: bool) -> anyhow::Result<()> {
        self.frame("typing", Frame::Typing(TypingFrame { conversation_id: conversation.into(), typing })).await
    }

    pub async fn ack(&self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        self.frame("ack", Frame::Ack(AckFrame { conversation_id: conversation.into(), seq })).await
    }

    pub async fn read(&self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        self.frame("read", Frame::Read(ReadFrame { conversation_id: conversation.into(), seq })).await
    }

    /// Waits for a receipt of `user` with `status` covering `seq`.
    pub async fn wait_receipt(&mut self, user: &str, status: MessageStatus, seq: u64) -> anyhow::Result<Receipt> {
        self.wait_for(|e| match e {
            Event::Receipt(r) if r.user_id == user && r.status == status as i32 && r.up_to_seq >= seq => {
                Some(r.clone())
            }
            _ => None,
        })
        .await
        .with_context(|| format!("waiting for {status:?} of {user} up to {seq}"))
    }

    /// Every receipt received so far, in arrival order.
    pub fn receipts(&self) -> Vec<Receipt> {
        self.received
            .iter()
            .filter_map(|e| match e {
                Event::Receipt(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// The next event, or `None` when the stream ended (see `ended`).
    pub async fn next_event(&mut self, within: Duration) -> anyhow::Result<Option<Event>> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let next = tokio::time::timeout(within, self.events.message())
            .await
            .with_context(|| format!("{}: no event within {within:?}", self.user))?;
        match next {
            Ok(Some(ServerEvent { event: Some(event) })) => {
                self.received.push(event.clone());
                Ok(Some(event))
            }
            Ok(Some(ServerEvent { event: None })) => bail!("{}: empty server event", self.user),
            Ok(None) => {
                self.ended = Some(tonic::Status::ok(""));
                Ok(None)
            }
            Err(status) => {
                self.ended = Some(status);
                Ok(None)
            }
        }
    }

    /// Reads events until `pick` returns something (within [`DEADLINE`]).
    pub async fn wait_for<T>(&mut self, pick: impl FnMut(&Event) -> Option<T>) -> anyhow::Result<T> {
        self.wait_for_within(DEADLINE, pick).await
    }

    pub async fn wait_for_within<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_event(left).await.with_context(|| {
                format!("{}: waited {within:?}; received so far: {:?}", self.user, summarize(&self.received))
            })?
            else {
                bail!("{}: stream ended ({:?}) before the awaited event", self.user, self.ended);
            };
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
        }
    }

    /// Waits for the stream to end and returns its final status.
    pub async fn wait_end(&mut self) -> anyhow::Result<tonic::Status> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.ended.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.next_event(left).await?;
        }
        self.ended.clone().context("ended")
    }

    /// Half-closes the sending side.
    pub fn close_send(&mut self) {
        let (tx, _) = mpsc::channel(1);
        self.tx = tx;
    }
}

/// A compact description of events for failure messages.
pub fn summarize(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("msg {}#{}", m.conversation_id, m.seq),
            Event::Error(err) => format!("error {} {}", err.code, err.message),
            other => format!("{other:?}").chars().take(80).collect(),
        })
        .collect()
}
