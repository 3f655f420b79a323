//! Raw chunk stream behind a fixed C2, so mutations aren't wasted on C2;
//! the first byte picks the split sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Some((&seed, rest)) = data.split_first() {
        common::check(&[&common::C2, rest], seed);
    }
});
