//! Conversations as resources, end to end: who may join, read, send and
//! administer; removals and bans reaching streams on every gateway; direct
//! conversations one per pair; roles and ownership. Each scenario runs on
//! two gateways on the emulator and on the embedded memory mode.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chat_e2e::client::{TestClient, summarize, with_token};
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios::{accepted, error_for, messages};
use chat_e2e::stored::Reader;
use chat_e2e::unique;
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{
    ConversationKind, CreateConversationRequest, GetHistoryRequest, GetMessageRequest, JoinFrame,
    ListConversationsRequest, MarkReadRequest, MemberRemoved, ReadFrame, Role, RoleChanged, SendFrame, TypingFrame,
};
use tonic::Code;

/// How soon a removal reaches the removed member's streams on another gateway.
const REMOVAL_WITHIN: Duration = Duration::from_secs(1);

/// Two gateways on the emulator, with `persist` (so stored messages exist
/// to be asked about).
async fn aws() -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::aws(2).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "50")])?;
    Ok(cluster)
}

/// The refusal of a call that must fail, as code and message.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> anyhow::Result<(Code, String)> {
    match result {
        Ok(answer) => bail!("{what} succeeded: {answer:?}"),
        Err(status) => Ok((status.code(), status.message().to_owned())),
    }
}

/// Fails unless `result` was refused with `code`.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code) -> anyhow::Result<String> {
    let (got, message) = refusal(what, result)?;
    ensure!(got == code, "{what}: expected {code:?}, got {got:?} {message}");
    Ok(message)
}

/// Waits (up to `within`) for a `MemberRemoved` of `user` in `conversation`.
async fn removal_of(
    client: &mut TestClient,
    conversation: &str,
    user: &str,
    within: Duration,
) -> anyhow::Result<MemberRemoved> {
    client
        .wait_for_within(within, |e| match e {
            Event::MemberRemoved(r) if r.conversation_id == conversation && r.user_id == user => Some(r.clone()),
            _ => None,
        })
        .await
}

async fn role_change(
    client: &mut TestClient,
    conversation: &str,
    user: &str,
    role: Role,
) -> anyhow::Result<RoleChanged> {
    client
        .wait_for(|e| match e {
            Event::RoleChanged(r)
                if r.conversation_id == conversation && r.user_id == user && r.role == role as i32 =>
            {
                Some(r.clone())
            }
            _ => None,
        })
        .await
}

/// The refusal of a join frame, with the conversation id replaced.
async fn join_refusal(client: &mut TestClient, conversation: &str, request_id: &str) -> anyhow::Result<(Code, String)> {
    let frame = Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: None });
    client.frame(request_id, frame).await?;
    let (code, message) = error_for(client, request_id).await?;
    Ok((code, message.replace(conversation, "<conversation>")))
}

/// Members of a conversation with their roles, as `GetConversation` lists them.
async fn roles(cluster: &Cluster, index: usize, user: &str, conversation: &str) -> anyhow::Result<Vec<(String, Role)>> {
    let details = cluster
        .get_conversation(index, user, conversation)
        .await?
        .map_err(|s| anyhow::anyhow!("GetConversation as {user}: {:?} {}", s.code(), s.message()))?;
    let mut members: Vec<(String, Role)> =
        details.members.into_iter().map(|m| (m.user_id, Role::try_from(m.role).unwrap_or(Role::Unspecified))).collect();
    members.sort();
    Ok(members)
}

fn listed(members: &[(&str, Role)]) -> Vec<(String, Role)> {
    let mut members: Vec<(String, Role)> = members.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect();
    members.sort();
    members
}

