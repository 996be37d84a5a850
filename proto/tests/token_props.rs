//! Property tests of bearer tokens through the public API: whatever a
//! client sends as a token is refused without a panic unless it is a token
//! we minted, unchanged; a minted token gives back the claims it was minted
//! with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_proto::token::{self, KeySet, TokenError, Verifier};
use proptest::prelude::*;
use proptest::sample::Index;

const SECRET: &[u8] = b"property-test-secret";
const ISSUER: &str = "chat-local";
const AUDIENCE: &str = "chat";

fn verifier() -> Verifier {
    Verifier::new(SECRET, ISSUER, AUDIENCE).unwrap_or_else(|e| panic!("verifier: {e}"))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn segment(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT header naming an algorithm, including ones that must never pass.
fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![Just("HS256"), Just("none"), Just("None"), Just("RS256"), Just("ES256"), Just("HS512"), Just("")]
            .prop_map(|alg| format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
        any::<String>(),
    ]
}

/// A JWT payload: our claims with any values (wrong types included), or
/// anything at all.
fn payload() -> impl Strategy<Value = String> {
    let claim = prop_oneof![
        any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("null".to_owned()),
        Just("[]".to_owned()),
    ];
    prop_oneof![
        (claim.clone(), claim.clone(), claim.clone(), claim.clone(), claim).prop_map(|(sub, iss, aud, iat, exp)| {
            format!(r#"{{"sub":{sub},"iss":{iss},"aud":{aud},"iat":{iat},"exp":{exp}}}"#)
        }),
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn arbitrary_strings_are_refused(token in any::<String>()) {
        prop_assert!(verifier().verify(&token, &KeySet::default()).is_err());
    }

    /// Three well-formed segments, signed with nothing, garbage, or the
    /// right secret under a claim set the verifier must refuse.
    #[test]
    fn forged_tokens_are_refused(header in header(), payload in payload(), signature in prop::collection::vec(any::<u8>(), 0..40)) {
        let token = format!("{}.{}.{}", segment(header.as_bytes()), segment(payload.as_bytes()), segment(&signature));
        prop_assert!(verifier().verify(&token, &KeySet::default()).is_err(), "{}", token);
        let unsigned = format!("{}.{}.", segment(header.as_bytes()), segment(payload.as_bytes()));
        prop_assert!(verifier().verify(&unsigned, &KeySet::default()).is_err(), "{}", unsigned);
    }

    #[test]
    fn minted_tokens_give_back_their_claims(user in any::<String>(), ttl in 60..10_000_000u64) {
        prop_assume!(!user.is_empty());
        let before = now_secs();
        let token = token::mint(SECRET, &user, ISSUER, AUDIENCE, Duration::from_secs(ttl))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let identity = verifier().verify(&token, &KeySet::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(identity.user, user);
        // `exp` is `iat + ttl`, and `iat` was read between `before` and now.
        prop_assert!(identity.expires_at >= before + ttl && identity.expires_at <= now_secs() + ttl);
    }

    /// Any one character of a minted token changed (to anything, a '.'
    /// included) and the token is refused.
    #[test]
    fn altered_tokens_are_refused(user in "[a-z0-9]{1,16}", at in any::<Index>(), replacement in any::<char>()) {
        let token = token::mint(SECRET, &user, ISSUER, AUDIENCE, Duration::from_secs(600))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len());
        prop_assume!(chars[i] != replacement);
        chars[i] = replacement;
        let altered: String = chars.into_iter().collect();
        prop_assert!(verifier().verify(&altered, &KeySet::default()).is_err(), "{}", altered);
        // Cut short or lengthened, too.
        prop_assert!(verifier().verify(&token[..i], &KeySet::default()).is_err());
        let longer = format!("{token}{replacement}");
        prop_assert!(verifier().verify(&longer, &KeySet::default()).is_err());
    }

    /// A token is only good with the secret, issuer and audience it was
    /// minted for.
    #[test]
    fn tokens_are_bound_to_secret_issuer_and_audience(
        user in "[a-z0-9]{1,16}",
        secret in prop::collection::vec(any::<u8>(), 1..32),
        issuer in any::<String>(),
        audience in any::<String>(),
    ) {
        let token = token::mint(&secret, &user, &issuer, &audience, Duration::from_secs(600))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let same = secret == SECRET && issuer == ISSUER && audience == AUDIENCE;
        prop_assert_eq!(verifier().verify(&token, &KeySet::default()).is_ok(), same);
        let own = Verifier::new(&secret, &issuer, &audience).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(own.verify(&token, &KeySet::default()).map(|c| c.user).ok(), Some(user));
    }

    #[test]
    fn expired_tokens_are_refused_as_expired(user in "[a-z0-9]{1,16}", age in 10..1_000_000u64) {
        let claims = token::Claims {
            sub: user,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now_secs().saturating_sub(age + 1),
            exp: now_secs().saturating_sub(age),
        };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(matches!(verifier().verify(&token, &KeySet::default()), Err(TokenError::Expired)));
    }
}
