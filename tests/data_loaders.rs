//! The dataset loaders on small generated files: exact round-trips, and a clear error (naming the
//! file and what was expected) for every kind of bad input.

mod data_common;

use std::fs;
use std::path::{Path, PathBuf};

use data_common::*;
use distill::data::{self, idx, DataError, DataSpec};

// ---------------------------------------------------------------- spec strings

#[test]
fn spec_parses_every_form_and_round_trips() {
    let cases = [
        ("embedded", DataSpec::Embedded),
        ("cifar10", DataSpec::Cifar10(None)),
        ("cifar10:/d/c", DataSpec::Cifar10(Some("/d/c".into()))),
        ("cifar100", DataSpec::Cifar100(None)),
        ("cifar100:/d/c", DataSpec::Cifar100(Some("/d/c".into()))),
        ("cifar100-coarse", DataSpec::Cifar100Coarse(None)),
        (
            "cifar100-coarse:/d/c",
            DataSpec::Cifar100Coarse(Some("/d/c".into())),
        ),
        ("mnist", DataSpec::Mnist(None)),
        ("mnist:rel/dir", DataSpec::Mnist(Some("rel/dir".into()))),
        ("fashion-mnist", DataSpec::FashionMnist(None)),
        (
            "fashion-mnist:/x",
            DataSpec::FashionMnist(Some("/x".into())),
        ),
        ("folder:/a:b", DataSpec::Folder("/a:b".into())),
    ];
    for (text, spec) in cases {
        assert_eq!(text.parse::<DataSpec>().unwrap(), spec, "{text}");
        assert_eq!(spec.to_string(), text);
    }
}

#[test]
fn spec_errors_list_the_accepted_forms() {
    for bad in ["cifar", "folder", "mnist:", "embedded:/x", ""] {
        let err = bad.parse::<DataSpec>().unwrap_err();
        assert_mentions(
            &err,
            &[
                "embedded",
                "cifar10[:DIR]",
                "cifar100[:DIR]",
                "cifar100-coarse[:DIR]",
                "fashion-mnist[:DIR]",
                "folder:DIR",
            ],
        );
    }
}

// ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

#[test]
fn idx_plain_and_gzipped_round_trip() {
    for gz in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write_mnist_dir(tmp.path(), 23, 7, 5, 4, gz);
        let ds = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap();
        assert_eq!(ds.name, "mnist");
        assert_eq!(ds.classes, data::MNIST_CLASSES.map(String::from).to_vec());
        assert_eq!(ds.shape, [1, 5, 4]);
        assert_eq!((ds.train.len(), ds.test.len()), (23, 7));
        assert_eq!(ds.train.images, pixels(23, 20));
        assert_eq!(ds.test.images, pixels(7, 20));
        assert_eq!(
            ds.train.labels,
            (0..23).map(|i| i % 10).collect::<Vec<u32>>()
        );
        assert_eq!(ds.test.image(3), &pixels(7, 20)[60..80]);
    }
}

#[test]
fn fashion_mnist_uses_its_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 10, 10, 2, 2, true);
    let ds = load(DataSpec::FashionMnist(Some(tmp.path().into()))).unwrap();
    assert_eq!(ds.name, "fashion-mnist");
    assert_eq!(ds.classes[0], "T-shirt/top");
    assert_eq!(ds.classes[9], "Ankle boot");
}

#[test]
fn idx_writer_round_trips_through_the_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, h, w) = (12, 3, 6);
    for prefix in ["train", "t10k"] {
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 10).collect();
        idx::write_images(
            &tmp.path().join(format!("{prefix}-images-idx3-ubyte.gz")),
            &pixels(n, h * w),
            [n, h, w],
        )
        .unwrap();
        idx::write_labels(
            &tmp.path().join(format!("{prefix}-labels-idx1-ubyte")),
            &labels,
        )
        .unwrap();
    }
    let ds = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap();
    assert_eq!(ds.train.images, pixels(n, h * w));
    assert_eq!(
        ds.test.labels,
        (0..n as u32).map(|i| (i * 7) % 10).collect::<Vec<_>>()
    );
}

#[test]
fn idx_wrong_magic_names_file_and_both_magics() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 4, 4, 2, 2, false);
    let path = tmp.path().join("train-images-idx3-ubyte");
    // a labels file where the images file should be
    fs::write(&path, idx_labels(&[1, 2, 3, 4])).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&path), "0x00000803", "0x00000801"]);
}

