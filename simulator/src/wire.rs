//! The send endpoints' side of each channel's wire format: reading send
//! requests strictly enough to catch a connector bug, and building the
//! success and error bodies the real APIs answer, with their status codes.

use axum::http::{HeaderMap, StatusCode, header};
use channels::meta::{ErrorResponse, GraphError};
use channels::{instagram, telegram, whatsapp};

/// The id of the simulated bot in Telegram `from` fields.
pub(crate) const BOT_USER_ID: i64 = 1;
pub(crate) const BOT_FIRST_NAME: &str = "ChatBot";

/// The token of `Authorization: Bearer <token>`, if present.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    bearer_token(headers).is_some_and(|token| channels::secrets_equal(token, expected))
}

fn graph_error(message: String, kind: &str, code: i64, error_subcode: Option<i64>) -> ErrorResponse {
    ErrorResponse {
        error: GraphError { message, kind: kind.to_owned(), code, error_subcode, fbtrace_id: "channel-sim".to_owned() },
    }
}

/// A missing or wrong access token.
pub(crate) fn meta_invalid_token() -> (StatusCode, ErrorResponse) {
    (StatusCode::UNAUTHORIZED, graph_error("Invalid OAuth access token.".into(), "OAuthException", 190, None))
}

/// A body that is not a valid send.
pub(crate) fn meta_invalid_parameter() -> (StatusCode, ErrorResponse) {
    (StatusCode::BAD_REQUEST, graph_error("(#100) Invalid parameter".into(), "OAuthException", 100, None))
}

/// A send addressed to an id that is neither the phone number nor the
/// Instagram account.
pub(crate) fn meta_unknown_object(id: &str) -> (StatusCode, ErrorResponse) {
    let message = format!(
        "Unsupported post request. Object with ID '{id}' does not exist, cannot be loaded due to missing \
         permissions, or does not support this operation"
    );
    (StatusCode::BAD_REQUEST, graph_error(message, "GraphMethodException", 100, Some(33)))
}

/// The Graph API error for an injected failure status.
pub(crate) fn meta_fault(status: u16) -> (StatusCode, ErrorResponse) {
    let body = match status {
        429 => graph_error("(#130429) Rate limit hit".into(), "OAuthException", 130429, None),
        401 => return meta_invalid_token(),
        500 => graph_error("An unknown error occurred".into(), "OAuthException", 1, None),
        501..=599 => graph_error("Service temporarily unavailable".into(), "OAuthException", 2, None),
        _ => graph_error("(#131026) Message undeliverable".into(), "OAuthException", 131026, None),
    };
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), body)
}

pub(crate) fn telegram_error(status: StatusCode, description: &str) -> (StatusCode, telegram::ApiResponse<()>) {
    let body = telegram::ApiResponse {
        ok: false,
        result: None,
        error_code: Some(i64::from(status.as_u16())),
        description: Some(description.to_owned()),
        parameters: None,
    };
    (status, body)
}

/// The Bot API error for an injected failure status.
pub(crate) fn telegram_fault(status: u16) -> (StatusCode, telegram::ApiResponse<()>) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    match status {
        429 => {
            let (code, mut body) = telegram_error(code, "Too Many Requests: retry after 1");
            body.parameters = Some(telegram::ResponseParameters { retry_after: Some(1) });
            (code, body)
        }
        401 => telegram_error(code, "Unauthorized"),
        403 => telegram_error(code, "Forbidden: bot was blocked by the user"),
        500..=599 => telegram_error(code, "Internal Server Error"),
        _ => telegram_error(code, "Bad Request: chat not found"),
    }
}

