//! The wire formats of the external channels, shaped like the real APIs:
//! WhatsApp Cloud API (`POST /{version}/{phone-number-id}/messages`),
//! Instagram messaging (`POST /{version}/{ig-user-id}/messages`) and the
//! Telegram Bot API (`POST /bot{token}/sendMessage`), with their webhook
//! payloads and signatures. The `connector` and `webhook` functions and the
//! local channel simulator all speak through these types, so the three
//! cannot disagree on a field name.
//!
//! Only the fields this platform uses are modelled; unknown fields are
//! ignored when reading, as the real APIs add fields over time.

mod channel;
pub mod instagram;
pub mod meta;
pub mod telegram;
pub mod whatsapp;

pub use channel::{Channel, UnknownChannel};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=<hex HMAC-SHA256 of body>`: Meta's `X-Hub-Signature-256`.
pub fn meta_signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = hmac_sha256(app_secret);
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Checks a `X-Hub-Signature-256` header against the body, in constant time.
pub fn verify_meta_signature(app_secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else { return false };
    let Some(expected) = decode_hex(hex) else { return false };
    let mut mac = hmac_sha256(app_secret);
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap_or_else(|e| unreachable!("HMAC accepts any key: {e}"))
}

/// Hex digits only, two per byte: `u8::from_str_radix` alone would also
/// take a sign (`+f`), letting a second spelling of a signature through.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks_exact(2).map(|pair| u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_signature_verifies_and_rejects_tampering() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let header = meta_signature("app-secret", body);
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(verify_meta_signature("app-secret", body, &header));
        assert!(!verify_meta_signature("other-secret", body, &header));
        assert!(!verify_meta_signature("app-secret", b"{}", &header));
        assert!(!verify_meta_signature("app-secret", body, "sha256=zz"));
        assert!(!verify_meta_signature("app-secret", body, "md5=00"));
    }

    #[test]
    fn signed_hex_is_not_hex() {
        assert_eq!(decode_hex("0aFf"), Some(vec![0x0a, 0xff]));
        for bad in ["+a", "-0", "+f0a", "0x", " a", "é", "0"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
        // This body's signature has bytes below 0x10 (`...0b...`); spelled
        // with a sign (`+b`) it is not the signature.
        let (secret, body) = ("app-secret", [0u8]);
        let header = meta_signature(secret, &body);
        let hex = &header["sha256=".len()..];
        let signed: String = (0..hex.len())
            .step_by(2)
            .map(|i| match &hex[i..i + 2] {
                pair if pair.starts_with('0') => format!("+{}", &pair[1..]),
                pair => pair.to_owned(),
            })
            .collect();
        assert_ne!(signed, hex);
        assert!(!verify_meta_signature(secret, &body, &format!("sha256={signed}")), "{signed}");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// A header is accepted only when it is this body's `sha256=<hex>`,
        /// the hex in either case.
        fn accepted(secret: &str, body: &[u8], header: &str) -> bool {
            let expected = meta_signature(secret, body);
            header.strip_prefix("sha256=").is_some_and(|hex| hex.to_ascii_lowercase() == expected["sha256=".len()..])
        }

        proptest! {
            #[test]
            fn signatures_verify_their_body(secret in ".{0,16}", body in prop::collection::vec(any::<u8>(), 0..64)) {
                let header = meta_signature(&secret, &body);
                prop_assert!(verify_meta_signature(&secret, &body, &header));
                let upper = format!("sha256={}", header["sha256=".len()..].to_ascii_uppercase());
                prop_assert!(verify_meta_signature(&secret, &body, &upper));
            }

            /// Any other header, a valid one with one character changed
            /// included, is refused; none panics.
            #[test]
            fn other_headers_are_refused(
                secret in ".{0,16}",
                body in prop::collection::vec(any::<u8>(), 0..64),
                at in any::<Index>(),
                replacement in prop_oneof![any::<char>(), prop::sample::select("+-0123456789abcdefABCDEF ".chars().collect::<Vec<_>>())],
                arbitrary in any::<String>(),
            ) {
                let mut chars: Vec<char> = meta_signature(&secret, &body).chars().collect();
                let i = at.index(chars.len());
                chars[i] = replacement;
                let mutated: String = chars.into_iter().collect();
                for header in [mutated, arbitrary.clone(), format!("sha256={arbitrary}")] {
                    prop_assert_eq!(verify_meta_signature(&secret, &body, &header), accepted(&secret, &body, &header), "{}", header);
                }
            }

            #[test]
            fn secrets_are_equal_exactly_when_they_are(a in ".{0,8}", b in ".{0,8}") {
                prop_assert_eq!(secrets_equal(&a, &b), a == b);
                prop_assert!(secrets_equal(&a, &a));
            }
        }
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(secrets_equal("s3cret", "s3cret"));
        assert!(!secrets_equal("s3cret", "s3creT"));
        assert!(!secrets_equal("s3cret", "s3cre"));
    }
}
