//! The tonic services: `ChatService` (behind the auth interceptor) and
//! `EchoService`. Protobuf stays here; the work is done by [`App`] and
//! [`Session`].

use std::sync::Arc;

use chat_proto::pb::{
    self, AddMemberRequest, AddMemberResponse, ClientFrame, CreateConversationRequest, CreateConversationResponse,
    EchoRequest, EchoResponse, GetConversationRequest, GetConversationResponse, GetHistoryRequest, GetHistoryResponse,
    GetMessageRequest, GetMessageResponse, GetMessageStatusRequest, GetMessageStatusResponse, LinkChannelRequest,
    LinkChannelResponse, ListConversationsRequest, ListConversationsResponse, MarkReadRequest, MarkReadResponse,
    OpenSessionRequest, RemoveMemberRequest, RemoveMemberResponse, SendFramesRequest, SendFramesResponse,
    SendMessageRequest, SendMessageResponse, SetRoleRequest, SetRoleResponse, UnbanMemberRequest, UnbanMemberResponse,
    chat_service_server::ChatService, echo_service_server::EchoService,
};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::app::App;
use crate::auth::{Authenticator, caller, expiry};
use crate::history::PageRequest;
use crate::limits::SendDeadline;
use crate::outbox::EventStream;
use crate::session::Session;
use crate::sessions::Sessions;
use crate::wire::{self, SharedEvent};
use chat_proto::encoded::EncodedServerEvent;
use futures::TryStreamExt;

#[derive(Debug, Clone)]
pub(crate) struct ChatApi {
    app: Arc<App>,
    sessions: TaskTracker,
    /// Streams check refreshed tokens with it.
    auth: Arc<Authenticator>,
    /// `OpenSession`'s sessions, which `SendFrames` writes into.
    opened: Sessions,
}

impl ChatApi {
    pub(crate) fn new(app: Arc<App>, sessions: TaskTracker, auth: Arc<Authenticator>) -> Self {
        Self { app, sessions, auth, opened: Sessions::default() }
    }

    /// A session for the caller of `request`, and the events it will
    /// write: `Connect` and `OpenSession` both start theirs here.
    fn session_for<T>(&self, request: &Request<T>) -> Result<(Session, EventStream), Status> {
        let user = caller(request)?;
        let expires_at = expiry(request)?.0;
        let (outbox, events, slot) = self.app.open_stream(user.0)?;
        let conn = crate::conn::info(request).map(|c| c.state.clone());
        let session = Session::new(self.app.clone(), outbox, conn, slot, self.auth.clone(), expires_at)
            .traced_by(client_traceparent(request.metadata()));
        Ok((session, events))
    }
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    /// The outbox's events as tonic writes them: each one's shared encoding.
    type ConnectStream = futures::stream::MapOk<EventStream, fn(SharedEvent) -> EncodedServerEvent>;

    async fn connect(&self, request: Request<Streaming<ClientFrame>>) -> Result<Response<Self::ConnectStream>, Status> {
        let (session, events) = self.session_for(&request)?;
        self.sessions.spawn(session.run(request.into_inner()));
        Ok(Response::new(events.map_ok(|event: SharedEvent| event.wire())))
    }

    type OpenSessionStream = Self::ConnectStream;

