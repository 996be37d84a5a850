//! Input rules every entry point applies the same way: ids and message
//! bodies. Plain functions; each failure says what was wrong, and its
//! variant fixes the gRPC code a client sees (the gateway maps
//! [`LimitError`] once).

/// Longest conversation, user, message or client message id accepted.
pub const MAX_ID_LEN: usize = 128;

/// The default limit on a message body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4096;

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Malformed: `INVALID_ARGUMENT`.
    #[error("{0}")]
    Invalid(String),
    /// Over a size limit: `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    TooLarge(String),
}

/// Conversation and user ids: 1..=128 of `A-Z a-z 0-9 _ - . : @ +`. The set
/// is narrow on purpose: ids become DynamoDB keys, SNS attribute values and
/// SQS-visible strings, and external identities (`whatsapp:+5511...`) fit.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '+')
}

fn check_id(what: &str, value: &str) -> Result<(), LimitError> {
    if value.is_empty() {
        return Err(LimitError::Invalid(format!("{what} is empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(LimitError::Invalid(format!("{what} is {} bytes long; the limit is {MAX_ID_LEN}", value.len())));
    }
    if let Some(bad) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(LimitError::Invalid(format!(
            "{what} contains {bad:?}; allowed are letters, digits and _ - . : @ +"
        )));
    }
    Ok(())
}

pub fn conversation_id(value: &str) -> Result<(), LimitError> {
    check_id("conversation_id", value)
}

/// A token's subject must be a usable user id, and not an external
/// identity: those are reached through their channel and never connect.
pub fn user_id(value: &str) -> Result<(), LimitError> {
    check_id("token subject (user id)", value)?;
    if crate::external::ExternalId::has_channel_prefix(value) {
        return Err(LimitError::Invalid(format!(
            "token subject {value:?} names an external identity; external members cannot connect"
        )));
    }
    Ok(())
}

/// A member to add: a user id or a well-formed external identity.
pub fn member_id(value: &str) -> Result<(), LimitError> {
    check_id("member_id", value)?;
    crate::external::ExternalId::parse(value).map_err(|e| LimitError::Invalid(format!("member_id: {e}")))?;
    Ok(())
}

pub fn message_id(value: &str) -> Result<(), LimitError> {
    check_id("message_id", value)
}

/// Empty means "not idempotent"; otherwise 1..=128 bytes without whitespace
/// or control characters.
pub fn client_message_id(value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_ID_LEN {
        return Err(LimitError::Invalid(format!(
            "client_message_id is {} bytes long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(LimitError::Invalid("client_message_id contains whitespace or control characters".into()));
    }
    Ok(())
}

/// A message body: not blank, at most `max_bytes` bytes of UTF-8.
pub fn body(value: &str, max_bytes: usize) -> Result<(), LimitError> {
    if value.trim().is_empty() {
        return Err(LimitError::Invalid("message body is empty".into()));
    }
    if value.len() > max_bytes {
        return Err(LimitError::TooLarge(format!(
            "message body is {} bytes; the limit is {max_bytes} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// The longest prefix of `value` within `max_bytes` that ends on a character
/// boundary: for text from outside (an external channel's message) that
/// must fit a limit rather than be refused.
pub fn fit(value: &str, max_bytes: usize) -> &str {
    if value.len() <= max_bytes {
        return value;
    }
    let mut end = max_bytes;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<(), LimitError>) -> bool {
        matches!(r, Err(LimitError::Invalid(_)))
    }

    #[test]
    fn ids_accept_the_documented_alphabet() {
        for ok in ["room1", "a", "whatsapp:+5511999990000", "team.eng_1-x@corp", &"x".repeat(128)] {
            assert!(conversation_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "tab\t", "emoji😀", "slash/x", &"x".repeat(129)] {
            assert!(invalid(conversation_id(bad)), "{bad}");
        }
        assert!(invalid(user_id("")));
        assert!(invalid(user_id("whatsapp:+5511999990000")), "external identities never connect");
        assert!(user_id("alice").is_ok());
    }

    #[test]
    fn member_ids_are_users_or_well_formed_external_identities() {
        assert!(member_id("bob").is_ok());
        assert!(member_id("telegram:42").is_ok());
        assert!(invalid(member_id("whatsapp:5511")), "a channel prefix with a bad address");
        assert!(invalid(member_id("")));
    }

    #[test]
    fn client_message_id_may_be_empty_but_not_odd() {
        assert!(client_message_id("").is_ok());
        assert!(client_message_id("c-123_ü").is_ok());
        assert!(invalid(client_message_id("a b")));
        assert!(invalid(client_message_id(&"x".repeat(129))));
    }

    #[test]
    fn body_must_be_non_blank_and_within_limit() {
        assert!(body("hello", 8).is_ok());
        assert!(body("12345678", 8).is_ok());
        assert!(invalid(body("", 8)));
        assert!(invalid(body(" \n\t", 8)));
        assert!(matches!(body("123456789", 8), Err(LimitError::TooLarge(_))));
        // The limit is in bytes, not characters.
        assert!(matches!(body("ééééé", 8), Err(LimitError::TooLarge(_))));
    }

    #[test]
    fn fit_cuts_on_a_character_boundary_within_the_byte_limit() {
        assert_eq!(fit("hello", 8), "hello");
        assert_eq!(fit("ééééé", 8), "éééé");
        assert_eq!(fit("ééééé", 7), "ééé");
        assert_eq!(fit("😀", 3), "");
        let long = "é".repeat(3000);
        assert!(fit(&long, DEFAULT_MAX_BODY_BYTES).len() <= DEFAULT_MAX_BODY_BYTES);
        assert!(body(fit(&long, DEFAULT_MAX_BODY_BYTES), DEFAULT_MAX_BODY_BYTES).is_ok());
    }
}
