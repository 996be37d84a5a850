//! Identity through real gateways: RS256/ES256 tokens checked against a
//! JWKS served by a local identity provider, key rotation and the bound on
//! refetching, what is refused (memory mode: nothing there depends on the
//! bus); the same provider's users chatting across two gateways on the
//! emulator; and streams that end when their token expires unless the
//! client refreshed it.
//!
//! Keys are generated when the test runs; none is stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chat_e2e::client::{TestClient, with_token};
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios::error_for;
use chat_e2e::unique;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{ListConversationsRequest, RefreshTokenFrame, disconnect};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use tonic::Code;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "chat-api";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A signing key of the test identity provider and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn es256(kid: &str) -> anyhow::Result<Self> {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let der = secret.to_pkcs8_der()?;
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes()))
    }

    fn rs256(kid: &str) -> anyhow::Result<Self> {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
        let der = private.to_pkcs1_der()?;
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()))
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> anyhow::Result<Self> {
        let mut jwk = Jwk::from_encoding_key(&key, alg)?;
        jwk.common.key_id = Some(kid.to_owned());
        Ok(Self { kid: kid.to_owned(), alg, key, jwk: serde_json::to_value(&jwk)? })
    }

    fn token(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}

fn claims(user: &str, issuer: &str, audience: &str) -> serde_json::Value {
    serde_json::json!({"sub": user, "iss": issuer, "aud": audience, "iat": now_secs(), "exp": now_secs() + 600})
}

/// A local identity provider: serves its JWKS on a random loopback port and
/// counts the fetches. Stopped on drop.
struct IdentityProvider {
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl IdentityProvider {
    async fn start(keys: &[&SigningKey]) -> anyhow::Result<Self> {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served.lock().map(|k| k.clone()).unwrap_or_default();
                    axum::Json(serde_json::json!({ "keys": keys }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { keys, fetches, url, server })
    }

    fn publish(&self, key: &SigningKey) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.push(key.jwk.clone());
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A unary call (`ListConversations`) with `token`: its status.
async fn call(cluster: &Cluster, token: &str) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut client = ChatServiceClient::new(cluster.channel(0).await?);
    let request = with_token(ListConversationsRequest { page_size: 10, cursor: String::new() }, token)?;
    Ok(client.list_conversations(request).await.map(|_| ()))
}

async fn refused(cluster: &Cluster, token: &str, what: &str) -> anyhow::Result<()> {
    match call(cluster, token).await? {
        Err(status) if status.code() == Code::Unauthenticated => Ok(()),
        other => anyhow::bail!("{what}: expected UNAUTHENTICATED, got {other:?}"),
    }
}

/// base64url without padding.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn jwks_tokens_are_accepted_rotated_and_pinned() -> anyhow::Result<()> {
    let rsa = SigningKey::rs256("rsa-1")?;
    let ec = SigningKey::es256("ec-1")?;
    let idp = IdentityProvider::start(&[&rsa, &ec]).await?;
    let cluster = Cluster::memory_with(&[
        ("CHAT_JWKS_URL", idp.url.as_str()),
        ("CHAT_JWT_ISSUER", ISSUER),
        ("CHAT_JWT_AUDIENCE", AUDIENCE),
        ("CHAT_JWKS_MIN_REFRESH_SECS", "3"),
    ])
    .await?;
    assert_eq!(idp.fetches(), 1, "the gateway loads the key set once at start");

    // RS256 and ES256 tokens of the provider: a stream and a unary call.
    let alice_token = rsa.token(&claims("alice", ISSUER, AUDIENCE))?;
    let create = chat_proto::pb::CreateConversationRequest {
        kind: chat_proto::pb::ConversationKind::Public as i32,
        conversation_id: unique("room-"),
        ..Default::default()
    };
    let room = chat_proto::pb::chat_service_client::ChatServiceClient::new(cluster.channel(0).await?)
        .create_conversation(chat_e2e::client::with_token(create.clone(), &alice_token)?)
        .await
        .map(|_| create.conversation_id)
        .map_err(|s| anyhow::anyhow!("an RS256 token creates a conversation: {s:?}"))?;
    let mut alice = TestClient::connect(cluster.channel(0).await?, "alice", &alice_token).await?;
    alice.join(&room).await?;
    let bob_token = ec.token(&claims("bob", ISSUER, AUDIENCE))?;
    let mut bob = TestClient::connect(cluster.channel(0).await?, "bob", &bob_token).await?;
    bob.join(&room).await?;
    alice.send(&room, "hello-1", "hello bob").await?;
    bob.wait_for(|e| matches!(e, Event::Message(m) if m.sender == "alice").then_some(())).await?;
    call(&cluster, &bob_token).await?.map_err(|s| anyhow::anyhow!("ES256 unary call refused: {s:?}"))?;

    // Refused: another issuer, another audience, alg none, HS256 (with the
    // secret the harness gives every gateway, and with the RSA key's public
    // modulus as the HMAC secret), an expired token.
    refused(&cluster, &rsa.token(&claims("alice", "https://evil.test", AUDIENCE))?, "unknown issuer").await?;
    refused(&cluster, &ec.token(&claims("alice", ISSUER, "another-api"))?, "wrong audience").await?;
    let body = b64(claims("alice", ISSUER, AUDIENCE).to_string().as_bytes());
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"none","kid":"rsa-1"}"#] {
        let token = format!("{}.{body}.", b64(header.as_bytes()));
        refused(&cluster, &token, "alg none").await?;
    }
    refused(&cluster, &cluster.token("alice")?, "HS256 with the shared secret").await?;
    let modulus = rsa.jwk["n"].as_str().context("n")?.as_bytes().to_vec();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused =
        jsonwebtoken::encode(&header, &claims("alice", ISSUER, AUDIENCE), &EncodingKey::from_secret(&modulus))?;
    refused(&cluster, &confused, "HS256 keyed with the public key").await?;
    let mut expired = claims("alice", ISSUER, AUDIENCE);
    expired["exp"] = (now_secs() - 600).into();
    refused(&cluster, &rsa.token(&expired)?, "expired").await?;
    assert_eq!(idp.fetches(), 1, "none of those made the gateway fetch keys");

    // Rotation: the provider publishes a new key; its first token makes the
    // gateway fetch the set once.
    let rotated = SigningKey::es256("ec-2")?;
    idp.publish(&rotated);
    call(&cluster, &rotated.token(&claims("carol", ISSUER, AUDIENCE))?)
        .await?
        .map_err(|s| anyhow::anyhow!("token of the rotated key refused: {s:?}"))?;
    assert_eq!(idp.fetches(), 2, "one fetch for the new kid");

    // Made-up kids within the minimum interval fetch nothing.
    let ghost = SigningKey::es256("ghost")?;
    for _ in 0..5 {
        refused(&cluster, &ghost.token(&claims("mallory", ISSUER, AUDIENCE))?, "unknown kid").await?;
    }
    assert_eq!(idp.fetches(), 2, "unknown kids within the interval cause no fetch");

    // A key published now is fetched once the interval has passed, however
    // many tokens name it before then.
    let later = SigningKey::es256("ec-3")?;
    idp.publish(&later);
    let token = later.token(&claims("dave", ISSUER, AUDIENCE))?;
    let deadline = tokio::time::Instant::now() + chat_e2e::DEADLINE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call(&cluster, &token).await? {
            Ok(()) => break,
            Err(status) if status.code() == Code::Unauthenticated => {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "ec-3 never accepted: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!("unexpected {status:?}"),
        }
    }
    assert!(attempts > 1, "the interval since the last fetch had not passed, yet ec-3 was fetched at once");
    assert_eq!(idp.fetches(), 3, "{attempts} attempts, one fetch");
    Ok(())
}

