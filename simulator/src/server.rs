//! The HTTP face of the simulator: the three channels' send endpoints and
//! the `/_sim/` control API. Handlers only translate between HTTP and
//! [`Simulator`]; every failure is answered in the shape of whoever is
//! being imitated, never with a panic.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use channels::meta::ErrorResponse;
use channels::telegram;
use serde::de::DeserializeOwned;

use crate::channel::{Channel, ReceiptMode};
use crate::control::{self, Ack, ChannelFilter, ErrorBody};
use crate::sim::{Admission, Refusal, Simulator, now_secs};
use crate::wire;

/// The simulator's routes, serving `sim`.
pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route(control::HEALTH_PATH, get(health))
        .route(control::SENT_PATH, get(sent))
        .route(control::CALLBACKS_PATH, get(callbacks))
        .route(control::FAULTS_PATH, post(set_faults))
        .route(control::RESET_PATH, post(reset))
        .route(control::RECEIPTS_PATH, post(set_receipts))
        .route(control::INBOUND_PATH, post(inbound))
        .route(control::STATUS_PATH, post(manual_status))
        // WhatsApp and Instagram share the Graph API path shape.
        .route("/{version}/{object_id}/messages", post(graph_send))
        // `/bot{token}/sendMessage`: the router matches whole segments, so
        // the `bot` prefix is stripped in the handler.
        .route("/{bot_token}/sendMessage", post(telegram_send))
        .fallback(not_found)
        .with_state(sim)
}

fn meta_response((status, body): (StatusCode, ErrorResponse)) -> Response {
    (status, Json(body)).into_response()
}

fn telegram_response((status, body): (StatusCode, telegram::ApiResponse<()>)) -> Response {
    (status, Json(body)).into_response()
}

async fn graph_send(
    State(sim): State<Arc<Simulator>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Path((_version, object_id))) = path else { return meta_response(wire::meta_invalid_parameter()) };
    let config = sim.config();
    let channel = if object_id == config.whatsapp_phone_number_id {
        Channel::WhatsApp
    } else if object_id == config.instagram_user_id {
        Channel::Instagram
    } else {
        return meta_response(wire::meta_unknown_object(&object_id));
    };
    let latency = sim.latency(channel);
    let response = match channel {
        Channel::WhatsApp => whatsapp_answer(&sim, &headers, &body, latency),
        _ => instagram_answer(&sim, &headers, &body, latency),
    };
    tokio::time::sleep(latency).await;
    response
}

fn whatsapp_answer(sim: &Arc<Simulator>, headers: &HeaderMap, body: &[u8], latency: Duration) -> Response {
    if !wire::bearer_matches(headers, &sim.config().whatsapp_token) {
        return meta_response(wire::meta_invalid_token());
    }
    let req = match wire::parse_whatsapp_send(body) {
        Ok(req) => req,
        Err(reason) => {
            tracing::info!(reason, "whatsapp send rejected");
            return meta_response(wire::meta_invalid_parameter());
        }
    };
    match sim.admit(Channel::WhatsApp, &req.to, &req.text.body, &req.biz_opaque_callback_data, latency) {
        Admission::Accepted { id, .. } => Json(wire::whatsapp_sent(&req.to, &id)).into_response(),
        Admission::Failed(status) => meta_response(wire::meta_fault(status)),
    }
}

fn instagram_answer(sim: &Arc<Simulator>, headers: &HeaderMap, body: &[u8], latency: Duration) -> Response {
    if !wire::bearer_matches(headers, &sim.config().instagram_token) {
        return meta_response(wire::meta_invalid_token());
    }
    let req = match wire::parse_instagram_send(body) {
        Ok(req) => req,
        Err(reason) => {
            tracing::info!(reason, "instagram send rejected");
            return meta_response(wire::meta_invalid_parameter());
        }
    };
    match sim.admit(Channel::Instagram, &req.recipient.id, &req.message.text, "", latency) {
        Admission::Accepted { id, .. } => Json(wire::instagram_sent(&req.recipient.id, &id)).into_response(),
        Admission::Failed(status) => meta_response(wire::meta_fault(status)),
    }
}

async fn telegram_send(
    State(sim): State<Arc<Simulator>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let token = match &path {
        Ok(Path(segment)) => segment.strip_prefix("bot"),
        Err(_) => None,
    };
    let Some(token) = token else { return telegram_response(wire::telegram_error(StatusCode::NOT_FOUND, "Not Found")) };
    let latency = sim.latency(Channel::Telegram);
    let response = telegram_answer(&sim, token, &body, latency);
    tokio::time::sleep(latency).await;
    response
}

