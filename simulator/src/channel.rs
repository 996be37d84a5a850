//! The receipt modes of the simulated channels, parsed from the names the
//! control API uses.

use std::fmt;
use std::str::FromStr;

pub use channels::{Channel, UnknownChannel};

/// Which receipts the simulated recipient produces after a successful send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptMode {
    None,
    Delivered,
    Read,
}

impl ReceiptMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptMode::None => "none",
            ReceiptMode::Delivered => "delivered",
            ReceiptMode::Read => "read",
        }
    }

    /// What a fresh (or reset) simulator uses: the most each channel reports.
    pub fn default_for(channel: Channel) -> Self {
        match channel {
            Channel::WhatsApp | Channel::Instagram => ReceiptMode::Read,
            Channel::Telegram => ReceiptMode::None,
        }
    }

    /// The receipt statuses sent, in order, for one message. Instagram has
    /// no delivery receipts and Telegram none at all, as in reality.
    pub fn statuses(self, channel: Channel) -> &'static [&'static str] {
        match (channel, self) {
            (Channel::WhatsApp, ReceiptMode::Delivered) => &["delivered"],
            (Channel::WhatsApp, ReceiptMode::Read) => &["delivered", "read"],
            (Channel::Instagram, ReceiptMode::Read) => &["read"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownReceiptMode(pub String);

impl fmt::Display for UnknownReceiptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown receipt mode {:?}: expected none, delivered or read", self.0)
    }
}

impl std::error::Error for UnknownReceiptMode {}

impl FromStr for ReceiptMode {
    type Err = UnknownReceiptMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ReceiptMode::None, ReceiptMode::Delivered, ReceiptMode::Read]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownReceiptMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_statuses_follow_each_channel() {
        assert_eq!(ReceiptMode::Read.statuses(Channel::WhatsApp), ["delivered", "read"]);
        assert_eq!(ReceiptMode::Delivered.statuses(Channel::WhatsApp), ["delivered"]);
        assert!(ReceiptMode::None.statuses(Channel::WhatsApp).is_empty());
        assert_eq!(ReceiptMode::Read.statuses(Channel::Instagram), ["read"]);
        assert!(ReceiptMode::Delivered.statuses(Channel::Instagram).is_empty());
        assert!(ReceiptMode::Read.statuses(Channel::Telegram).is_empty());
        assert_eq!("read".parse::<ReceiptMode>(), Ok(ReceiptMode::Read));
        assert!("seen".parse::<ReceiptMode>().is_err());
    }

    #[test]
    fn defaults_match_what_each_channel_reports() {
        assert_eq!(ReceiptMode::default_for(Channel::WhatsApp), ReceiptMode::Read);
        assert_eq!(ReceiptMode::default_for(Channel::Instagram), ReceiptMode::Read);
        assert_eq!(ReceiptMode::default_for(Channel::Telegram), ReceiptMode::None);
    }
}
