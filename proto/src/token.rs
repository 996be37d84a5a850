//! Bearer tokens: JWTs whose `sub` is the user id.
//!
//! A gateway trusts tokens one of two ways, never both at once:
//! - **HS256** with a shared secret ([`Verifier::new`]): local development,
//!   `make run` and the tests, where `chat token` and the harness mint them
//!   ([`mint`]);
//! - **RS256 / ES256** from an identity provider (Cognito, Auth0, any OIDC
//!   provider), checked against the public keys it publishes as a JWKS
//!   ([`Verifier::jwks`] with a [`KeySet`]). Fetching and caching that set is
//!   the gateway's job; everything here is pure.
//!
//! Either way `iss` and `aud` are pinned and `exp` is required. The token's
//! `alg` must be the one its key is for, so `alg: none`, an HS256 token when
//! a key set is trusted (a public key misused as an HMAC secret), or an
//! RS256 token naming an EC key are refused.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Default `iss` for locally minted tokens.
pub const DEFAULT_ISSUER: &str = "chat-local";
/// Default `aud` for locally minted tokens.
pub const DEFAULT_AUDIENCE: &str = "chat";
/// Default clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// RSA keys shorter than this (bits) are not trusted.
const MIN_RSA_BITS: usize = 2048;

/// What [`mint`] signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// Who a verified token speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the signing secret is empty")]
    EmptySecret,
    #[error("the user id is empty")]
    EmptySubject,
    #[error("token expired")]
    Expired,
    /// The token names a key the trusted set does not hold (yet): the caller
    /// may refresh the set and try again.
    #[error("token signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("key set rejected: {0}")]
    KeySet(String),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Mints an HS256 token for `user` valid for `ttl`.
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

/// A token's `exp`, read without verifying anything: for a client deciding
/// when to fetch a fresh token, never for trusting one.
pub fn unverified_expiry(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Exp>(token.trim()).ok().map(|c| c.exp)
}

/// A public key of the identity provider and the one algorithm it verifies.
#[derive(Clone)]
struct TrustedKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The identity provider's signing keys by `kid`, from its JWKS document.
///
/// Only signature keys are kept: RSA (at least 2048 bits) for RS256 and EC
/// P-256 for ES256, each with a `kid`, and with `alg` (when present) saying
/// the same. Anything else in the document (encryption keys, other curves,
/// symmetric `oct` keys) is skipped, never trusted.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<(&String, Algorithm)> = self.keys.iter().map(|(kid, k)| (kid, k.alg)).collect();
        kids.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

/// A JWKS document, each key kept as raw JSON so that one key this crate
/// cannot read does not make the whole set unreadable.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`). Returns the set and, for
    /// the log, why each skipped key was skipped. A document that is not a
    /// JWKS at all is an error; one with no usable key is an empty set.
    pub fn from_json(document: &[u8]) -> Result<(Self, Vec<String>), TokenError> {
        let raw: RawKeySet =
            serde_json::from_slice(document).map_err(|e| TokenError::KeySet(format!("not a JWKS document: {e}")))?;
        let mut keys = HashMap::new();
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            match trusted_key(value) {
                Ok((kid, key)) => match keys.entry(kid) {
                    std::collections::hash_map::Entry::Occupied(taken) => {
                        skipped.push(format!("key {index}: kid {:?} repeats an earlier key", taken.key()));
                    }
                    std::collections::hash_map::Entry::Vacant(free) => {
                        free.insert(key);
                    }
                },
                Err(why) => skipped.push(format!("key {index}: {why}")),
            }
        }
        Ok((Self { keys }, skipped))
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids held, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }
}