fn telegram_answer(sim: &Arc<Simulator>, token: &str, body: &[u8], latency: Duration) -> Response {
    if !channels::secrets_equal(token, &sim.config().telegram_bot_token) {
        return telegram_response(wire::telegram_error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    let req = match wire::parse_telegram_send(body) {
        Ok(req) => req,
        Err(description) => {
            tracing::info!(description, "telegram send rejected");
            return telegram_response(wire::telegram_error(StatusCode::BAD_REQUEST, &description));
        }
    };
    match sim.admit(Channel::Telegram, &req.chat_id.to_string(), &req.text, "", latency) {
        Admission::Accepted { telegram_message_id, .. } => {
            Json(wire::telegram_sent(telegram_message_id, req.chat_id, &req.text, now_secs())).into_response()
        }
        Admission::Failed(status) => telegram_response(wire::telegram_fault(status)),
    }
}

/// A control API failure: `{"error": "..."}` with a 4xx.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::BadRequest(message) => Self::bad_request(message),
            Refusal::NotFound(message) => Self { status: StatusCode::NOT_FOUND, message },
            Refusal::NoWebhook => Self {
                status: StatusCode::CONFLICT,
                message: "no webhook URL configured (--webhook-url / CHAT_SIM_WEBHOOK_URL)".into(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_channel(name: &str) -> Result<Channel, ApiError> {
    name.parse().map_err(|e: crate::channel::UnknownChannel| ApiError::bad_request(e.to_string()))
}

fn channel_filter(query: Result<Query<ChannelFilter>, QueryRejection>) -> Result<Option<Channel>, ApiError> {
    let Query(filter) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    filter.channel.as_deref().map(parse_channel).transpose()
}

async fn health() -> Json<Ack> {
    Json(Ack { ok: true })
}

async fn sent(
    State(sim): State<Arc<Simulator>>,
    query: Result<Query<ChannelFilter>, QueryRejection>,
) -> Result<Json<Vec<control::Sent>>, ApiError> {
    Ok(Json(sim.sent(channel_filter(query)?)))
}

async fn callbacks(
    State(sim): State<Arc<Simulator>>,
    query: Result<Query<ChannelFilter>, QueryRejection>,
) -> Result<Json<Vec<control::Callback>>, ApiError> {
    Ok(Json(sim.callbacks(channel_filter(query)?)))
}

async fn set_faults(State(sim): State<Arc<Simulator>>, body: Bytes) -> Result<Json<control::Faults>, ApiError> {
    let update: control::Faults = json_body(&body)?;
    let channel = parse_channel(&update.channel)?;
    let now = sim.set_faults(channel, &update)?;
    tracing::info!(%channel, latency_ms = ?now.latency_ms, fail_next = ?now.fail_next, permanent = ?now.permanent, "faults set");
    Ok(Json(now))
}

async fn reset(State(sim): State<Arc<Simulator>>) -> Json<Ack> {
    sim.reset();
    tracing::info!("simulator reset");
    Json(Ack { ok: true })
}

async fn set_receipts(State(sim): State<Arc<Simulator>>, body: Bytes) -> Result<Json<Ack>, ApiError> {
    let request: control::ReceiptsMode = json_body(&body)?;
    let channel = parse_channel(&request.channel)?;
    let mode: ReceiptMode =
        request.mode.parse().map_err(|e: crate::channel::UnknownReceiptMode| ApiError::bad_request(e.to_string()))?;
    sim.set_receipt_mode(channel, mode)?;
    tracing::info!(%channel, mode = mode.as_str(), "receipt mode set");
    Ok(Json(Ack { ok: true }))
}

async fn inbound(State(sim): State<Arc<Simulator>>, body: Bytes) -> Result<Json<control::InboundResult>, ApiError> {
    let request: control::Inbound = json_body(&body)?;
    let channel = parse_channel(&request.channel)?;
    Ok(Json(sim.inbound(channel, &request.from, &request.text).await?))
}

async fn manual_status(
    State(sim): State<Arc<Simulator>>,
    body: Bytes,
) -> Result<Json<control::StatusResult>, ApiError> {
    let request: control::ManualStatus = json_body(&body)?;
    let channel = parse_channel(&request.channel)?;
    Ok(Json(sim.manual_status(channel, &request.channel_message_id, &request.status).await?))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: format!("no route for {method} {}", uri.path()) }
}
