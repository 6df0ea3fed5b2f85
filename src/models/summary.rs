//! Text tables describing models: a per-layer summary like Keras' `model.summary()` and the zoo table.

use std::fmt::Write;

use serde::Serialize;

use super::spec::{LayerSpec, ModelSpec, SpecError};
use super::zoo;

/// One row of the zoo table (`distill models --json` prints an array of these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZooEntry {
    /// Zoo name.
    pub name: String,
    /// Parameter count (batch-norm statistics included, as Keras counts).
    pub params: usize,
    /// Trainable parameters (PyTorch's count).
    pub trainable: usize,
    /// Forward FLOPs per image.
    pub flops: u64,
    /// Bytes of f32 weights.
    pub bytes: usize,
}

/// Statistics of every zoo model for an input shape.
pub fn zoo_entries(input: [usize; 3]) -> Result<Vec<ZooEntry>, SpecError> {
    zoo::NAMES
        .iter()
        .map(|name| {
            let spec = zoo::get(name).expect("zoo names resolve");
            let stats = spec.stats(input)?;
            Ok(ZooEntry {
                name: name.to_string(),
                params: stats.params,
                trainable: stats.trainable,
                flops: stats.flops,
                bytes: stats.bytes,
            })
        })
        .collect()
}

/// Formats `n` with thousands separators (1515018 → "1,515,018").
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The zoo as a text table.
pub fn zoo_table(input: [usize; 3]) -> Result<String, SpecError> {
    let mut out = String::new();
    let [c, h, w] = input;
    let _ = writeln!(out, "Model zoo for input {c}x{h}x{w}");
    let _ = writeln!(
        out,
        "{:<15} {:>12} {:>12} {:>16} {:>12}",
        "name", "params", "trainable", "FLOPs/image", "weights"
    );
    for entry in zoo_entries(input)? {
        let _ = writeln!(
            out,
            "{:<15} {:>12} {:>12} {:>16} {:>9.2} MB",
            entry.name,
            thousands(entry.params as u64),
            thousands(entry.trainable as u64),
            thousands(entry.flops),
            entry.bytes as f64 / 1e6
        );
    }
    Ok(out)
}

/// A layer's name in the summary: its type, and for a residual stage its blocks and shortcut.
fn layer_name(layer: &LayerSpec) -> String {
    match layer {
        LayerSpec::Residual {
            repeat, shortcut, ..
        } => format!("residual x{repeat} ({})", shortcut.name()),
        other => other.kind().to_string(),
    }
}

/// A Keras-style per-layer summary (layer, output shape, params) with totals.
pub fn layer_table(spec: &ModelSpec, input: [usize; 3]) -> Result<String, SpecError> {
    let infos = spec.infer(input)?;
    let stats = spec.stats(input)?;
    let [c, h, w] = input;
    let mut out = String::new();
    let _ = writeln!(out, "Model: \"{}\"  (input {c}x{h}x{w})", spec.name);
    let rule = "─".repeat(64);
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "{:<28} {:<20} {:>14}",
        "Layer (type)", "Output Shape", "Param #"
    );
    let _ = writeln!(out, "{rule}");
    for (index, info) in infos.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:>14}",
            format!("{index:>2} {}", layer_name(&spec.layers[index])),
            format!(
                "(None, {})",
                info.output
                    .to_string()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
            ),
            thousands(info.params as u64)
        );
    }
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "Total params: {} ({:.2} KB)",
        thousands(stats.params as u64),
        stats.bytes as f64 / 1024.0
    );
    if stats.trainable != stats.params {
        let _ = writeln!(
            out,
            "Trainable params: {} (batch-norm statistics excluded)",
            thousands(stats.trainable as u64)
        );
    }
    let _ = writeln!(out, "Forward FLOPs per image: {}", thousands(stats.flops));
    Ok(out)
}
