//! The raw tonic baseline: the same `chat.v1` `Connect` stream the gateway
//! serves, with none of the gateway's logic (no authentication, membership,
//! store, bus, reordering, rate limits or receipts). A send is numbered and
//! pushed to every stream joined to the conversation, sender included, as
//! the gateway does, encoded once for all its recipients as the gateway does.
//! What the bench measures against it is the ceiling of tonic and HTTP/2 on
//! the machine for the same client load.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chat_proto::encoded::EncodedServerEvent;
use chat_proto::pb::chat_service_server::{ChatService, ChatServiceServer};
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{self, ClientFrame, ServerEvent};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Outbox = mpsc::Sender<Result<EncodedServerEvent, Status>>;

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<(u64, Outbox)>,
}

/// The service; clones share the rooms.
#[derive(Clone, Default)]
pub struct Baseline(Arc<Rooms>);

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baseline").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    next_stream: std::sync::atomic::AtomicU64,
}

/// Events buffered per stream, as the gateway's default outbound buffer.
const OUTBOX: usize = 1024;

impl Baseline {
    pub fn server(self) -> ChatServiceServer<Self> {
        ChatServiceServer::new(self)
    }
}

impl Rooms {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        // A panic while holding the lock cannot leave a room half-updated in
        // a way that matters to a benchmark; keep serving.
        self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn join(&self, stream: u64, outbox: &Outbox, conversation_id: String) -> ServerEvent {
        let mut rooms = self.rooms();
        let room = rooms.entry(conversation_id.clone()).or_default();
        if !room.members.iter().any(|(id, _)| *id == stream) {
            room.members.push((stream, outbox.clone()));
        }
        let snapshot = pb::PresenceSnapshot { conversation_id, last_seq: room.seq, ..Default::default() };
        ServerEvent { event: Some(Event::PresenceSnapshot(snapshot)) }
    }

    fn send(&self, request_id: String, sender: u64, send: pb::SendFrame) -> ServerEvent {
        let (seq, targets) = {
            let mut rooms = self.rooms();
            let room = rooms.entry(send.conversation_id.clone()).or_default();
            room.seq += 1;
            (room.seq, room.members.iter().map(|(_, outbox)| outbox.clone()).collect::<Vec<_>>())
        };
        let message_id = format!("b{seq}");
        let event = EncodedServerEvent::new(&ServerEvent {
            event: Some(Event::Message(pb::Message {
                message_id: message_id.clone(),
                conversation_id: send.conversation_id.clone(),
                sender: format!("s{sender}"),
                seq,
                body: send.body,
                sent_at_ms: 0,
                client_message_id: send.client_message_id.clone(),
            })),
        });
        for outbox in targets {
            // A full outbox drops the event, as a slow consumer would be cut
            // off by the gateway; the bench counts it as lost.
            let _ = outbox.try_send(Ok(event.clone()));
        }
        ServerEvent {
            event: Some(Event::SendAccepted(pb::SendAccepted {
                request_id,
                client_message_id: send.client_message_id,
                message_id,
                conversation_id: send.conversation_id,
                seq,
                duplicate: false,
            })),
        }
    }

    fn forget(&self, stream: u64) {
        self.rooms().values_mut().for_each(|room| room.members.retain(|(id, _)| *id != stream));
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedServerEvent, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the baseline serves Connect only"))
}

#[tonic::async_trait]
impl ChatService for Baseline {
    type ConnectStream = EventStream;

    async fn connect(&self, request: Request<Streaming<ClientFrame>>) -> Result<Response<EventStream>, Status> {
        let mut inbound = request.into_inner();
        let (outbox, events) = mpsc::channel(OUTBOX);
        let this = Arc::clone(&self.0);
        let stream = this.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = inbound.next().await {
                let answer = match frame.frame {
                    Some(Frame::Join(join)) => this.join(stream, &outbox, join.conversation_id),
                    Some(Frame::Send(send)) => this.send(frame.request_id, stream, send),
                    _ => continue,
                };
                if outbox.send(Ok(EncodedServerEvent::new(&answer))).await.is_err() {
                    break;
                }
            }
            this.forget(stream);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(events))))
    }

    type OpenSessionStream = EventStream;

    async fn open_session(&self, _: Request<pb::OpenSessionRequest>) -> Result<Response<EventStream>, Status> {
        unimplemented()
    }
    async fn send_frames(&self, _: Request<pb::SendFramesRequest>) -> Result<Response<pb::SendFramesResponse>, Status> {
        unimplemented()
    }
    async fn send_message(
        &self,
        _: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        unimplemented()
    }
    async fn get_history(&self, _: Request<pb::GetHistoryRequest>) -> Result<Response<pb::GetHistoryResponse>, Status> {
        unimplemented()
    }
    async fn get_message(&self, _: Request<pb::GetMessageRequest>) -> Result<Response<pb::GetMessageResponse>, Status> {
        unimplemented()
    }
    async fn list_conversations(
        &self,
        _: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        unimplemented()
    }
    async fn mark_read(&self, _: Request<pb::MarkReadRequest>) -> Result<Response<pb::MarkReadResponse>, Status> {
        unimplemented()
    }
    async fn get_message_status(
        &self,
        _: Request<pb::GetMessageStatusRequest>,
    ) -> Result<Response<pb::GetMessageStatusResponse>, Status> {
        unimplemented()
    }
    async fn add_member(&self, _: Request<pb::AddMemberRequest>) -> Result<Response<pb::AddMemberResponse>, Status> {
        unimplemented()
    }
    async fn link_channel(
        &self,
        _: Request<pb::LinkChannelRequest>,
    ) -> Result<Response<pb::LinkChannelResponse>, Status> {
        unimplemented()
    }
    /// The load generator creates its rooms first on either server; here
    /// any room exists once named.
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        let req = request.into_inner();
        let conversation = pb::Conversation {
            conversation_id: req.conversation_id,
            kind: req.kind,
            title: req.title,
            ..pb::Conversation::default()
        };
        Ok(Response::new(pb::CreateConversationResponse { conversation: Some(conversation), created: true }))
    }
    async fn get_conversation(
        &self,
        _: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        unimplemented()
    }
    async fn remove_member(
        &self,
        _: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        unimplemented()
    }
    async fn unban_member(
        &self,
        _: Request<pb::UnbanMemberRequest>,
    ) -> Result<Response<pb::UnbanMemberResponse>, Status> {
        unimplemented()
    }
    async fn set_role(&self, _: Request<pb::SetRoleRequest>) -> Result<Response<pb::SetRoleResponse>, Status> {
        unimplemented()
    }
}
