#![no_main]
//! Fuzz target `safetensors_file`: see `harness::safetensors_file` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::safetensors_file(data));
