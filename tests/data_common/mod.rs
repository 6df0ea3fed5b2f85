//! Helpers shared by the `data_*` integration tests: hand-written IDX and CIFAR files (written
//! byte by byte here rather than with the crate's own writer, so the loaders are checked against
//! the format itself).

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// A big-endian IDX images file (`N×H×W`) around `pixels`.
pub fn idx_images(n: u32, h: u32, w: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [0x0000_0803u32, n, h, w] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    bytes
}

/// A big-endian IDX labels file around `labels`.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// `bytes`, gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Pixel value of item `i` at flat position `p` in the generated datasets: distinct enough that
/// any reordering of images or of pixels shows up.
pub fn pixel(i: usize, p: usize) -> u8 {
    ((i * 31 + p * 7 + p / 97) % 256) as u8
}

/// Generated pixels for `n` images of `size` bytes.
pub fn pixels(n: usize, size: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..size).map(move |p| pixel(i, p)))
        .collect()
}

/// Writes an MNIST-style directory: `n_train`/`n_test` images of `h×w`, labels `i % 10`,
/// gzipped or not.
pub fn write_mnist_dir(dir: &Path, n_train: usize, n_test: usize, h: usize, w: usize, gz: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let images = idx_images(n as u32, h as u32, w as u32, &pixels(n, h * w));
        let labels = idx_labels(&(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>());
        let (images, labels, ext) = if gz {
            (gzip(&images), gzip(&labels), ".gz")
        } else {
            (images, labels, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), labels).unwrap();
    }
}

/// CIFAR-10 class names as in the official `batches.meta.txt`.
pub const CIFAR_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// `n` CIFAR records: label `(first + i) % 10`, then 3072 generated pixel bytes (CHW).
pub fn cifar_records(first: usize, n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in first..first + n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|p| pixel(i, p)));
    }
    bytes
}

/// Writes the official CIFAR-10 binary layout into `dir`: five training batches of `per_batch`
/// records, a test batch of `n_test`, and the class-name file.
pub fn write_cifar_dir(dir: &Path, per_batch: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for b in 0..5 {
        std::fs::write(
            dir.join(format!("data_batch_{}.bin", b + 1)),
            cifar_records(b * per_batch, per_batch),
        )
        .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records(1000, n_test)).unwrap();
    // the official file ends with blank lines
    std::fs::write(
        dir.join("batches.meta.txt"),
        CIFAR_CLASSES.join("\n") + "\n\n",
    )
    .unwrap();
}
