//! Raw bytes after C0+C1 (C2 included, as the front reads them); the first
//! byte picks the split sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Some((&seed, rest)) = data.split_first() {
        common::check(&[rest], seed);
    }
});
