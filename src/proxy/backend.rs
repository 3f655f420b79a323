//! Connections to backends: a fresh socket per attempt, what the failure
//! was, and a close that waits for the backend's side.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// How long to wait for a backend to close its side after ours is closed,
/// before dropping the connection anyway.
const BACKEND_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why an attempt to open a backend connection failed. All but
/// [`LocalShortage`](Self::LocalShortage) count against the backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refused the connection")]
    Refused,
    #[error("did not accept the connection within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("connect failed: {0}")]
    Failed(io::Error),
    /// Every backend would fail alike, and none is to blame.
    #[error("cannot connect from this machine: {0}")]
    LocalShortage(io::Error),
    #[error("failed before answering: {0}")]
    SendFailed(io::Error),
    #[error("closed before answering the RTMP handshake")]
    Closed,
    #[error("failed before answering the RTMP handshake: {0}")]
    AnswerFailed(io::Error),
    #[error("no answer to the RTMP handshake within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
    #[error("answered the RTMP handshake with {0}")]
    NotRtmp(String),
    #[error("closed before taking the stream")]
    Left,
    #[error("sent RTMP not understood ({0})")]
    BadAnswer(&'static str),
    /// The server is up and answers; it just won't take this stream.
    #[error("declined the stream: {} ({})", .0.code, .0.description)]
    Declined(crate::rtmp::command::Status),
    #[error("gave message stream id {0} where the client was given {id}", id = crate::rtmp::STREAM_ID)]
    OtherStreamId(f64),
}

impl ConnectError {
    /// Whether the failure says the backend is down, rather than that it
    /// would not take this one stream.
    pub fn marks_down(&self) -> bool {
        !matches!(
            self,
            Self::LocalShortage(_) | Self::Declined(_) | Self::OtherStreamId(_)
        )
    }
}

/// Opens a connection to `addr` within `timeout`; the error says what kind
/// of failure it was.
pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    connect(addr, timeout).await.map_err(|e| match e.kind() {
        _ if local_shortage(&e) => ConnectError::LocalShortage(e),
        io::ErrorKind::ConnectionRefused => ConnectError::Refused,
        io::ErrorKind::TimedOut => ConnectError::TimedOut(timeout),
        _ => ConnectError::Failed(e),
    })
}

/// A failure of this machine, not of the peer: out of descriptors, memory,
/// buffers or local ports. It says nothing about a backend's health.
pub(crate) fn local_shortage(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(n))
    })
}

/// A fresh connection to a backend, with Nagle off like the client side.
///
/// Neither Pingora's `TransportConnector` (made for pooled HTTP upstreams:
/// per connection a bind option, a `getsockname` and a `TCP_NODELAY` probe
/// on drop, and streams that buffer small writes until a flush) nor
/// tokio's `TcpSocket::connect`, which asks `getsockopt(SO_ERROR)` after
/// every connect: the poller already tells. A connecting socket turns
/// writable once the handshake is done, and a failed one reports a
/// hang-up, so the error is asked for only then.
async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = tcp_socket(addr)?;
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(nix::libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let stream = TcpStream::from_std(socket.into())?;
    // Pingora's coarse timer (10 ms steps, on its own thread): a tokio
    // timer that comes due before all others wakes the runtime's poller
    // through its eventfd, a system call per connection.
    let ready = match pingora_timeout::fast_timeout::fast_timeout(
        timeout,
        stream.ready(Interest::WRITABLE),
    )
    .await
    {
        Ok(ready) => ready?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ))
        }
    };
    if ready.is_write_closed() || ready.is_error() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

/// A non-blocking TCP socket of `addr`'s family with Nagle off, made in
/// one `socket` call: for backends, and for the listener, whose accepted
/// sockets inherit `TCP_NODELAY`.
pub(crate) fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// Sends our FIN and waits (bounded) for the backend's, so that the backend
/// has seen this connection end before its slot is given to someone else.
pub(crate) async fn close_backend<S: AsyncRead + AsyncWrite + Unpin>(backend: &mut S) {
    let _ = backend.shutdown().await;
    let _ = tokio::time::timeout(BACKEND_CLOSE_WAIT, async {
        let mut buf = [0u8; 256];
        while let Ok(n) = backend.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_tells_a_refusal_from_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let stream = connect(open, Duration::from_secs(5)).await.unwrap();
        assert!(stream.nodelay().unwrap());
        drop(listener);
        // Nothing listens there now.
        let e = super::open(open, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ConnectError::Refused), "{e}");
    }

    #[test]
    fn only_this_machines_shortages_are_local() {
        use nix::errno::Errno;
        let err = |e: Errno| std::io::Error::from_raw_os_error(e as i32);
        for e in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(local_shortage(&err(e)), "{e}");
        }
        for e in [
            Errno::ECONNREFUSED,
            Errno::ETIMEDOUT,
            Errno::EHOSTUNREACH,
            Errno::ECONNRESET,
        ] {
            assert!(!local_shortage(&err(e)), "{e}");
        }
        assert!(!local_shortage(&std::io::ErrorKind::TimedOut.into()));
    }
}