/// Reads a WhatsApp text send; `Err` says what is wrong (for the log: the
/// client gets Meta's terse `(#100) Invalid parameter`).
pub(crate) fn parse_whatsapp_send(body: &[u8]) -> Result<whatsapp::SendRequest, String> {
    let req: whatsapp::SendRequest = serde_json::from_slice(body).map_err(|e| format!("not a text send: {e}"))?;
    if req.messaging_product != "whatsapp" {
        return Err(format!("messaging_product is {:?}, not \"whatsapp\"", req.messaging_product));
    }
    if req.kind != "text" {
        return Err(format!("type is {:?}; only \"text\" is simulated", req.kind));
    }
    if req.to.trim_start_matches('+').is_empty() || !req.to.trim_start_matches('+').bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("to {:?} is not a phone number", req.to));
    }
    if req.text.body.trim().is_empty() {
        return Err("text.body is empty".into());
    }
    Ok(req)
}

pub(crate) fn parse_instagram_send(body: &[u8]) -> Result<instagram::SendRequest, String> {
    let req: instagram::SendRequest = serde_json::from_slice(body).map_err(|e| format!("not a text send: {e}"))?;
    if req.recipient.id.trim().is_empty() {
        return Err("recipient.id is empty".into());
    }
    if req.message.text.trim().is_empty() {
        return Err("message.text is empty".into());
    }
    Ok(req)
}

/// Reads a Telegram `sendMessage`; `Err` is the Bot API's description.
pub(crate) fn parse_telegram_send(body: &[u8]) -> Result<telegram::SendMessage, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "Bad Request: can't parse JSON object".to_owned())?;
    let Some(fields) = value.as_object() else { return Err("Bad Request: can't parse JSON object".into()) };
    if fields.get("chat_id").is_none_or(serde_json::Value::is_null) {
        return Err("Bad Request: chat_id is empty".into());
    }
    if fields.get("text").and_then(serde_json::Value::as_str).is_none_or(|t| t.trim().is_empty()) {
        return Err("Bad Request: message text is empty".into());
    }
    serde_json::from_value(value).map_err(|_| "Bad Request: chat not found".to_owned())
}

pub(crate) fn whatsapp_sent(to: &str, wamid: &str) -> whatsapp::SendResponse {
    whatsapp::SendResponse {
        messaging_product: "whatsapp".into(),
        contacts: vec![whatsapp::Contact { input: to.to_owned(), wa_id: to.trim_start_matches('+').to_owned() }],
        messages: vec![whatsapp::MessageRef { id: wamid.to_owned() }],
    }
}

pub(crate) fn instagram_sent(recipient_id: &str, mid: &str) -> instagram::SendResponse {
    instagram::SendResponse { recipient_id: recipient_id.to_owned(), message_id: mid.to_owned() }
}

