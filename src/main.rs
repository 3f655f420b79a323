//! `rtmp-proxy`: see the library's documentation for the layout.

use clap::Parser;
use rtmp_proxy::lifecycle::Exit;

fn main() {
    // Pingora's load balancer logs health flips with the whole peer
    // definition; the slot table logs them readably.
    //
    // During an upgrade Pingora polls for the old process's sockets and
    // logs each empty poll as an ERROR, though waiting is the normal case
    // (the handoff logs what it waits for); a failed transfer still shows
    // as the error that ends the process.
    //
    // Its server module logs `service '...' exited.` at start-up for every
    // service (ours return once their tasks are spawned) and narrates
    // SIGTERM/SIGQUIT, which the lifecycle logs itself.
    //
    // `RUST_LOG` comes after these, so `RUST_LOG=info` keeps them quiet and
    // only naming one of these modules brings its lines back.
    const QUIET: &str = "pingora_load_balancing=error,pingora_core::server=warn,\
                         pingora_core::server::transfer_fd=off";
    let mut logger = env_logger::Builder::new();
    logger.parse_filters("info").parse_filters(QUIET);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        logger.parse_filters(&filters);
    }
    if let Ok(style) = std::env::var("RUST_LOG_STYLE") {
        logger.parse_write_style(&style);
    }
    logger.init();
    // A panic anywhere (for instance Pingora failing to bind a listener
    // inside its service thread) must not leave a half-up process behind.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        log::error!("fatal: {info}; exiting");
        std::process::exit(70);
    }));
    if let Err(e) = rtmp_proxy::app::run(rtmp_proxy::app::Cli::parse(), exit) {
        eprintln!("rtmp-proxy: {e}");
        std::process::exit(1);
    }
}

/// The exit codes: 0 after a drain or SIGINT, 70 (as after a panic) when a
/// listener cannot be served.
fn exit(why: Exit) -> ! {
    std::process::exit(match why {
        Exit::Done => 0,
        Exit::Fatal(_) => 70,
    })
}
