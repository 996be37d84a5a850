//! How every gRPC server of the platform (the gateway, the benchmark's
//! baseline) accepts connections.

/// The connections a gRPC server accepts on `listener`, with Nagle's
/// algorithm off and TCP keepalive on. (tonic applies its builder's
/// `tcp_nodelay` only to listeners it binds itself; without this, small
/// server pushes wait for the peer's delayed ACK, up to 40 ms on Linux.)
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)))
}
