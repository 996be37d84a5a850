//! The gateway's protobuf edge: the only module that builds or reads
//! `chat.v1` messages. A client's frame becomes a [`Command`] here, and every
//! event a stream receives is built here from domain values, once, beside
//! the [`Facts`] the outbox keeps its bookkeeping by; the unary replies'
//! messages too. Nothing else in the gateway names a `pb` type but the
//! tonic service (`service`), which only moves fields between requests,
//! [`App`](crate::app::App) and these builders.

use std::sync::Arc;

use chat_core::conversation::{Conversation, Kind, Role};
use chat_core::envelope::{Envelope, Event, ReceiptStatus};
use chat_core::store::{Accepted, ConversationInfo, DeliveryStatus, MemberState, RecipientStatus, StoredMessage};
use chat_proto::encoded::EncodedServerEvent;
use chat_proto::pb::{self, ClientFrame, ServerEvent, client_frame::Frame, server_event::Event as PbEvent};
use tonic::{Code, Status};

use crate::error::GatewayError;

/// What an outbox reads of an event: the domain values its bookkeeping
/// needs, handed over beside the encoding (never parsed back from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Facts {
    /// A message: moves its conversation's resume point.
    Message { conversation_id: String, seq: u64 },
    /// A receipt: shown only when it moves its user forward.
    Receipt { conversation_id: String, user_id: String, status: ReceiptStatus, up_to_seq: u64 },
    /// Anything else: delivered as it is.
    Other,
}

/// An event on its way to streams: its [`Facts`] and its protobuf encoding
/// (built by `wire`), made once however many streams it goes to. Cloning
/// shares both.
#[derive(Debug, Clone)]
pub(crate) struct SharedEvent(Arc<(Facts, EncodedServerEvent)>);

impl SharedEvent {
    pub(crate) fn new(facts: Facts, wire: EncodedServerEvent) -> Self {
        Self(Arc::new((facts, wire)))
    }

    pub(crate) fn facts(&self) -> &Facts {
        &self.0.0
    }

    /// What tonic writes: the shared encoding.
    pub(crate) fn wire(&self) -> EncodedServerEvent {
        self.0.1.clone()
    }

    /// The seq of a message of `conversation_id`.
    pub(crate) fn seq_in(&self, conversation_id: &str) -> Option<u64> {
        match self.facts() {
            Facts::Message { conversation_id: c, seq } if c == conversation_id => Some(*seq),
            _ => None,
        }
    }
}

/// Why an outbox was closed with a terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    SlowConsumer,
    Shutdown,
    /// The stream's token expired and was not refreshed.
    TokenExpired,
}

/// What a client asked for in one frame of its `Connect` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Join {
        conversation_id: String,
        resume_after: Option<u64>,
    },
    Leave {
        conversation_id: String,
    },
    Send {
        conversation_id: String,
        client_message_id: String,
        body: String,
    },
    Typing {
        conversation_id: String,
        typing: bool,
    },
    /// DELIVERED up to `seq`.
    Ack {
        conversation_id: String,
        seq: u64,
    },
    /// READ up to `seq`.
    Read {
        conversation_id: String,
        seq: u64,
    },
    /// A fresh token for the stream's user.
    Refresh {
        token: String,
    },
}

impl Command {
    pub(crate) fn conversation_id(&self) -> &str {
        match self {
            Command::Join { conversation_id, .. }
            | Command::Leave { conversation_id }
            | Command::Send { conversation_id, .. }
            | Command::Typing { conversation_id, .. }
            | Command::Ack { conversation_id, .. }
            | Command::Read { conversation_id, .. } => conversation_id,
            Command::Refresh { .. } => "",
        }
    }

    pub(crate) fn client_message_id(&self) -> &str {
        match self {
            Command::Send { client_message_id, .. } => client_message_id,
            _ => "",
        }
    }
}

