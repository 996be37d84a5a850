//! The tonic services: `ChatService` (behind the auth interceptor) and
//! `EchoService`. Protobuf stays here; the work is done by [`App`] and
//! [`Session`].

use std::sync::Arc;

use chat_proto::external::ExternalId;
use chat_proto::pb::{
    self, AddMemberRequest, AddMemberResponse, ClientFrame, EchoRequest, EchoResponse, GetHistoryRequest,
    GetHistoryResponse, GetMessageRequest, GetMessageResponse, GetMessageStatusRequest, GetMessageStatusResponse,
    LinkChannelRequest, LinkChannelResponse, ListConversationsRequest, ListConversationsResponse, MarkReadRequest,
    MarkReadResponse, SendMessageRequest, SendMessageResponse, chat_service_server::ChatService,
    echo_service_server::EchoService,
};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, Send};
use crate::auth::caller;
use crate::error::GatewayError;
use crate::history;
use crate::limits;
use crate::outbox::{EventStream, Outbox, SharedEvent};
use crate::session::Session;
use crate::store::{DeliveryStatus, StoredMessage};
use chat_proto::encoded::EncodedServerEvent;
use futures::TryStreamExt;

#[derive(Debug, Clone)]
pub struct ChatApi {
    app: Arc<App>,
    sessions: TaskTracker,
}

impl ChatApi {
    pub fn new(app: Arc<App>, sessions: TaskTracker) -> Self {
        Self { app, sessions }
    }
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    /// The outbox's events as tonic writes them: each one's shared encoding.
    type ConnectStream = futures::stream::MapOk<EventStream, fn(SharedEvent) -> EncodedServerEvent>;

    async fn connect(&self, request: Request<Streaming<ClientFrame>>) -> Result<Response<Self::ConnectStream>, Status> {
        let user = caller(&request)?;
        if self.app.closing.is_cancelled() {
            return Err(Status::unavailable("the gateway is shutting down; connect to another"));
        }
        let session_id = ulid::Ulid::new().to_string();
        tracing::info!(user_id = user.0, session_id, "stream opened");
        let (outbox, events) = Outbox::new(session_id, user.0, self.app.outbound_buffer);
        let session = Session::new(self.app.clone(), outbox);
        self.sessions.spawn(session.run(request.into_inner()));
        Ok(Response::new(events.map_ok(|event: SharedEvent| event.wire())))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let send =
            Send { conversation_id: &req.conversation_id, client_message_id: &req.client_message_id, body: &req.body };
        self.app.validate_send(&send)?;
        if !self.app.store.is_member(&req.conversation_id, &user.0).await.map_err(GatewayError::from)? {
            return Err(GatewayError::PermissionDenied(format!(
                "{} is not a member of conversation {}; join it first",
                user.0, req.conversation_id
            ))
            .into());
        }
        let accepted = self.app.send(&user.0, send).await?;
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
        limits::conversation_id(&req.conversation_id)?;
        let limit = history::page_size(req.page_size, history::MAX_HISTORY_PAGE)?;
        let forward = req.direction == pb::get_history_request::Direction::Forward as i32;
        let query = history::history_query(&req.conversation_id, forward, req.from_seq, &req.cursor, limit)?;
        self.require_member(&req.conversation_id, &user.0).await?;
        // One more than the page tells whether another page follows.
        let mut page = self
            .app
            .store
            .history(&req.conversation_id, crate::store::HistoryQuery { limit: limit + 1, ..query })
            .await
            .map_err(GatewayError::from)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let (next_cursor, prev_cursor) = history::page_cursors(&req.conversation_id, query.direction, &page, more);
        Ok(Response::new(GetHistoryResponse {
            messages: page.into_iter().map(to_pb).collect(),
            next_cursor,
            prev_cursor,
        }))
    }