/// One JWKS entry as a trusted key, or why it is not one.
fn trusted_key(value: serde_json::Value) -> Result<(String, TrustedKey), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("unreadable: {e}"))?;
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty()).ok_or("no kid")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("kid {kid:?}: use {other:?}, not sig")),
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|e| format!("kid {kid:?}: bad modulus: {e}"))?;
            let bits = significant_bits(&modulus);
            if bits < MIN_RSA_BITS {
                return Err(format!("kid {kid:?}: RSA key of {bits} bits, under {MIN_RSA_BITS}"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(ec) => return Err(format!("kid {kid:?}: curve {:?} unsupported", ec.curve)),
        _ => return Err(format!("kid {kid:?}: key type unsupported (RSA and EC P-256 only)")),
    };
    if let Some(declared) = jwk.common.key_algorithm
        && declared != alg.into()
    {
        return Err(format!("kid {kid:?}: alg {declared} is not {alg:?}"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("kid {kid:?}: {e}"))?;
    Ok((kid, TrustedKey { alg, key }))
}

/// Bits of a big-endian unsigned integer, leading zeros not counted.
fn significant_bits(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|b| *b != 0) else { return 0 };
    (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize
}

/// How tokens are trusted.
#[derive(Clone)]
enum Trust {
    Secret(DecodingKey),
    KeySet,
}

/// Checks signature, `alg`, `exp`, `iss` and `aud`, and yields the
/// [`Identity`].
#[derive(Clone)]
pub struct Verifier {
    trust: Trust,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trust = match self.trust {
            Trust::Secret(_) => "HS256 secret",
            Trust::KeySet => "JWKS (RS256, ES256)",
        };
        f.debug_struct("Verifier")
            .field("trust", &trust)
            .field("iss", &self.issuer)
            .field("aud", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// What verification reads of the claims (`aud` may be a string or a list,
/// so the library checks it and this does not read it).
#[derive(Deserialize)]
struct Verified {
    sub: String,
    exp: u64,
}

impl Verifier {
    /// Trusts HS256 tokens signed with `secret` (and nothing else).
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        Ok(Self {
            trust: Trust::Secret(DecodingKey::from_secret(secret)),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: DEFAULT_LEEWAY_SECS,
        })
    }

    /// Trusts RS256 and ES256 tokens signed by a key of the [`KeySet`]
    /// given to [`verify`](Self::verify) (and nothing else).
    pub fn jwks(issuer: &str, audience: &str) -> Self {
        Self {
            trust: Trust::KeySet,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: DEFAULT_LEEWAY_SECS,
        }
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Whether tokens are checked against a key set (rather than a secret).
    pub fn uses_key_set(&self) -> bool {
        matches!(self.trust, Trust::KeySet)
    }

    /// Verifies `token`; `keys` is read only when a key set is trusted.
    pub fn verify(&self, token: &str, keys: &KeySet) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let (alg, key) = match &self.trust {
            Trust::Secret(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(TokenError::Invalid(format!("alg {:?} is not accepted here (HS256 only)", header.alg)));
                }
                (Algorithm::HS256, key)
            }
            Trust::KeySet => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(TokenError::Invalid(format!(
                        "alg {:?} is not accepted here (RS256 or ES256 only)",
                        header.alg
                    )));
                }
                let kid = header.kid.filter(|k| !k.is_empty()).ok_or_else(|| TokenError::Invalid("no kid".into()))?;
                let trusted = keys.keys.get(&kid).ok_or(TokenError::UnknownKey(kid.clone()))?;
                if trusted.alg != header.alg {
                    return Err(TokenError::Invalid(format!(
                        "alg {:?} does not match key {kid:?} ({:?})",
                        header.alg, trusted.alg
                    )));
                }
                (trusted.alg, &trusted.key)
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Verified>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        })?;
        if data.claims.sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        Ok(Identity { user: data.claims.sub, expires_at: data.claims.exp })
    }

    /// How long from `now_ms` (milliseconds since the epoch) a token that
    /// expires at `expires_at` stays acceptable: until `exp` plus the
    /// leeway, the same instant [`verify`](Self::verify) starts refusing it.
    /// Capped at `cap` so no far-future `exp` overflows a timer.
    pub fn remaining(&self, expires_at: u64, now_ms: i64, cap: Duration) -> Duration {
        let end_ms = i128::from(expires_at.saturating_add(self.leeway)) * 1000;
        let left_ms = (end_ms - i128::from(now_ms)).max(0);
        Duration::from_millis(u64::try_from(left_ms).unwrap_or(u64::MAX)).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;

    const SECRET: &[u8] = b"test-secret-of-some-length";
    const ISS: &str = "https://idp.example";
    const AUD: &str = "chat-api";

    fn verifier() -> Verifier {
        Verifier::new(SECRET, DEFAULT_ISSUER, DEFAULT_AUDIENCE).expect("verifier")
    }

    fn none() -> KeySet {
        KeySet::default()
    }

    #[test]
    fn minted_token_verifies_to_its_user() {
        let token = mint(SECRET, "alice", DEFAULT_ISSUER, DEFAULT_AUDIENCE, Duration::from_secs(60)).expect("mint");
        let identity = verifier().verify(&token, &none()).expect("valid");
        assert_eq!(identity.user, "alice");
        assert!(identity.expires_at >= now_secs() + 59);
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
            assert!(matches!(verifier().verify(&token, &none()), Err(TokenError::Invalid(_))));
        }
        assert!(verifier().verify("not.a.jwt", &none()).is_err());
        assert!(verifier().verify("", &none()).is_err());
    }

    #[test]
    fn expired_token_is_rejected() {
        let claims =
            Claims { sub: "alice".into(), iss: DEFAULT_ISSUER.into(), aud: DEFAULT_AUDIENCE.into(), iat: 1, exp: 2 };
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).expect("encode");
        assert!(matches!(verifier().verify(&token, &none()), Err(TokenError::Expired)));
    }

    #[test]
    fn empty_inputs_are_refused() {
        let ttl = Duration::from_secs(60);
        assert!(matches!(mint(b"", "a", "i", "a", ttl), Err(TokenError::EmptySecret)));
        assert!(matches!(mint(SECRET, "", "i", "a", ttl), Err(TokenError::EmptySubject)));
        assert!(Verifier::new(b"", "i", "a").is_err());
    }

    /// A signing key made for the test (never stored) and its JWK.
    struct TestKey {
        kid: String,
        alg: Algorithm,
        key: EncodingKey,
        jwk: serde_json::Value,
    }

    impl TestKey {
        fn es256(kid: &str) -> Self {
            let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
            let der = secret.to_pkcs8_der().expect("pkcs8");
            Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes()))
        }

        fn rs256(kid: &str, bits: usize) -> Self {
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("rsa key");
            let der = private.to_pkcs1_der().expect("pkcs1");
            Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()))
        }

        fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> Self {
            let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_owned());
            let jwk = serde_json::to_value(&jwk).expect("json");
            Self { kid: kid.to_owned(), alg, key, jwk }
        }

        fn sign(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
        }
    }

    fn claims(sub: &str, iss: &str, aud: serde_json::Value, exp: u64) -> serde_json::Value {
        serde_json::json!({"sub": sub, "iss": iss, "aud": aud, "iat": now_secs(), "exp": exp})
    }

    fn valid(sub: &str) -> serde_json::Value {
        claims(sub, ISS, AUD.into(), now_secs() + 300)
    }

    fn set_of(jwks: &[&serde_json::Value]) -> KeySet {
        let document = serde_json::json!({ "keys": jwks });
        let (set, skipped) = KeySet::from_json(document.to_string().as_bytes()).expect("jwks");
        assert!(skipped.is_empty(), "{skipped:?}");
        set
    }

    /// One RSA key for the tests that need one: generating is the slow part.
    fn rsa_key() -> &'static TestKey {
        static KEY: std::sync::OnceLock<TestKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| TestKey::rs256("rsa-1", 2048))
    }

    #[test]
    fn rs256_and_es256_tokens_verify_against_the_key_set() {
        let ec = TestKey::es256("ec-1");
        let keys = set_of(&[&rsa_key().jwk, &ec.jwk]);
        assert_eq!(keys.kids(), vec!["ec-1".to_string(), "rsa-1".to_string()]);
        let verifier = Verifier::jwks(ISS, AUD);
        assert_eq!(verifier.verify(&rsa_key().sign(&valid("alice")), &keys).expect("rs256").user, "alice");
        assert_eq!(verifier.verify(&ec.sign(&valid("bob")), &keys).expect("es256").user, "bob");
        // `aud` as a list naming us is accepted too (some providers send one).
        let listed = claims("carol", ISS, serde_json::json!(["other", AUD]), now_secs() + 60);
        assert_eq!(verifier.verify(&ec.sign(&listed), &keys).expect("aud list").user, "carol");
    }

    #[test]
    fn unknown_kid_asks_for_a_refresh() {
        let ec = TestKey::es256("ec-1");
        let rotated = TestKey::es256("ec-2");
        let keys = set_of(&[&ec.jwk]);
        let verifier = Verifier::jwks(ISS, AUD);
        assert_eq!(verifier.verify(&rotated.sign(&valid("alice")), &keys), Err(TokenError::UnknownKey("ec-2".into())));
        assert!(verifier.verify(&rotated.sign(&valid("alice")), &set_of(&[&ec.jwk, &rotated.jwk])).is_ok());
    }

    #[test]
    fn wrong_issuer_audience_expiry_and_signature_are_refused() {
        let ec = TestKey::es256("ec-1");
        let keys = set_of(&[&ec.jwk]);
        let verifier = Verifier::jwks(ISS, AUD);
        let refused = [
            claims("alice", "https://evil.example", AUD.into(), now_secs() + 60),
            claims("alice", ISS, "someone-else".into(), now_secs() + 60),
            claims("alice", ISS, serde_json::json!(["a", "b"]), now_secs() + 60),
            serde_json::json!({"sub": "alice", "iss": ISS, "aud": AUD}), // no exp
            serde_json::json!({"sub": "alice", "aud": AUD, "exp": now_secs() + 60}), // no iss
            claims("", ISS, AUD.into(), now_secs() + 60),
        ];
        for claims in refused {
            assert!(verifier.verify(&ec.sign(&claims), &keys).is_err(), "{claims}");
        }
        let expired = claims("alice", ISS, AUD.into(), now_secs() - 60);
        assert_eq!(verifier.verify(&ec.sign(&expired), &keys), Err(TokenError::Expired));
        // Same kid, another key: the signature does not verify.
        let impostor = TestKey::es256("ec-1");
        assert!(matches!(verifier.verify(&impostor.sign(&valid("alice")), &keys), Err(TokenError::Invalid(_))));
        let not_yet =
            serde_json::json!({"sub": "a", "iss": ISS, "aud": AUD, "exp": now_secs() + 600, "nbf": now_secs() + 300});
        assert!(verifier.verify(&ec.sign(&not_yet), &keys).is_err());
    }

    /// base64url without padding, as JWTs are written.
    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let ec = TestKey::es256("ec-1");
        let keys = set_of(&[&rsa_key().jwk, &ec.jwk]);
        let jwks = Verifier::jwks(ISS, AUD);
        let body = b64(valid("alice").to_string().as_bytes());
        // `alg: none`, with and without a signature, on both verifiers.
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"none","kid":"ec-1"}"#] {
            for token in [format!("{}.{body}.", b64(header.as_bytes())), format!("{}.{body}", b64(header.as_bytes()))] {
                assert!(matches!(jwks.verify(&token, &keys), Err(TokenError::Invalid(_))), "{header}");
                assert!(matches!(verifier().verify(&token, &keys), Err(TokenError::Invalid(_))), "{header}");
            }
        }
        // HS256 signed with the RSA key's public modulus as the secret, or
        // with any secret: refused when a key set is trusted.
        let modulus = rsa_key().jwk["n"].as_str().expect("n").as_bytes().to_vec();
        for secret in [modulus, SECRET.to_vec()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let token = jsonwebtoken::encode(&header, &valid("alice"), &EncodingKey::from_secret(&secret)).expect("hs");
            assert!(matches!(jwks.verify(&token, &keys), Err(TokenError::Invalid(_))));
        }
        // An ES256 token naming the RSA key, an RS256 token naming the EC key.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("rsa-1".into());
        let crossed = jsonwebtoken::encode(&header, &valid("alice"), &ec.key).expect("es");
        assert!(matches!(jwks.verify(&crossed, &keys), Err(TokenError::Invalid(_))));
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("ec-1".into());
        let crossed = jsonwebtoken::encode(&header, &valid("alice"), &rsa_key().key).expect("rs");
        assert!(matches!(jwks.verify(&crossed, &keys), Err(TokenError::Invalid(_))));
        // RS256 and ES256 tokens at an HS256 verifier; a token without kid.
        assert!(matches!(verifier().verify(&ec.sign(&valid("alice")), &keys), Err(TokenError::Invalid(_))));
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &valid("alice"), &ec.key).expect("es");
        assert!(matches!(jwks.verify(&no_kid, &keys), Err(TokenError::Invalid(_))));
        // Other asymmetric algorithms are not accepted either.
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some("rsa-1".into());
        let pss = jsonwebtoken::encode(&header, &valid("alice"), &rsa_key().key).expect("ps");
        assert!(matches!(jwks.verify(&pss, &keys), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn only_signature_keys_of_supported_kinds_are_trusted() {
        let ec = TestKey::es256("ec-1");
        let mut no_kid = ec.jwk.clone();
        no_kid.as_object_mut().expect("object").remove("kid");
        let mut encryption = TestKey::es256("enc").jwk;
        encryption["use"] = "enc".into();
        let mut mislabelled = TestKey::es256("mislabelled").jwk;
        mislabelled["alg"] = "RS256".into();
        let symmetric = serde_json::json!({"kty": "oct", "kid": "hmac", "k": b64(SECRET), "alg": "HS256"});
        let p384 =
            serde_json::json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])});
        let small_rsa = serde_json::json!({"kty": "RSA", "kid": "small", "n": b64(&[0xc5; 128]), "e": "AQAB"});
        let garbage = serde_json::json!({"kty": "nonsense"});
        let mut duplicate = TestKey::es256("ec-1").jwk;
        duplicate["kid"] = "ec-1".into();
        let document = serde_json::json!({
            "keys": [ec.jwk, no_kid, encryption, mislabelled, symmetric, p384, small_rsa, garbage, duplicate]
        });
        let (keys, skipped) = KeySet::from_json(document.to_string().as_bytes()).expect("jwks");
        assert_eq!(keys.kids(), vec!["ec-1".to_string()]);
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        // The first key with a kid wins: tokens of the original key verify.
        assert!(Verifier::jwks(ISS, AUD).verify(&ec.sign(&valid("alice")), &keys).is_ok());
        // An HS256 token naming the skipped `oct` key finds nothing to trust.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("hmac".into());
        let token = jsonwebtoken::encode(&header, &valid("alice"), &EncodingKey::from_secret(SECRET)).expect("hs");
        assert!(matches!(Verifier::jwks(ISS, AUD).verify(&token, &keys), Err(TokenError::Invalid(_))));

        for bad in [&b"not json"[..], b"{}", b"{\"keys\": 3}", b"[]"] {
            assert!(matches!(KeySet::from_json(bad), Err(TokenError::KeySet(_))));
        }
        let (empty, _) = KeySet::from_json(b"{\"keys\": []}").expect("empty set");
        assert!(empty.is_empty());
    }

    #[test]
    fn remaining_lifetime_counts_the_leeway_and_is_capped() {
        let verifier = verifier().with_leeway(5);
        let cap = Duration::from_secs(3600);
        assert_eq!(verifier.remaining(100, 90_000, cap), Duration::from_secs(15));
        assert_eq!(verifier.remaining(100, 104_500, cap), Duration::from_millis(500));
        assert_eq!(verifier.remaining(100, 200_000, cap), Duration::ZERO);
        assert_eq!(verifier.remaining(u64::MAX, 0, cap), cap);
        assert_eq!(verifier.with_leeway(0).remaining(100, 100_000, cap), Duration::ZERO);
    }

    #[test]
    fn expiry_is_read_without_verifying() {
        let token = mint(SECRET, "alice", DEFAULT_ISSUER, DEFAULT_AUDIENCE, Duration::from_secs(60)).expect("mint");
        let exp = unverified_expiry(&token).expect("exp");
        assert!(exp >= now_secs() + 59 && exp <= now_secs() + 60);
        let no_exp = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"sub": "a"}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        for bad in ["", "garbage", "a.b.c", no_exp.as_str()] {
            assert_eq!(unverified_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn significant_bits_ignore_leading_zeros() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[0, 0x7f, 0xff]), 15);
    }
}
