//! CIFAR-100 on small generated files: the spec strings, both labellings, the pixel order, the
//! class names, a clear error (naming the file and what was expected) for every kind of bad
//! input, the cache and its atomic tarball extraction, and a download through a mirror on
//! 127.0.0.1 — these tests never touch the internet.

#[path = "../fuzz/harness.rs"]
mod harness;

mod data_common;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use data_common::{assert_mentions, dir_entries, gzip, load, md5_hex, path_str, pixel, serve};
use distill::data::cifar100::{self, Labels};
use distill::data::{download, DataError, DataSpec};

// ---------------------------------------------------------------- generated files

/// Fine label of generated record `i`.
fn fine(i: usize) -> u8 {
    ((i * 37 + 3) % 100) as u8
}

/// Coarse label of generated record `i` (independent of the fine one, so a mix-up shows).
fn coarse(i: usize) -> u8 {
    ((i * 7 + 11) % 20) as u8
}

fn fine_names() -> Vec<String> {
    (0..100).map(|i| format!("fine_{i:02}")).collect()
}

fn coarse_names() -> Vec<String> {
    (0..20).map(|i| format!("coarse_{i:02}")).collect()
}

/// `n` CIFAR-100 records: coarse label, fine label, then 3072 generated pixel bytes (CHW).
fn records(first: usize, n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in first..first + n {
        bytes.push(coarse(i));
        bytes.push(fine(i));
        bytes.extend((0..3072).map(|p| pixel(i, p)));
    }
    bytes
}

/// The four files of the official layout: `n_train` training records (0..), `n_test` test
/// records (1000..), and both name files (ending with a blank line, as the official ones may).
fn layout(n_train: usize, n_test: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("train.bin", records(0, n_train)),
        ("test.bin", records(1000, n_test)),
        (
            "fine_label_names.txt",
            (fine_names().join("\n") + "\n\n").into_bytes(),
        ),
        (
            "coarse_label_names.txt",
            (coarse_names().join("\n") + "\n\n").into_bytes(),
        ),
    ]
}

/// Writes the official CIFAR-100 binary layout into `dir`.
fn write_dir(dir: &Path, n_train: usize, n_test: usize) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in layout(n_train, n_test) {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A `.tar.gz` holding `files` under `cifar-100-binary/`.
fn tarball(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("cifar-100-binary/{name}"),
                body.as_slice(),
            )
            .unwrap();
    }
    gzip(&builder.into_inner().unwrap())
}

fn fine_spec(dir: &Path) -> DataSpec {
    DataSpec::Cifar100(Some(dir.to_path_buf()))
}

fn coarse_spec(dir: &Path) -> DataSpec {
    DataSpec::Cifar100Coarse(Some(dir.to_path_buf()))
}

// ---------------------------------------------------------------- spec strings

#[test]
fn spec_parses_both_labellings_and_round_trips() {
    let cases = [
        ("cifar100", DataSpec::Cifar100(None)),
        ("cifar100:/d/c", DataSpec::Cifar100(Some("/d/c".into()))),
        ("cifar100-coarse", DataSpec::Cifar100Coarse(None)),
        (
            "cifar100-coarse:rel/a:b",
            DataSpec::Cifar100Coarse(Some("rel/a:b".into())),
        ),
    ];
    for (text, spec) in cases {
        assert_eq!(text.parse::<DataSpec>().unwrap(), spec, "{text}");
        assert_eq!(spec.to_string(), text);
    }
    for bad in ["cifar100:", "cifar100-fine", "cifar-100", "cifar100coarse"] {
        let err = bad.parse::<DataSpec>().unwrap_err();
        assert_mentions(&err, &["cifar100[:DIR]", "cifar100-coarse[:DIR]"]);
    }
}

// ---------------------------------------------------------------- loading

