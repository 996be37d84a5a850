//! External identities: conversation members who live on another messaging
//! channel (`whatsapp:+5511999990000`, `instagram:someuser`,
//! `telegram:123456`) and are reached through the `connector` function.
//!
//! The form is `<channel>:<address>`. Internal user ids may contain ':' too,
//! but never start with a channel name and ':' — the gateway refuses tokens
//! whose subject would parse as an external identity, so nobody can connect
//! as one.

use std::fmt;

pub use channels::Channel;

/// Whether an address is well formed for this channel.
fn check_address(channel: Channel, address: &str) -> Result<(), String> {
    let ok = match channel {
        // E.164: '+' and 8 to 15 digits.
        Channel::WhatsApp => address
            .strip_prefix('+')
            .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())),
        // An Instagram-scoped id or a username.
        Channel::Instagram => {
            (1..=64).contains(&address.len())
                && address.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        }
        // A chat id: an integer, negative for groups.
        Channel::Telegram => {
            let digits = address.strip_prefix('-').unwrap_or(address);
            (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }
    };
    if ok {
        return Ok(());
    }
    Err(match channel {
        Channel::WhatsApp => format!("{address:?} is not a WhatsApp number: use + and 8 to 15 digits (E.164)"),
        Channel::Instagram => {
            format!("{address:?} is not an Instagram id: use 1 to 64 letters, digits, '.' or '_'")
        }
        Channel::Telegram => format!("{address:?} is not a Telegram chat id: use an integer"),
    })
}

/// A member on an external channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalId {
    pub channel: Channel,
    pub address: String,
}

impl ExternalId {
    /// `Ok(None)` for an id that is not external (no channel prefix);
    /// `Err` for a channel prefix with a malformed address.
    pub fn parse(id: &str) -> Result<Option<ExternalId>, String> {
        let Some((name, address)) = id.split_once(':') else { return Ok(None) };
        let Some(channel) = Channel::parse(name) else { return Ok(None) };
        check_address(channel, address)?;
        Ok(Some(ExternalId { channel, address: address.to_owned() }))
    }

    /// Whether `id` claims a channel prefix (well formed or not).
    pub fn has_channel_prefix(id: &str) -> bool {
        id.split_once(':').is_some_and(|(name, _)| Channel::parse(name).is_some())
    }

    pub fn new(channel: Channel, address: &str) -> Result<ExternalId, String> {
        check_address(channel, address)?;
        Ok(ExternalId { channel, address: address.to_owned() })
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.channel, self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_channel_and_round_trips() {
        for id in ["whatsapp:+5511999990000", "instagram:some.user_1", "telegram:123456", "telegram:-100200"] {
            let parsed = ExternalId::parse(id).expect("valid").expect("external");
            assert_eq!(parsed.to_string(), id);
        }
    }

    #[test]
    fn internal_ids_are_not_external() {
        for id in ["alice", "team:alpha", "mailto:x@y", "whatsappish:+1"] {
            assert_eq!(ExternalId::parse(id), Ok(None), "{id}");
            assert!(!ExternalId::has_channel_prefix(id));
        }
    }

    #[test]
    fn malformed_addresses_are_errors_that_say_why() {
        for id in ["whatsapp:5511999990000", "whatsapp:+12", "whatsapp:+55a1999990000", "instagram:", "telegram:12a"] {
            let err = ExternalId::parse(id).expect_err(id);
            assert!(err.contains("is not a"), "{err}");
            assert!(ExternalId::has_channel_prefix(id));
        }
    }
}
