#![no_main]
//! Fuzz target `pytorch_checkpoint`: see `harness::pytorch_checkpoint` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::pytorch_checkpoint(data));
