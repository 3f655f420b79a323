//! Watching a queued client: it may leave while it waits for a slot, and
//! must not then be given one.

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use super::edge::ClientIo;

/// Bytes a queued client may send before we stop reading from it.
const MAX_PENDING: usize = 64 * 1024;

/// Resolves when a queued client closes or fails. Whatever it sends
/// meanwhile is kept for the backend, up to [`MAX_PENDING`].
///
/// Reads go straight into `pending`: a buffer on the stack would live in
/// every connection's task for as long as the connection does.
pub(super) async fn queued_client<S: ClientIo>(client: &mut S, pending: &mut Vec<u8>) {
    loop {
        let room = MAX_PENDING.saturating_sub(pending.len());
        if room == 0 {
            // TLS or not, a hang-up shows on the socket underneath.
            return hang_up(client.socket()).await;
        }
        pending.reserve(room.min(4096));
        match (&mut *client).take(room as u64).read_buf(pending).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Resolves when the client hangs up, reading nothing: what it sends
/// beyond [`MAX_PENDING`] stays in the socket for the backend.
///
/// The poller reports a peer's FIN (`EPOLLRDHUP`) or reset as a closed
/// read side, a state that is never cleared; plain readability, raised by
/// every new segment, is cleared by an empty `try_io` so that only the next
/// event wakes us.
async fn hang_up(client: &TcpStream) {
    loop {
        match client.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {
                let _ = client.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
            _ => return,
        }
    }
}
