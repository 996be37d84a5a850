//! How the client reaches a gateway: `http://` is plain HTTP/2 (local
//! gateways), `https://` is TLS. Over TLS the gateway's certificate must
//! chain to the system's trusted roots (a load balancer with a public
//! certificate, as `template.yaml` deploys), or, given `--ca-cert`, to that
//! private CA only.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("bad gateway URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("--ca-cert {path}: {reason}")]
    CaCert { path: String, reason: String },
}

/// A private CA's certificate(s), PEM, read from `path`.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, EndpointError> {
    let fail = |reason: String| EndpointError::CaCert { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// The endpoint of a gateway URL. `ca_cert` (PEM) replaces the system roots
/// for `https://` URLs; it makes no sense for `http://` ones.
pub fn endpoint(url: &str, ca_cert: Option<&[u8]>) -> Result<Endpoint, EndpointError> {
    let fail = |reason: String| EndpointError::Url { url: url.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| fail(e.to_string()))?;
    let https = endpoint.uri().scheme_str() == Some("https");
    match (ca_cert, https) {
        (Some(pem), true) => endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| fail(e.to_string())),
        (None, true) => {
            endpoint.tls_config(ClientTlsConfig::new().with_native_roots()).map_err(|e| fail(e.to_string()))
        }
        (Some(_), false) => Err(fail("--ca-cert is for https:// gateways".into())),
        (None, false) if endpoint.uri().scheme_str() != Some("http") => Err(fail("use http:// or https://".into())),
        (None, false) => Ok(endpoint),
    }
}

/// A failed connection as one line: every cause in the chain, and a hint
/// when the gateway's certificate was not trusted.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    let line = parts.join(": ");
    if line.contains("certificate") || line.contains("UnknownIssuer") {
        format!("{line} (the gateway's TLS certificate is not trusted: pass the CA that signed it with --ca-cert)")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ca_certificates_combine_sensibly() {
        assert!(endpoint("http://127.0.0.1:50051", None).is_ok());
        assert!(endpoint("https://chat.example.com", None).is_ok());
        assert!(endpoint("https://chat.example.com", Some(b"pem")).is_ok());
        for (url, ca) in
            [("http://127.0.0.1:50051", Some(&b"pem"[..])), ("ftp://127.0.0.1", None), ("not a url", None), ("", None)]
        {
            assert!(endpoint(url, ca).is_err(), "{url} {ca:?}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("chat-ca-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        assert!(read_ca(&junk).is_err());
        assert!(read_ca(&dir.join("missing.pem")).is_err());
        let good = dir.join("ca.pem");
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect("write");
        assert!(read_ca(&good).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn untrusted_certificates_get_a_hint() {
        #[derive(Debug)]
        struct Chain(&'static str, Option<Box<Chain>>);
        impl std::fmt::Display for Chain {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Chain {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
            }
        }
        let error = Chain("transport error", Some(Box::new(Chain("invalid peer certificate: UnknownIssuer", None))));
        let line = describe(&error);
        assert!(line.starts_with("transport error: invalid peer certificate: UnknownIssuer"), "{line}");
        assert!(line.contains("--ca-cert"), "{line}");
        assert_eq!(describe(&Chain("connection refused", None)), "connection refused");
    }
}
