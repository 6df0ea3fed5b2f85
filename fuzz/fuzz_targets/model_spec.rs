#![no_main]
//! Fuzz target `model_spec`: see `harness::model_spec` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::model_spec(data));