#[tokio::test]
async fn a_gateway_whose_jwks_cannot_be_read_does_not_start() -> anyhow::Result<()> {
    let port = chat_e2e::free_port()?;
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let err = Cluster::memory_with(&[("CHAT_JWKS_URL", url.as_str())]).await.expect_err("must not start");
    assert!(format!("{err:#}").contains("identity provider"), "{err:#}");
    Ok(())
}

/// An HS256 token of `user` valid for `ttl`, signed with the cluster's
/// secret.
fn hs256(cluster: &Cluster, user: &str, ttl: Duration) -> anyhow::Result<String> {
    Ok(chat_proto::token::mint(
        cluster.secret().as_bytes(),
        user,
        chat_proto::token::DEFAULT_ISSUER,
        chat_proto::token::DEFAULT_AUDIENCE,
        ttl,
    )?)
}

#[tokio::test]
async fn streams_end_when_their_token_expires_unless_refreshed() -> anyhow::Result<()> {
    let cluster = Cluster::memory_with(&[("CHAT_JWT_LEEWAY_SECS", "0")]).await?;
    let room = cluster.public_room("alice", "room-").await?;
    let short = Duration::from_secs(2);
    // Bob's token is minted first, so it expires no later than alice's.
    let bob_token = hs256(&cluster, "bob", short)?;
    let alice_token = hs256(&cluster, "alice", short)?;
    let mut bob = TestClient::connect(cluster.channel(0).await?, "bob", &bob_token).await?;
    let mut alice = TestClient::connect(cluster.channel(0).await?, "alice", &alice_token).await?;
    bob.join(&room).await?;
    alice.join(&room).await?;
    alice.send(&room, "before-expiry", "still here").await?;
    bob.wait_for(|e| matches!(e, Event::Message(m) if m.client_message_id == "before-expiry").then_some(())).await?;

    // Bob refreshes: with another user's token (refused), with garbage
    // (refused), then with a fresh token of his own.
    let refresh = |token: String| Frame::Refresh(RefreshTokenFrame { token });
    bob.frame("refresh-other", refresh(hs256(&cluster, "mallory", Duration::from_secs(60))?)).await?;
    let (code, message) = error_for(&mut bob, "refresh-other").await?;
    anyhow::ensure!(code == Code::PermissionDenied, "another user's token: {code:?} {message}");
    bob.frame("refresh-garbage", refresh("not.a.token".into())).await?;
    let (code, message) = error_for(&mut bob, "refresh-garbage").await?;
    anyhow::ensure!(code == Code::Unauthenticated, "garbage: {code:?} {message}");
    bob.frame("refresh-ok", refresh(hs256(&cluster, "bob", Duration::from_secs(60))?)).await?;

    // Alice did not refresh: her stream ends at her token's expiry with a
    // Disconnect saying why and where to resume, then UNAUTHENTICATED.
    let disconnect = alice
        .wait_for(|e| match e {
            Event::Disconnect(d) => Some(d.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(disconnect.reason, disconnect::Reason::TokenExpired as i32, "{disconnect:?}");
    assert!(disconnect.resume.iter().any(|p| p.conversation_id == room && p.last_seq >= 1), "{disconnect:?}");
    let status = alice.wait_end().await?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Bob's first token has expired too by now; his refreshed stream goes
    // on: it sends, receives, and was told of no error but the two refused
    // refreshes.
    bob.send(&room, "after-expiry", "refreshed").await?;
    bob.wait_for(|e| matches!(e, Event::SendAccepted(a) if a.client_message_id == "after-expiry").then_some(()))
        .await?;
    let refresh_errors: Vec<_> = bob
        .received
        .iter()
        .filter_map(|e| match e {
            Event::Error(err) => Some(err.request_id.clone()),
            Event::Disconnect(d) => Some(format!("disconnect {d:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(refresh_errors, vec!["refresh-other".to_string(), "refresh-garbage".to_string()]);

    // Reconnecting with a fresh token works as usual.
    let fresh = hs256(&cluster, "alice", Duration::from_secs(60))?;
    let mut alice = TestClient::connect(cluster.channel(0).await?, "alice", &fresh).await?;
    alice.join(&room).await?;
    Ok(())
}

/// Lines a child process writes, collected as they come.
fn collect_lines(output: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(output).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    });
    lines
}

/// Waits (bounded) until a stream with a `ttl` token minted now has been
/// cut off: by then every token minted before it has expired too.
async fn outlive_tokens_minted_before(cluster: &Cluster, ttl: Duration) -> anyhow::Result<()> {
    let clock_token = hs256(cluster, "clock", ttl)?;
    let mut clock = TestClient::connect(cluster.channel(0).await?, "clock", &clock_token).await?;
    let status = clock.wait_end().await?;
    anyhow::ensure!(status.code() == Code::Unauthenticated, "the clock stream ended with {status:?}");
    Ok(())
}

/// The `chat connect` client as shipped: with tokens it mints, or gets from
/// a `--token-command`, it sends a fresh one before each expires and the
/// stream is never cut; with a token given as is, it says the token expired
/// and stops.
#[tokio::test]
async fn the_chat_client_refreshes_the_tokens_it_mints() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::memory_with(&[("CHAT_JWT_LEEWAY_SECS", "0")]).await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    let chat = |args: &[&str]| -> anyhow::Result<tokio::process::Child> {
        Ok(tokio::process::Command::new(chat_e2e::workspace_bin("chat")?)
            .args(["connect", "--gateway", cluster.url(0), "--conversation", &room])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?)
    };
    let online = |user: &'static str| {
        move |e: &Event| match e {
            Event::PresenceChanged(p) if p.user_id == user && p.online => Some(()),
            _ => None,
        }
    };

    // Tokens of 2 s, minted by the client or printed by a command (here
    // `chat token`, standing in for an identity provider's CLI): the client
    // refreshes them on its stream.
    let chat_bin = chat_e2e::workspace_bin("chat")?.display().to_string();
    let command = format!("{chat_bin} token --user dave --secret {} --ttl-secs 2", cluster.secret());
    let variants: [(&'static str, Vec<&str>); 2] = [
        ("bob", vec!["--user", "bob", "--secret", cluster.secret(), "--token-ttl-secs", "2"]),
        ("dave", vec!["--user", "dave", "--token-command", &command]),
    ];
    for (user, args) in variants {
        let mut client = chat(&args)?;
        let out = collect_lines(client.stdout.take().context("stdout")?);
        alice.wait_for(online(user)).await?;
        outlive_tokens_minted_before(&cluster, Duration::from_secs(3)).await?;
        let mut stdin = client.stdin.take().context("stdin")?;
        stdin.write_all(b"still here after my first token ran out\n").await?;
        let said = alice
            .wait_for(|e| match e {
                Event::Message(m) if m.sender == user => Some(m.body.clone()),
                _ => None,
            })
            .await?;
        assert_eq!(said, "still here after my first token ran out");
        let printed = out.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(
            printed.iter().filter(|l| l.starts_with("* connected")).count() == 1
                && !printed.iter().any(|l| l.contains("expired") || l.contains("reconnecting")),
            "{user}'s stream was cut: {printed:?}"
        );
        stdin.write_all(b"/quit\n").await?;
        let status = tokio::time::timeout(chat_e2e::DEADLINE, client.wait()).await??;
        assert!(status.success(), "{user}: {status:?}");
    }

    // A token given as is: when it expires the client says so and stops.
    let short = hs256(&cluster, "carol", Duration::from_secs(2))?;
    let mut carol = chat(&["--user", "carol", "--token", &short])?;
    let carol_err = collect_lines(carol.stderr.take().context("stderr")?);
    let _carol_in = carol.stdin.take();
    let status = tokio::time::timeout(chat_e2e::DEADLINE, carol.wait()).await??;
    let err = carol_err.lock().map(|l| l.join("\n")).unwrap_or_default();
    assert!(!status.success() && err.contains("token expired"), "{status:?}: {err}");
    Ok(())
}

/// The AWS path across two gateways: each loads the provider's keys, and
/// users holding RS256 and ES256 tokens chat from one gateway to the other;
/// a token of another provider's key is refused on both.
#[tokio::test]
async fn jwks_tokens_chat_across_two_gateways_on_the_emulator() -> anyhow::Result<()> {
    let rsa = SigningKey::rs256("rsa-aws")?;
    let ec = SigningKey::es256("ec-aws")?;
    let idp = IdentityProvider::start(&[&rsa, &ec]).await?;
    let cluster = Cluster::aws_with(
        2,
        &[("CHAT_JWKS_URL", idp.url.as_str()), ("CHAT_JWT_ISSUER", ISSUER), ("CHAT_JWT_AUDIENCE", AUDIENCE)],
    )
    .await?;
    anyhow::ensure!(idp.fetches() == 2, "each gateway loads the key set at start: {}", idp.fetches());
    let alice_token = rsa.token(&claims("alice", ISSUER, AUDIENCE))?;
    let bob_token = ec.token(&claims("bob", ISSUER, AUDIENCE))?;
    let create = chat_proto::pb::CreateConversationRequest {
        kind: chat_proto::pb::ConversationKind::Public as i32,
        conversation_id: unique("idp-"),
        ..Default::default()
    };
    ChatServiceClient::new(cluster.channel(0).await?)
        .create_conversation(with_token(create.clone(), &alice_token)?)
        .await
        .map_err(|s| anyhow::anyhow!("an RS256 token creates a conversation: {s:?}"))?;
    let room = create.conversation_id;
    let mut alice = TestClient::connect(cluster.channel(0).await?, "alice", &alice_token).await?;
    let mut bob = TestClient::connect(cluster.channel(1).await?, "bob", &bob_token).await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    alice.send(&room, "across", "from gateway 0 with RS256").await?;
    bob.wait_for(|e| matches!(e, Event::Message(m) if m.sender == "alice").then_some(())).await?;
    bob.send(&room, "back", "from gateway 1 with ES256").await?;
    alice.wait_for(|e| matches!(e, Event::Message(m) if m.sender == "bob").then_some(())).await?;
    let stranger = SigningKey::rs256("rsa-aws")?; // the same kid, another key
    let forged = stranger.token(&claims("alice", ISSUER, AUDIENCE))?;
    for index in 0..2 {
        let mut client = ChatServiceClient::new(cluster.channel(index).await?);
        let request = with_token(ListConversationsRequest { page_size: 10, cursor: String::new() }, &forged)?;
        let status = client.list_conversations(request).await.err().context("a forged token was accepted")?;
        anyhow::ensure!(status.code() == Code::Unauthenticated, "gateway {index}: {status:?}");
    }
    Ok(())
}