#[test]
fn fine_labels_pixels_and_names_from_the_dir_and_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("cifar-100-binary");
    write_dir(&bins, 7, 3);
    for dir in [bins.clone(), tmp.path().to_path_buf()] {
        let ds = load(fine_spec(&dir)).unwrap();
        assert_eq!(ds.name, "cifar100");
        assert_eq!(ds.classes, fine_names());
        assert_eq!(ds.shape, [3, 32, 32]);
        assert_eq!((ds.train.len(), ds.test.len()), (7, 3));
        assert_eq!(
            ds.train.labels,
            (0..7).map(|i| u32::from(fine(i))).collect::<Vec<_>>()
        );
        assert_eq!(
            ds.test.labels,
            (1000..1003).map(|i| u32::from(fine(i))).collect::<Vec<_>>()
        );
        // CHW: channel c, row y, column x of image i is pixel byte c*1024 + y*32 + x of its
        // record, after the two label bytes
        for i in [0, 3, 6] {
            for (c, y, x) in [(0, 0, 0), (1, 5, 9), (2, 31, 31), (2, 0, 17), (1, 31, 0)] {
                let p = c * 1024 + y * 32 + x;
                assert_eq!(
                    ds.train.image(i)[p],
                    pixel(i, p),
                    "image {i} at {c},{y},{x}"
                );
            }
        }
        assert_eq!(ds.test.image(2), &records(1002, 1)[2..]);
        assert_eq!(ds.train.images.len(), 7 * 3072);
    }
}

#[test]
fn coarse_labels_and_names_with_the_same_images() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), 6, 4);
    let fine_ds = load(fine_spec(tmp.path())).unwrap();
    let ds = load(coarse_spec(tmp.path())).unwrap();
    assert_eq!(ds.name, "cifar100-coarse");
    assert_eq!(ds.classes, coarse_names());
    assert_eq!(
        ds.train.labels,
        (0..6).map(|i| u32::from(coarse(i))).collect::<Vec<_>>()
    );
    assert_eq!(
        ds.test.labels,
        (1000..1004)
            .map(|i| u32::from(coarse(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(ds.train.images, fine_ds.train.images);
    assert_eq!(ds.test.images, fine_ds.test.images);
    assert_ne!(ds.train.labels, fine_ds.train.labels);
    assert!(ds.train.labels.iter().all(|&l| l < 20));
}

#[test]
fn each_labelling_reads_only_its_own_name_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), 2, 2);
    fs::remove_file(tmp.path().join("fine_label_names.txt")).unwrap();
    assert_eq!(load(coarse_spec(tmp.path())).unwrap().classes.len(), 20);
    write_dir(tmp.path(), 2, 2);
    fs::remove_file(tmp.path().join("coarse_label_names.txt")).unwrap();
    assert_eq!(load(fine_spec(tmp.path())).unwrap().classes.len(), 100);
}

#[test]
fn parse_batch_keeps_both_labels_apart() {
    let path = Path::new("x/test.bin");
    let mut two = vec![0u8; 2 * cifar100::RECORD];
    two[cifar100::RECORD] = 19; // coarse label of record 1
    two[cifar100::RECORD + 1] = 99; // fine label of record 1
    two[cifar100::RECORD + 2] = 77; // its first pixel
    two[2 * cifar100::RECORD - 1] = 5; // its last pixel
    let fine_split = cifar100::parse_batch(&two, path, Labels::Fine).unwrap();
    assert_eq!(fine_split.labels, [0, 99]);
    assert_eq!(fine_split.image(1)[0], 77);
    assert_eq!(fine_split.image(1)[3071], 5);
    let coarse_split = cifar100::parse_batch(&two, path, Labels::Coarse).unwrap();
    assert_eq!(coarse_split.labels, [0, 19]);
    assert_eq!(coarse_split.images, fine_split.images);
    assert_eq!(
        (Labels::Fine.num_classes(), Labels::Coarse.num_classes()),
        (100, 20)
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn bin_whose_length_is_not_a_multiple_of_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), 2, 2);
    let path = tmp.path().join("train.bin");
    let mut bytes = records(0, 2);
    bytes.pop();
    fs::write(&path, bytes).unwrap();
    let err = load(fine_spec(tmp.path())).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    assert_mentions(
        &err,
        &[
            &path_str(&path),
            "multiple of 3074",
            "coarse-label byte + 1 fine-label byte",
            "6147 bytes (1 records and 3073 bytes left over)",
        ],
    );

    // CIFAR-10 records (one label byte) are not CIFAR-100 records
    fs::write(&path, vec![0u8; 2 * 3073]).unwrap();
    let err = load(coarse_spec(tmp.path())).unwrap_err();
    assert_mentions(
        &err,
        &[&path_str(&path), "6146 bytes", "3072 bytes left over"],
    );

    write_dir(tmp.path(), 2, 2);
    let path = tmp.path().join("test.bin");
    fs::write(&path, b"").unwrap();
    let err = load(fine_spec(tmp.path())).unwrap_err();
    assert_mentions(
        &err,
        &[
            &path_str(&path),
            "a non-zero multiple of 3074",
            "found 0 bytes",
        ],
    );
}

