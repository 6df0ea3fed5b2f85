//! What each fuzz target does with one input, shared by the targets in `fuzz_targets/` (under
//! cargo-fuzz, nightly flags) and by `tests/fuzz_regressions.rs` (plain `cargo test`, which replays
//! the seeds and every saved crash input through exactly this code).
//!
//! Every function feeds the bytes to the library's real parser and accepts `Ok` or `Err`; it panics
//! (= a fuzz finding) only when the parser panics, or when an `Ok` result breaks an invariant that
//! the rest of the program relies on.

#![allow(dead_code)] // each fuzz target uses one of these functions

use std::path::Path;

use distill::data::{cifar, cifar100, idx, Augmentation};
use distill::distill::{decode_logits, decode_view_logits};
use distill::experiment::ExperimentConfig;
use distill::models::summary;
use distill::models::ModelSpec;

/// The teacher, split and augmentation the `logit_cache` target's files must belong to: 3 images,
/// 2 views, 2 classes (its seeds are valid files for exactly these).
pub const CACHE_TEACHER: &str = "teacher";
pub const CACHE_DATA: &str = "data";
pub const CACHE_ROWS: usize = 3;
pub const CACHE_CLASSES: usize = 2;
pub fn cache_augmentation() -> Augmentation {
    Augmentation {
        crop_padding: 4,
        horizontal_flip: true,
        views: Some(2),
        view_seed: 0,
        mixup: None,
    }
}

/// Input shapes the model-spec target infers for: CIFAR-10 and MNIST.
const SPEC_INPUTS: [[usize; 3]; 2] = [[3, 32, 32], [1, 28, 28]];

/// `cifar_bin`: byte 0 selects the parser (even: a batch file, odd: `batches.meta.txt`), byte 1
/// is the number of classes for a batch, the rest is the file.
pub fn cifar_bin(data: &[u8]) {
    let path = Path::new("fuzz/data_batch_1.bin");
    let [selector, classes, file @ ..] = data else {
        return;
    };
    if selector % 2 == 0 {
        let num_classes = usize::from(*classes);
        if let Ok(split) = cifar::parse_batch(file, path, num_classes) {
            assert_eq!(split.shape, cifar::SHAPE);
            assert!(!split.is_empty(), "an empty batch must be an error");
            assert_eq!(split.len() * (cifar::RECORD - 1), split.images.len());
            assert_eq!(split.len() * cifar::RECORD, file.len());
            assert!(split.labels.iter().all(|&l| (l as usize) < num_classes));
            // every image is reachable (what batching does)
            let _ = split.image(split.len() - 1);
        }
    } else {
        let path = Path::new("fuzz/batches.meta.txt");
        // the class count is the whole file here: use byte 1 as part of it
        if let Ok(classes) = cifar::parse_classes(&data[1..], path) {
            assert!(!classes.is_empty(), "no class must be an error");
            assert!(classes
                .iter()
                .all(|c| !c.is_empty() && c.trim() == c && !c.contains('\n')));
        }
    }
}

/// `cifar100_bin`: byte 0 selects the parser (even: `train.bin`/`test.bin`, odd: a class-name
/// file) and the labels (bit 1 clear: fine, set: coarse); the rest is the file. An accepted
/// `.bin` file had both labels of every record in range, and the split holds exactly its images
/// and the chosen labels; an accepted name file has exactly 100 (fine) or 20 (coarse) names.
pub fn cifar100_bin(data: &[u8]) {
    use cifar100::Labels;
    let [selector, file @ ..] = data else {
        return;
    };
    let labels = if selector & 2 == 0 {
        Labels::Fine
    } else {
        Labels::Coarse
    };
    if selector % 2 == 0 {
        let path = Path::new("fuzz/train.bin");
        if let Ok(split) = cifar100::parse_batch(file, path, labels) {
            assert_eq!(split.shape, cifar100::SHAPE);
            assert!(!split.is_empty(), "an empty file must be an error");
            assert_eq!(split.len() * cifar100::RECORD, file.len());
            assert_eq!(split.len() * (cifar100::RECORD - 2), split.images.len());
            for (i, record) in file.chunks_exact(cifar100::RECORD).enumerate() {
                let (coarse, fine) = (usize::from(record[0]), usize::from(record[1]));
                assert!(coarse < cifar100::COARSE_CLASSES && fine < cifar100::FINE_CLASSES);
                let chosen = match labels {
                    Labels::Fine => fine,
                    Labels::Coarse => coarse,
                };
                assert_eq!(split.labels[i] as usize, chosen);
                assert_eq!(split.image(i), &record[2..]);
            }
        }
    } else {
        let path = Path::new("fuzz").join(labels.names_file());
        if let Ok(classes) = cifar100::parse_classes(file, &path, labels) {
            assert_eq!(classes.len(), labels.num_classes());
            assert!(classes
                .iter()
                .all(|c| !c.is_empty() && c.trim() == c && !c.contains('\n')));
        }
    }
}

