//! Authentication of gRPC calls: a tonic interceptor that verifies the JWT
//! bearer token in the `authorization` metadata and attaches the caller's
//! [`AuthedUser`] to the request. Missing or bad tokens are `UNAUTHENTICATED`.

use std::sync::Arc;

use chat_proto::token::{TokenError, Verifier};
use tonic::{Request, Status};

/// The authenticated caller, as found in request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthedUser(pub String);

/// Extracts and verifies the bearer token of `metadata`'s `authorization`.
pub(crate) fn authenticate(verifier: &Verifier, authorization: Option<&str>) -> Result<AuthedUser, Status> {
    let header = authorization.ok_or_else(|| {
        Status::unauthenticated("missing `authorization` metadata; send `authorization: Bearer <jwt>`")
    })?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("`authorization` must be `Bearer <jwt>`"))?;
    let claims = verifier.verify(token).map_err(|e| match e {
        TokenError::Expired => Status::unauthenticated("token expired; get a new one"),
        other => Status::unauthenticated(format!("invalid token: {other}")),
    })?;
    chat_core::limits::user_id(&claims.sub).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok(AuthedUser(claims.sub))
}

/// The interceptor installed in front of `ChatService`.
pub(crate) fn interceptor(verifier: Arc<Verifier>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request.metadata().get("authorization").map(|v| v.to_str());
        let header = match header {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => return Err(Status::unauthenticated("`authorization` metadata is not ASCII")),
            None => None,
        };
        let user = authenticate(&verifier, header)?;
        request.extensions_mut().insert(user);
        Ok(request)
    }
}

/// The caller of a request that passed the interceptor.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<AuthedUser, Status> {
    request
        .extensions()
        .get::<AuthedUser>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    fn verifier() -> Verifier {
        Verifier::new(b"secret", "iss", "aud").expect("verifier")
    }

    fn token(user: &str) -> String {
        chat_proto::token::mint(b"secret", user, "iss", "aud", Duration::from_secs(60)).expect("mint")
    }

    #[test]
    fn accepts_bearer_tokens() {
        let header = format!("Bearer {}", token("alice"));
        assert_eq!(authenticate(&verifier(), Some(&header)).expect("ok"), AuthedUser("alice".into()));
    }

    #[test]
    fn rejects_missing_malformed_and_forged() {
        let cases = [
            None,
            Some("".to_string()),
            Some("Bearer ".to_string()),
            Some(format!("Basic {}", token("alice"))),
            Some("Bearer garbage".to_string()),
            Some(format!("Bearer {}x", token("alice"))),
            Some(format!("Bearer {}", token("bad user"))),
        ];
        for header in cases {
            let err = authenticate(&verifier(), header.as_deref()).expect_err("rejected");
            assert_eq!(err.code(), Code::Unauthenticated, "{header:?}");
        }
    }
}