#[test]
fn fine_label_out_of_range_names_the_record_and_value_in_either_labelling() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), 2, 4);
    let path = tmp.path().join("test.bin");
    let mut bytes = records(1000, 4);
    bytes[2 * cifar100::RECORD + 1] = 100;
    fs::write(&path, bytes).unwrap();
    for spec in [fine_spec(tmp.path()), coarse_spec(tmp.path())] {
        let err = load(spec).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        assert_mentions(
            &err,
            &[
                &path_str(&path),
                "fine labels below 100",
                "found fine label 100 in record 2",
            ],
        );
    }
}

#[test]
fn coarse_label_out_of_range_names_the_record_and_value_in_either_labelling() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), 3, 2);
    let path = tmp.path().join("train.bin");
    for value in [20u8, 255] {
        let mut bytes = records(0, 3);
        bytes[cifar100::RECORD] = value;
        fs::write(&path, bytes).unwrap();
        for spec in [coarse_spec(tmp.path()), fine_spec(tmp.path())] {
            let err = load(spec).unwrap_err();
            assert_mentions(
                &err,
                &[
                    &path_str(&path),
                    "coarse labels below 20",
                    &format!("found coarse label {value} in record 1"),
                ],
            );
        }
    }
}

#[test]
fn missing_files_and_directory_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, spec, expected) in [
        (
            "train.bin",
            fine_spec(tmp.path()),
            "CIFAR-100 training images",
        ),
        ("test.bin", coarse_spec(tmp.path()), "CIFAR-100 test images"),
        (
            "fine_label_names.txt",
            fine_spec(tmp.path()),
            "fine class-name file (100 names",
        ),
        (
            "coarse_label_names.txt",
            coarse_spec(tmp.path()),
            "coarse class-name file (20 names",
        ),
    ] {
        write_dir(tmp.path(), 1, 1);
        fs::remove_file(tmp.path().join(file)).unwrap();
        let err = load(spec).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{file}: {err:?}");
        assert_mentions(
            &err,
            &[&path_str(&tmp.path().join(file)), "not found", expected],
        );
    }

    // the CIFAR-10 layout (or its parent) given as CIFAR-100: the error says so
    let cifar10 = tmp.path().join("c10");
    fs::create_dir_all(cifar10.join("cifar-10-batches-bin")).unwrap();
    fs::write(cifar10.join("cifar-10-batches-bin/test_batch.bin"), b"").unwrap();
    for dir in [cifar10.clone(), cifar10.join("cifar-10-batches-bin")] {
        let err = load(fine_spec(&dir)).unwrap_err();
        assert_mentions(
            &err,
            &[
                "fine_label_names.txt: not found",
                "CIFAR-10 binary layout, which `cifar10:DIR` reads",
            ],
        );
    }

    let missing = tmp.path().join("absent");
    let err = load(fine_spec(&missing)).unwrap_err();
    assert_mentions(
        &err,
        &[&path_str(&missing), "not found", "CIFAR-100 binary files"],
    );
}

