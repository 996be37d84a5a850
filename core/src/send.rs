//! A send, from checked input to its bus event: the rules every entry point
//! (a gateway's stream or unary call, the webhook's inbound channel message)
//! shares, so none restates them.

use crate::envelope::{Envelope, Event, MessageEvent};
use crate::limits::{self, LimitError};
use crate::store::{Accepted, SendRequest, Sequencer, StoreError, StoredMessage};

/// A send whose shape has been checked: only [`Send::new`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Send<'a> {
    conversation_id: &'a str,
    client_message_id: &'a str,
    body: &'a str,
}

/// A checked send that owns its text, for work that outlives the request
/// (publishing after the stream moved on).
#[derive(Debug, Clone)]
pub struct OwnedSend {
    conversation_id: String,
    client_message_id: String,
    body: String,
}

impl OwnedSend {
    pub fn as_send(&self) -> Send<'_> {
        Send { conversation_id: &self.conversation_id, client_message_id: &self.client_message_id, body: &self.body }
    }

    /// The conversation and client message ids, moved out (for the answer
    /// to the send once it is published).
    pub fn into_ids(self) -> (String, String) {
        (self.conversation_id, self.client_message_id)
    }
}

impl<'a> Send<'a> {
    /// Checks a send's shape: ids, and a body of at most `max_body_bytes`.
    pub fn new(
        conversation_id: &'a str,
        client_message_id: &'a str,
        body: &'a str,
        max_body_bytes: usize,
    ) -> Result<Self, LimitError> {
        limits::conversation_id(conversation_id)?;
        limits::client_message_id(client_message_id)?;
        limits::body(body, max_body_bytes)?;
        Ok(Self { conversation_id, client_message_id, body })
    }

    pub fn conversation_id(&self) -> &'a str {
        self.conversation_id
    }

    /// Empty: not idempotent.
    pub fn client_message_id(&self) -> &'a str {
        self.client_message_id
    }

    pub fn body(&self) -> &'a str {
        self.body
    }

    pub fn to_owned_send(&self) -> OwnedSend {
        OwnedSend {
            conversation_id: self.conversation_id.to_owned(),
            client_message_id: self.client_message_id.to_owned(),
            body: self.body.to_owned(),
        }
    }
}

/// Gives a checked send from `sender` its identity and `seq` (a fresh ULID
/// unless its `client_message_id` was accepted before), accepted by `origin`.
pub async fn accept(
    sequencer: &dyn Sequencer,
    origin: &str,
    sender: &str,
    send: &Send<'_>,
) -> Result<Accepted, StoreError> {
    sequencer.accept_send(request(origin, sender, send)).await
}

/// Records an accepted send before it is published; the identity to
/// publish and answer with (a new seq if its first was voided meanwhile).
pub async fn record(
    sequencer: &dyn Sequencer,
    origin: &str,
    sender: &str,
    send: &Send<'_>,
    accepted: Accepted,
) -> Result<Accepted, StoreError> {
    sequencer.record_send(request(origin, sender, send), accepted).await
}

fn request<'a>(origin: &'a str, sender: &'a str, send: &Send<'a>) -> SendRequest<'a> {
    SendRequest {
        conversation_id: send.conversation_id,
        sender,
        client_message_id: send.client_message_id,
        body: send.body,
        new_message_id: ulid::Ulid::new().to_string(),
        now_ms: crate::clock::now_ms(),
        origin,
    }
}

/// The bus event of an accepted message; its event id is the message id, so
/// a republished message is the same event.
pub fn message_envelope(origin: &str, sender: &str, send: &Send<'_>, accepted: &Accepted) -> Envelope {
    Envelope::new(
        accepted.message_id.clone(),
        send.conversation_id.to_owned(),
        origin.to_owned(),
        accepted.accepted_at_ms,
        Event::Message(MessageEvent {
            message_id: accepted.message_id.clone(),
            seq: accepted.seq,
            sender: sender.to_owned(),
            body: send.body.to_owned(),
            client_message_id: send.client_message_id.to_owned(),
            external_recipients: accepted.external_recipients.clone(),
        }),
    )
    .under_members_version(accepted.members_version)
}

/// The bus event of a message read back from the store (a settled gap): the
/// same event id as its published copy, so whichever comes second is a
/// duplicate.
pub fn recorded_envelope(origin: &str, message: StoredMessage) -> Envelope {
    let StoredMessage {
        conversation_id,
        seq,
        message_id,
        sender,
        body,
        sent_at_ms,
        client_message_id,
        members_version,
    } = message;
    Envelope::new(
        message_id.clone(),
        conversation_id,
        origin.to_owned(),
        sent_at_ms,
        Event::Message(MessageEvent {
            message_id,
            seq,
            sender,
            body,
            client_message_id,
            // Only functions deliver to external members, and they read the
            // published copy.
            external_recipients: Vec::new(),
        }),
    )
    .under_members_version(members_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    #[test]
    fn a_send_is_checked_once_for_every_entry_point() {
        assert!(Send::new("room", "c-1", "hi", 8).is_ok());
        assert!(matches!(Send::new("bad room", "", "hi", 8), Err(LimitError::Invalid(_))));
        assert!(matches!(Send::new("room", "a b", "hi", 8), Err(LimitError::Invalid(_))));
        assert!(matches!(Send::new("room", "", "123456789", 8), Err(LimitError::TooLarge(_))));
    }

    #[tokio::test]
    async fn accepted_send_becomes_its_message_event() {
        let store = MemoryStore::new();
        let send = Send::new("room", "c-1", "hello", 64).expect("valid");
        let accepted = accept(&store, "gw-a", "alice", &send).await.expect("accepted");
        let envelope = message_envelope("gw-a", "alice", &send, &accepted);
        assert_eq!(envelope.event_id, accepted.message_id);
        assert_eq!(envelope.origin, "gw-a");
        let Event::Message(m) = envelope.event else { panic!("not a message") };
        assert_eq!(
            (m.seq, m.sender.as_str(), m.body.as_str(), m.client_message_id.as_str()),
            (1, "alice", "hello", "c-1")
        );
        let again = accept(&store, "gw-a", "alice", &send).await.expect("retry");
        assert!(again.duplicate);
        assert_eq!(again.message_id, accepted.message_id);
    }

    #[tokio::test]
    async fn a_recorded_message_settles_as_the_event_it_was_published_as() {
        use crate::store::{History, Settled};
        let store = MemoryStore::new();
        let send = Send::new("room", "", "hello", 64).expect("valid");
        let accepted = accept(&store, "gw-a", "alice", &send).await.expect("accepted");
        let Ok(Settled::Message(stored)) = store.settle("room", accepted.seq).await else { panic!("not recorded") };
        assert_eq!(recorded_envelope("gw-a", stored), message_envelope("gw-a", "alice", &send, &accepted));
        assert_eq!(store.settle("room", accepted.seq + 1).await, Ok(Settled::Void));
        let next = accept(&store, "gw-a", "alice", &send).await.expect("accepted");
        assert_eq!(next.seq, accepted.seq + 2, "a void seq is never given out");
    }
}
