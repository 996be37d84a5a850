//! A generic client can discover the API: server reflection (v1 and v1alpha,
//! as grpcurl uses) lists our services, and the standard health service
//! answers.

use chat_e2e::cluster::Cluster;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_client::ServerReflectionClient};

#[tokio::test]
async fn reflection_lists_services_and_health_says_serving() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    let channel = cluster.channel(0).await?;

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    let response = responses.next().await.ok_or_else(|| anyhow::anyhow!("no reflection response"))??;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response {:?}", response.message_response);
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["chat.v1.ChatService", "chat.v1.EchoService", "grpc.health.v1.Health"] {
        anyhow::ensure!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // The descriptor of a chat message type resolves (what grpcurl needs to
    // encode JSON input).
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("chat.v1.ClientFrame".into())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    let response = responses.next().await.ok_or_else(|| anyhow::anyhow!("no reflection response"))??;
    anyhow::ensure!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "no descriptor for chat.v1.ClientFrame: {:?}",
        response.message_response
    );

    let mut v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1alpha.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    anyhow::ensure!(responses.next().await.is_some_and(|r| r.is_ok()), "v1alpha reflection did not answer");

    let mut health = HealthClient::new(channel);
    for service in ["", "chat.v1.ChatService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner().status;
        anyhow::ensure!(status == ServingStatus::Serving as i32, "health of {service:?} is {status}");
    }
    Ok(())
}
