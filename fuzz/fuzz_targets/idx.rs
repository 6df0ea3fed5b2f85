#![no_main]
//! Fuzz target `idx`: see `harness::idx` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::idx(data));