/// `idx`: byte 0 selects the parser: 0 images, 1 labels, 2 gunzip then images, 3 gunzip then
/// labels, 4 a whole split (bytes 1–2, big-endian, are the length of the images file; byte 3 the
/// number of classes; then the images file and the labels file, each gunzipped if needed).
pub fn idx(data: &[u8]) {
    let images_path = Path::new("fuzz/train-images-idx3-ubyte");
    let labels_path = Path::new("fuzz/train-labels-idx1-ubyte");
    let [selector, rest @ ..] = data else {
        return;
    };
    match selector % 5 {
        0 => check_images(rest.to_vec(), images_path),
        1 => check_labels(rest, labels_path),
        2 => {
            if let Ok(bytes) = idx::gunzip_if_needed(rest.to_vec(), images_path) {
                check_images(bytes, images_path);
            }
        }
        3 => {
            if let Ok(bytes) = idx::gunzip_if_needed(rest.to_vec(), labels_path) {
                check_labels(&bytes, labels_path);
            }
        }
        _ => {
            let [hi, lo, classes, files @ ..] = rest else {
                return;
            };
            let cut = usize::from(u16::from_be_bytes([*hi, *lo])).min(files.len());
            let (images, labels) = files.split_at(cut);
            let Ok(images) = idx::gunzip_if_needed(images.to_vec(), images_path) else {
                return;
            };
            let Ok(labels) = idx::gunzip_if_needed(labels.to_vec(), labels_path) else {
                return;
            };
            let num_classes = usize::from(*classes);
            if let Ok(split) =
                idx::split_from_bytes(images, images_path, &labels, labels_path, num_classes)
            {
                let [c, h, w] = split.shape;
                assert_eq!(c, 1);
                assert_eq!(split.len() * h * w, split.images.len());
                assert!(split.labels.iter().all(|&l| (l as usize) < num_classes));
                for i in 0..split.len() {
                    assert_eq!(split.image(i).len(), h * w);
                }
            }
        }
    }
}

fn check_images(bytes: Vec<u8>, path: &Path) {
    let len = bytes.len();
    if let Ok((pixels, [n, h, w])) = idx::parse_images(bytes, path) {
        assert_eq!(pixels.len(), n * h * w, "pixels must match the header");
        assert_eq!(pixels.len() + 16, len);
    }
}

fn check_labels(bytes: &[u8], path: &Path) {
    if let Ok(labels) = idx::parse_labels(bytes, path) {
        assert_eq!(labels.len() + 8, bytes.len());
        assert!(labels.iter().all(|&l| l < 256));
    }
}

/// `experiment_config`: the input as TOML (non-UTF-8 inputs are skipped), parsed and validated as
/// `distill run --config` does. An accepted config must be runnable as far as the config alone
/// can tell: a non-empty sweep grid (the report needs one point) whose every point is a valid
/// loss, and a `toml::to_string` that works (the run writes `experiment.toml` with it) and reads
/// back as an accepted config.
pub fn experiment_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ExperimentConfig::from_toml_str(text) else {
        return;
    };
    assert!(config.seeds >= 1);
    assert!(config.training.batch_size >= 1);
    assert!(config.data.parse::<distill::data::DataSpec>().is_ok());
    let grid = config.grid();
    assert!(
        !grid.is_empty(),
        "an accepted config must have at least one sweep point"
    );
    for point in &grid {
        let _ = point.dir_name();
    }
    let saved = toml::to_string(&config).expect("an accepted config must serialise to TOML");
    if let Err(e) = ExperimentConfig::from_toml_str(&saved) {
        panic!("an accepted config must read back from its own TOML:\n{saved}\nerror: {e:#}");
    }
}

/// `model_spec`: the input as a model-spec TOML file (non-UTF-8 skipped), then shape inference,
/// totals and the layer table for 3x32x32 and 1x28x28 inputs, as `distill models` does. Absurd
/// sizes must be errors, never an overflow.
pub fn model_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = ModelSpec::from_toml_str(text) else {
        return;
    };
    for input in SPEC_INPUTS {
        let Ok(infos) = spec.infer(input) else {
            continue;
        };
        assert_eq!(infos.len(), spec.layers.len());
        // totals and the table may still fail (too many parameters), but must not panic
        let stats = spec.stats(input);
        let table = summary::layer_table(&spec, input);
        assert_eq!(stats.is_ok(), table.is_ok());
        if let Ok(outputs) = spec.num_outputs(input) {
            assert!(outputs >= 1);
        }
    }
    let saved = spec.to_toml_string();
    let again = ModelSpec::from_toml_str(&saved).unwrap_or_else(|e| {
        panic!("a parsed spec must read back from its own TOML:\n{saved}\nerror: {e}")
    });
    assert_eq!(again.to_toml_string(), saved, "spec TOML must round-trip");
}

