//! The interactive terminal chat: stdin lines become frames, server events
//! become lines on stdout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::{
    AckFrame, ClientFrame, JoinFrame, LeaveFrame, SendFrame, ServerEvent, TypingFrame, client_frame::Frame,
    server_event::Event,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
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
    bearer: MetadataValue<Ascii>,
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
        let ended = match connect_once(gateway, &bearer).await {
            Ok((tx, events)) => {
                backoff = Duration::from_millis(250);
                println!("* connected to {gateway} as {user}. {HELP}");
                for join in chat.rejoin_frames() {
                    tx.send(join).await.context("stream closed")?;
                }
                session(&mut chat, &user, tx, events, &mut lines, &mut stdin_open).await?
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
    bearer: &MetadataValue<Ascii>,
) -> anyhow::Result<(mpsc::Sender<ClientFrame>, Streaming<ServerEvent>)> {
    let mut client = crate::authed(crate::channel(gateway).await?, bearer.clone());
    let (tx, rx) = mpsc::channel::<ClientFrame>(64);
    let events = client.connect(ReceiverStream::new(rx)).await.context("opening the chat stream")?.into_inner();
    Ok((tx, events))
}

type Lines = tokio::io::Lines<BufReader<tokio::io::Stdin>>;

async fn session(
    chat: &mut Chat,
    user: &str,
    tx: mpsc::Sender<ClientFrame>,
    mut events: Streaming<ServerEvent>,
    lines: &mut Lines,
    stdin_open: &mut bool,
) -> anyhow::Result<Ended> {
    loop {
        tokio::select! {
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
                        anyhow::bail!("the gateway refused the token: {}", status.message())
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
