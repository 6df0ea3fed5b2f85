#![no_main]
//! Fuzz target `onnx_model`: see `harness::onnx_model` for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::onnx_model(data));