/// `logit_cache`: byte 0 selects the format (even: a plain `DLOGIT01` cache, odd: an augmented-view
/// `DVIEWS01` cache) and bit 1 whether the harness appends the SHA-256 the format ends with (so
/// that mutated headers get past the checksum and reach the parser); the rest is the file. An
/// accepted file holds exactly the expected number of logits.
pub fn logit_cache(data: &[u8]) {
    use sha2::{Digest, Sha256};
    let [selector, file @ ..] = data else {
        return;
    };
    let mut bytes = file.to_vec();
    if selector & 2 != 0 {
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
    }
    let path = Path::new("fuzz/teacher-logits.bin");
    if selector % 2 == 0 {
        if let Ok(values) = decode_logits(
            &bytes,
            path,
            CACHE_TEACHER,
            CACHE_DATA,
            CACHE_ROWS,
            CACHE_CLASSES,
        ) {
            assert_eq!(values.len(), CACHE_ROWS * CACHE_CLASSES);
        }
    } else if let Ok(values) = decode_view_logits(
        &bytes,
        path,
        CACHE_TEACHER,
        CACHE_DATA,
        &cache_augmentation(),
        CACHE_ROWS,
        CACHE_CLASSES,
    ) {
        assert_eq!(values.len(), CACHE_ROWS * 2 * CACHE_CLASSES);
    }
}

/// `text_table`: byte 0 picks the format (even: `.tsv`, odd: `.csv`), the rest is one labelled
/// text file, split on the MD5 of each text into train and test. An `Ok` dataset has at least two
/// sorted, distinct classes, every label in range and no empty text.
pub fn text_table(data: &[u8]) {
    use distill::data::text::{load_text, TextSpec};
    let [selector, file @ ..] = data else {
        return;
    };
    let extension = if selector % 2 == 0 { "tsv" } else { "csv" };
    let path =
        std::env::temp_dir().join(format!("distill-fuzz-{}.{extension}", std::process::id()));
    std::fs::write(&path, file).expect("temporary file");
    let loaded = load_text(&TextSpec::Files {
        train: path.clone(),
        test: None,
    });
    let _ = std::fs::remove_file(&path);
    if let Ok(dataset) = loaded {
        assert!(dataset.classes.len() >= 2, "one class must be an error");
        let mut unique = dataset.classes.clone();
        unique.dedup();
        assert_eq!(unique.len(), dataset.classes.len(), "duplicate classes");
        for example in dataset.train.iter().chain(&dataset.test) {
            assert!(example.label < dataset.classes.len());
            assert!(
                !example.text.trim().is_empty(),
                "an empty text must be an error"
            );
        }
    }
}

/// `onnx_model`: the whole input is an ONNX file for the native importer (protobuf decoding, the
/// graph walk, the weights' layout). An imported model must describe a network whose output
/// count is the one it reports.
pub fn onnx_model(data: &[u8]) {
    let device = distill::backend::Backend::default_compiled()
        .device()
        .expect("the default backend");
    let options = distill::onnx::ImportOptions::default();
    if let Ok(model) = distill::onnx::import_bytes(data, "fuzz", &options, &device) {
        let outputs = model
            .spec
            .num_outputs(model.input)
            .expect("an imported spec must fit its own input");
        assert_eq!(outputs, model.outputs);
    }
}

/// `safetensors_file`: byte 0 selects whether the file is read with the spec of the committed
/// `tests/corpus/tiny-a.toml` (odd) or must carry its own (even); the rest is the file.
pub fn safetensors_file(data: &[u8]) {
    let [selector, file @ ..] = data else {
        return;
    };
    let path =
        std::env::temp_dir().join(format!("distill-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, file).is_err() {
        return;
    }
    let spec = (selector % 2 == 1).then(|| {
        ModelSpec::from_toml_str(include_str!("../tests/corpus/tiny-a.toml")).expect("tiny-a spec")
    });
    let device = distill::backend::Backend::default_compiled()
        .device()
        .expect("the default backend");
    if let Ok(model) = distill::models::safetensors::load(&path, spec.as_ref(), None, &device) {
        model
            .spec
            .num_outputs(model.input)
            .expect("a loaded spec must fit its own input");
    }
    let _ = std::fs::remove_file(&path);
}

/// `pytorch_checkpoint`: the input is a `torch.save` file (zip or legacy stream) read as the state
/// dict of the committed `tests/corpus/tiny-a.toml` (1x28x28 images): whatever the bytes, the
/// reader returns a network or an error, and a network it returns predicts as many classes as
/// it says.
pub fn pytorch_checkpoint(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("distill-fuzz-{}.pth", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let spec =
        ModelSpec::from_toml_str(include_str!("../tests/corpus/tiny-a.toml")).expect("tiny-a spec");
    let device = distill::backend::Backend::default_compiled()
        .device()
        .expect("the default backend");
    if let Ok(model) = distill::models::pytorch::load(&path, &spec, [1, 28, 28], None, &device) {
        assert_eq!(
            model
                .spec
                .num_outputs([1, 28, 28])
                .expect("a loaded spec fits its input"),
            model.classes
        );
    }
    let _ = std::fs::remove_file(&path);
}