/// Every way a user can reach a conversation, as `user` on gateway `index`,
/// with each answer's conversation id replaced by `<conversation>`: what
/// someone who may not reach `conversation` learns about it. `message_id`
/// names a message (one stored in some conversation).
async fn outsider_answers(
    cluster: &Cluster,
    index: usize,
    user: &str,
    conversation: &str,
    message_id: &str,
) -> anyhow::Result<Vec<(&'static str, Code, String)>> {
    let mut answers = Vec::new();
    let normal = |message: String| message.replace(conversation, "<conversation>");
    let mut stream = cluster.connect(index, user).await?;
    let frames: [(&'static str, Frame); 5] = [
        ("join", Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: None })),
        (
            "join with resume",
            Frame::Join(JoinFrame { conversation_id: conversation.into(), resume_after_seq: Some(1) }),
        ),
        (
            "send frame",
            Frame::Send(SendFrame {
                conversation_id: conversation.into(),
                client_message_id: "probe".into(),
                body: "let me in".into(),
            }),
        ),
        ("typing frame", Frame::Typing(TypingFrame { conversation_id: conversation.into(), typing: true })),
        ("read frame", Frame::Read(ReadFrame { conversation_id: conversation.into(), seq: 1 })),
    ];
    for (what, frame) in frames {
        stream.frame(what, frame).await?;
        let (code, message) = error_for(&mut stream, what).await?;
        answers.push((what, code, normal(message)));
    }
    ensure!(
        !stream.received.iter().any(|e| matches!(e, Event::PresenceSnapshot(_) | Event::Message(_))),
        "{user} learned something of {conversation}: {:?}",
        summarize(&stream.received)
    );

    let token = cluster.token(user)?;
    let mut client = ChatServiceClient::new(cluster.channel(index).await?);
    let c = conversation.to_owned();
    let mut unary = |what: &'static str, result: Result<(), tonic::Status>| -> anyhow::Result<()> {
        let (code, message) = refusal(what, result)?;
        answers.push((what, code, normal(message)));
        Ok(())
    };
    let history = GetHistoryRequest { conversation_id: c.clone(), ..Default::default() };
    unary("GetHistory", client.get_history(with_token(history, &token)?).await.map(|_| ()))?;
    let get = GetMessageRequest { conversation_id: c.clone(), message_id: message_id.into() };
    unary("GetMessage", client.get_message(with_token(get, &token)?).await.map(|_| ()))?;
    unary("GetMessageStatus", cluster.message_status(index, user, &c, message_id).await?.map(|_| ()))?;
    unary("SendMessage", cluster.send_unary(index, user, &c, "probe", "let me in").await?.map(|_| ()))?;
    let mark = MarkReadRequest { conversation_id: c.clone(), seq: 1 };
    unary("MarkRead", client.mark_read(with_token(mark, &token)?).await.map(|_| ()))?;
    unary("AddMember", cluster.add_member(index, user, &c, "eve").await?.map(|_| ()))?;
    unary("GetConversation", cluster.get_conversation(index, user, &c).await?.map(|_| ()))?;
    unary("RemoveMember", cluster.remove_member(index, user, &c, "eve", true).await?.map(|_| ()))?;
    unary("UnbanMember", cluster.unban_member(index, user, &c, "eve").await?.map(|_| ()))?;
    unary("SetRole", cluster.set_role(index, user, &c, "eve", Role::Admin).await?.map(|_| ()))?;
    Ok(answers)
}

/// A private conversation looks, to a non-member, exactly like one that does
/// not exist: every call and frame gets the same code and message, and
/// nothing of it leaks (no membership, no presence, no listing).
async fn private_is_indistinguishable_from_absent(cluster: &Cluster) -> anyhow::Result<()> {
    let secret = cluster.private_room("alice", "secret-", &["bob"]).await?;
    let absent = unique("secret-");
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&secret).await?;
    alice.send(&secret, "s-1", "for members only").await?;
    let message_id = accepted(&mut alice, 1).await?.remove(0).message_id;
    // Stored, so a lookup before the membership check would answer
    // differently for the two ids.
    Reader::new(cluster, 0, "alice").await?.wait_stored(&secret, 1).await?;

    let private = outsider_answers(cluster, 1, "mallory", &secret, &message_id).await?;
    let nowhere = outsider_answers(cluster, 1, "mallory", &absent, &message_id).await?;
    for ((what, code, message), (_, absent_code, absent_message)) in private.iter().zip(&nowhere) {
        ensure!(
            (code, message) == (absent_code, absent_message),
            "{what}: a private conversation answers {code:?} {message:?}, an absent one {absent_code:?} {absent_message:?}"
        );
        let expected = if matches!(*what, "send frame" | "typing frame" | "read frame") {
            Code::FailedPrecondition // not joined on this stream
        } else {
            Code::PermissionDenied
        };
        ensure!(*code == expected, "{what}: {code:?} {message}");
        if expected == Code::PermissionDenied {
            ensure!(message.contains("does not exist or you are not a member"), "{what}: {message}");
        }
    }
    ensure!(private.len() == 15, "every way in was tried: {private:?}");

    // Nothing of mallory's attempts reached the members or the membership.
    ensure!(roles(cluster, 0, "alice", &secret).await? == listed(&[("alice", Role::Owner), ("bob", Role::Member)]));
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&secret).await?;
    // Sent after mallory's attempts: once alice has it, what they published
    // has reached her too.
    bob.send(&secret, "s-2", "sentinel").await?;
    alice.wait_for(|e| matches!(e, Event::Message(m) if m.client_message_id == "s-2").then_some(())).await?;
    let mut client = ChatServiceClient::new(cluster.channel(1).await?);
    let listing = client
        .list_conversations(with_token(ListConversationsRequest::default(), &cluster.token("mallory")?)?)
        .await?
        .into_inner();
    ensure!(listing.conversations.is_empty(), "mallory lists {:?}", listing.conversations);
    let leaked: Vec<_> = alice.received.iter().filter(|e| format!("{e:?}").contains("mallory")).collect();
    ensure!(leaked.is_empty(), "members heard of mallory's refused attempts: {leaked:?}");
    Ok(())
}

