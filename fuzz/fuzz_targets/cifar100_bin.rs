#![no_main]
//! Fuzz target `cifar100_bin`: see `harness::cifar100_bin` for what the input means and what is
//! checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::cifar100_bin(data));