#[test]
fn name_file_with_the_wrong_number_of_names() {
    let tmp = tempfile::tempdir().unwrap();
    let fine_path = tmp.path().join("fine_label_names.txt");
    let coarse_path = tmp.path().join("coarse_label_names.txt");
    let cases: [(&Path, DataSpec, String, &str); 5] = [
        (
            &fine_path,
            fine_spec(tmp.path()),
            fine_names()[..99].join("\n"),
            "found 99 names",
        ),
        (
            &fine_path,
            fine_spec(tmp.path()),
            fine_names().join("\n") + "\nextra\n",
            "found 101 names",
        ),
        // the two files swapped
        (
            &fine_path,
            fine_spec(tmp.path()),
            coarse_names().join("\n"),
            "found 20 names",
        ),
        (
            &coarse_path,
            coarse_spec(tmp.path()),
            fine_names().join("\n"),
            "found 100 names",
        ),
        (
            &coarse_path,
            coarse_spec(tmp.path()),
            "\n \n".to_string(),
            "at least one class name",
        ),
    ];
    for (path, spec, contents, found) in cases {
        write_dir(tmp.path(), 1, 1);
        fs::write(path, contents).unwrap();
        let err = load(spec).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        assert_mentions(&err, &[&path_str(path), found]);
        if found.starts_with("found") {
            let expected = if path == fine_path.as_path() {
                "expected 100 CIFAR-100 fine class names, one per line"
            } else {
                "expected 20 CIFAR-100 coarse class names, one per line"
            };
            assert_mentions(&err, &[expected]);
        }
    }

    // bytes that are not UTF-8 at all
    write_dir(tmp.path(), 1, 1);
    fs::write(&coarse_path, b"\xff\xfe\x00\x01cat\n\x80").unwrap();
    let err = load(coarse_spec(tmp.path())).unwrap_err();
    assert_mentions(&err, &[&path_str(&coarse_path), "UTF-8"]);
}

// ---------------------------------------------------------------- the command line and the cache

/// `distill data info SPEC --json` with the cache in `cache` and downloads from `mirror`.
fn data_info(spec: &str, cache: &Path, mirror: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["data", "info", spec, "--json"])
        .env("DISTILL_DATA", cache)
        .env("DISTILL_MIRROR", mirror)
        .output()
        .unwrap()
}

/// A mirror on a port nobody listens on: any download attempt fails.
fn dead_mirror() -> String {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    mirror
}

/// Checks a successful `data info --json`: name, split sizes, number of classes.
fn assert_info(out: &Output, name: &str, train: u64, test: u64, classes: usize) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(!stderr.contains("downloading"), "{name}: {stderr}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], name);
    assert_eq!(
        (info["train"].as_u64(), info["test"].as_u64()),
        (Some(train), Some(test))
    );
    assert_eq!(info["shape"], serde_json::json!([3, 32, 32]));
    assert_eq!(info["classes"].as_array().unwrap().len(), classes);
}

#[test]
fn cli_reads_a_directory_in_both_labellings() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(&tmp.path().join("data/cifar-100-binary"), 5, 2);
    let dir = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    let mirror = dead_mirror();
    let out = data_info(&format!("cifar100:{}", dir.display()), &cache, &mirror);
    assert_info(&out, "cifar100", 5, 2, 100);
    let out = data_info(
        &format!("cifar100-coarse:{}", dir.display()),
        &cache,
        &mirror,
    );
    assert_info(&out, "cifar100-coarse", 5, 2, 20);
    assert!(!cache.exists(), "a directory spec must not touch the cache");
}

#[test]
fn cli_uses_the_cached_files_without_downloading() {
    let cache = tempfile::tempdir().unwrap();
    write_dir(&cache.path().join("cifar100/cifar-100-binary"), 4, 3);
    let mirror = dead_mirror();
    assert_info(
        &data_info("cifar100", cache.path(), &mirror),
        "cifar100",
        4,
        3,
        100,
    );
    assert_info(
        &data_info("cifar100-coarse", cache.path(), &mirror),
        "cifar100-coarse",
        4,
        3,
        20,
    );
}

