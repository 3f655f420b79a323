//! A PROXY header as a client sends it: the first byte picks the mode.
//! The reader must never panic, never read past the header it accepts,
//! and accept only what `ppp` parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtmp_proxy::config::ProxyMode;
use rtmp_proxy::proxy::edge::read_header;

fuzz_target!(|data: &[u8]| {
    let Some((&m, sent)) = data.split_first() else {
        return;
    };
    let mode = [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any][usize::from(m) % 3];
    let mut rest = sent;
    let read = futures::executor::block_on(read_header(&mut rest, mode));
    let used = sent.len() - rest.len();
    // 16 bytes of v2 preamble plus at most 2048 of addresses and TLVs.
    assert!(used <= 16 + 2048, "read {used} bytes");
    if read.is_ok() {
        let header = &sent[..used];
        let parsed = ppp::HeaderResult::parse(header);
        assert!(
            matches!(parsed, ppp::HeaderResult::V1(Ok(_)) | ppp::HeaderResult::V2(Ok(_))),
            "accepted {header:?}"
        );
    }
});
