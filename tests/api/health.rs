//! Standard gRPC health and server reflection (no token needed), and graceful shutdown.

use nexus_billing::grpc::proto::billing::GetUsageRequest;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::{Backend, TestApp, authed, token};

crate::on_both_backends!(
    health_says_serving_without_a_token,
    reflection_lists_both_services_without_a_token,
    shutdown_stops_serving_and_releases_the_port,
);

async fn health_says_serving_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut health = HealthClient::new(app.channel().await);
    for service in [
        "",
        "nexus.billing.v1.BillingService",
        "nexus.integrations.v1.IntegrationsService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    app.stop().await;
}

async fn reflection_lists_both_services_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let response = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no reflection answer"));
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "nexus.billing.v1.BillingService",
        "nexus.integrations.v1.IntegrationsService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    app.stop().await;
}

async fn shutdown_stops_serving_and_releases_the_port(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let addr = app.grpc_addr;
    let http_addr = app.http_addr;
    app.billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.stop().await; // fails the test unless the server stops cleanly in time
    for port_addr in [addr, http_addr] {
        assert!(
            tokio::net::TcpStream::connect(port_addr).await.is_err(),
            "{port_addr} still accepts connections after shutdown"
        );
    }
}
