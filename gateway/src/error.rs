//! The gateway's error type and its one mapping to gRPC statuses.
//!
//! Each variant is a gRPC code; the text is what the client reads, so it says
//! what was wrong and, where it helps, what to do.

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// A dependency (bus, store) failed in a way a retry may fix.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn code(&self) -> Code {
        match self {
            GatewayError::Unauthenticated(_) => Code::Unauthenticated,
            GatewayError::InvalidArgument(_) => Code::InvalidArgument,
            GatewayError::ResourceExhausted(_) => Code::ResourceExhausted,
            GatewayError::PermissionDenied(_) => Code::PermissionDenied,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::AlreadyExists(_) => Code::AlreadyExists,
            GatewayError::NotFound(_) => Code::NotFound,
            GatewayError::Unavailable(_) => Code::Unavailable,
            GatewayError::Internal(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<crate::store::StoreError> for GatewayError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::ClientMessageIdReused => GatewayError::AlreadyExists(err.to_string()),
            StoreError::Unavailable(_) => GatewayError::Unavailable(format!(
                "storage is unavailable ({err}); retry with the same client_message_id"
            )),
            StoreError::Corrupt(_) => GatewayError::Internal(err.to_string()),
            StoreError::NotMember => GatewayError::PermissionDenied(err.to_string()),
        }
    }
}

impl From<crate::bus::BusError> for GatewayError {
    fn from(err: crate::bus::BusError) -> Self {
        GatewayError::Unavailable(format!("publishing failed ({err}); retry with the same client_message_id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let status = Status::from(GatewayError::PermissionDenied("not a member of room1".into()));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "not a member of room1");
    }

    #[test]
    fn dependency_failures_are_retryable_unavailable() {
        let err = GatewayError::from(crate::bus::BusError::Publish("timeout".into()));
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("retry"));
        let err = GatewayError::from(crate::store::StoreError::ClientMessageIdReused);
        assert_eq!(err.code(), Code::AlreadyExists);
    }
}