    /// A `Connect` session whose frames come from `SendFrames` calls.
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let (session, events) = self.session_for(&request)?;
        let id = session.id().to_owned();
        let inbound = self.opened.open(&id, session.user());
        session.announce();
        let opened = self.opened.clone();
        self.sessions.spawn(async move {
            session.run(inbound).await;
            opened.remove(&id);
        });
        Ok(Response::new(events.map_ok(|event: SharedEvent| event.wire())))
    }

    async fn send_frames(&self, request: Request<SendFramesRequest>) -> Result<Response<SendFramesResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        self.opened.send(&req.session_id, &user.0, req.frames, self.app.limits().send_deadline).await?;
        Ok(Response::new(SendFramesResponse {}))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let user = caller(&request)?;
        let span = crate::session::send_span(&user.0, client_traceparent(request.metadata()).as_deref());
        let req = request.into_inner();
        let send = self.app.check_send(&req.conversation_id, &req.client_message_id, &req.body)?;
        let deadline = SendDeadline::start(self.app.limits().send_deadline);
        let accepted = deadline.bound(self.app.send_message(&user.0, send)).instrument(span).await?;
        Ok(Response::new(SendMessageResponse {
            message_id: accepted.message_id,
            conversation_id: req.conversation_id,
            seq: accepted.seq,
            client_message_id: req.client_message_id,
            duplicate: accepted.duplicate,
        }))
    }

    async fn get_history(&self, request: Request<GetHistoryRequest>) -> Result<Response<GetHistoryResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let request = PageRequest {
            conversation_id: &req.conversation_id,
            forward: req.direction == pb::get_history_request::Direction::Forward as i32,
            from_seq: req.from_seq,
            cursor: &req.cursor,
            page_size: req.page_size,
        };
        let (page, next_cursor, prev_cursor) = self.app.history_page(&user.0, request).await?;
        Ok(Response::new(GetHistoryResponse {
            messages: page.into_iter().map(wire::message).collect(),
            next_cursor,
            prev_cursor,
        }))
    }

    async fn get_message(&self, request: Request<GetMessageRequest>) -> Result<Response<GetMessageResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let message = self.app.get_message(&req.conversation_id, &user.0, &req.message_id).await?;
        Ok(Response::new(GetMessageResponse { message: Some(wire::message(message)) }))
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let (page, next_cursor) = self.app.conversations(&user.0, req.page_size, &req.cursor).await?;
        let conversations = page.into_iter().map(wire::conversation_summary).collect();
        Ok(Response::new(ListConversationsResponse { conversations, next_cursor }))
    }

    async fn mark_read(&self, request: Request<MarkReadRequest>) -> Result<Response<MarkReadResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let last_read_seq = self.app.mark_read_checked(&req.conversation_id, &user.0, req.seq).await?;
        Ok(Response::new(MarkReadResponse { last_read_seq }))
    }

    async fn get_message_status(
        &self,
        request: Request<GetMessageStatusRequest>,
    ) -> Result<Response<GetMessageStatusResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let (message, statuses) = self.app.message_status(&req.conversation_id, &user.0, &req.message_id).await?;
        let recipients = statuses.into_iter().map(wire::recipient_status).collect();
        Ok(Response::new(GetMessageStatusResponse {
            message_id: message.message_id,
            seq: message.seq,
            sender: message.sender,
            sent_at_ms: message.sent_at_ms,
            recipients,
        }))
    }

    async fn add_member(&self, request: Request<AddMemberRequest>) -> Result<Response<AddMemberResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let added = self.app.add_member(&req.conversation_id, &user.0, &req.member_id).await?;
        Ok(Response::new(AddMemberResponse { added }))
    }

    async fn create_conversation(
        &self,
        request: Request<CreateConversationRequest>,
    ) -> Result<Response<CreateConversationResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let kind = wire::kind_from_pb(req.kind)?;
        let created =
            self.app.create_conversation(&user.0, kind, &req.title, &req.members, &req.conversation_id).await?;
        Ok(Response::new(CreateConversationResponse {
            conversation: Some(wire::conversation(created.conversation)),
            created: created.created,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let (conversation, members) = self.app.conversation_details(&req.conversation_id, &user.0).await?;
        Ok(Response::new(GetConversationResponse {
            conversation: Some(wire::conversation(conversation)),
            members: members.into_iter().map(wire::member).collect(),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let removed = self.app.remove_member(&req.conversation_id, &user.0, &req.member_id, req.ban).await?;
        Ok(Response::new(RemoveMemberResponse { removed }))
    }

    async fn unban_member(
        &self,
        request: Request<UnbanMemberRequest>,
    ) -> Result<Response<UnbanMemberResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let unbanned = self.app.unban(&req.conversation_id, &user.0, &req.member_id).await?;
        Ok(Response::new(UnbanMemberResponse { unbanned }))
    }

    async fn set_role(&self, request: Request<SetRoleRequest>) -> Result<Response<SetRoleResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let role = wire::role_from_pb(req.role)?;
        self.app.set_role(&req.conversation_id, &user.0, &req.member_id, role).await?;
        Ok(Response::new(SetRoleResponse {}))
    }

    async fn link_channel(
        &self,
        request: Request<LinkChannelRequest>,
    ) -> Result<Response<LinkChannelResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        self.app.link_channel(&user.0, &req.external_id).await?;
        Ok(Response::new(LinkChannelResponse {}))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EchoApi {
    gateway_id: String,
}

impl EchoApi {
    pub(crate) fn new(gateway_id: String) -> Self {
        Self { gateway_id }
    }
}

/// Echoed text is capped so the check stays a check.
const MAX_ECHO_BYTES: usize = 4096;

#[tonic::async_trait]
impl EchoService for EchoApi {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let message = request.into_inner().message;
        if message.len() > MAX_ECHO_BYTES {
            return Err(Status::invalid_argument(format!("echo message is over {MAX_ECHO_BYTES} bytes")));
        }
        Ok(Response::new(pb::EchoResponse {
            message,
            gateway_id: self.gateway_id.clone(),
            server_time_ms: chat_core::clock::now_ms(),
        }))
    }
}

/// The caller's W3C trace context, when its client sent one: the parent of
/// the spans its sends start.
fn client_traceparent(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata.get(service::telemetry::TRACEPARENT)?.to_str().ok().map(str::to_owned)
}