#[test]
fn idx_count_disagreeing_with_length_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 4, 4, 2, 2, false);
    let path = tmp.path().join("t10k-images-idx3-ubyte");
    // header says 5 images of 2×2, data holds 4
    fs::write(&path, idx_images(5, 2, 2, &pixels(4, 4))).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&path), "36 bytes", "found 32 bytes"]);

    // and a file too short for its own header
    fs::write(&path, [0, 0, 8, 3, 0, 0]).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&path), "16-byte IDX header"]);
}

#[test]
fn idx_image_label_count_mismatch_names_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 6, 4, 2, 2, false);
    let labels = tmp.path().join("train-labels-idx1-ubyte");
    fs::write(&labels, idx_labels(&[0, 1, 2, 3, 4])).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 6,
                labels: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &[
            &path_str(&labels),
            "train-images-idx3-ubyte",
            "6 images",
            "5 labels",
        ],
    );
}

#[test]
fn truncated_gzip_is_an_error_not_a_shorter_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 50, 10, 8, 8, true);
    let path = tmp.path().join("train-images-idx3-ubyte.gz");
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&path), "truncated gzip"]);

    // cut just before the CRC/length trailer: all the data decompresses, but the stream is incomplete
    fs::write(&path, &full[..full.len() - 4]).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
}

#[test]
fn idx_label_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 4, 4, 2, 2, true);
    let path = tmp.path().join("t10k-labels-idx1-ubyte.gz");
    fs::write(&path, gzip(&idx_labels(&[0, 1, 10, 3]))).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 2,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(&err, &[&path_str(&path), "label 10", "item 2"]);
}

#[test]
fn idx_missing_file_and_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 4, 4, 2, 2, true);
    fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    assert_mentions(
        &err,
        &[
            "t10k-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte.gz",
            "not found",
        ],
    );

    let missing = tmp.path().join("nope");
    let err = load(DataSpec::FashionMnist(Some(missing.clone()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&missing), "not found", "directory"]);
}

#[test]
fn idx_test_images_of_another_size_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist_dir(tmp.path(), 4, 4, 2, 2, false);
    let path = tmp.path().join("t10k-images-idx3-ubyte");
    fs::write(&path, idx_images(4, 3, 3, &pixels(4, 9))).unwrap();
    let err = load(DataSpec::Mnist(Some(tmp.path().into()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&path), "2×2", "3×3"]);
}

// ---------------------------------------------------------------- CIFAR-10 binary

#[test]
fn cifar_round_trips_in_chw_order_from_dir_and_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("cifar-10-batches-bin");
    write_cifar_dir(&bins, 3, 4);
    for dir in [bins.clone(), tmp.path().to_path_buf()] {
        let ds = load(DataSpec::Cifar10(Some(dir))).unwrap();
        assert_eq!(ds.name, "cifar10");
        assert_eq!(ds.classes, CIFAR_CLASSES.map(String::from).to_vec());
        assert_eq!(ds.shape, [3, 32, 32]);
        assert_eq!((ds.train.len(), ds.test.len()), (15, 4));
        // training records concatenate data_batch_1..5 in order
        assert_eq!(
            ds.train.labels,
            (0..15).map(|i| i % 10).collect::<Vec<u32>>()
        );
        assert_eq!(
            ds.test.labels,
            (1000..1004).map(|i| i % 10).collect::<Vec<u32>>()
        );
        // CHW: channel c, row y, column x of image i is byte c*1024 + y*32 + x of its record
        for i in [0, 7, 14] {
            for (c, y, x) in [(0, 0, 0), (1, 5, 9), (2, 31, 31), (2, 0, 17)] {
                assert_eq!(
                    ds.train.image(i)[c * 1024 + y * 32 + x],
                    pixel(i, c * 1024 + y * 32 + x)
                );
            }
        }
        assert_eq!(ds.test.image(2), &cifar_records(1002, 1)[1..]);
    }
}

#[test]
fn cifar_bin_of_wrong_size() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar_dir(tmp.path(), 2, 2);
    let path = tmp.path().join("data_batch_4.bin");
    let mut bytes = cifar_records(0, 2);
    bytes.pop();
    fs::write(&path, bytes).unwrap();
    let err = load(DataSpec::Cifar10(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&path), "multiple of 3073", "6145 bytes"]);

    fs::write(&path, b"").unwrap();
    let err = load(DataSpec::Cifar10(Some(tmp.path().into()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&path), "multiple of 3073", "0 bytes"]);
}

