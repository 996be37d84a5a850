//! Authentication of gRPC calls: [`Authenticated`] wraps `ChatService` and
//! verifies the JWT bearer token in the `authorization` metadata of every
//! call before it reaches the service, attaching the caller's
//! [`AuthedUser`] and the token's [`TokenExpiry`] to the request. Missing or
//! bad tokens are `UNAUTHENTICATED`.
//!
//! [`Authenticator`] is the one place tokens are checked: at the start of a
//! call and when a stream refreshes its token. With a JWKS URL configured, a
//! token naming a key not held yet makes it fetch the key set (bounded by
//! `jwks::RefreshGate`) and verify once more; that is why this is a service
//! wrapper and not a (synchronous) tonic interceptor.

use std::sync::Arc;
use std::task::{Context, Poll};

use chat_proto::token::{Identity, KeySet, TokenError, Verifier};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::{Request, Status};

use crate::jwks::KeyCache;

/// The authenticated caller, as found in request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthedUser(pub String);

/// When the caller's token expires (`exp`, seconds since the epoch), as
/// found in request extensions beside [`AuthedUser`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenExpiry(pub u64);

/// Verifies tokens: with the shared secret, or against the identity
/// provider's keys (cached, fetched again for an unknown `kid`).
#[derive(Debug)]
pub(crate) struct Authenticator {
    verifier: Verifier,
    keys: Option<Arc<KeyCache>>,
}

impl Authenticator {
    /// HS256 with the shared secret: no key set.
    pub(crate) fn with_secret(verifier: Verifier) -> Self {
        Self { verifier, keys: None }
    }

    /// RS256/ES256 against the identity provider's keys.
    pub(crate) fn with_keys(verifier: Verifier, keys: Arc<KeyCache>) -> Self {
        Self { verifier, keys: Some(keys) }
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Verifies a token; an unknown `kid` fetches the key set (when allowed)
    /// and verifies once more.
    pub(crate) async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let Some(cache) = &self.keys else { return self.verifier.verify(token, &KeySet::default()) };
        match self.verifier.verify(token, &cache.current()) {
            Err(TokenError::UnknownKey(kid)) => {
                cache.refresh_for(&kid).await;
                self.verifier.verify(token, &cache.current())
            }
            other => other,
        }
    }

    /// Verifies a token and checks its user id, as a gRPC status on failure.
    pub(crate) async fn identify(&self, token: &str) -> Result<Identity, Status> {
        let identity = self.verify(token).await.map_err(|e| match e {
            TokenError::Expired => Status::unauthenticated("token expired; get a new one"),
            other => Status::unauthenticated(format!("invalid token: {other}")),
        })?;
        chat_core::limits::user_id(&identity.user).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(identity)
    }

    /// Extracts and verifies the bearer token of an `authorization` value.
    pub(crate) async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, Status> {
        self.identify(bearer(authorization)?).await
    }
}

/// The token of an `authorization: Bearer <jwt>` value.
fn bearer(authorization: Option<&str>) -> Result<&str, Status> {
    let header = authorization.ok_or_else(|| {
        Status::unauthenticated("missing `authorization` metadata; send `authorization: Bearer <jwt>`")
    })?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("`authorization` must be `Bearer <jwt>`"))
}

/// A service whose every call is authenticated first (the one installed in
/// front of `ChatService`).
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, auth: Arc<Authenticator>) -> Self {
        Self { inner, auth }
    }
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let header = match request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str()) {
                Some(Ok(value)) => Some(value.to_owned()),
                Some(Err(_)) => {
                    return Ok(Status::unauthenticated("`authorization` metadata is not ASCII").into_http());
                }
                None => None,
            };
            match auth.authenticate(header.as_deref()).await {
                Ok(identity) => {
                    request.extensions_mut().insert(AuthedUser(identity.user));
                    request.extensions_mut().insert(TokenExpiry(identity.expires_at));
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// The caller of a request that passed [`Authenticated`].
pub(crate) fn caller<T>(request: &Request<T>) -> Result<AuthedUser, Status> {
    request
        .extensions()
        .get::<AuthedUser>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

/// When the token of a request that passed [`Authenticated`] expires.
pub(crate) fn expiry<T>(request: &Request<T>) -> Result<TokenExpiry, Status> {
    request
        .extensions()
        .get::<TokenExpiry>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    fn authenticator() -> Authenticator {
        Authenticator::with_secret(Verifier::new(b"secret", "iss", "aud").expect("verifier"))
    }

    fn token(user: &str) -> String {
        chat_proto::token::mint(b"secret", user, "iss", "aud", Duration::from_secs(60)).expect("mint")
    }

    #[tokio::test]
    async fn accepts_bearer_tokens() {
        let header = format!("Bearer {}", token("alice"));
        let identity = authenticator().authenticate(Some(&header)).await.expect("ok");
        assert_eq!(identity.user, "alice");
        assert!(identity.expires_at > 0);
    }

    #[tokio::test]
    async fn rejects_missing_malformed_and_forged() {
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
            let err = authenticator().authenticate(header.as_deref()).await.expect_err("rejected");
            assert_eq!(err.code(), Code::Unauthenticated, "{header:?}");
        }
    }

    /// The wrapper lets an authenticated call through with its caller and
    /// expiry attached, and answers any other with `UNAUTHENTICATED` without
    /// calling the service.
    #[tokio::test]
    async fn the_wrapper_authenticates_before_the_service() {
        #[derive(Clone)]
        struct Echo;
        impl Service<http::Request<()>> for Echo {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: http::Request<()>) -> Self::Future {
                let user = request.extensions().get::<AuthedUser>().cloned();
                let expiry = request.extensions().get::<TokenExpiry>().copied();
                let answer = format!("{user:?} {}", expiry.map(|e| e.0 > 0).unwrap_or(false));
                let mut response = http::Response::new(tonic::body::Body::empty());
                response.headers_mut().insert("x-seen", answer.parse().expect("header"));
                std::future::ready(Ok(response))
            }
        }
        let mut service = Authenticated::new(Echo, Arc::new(authenticator()));
        let request = http::Request::builder()
            .header("authorization", format!("Bearer {}", token("alice")))
            .body(())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        assert_eq!(response.headers()["x-seen"], "Some(AuthedUser(\"alice\")) true");
        let response = service.call(http::Request::new(())).await.expect("infallible");
        assert!(response.headers().get("x-seen").is_none());
        assert_eq!(response.headers()["grpc-status"], (Code::Unauthenticated as i32).to_string().as_str());
    }
}
