#![no_main]
//! Fuzz target `text_table`: see `harness::text_table` for what the input means and what is
//! checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::text_table(data));
