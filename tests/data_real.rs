//! The real datasets: the embedded subset, Debian's Fashion-MNIST and the CIFAR-10 JPEG folder
//! tarball in `../shared` (the last two skipped, through `common::require`, where absent), and the
//! `data info` command.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use distill::data::{self, DataInfo, DataSpec, FASHION_MNIST_CLASSES};

const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Debian's Fashion-MNIST, where the package is installed.
fn debian_fashion_mnist_dir() -> Option<&'static Path> {
    let dir = Path::new(DEBIAN_FASHION_MNIST);
    common::require(
        dir.is_dir(),
        &format!("the Fashion-MNIST IDX files in {DEBIAN_FASHION_MNIST}"),
        "apt-get install dataset-fashion-mnist (.ci/run installs it)",
    )
    .then_some(dir)
}

#[test]
fn embedded_is_a_balanced_fashion_mnist_subset() {
    let ds = data::load(&DataSpec::Embedded).unwrap();
    assert_eq!(ds.name, "embedded");
    assert_eq!(ds.classes, FASHION_MNIST_CLASSES.map(String::from).to_vec());
    assert_eq!(ds.shape, [1, 28, 28]);
    assert_eq!((ds.train.len(), ds.test.len()), (6000, 1000));
    assert_eq!(ds.train.class_counts(10), vec![600; 10]);
    assert_eq!(ds.test.class_counts(10), vec![100; 10]);
    assert_eq!(ds.train.images.len(), 6000 * 784);
    // real images, not blanks: Fashion-MNIST has dark backgrounds and bright garments
    let mean =
        ds.train.images.iter().map(|&v| v as f64).sum::<f64>() / ds.train.images.len() as f64;
    assert!((60.0..80.0).contains(&mean), "mean pixel {mean}");
}

#[test]
fn embedded_matches_the_first_images_of_debian_fashion_mnist() {
    let Some(dir) = debian_fashion_mnist_dir() else {
        return;
    };
    let full = data::load(&DataSpec::FashionMnist(Some(dir.into()))).unwrap();
    let embedded = data::load(&DataSpec::Embedded).unwrap();
    // no class reaches its quota within the first images, so all of them are kept, in order
    for i in 0..10 {
        assert_eq!(embedded.train.image(i), full.train.image(i));
        assert_eq!(embedded.test.image(i), full.test.image(i));
    }
    assert_eq!(embedded.train.labels[..10], full.train.labels[..10]);
}

#[test]
fn debian_fashion_mnist() {
    let Some(dir) = debian_fashion_mnist_dir() else {
        return;
    };
    let start = Instant::now();
    let ds = data::load(&DataSpec::FashionMnist(Some(dir.into()))).unwrap();
    eprintln!(
        "Fashion-MNIST loaded in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(ds.name, "fashion-mnist");
    assert_eq!(ds.shape, [1, 28, 28]);
    assert_eq!((ds.train.len(), ds.test.len()), (60000, 10000));
    assert_eq!(ds.train.class_counts(10), vec![6000; 10]);
    assert_eq!(ds.test.class_counts(10), vec![1000; 10]);
}

#[test]
fn cifar10_jpeg_folder() {
    let Some(tarball) = common::shared("datasets/cifar10-jpeg.tar.gz") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    data::download::extract_tar_gz(&tarball, tmp.path()).unwrap();
    let extracted = start.elapsed().as_secs_f64();
    let ds = data::load(&DataSpec::Folder(tmp.path().into())).unwrap();
    eprintln!(
        "CIFAR-10 JPEG: extracted in {extracted:.1} s, loaded in {:.1} s",
        start.elapsed().as_secs_f64() - extracted
    );
    assert_eq!(ds.shape, [3, 32, 32]);
    assert_eq!((ds.train.len(), ds.test.len()), (50000, 10000));
    assert_eq!(
        ds.classes,
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck"
        ]
    );
    assert_eq!(ds.train.class_counts(10), vec![5000; 10]);
    assert_eq!(ds.test.class_counts(10), vec![1000; 10]);
    // colour images: the three channels of an image are not all equal
    let img = ds.train.image(0);
    assert_ne!(img[..1024], img[1024..2048]);
}

#[test]
fn cli_data_info_embedded_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["data", "info", "embedded", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end().lines().count(),
        1,
        "exactly one JSON line: {stdout}"
    );
    let info: DataInfo = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        info,
        DataInfo {
            name: "embedded".into(),
            train: 6000,
            test: 1000,
            classes: FASHION_MNIST_CLASSES.map(String::from).to_vec(),
            shape: Some([1, 28, 28]),
            max_tokens: None,
        }
    );
    // and the raw JSON has exactly the documented keys
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["classes", "name", "shape", "test", "train"]);
}

#[test]
fn cli_data_info_errors_go_to_stderr() {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["data", "info", "folder:/definitely/not/here", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/definitely/not/here") && stderr.contains("not found"),
        "{stderr}"
    );
}
