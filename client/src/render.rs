//! How server events look in the terminal.

use chat_proto::pb::{self, server_event::Event};

/// Whether an event tells `me` anything. Your own receipts (your streams
/// acknowledging what they showed), and the `member_joined` and
/// presence-online naming you, only echo what you just did: the gateway
/// announces a user when they newly become a member or come online, which
/// for your own name is always your own join (from this device or another).
pub(crate) fn worth_showing(event: &Event, me: &str) -> bool {
    match event {
        Event::Receipt(r) => r.user_id != me,
        Event::MemberJoined(j) => j.user_id != me,
        Event::PresenceChanged(p) => !(p.online && p.user_id == me),
        _ => true,
    }
}

/// One line for an event, or nothing for events not worth a line.
pub(crate) fn render(event: &Event) -> Option<String> {
    Some(match event {
        Event::Message(m) => format!("[{} #{}] {}: {}", m.conversation_id, m.seq, m.sender, m.body),
        Event::MemberJoined(j) => format!("* {} joined {}", j.user_id, j.conversation_id),
        Event::MemberLeft(l) => format!("* {} left {}", l.user_id, l.conversation_id),
        Event::MemberRemoved(r) => format!(
            "* {} was {} from {} by {}",
            r.user_id,
            if r.banned { "banned" } else { "removed" },
            r.conversation_id,
            r.by
        ),
        Event::RoleChanged(r) => format!(
            "* {} is now {} of {} (set by {})",
            r.user_id,
            pb::Role::try_from(r.role).map_or("member", |role| match role {
                pb::Role::Owner => "the owner",
                pb::Role::Admin => "an admin",
                _ => "a member",
            }),
            r.conversation_id,
            r.by
        ),
        Event::PresenceSnapshot(p) => format!(
            "* joined {} (latest #{}); online: {}",
            p.conversation_id,
            p.last_seq,
            if p.online.is_empty() { "nobody".to_owned() } else { p.online.join(", ") }
        ),
        Event::PresenceChanged(p) => {
            format!("* {} is {} in {}", p.user_id, if p.online { "online" } else { "offline" }, p.conversation_id)
        }
        Event::Typing(t) if t.typing => format!("* {} is typing in {}…", t.user_id, t.conversation_id),
        Event::Typing(_) => return None,
        Event::SendAccepted(_) => return None,
        Event::Receipt(r) => {
            let via = if r.via.is_empty() { String::new() } else { format!(" (via {})", r.via) };
            match pb::MessageStatus::try_from(r.status) {
                Ok(pb::MessageStatus::Delivered) => {
                    format!("✓ {} received {} up to #{}{via}", r.user_id, r.conversation_id, r.up_to_seq)
                }
                Ok(pb::MessageStatus::Read) => {
                    format!("✓✓ {} read {} up to #{}{via}", r.user_id, r.conversation_id, r.up_to_seq)
                }
                Ok(pb::MessageStatus::Failed) => {
                    format!("! {} did not get {} #{}{via}: {}", r.user_id, r.conversation_id, r.up_to_seq, r.reason)
                }
                _ => return None,
            }
        }
        Event::Error(e) => format!(
            "! {} ({}){}",
            e.message,
            tonic::Code::from_i32(e.code).description(),
            if e.conversation_id.is_empty() { String::new() } else { format!(" in {}", e.conversation_id) }
        ),
        Event::SessionOpened(s) => format!("* session {} on gateway {}", s.session_id, s.gateway_id),
        Event::Disconnect(d) => format!(
            "* gateway disconnecting: {}; resume points: {}",
            d.detail,
            d.resume.iter().map(|r| format!("{}#{}", r.conversation_id, r.last_seq)).collect::<Vec<_>>().join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, status: pb::MessageStatus) -> Event {
        Event::Receipt(pb::Receipt {
            conversation_id: "r".into(),
            user_id: user.into(),
            up_to_seq: 1,
            status: status as i32,
            ..Default::default()
        })
    }

    fn presence(user: &str, online: bool) -> Event {
        Event::PresenceChanged(pb::PresenceChanged { conversation_id: "r".into(), user_id: user.into(), online })
    }

    fn joined(user: &str) -> Event {
        Event::MemberJoined(pb::MemberJoined { conversation_id: "r".into(), user_id: user.into() })
    }

    #[test]
    fn renders_messages() {
        let m = Event::Message(pb::Message {
            conversation_id: "r".into(),
            seq: 3,
            sender: "bob".into(),
            body: "hi".into(),
            ..Default::default()
        });
        assert!(worth_showing(&m, "alice"));
        assert_eq!(render(&m).as_deref(), Some("[r #3] bob: hi"));
        let own = Event::Message(pb::Message { sender: "alice".into(), ..Default::default() });
        assert!(worth_showing(&own, "alice"), "your own messages show (with their seq)");
    }

    #[test]
    fn hides_your_own_receipts() {
        for status in [pb::MessageStatus::Delivered, pb::MessageStatus::Read, pb::MessageStatus::Failed] {
            assert!(!worth_showing(&receipt("alice", status), "alice"), "{status:?}");
            assert!(worth_showing(&receipt("bob", status), "alice"), "{status:?}");
        }
        assert_eq!(render(&receipt("bob", pb::MessageStatus::Delivered)).as_deref(), Some("✓ bob received r up to #1"));
    }

    #[test]
    fn hides_the_echo_of_your_own_join() {
        assert!(!worth_showing(&joined("alice"), "alice"));
        assert!(!worth_showing(&presence("alice", true), "alice"));
        assert!(worth_showing(&joined("bob"), "alice"));
        assert!(worth_showing(&presence("bob", true), "alice"));
        assert!(worth_showing(&presence("bob", false), "alice"));
        assert_eq!(render(&joined("bob")).as_deref(), Some("* bob joined r"));
        assert_eq!(render(&presence("bob", true)).as_deref(), Some("* bob is online in r"));
        // Only the user's own name is hidden, not a prefix of it.
        assert!(worth_showing(&joined("alice2"), "alice"));
    }
}
