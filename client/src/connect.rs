//! The interactive terminal chat: stdin lines become frames, server events
//! become lines on stdout.
//!
//! Tokens: a chat that can get fresh ones (it mints them with the shared
//! secret, or runs `--token-command`, e.g. one asking the identity
//! provider) sends the gateway a fresh one on the stream well before the
//! current one expires, so the stream is never cut; one given a token
//! (`--token`) runs until the gateway ends the stream with
//! `Disconnect { TOKEN_EXPIRED }`, then says so and stops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::{
    AckFrame, ClientFrame, JoinFrame, LeaveFrame, RefreshTokenFrame, SendFrame, ServerEvent, TypingFrame,
    client_frame::Frame, disconnect, server_event::Event,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::render::{render, worth_showing};

pub(crate) type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
pub(crate) type Client = ChatServiceClient<InterceptedService<Channel, Interceptor>>;

const HELP: &str =
    "commands: /join ROOM, /leave ROOM, /switch ROOM, /typing, /quit; any other line is sent to the current room";

fn frame(frame: Frame) -> ClientFrame {
    ClientFrame { request_id: ulid::Ulid::new().to_string(), frame: Some(frame) }
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Join(String),
    Leave(String),
    Switch(String),
    Typing,
    Quit,
    Help,
    Say(String),
    Nothing,
}

fn parse(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut words = line.splitn(2, ' ');
    let arg = |w: Option<&str>| w.unwrap_or_default().trim().to_owned();
    match words.next().unwrap_or_default() {
        "/join" => Input::Join(arg(words.next())),
        "/leave" => Input::Leave(arg(words.next())),
        "/switch" => Input::Switch(arg(words.next())),
        "/typing" => Input::Typing,
        "/quit" | "/exit" => Input::Quit,
        "/help" => Input::Help,
        _ if line.trim().is_empty() => Input::Nothing,
        _ => Input::Say(line.to_owned()),
    }
}

/// What the chat keeps across reconnections: the conversations joined,
/// per conversation the last seq shown (the resume point), and the sends
/// not yet answered.
#[derive(Debug, Default)]
struct Chat {
    joined: BTreeSet<String>,
    last_seq: HashMap<String, u64>,
    current: Option<String>,
    /// By `client_message_id` (a ULID, so in the order typed).
    unanswered: BTreeMap<String, SendFrame>,
}

impl Chat {
    fn saw(&mut self, conversation_id: &str, seq: u64) {
        let last = self.last_seq.entry(conversation_id.to_owned()).or_insert(0);
        *last = (*last).max(seq);
    }

    /// The frames that restore this chat on a new stream: its joins, then
    /// every send its last stream did not answer, with the same
    /// `client_message_id`. A send the lost gateway had accepted is then
    /// answered as a duplicate (and republished, so a seq it had taken is
    /// not left a hole); one it had not is sent now.
    fn rejoin_frames(&self) -> Vec<ClientFrame> {
        let joins = self.joined.iter().map(|c| {
            frame(Frame::Join(JoinFrame {
                conversation_id: c.clone(),
                resume_after_seq: self.last_seq.get(c).copied(),
            }))
        });
        let resends = self.unanswered.values().map(|send| frame(Frame::Send(send.clone())));
        joins.chain(resends).collect()
    }

    /// A send is answered, accepted or refused.
    fn answered(&mut self, client_message_id: &str) {
        self.unanswered.remove(client_message_id);
    }
}

/// Where the chat's bearer tokens come from.
pub(crate) enum Credentials {
    /// A token given as is: used until it expires.
    Given(String),
    /// Minted here with the shared secret.
    Minted(Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>),
    /// Printed by a shell command.
    Command(String),
}

impl Credentials {
    /// A token for the next connection or refresh.
    async fn token(&self) -> anyhow::Result<String> {
        match self {
            Credentials::Given(token) => Ok(token.clone()),
            Credentials::Minted(mint) => mint(),
            Credentials::Command(command) => {
                let command = command.clone();
                tokio::task::spawn_blocking(move || run_token_command(&command)).await?
            }
        }
    }

