//! Sessions opened by `OpenSession` (browsers, over gRPC-Web), by id, so
//! that `SendFrames` can write into them.
//!
//! A session is a `Connect` stream split in two: its events go out on the
//! `OpenSession` response, its frames come in through `SendFrames` calls
//! instead of a request stream. The frames a call brings are put on the
//! session's inbound channel, which [`Session::run`](crate::session::Session)
//! reads exactly as it reads a `Connect` stream's frames; so limits,
//! validation, answers and cleanup are the one implementation.
//!
//! A call's frames are queued all or none (a reservation of as many slots),
//! so a client that was told `UNAVAILABLE` retries them all and none is
//! handled twice. The entry is removed when its session ends; a call naming
//! it then is `NOT_FOUND`, like one naming another user's session or one on
//! another gateway, which a client answers by opening a new session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::pb::ClientFrame;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::GatewayError;

/// Frames one `SendFrames` call may bring, and so the inbound channel's
/// capacity: a call's frames are reserved at once.
pub(crate) const MAX_FRAMES_PER_CALL: usize = 64;

/// What a session reads its frames from: the same item type as a `Connect`
/// request stream.
pub(crate) type Inbound = tokio_stream::wrappers::ReceiverStream<Result<ClientFrame, Status>>;

#[derive(Debug)]
struct Entry {
    user_id: String,
    frames: mpsc::Sender<Result<ClientFrame, Status>>,
}

/// The open sessions of this gateway.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sessions {
    open: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Sessions {
    /// Registers session `id` of `user_id`; the returned stream is what the
    /// session reads its frames from. The entry lives until [`Self::remove`].
    pub(crate) fn open(&self, id: &str, user_id: &str) -> Inbound {
        let (frames, inbound) = mpsc::channel(MAX_FRAMES_PER_CALL);
        self.lock().insert(id.to_owned(), Entry { user_id: user_id.to_owned(), frames });
        tokio_stream::wrappers::ReceiverStream::new(inbound)
    }

    /// Forgets a session that ended.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Queues `frames` for session `id` of `user_id`, all or none, waiting
    /// at most `wait` for room.
    pub(crate) async fn send(
        &self,
        id: &str,
        user_id: &str,
        frames: Vec<ClientFrame>,
        wait: Duration,
    ) -> Result<(), GatewayError> {
        check_count(frames.len())?;
        let not_open = || {
            GatewayError::NotFound(format!(
                "session {id:?} is not open on this gateway (it ended, or is held by another gateway): \
                 open a new session and join again with resume_after_seq"
            ))
        };
        let sender = {
            let open = self.lock();
            let entry = open.get(id).filter(|e| e.user_id == user_id).ok_or_else(not_open)?;
            entry.frames.clone()
        };
        let permits = match tokio::time::timeout(wait, sender.reserve_many(frames.len())).await {
            Ok(Ok(permits)) => permits,
            // The session ended while this call waited.
            Ok(Err(_)) => return Err(not_open()),
            Err(_) => {
                return Err(GatewayError::Unavailable(format!(
                    "session {id:?} did not take the frames within {} ms (it is not keeping up); \
                     none was queued: retry them",
                    wait.as_millis()
                )));
            }
        };
        for (permit, frame) in permits.zip(frames) {
            permit.send(Ok(frame));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn check_count(count: usize) -> Result<(), GatewayError> {
    if count == 0 {
        return Err(GatewayError::InvalidArgument("frames is empty: send 1 to 64 frames per call".into()));
    }
    if count > MAX_FRAMES_PER_CALL {
        return Err(GatewayError::InvalidArgument(format!(
            "{count} frames in one call; at most {MAX_FRAMES_PER_CALL}: split them over calls, in order"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::pb::{TypingFrame, client_frame::Frame};
    use futures::StreamExt;
    use tonic::Code;

    fn typing(id: &str) -> ClientFrame {
        ClientFrame {
            request_id: id.into(),
            frame: Some(Frame::Typing(TypingFrame { conversation_id: "r".into(), typing: true })),
        }
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn frames_reach_their_session_in_order() {
        let sessions = Sessions::default();
        let mut inbound = sessions.open("s1", "alice");
        sessions.send("s1", "alice", vec![typing("a"), typing("b")], WAIT).await.expect("queued");
        sessions.send("s1", "alice", vec![typing("c")], WAIT).await.expect("queued");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(inbound.next().await.expect("a frame").expect("ok").request_id);
        }
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn another_users_unknown_or_ended_session_is_not_found() {
        let sessions = Sessions::default();
        let inbound = sessions.open("s1", "alice");
        let code = |r: Result<(), GatewayError>| r.expect_err("refused").code();
        assert_eq!(code(sessions.send("s1", "bob", vec![typing("a")], WAIT).await), Code::NotFound);
        assert_eq!(code(sessions.send("s2", "alice", vec![typing("a")], WAIT).await), Code::NotFound);
        // The session's reader is gone (it ended) before it was removed.
        drop(inbound);
        let err = sessions.send("s1", "alice", vec![typing("a")], WAIT).await.expect_err("ended");
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.to_string().contains("open a new session"), "{err}");
        sessions.remove("s1");
        assert!(sessions.lock().is_empty());
    }

    #[tokio::test]
    async fn frame_counts_are_checked() {
        let sessions = Sessions::default();
        let _inbound = sessions.open("s1", "alice");
        let err = sessions.send("s1", "alice", vec![], WAIT).await.expect_err("empty");
        assert_eq!(err.code(), Code::InvalidArgument);
        let many = (0..=MAX_FRAMES_PER_CALL).map(|i| typing(&i.to_string())).collect();
        let err = sessions.send("s1", "alice", many, WAIT).await.expect_err("too many");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_not_reading_refuses_a_call_whole_at_the_deadline() {
        let sessions = Sessions::default();
        let mut inbound = sessions.open("s1", "alice");
        let full = (0..MAX_FRAMES_PER_CALL - 1).map(|i| typing(&i.to_string())).collect();
        sessions.send("s1", "alice", full, WAIT).await.expect("room for 63");
        let started = tokio::time::Instant::now();
        let err = sessions.send("s1", "alice", vec![typing("x"), typing("y")], WAIT).await.expect_err("no room");
        assert_eq!((err.code(), started.elapsed()), (Code::Unavailable, WAIT));
        // None of the refused call's frames was queued: the 64th slot is free.
        sessions.send("s1", "alice", vec![typing("z")], WAIT).await.expect("one slot");
        let mut last = String::new();
        for _ in 0..MAX_FRAMES_PER_CALL {
            last = inbound.next().await.expect("a frame").expect("ok").request_id;
        }
        assert_eq!(last, "z");
    }
}
