//! Bearer tokens: HS256 JWTs whose `sub` is the user id.
//!
//! The gateway verifies them ([`Verifier`]); `chat token` and the test
//! harness mint them ([`mint`]) for local use. In production tokens come from
//! the product's identity provider signed with the shared secret the gateway
//! is configured with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Default `iss` for locally minted tokens.
pub const DEFAULT_ISSUER: &str = "chat-local";
/// Default `aud` for locally minted tokens.
pub const DEFAULT_AUDIENCE: &str = "chat";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the signing secret is empty")]
    EmptySecret,
    #[error("the user id is empty")]
    EmptySubject,
    #[error("token expired")]
    Expired,
    #[error("token rejected: {0}")]
    Invalid(String),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Mints a token for `user` valid for `ttl`.
pub fn mint(secret: &[u8], user: &str, issuer: &str, audience: &str, ttl: Duration) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::EmptySecret);
    }
    if user.is_empty() {
        return Err(TokenError::EmptySubject);
    }
    let iat = now_secs();
    let claims = Claims {
        sub: user.to_owned(),
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Checks signature, `exp`, `iss` and `aud`, and yields the claims.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iss", &self.validation.iss)
            .field("aud", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self { key: DecodingKey::from_secret(secret), validation })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        })?;
        if data.claims.sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-of-some-length";

    fn verifier() -> Verifier {
        Verifier::new(SECRET, DEFAULT_ISSUER, DEFAULT_AUDIENCE).expect("verifier")
    }

    #[test]
    fn minted_token_verifies_to_its_user() {
        let token = mint(SECRET, "alice", DEFAULT_ISSUER, DEFAULT_AUDIENCE, Duration::from_secs(60)).expect("mint");
        assert_eq!(verifier().verify(&token).expect("valid").sub, "alice");
    }

    #[test]
    fn wrong_secret_issuer_audience_are_rejected() {
        let ttl = Duration::from_secs(60);
        let bad = [
            mint(b"other-secret", "alice", DEFAULT_ISSUER, DEFAULT_AUDIENCE, ttl),
            mint(SECRET, "alice", "someone-else", DEFAULT_AUDIENCE, ttl),
            mint(SECRET, "alice", DEFAULT_ISSUER, "other-audience", ttl),
        ];
        for token in bad {
            let token = token.expect("mint");
            assert!(matches!(verifier().verify(&token), Err(TokenError::Invalid(_))));
        }
        assert!(verifier().verify("not.a.jwt").is_err());
        assert!(verifier().verify("").is_err());
    }

    #[test]
    fn expired_token_is_rejected() {
        let claims =
            Claims { sub: "alice".into(), iss: DEFAULT_ISSUER.into(), aud: DEFAULT_AUDIENCE.into(), iat: 1, exp: 2 };
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).expect("encode");
        assert!(matches!(verifier().verify(&token), Err(TokenError::Expired)));
    }

    #[test]
    fn empty_inputs_are_refused() {
        let ttl = Duration::from_secs(60);
        assert!(matches!(mint(b"", "a", "i", "a", ttl), Err(TokenError::EmptySecret)));
        assert!(matches!(mint(SECRET, "", "i", "a", ttl), Err(TokenError::EmptySubject)));
        assert!(Verifier::new(b"", "i", "a").is_err());
    }
}
