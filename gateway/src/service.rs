//! The tonic services: `ChatService` (behind the auth interceptor) and
//! `EchoService`. Protobuf stays here; the work is done by [`App`] and
//! [`Session`].

use std::sync::Arc;

use chat_proto::pb::{
    self, ClientFrame, EchoRequest, EchoResponse, SendMessageRequest, SendMessageResponse,
    chat_service_server::ChatService, echo_service_server::EchoService,
};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, Send};
use crate::auth::caller;
use crate::error::GatewayError;
use crate::outbox::{EventStream, Outbox};
use crate::session::Session;

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
    type ConnectStream = EventStream;

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
        Ok(Response::new(events))
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