/// A frame's request id and command (`None`: the frame set nothing).
pub(crate) fn read_frame(frame: ClientFrame) -> (String, Option<Command>) {
    let command = frame.frame.map(|frame| match frame {
        Frame::Join(f) => Command::Join { conversation_id: f.conversation_id, resume_after: f.resume_after_seq },
        Frame::Leave(f) => Command::Leave { conversation_id: f.conversation_id },
        Frame::Send(f) => {
            Command::Send { conversation_id: f.conversation_id, client_message_id: f.client_message_id, body: f.body }
        }
        Frame::Typing(f) => Command::Typing { conversation_id: f.conversation_id, typing: f.typing },
        Frame::Ack(f) => Command::Ack { conversation_id: f.conversation_id, seq: f.seq },
        Frame::Read(f) => Command::Read { conversation_id: f.conversation_id, seq: f.seq },
        Frame::Refresh(f) => Command::Refresh { token: f.token },
    });
    (frame.request_id, command)
}

/// Encodes an event once, beside what the outbox reads of it.
fn shared(facts: Facts, event: PbEvent) -> SharedEvent {
    SharedEvent::new(facts, EncodedServerEvent::new(&ServerEvent { event: Some(event) }))
}

/// A bus event as streams receive it.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) event: SharedEvent,
    /// A message's seq: it goes through the conversation's reorderer.
    pub(crate) seq: Option<u64>,
    /// Who does not receive it (a typist does not see their own typing).
    pub(crate) skip_user: Option<String>,
}

/// The protobuf form of a receipt status.
fn receipt_status(status: ReceiptStatus) -> pb::MessageStatus {
    match status {
        ReceiptStatus::Delivered => pb::MessageStatus::Delivered,
        ReceiptStatus::Read => pb::MessageStatus::Read,
        ReceiptStatus::Failed => pb::MessageStatus::Failed,
    }
}

/// What a bus event is on the streams; `None` for events meant for
/// functions only (fallback requests).
pub(crate) fn bus_event(envelope: Envelope) -> Option<Outgoing> {
    let conversation_id = envelope.conversation_id;
    let at_ms = envelope.at_ms;
    let (facts, event, seq, skip_user) = match envelope.event {
        Event::Message(m) => {
            let facts = Facts::Message { conversation_id: conversation_id.clone(), seq: m.seq };
            let event = PbEvent::Message(pb::Message {
                message_id: m.message_id,
                conversation_id,
                sender: m.sender,
                seq: m.seq,
                body: m.body,
                sent_at_ms: at_ms,
                client_message_id: m.client_message_id,
            });
            (facts, event, Some(m.seq), None)
        }
        Event::MemberJoined { user_id } => {
            (Facts::Other, PbEvent::MemberJoined(pb::MemberJoined { conversation_id, user_id }), None, None)
        }
        Event::MemberLeft { user_id } => {
            (Facts::Other, PbEvent::MemberLeft(pb::MemberLeft { conversation_id, user_id }), None, None)
        }
        Event::MemberRemoved { user_id, by, banned } => {
            let event = PbEvent::MemberRemoved(pb::MemberRemoved { conversation_id, user_id, by, banned });
            (Facts::Other, event, None, None)
        }
        Event::RoleChanged { user_id, role, by } => {
            let role = role_to_pb(Role::parse_stored(Some(&role))) as i32;
            (Facts::Other, PbEvent::RoleChanged(pb::RoleChanged { conversation_id, user_id, role, by }), None, None)
        }
        Event::Presence { user_id, online } => (
            Facts::Other,
            PbEvent::PresenceChanged(pb::PresenceChanged { conversation_id, user_id, online }),
            None,
            None,
        ),
        Event::Typing { user_id, typing } => {
            let skip = Some(user_id.clone());
            (Facts::Other, PbEvent::Typing(pb::Typing { conversation_id, user_id, typing }), None, skip)
        }
        Event::Receipt(r) => {
            let facts = Facts::Receipt {
                conversation_id: conversation_id.clone(),
                user_id: r.user_id.clone(),
                status: r.status,
                up_to_seq: r.up_to_seq,
            };
            let receipt = pb::Receipt {
                conversation_id,
                user_id: r.user_id,
                status: receipt_status(r.status) as i32,
                up_to_seq: r.up_to_seq,
                message_id: r.message_id,
                reason: r.reason,
                via: r.via,
                at_ms,
            };
            (facts, PbEvent::Receipt(receipt), None, None)
        }
        Event::Fallback(_) => return None,
    };
    Some(Outgoing { event: shared(facts, event), seq, skip_user })
}

fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Member => pb::Role::Member,
        Role::Admin => pb::Role::Admin,
        Role::Owner => pb::Role::Owner,
    }
}

/// A role a client asks for.
pub(crate) fn role_from_pb(value: i32) -> Result<Role, GatewayError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Member) => Ok(Role::Member),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        _ => Err(GatewayError::InvalidArgument(format!(
            "role {value} is not one of ROLE_MEMBER, ROLE_ADMIN, ROLE_OWNER"
        ))),
    }
}

/// A conversation kind a client asks for (unspecified is private: the
/// safe default).
pub(crate) fn kind_from_pb(value: i32) -> Result<Kind, GatewayError> {
    match pb::ConversationKind::try_from(value) {
        Ok(pb::ConversationKind::Unspecified | pb::ConversationKind::Private) => Ok(Kind::Private),
        Ok(pb::ConversationKind::Public) => Ok(Kind::Public),
        Ok(pb::ConversationKind::Direct) => Ok(Kind::Direct),
        Err(_) => Err(GatewayError::InvalidArgument(format!(
            "kind {value} is not one of CONVERSATION_KIND_PUBLIC, CONVERSATION_KIND_PRIVATE, CONVERSATION_KIND_DIRECT"
        ))),
    }
}

/// The protobuf form of a conversation's settings.
pub(crate) fn conversation(c: Conversation) -> pb::Conversation {
    let kind = match c.kind {
        Kind::Public => pb::ConversationKind::Public,
        Kind::Private => pb::ConversationKind::Private,
        Kind::Direct => pb::ConversationKind::Direct,
    };
    pb::Conversation {
        conversation_id: c.conversation_id,
        kind: kind as i32,
        title: c.title,
        created_by: c.created_by,
        created_at_ms: c.created_at_ms,
    }
}

/// A member and their role.
pub(crate) fn member(m: MemberState) -> pb::Member {
    pb::Member { user_id: m.user_id, role: role_to_pb(m.role) as i32 }
}

/// The protobuf form of a stored message.
pub(crate) fn message(m: StoredMessage) -> pb::Message {
    pb::Message {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        sender: m.sender,
        seq: m.seq,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        client_message_id: m.client_message_id,
    }
}

/// A stored message as a stream receives it (a resume's backfill).
pub(crate) fn stored_message(m: StoredMessage) -> SharedEvent {
    let facts = Facts::Message { conversation_id: m.conversation_id.clone(), seq: m.seq };
    shared(facts, PbEvent::Message(message(m)))
}

/// What a join shows its stream: who is online, the latest seq, and every
/// member's receipt positions.
pub(crate) fn presence_snapshot(
    conversation_id: &str,
    online: Vec<String>,
    last_seq: u64,
    members: Vec<MemberState>,
) -> SharedEvent {
    let receipts = members
        .into_iter()
        .map(|m| pb::ReceiptState { delivered_seq: m.delivered_up_to(), read_seq: m.read_seq, user_id: m.user_id })
        .collect();
    shared(
        Facts::Other,
        PbEvent::PresenceSnapshot(pb::PresenceSnapshot {
            conversation_id: conversation_id.to_owned(),
            online,
            last_seq,
            receipts,
        }),
    )
}

/// A leave, confirmed to the stream that left.
pub(crate) fn member_left(conversation_id: &str, user_id: &str) -> SharedEvent {
    shared(
        Facts::Other,
        PbEvent::MemberLeft(pb::MemberLeft {
            conversation_id: conversation_id.to_owned(),
            user_id: user_id.to_owned(),
        }),
    )
}

