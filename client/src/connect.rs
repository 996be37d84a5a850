//! The interactive terminal chat: stdin lines become frames, server events
//! become lines on stdout.

use std::collections::HashMap;

use anyhow::Context;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::{
    AckFrame, ClientFrame, JoinFrame, LeaveFrame, SendFrame, TypingFrame, client_frame::Frame, server_event::Event,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::render::render;

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

pub(crate) async fn interactive(mut client: Client, user: String, conversations: Vec<String>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<ClientFrame>(64);
    for c in &conversations {
        tx.send(frame(Frame::Join(JoinFrame { conversation_id: c.clone(), resume_after_seq: None }))).await?;
    }
    let mut current = conversations.first().cloned();
    let mut events = client.connect(ReceiverStream::new(rx)).await.context("opening the chat stream")?.into_inner();
    println!("connected as {user}. {HELP}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut names: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => {
                let Some(line) = line? else { stdin_open = false; continue };
                let out = match parse(&line) {
                    Input::Join(c) => { current.get_or_insert(c.clone()); Some(Frame::Join(JoinFrame { conversation_id: c, resume_after_seq: None })) }
                    Input::Leave(c) => Some(Frame::Leave(LeaveFrame { conversation_id: c })),
                    Input::Switch(c) => { println!("* now talking in {c}"); current = Some(c); None }
                    Input::Typing => current.clone().map(|c| Frame::Typing(TypingFrame { conversation_id: c, typing: true })),
                    Input::Quit => break,
                    Input::Help => { println!("{HELP}"); None }
                    Input::Nothing => None,
                    Input::Say(body) => match &current {
                        Some(c) => Some(Frame::Send(SendFrame { conversation_id: c.clone(), client_message_id: ulid::Ulid::new().to_string(), body })),
                        None => { println!("! join a room first: /join ROOM"); None }
                    },
                };
                if let Some(f) = out {
                    tx.send(frame(f)).await.context("stream closed")?;
                }
            }
            event = events.message() => {
                let Some(event) = event.map_err(|s| anyhow::anyhow!("stream ended: {:?}: {}", s.code(), s.message()))? else {
                    println!("* stream closed by the gateway");
                    break;
                };
                let Some(event) = event.event else { continue };
                if let Event::Message(m) = &event {
                    names.insert(m.sender.clone(), m.sender.clone());
                    // Acknowledge what was shown (delivery receipts).
                    let _ = tx.try_send(frame(Frame::Ack(AckFrame { conversation_id: m.conversation_id.clone(), seq: m.seq })));
                }
                if let Some(line) = render(&event, &user) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