/// bob, removed by alice on the other gateway, is told within a second and
/// then hears nothing more of the conversation (carol, on his gateway,
/// does), and his stream can no longer send there.
async fn removed_member_is_cut_off_everywhere(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.private_room("alice", "removal-", &["bob", "carol"]).await?;
    // bob's sentinel: a conversation he stays in.
    let side = cluster.private_room("alice", "side-", &["bob"]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    let mut carol = cluster.connect(1, "carol").await?;
    // bob's other device, on alice's gateway.
    let mut bob_laptop = cluster.connect(0, "bob").await?;
    for client in [&mut alice, &mut bob, &mut carol, &mut bob_laptop] {
        client.join(&room).await?;
    }
    alice.join(&side).await?;
    bob.join(&side).await?;
    alice.send(&room, "before", "before the removal").await?;
    messages(&mut bob, &room, 1).await?;
    messages(&mut carol, &room, 1).await?;

    let started = Instant::now();
    let removed = cluster.remove_member(0, "alice", &room, "bob", false).await?;
    ensure!(matches!(removed, Ok(true)), "removing bob: {removed:?}");
    let told = removal_of(&mut bob, &room, "bob", REMOVAL_WITHIN)
        .await
        .with_context(|| format!("bob was not told of his removal within {REMOVAL_WITHIN:?}"))?;
    let took = started.elapsed();
    ensure!(told.by == "alice" && !told.banned, "bob's MemberRemoved: {told:?}");
    let seen = removal_of(&mut carol, &room, "bob", chat_e2e::DEADLINE).await?;
    ensure!(seen == told, "carol saw {seen:?}, bob {told:?}");
    let laptop = removal_of(&mut bob_laptop, &room, "bob", REMOVAL_WITHIN).await.context("bob's other device")?;
    ensure!(laptop == told, "bob's laptop saw {laptop:?}");
    removal_of(&mut alice, &room, "bob", chat_e2e::DEADLINE).await?;

    alice.send(&room, "after", "bob must not see this").await?;
    let after = messages(&mut carol, &room, 1).await?.remove(0);
    ensure!(after.client_message_id == "after", "carol got {after:?}");
    // Published after carol had it: once bob has it, anything of the room
    // dispatched to him before would have reached him too.
    alice.send(&side, "sentinel", "still here").await?;
    messages(&mut bob, &side, 1).await?;
    let leaked: Vec<u64> = bob.messages_of(&room).iter().filter(|m| m.seq >= after.seq).map(|m| m.seq).collect();
    ensure!(leaked.is_empty(), "bob received seqs {leaked:?} after his removal");
    // Nor is he online there: his stream lives on, but holds the room no
    // longer (checked before his stream sends anything more, since any frame
    // about the room makes it notice).
    // (The removal itself clears his presence, so this holds at once.)
    let mut still_online = None;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut look = cluster.connect(0, "alice").await?;
        let online = look.join(&room).await?.online;
        if !online.iter().any(|u| u == "bob") {
            println!("bob listed online for {:?} after his removal", started.elapsed());
            break;
        }
        if Instant::now() > deadline {
            still_online = Some(online);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = ChatServiceClient::new(cluster.channel(1).await?);
    let listing = client
        .list_conversations(with_token(ListConversationsRequest::default(), &cluster.token("bob")?)?)
        .await?
        .into_inner();
    let ids: Vec<&str> = listing.conversations.iter().map(|c| c.conversation_id.as_str()).collect();
    ensure!(!ids.contains(&room.as_str()) && ids.contains(&side.as_str()), "bob's conversations: {ids:?}");

    bob.send(&room, "removed-send", "am I still here?").await?;
    let (code, message) = error_for(&mut bob, "removed-send").await?;
    ensure!(
        code == Code::FailedPrecondition && message.contains("removed"),
        "a removed stream's send: {code:?} {message}"
    );
    bob_laptop.typing(&room, true).await?;
    let (code, _) = error_for(&mut bob_laptop, "typing").await?;
    ensure!(code == Code::FailedPrecondition, "typing on a removed device's stream: {code:?}");
    // A former member of a private conversation now learns of it what
    // anyone does of one that does not exist.
    let removed = outsider_answers(cluster, 1, "bob", &room, &after.message_id).await?;
    let absent = outsider_answers(cluster, 1, "bob", &unique("removal-"), &after.message_id).await?;
    ensure!(
        removed == absent,
        "a removed member's answers {removed:?} differ from an absent conversation's {absent:?}"
    );
    ensure!(roles(cluster, 1, "carol", &room).await? == listed(&[("alice", Role::Owner), ("carol", Role::Member)]));
    // The same member removed again: nobody to remove, no error.
    ensure!(matches!(cluster.remove_member(0, "alice", &room, "bob", false).await?, Ok(false)));
    ensure!(
        refused(
            "removing oneself",
            cluster.remove_member(0, "alice", &room, "alice", false).await?,
            Code::FailedPrecondition
        )?
        .contains("leave"),
        "removing oneself points to leaving"
    );
    println!("removal reached the other gateway's stream in {took:?}");
    ensure!(
        still_online.is_none(),
        "a second after bob's removal, a join's snapshot still lists him online: {still_online:?}"
    );
    Ok(())
}

/// A ban keeps a user out of a public conversation (the same answer as a
/// conversation that does not exist) and from being added, until lifted.
async fn banned_user_stays_out_until_unbanned(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "banned-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    let mut bob = cluster.connect(0, "bob").await?;
    bob.join(&room).await?;
    let mut mallory = cluster.connect(1, "mallory").await?;
    mallory.join(&room).await?;

    ensure!(matches!(cluster.remove_member(0, "alice", &room, "mallory", true).await?, Ok(true)));
    let told = removal_of(&mut mallory, &room, "mallory", REMOVAL_WITHIN).await?;
    ensure!(told.banned && told.by == "alice", "{told:?}");
    removal_of(&mut alice, &room, "mallory", chat_e2e::DEADLINE).await?;
    let banned = join_refusal(&mut mallory, &room, "rejoin").await?;
    let absent = join_refusal(&mut mallory, &unique("banned-"), "join-absent").await?;
    ensure!(banned.0 == Code::PermissionDenied && banned == absent, "banned: {banned:?}; absent: {absent:?}");
    refused("mallory's unary send", cluster.send_unary(1, "mallory", &room, "", "hi").await?, Code::PermissionDenied)?;

    let message = refused(
        "adding a banned user",
        cluster.add_member(0, "alice", &room, "mallory").await?,
        Code::FailedPrecondition,
    )?;
    ensure!(message.contains("banned"), "{message}");
    refused("a member lifting a ban", cluster.unban_member(0, "bob", &room, "mallory").await?, Code::PermissionDenied)?;
    ensure!(matches!(cluster.unban_member(1, "alice", &room, "mallory").await?, Ok(true)), "alice lifts the ban");
    ensure!(matches!(cluster.unban_member(1, "alice", &room, "mallory").await?, Ok(false)), "nothing left to lift");
    ensure!(matches!(cluster.add_member(1, "alice", &room, "mallory").await?, Ok(true)), "unbanned, she can be added");
    alice
        .wait_for(|e| {
            matches!(e, Event::MemberJoined(j) if j.user_id == "mallory" && j.conversation_id == room).then_some(())
        })
        .await?;
    mallory.join(&room).await?;
    alice.send(&room, "welcome", "welcome back").await?;
    messages(&mut mallory, &room, 1).await?;

    // A ban of someone who never was a member keeps them out all the same.
    ensure!(matches!(cluster.remove_member(0, "alice", &room, "eve", true).await?, Ok(false)));
    let mut eve = cluster.connect(1, "eve").await?;
    let kept_out = join_refusal(&mut eve, &room, "eve-join").await?;
    ensure!(kept_out == absent, "a pre-emptively banned user: {kept_out:?}");
    Ok(())
}

/// Creating a direct conversation twice, once by each user, gives one
/// conversation; nobody else gets in or is added.
async fn direct_conversation_is_one_per_pair(cluster: &Cluster) -> anyhow::Result<()> {
    let direct = |members: &[&str]| CreateConversationRequest {
        kind: ConversationKind::Direct as i32,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..Default::default()
    };
    let first = cluster.create_conversation(0, "alice", direct(&["bob"])).await??;
    let second = cluster.create_conversation(1, "bob", direct(&["alice"])).await??;
    let (one, two) = (first.conversation.context("first")?, second.conversation.context("second")?);
    ensure!(first.created && !second.created, "created flags: {} then {}", first.created, second.created);
    ensure!(one == two && one.kind == ConversationKind::Direct as i32, "{one:?} vs {two:?}");
    ensure!(one.conversation_id.starts_with("dm-") && !one.conversation_id.contains("alice"), "{one:?}");
    let id = one.conversation_id;
    ensure!(roles(cluster, 1, "bob", &id).await? == listed(&[("alice", Role::Member), ("bob", Role::Member)]));

    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&id).await?;
    bob.join(&id).await?;
    alice.send(&id, "dm-1", "just us").await?;
    ensure!(messages(&mut bob, &id, 1).await?[0].body == "just us");

    let mut carol = cluster.connect(1, "carol").await?;
    carol.frame("intrude", Frame::Join(JoinFrame { conversation_id: id.clone(), resume_after_seq: None })).await?;
    ensure!(error_for(&mut carol, "intrude").await?.0 == Code::PermissionDenied, "carol joined a direct conversation");
    refused(
        "adding to a direct conversation",
        cluster.add_member(0, "alice", &id, "carol").await?,
        Code::FailedPrecondition,
    )?;
    refused(
        "banning in a direct conversation",
        cluster.remove_member(0, "alice", &id, "bob", true).await?,
        Code::FailedPrecondition,
    )?;
    let carols = cluster.create_conversation(1, "carol", direct(&["alice"])).await??;
    let carols = carols.conversation.context("carol's")?;
    ensure!(carols.conversation_id != id, "another pair has another conversation");

    // Bad direct requests.
    refused(
        "a direct conversation with oneself",
        cluster.create_conversation(0, "alice", direct(&["alice"])).await?,
        Code::InvalidArgument,
    )?;
    refused(
        "a direct conversation of three",
        cluster.create_conversation(0, "alice", direct(&["bob", "carol"])).await?,
        Code::InvalidArgument,
    )?;
    refused(
        "a direct conversation with an external identity",
        cluster.create_conversation(0, "alice", direct(&["whatsapp:+5511999990000"])).await?,
        Code::InvalidArgument,
    )?;
    // Chosen ids: "dm-" is reserved, and a taken id is refused.
    let reserved = CreateConversationRequest {
        kind: ConversationKind::Public as i32,
        conversation_id: format!("dm-{}", unique("")),
        ..Default::default()
    };
    refused("a chosen dm- id", cluster.create_conversation(0, "alice", reserved).await?, Code::InvalidArgument)?;
    let taken = cluster.public_room("alice", "taken-").await?;
    let again = CreateConversationRequest { conversation_id: taken.clone(), ..Default::default() };
    refused("a taken id", cluster.create_conversation(1, "bob", again).await?, Code::AlreadyExists)?;
    ensure!(
        roles(cluster, 0, "alice", &taken).await? == listed(&[("alice", Role::Owner)]),
        "the taken id is unchanged"
    );
    Ok(())
}

/// Who may change whom: plain members nothing, admins those below them,
/// the owner hands over ownership; members see every change.
async fn roles_rank_who_may_change_whom(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.private_room("alice", "roles-", &["bob", "carol", "dave"]).await?;
    let mut bob = cluster.connect(1, "bob").await?;
    let mut carol = cluster.connect(0, "carol").await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    let (set, remove) = (Code::PermissionDenied, Code::PermissionDenied);

    // A plain member changes nobody.
    refused("a member adding", cluster.add_member(1, "bob", &room, "eve").await?, Code::PermissionDenied)?;
    refused("a member removing", cluster.remove_member(1, "bob", &room, "carol", false).await?, remove)?;
    refused("a member promoting", cluster.set_role(1, "bob", &room, "carol", Role::Admin).await?, set)?;
    refused("a member promoting himself", cluster.set_role(1, "bob", &room, "bob", Role::Admin).await?, set)?;

    // The owner makes bob an admin; the members see it.
    cluster.set_role(0, "alice", &room, "bob", Role::Admin).await??;
    let changed = role_change(&mut carol, &room, "bob", Role::Admin).await?;
    ensure!(changed.by == "alice", "{changed:?}");
    role_change(&mut bob, &room, "bob", Role::Admin).await?;

    // An admin: adds, grants up to admin, removes those below; never the
    // owner or another admin.
    ensure!(matches!(cluster.add_member(1, "bob", &room, "erin").await?, Ok(true)), "an admin adds");
    cluster.set_role(1, "bob", &room, "carol", Role::Admin).await??;
    role_change(&mut carol, &room, "carol", Role::Admin).await?;
    refused("an admin removing the owner", cluster.remove_member(1, "bob", &room, "alice", false).await?, remove)?;
    refused("an admin removing an admin", cluster.remove_member(1, "bob", &room, "carol", true).await?, remove)?;
    refused("an admin demoting an admin", cluster.set_role(1, "bob", &room, "carol", Role::Member).await?, set)?;
    refused("an admin demoting the owner", cluster.set_role(1, "bob", &room, "alice", Role::Member).await?, set)?;
    refused("an admin transferring ownership", cluster.set_role(1, "bob", &room, "dave", Role::Owner).await?, set)?;
    ensure!(
        matches!(cluster.remove_member(1, "bob", &room, "dave", false).await?, Ok(true)),
        "an admin removes a member"
    );
    refused(
        "a role for a non-member",
        cluster.set_role(0, "alice", &room, "dave", Role::Admin).await?,
        Code::FailedPrecondition,
    )?;
    refused(
        "an unspecified role",
        cluster.set_role(0, "alice", &room, "erin", Role::Unspecified).await?,
        Code::InvalidArgument,
    )?;

    // The owner hands over to carol and becomes an admin.
    cluster.set_role(0, "alice", &room, "carol", Role::Owner).await??;
    // Two events, in either order.
    let (mut to_carol, mut to_alice) = (None, None);
    bob.wait_for(|e| {
        if let Event::RoleChanged(r) = e
            && r.conversation_id == room
        {
            match (r.user_id.as_str(), Role::try_from(r.role)) {
                ("carol", Ok(Role::Owner)) => to_carol = Some(r.by.clone()),
                ("alice", Ok(Role::Admin)) => to_alice = Some(r.by.clone()),
                _ => {}
            }
        }
        (to_carol.is_some() && to_alice.is_some()).then_some(())
    })
    .await?;
    ensure!(to_carol.as_deref() == Some("alice") && to_alice.as_deref() == Some("alice"), "{to_carol:?} {to_alice:?}");
    ensure!(
        roles(cluster, 1, "erin", &room).await?
            == listed(&[("alice", Role::Admin), ("bob", Role::Admin), ("carol", Role::Owner), ("erin", Role::Member)]),
        "members after the handover"
    );
    refused("a former owner transferring again", cluster.set_role(0, "alice", &room, "bob", Role::Owner).await?, set)?;
    refused(
        "an admin removing the new owner",
        cluster.remove_member(0, "alice", &room, "carol", false).await?,
        remove,
    )?;
    ensure!(
        matches!(cluster.remove_member(0, "carol", &room, "alice", false).await?, Ok(true)),
        "the owner removes an admin"
    );
    ensure!(
        roles(cluster, 0, "carol", &room).await?
            == listed(&[("bob", Role::Admin), ("carol", Role::Owner), ("erin", Role::Member)]),
        "members after alice's removal"
    );
    Ok(())
}

/// Anyone joins a public conversation by id and becomes a member (the
/// others see it); a conversation created without a kind is private.
async fn anyone_joins_a_public_conversation(cluster: &Cluster) -> anyhow::Result<()> {
    let room = cluster.public_room("alice", "lobby-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    let mut erin = cluster.connect(1, "erin").await?;
    let snapshot = erin.join(&room).await?;
    ensure!(snapshot.online.contains(&"erin".to_string()), "{snapshot:?}");
    alice
        .wait_for(|e| {
            matches!(e, Event::MemberJoined(j) if j.user_id == "erin" && j.conversation_id == room).then_some(())
        })
        .await?;
    ensure!(roles(cluster, 1, "erin", &room).await? == listed(&[("alice", Role::Owner), ("erin", Role::Member)]));
    let sent = cluster.send_unary(1, "erin", &room, "hi", "hello lobby").await??;
    ensure!(messages(&mut alice, &room, 1).await?[0].message_id == sent.message_id);
    let mut client = ChatServiceClient::new(cluster.channel(1).await?);
    let listing = client
        .list_conversations(with_token(ListConversationsRequest::default(), &cluster.token("erin")?)?)
        .await?
        .into_inner();
    ensure!(
        listing.conversations.iter().any(|c| c.conversation_id == room),
        "erin's listing {:?}",
        listing.conversations
    );
    // Membership, not the join, is what counts: erin may not administer.
    refused("a joiner adding", cluster.add_member(1, "erin", &room, "frank").await?, Code::PermissionDenied)?;

    // No kind is private: frank cannot join it.
    let unspecified = CreateConversationRequest { title: "Team".into(), ..Default::default() };
    let created = cluster.create_conversation(0, "alice", unspecified).await??;
    let conversation = created.conversation.context("created")?;
    ensure!(
        created.created
            && conversation.kind == ConversationKind::Private as i32
            && conversation.title == "Team"
            && conversation.created_by == "alice"
            && conversation.conversation_id.starts_with("c-"),
        "{conversation:?}"
    );
    let mut frank = cluster.connect(1, "frank").await?;
    frank
        .frame("join", Frame::Join(JoinFrame { conversation_id: conversation.conversation_id, resume_after_seq: None }))
        .await?;
    ensure!(error_for(&mut frank, "join").await?.0 == Code::PermissionDenied, "frank joined a private conversation");
    Ok(())
}

#[tokio::test]
async fn private_conversation_is_indistinguishable_from_an_absent_one() -> anyhow::Result<()> {
    private_is_indistinguishable_from_absent(&aws().await?).await
}

#[tokio::test]
async fn removed_member_is_cut_off_on_the_other_gateway() -> anyhow::Result<()> {
    removed_member_is_cut_off_everywhere(&aws().await?).await
}

#[tokio::test]
async fn banned_user_cannot_rejoin_nor_be_added_until_unbanned() -> anyhow::Result<()> {
    banned_user_stays_out_until_unbanned(&aws().await?).await
}

#[tokio::test]
async fn direct_conversation_created_by_each_user_is_one() -> anyhow::Result<()> {
    direct_conversation_is_one_per_pair(&aws().await?).await
}

#[tokio::test]
async fn roles_decide_who_may_change_whom() -> anyhow::Result<()> {
    roles_rank_who_may_change_whom(&aws().await?).await
}

#[tokio::test]
async fn anyone_joins_a_public_conversation_and_becomes_a_member() -> anyhow::Result<()> {
    anyone_joins_a_public_conversation(&aws().await?).await
}

#[tokio::test]
async fn memory_mode_follows_the_same_conversation_rules() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    // Every scenario runs; the failures are reported together.
    let results = [
        ("private", private_is_indistinguishable_from_absent(&cluster).await),
        ("removal", removed_member_is_cut_off_everywhere(&cluster).await),
        ("bans", banned_user_stays_out_until_unbanned(&cluster).await),
        ("direct", direct_conversation_is_one_per_pair(&cluster).await),
        ("roles", roles_rank_who_may_change_whom(&cluster).await),
        ("public", anyone_joins_a_public_conversation(&cluster).await),
    ];
    let failures: Vec<String> =
        results.into_iter().filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e:#}"))).collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
