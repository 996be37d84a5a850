//! TLS end to end: a private CA and a server certificate generated when the
//! test runs (none is stored), a gateway serving TLS with them, the `chat`
//! client trusting that CA with `--ca-cert`, and refusing, with a clear
//! error, a gateway whose certificate a wrong CA (or the system's roots)
//! does not vouch for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chat_e2e::cluster::Cluster;
use chat_e2e::{unique, workspace_bin};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA able to sign server certificates.
fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// Writes `contents` to `dir/name`.
fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs the `chat` client with `args`; its exit status and output.
async fn chat(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    chat_with(args, &[]).await
}

/// Runs the `chat` client with `args` and environment `env`.
async fn chat_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let run = tokio::process::Command::new(workspace_bin("chat")?)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run).await.context("chat did not finish")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn the_client_trusts_a_private_ca_and_refuses_a_wrong_one() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("chat-tls-"));
    std::fs::create_dir_all(&dir)?;
    let issuer = ca("chat test CA")?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, "chat gateway");
    let server = params.signed_by(&server_key, &issuer)?;
    let ca_pem = issuer.pem();
    let ca_path = write(&dir, "ca.pem", &ca_pem)?;
    let cert_path = write(&dir, "gateway.pem", &server.pem())?;
    let key_path = write(&dir, "gateway.key", &server_key.serialize_pem())?;
    let wrong_path = write(&dir, "wrong-ca.pem", &ca("some other CA")?.pem())?;

    let (cert, key) = (cert_path.display().to_string(), key_path.display().to_string());
    let cluster = Cluster::memory_tls(&[("CHAT_TLS_CERT", &cert), ("CHAT_TLS_KEY", &key)], ca_pem.into_bytes()).await?;
    let url = cluster.url(0).to_owned();
    assert!(url.starts_with("https://"), "{url}");

    // A stream over TLS: join and send.
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    alice.send(&room, "over-tls", "hello over TLS").await?;
    chat_e2e::scenarios::accepted(&mut alice, 1).await?;

    // The client binary with the right CA: echo (no token) and an
    // authenticated call.
    let ca_arg = ca_path.display().to_string();
    let (ok, out, err) = chat(&["echo", "--gateway", &url, "--ca-cert", &ca_arg]).await?;
    assert!(ok && out.contains("ping"), "echo with the CA: {out} {err}");
    let token = cluster.token("alice")?;
    let (ok, out, err) = chat(&["conversations", "--gateway", &url, "--ca-cert", &ca_arg, "--token", &token]).await?;
    assert!(ok && out.contains(&room), "conversations with the CA: {out} {err}");

    // The system's roots path, the one the template's load balancer needs:
    // no `--ca-cert`, the CA installed as the trust store (`SSL_CERT_FILE`
    // is where the platform's roots are read from).
    let (ok, out, err) = chat_with(&["echo", "--gateway", &url], &[("SSL_CERT_FILE", &ca_arg)]).await?;
    assert!(ok && out.contains("ping"), "echo trusting the system roots: {out} {err}");

    // A wrong CA, and the system's roots: refused, saying why.
    let wrong = wrong_path.display().to_string();
    let (ok, out, err) = chat(&["echo", "--gateway", &url, "--ca-cert", &wrong]).await?;
    assert!(!ok, "a wrong CA must be refused: {out}");
    assert!(err.contains("certificate") && err.contains("--ca-cert"), "unclear error: {err}");
    let (ok, out, err) = chat(&["echo", "--gateway", &url]).await?;
    assert!(!ok, "a private CA's certificate must not pass the system roots: {out}");
    assert!(err.contains("certificate"), "unclear error: {err}");

    // Plain HTTP/2 to a TLS gateway does not get through either.
    let plain = url.replacen("https://", "http://", 1);
    let (ok, out, _) = chat(&["echo", "--gateway", &plain]).await?;
    assert!(!ok, "h2c to a TLS port: {out}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn a_gateway_with_a_bad_certificate_does_not_start() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("chat-tls-bad-"));
    std::fs::create_dir_all(&dir)?;
    let cert = write(&dir, "gateway.pem", "not a certificate")?.display().to_string();
    let key = write(&dir, "gateway.key", &KeyPair::generate()?.serialize_pem())?.display().to_string();
    let err = Cluster::memory_tls(&[("CHAT_TLS_CERT", &cert), ("CHAT_TLS_KEY", &key)], Vec::new())
        .await
        .expect_err("must not start");
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");
    let missing = dir.join("missing.pem").display().to_string();
    let err = Cluster::memory_tls(&[("CHAT_TLS_CERT", &missing), ("CHAT_TLS_KEY", &key)], Vec::new())
        .await
        .expect_err("must not start");
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