/// A send's answer once it is published.
pub(crate) fn send_accepted(
    request_id: String,
    conversation_id: String,
    client_message_id: String,
    accepted: Accepted,
) -> SharedEvent {
    shared(
        Facts::Other,
        PbEvent::SendAccepted(pb::SendAccepted {
            request_id,
            client_message_id,
            message_id: accepted.message_id,
            conversation_id,
            seq: accepted.seq,
            duplicate: accepted.duplicate,
        }),
    )
}

/// The first event of an `OpenSession` stream: the session's name, its
/// gateway, and when its token expires.
pub(crate) fn session_opened(session_id: &str, gateway_id: &str, expires_at_secs: u64) -> SharedEvent {
    let expires_at_ms = i64::try_from(expires_at_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    shared(
        Facts::Other,
        PbEvent::SessionOpened(pb::SessionOpened {
            session_id: session_id.to_owned(),
            gateway_id: gateway_id.to_owned(),
            expires_at_ms,
        }),
    )
}

/// A frame's error, answered on the stream (which goes on).
pub(crate) fn error_event(
    request_id: &str,
    conversation_id: &str,
    client_message_id: &str,
    err: &GatewayError,
) -> SharedEvent {
    tracing::debug!(request_id, conversation_id, code = ?err.code(), error = %err, "frame rejected");
    shared(
        Facts::Other,
        PbEvent::Error(pb::ErrorEvent {
            request_id: request_id.to_owned(),
            code: err.code() as i32,
            message: err.to_string(),
            conversation_id: conversation_id.to_owned(),
            client_message_id: client_message_id.to_owned(),
        }),
    )
}

/// The last event of a stream the gateway closes, with the resume points
/// (conversation, last seq given), and the status that ends it.
pub(crate) fn disconnect(reason: CloseReason, resume: Vec<(String, u64)>) -> (SharedEvent, Status) {
    let (pb_reason, code, detail, retry_after_ms) = match reason {
        CloseReason::SlowConsumer => (
            pb::disconnect::Reason::SlowConsumer,
            Code::ResourceExhausted,
            "the client did not read its stream fast enough; reconnect and resume",
            0,
        ),
        CloseReason::Shutdown => (
            pb::disconnect::Reason::Shutdown,
            Code::Unavailable,
            "the gateway is shutting down; reconnect (to any gateway) and resume",
            250,
        ),
        CloseReason::TokenExpired => (
            pb::disconnect::Reason::TokenExpired,
            Code::Unauthenticated,
            "the stream's token expired; reconnect with a fresh token and resume (send a refresh frame before expiry to keep a stream)",
            0,
        ),
    };
    let resume =
        resume.into_iter().map(|(conversation_id, last_seq)| pb::ResumePoint { conversation_id, last_seq }).collect();
    let event =
        PbEvent::Disconnect(pb::Disconnect { reason: pb_reason as i32, detail: detail.into(), retry_after_ms, resume });
    (shared(Facts::Other, event), Status::new(code, detail))
}

/// A user's view of one conversation, for `ListConversations`.
pub(crate) fn conversation_summary(c: ConversationInfo) -> pb::ConversationSummary {
    pb::ConversationSummary {
        unread: c.unread(),
        last_read_seq: c.last_read_seq,
        conversation_id: c.conversation_id,
        last_message: c.last_message.map(message),
    }
}

/// Where a message stands with one recipient, for `GetMessageStatus`.
pub(crate) fn recipient_status(r: RecipientStatus) -> pb::RecipientStatus {
    let status = match r.status {
        DeliveryStatus::Sent => pb::MessageStatus::Sent,
        DeliveryStatus::Delivered => pb::MessageStatus::Delivered,
        DeliveryStatus::Read => pb::MessageStatus::Read,
        DeliveryStatus::Failed => pb::MessageStatus::Failed,
    };
    pb::RecipientStatus {
        user_id: r.user_id,
        status: status as i32,
        delivered_at_ms: r.delivered_at_ms.unwrap_or(0),
        read_at_ms: r.read_at_ms.unwrap_or(0),
        failed_at_ms: r.failed_at_ms.unwrap_or(0),
        reason: r.reason,
    }
}

/// Tests hand the outbox protobuf events directly; their facts are read
/// back here, where protobuf may be read.
#[cfg(test)]
impl From<ServerEvent> for SharedEvent {
    fn from(event: ServerEvent) -> Self {
        let facts = match &event.event {
            Some(PbEvent::Message(m)) => Facts::Message { conversation_id: m.conversation_id.clone(), seq: m.seq },
            Some(PbEvent::Receipt(r)) => {
                let status = match pb::MessageStatus::try_from(r.status) {
                    Ok(pb::MessageStatus::Delivered) => Some(ReceiptStatus::Delivered),
                    Ok(pb::MessageStatus::Read) => Some(ReceiptStatus::Read),
                    Ok(pb::MessageStatus::Failed) => Some(ReceiptStatus::Failed),
                    _ => None,
                };
                match status {
                    Some(status) => Facts::Receipt {
                        conversation_id: r.conversation_id.clone(),
                        user_id: r.user_id.clone(),
                        status,
                        up_to_seq: r.up_to_seq,
                    },
                    None => Facts::Other,
                }
            }
            _ => Facts::Other,
        };
        SharedEvent::new(facts, EncodedServerEvent::new(&event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::envelope::{FallbackEvent, MessageEvent, ReceiptEvent};

    fn message_event(seq: u64) -> MessageEvent {
        MessageEvent {
            message_id: format!("m{seq}"),
            seq,
            sender: "alice".into(),
            body: "hi".into(),
            client_message_id: "c".into(),
            external_recipients: Vec::new(),
        }
    }

    #[test]
    fn frames_become_commands() {
        let frame = ClientFrame {
            request_id: "r1".into(),
            frame: Some(Frame::Send(pb::SendFrame {
                conversation_id: "room".into(),
                client_message_id: "c1".into(),
                body: "hello".into(),
            })),
        };
        let (request_id, command) = read_frame(frame);
        assert_eq!(request_id, "r1");
        let command = command.expect("a command");
        assert_eq!((command.conversation_id(), command.client_message_id()), ("room", "c1"));
        assert_eq!(read_frame(ClientFrame { request_id: "r2".into(), frame: None }), ("r2".into(), None));
        let refresh = ClientFrame {
            request_id: "r3".into(),
            frame: Some(Frame::Refresh(pb::RefreshTokenFrame { token: "t.o.k".into() })),
        };
        let (_, command) = read_frame(refresh);
        let command = command.expect("a command");
        assert_eq!(command, Command::Refresh { token: "t.o.k".into() });
        assert_eq!(command.conversation_id(), "");
    }

    #[test]
    fn bus_events_carry_their_facts_beside_the_encoding() {
        let envelope = Envelope::new("e".into(), "room".into(), "gw".into(), 7, Event::Message(message_event(4)));
        let out = bus_event(envelope).expect("for streams");
        assert_eq!(out.seq, Some(4));
        assert_eq!(out.event.facts(), &Facts::Message { conversation_id: "room".into(), seq: 4 });
        let decoded = out.event.wire().decode_event().expect("decodes");
        let Some(PbEvent::Message(m)) = decoded.event else { panic!("not a message") };
        assert_eq!((m.seq, m.sent_at_ms, m.conversation_id.as_str()), (4, 7, "room"));

        let receipt = ReceiptEvent {
            user_id: "bob".into(),
            status: ReceiptStatus::Read,
            up_to_seq: 3,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        };
        let out = bus_event(Envelope::new("r".into(), "room".into(), "gw".into(), 1, Event::Receipt(receipt)))
            .expect("for streams");
        assert_eq!(
            out.event.facts(),
            &Facts::Receipt {
                conversation_id: "room".into(),
                user_id: "bob".into(),
                status: ReceiptStatus::Read,
                up_to_seq: 3
            }
        );
        let typing = Event::Typing { user_id: "alice".into(), typing: true };
        let out = bus_event(Envelope::new("t".into(), "room".into(), "gw".into(), 1, typing)).expect("for streams");
        assert_eq!(out.skip_user.as_deref(), Some("alice"));
        let fallback = Event::Fallback(FallbackEvent {
            user_id: "bob".into(),
            to: "telegram:1".into(),
            message: message_event(1),
        });
        assert!(bus_event(Envelope::new("f".into(), "room".into(), "gw".into(), 1, fallback)).is_none());
    }

    mod props {
        use super::*;
        use chat_proto::pb::{AckFrame, JoinFrame, LeaveFrame, ReadFrame, SendFrame, TypingFrame};
        use proptest::prelude::*;
        use proptest::sample::Index;
        use prost::Message as _;

        /// Any text, kept short: edge cases are in the characters, not the length.
        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
        }

        fn command() -> impl Strategy<Value = Command> {
            prop_oneof![
                (text(), any::<Option<u64>>())
                    .prop_map(|(conversation_id, resume_after)| Command::Join { conversation_id, resume_after }),
                text().prop_map(|conversation_id| Command::Leave { conversation_id }),
                (text(), text(), text()).prop_map(|(conversation_id, client_message_id, body)| Command::Send {
                    conversation_id,
                    client_message_id,
                    body
                }),
                (text(), any::<bool>())
                    .prop_map(|(conversation_id, typing)| Command::Typing { conversation_id, typing }),
                (text(), any::<u64>()).prop_map(|(conversation_id, seq)| Command::Ack { conversation_id, seq }),
                (text(), any::<u64>()).prop_map(|(conversation_id, seq)| Command::Read { conversation_id, seq }),
                text().prop_map(|token| Command::Refresh { token }),
            ]
        }

        /// The frame a client sends for `command`.
        fn frame(command: Command) -> Frame {
            match command {
                Command::Join { conversation_id, resume_after } => {
                    Frame::Join(JoinFrame { conversation_id, resume_after_seq: resume_after })
                }
                Command::Leave { conversation_id } => Frame::Leave(LeaveFrame { conversation_id }),
                Command::Send { conversation_id, client_message_id, body } => {
                    Frame::Send(SendFrame { conversation_id, client_message_id, body })
                }
                Command::Typing { conversation_id, typing } => Frame::Typing(TypingFrame { conversation_id, typing }),
                Command::Ack { conversation_id, seq } => Frame::Ack(AckFrame { conversation_id, seq }),
                Command::Read { conversation_id, seq } => Frame::Read(ReadFrame { conversation_id, seq }),
                Command::Refresh { token } => Frame::Refresh(pb::RefreshTokenFrame { token }),
            }
        }

        /// What the gateway does with bytes off a stream: decode, then read.
        fn read_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
            if let Ok(decoded) = ClientFrame::decode(bytes) {
                let set = decoded.frame.is_some();
                let (_, command) = read_frame(decoded);
                prop_assert_eq!(command.is_some(), set);
                if let Some(command) = command {
                    // Sent again, it reads as the same command.
                    let again = ClientFrame { request_id: String::new(), frame: Some(frame(command.clone())) };
                    let again = ClientFrame::decode(again.encode_to_vec().as_slice());
                    prop_assert_eq!(again.ok().and_then(|f| read_frame(f).1), Some(command));
                }
            }
            Ok(())
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            let event = prop_oneof![
                (text(), any::<u64>(), text(), text()).prop_map(|(message_id, seq, sender, body)| Event::Message(
                    chat_core::envelope::MessageEvent {
                        message_id,
                        seq,
                        sender,
                        body,
                        client_message_id: String::new(),
                        external_recipients: Vec::new(),
                    }
                )),
                text().prop_map(|user_id| Event::MemberJoined { user_id }),
                (text(), any::<bool>()).prop_map(|(user_id, online)| Event::Presence { user_id, online }),
                (text(), any::<bool>()).prop_map(|(user_id, typing)| Event::Typing { user_id, typing }),
                (
                    text(),
                    prop::sample::select(vec![ReceiptStatus::Delivered, ReceiptStatus::Read, ReceiptStatus::Failed]),
                    any::<u64>()
                )
                    .prop_map(|(user_id, status, up_to_seq)| Event::Receipt(ReceiptEvent {
                        user_id,
                        status,
                        up_to_seq,
                        message_id: String::new(),
                        reason: "r".into(),
                        via: String::new(),
                        recorded: false,
                    })),
            ];
            (text(), any::<i64>(), event).prop_map(|(conversation_id, at_ms, event)| {
                Envelope::new("e".into(), conversation_id, "gw".into(), at_ms, event)
            })
        }

        proptest! {
            #[test]
            fn frames_round_trip_to_their_command(request_id in text(), command in command()) {
                let sent = ClientFrame { request_id: request_id.clone(), frame: Some(frame(command.clone())) };
                let decoded = ClientFrame::decode(sent.encode_to_vec().as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(read_frame(decoded), (request_id, Some(command)));
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
                read_bytes(&bytes)?;
            }

            #[test]
            fn mutated_frames_never_panic(
                command in command(),
                edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<bool>()), 1..4),
            ) {
                let mut bytes = ClientFrame { request_id: "r".into(), frame: Some(frame(command)) }.encode_to_vec();
                for (at, byte, cut) in edits {
                    let at = at.index(bytes.len() + 1);
                    match (cut, at < bytes.len()) {
                        (true, _) => bytes.truncate(at),
                        (false, true) => bytes[at] = byte,
                        (false, false) => bytes.push(byte),
                    }
                }
                read_bytes(&bytes)?;
            }

            /// A bus event reaches streams carrying what the envelope said,
            /// beside facts that agree with it.
            #[test]
            fn bus_events_keep_their_fields(envelope in envelope()) {
                let out = bus_event(envelope.clone()).ok_or_else(|| TestCaseError::fail("meant for streams"))?;
                let decoded = out.event.wire().decode_event().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let conversation_id = envelope.conversation_id.clone();
                match (envelope.event, decoded.event) {
                    (Event::Message(m), Some(PbEvent::Message(pb))) => {
                        prop_assert_eq!((pb.seq, pb.sent_at_ms, &pb.body, &pb.conversation_id), (m.seq, envelope.at_ms, &m.body, &conversation_id));
                        prop_assert_eq!(out.seq, Some(m.seq));
                        prop_assert_eq!(out.event.seq_in(&conversation_id), Some(m.seq));
                    }
                    (Event::MemberJoined { user_id }, Some(PbEvent::MemberJoined(pb))) => {
                        prop_assert_eq!((pb.user_id, pb.conversation_id), (user_id, conversation_id));
                    }
                    (Event::Presence { user_id, online }, Some(PbEvent::PresenceChanged(pb))) => {
                        prop_assert_eq!((pb.user_id, pb.online, pb.conversation_id), (user_id, online, conversation_id));
                    }
                    (Event::Typing { user_id, typing }, Some(PbEvent::Typing(pb))) => {
                        prop_assert_eq!(out.skip_user.as_deref(), Some(user_id.as_str()));
                        prop_assert_eq!((pb.user_id, pb.typing, pb.conversation_id), (user_id, typing, conversation_id));
                    }
                    (Event::Receipt(r), Some(PbEvent::Receipt(pb))) => {
                        prop_assert_eq!((pb.up_to_seq, pb.status, pb.at_ms), (r.up_to_seq, receipt_status(r.status) as i32, envelope.at_ms));
                        prop_assert_eq!(out.event.facts(), &Facts::Receipt { conversation_id, user_id: r.user_id, status: r.status, up_to_seq: r.up_to_seq });
                    }
                    (sent, got) => prop_assert!(false, "{:?} became {:?}", sent, got),
                }
            }
        }
    }
}
