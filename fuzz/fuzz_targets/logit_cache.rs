#![no_main]
//! Fuzz target `logit_cache`: see `harness::logit_cache` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::logit_cache(data));
