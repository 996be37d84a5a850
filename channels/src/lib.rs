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

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
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
    fn secrets_compare_by_content() {
        assert!(secrets_equal("s3cret", "s3cret"));
        assert!(!secrets_equal("s3cret", "s3creT"));
        assert!(!secrets_equal("s3cret", "s3cre"));
    }
}