    /// Whether fresh tokens can be had.
    fn renewable(&self) -> bool {
        !matches!(self, Credentials::Given(_))
    }
}

/// Runs `command` with `sh -c`: its trimmed output is a token.
pub(crate) fn run_token_command(command: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the token command {command:?}"))?;
    anyhow::ensure!(out.status.success(), "the token command {command:?} failed ({})", out.status);
    let token = String::from_utf8(out.stdout).context("the token command printed something other than UTF-8")?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty() && !token.contains(char::is_whitespace), "the token command printed no token");
    Ok(token.to_owned())
}

/// How long until a fresh token should replace `token`: four fifths of the
/// time it has left (read from its `exp`, unverified), at least 200 ms; an
/// hour when it has no readable `exp`.
fn renew_in(token: &str, now_ms: i64) -> Duration {
    let Some(exp) = chat_proto::token::unverified_expiry(token) else { return Duration::from_secs(3600) };
    let left_ms = (i128::from(exp) * 1000 - i128::from(now_ms)).max(0);
    let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(u64::MAX));
    (left * 4 / 5).max(Duration::from_millis(200))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How a stream ended.
enum Ended {
    Quit,
    /// Reconnect after this long.
    Reconnect(Duration),
}

/// An interactive chat that survives its gateway: when the stream ends (a
/// gateway stopping or dying, a network drop, a slow read) it reconnects,
/// trying the gateways in turn, and rejoins every conversation resuming
/// after the last seq it showed, so nothing is missed or shown twice.
pub(crate) async fn interactive(
    gateways: Vec<String>,
    ca_cert: Option<Vec<u8>>,
    credentials: Credentials,
    user: String,
    conversations: Vec<String>,
) -> anyhow::Result<()> {
    let mut chat = Chat {
        current: conversations.first().cloned(),
        joined: conversations.into_iter().collect(),
        ..Default::default()
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(250);
    loop {
        let gateway = &gateways[attempt % gateways.len()];
        attempt += 1;
        let token = credentials.token().await?;
        let ended = match connect_once(gateway, ca_cert.as_deref(), &token).await {
            Ok((tx, events)) => {
                backoff = Duration::from_millis(250);
                println!("* connected to {gateway} as {user}. {HELP}");
                for join in chat.rejoin_frames() {
                    tx.send(join).await.context("stream closed")?;
                }
                let terminal = Terminal { lines: &mut lines, open: &mut stdin_open };
                let renew = Renewal { credentials: &credentials, token: &token };
                session(&mut chat, &user, renew, tx, events, terminal).await?
            }
            Err(e) => {
                println!("! {e:#}");
                Ended::Reconnect(backoff)
            }
        };
        match ended {
            Ended::Quit => return Ok(()),
            Ended::Reconnect(wait) => {
                println!("* reconnecting in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn connect_once(
    gateway: &str,
    ca_cert: Option<&[u8]>,
    token: &str,
) -> anyhow::Result<(mpsc::Sender<ClientFrame>, Streaming<ServerEvent>)> {
    let bearer = format!("Bearer {token}").parse().context("token is not valid metadata")?;
    let mut client = crate::authed(crate::channel(gateway, ca_cert).await?, bearer);
    let (tx, rx) = mpsc::channel::<ClientFrame>(64);
    let events = client.connect(ReceiverStream::new(rx)).await.context("opening the chat stream")?.into_inner();
    Ok((tx, events))
}

type Lines = tokio::io::Lines<BufReader<tokio::io::Stdin>>;

/// How a stream's token is renewed: where fresh ones come from, and the
/// one the stream was opened with.
struct Renewal<'a> {
    credentials: &'a Credentials,
    token: &'a str,
}

/// The terminal's input, kept across reconnections.
struct Terminal<'a> {
    lines: &'a mut Lines,
    open: &'a mut bool,
}

async fn session(
    chat: &mut Chat,
    user: &str,
    renewal: Renewal<'_>,
    tx: mpsc::Sender<ClientFrame>,
    mut events: Streaming<ServerEvent>,
    terminal: Terminal<'_>,
) -> anyhow::Result<Ended> {
    let Terminal { lines, open: stdin_open } = terminal;
    let Renewal { credentials, token } = renewal;
    let renew = tokio::time::sleep(renew_in(token, now_ms()));
    tokio::pin!(renew);
    let mut token_expired = false;
    loop {
        tokio::select! {
            () = &mut renew, if credentials.renewable() => {
                let next = match credentials.token().await {
                    Ok(token) => {
                        let next = renew_in(&token, now_ms());
                        let _ = tx.send(frame(Frame::Refresh(RefreshTokenFrame { token }))).await;
                        next
                    }
                    Err(e) => {
                        println!("! could not get a fresh token: {e:#}");
                        Duration::from_secs(5)
                    }
                };
                renew.as_mut().reset(tokio::time::Instant::now() + next);
            }
            line = lines.next_line(), if *stdin_open => {
                let Some(line) = line? else { *stdin_open = false; continue };
                let out = match parse(&line) {
                    Input::Join(c) => {
                        chat.current.get_or_insert(c.clone());
                        chat.joined.insert(c.clone());
                        Some(Frame::Join(JoinFrame { conversation_id: c, resume_after_seq: None }))
                    }
                    Input::Leave(c) => {
                        chat.joined.remove(&c);
                        Some(Frame::Leave(LeaveFrame { conversation_id: c }))
                    }
                    Input::Switch(c) => { println!("* now talking in {c}"); chat.current = Some(c); None }
                    Input::Typing => chat.current.clone().map(|c| Frame::Typing(TypingFrame { conversation_id: c, typing: true })),
                    Input::Quit => return Ok(Ended::Quit),
                    Input::Help => { println!("{HELP}"); None }
                    Input::Nothing => None,
                    Input::Say(body) => match &chat.current {
                        Some(c) => {
                            let send = SendFrame { conversation_id: c.clone(), client_message_id: ulid::Ulid::new().to_string(), body };
                            chat.unanswered.insert(send.client_message_id.clone(), send.clone());
                            Some(Frame::Send(send))
                        }
                        None => { println!("! join a room first: /join ROOM"); None }
                    },
                };
                if let Some(f) = out
                    && tx.send(frame(f)).await.is_err()
                {
                    println!("! not sent: the stream is closed");
                }
            }
            event = events.message() => {
                let event = match event {
                    Ok(Some(ServerEvent { event: Some(event) })) => event,
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(Ended::Reconnect(Duration::from_millis(250))),
                    Err(status) if status.code() == tonic::Code::Unauthenticated => {
                        return match (token_expired, credentials.renewable()) {
                            (true, true) => {
                                println!("* the token expired; reconnecting with a fresh one");
                                Ok(Ended::Reconnect(Duration::ZERO))
                            }
                            (true, false) => anyhow::bail!(
                                "your token expired: get a fresh one (`chat token`, or your identity provider) and connect again"
                            ),
                            (false, _) => anyhow::bail!("the gateway refused the token: {}", status.message()),
                        };
                    }
                    Err(status) => {
                        println!("* stream ended: {:?}: {}", status.code(), status.message());
                        return Ok(Ended::Reconnect(Duration::from_millis(250)));
                    }
                };
                match &event {
                    Event::Message(m) => {
                        chat.saw(&m.conversation_id, m.seq);
                        // Acknowledge what was shown (delivery receipts).
                        let _ = tx.try_send(frame(Frame::Ack(AckFrame { conversation_id: m.conversation_id.clone(), seq: m.seq })));
                    }
                    // A first join starts the resume point at the join: what
                    // came before is history, not missed.
                    Event::PresenceSnapshot(p) => {
                        chat.last_seq.entry(p.conversation_id.clone()).or_insert(p.last_seq);
                    }
                    Event::Disconnect(d) => {
                        for point in &d.resume {
                            chat.saw(&point.conversation_id, point.last_seq);
                        }
                        token_expired = d.reason == disconnect::Reason::TokenExpired as i32;
                    }
                    Event::SendAccepted(a) => chat.answered(&a.client_message_id),
                    Event::Error(e) if !e.client_message_id.is_empty() => chat.answered(&e.client_message_id),
                    _ => {}
                }
                if worth_showing(&event, user)
                    && let Some(line) = render(&event)
                {
                    println!("{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_resume_after_the_last_seq_shown() {
        let mut chat = Chat { joined: ["a".to_string(), "b".to_string()].into(), ..Default::default() };
        chat.saw("a", 7);
        chat.saw("a", 5);
        let joins: Vec<(String, Option<u64>)> = chat
            .rejoin_frames()
            .into_iter()
            .filter_map(|f| match f.frame {
                Some(Frame::Join(j)) => Some((j.conversation_id, j.resume_after_seq)),
                _ => None,
            })
            .collect();
        assert_eq!(joins, vec![("a".to_string(), Some(7)), ("b".to_string(), None)]);
    }

    fn token_expiring_at(exp: u64) -> String {
        let claims = serde_json::json!({ "sub": "alice", "exp": exp });
        format!("e30.{}.sig", base64_url(claims.to_string().as_bytes()))
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn fresh_tokens_go_out_well_before_expiry() {
        let now_ms = 1_000_000;
        assert_eq!(renew_in(&token_expiring_at(1_100), now_ms), Duration::from_secs(80));
        assert_eq!(renew_in(&token_expiring_at(1_001), now_ms), Duration::from_millis(800));
        assert_eq!(renew_in(&token_expiring_at(999), now_ms), Duration::from_millis(200));
        assert_eq!(renew_in("not a token", now_ms), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn credentials_give_tokens() {
        let given = Credentials::Given("t".into());
        assert!(!given.renewable());
        assert_eq!(given.token().await.expect("token"), "t");
        let minted = Credentials::Minted(Box::new(|| Ok("m".into())));
        assert!(minted.renewable());
        assert_eq!(minted.token().await.expect("token"), "m");
        let command = Credentials::Command("echo '  c.o.m  '".into());
        assert_eq!(command.token().await.expect("token"), "c.o.m");
        for bad in ["false", "true", "echo two words", "exit 3"] {
            assert!(Credentials::Command(bad.into()).token().await.is_err(), "{bad}");
        }
    }

    #[test]
    fn unanswered_sends_are_resent_after_the_joins_with_their_ids() {
        let mut chat = Chat { joined: ["a".to_string()].into(), ..Default::default() };
        for (id, body) in [("01B", "second"), ("01A", "first"), ("01C", "answered")] {
            let send = SendFrame { conversation_id: "a".into(), client_message_id: id.into(), body: body.into() };
            chat.unanswered.insert(id.into(), send);
        }
        chat.answered("01C");
        let frames: Vec<String> = chat
            .rejoin_frames()
            .into_iter()
            .filter_map(|f| match f.frame {
                Some(Frame::Join(j)) => Some(format!("join {}", j.conversation_id)),
                Some(Frame::Send(s)) => Some(format!("send {} {}", s.client_message_id, s.body)),
                _ => None,
            })
            .collect();
        assert_eq!(frames, ["join a", "send 01A first", "send 01B second"]);
    }

    #[test]
    fn parses_commands_and_messages() {
        assert_eq!(parse("/join room1"), Input::Join("room1".into()));
        assert_eq!(parse("/leave  room1 "), Input::Leave("room1".into()));
        assert_eq!(parse("/switch r2"), Input::Switch("r2".into()));
        assert_eq!(parse("/typing"), Input::Typing);
        assert_eq!(parse("/quit"), Input::Quit);
        assert_eq!(parse("hello there"), Input::Say("hello there".into()));
        assert_eq!(parse("   "), Input::Nothing);
    }
}
