//! Both stores follow the same rules (`chat_e2e::conformance`): the memory
//! store, and the DynamoDB store on tables provisioned from `template.yaml`
//! on the emulator.

use chat_aws::dynamo::DynamoStore;
use chat_e2e::emulator::Emulator;

/// A store on the tables `provision.py` made for `stack`.
async fn provisioned_store(emulator: &Emulator, stack: &str) -> anyhow::Result<DynamoStore> {
    Ok(provisioned(emulator, stack).await?.0)
}

/// The same, with the tables' names.
async fn provisioned(emulator: &Emulator, stack: &str) -> anyhow::Result<(DynamoStore, chat_aws::dynamo::Tables)> {
    let outputs: std::collections::HashMap<String, String> = emulator.provision(stack)?.into_iter().collect();
    let table = |key: &str| outputs.get(key).cloned().ok_or_else(|| anyhow::anyhow!("no output {key}"));
    let tables = chat_e2e::tables(table)?;
    Ok((DynamoStore::new(emulator.dynamodb().await, tables.clone()), tables))
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

/// A receipt is one write of the member's item, which keeps the member's
/// last 8 moves: a message's time is exact while the move that first
/// covered it is kept, the oldest kept move's time (a bound) before that,
/// and nothing is logged in the receipts table.
#[tokio::test]
async fn receipt_moves_are_kept_on_the_member_item() -> anyhow::Result<()> {
    use chat_core::envelope::{ReceiptEvent, ReceiptStatus::Delivered};
    use chat_core::store::{Membership, Receipts};
    let emulator = Emulator::start()?;
    let stack = chat_e2e::unique("moves");
    let (store, tables) = provisioned(&emulator, &stack).await?;
    let room = chat_e2e::unique("room");
    let plan = chat_core::conversation::plan(
        room.clone(),
        chat_core::conversation::Kind::Private,
        "",
        "alice",
        &["bob".to_owned()],
        1_700_000_000_000,
    )?;
    store.create(&plan).await?;
    let receipt = |seq| ReceiptEvent {
        user_id: "bob".into(),
        status: Delivered,
        up_to_seq: seq,
        message_id: String::new(),
        reason: String::new(),
        via: String::new(),
        recorded: false,
    };
    // Ten moves: 2, 4, ..., 20, at 200, 400, ..., 2000.
    for seq in (2..=20).step_by(2) {
        anyhow::ensure!(store.record_receipt(&room, &receipt(seq), seq as i64 * 100).await?, "move to {seq}");
    }
    let when = |seq| store.step_time(&room, "bob", Delivered, seq);
    anyhow::ensure!(when(20).await? == Some(2000) && when(19).await? == Some(2000), "the newest move");
    // Kept: the moves to 6 through 20.
    anyhow::ensure!(when(5).await? == Some(600), "seq 5 was first covered by the move to 6");
    // Moves to 2 and 4 were shifted out: the oldest kept is a bound.
    anyhow::ensure!(when(1).await? == Some(600), "seq 1: the oldest kept move, {:?}", when(1).await?);
    anyhow::ensure!(when(21).await?.is_none(), "seq 21 is not delivered");
    let logged = emulator
        .dynamodb()
        .await
        .query()
        .table_name(&tables.receipts)
        .key_condition_expression("conversation_id = :c")
        .expression_attribute_values(":c", aws_sdk_dynamodb::types::AttributeValue::S(room.clone()))
        .send()
        .await?;
    anyhow::ensure!(logged.count() == 0, "receipt moves logged as items: {:?}", logged.items());
    Ok(())
}
