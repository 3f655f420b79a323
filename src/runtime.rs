//! Dedicated runtimes for work that must outlive Pingora's services.
//!
//! Pingora gives each service its own tokio runtime and stops background
//! services at shutdown; Redis leases and scale-in protection must keep
//! running through a drain, and a connection's driver task must not die with
//! whichever service happened to create it.

use tokio::runtime::{Builder, Handle};

/// A one-thread runtime that lives as long as the process, named `name`.
///
/// A current-thread scheduler on a thread of its own: with one worker
/// there is nothing to steal, and the multi-thread scheduler's bookkeeping
/// cost the proxy threads about 2% of their CPU per connection.
pub fn dedicated(name: &str) -> Result<Handle, RuntimeError> {
    let failed = |source| RuntimeError {
        name: name.to_owned(),
        source,
    };
    let runtime = Builder::new_current_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(failed)?;
    let handle = runtime.handle().clone();
    // This thread runs the runtime's tasks for good.
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(failed)?;
    Ok(handle)
}

/// A runtime or its thread could not be started (out of memory or
/// threads).
#[derive(Debug, thiserror::Error)]
#[error("{name} runtime: {source}")]
pub struct RuntimeError {
    name: String,
    source: std::io::Error,
}