    async fn get_message(&self, request: Request<GetMessageRequest>) -> Result<Response<GetMessageResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        if req.message_id.is_empty() || req.message_id.len() > limits::MAX_ID_LEN {
            return Err(GatewayError::InvalidArgument("message_id must be 1..=128 characters".into()).into());
        }
        self.require_member(&req.conversation_id, &user.0).await?;
        let message =
            self.app.store.get_message(&req.conversation_id, &req.message_id).await.map_err(GatewayError::from)?;
        match message {
            Some(m) => Ok(Response::new(GetMessageResponse { message: Some(to_pb(m)) })),
            None => Err(Status::not_found(format!(
                "no stored message {} in conversation {} (messages are stored within about a second of being sent)",
                req.message_id, req.conversation_id
            ))),
        }
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let limit = history::page_size(req.page_size, history::MAX_LIST_PAGE)?;
        let after = history::list_after(&req.cursor)?;
        let (page, more) =
            self.app.store.conversations(&user.0, limit, after.as_deref()).await.map_err(GatewayError::from)?;
        let next_cursor = match page.last() {
            Some(last) if more => history::list_cursor(&last.conversation_id),
            _ => String::new(),
        };
        let conversations = page
            .into_iter()
            .map(|c| pb::ConversationSummary {
                unread: c.unread(),
                last_read_seq: c.last_read_seq,
                conversation_id: c.conversation_id,
                last_message: c.last_message.map(to_pb),
            })
            .collect();
        Ok(Response::new(ListConversationsResponse { conversations, next_cursor }))
    }

    async fn mark_read(&self, request: Request<MarkReadRequest>) -> Result<Response<MarkReadResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        limits::conversation_id(&req.conversation_id)?;
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
        let recipients = statuses
            .into_iter()
            .map(|r| pb::RecipientStatus {
                user_id: r.user_id,
                status: message_status(r.status) as i32,
                delivered_at_ms: r.delivered_at_ms.unwrap_or(0),
                read_at_ms: r.read_at_ms.unwrap_or(0),
                failed_at_ms: r.failed_at_ms.unwrap_or(0),
                reason: r.reason,
            })
            .collect();
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

    async fn link_channel(
        &self,
        request: Request<LinkChannelRequest>,
    ) -> Result<Response<LinkChannelResponse>, Status> {
        let user = caller(&request)?;
        let req = request.into_inner();
        let external = if req.external_id.is_empty() {
            None
        } else {
            match ExternalId::parse(&req.external_id) {
                Ok(Some(id)) => Some(id.to_string()),
                Ok(None) => {
                    return Err(GatewayError::InvalidArgument(format!(
                        "external_id {:?} names no channel: use whatsapp:+<number>, instagram:<id> or telegram:<chat id>",
                        req.external_id
                    ))
                    .into());
                }
                Err(e) => return Err(GatewayError::InvalidArgument(format!("external_id: {e}")).into()),
            }
        };
        self.app.store.link_channel(&user.0, external.as_deref()).await.map_err(GatewayError::from)?;
        Ok(Response::new(LinkChannelResponse {}))
    }
}

/// The protobuf form of a stored message.
pub fn to_pb(m: StoredMessage) -> pb::Message {
    pb::Message {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        sender: m.sender,
        seq: m.seq,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        client_message_id: m.client_message_id,
    }
}

impl ChatApi {
    async fn require_member(&self, conversation_id: &str, user: &str) -> Result<(), GatewayError> {
        self.app.require_member(conversation_id, user).await
    }
}

fn message_status(status: DeliveryStatus) -> pb::MessageStatus {
    match status {
        DeliveryStatus::Sent => pb::MessageStatus::Sent,
        DeliveryStatus::Delivered => pb::MessageStatus::Delivered,
        DeliveryStatus::Read => pb::MessageStatus::Read,
        DeliveryStatus::Failed => pb::MessageStatus::Failed,
    }
}

#[derive(Debug, Clone)]
pub struct EchoApi {
    gateway_id: String,
}

impl EchoApi {
    pub fn new(gateway_id: String) -> Self {
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
            server_time_ms: crate::clock::now_ms(),
        }))
    }
}