#[test]
fn cli_extracts_a_cached_tarball_into_place_and_drops_it() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cifar100");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("cifar-100-binary.tar.gz"), tarball(&layout(6, 2))).unwrap();
    // a half-filled directory from an earlier attempt is replaced, not trusted
    fs::create_dir_all(dir.join("cifar-100-binary")).unwrap();
    fs::write(dir.join("cifar-100-binary/train.bin"), b"partial").unwrap();
    let out = data_info("cifar100-coarse", cache.path(), &dead_mirror());
    assert_info(&out, "cifar100-coarse", 6, 2, 20);
    assert_eq!(
        dir_entries(&dir),
        ["cifar-100-binary"],
        "tarball and staging gone"
    );
    assert_eq!(
        dir_entries(&dir.join("cifar-100-binary")),
        [
            "coarse_label_names.txt",
            "fine_label_names.txt",
            "test.bin",
            "train.bin"
        ]
    );
    assert_eq!(
        fs::read(dir.join("cifar-100-binary/train.bin")).unwrap(),
        records(0, 6)
    );
}

#[test]
fn cli_refuses_a_tarball_without_the_files_and_leaves_no_half_directory() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cifar100");
    fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("cifar-100-binary.tar.gz");
    let mut files = layout(2, 2);
    files.retain(|(name, _)| *name != "coarse_label_names.txt");
    fs::write(&archive, tarball(&files)).unwrap();
    let out = data_info("cifar100", cache.path(), &dead_mirror());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        path_str(&archive).as_str(),
        "a tarball holding cifar-100-binary/",
    ] {
        assert!(
            stderr.contains(needle),
            "`{stderr}` does not mention `{needle}`"
        );
    }
    assert_eq!(
        dir_entries(&dir),
        ["cifar-100-binary.tar.gz"],
        "no staging left"
    );
}

#[test]
fn download_fetches_the_official_file_name_and_checks_the_official_md5() {
    let (file, md5) = download::CIFAR100.files[0];
    assert_eq!(
        format!("{}{file}", download::CIFAR100.base_url),
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
    );
    assert_eq!(md5, "03b5dce01913d631647c71ecec9e9cb8");

    // a generated tarball cannot have the official MD5: the download must be discarded
    let fake = tarball(&layout(2, 2));
    let base = serve(HashMap::from([(format!("/{file}"), fake.clone())]));
    let cache = tempfile::tempdir().unwrap();
    let out = data_info("cifar100", cache.path(), &format!("{base}/"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let found = md5_hex(&fake);
    let url = format!("{base}/{file}");
    for needle in [url.as_str(), md5, found.as_str(), "checksum"] {
        assert!(
            stderr.contains(needle),
            "stderr `{stderr}` does not mention `{needle}`"
        );
    }
    assert!(
        dir_entries(&cache.path().join("cifar100")).is_empty(),
        "{:?}",
        dir_entries(&cache.path().join("cifar100"))
    );
}

// ---------------------------------------------------------------- the fuzz target's inputs

fn fuzz_seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cifar100_bin");
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    seeds
}

/// The seeds of `fuzz/seeds/cifar100_bin/` go through the fuzz target's own code without a
/// panic, and each is a valid file (a seed that stopped parsing would weaken the fuzzer).
#[test]
fn fuzz_seeds_are_valid_and_pass_the_harness() {
    let seeds = fuzz_seeds();
    assert!(seeds.len() >= 4, "{seeds:?}");
    for path in seeds {
        let bytes = fs::read(&path).unwrap();
        harness::cifar100_bin(&bytes);
        let labels = if bytes[0] & 2 == 0 {
            Labels::Fine
        } else {
            Labels::Coarse
        };
        let ok = if bytes[0] % 2 == 0 {
            cifar100::parse_batch(&bytes[1..], &path, labels).map(|_| ())
        } else {
            cifar100::parse_classes(&bytes[1..], &path, labels).map(|_| ())
        };
        ok.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // and a few broken inputs through the harness: errors, never panics
    for input in [
        &b""[..],
        b"\x00",
        b"\x02\x13\x63",
        &[0u8; 1 + 3074][..],
        &[1u8; 50][..],
    ] {
        harness::cifar100_bin(input);
    }
}