#[test]
fn cifar_label_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar_dir(tmp.path(), 2, 3);
    let path = tmp.path().join("test_batch.bin");
    let mut bytes = cifar_records(0, 3);
    bytes[3073] = 200;
    fs::write(&path, bytes).unwrap();
    let err = load(DataSpec::Cifar10(Some(tmp.path().into()))).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 200,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(&err, &[&path_str(&path)]);
}

#[test]
fn cifar_missing_batch_meta_and_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar_dir(tmp.path(), 1, 1);
    fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
    let err = load(DataSpec::Cifar10(Some(tmp.path().into()))).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    assert_mentions(&err, &["data_batch_3.bin", "not found"]);

    write_cifar_dir(tmp.path(), 1, 1);
    fs::remove_file(tmp.path().join("batches.meta.txt")).unwrap();
    let err = load(DataSpec::Cifar10(Some(tmp.path().into()))).unwrap_err();
    assert_mentions(&err, &["batches.meta.txt", "class-name"]);

    let missing = tmp.path().join("absent");
    let err = load(DataSpec::Cifar10(Some(missing.clone()))).unwrap_err();
    assert_mentions(&err, &[&path_str(&missing), "not found"]);
}

// ---------------------------------------------------------------- image folders

/// A `w×h` grayscale PNG whose pixel (x, y) is `base + 3x + 5y`.
fn gray_png(path: &Path, w: u32, h: u32, base: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([base.wrapping_add((3 * x + 5 * y) as u8)])
    })
    .save(path)
    .unwrap();
}

/// A `w×h` RGB PNG whose pixel (x, y) is `(base + x, base + 2y, base + x + y + 100)`.
fn rgb_png(path: &Path, w: u32, h: u32, base: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            base.wrapping_add(x as u8),
            base.wrapping_add(2 * y as u8),
            base.wrapping_add((x + y + 100) as u8),
        ])
    })
    .save(path)
    .unwrap();
}

fn rgb_folder(root: &Path) -> PathBuf {
    // classes deliberately created out of order; file names sort differently from creation order
    rgb_png(&root.join("train/zebra/b.png"), 4, 3, 10);
    rgb_png(&root.join("train/zebra/a.png"), 4, 3, 20);
    rgb_png(&root.join("train/ant/x.PNG"), 4, 3, 30);
    rgb_png(&root.join("test/ant/1.png"), 4, 3, 40);
    rgb_png(&root.join("test/zebra/1.png"), 4, 3, 50);
    fs::write(root.join("train/zebra/notes.txt"), "not an image").unwrap();
    fs::create_dir_all(root.join("train/.hidden")).unwrap();
    fs::create_dir_all(root.join("test/.hidden")).unwrap();
    root.to_path_buf()
}

#[test]
fn folder_rgb_round_trips_in_chw_with_sorted_classes_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rgb_folder(&tmp.path().join("animals"));
    let ds = load(DataSpec::Folder(root)).unwrap();
    assert_eq!(ds.name, "animals");
    assert_eq!(ds.classes, ["ant", "zebra"]);
    assert_eq!(ds.shape, [3, 3, 4]);
    assert_eq!(ds.train.labels, [0, 1, 1]);
    assert_eq!(ds.test.labels, [0, 1]);
    // train order: ant/x (30), zebra/a (20), zebra/b (10)
    for (i, base) in [(0usize, 30u8), (1, 20), (2, 10)] {
        let img = ds.train.image(i);
        for y in 0..3usize {
            for x in 0..4usize {
                assert_eq!(
                    img[y * 4 + x],
                    base + x as u8,
                    "R of image {i} at ({x},{y})"
                );
                assert_eq!(img[12 + y * 4 + x], base + 2 * y as u8);
                assert_eq!(img[24 + y * 4 + x], base + (x + y + 100) as u8);
            }
        }
    }
}

