//! A cancellation token whose check takes no lock.
//!
//! `CancellationToken::is_cancelled` locks the token's node each time. The
//! outbox asks on every delivery and a connection on every read and write,
//! which cost a few % of the gateway's CPU at load: [`Closing`] answers from
//! an atomic set with the token, and still gives the token to wait on.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub(crate) struct Closing {
    token: CancellationToken,
    cancelled: AtomicBool,
}

impl Closing {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The token, to wait on.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}
