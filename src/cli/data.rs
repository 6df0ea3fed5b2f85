//! `distill data …`: inspecting datasets.

use std::time::Instant;

use anyhow::Context;

use crate::data::{self, DataSpec};

/// `distill data info SPEC [--json]`: loads the dataset and prints its sizes, classes and shape.
///
/// With `json`, stdout gets exactly one JSON object ([`data::DataInfo`]); otherwise a few
/// readable lines. Progress and timing go to stderr either way.
pub fn info(spec: &str, json: bool) -> anyhow::Result<()> {
    if super::text::is_text_data(spec) {
        return text_info(spec, json);
    }
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
    let [c, h, w] = dataset.shape;
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

/// `distill data info` for a text dataset: texts per split and class, and words per text.
fn text_info(spec: &str, json: bool) -> anyhow::Result<()> {
    let parsed: crate::data::text::TextSpec = spec.parse()?;
    let dataset = crate::data::text::load_text(&parsed)?;
    let counts = |examples: &[crate::data::text::TextExample]| {
        let mut counts = vec![0usize; dataset.classes.len()];
        for e in examples {
            counts[e.label] += 1;
        }
        counts
    };
    let words: usize = dataset
        .train
        .iter()
        .map(|e| e.text.split_whitespace().count())
        .sum();
    let mean_words = words as f64 / dataset.train.len() as f64;
    if json {
        let out = serde_json::json!({
            "name": dataset.name,
            "train": dataset.train.len(),
            "test": dataset.test.len(),
            "classes": dataset.classes,
            "train_counts": counts(&dataset.train),
            "test_counts": counts(&dataset.test),
            "mean_words_per_train_text": mean_words,
        });
        println!("{out}");
        return Ok(());
    }
    println!("dataset  {}", dataset.name);
    println!(
        "train    {} texts ({mean_words:.1} words each on average)",
        dataset.train.len()
    );
    println!("test     {} texts", dataset.test.len());
    println!("classes  {}", dataset.classes.len());
    let (train, test) = (counts(&dataset.train), counts(&dataset.test));
    for (label, name) in dataset.classes.iter().enumerate() {
        println!(
            "  {label:>3}  {name}  {:>7} train  {:>7} test",
            train[label], test[label]
        );
    }
    Ok(())
}
