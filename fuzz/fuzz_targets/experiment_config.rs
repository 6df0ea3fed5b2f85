#![no_main]
//! Fuzz target `experiment_config`: see `harness::experiment_config` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::experiment_config(data));
