//! The three simulated channels and their receipt modes, parsed from the
//! names the control API uses.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    WhatsApp,
    Instagram,
    Telegram,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::WhatsApp, Channel::Instagram, Channel::Telegram];

    /// The name in control bodies, records and webhook paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp",
            Channel::Instagram => "instagram",
            Channel::Telegram => "telegram",
        }
    }

    /// Position in per-channel arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Channel::WhatsApp => 0,
            Channel::Instagram => 1,
            Channel::Telegram => 2,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChannel(pub String);

impl fmt::Display for UnknownChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown channel {:?}: expected whatsapp, instagram or telegram", self.0)
    }
}

impl std::error::Error for UnknownChannel {}

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}

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
    fn channel_names_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(channel));
        }
        assert!("WhatsApp".parse::<Channel>().is_err());
        assert!("sms".parse::<Channel>().is_err());
        assert_eq!(Channel::ALL.map(Channel::index), [0, 1, 2]);
    }

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
