//! The README's `chat` commands work as written, run the way a user runs
//! them: through the `./chat` wrapper, from the repository, with the
//! environment `make run` says to export, against a gateway (memory mode)
//! where alice and bob have had the README's chat in room1.
//!
//! A README command is a line of a `sh` code block that starts with `./chat`
//! or runs it in `$(...)`, or an inline code span that starts with `./chat `.
//! (Prose names subcommands as `chat send` etc.; anything written to be
//! typed uses `./chat` and so is run here.)

use std::process::Command;

use anyhow::{Context, ensure};
use chat_e2e::cluster::Cluster;
use chat_e2e::{free_port, scenarios, unique, workspace_bin, workspace_root};

/// The variables `make run` prints an `export` line for.
const EXPORTED: [&str; 3] = ["CHAT_GATEWAYS", "CHAT_JWT_SECRET_FILE", "CHAT_USER"];

/// The README's `./chat` commands, in order; continued lines (`\`) joined.
fn chat_commands(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut fence: Option<bool> = None; // inside a code block: is it `sh`?
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            fence = if fence.is_some() { None } else { Some(info.trim() == "sh") };
            continue;
        }
        match fence {
            Some(true) => {
                let joined = format!("{pending}{trimmed}");
                if let Some(head) = joined.strip_suffix('\\') {
                    pending = format!("{} ", head.trim_end());
                    continue;
                }
                pending.clear();
                if joined.starts_with("./chat ") || joined.contains("$(./chat ") {
                    commands.push(joined);
                }
            }
            Some(false) => {}
            None => {
                // Inline spans: the text between pairs of backticks.
                commands
                    .extend(line.split('`').skip(1).step_by(2).filter(|s| s.starts_with("./chat ")).map(str::to_owned));
            }
        }
    }
    commands
}

/// The variables of the README's `export` line (the one `make run` prints).
fn exported_names(readme: &str) -> Vec<String> {
    let line = readme.lines().find_map(|l| l.trim().strip_prefix("export ")).unwrap_or_default();
    line.split_whitespace()
        .take_while(|word| !word.starts_with('#'))
        .filter_map(|word| word.split_once('=').map(|(name, _)| name.to_owned()))
        .collect()
}

/// Runs one command line with bash in the repository, as a user with
/// `env` exported would.
fn run_line(line: &str, env: &[(&str, String)]) -> anyhow::Result<String> {
    let mut cmd = Command::new("bash");
    for (name, _) in std::env::vars() {
        // Only what a user has: no overrides from the test's own environment.
        if name.starts_with("CHAT_") || name == "CARGO_TARGET_DIR" || name == "CARGO_BUILD_TARGET_DIR" {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .args(["-euo", "pipefail", "-c", line])
        .current_dir(workspace_root())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("running {line}"))?;
    ensure!(
        out.status.success(),
        "README command failed ({}): {line}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The target directory the binaries under test are in (`./chat` finds it
/// through cargo, which honours `CARGO_TARGET_DIR`).
fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    let chat = workspace_bin("chat")?;
    let profile = chat.parent().context("binary directory")?;
    ensure!(profile.ends_with("debug"), "./chat runs debug builds; the tests use {}", profile.display());
    Ok(profile.parent().context("target directory")?.to_owned())
}

#[test]
fn finds_the_commands() {
    let readme = "text `./chat read -c r --seq 2` and `chat send`\n```sh\n./chat send -c r \\\n  --body \"x y\"   # why\nX=$(./chat token --user c)\nmake run\n```\n```\n./chat not-sh\n```\n";
    assert_eq!(
        chat_commands(readme),
        ["./chat read -c r --seq 2", "./chat send -c r --body \"x y\"   # why", "X=$(./chat token --user c)"]
    );
}

/// room1 as `make chat` makes it: public, owned by alice.
async fn create_room1(cluster: &Cluster) -> anyhow::Result<()> {
    let request = chat_proto::pb::CreateConversationRequest {
        kind: chat_proto::pb::ConversationKind::Public as i32,
        conversation_id: "room1".into(),
        ..Default::default()
    };
    let created = cluster.create_conversation(0, "alice", request).await?;
    ensure!(created.as_ref().is_ok_and(|c| c.created), "creating room1: {created:?}");
    Ok(())
}

#[tokio::test]
async fn readme_chat_commands_work_as_written() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    ensure!(!readme.contains("target/debug/chat"), "the README should call the client ./chat");
    let commands = chat_commands(&readme);
    ensure!(commands.iter().any(|c| c.starts_with("./chat read -c room1 --seq 2")), "{commands:#?}");
    ensure!(exported_names(&readme) == EXPORTED, "README's export line: {:?}", exported_names(&readme));

    let cluster = Cluster::memory().await?;
    // The README's chat: alice and bob in room1 (public, created by alice,
    // as `make chat`'s `--create` does), two messages.
    create_room1(&cluster).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    alice.join("room1").await?;
    bob.join("room1").await?;
    alice.send("room1", "m1", "hello bob, from gateway a").await?;
    scenarios::messages(&mut bob, "room1", 1).await?;
    bob.send("room1", "m2", "hi alice, from gateway b").await?;
    scenarios::messages(&mut alice, "room1", 2).await?;

    let dir = std::env::temp_dir().join(unique("chat-readme-"));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("jwt-secret");
    std::fs::write(&secret_file, cluster.secret())?;
    let env = [
        ("CHAT_GATEWAYS", cluster.url(0).to_owned()),
        ("CHAT_JWT_SECRET_FILE", secret_file.display().to_string()),
        ("CHAT_USER", "alice".to_owned()),
        ("CARGO_TARGET_DIR", target_dir()?.display().to_string()),
    ];
    let result = (|| {
        for line in &commands {
            run_line(line, &env)?;
        }
        // The commands did what they say.
        let history = run_line("./chat history -c room1", &env)?;
        ensure!(history.contains("hello bob") && history.contains("hi alice"), "{history}");
        let conversations = run_line("./chat conversations", &env)?;
        ensure!(conversations.lines().any(|l| l.starts_with("room1 ")), "{conversations}");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A command uses the first gateway of `CHAT_GATEWAYS` that answers, so a
/// script keeps working while one of them is down.
#[tokio::test]
async fn commands_use_the_first_gateway_that_answers() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    create_room1(&cluster).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join("room1").await?;
    let dir = std::env::temp_dir().join(unique("chat-gateways-"));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("jwt-secret");
    std::fs::write(&secret_file, cluster.secret())?;
    let down = format!("http://127.0.0.1:{}", free_port()?);
    let env = [
        ("CHAT_GATEWAYS", format!("{down},{}", cluster.url(0))),
        ("CHAT_JWT_SECRET_FILE", secret_file.display().to_string()),
        ("CHAT_USER", "alice".to_owned()),
        ("CARGO_TARGET_DIR", target_dir()?.display().to_string()),
    ];
    let result = run_line("./chat send -c room1 --body 'one is down'", &env);
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(result?.starts_with("room1 seq=1 "), "a send through the second gateway");
    Ok(())
}
