//! The default dataset, compiled into the binary: a class-balanced subset of Fashion-MNIST.
//!
//! The first 600 training images of each class (6,000) and the first 100 test images of each
//! class (1,000), stored as gzipped IDX files under `assets/embedded/` (see its README for the
//! provenance, the MIT license and how to regenerate them with
//! `examples/make_embedded_dataset.rs`).

use std::path::Path;

use super::{idx, DataError, Dataset, FASHION_MNIST_CLASSES};

/// Name of the embedded dataset.
pub const NAME: &str = "embedded";

const TRAIN_IMAGES: &[u8] = include_bytes!("../../assets/embedded/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../assets/embedded/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../assets/embedded/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../assets/embedded/t10k-labels-idx1-ubyte.gz");

/// Decodes the embedded dataset (a few milliseconds).
pub fn load() -> Result<Dataset, DataError> {
    // the paths only name the sources in (unexpected) errors
    let split = |images: &[u8], labels: &[u8], prefix: &str| {
        let images_path =
            Path::new("assets/embedded").join(format!("{prefix}-images-idx3-ubyte.gz"));
        let labels_path =
            Path::new("assets/embedded").join(format!("{prefix}-labels-idx1-ubyte.gz"));
        let images = idx::gunzip_if_needed(images.to_vec(), &images_path)?;
        let labels = idx::gunzip_if_needed(labels.to_vec(), &labels_path)?;
        idx::split_from_bytes(
            images,
            &images_path,
            &labels,
            &labels_path,
            FASHION_MNIST_CLASSES.len(),
        )
    };
    let train = split(TRAIN_IMAGES, TRAIN_LABELS, "train")?;
    let test = split(TEST_IMAGES, TEST_LABELS, "t10k")?;
    Ok(Dataset::new(
        NAME,
        FASHION_MNIST_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        train,
        test,
    ))
}
