//! Builds the embedded dataset (`assets/embedded/`) from the Fashion-MNIST IDX files.
//!
//! ```text
//! cargo run --release --example make_embedded_dataset -- /usr/share/datasets/fashion-mnist assets/embedded
//! ```
//!
//! Takes, in file order, the first 600 training images of each class and the first 100 test
//! images of each class, and writes them as gzipped IDX files with the standard names. The output
//! is deterministic (no timestamps in the gzip headers), so rerunning it changes nothing.

use std::path::PathBuf;

use anyhow::{bail, Context};
use distill::data::{idx, load, DataSpec, Split};

/// Training images kept per class.
const TRAIN_PER_CLASS: usize = 600;
/// Test images kept per class.
const TEST_PER_CLASS: usize = 100;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, out] = args.as_slice() else {
        bail!("usage: make_embedded_dataset FASHION_MNIST_DIR OUTPUT_DIR");
    };
    let (source, out) = (PathBuf::from(source), PathBuf::from(out));
    let dataset = load(&DataSpec::FashionMnist(Some(source.clone())))
        .with_context(|| format!("reading Fashion-MNIST from {}", source.display()))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let classes = dataset.classes.len();
    for (prefix, split, per_class) in [
        ("train", &dataset.train, TRAIN_PER_CLASS),
        ("t10k", &dataset.test, TEST_PER_CLASS),
    ] {
        let kept = first_per_class(split, classes, per_class)?;
        let [_, h, w] = kept.shape;
        idx::write_images(
            &out.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &kept.images,
            [kept.len(), h, w],
        )?;
        idx::write_labels(
            &out.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &kept.labels,
        )?;
        eprintln!("{prefix}: kept {} of {} images", kept.len(), split.len());
    }
    Ok(())
}

/// The first `per_class` images of every class, in their original order.
fn first_per_class(split: &Split, classes: usize, per_class: usize) -> anyhow::Result<Split> {
    let mut taken = vec![0usize; classes];
    let mut indices = Vec::with_capacity(classes * per_class);
    for (i, &label) in split.labels.iter().enumerate() {
        if taken[label as usize] < per_class {
            taken[label as usize] += 1;
            indices.push(i);
        }
    }
    if let Some(short) = taken.iter().position(|&t| t < per_class) {
        bail!(
            "class {short} has only {} images, fewer than {per_class}",
            taken[short]
        );
    }
    Ok(split.subset(&indices))
}
