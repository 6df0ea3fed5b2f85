//! Helpers shared by the `data_*` integration tests: hand-written IDX and CIFAR files (written
//! byte by byte here rather than with the crate's own writer, so the loaders are checked against
//! the format itself).

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use distill::data::{self, DataError, DataSpec};
use md5::{Digest, Md5};

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

/// Loads a dataset spec.
pub fn load(spec: DataSpec) -> Result<data::Dataset, DataError> {
    data::load(&spec)
}

/// Asserts that `err`'s message mentions every one of `needles`.
pub fn assert_mentions(err: &DataError, needles: &[&str]) {
    let msg = err.to_string();
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error `{msg}` does not mention `{needle}`"
        );
    }
}

/// A path as text.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The MD5 of `bytes`, in hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Serves `files` (path → body) over HTTP/1.1 on an ephemeral local port, one connection at a
/// time, until the test process ends; unknown paths get a 404. Returns the base URL.
pub fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // skip the headers
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let (status, body) = match files.get(&path) {
                Some(body) => ("200 OK", body.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    base
}
