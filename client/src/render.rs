//! How server events look in the terminal.

use chat_proto::pb::{self, server_event::Event};

/// One line for an event, or nothing for events not worth a line.
pub(crate) fn render(event: &Event, me: &str) -> Option<String> {
    Some(match event {
        Event::Message(m) => format!("[{} #{}] {}: {}", m.conversation_id, m.seq, m.sender, m.body),
        Event::MemberJoined(j) => format!("* {} joined {}", j.user_id, j.conversation_id),
        Event::MemberLeft(l) => format!("* {} left {}", l.user_id, l.conversation_id),
        Event::PresenceSnapshot(p) => format!(
            "* joined {} (latest #{}); online: {}",
            p.conversation_id,
            p.last_seq,
            if p.online.is_empty() { "nobody".to_owned() } else { p.online.join(", ") }
        ),
        Event::PresenceChanged(p) if p.user_id == me => return None,
        Event::PresenceChanged(p) => {
            format!("* {} is {} in {}", p.user_id, if p.online { "online" } else { "offline" }, p.conversation_id)
        }
        Event::Typing(t) if t.typing => format!("* {} is typing in {}…", t.user_id, t.conversation_id),
        Event::Typing(_) => return None,
        Event::SendAccepted(_) => return None,
        Event::Receipt(r) if r.user_id == me => return None,
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

    #[test]
    fn renders_messages_and_hides_own_presence() {
        let m = Event::Message(pb::Message {
            conversation_id: "r".into(),
            seq: 3,
            sender: "bob".into(),
            body: "hi".into(),
            ..Default::default()
        });
        assert_eq!(render(&m, "alice").as_deref(), Some("[r #3] bob: hi"));
        let p = Event::PresenceChanged(pb::PresenceChanged {
            conversation_id: "r".into(),
            user_id: "alice".into(),
            online: true,
        });
        assert_eq!(render(&p, "alice"), None);
        assert!(render(&p, "bob").is_some_and(|l| l.contains("online")));
    }
}
