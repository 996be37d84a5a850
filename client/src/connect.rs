//! The interactive terminal chat: stdin lines become frames, server events
//! become lines on stdout.
//!
//! Tokens: a chat that mints its own (the shared secret is at hand) sends
//! the gateway a fresh one on the stream before the current one expires,
//! so the stream is never cut; one given a token (`--token`) runs until the
//! gateway ends the stream with `Disconnect { TOKEN_EXPIRED }`, then says so
//! and stops.

use std::collections::{BTreeSet, HashMap};
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

/// What the chat keeps across reconnections: the conversations joined and,
/// per conversation, the last seq shown (the resume point).
#[derive(Debug, Default)]
struct Chat {
    joined: BTreeSet<String>,
    last_seq: HashMap<String, u64>,
    current: Option<String>,
}

impl Chat {
    fn saw(&mut self, conversation_id: &str, seq: u64) {
        let last = self.last_seq.entry(conversation_id.to_owned()).or_insert(0);
        *last = (*last).max(seq);
    }

    /// The join frames that restore this chat on a new stream.
    fn rejoin_frames(&self) -> Vec<ClientFrame> {
        self.joined
            .iter()
            .map(|c| {
                frame(Frame::Join(JoinFrame {
                    conversation_id: c.clone(),
                    resume_after_seq: self.last_seq.get(c).copied(),
                }))
            })
            .collect()
    }
}

/// Where the chat's bearer tokens come from.
pub(crate) enum Credentials {
    /// A token given as is: used until it expires.
    Given(String),
    /// Minted here with the shared secret, each valid for `ttl`.
    Minted { mint: Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>, ttl: Duration },
}

impl Credentials {
    /// A token for the next connection.
    fn token(&self) -> anyhow::Result<String> {
        match self {
            Credentials::Given(token) => Ok(token.clone()),
            Credentials::Minted { mint, .. } => mint(),
        }
    }

    /// How often a fresh token is sent on the stream, when one can be made.
    fn refresh_every(&self) -> Option<Duration> {
        match self {
            Credentials::Given(_) => None,
            Credentials::Minted { ttl, .. } => Some(refresh_period(*ttl)),
        }
    }
}

/// When to send a fresh token: at four fifths of the shortest life a token
/// minted for `ttl` can have (`exp` is in whole seconds, so a token minted
/// late in a second lives up to one second less), well before the cut-off.
fn refresh_period(ttl: Duration) -> Duration {
    (ttl.saturating_sub(Duration::from_secs(1)) * 4 / 5).max(Duration::from_millis(200))
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
        let ended = match connect_once(gateway, ca_cert.as_deref(), &credentials.token()?).await {
            Ok((tx, events)) => {
                backoff = Duration::from_millis(250);
                println!("* connected to {gateway} as {user}. {HELP}");
                for join in chat.rejoin_frames() {
                    tx.send(join).await.context("stream closed")?;
                }
                let terminal = Terminal { lines: &mut lines, open: &mut stdin_open };
                session(&mut chat, &user, &credentials, tx, events, terminal).await?
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

/// The terminal's input, kept across reconnections.
struct Terminal<'a> {
    lines: &'a mut Lines,
    open: &'a mut bool,
}

async fn session(
    chat: &mut Chat,
    user: &str,
    credentials: &Credentials,
    tx: mpsc::Sender<ClientFrame>,
    mut events: Streaming<ServerEvent>,
    terminal: Terminal<'_>,
) -> anyhow::Result<Ended> {
    let Terminal { lines, open: stdin_open } = terminal;
    let refresh_every = credentials.refresh_every();
    // The first tick of an interval is immediate: start one period in.
    let period = refresh_every.unwrap_or(Duration::from_secs(3600));
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut token_expired = false;
    loop {
        tokio::select! {
            _ = refresh.tick(), if refresh_every.is_some() => {
                match credentials.token() {
                    Ok(token) => {
                        let _ = tx.send(frame(Frame::Refresh(RefreshTokenFrame { token }))).await;
                    }
                    Err(e) => println!("! could not make a fresh token: {e:#}"),
                }
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
                        Some(c) => Some(Frame::Send(SendFrame { conversation_id: c.clone(), client_message_id: ulid::Ulid::new().to_string(), body })),
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
                        return match (token_expired, credentials) {
                            (true, Credentials::Minted { .. }) => {
                                println!("* the token expired; reconnecting with a fresh one");
                                Ok(Ended::Reconnect(Duration::ZERO))
                            }
                            (true, Credentials::Given(_)) => anyhow::bail!(
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

    #[test]
    fn fresh_tokens_go_out_well_before_expiry() {
        assert_eq!(refresh_period(Duration::from_secs(101)), Duration::from_secs(80));
        assert_eq!(refresh_period(Duration::from_secs(2)), Duration::from_millis(800));
        assert_eq!(refresh_period(Duration::from_secs(1)), Duration::from_millis(200));
        let given = Credentials::Given("t".into());
        assert_eq!(given.refresh_every(), None);
        assert_eq!(given.token().expect("token"), "t");
        let minted = Credentials::Minted { mint: Box::new(|| Ok("m".into())), ttl: Duration::from_secs(11) };
        assert_eq!(minted.refresh_every(), Some(Duration::from_secs(8)));
        assert_eq!(minted.token().expect("token"), "m");
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
