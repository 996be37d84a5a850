//! Both stores follow the same rules (`chat_e2e::conformance`): the memory
//! store, and the DynamoDB store on tables provisioned from `template.yaml`
//! on the emulator.

use chat_aws::dynamo::DynamoStore;
use chat_e2e::emulator::Emulator;

/// A store on the tables `provision.py` made for `stack`.
async fn provisioned_store(emulator: &Emulator, stack: &str) -> anyhow::Result<DynamoStore> {
    let outputs: std::collections::HashMap<String, String> = emulator.provision(stack)?.into_iter().collect();
    let table = |key: &str| outputs.get(key).cloned().ok_or_else(|| anyhow::anyhow!("no output {key}"));
    let tables = chat_e2e::tables(table)?;
    Ok(DynamoStore::new(emulator.dynamodb().await, tables))
}

#[tokio::test]
async fn dynamodb_store_follows_the_store_rules() -> anyhow::Result<()> {
    let emulator = Emulator::start()?;
    let stack = chat_e2e::unique("store");
    let store = provisioned_store(&emulator, &stack).await?;
    store.check_tables().await?;
    chat_e2e::conformance::check(&store, &stack).await.map_err(anyhow::Error::msg)
}

#[tokio::test]
async fn memory_store_follows_the_store_rules() {
    let store = chat_core::memory::MemoryStore::new();
    chat_e2e::conformance::check(&store, "t").await.expect("memory store conforms");
}

/// The seq counter stays atomic under concurrent sends (many gateways):
/// every send gets its own seq, with no hole. (moto's DynamoDB needs
/// `localstack/moto_server.py` for this; real DynamoDB does it natively.)
#[tokio::test]
async fn concurrent_sends_get_distinct_dense_seqs() -> anyhow::Result<()> {
    use chat_core::store::{SendRequest, Sequencer};
    use futures::StreamExt;
    let emulator = Emulator::start()?;
    let stack = chat_e2e::unique("seq");
    let store = provisioned_store(&emulator, &stack).await?;
    let store = &store;
    let seqs: Vec<u64> = futures::stream::iter(0..200)
        .map(|i| async move {
            let request = SendRequest {
                conversation_id: "hot-room",
                sender: "u",
                client_message_id: "",
                body: "x",
                new_message_id: format!("m{i}"),
                now_ms: 1,
                origin: "test",
            };
            store.accept_send(request).await.map(|a| a.seq)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    anyhow::ensure!(distinct == (1..=200).collect(), "seqs not distinct and dense: {} distinct", distinct.len());
    Ok(())
}
