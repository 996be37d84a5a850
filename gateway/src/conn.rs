//! The gateway's connections: each accepted TCP connection is wrapped in a
//! [`Conn`] that admits it by its source address (`AddressLimits`), carries
//! its frame limit, and can be closed from inside the gateway.
//!
//! Closing is how a stalled client learns that its stream was ended: once
//! HTTP/2 flow control is exhausted (the client stopped reading), hyper waits
//! for window before it polls the response body again, so neither the
//! `Disconnect`, the trailers nor an error of the body ever reaches the wire,
//! and no RST_STREAM either. Closing the socket under hyper does: the
//! client's connection fails at once.
//!
//! A connection refused by its address's limits is still served for a
//! moment, so each call on it is answered `RESOURCE_EXHAUSTED` with the
//! reason (the interceptor asks [`admit`]) instead of a bare reset; then it
//! is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::closing::Closing;
use crate::error::GatewayError;
use crate::limits::{AddressLimits, DirectLimit, Slot};

/// How long a refused connection stays up to answer its calls.
const REFUSED_LINGER: Duration = Duration::from_secs(1);

/// What every request on a connection can see of it (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) tcp: TcpConnectInfo,
    pub(crate) state: Arc<ConnState>,
}

impl ConnInfo {
    pub(crate) fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr
    }
}

/// One connection's shared state.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Why the connection was not admitted; its calls are refused with it.
    refused: Option<GatewayError>,
    /// Client frames on all of the connection's `Connect` streams.
    pub(crate) frames: DirectLimit,
    close: Closing,
}

impl ConnState {
    pub(crate) fn new(refused: Option<GatewayError>, frames: DirectLimit) -> Self {
        Self { refused, frames, close: Closing::default() }
    }

    /// Closes the connection under hyper: every stream on it fails at once.
    pub(crate) fn close(&self) {
        self.close.cancel();
    }
}

/// The connection a request came on, when the transport is the gateway's
/// (the one place that knows where tonic puts it).
pub(crate) fn info<T>(request: &tonic::Request<T>) -> Option<&ConnInfo> {
    let extensions = request.extensions();
    // Under the gateway's own TLS, tonic wraps the connection's info.
    extensions
        .get::<ConnInfo>()
        .or_else(|| extensions.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>().map(|tls| tls.get_ref()))
}

/// Passes a request on an admitted connection, with tonic's own
/// `TcpConnectInfo` beside ours so `Request::remote_addr` keeps working;
/// refuses one on a connection that was not admitted, saying why.
pub(crate) fn admit(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    let Some(conn) = info(&request) else { return Ok(request) };
    if let Some(err) = conn.state.refused.clone() {
        return Err(err.into());
    }
    let tcp = conn.tcp.clone();
    request.extensions_mut().insert(tcp);
    Ok(request)
}

/// An accepted connection: the socket, its address slot, and its close.
pub(crate) struct Conn {
    io: TcpStream,
    info: ConnInfo,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `closed` last registered: the token wakes it on close.
    watching: Option<Waker>,
    /// A refused connection's end.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: Option<Slot<std::net::IpAddr>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("remote", &self.info.remote_addr()).finish_non_exhaustive()
    }
}

impl Conn {
    fn accept(io: TcpStream, limits: &AddressLimits) -> Self {
        let tcp = io.connect_info();
        let address = tcp.remote_addr.map(|a| a.ip());
        let (slot, refused) = match limits.admit(address) {
            Ok(slot) => (slot, None),
            Err(err) => {
                tracing::info!(remote = ?tcp.remote_addr, reason = %err, "connection refused by its address's limits");
                (None, Some(err))
            }
        };
        let linger = refused.is_some().then(|| Box::pin(tokio::time::sleep(REFUSED_LINGER)));
        let state = Arc::new(ConnState::new(refused, limits.frame_limit()));
        let closed = Box::pin(state.close.token().clone().cancelled_owned());
        metrics::gauge!("chat_connections").increment(1.0);
        if linger.is_some() {
            metrics::counter!("chat_connections_refused_total").increment(1);
        }
        Self { io, info: ConnInfo { tcp, state }, closed, watching: None, linger, _slot: slot }
    }

    /// Whether the connection must end now; registers for the moment it must.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        if self.info.state.close.is_cancelled() {
            return true;
        }
        // Registered again only for another task (a TLS handshake's, then
        // the connection's): polling the token on every read and write took
        // its lock each time, a few % of the gateway's CPU at load.
        if self.watching.as_ref().is_none_or(|waker| !waker.will_wake(cx.waker())) {
            self.watching = Some(cx.waker().clone());
            if self.closed.as_mut().poll(cx).is_ready() {
                return true;
            }
        }
        self.linger.as_mut().is_some_and(|linger| linger.as_mut().poll(cx).is_ready())
    }
}

fn ended() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the gateway")
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("chat_connections").decrement(1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // hyper always has a read pending, so this is where a close lands.
        if self.poll_ended(cx) {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.poll_ended(cx) {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_ended(cx) {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections the gateway serves: `incoming`'s, each admitted (or
/// refused) by `limits`.
pub(crate) fn admitted<S>(incoming: S, limits: Arc<AddressLimits>) -> impl Stream<Item = io::Result<Conn>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    incoming.map(move |accepted| accepted.map(|io| Conn::accept(io, &limits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Limits, Rate};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(limits: &AddressLimits) -> (Conn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(TcpStream::connect(addr));
        let (io, _) = listener.accept().await.expect("accept");
        (Conn::accept(io, limits), client.await.expect("join").expect("connect"))
    }

    #[tokio::test]
    async fn closing_fails_a_pending_read_at_once() {
        let limits = AddressLimits::new(&Limits::default());
        let (mut conn, mut client) = pair(&limits).await;
        assert!(conn.info.state.refused.is_none());
        client.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).await.expect("data flows");
        let state = conn.info.state.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let result = conn.read(&mut buf).await;
            drop(conn); // the socket closes, as hyper drops a failed connection
            result
        });
        tokio::task::yield_now().await;
        state.close();
        let result = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").expect("join");
        assert_eq!(result.expect_err("closed").kind(), io::ErrorKind::ConnectionAborted);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await; // EOF or reset: either way, at once
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_says_why_then_ends() {
        let limits = AddressLimits::new(&Limits { max_connections_per_address: 1, ..Limits::default() });
        let (kept, _c1) = pair(&limits).await;
        let (mut refused, _c2) = pair(&limits).await;
        assert!(kept.info.state.refused.is_none());
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(refused.info.clone());
        let status = admit(request).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("connections from your address"), "{}", status.message());
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(REFUSED_LINGER * 5, refused.read(&mut buf)).await.expect("ends");
        assert_eq!(read.expect_err("ended").kind(), io::ErrorKind::ConnectionAborted);
        let plain = tonic::Request::new(());
        assert!(admit(plain).is_ok(), "no connection info: nothing to refuse");
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(kept.info.clone());
        let admitted = admit(request).expect("admitted");
        assert_eq!(admitted.remote_addr(), kept.info.remote_addr(), "tonic's remote_addr still answers");
        assert!(admitted.remote_addr().is_some());
    }

    #[tokio::test]
    async fn address_limits_off_admit_everything() {
        let limits = AddressLimits::new(&Limits {
            connections_per_address: Rate::new(0.0, 1),
            max_connections_per_address: 0,
            ..Limits::default()
        });
        let mut held = Vec::new();
        for _ in 0..5 {
            let (conn, client) = pair(&limits).await;
            assert!(conn.info.state.refused.is_none());
            held.push((conn, client));
        }
    }
}
