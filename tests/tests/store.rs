//! The DynamoDB store follows the same rules as the memory store
//! (`gateway::store::conformance`), on tables provisioned from
//! `template.yaml` on the emulator.

use chat_e2e::emulator::Emulator;
use gateway::store::dynamo::{DynamoStore, Tables};

#[tokio::test]
async fn dynamodb_store_follows_the_store_rules() -> anyhow::Result<()> {
    let emulator = Emulator::start()?;
    let stack = chat_e2e::unique("store");
    let outputs: std::collections::HashMap<String, String> = emulator.provision(&stack)?.into_iter().collect();
    let table = |key: &str| outputs.get(key).cloned().ok_or_else(|| anyhow::anyhow!("no output {key}"));
    let tables = Tables {
        messages: table("CHAT_MESSAGES_TABLE")?,
        conversations: table("CHAT_CONVERSATIONS_TABLE")?,
        members: table("CHAT_MEMBERS_TABLE")?,
        presence: table("CHAT_PRESENCE_TABLE")?,
        send_dedup: table("CHAT_SEND_DEDUP_TABLE")?,
        receipts: table("CHAT_RECEIPTS_TABLE")?,
        users: table("CHAT_USERS_TABLE")?,
    };
    let store = DynamoStore::new(emulator.dynamodb().await, tables);
    store.check_tables().await?;
    gateway::store::conformance::check(&store, &stack).await.map_err(anyhow::Error::msg)
}
