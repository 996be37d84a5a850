//! The messaging channels the platform has an adapter for, named as they
//! appear in identities (`whatsapp:+55…`), routing attributes, queue names,
//! webhook paths and the simulator's control API.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    WhatsApp,
    Instagram,
    Telegram,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::WhatsApp, Channel::Instagram, Channel::Telegram];

    /// The lowercase name used everywhere a channel is named.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp",
            Channel::Instagram => "instagram",
            Channel::Telegram => "telegram",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Position in per-channel arrays (the order of [`Channel::ALL`]).
    pub fn index(self) -> usize {
        self as usize
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
        Channel::parse(s).ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_exact() {
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(channel));
            assert_eq!(channel.to_string(), channel.as_str());
        }
        assert!("WhatsApp".parse::<Channel>().is_err());
        assert_eq!(
            "sms".parse::<Channel>().map_err(|e| e.to_string()),
            Err("unknown channel \"sms\": expected whatsapp, instagram or telegram".to_owned())
        );
        assert_eq!(Channel::ALL.map(Channel::index), [0, 1, 2]);
    }
}