#[test]
fn folder_grayscale_gives_one_channel_and_rgba_becomes_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    gray_png(&root.join("train/a/0.png"), 5, 2, 0);
    gray_png(&root.join("train/b/0.png"), 5, 2, 100);
    gray_png(&root.join("test/a/0.png"), 5, 2, 7);
    gray_png(&root.join("test/b/0.png"), 5, 2, 9);
    let ds = load(DataSpec::Folder(root.into())).unwrap();
    assert_eq!(ds.shape, [1, 2, 5]);
    assert_eq!(
        ds.train.image(1),
        &[100, 103, 106, 109, 112, 105, 108, 111, 114, 117]
    );

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for split in ["train", "test"] {
        let path = root.join(format!("{split}/c/0.png"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbaImage::from_pixel(2, 2, image::Rgba([1, 2, 3, 128]))
            .save(&path)
            .unwrap();
    }
    let ds = load(DataSpec::Folder(root.into())).unwrap();
    assert_eq!(ds.shape, [3, 2, 2]);
    assert_eq!(ds.test.image(0), &[1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
}

#[test]
fn folder_jpeg_decodes_with_lower_and_upper_case_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
    for path in ["train/c/a.jpg", "train/c/b.JPEG", "test/c/a.jpeg"] {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save_with_format(&path, image::ImageFormat::Jpeg)
            .unwrap();
    }
    let ds = load(DataSpec::Folder(root.into())).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (2, 1));
    assert_eq!(ds.shape, [3, 8, 8]);
    // JPEG is lossy; a flat colour survives to within a few levels
    let red = ds.train.image(0)[0] as i32;
    assert!((red - 200).abs() <= 3, "red {red}");
}

#[test]
fn folder_odd_sized_image_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rgb_folder(tmp.path());
    let odd = root.join("test/zebra/2.png");
    rgb_png(&odd, 4, 4, 0);
    let err = load(DataSpec::Folder(root.clone())).unwrap_err();
    assert!(matches!(err, DataError::ImageShape { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&odd), "3×4×4", "3×3×4", "ant/x.PNG"]);

    // same size but grayscale: the channel count differs
    fs::remove_file(&odd).unwrap();
    let gray = root.join("train/zebra/c.png");
    gray_png(&gray, 4, 3, 0);
    let err = load(DataSpec::Folder(root)).unwrap_err();
    assert_mentions(&err, &[&path_str(&gray), "1×3×4"]);
}

#[test]
fn folder_undecodable_jpeg_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rgb_folder(tmp.path());
    let bad = root.join("train/zebra/c.jpg");
    // a JPEG signature followed by garbage
    fs::write(&bad, [0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4, 5]).unwrap();
    let err = load(DataSpec::Folder(root)).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&bad), "cannot decode image"]);
}

#[test]
fn folder_first_bad_file_is_reported_whatever_the_thread_timing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for i in 0..40 {
        gray_png(&root.join(format!("train/c/{i:02}.png")), 2, 2, i as u8);
    }
    gray_png(&root.join("test/c/0.png"), 2, 2, 0);
    fs::write(root.join("train/c/15.png"), b"junk").unwrap();
    fs::write(root.join("train/c/35.png"), b"junk").unwrap();
    for _ in 0..5 {
        let err = load(DataSpec::Folder(root.into())).unwrap_err();
        assert_mentions(&err, &["15.png"]);
    }
}

#[test]
fn folder_empty_class_missing_split_mismatched_classes_missing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rgb_folder(tmp.path());
    let empty = root.join("test/zebra");
    fs::remove_file(empty.join("1.png")).unwrap();
    let err = load(DataSpec::Folder(root.clone())).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass { .. }), "{err:?}");
    assert_mentions(&err, &[&path_str(&empty), "no image"]);

    rgb_png(&empty.join("1.png"), 4, 3, 0);
    rgb_png(&root.join("test/yak/1.png"), 4, 3, 0);
    let err = load(DataSpec::Folder(root.clone())).unwrap_err();
    assert!(matches!(err, DataError::ClassMismatch { .. }), "{err:?}");
    assert_mentions(&err, &["ant, zebra", "ant, yak, zebra"]);

    fs::remove_dir_all(root.join("test")).unwrap();
    let err = load(DataSpec::Folder(root.clone())).unwrap_err();
    assert_mentions(&err, &[&path_str(&root.join("test")), "not found"]);

    let missing = root.join("absent");
    let err = load(DataSpec::Folder(missing.clone())).unwrap_err();
    assert_mentions(&err, &[&path_str(&missing), "not found"]);
}