pub(crate) fn telegram_sent(
    message_id: i64,
    chat_id: i64,
    text: &str,
    date: i64,
) -> telegram::ApiResponse<telegram::Message> {
    telegram::ApiResponse {
        ok: true,
        result: Some(telegram::Message {
            message_id,
            date,
            chat: telegram::Chat { id: chat_id, kind: "private".into() },
            from: Some(telegram::User { id: BOT_USER_ID, is_bot: true, first_name: BOT_FIRST_NAME.into() }),
            text: Some(text.to_owned()),
        }),
        error_code: None,
        description: None,
        parameters: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("header value"));
        headers
    }

    #[test]
    fn bearer_tokens_are_read_and_compared() {
        assert_eq!(bearer_token(&auth("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&auth("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&auth("Basic abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        assert!(bearer_matches(&auth("Bearer abc"), "abc"));
        assert!(!bearer_matches(&auth("Bearer abd"), "abc"));
        assert!(!bearer_matches(&HeaderMap::new(), "abc"));
    }

    #[test]
    fn meta_faults_use_meta_codes() {
        let code = |status| {
            let (http, body) = meta_fault(status);
            (http.as_u16(), body.error.code)
        };
        assert_eq!(code(429), (429, 130429));
        assert_eq!(code(500), (500, 1));
        assert_eq!(code(503), (503, 2));
        assert_eq!(code(400), (400, 131026));
        assert_eq!(code(404), (404, 131026));
        assert_eq!(code(401), (401, 190));
        assert!(channels::meta::THROTTLING_CODES.contains(&meta_fault(429).1.error.code));
        assert_eq!(meta_fault(400).1.error.message, "(#131026) Message undeliverable");
    }

    #[test]
    fn telegram_faults_use_bot_api_shapes() {
        let (http, body) = telegram_fault(429);
        assert_eq!(http, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body.error_code, Some(429));
        assert_eq!(body.description.as_deref(), Some("Too Many Requests: retry after 1"));
        assert_eq!(body.parameters.and_then(|p| p.retry_after), Some(1));
        let (http, body) = telegram_fault(502);
        assert_eq!((http.as_u16(), body.error_code), (502, Some(502)));
        assert_eq!(body.description.as_deref(), Some("Internal Server Error"));
        let (http, body) = telegram_fault(400);
        assert_eq!((http.as_u16(), body.ok), (400, false));
        assert_eq!(body.description.as_deref(), Some("Bad Request: chat not found"));
    }

    #[test]
    fn whatsapp_sends_are_checked() {
        let ok = serde_json::to_vec(&whatsapp::SendRequest::text("+15551234", "hi", "cb")).expect("json");
        let req = parse_whatsapp_send(&ok).expect("valid send");
        assert_eq!((req.to.as_str(), req.text.body.as_str()), ("15551234", "hi"));
        assert!(parse_whatsapp_send(b"{not json").is_err());
        assert!(parse_whatsapp_send(b"[]").is_err());
        let no_text = br#"{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text"}"#;
        assert!(parse_whatsapp_send(no_text).is_err());
        let empty = serde_json::to_vec(&whatsapp::SendRequest::text("1", " ", "")).expect("json");
        assert!(parse_whatsapp_send(&empty).is_err());
        let letters = serde_json::to_vec(&whatsapp::SendRequest::text("alice", "hi", "")).expect("json");
        assert!(parse_whatsapp_send(&letters).is_err());
    }

    #[test]
    fn instagram_sends_are_checked() {
        let ok = serde_json::to_vec(&instagram::SendRequest::text("987", "hi")).expect("json");
        assert_eq!(parse_instagram_send(&ok).expect("valid").recipient.id, "987");
        assert!(parse_instagram_send(br#"{"recipient":{"id":"1"}}"#).is_err());
        assert!(
            parse_instagram_send(&serde_json::to_vec(&instagram::SendRequest::text("", "hi")).expect("json")).is_err()
        );
    }

    #[test]
    fn telegram_sends_are_checked_with_bot_api_descriptions() {
        let ok = parse_telegram_send(br#"{"chat_id":42,"text":"hi"}"#).expect("valid");
        assert_eq!((ok.chat_id, ok.text.as_str()), (42, "hi"));
        assert_eq!(parse_telegram_send(b"nope"), Err("Bad Request: can't parse JSON object".into()));
        assert_eq!(parse_telegram_send(br#"{"text":"hi"}"#), Err("Bad Request: chat_id is empty".into()));
        assert_eq!(parse_telegram_send(br#"{"chat_id":1}"#), Err("Bad Request: message text is empty".into()));
        assert_eq!(
            parse_telegram_send(br#"{"chat_id":1,"text":""}"#),
            Err("Bad Request: message text is empty".into())
        );
        assert_eq!(parse_telegram_send(br#"{"chat_id":"@x","text":"a"}"#), Err("Bad Request: chat not found".into()));
    }

    #[test]
    fn success_bodies_have_the_real_shapes() {
        let wa = serde_json::to_value(whatsapp_sent("15551234", "wamid.X")).expect("json");
        assert_eq!(
            wa,
            serde_json::json!({"messaging_product": "whatsapp", "contacts": [{"input": "15551234", "wa_id": "15551234"}],
                "messages": [{"id": "wamid.X"}]})
        );
        let tg = serde_json::to_value(telegram_sent(3, 42, "hi", 1_700_000_000)).expect("json");
        assert_eq!(
            tg,
            serde_json::json!({"ok": true, "result": {"message_id": 3, "date": 1_700_000_000,
                "chat": {"id": 42, "type": "private"}, "from": {"id": 1, "is_bot": true, "first_name": "ChatBot"},
                "text": "hi"}})
        );
    }
}
