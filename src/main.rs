//! `rtmp-proxy`: see the library's documentation for the layout.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(
        // Pingora's load balancer logs health flips with the whole peer
        // definition; the slot table logs them readably.
        "info,pingora_load_balancing=error",
    ))
    .init();
    // A panic anywhere (for instance Pingora failing to bind a listener
    // inside its service thread) must not leave a half-up process behind.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        log::error!("fatal: {info}; exiting");
        std::process::exit(70);
    }));
    if let Err(e) = rtmp_proxy::app::run(rtmp_proxy::app::Cli::parse()) {
        eprintln!("rtmp-proxy: {e}");
        std::process::exit(1);
    }
}
