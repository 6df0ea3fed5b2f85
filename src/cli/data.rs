//! `distill data …`: inspecting datasets.

use std::time::Instant;

use anyhow::Context;

use crate::data::{self, DataSpec};

/// `distill data info SPEC [--json]`: loads the dataset and prints its sizes, classes and shape.
///
/// With `json`, stdout gets exactly one JSON object ([`data::DataInfo`]); otherwise a few
/// readable lines. Progress and timing go to stderr either way.
pub fn info(spec: &str, json: bool) -> anyhow::Result<()> {
    let parsed: DataSpec = spec.parse()?;
    let start = Instant::now();
    let dataset = data::load(&parsed).with_context(|| format!("loading dataset `{parsed}`"))?;
    eprintln!(
        "loaded `{parsed}` in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let info = dataset.info();
    if json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(());
    }
    let [c, h, w] = info.shape;
    println!("dataset  {}", info.name);
    println!("train    {} images", info.train);
    println!("test     {} images", info.test);
    println!("shape    {c}×{h}×{w} (channels × height × width)");
    println!("classes  {}", info.classes.len());
    let train_counts = dataset.train.class_counts(info.classes.len());
    let test_counts = dataset.test.class_counts(info.classes.len());
    let width = info
        .classes
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0);
    for (label, name) in info.classes.iter().enumerate() {
        println!(
            "  {label:>3}  {name:<width$}  {:>7} train  {:>7} test",
            train_counts[label], test_counts[label]
        );
    }
    Ok(())
}
