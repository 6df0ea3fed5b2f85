//! Replays the fuzzers' inputs under plain `cargo test` (no nightly, no cargo-fuzz): every seed in
//! `fuzz/seeds/<target>/` and every saved finding in `tests/corpus/fuzz/<target>-<name>` goes
//! through exactly the code the fuzz target runs (`fuzz/harness.rs`), which accepts `Ok` or `Err`
//! and panics only on a parser panic or a broken invariant. Below that, one test per finding pins
//! the error it now gives, since a release build (overflow checks off) would otherwise wrap
//! silently instead of panicking.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use distill::data::{cifar, idx};
use distill::distill::{decode_logits, decode_view_logits};
use distill::experiment::ExperimentConfig;
use distill::models::{summary, ModelSpec};
use sha2::{Digest, Sha256};

/// What a fuzz target does with one input.
type Harness = fn(&[u8]);

/// The fuzz targets and the harness function each runs.
const TARGETS: [(&str, Harness); 10] = [
    ("cifar_bin", harness::cifar_bin),
    ("cifar100_bin", harness::cifar100_bin),
    ("idx", harness::idx),
    ("experiment_config", harness::experiment_config),
    ("model_spec", harness::model_spec),
    ("logit_cache", harness::logit_cache),
    ("text_table", harness::text_table),
    ("onnx_model", harness::onnx_model),
    ("safetensors_file", harness::safetensors_file),
    ("pytorch_checkpoint", harness::pytorch_checkpoint),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn seeds(target: &str) -> Vec<PathBuf> {
    files_in(&root().join("fuzz/seeds").join(target))
}

fn replay(target: &str, run: Harness, path: &Path) {
    let bytes = fs::read(path).unwrap();
    if let Err(panic) = std::panic::catch_unwind(|| run(&bytes)) {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("?");
        panic!("{target}: {} panics: {msg}", path.display());
    }
}

#[test]
fn every_seed_and_saved_finding_gives_ok_or_err() {
    let mut count = 0;
    for (target, run) in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for path in seeds {
            replay(target, run, &path);
            count += 1;
        }
    }
    let corpus = root().join("tests/corpus/fuzz");
    for path in files_in(&corpus) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (target, run) = TARGETS
            .iter()
            .find(|(t, _)| name.starts_with(&format!("{t}-")))
            .unwrap_or_else(|| {
                panic!("{name}: a saved finding must be named <target>-<name>, target one of cifar_bin, cifar100_bin, idx, experiment_config, model_spec, logit_cache, text_table, onnx_model, safetensors_file, pytorch_checkpoint")
            });
        replay(target, *run, &path);
        count += 1;
    }
    assert!(count > 0);
}

// ---------------------------------------------------------------- the seeds are valid inputs

/// The seeds are meant as valid files: a seed that stopped parsing would silently weaken the
/// fuzzers, so check that each one is accepted.
#[test]
fn seeds_are_accepted_by_their_parsers() {
    for path in seeds("cifar_bin") {
        let bytes = fs::read(&path).unwrap();
        let ok = if bytes[0] % 2 == 0 {
            cifar::parse_batch(&bytes[2..], &path, usize::from(bytes[1])).map(|_| ())
        } else {
            cifar::parse_classes(&bytes[1..], &path).map(|_| ())
        };
        ok.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for path in seeds("idx") {
        let bytes = fs::read(&path).unwrap();
        let body = bytes[1..].to_vec();
        let ok = match bytes[0] % 5 {
            0 => idx::parse_images(body, &path).map(|_| ()),
            1 => idx::parse_labels(&body, &path).map(|_| ()),
            2 => idx::gunzip_if_needed(body, &path)
                .and_then(|b| idx::parse_images(b, &path))
                .map(|_| ()),
            3 => idx::gunzip_if_needed(body, &path)
                .and_then(|b| idx::parse_labels(&b, &path))
                .map(|_| ()),
            _ => {
                let cut = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let (images, labels) = body[3..].split_at(cut);
                let images = idx::gunzip_if_needed(images.to_vec(), &path).unwrap();
                let labels = idx::gunzip_if_needed(labels.to_vec(), &path).unwrap();
                idx::split_from_bytes(images, &path, &labels, &path, usize::from(body[2]))
                    .map(|_| ())
            }
        };
        ok.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for path in seeds("experiment_config") {
        ExperimentConfig::from_toml_str(&fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in seeds("model_spec") {
        let spec = ModelSpec::from_toml_str(&fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        spec.stats([3, 32, 32])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let device = distill::backend::Backend::default_compiled()
        .device()
        .unwrap();
    for path in seeds("onnx_model") {
        let options = distill::onnx::ImportOptions::default();
        distill::onnx::import_bytes(&fs::read(&path).unwrap(), "seed", &options, &device)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in seeds("safetensors_file") {
        let bytes = fs::read(&path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seed.safetensors");
        fs::write(&file, &bytes[1..]).unwrap();
        let spec = ModelSpec::from_toml_str(include_str!("corpus/tiny-a.toml")).unwrap();
        let spec = (bytes[0] % 2 == 1).then_some(&spec);
        distill::models::safetensors::load(&file, spec, None, &device)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in seeds("logit_cache") {
        let bytes = fs::read(&path).unwrap();
        let mut file = bytes[1..].to_vec();
        if bytes[0] & 2 != 0 {
            file.extend_from_slice(&Sha256::digest(&file));
        }
        let (teacher, data, rows, classes) = (
            harness::CACHE_TEACHER,
            harness::CACHE_DATA,
            harness::CACHE_ROWS,
            harness::CACHE_CLASSES,
        );
        let ok = if bytes[0] % 2 == 0 {
            decode_logits(&file, &path, teacher, data, rows, classes).map(|_| ())
        } else {
            let aug = harness::cache_augmentation();
            decode_view_logits(&file, &path, teacher, data, &aug, rows, classes).map(|_| ())
        };
        ok.unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in seeds("text_table") {
        let bytes = fs::read(&path).unwrap();
        let work = tempfile::tempdir().unwrap();
        let file = work
            .path()
            .join(if bytes[0] % 2 == 0 { "t.tsv" } else { "t.csv" });
        fs::write(&file, &bytes[1..]).unwrap();
        distill::data::text::load_text(&distill::data::text::TextSpec::Files {
            train: file,
            test: None,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A cache file with bytes after its payload (sealed with a valid checksum) is refused, naming
/// how many, and so is the same file under another augmentation.
#[test]
fn logit_cache_with_trailing_bytes_or_other_settings_is_refused() {
    let seed = fs::read(root().join("fuzz/seeds/logit_cache/views-unsealed")).unwrap();
    let path = Path::new("cache/views.bin");
    let aug = harness::cache_augmentation();
    let decode = |file: &[u8], aug: &distill::data::Augmentation| {
        let mut sealed = file.to_vec();
        sealed.extend_from_slice(&Sha256::digest(file));
        decode_view_logits(
            &sealed,
            path,
            harness::CACHE_TEACHER,
            harness::CACHE_DATA,
            aug,
            harness::CACHE_ROWS,
            harness::CACHE_CLASSES,
        )
    };
    let values = decode(&seed[1..], &aug).unwrap();
    assert_eq!(values[5].to_f32(), 5.0);
    let mut longer = seed[1..].to_vec();
    longer.extend_from_slice(&[0, 0, 0]);
    let err = format!("{:#}", decode(&longer, &aug).unwrap_err());
    assert!(
        err.contains("cache/views.bin") && err.contains("3 bytes follow"),
        "{err}"
    );
    let other = distill::data::Augmentation {
        horizontal_flip: false,
        ..aug
    };
    let err = format!("{:#}", decode(&seed[1..], &other).unwrap_err());
    assert!(
        err.contains("crop padding 4, flip, 2 fixed views")
            && err.contains("crop padding 4, no flip, 2 fixed views"),
        "{err}"
    );
}

#[test]
fn the_shipped_configs_parse_through_from_toml_str() {
    for path in files_in(&root().join("configs")) {
        if path.extension().is_some_and(|e| e == "toml") {
            ExperimentConfig::from_toml_str(&fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
}

// ---------------------------------------------------------------- parse_batch/parse_classes

#[test]
fn cifar_parse_batch_keeps_read_split_errors() {
    let path = Path::new("x/data_batch_1.bin");
    let err = cifar::parse_batch(&[], path, 10).unwrap_err().to_string();
    assert!(err.contains("x/data_batch_1.bin"), "{err}");
    assert!(err.contains("a non-zero multiple of 3073 bytes"), "{err}");
    let err = cifar::parse_batch(&[0; 3074], path, 10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3074 bytes (1 records and 1 bytes left over)"),
        "{err}"
    );
    let mut two = vec![0u8; 2 * cifar::RECORD];
    two[cifar::RECORD] = 10;
    let err = cifar::parse_batch(&two, path, 10).unwrap_err().to_string();
    assert!(err.contains("label 10 of item 1 is out of range"), "{err}");
    two[cifar::RECORD] = 9;
    two[cifar::RECORD + 1] = 77;
    let split = cifar::parse_batch(&two, path, 10).unwrap();
    assert_eq!(split.labels, [0, 9]);
    assert_eq!(split.image(1)[0], 77);
}

#[test]
fn cifar_parse_classes_trims_and_rejects_empty_or_binary() {
    let path = Path::new("x/batches.meta.txt");
    assert_eq!(
        cifar::parse_classes(b" cat \n\ndog\r\n\n", path).unwrap(),
        ["cat", "dog"]
    );
    let err = cifar::parse_classes(b"\n \n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one class name"), "{err}");
    let err = cifar::parse_classes(b"\xff\xfe", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("UTF-8 text"), "{err}");
}

// ---------------------------------------------------------------- findings

fn finding(name: &str) -> String {
    fs::read_to_string(root().join("tests/corpus/fuzz").join(name)).unwrap()
}

/// The spec error for a saved `model_spec` finding on a 3x32x32 input, from `infer`, `stats` and
/// the layer table alike (in a release build these used to wrap silently to wrong counts; in a
/// debug build, and under cargo-fuzz, they panicked with "attempt to multiply with overflow").
fn spec_error(name: &str) -> String {
    let spec = ModelSpec::from_toml_str(&finding(name)).unwrap();
    let err = spec.stats([3, 32, 32]).unwrap_err().to_string();
    assert_eq!(
        summary::layer_table(&spec, [3, 32, 32])
            .unwrap_err()
            .to_string(),
        err
    );
    assert!(err.contains("does not fit in a 64-bit count"), "{err}");
    err
}

#[test]
fn conv_with_a_huge_kernel_is_an_error_naming_the_layer() {
    let err = spec_error("model_spec-conv-kernel-overflow");
    assert!(
        err.starts_with("layer 0 (conv2d), field `filters`"),
        "{err}"
    );
    assert!(
        err.contains("3 filters of 4294967296x4294967296x3"),
        "{err}"
    );
    // the model's inference stops there: no later layer is reached
    let spec = ModelSpec::from_toml_str(&finding("model_spec-conv-kernel-overflow")).unwrap();
    assert_eq!(spec.infer([3, 32, 32]).unwrap_err().to_string(), err);
}

#[test]
fn conv_with_too_many_filters_is_an_error() {
    let err = spec_error("model_spec-conv-filters-overflow");
    assert!(
        err.starts_with("layer 0 (conv2d), field `filters`"),
        "{err}"
    );
}

#[test]
fn dense_with_too_many_units_is_an_error() {
    let err = spec_error("model_spec-dense-units-overflow");
    assert!(err.starts_with("layer 1 (dense), field `units`"), "{err}");
    assert!(
        err.contains("4611686018427387904 units on 3072 input features"),
        "{err}"
    );
}

#[test]
fn batch_norm_over_too_many_features_is_an_error() {
    let err = spec_error("model_spec-batch-norm-overflow");
    assert!(
        err.starts_with("layer 3 (batch_norm), field `input`"),
        "{err}"
    );
}

#[test]
fn totals_that_overflow_are_an_error_though_every_layer_fits() {
    let name = "model_spec-weight-bytes-overflow";
    let spec = ModelSpec::from_toml_str(&finding(name)).unwrap();
    // each layer's counts fit, so inference itself succeeds...
    assert_eq!(spec.infer([3, 32, 32]).unwrap().len(), 4);
    // ...but the weights would take more than 2^64 bytes
    let err = spec_error(name);
    assert!(
        err.starts_with("model `model`: the total parameter count"),
        "{err}"
    );
}

#[test]
fn large_but_representable_specs_still_infer() {
    // the checks reject only counts that overflow, not merely large models
    let spec = ModelSpec::from_toml_str(
        "layers = [{ type = \"conv2d\", filters = 65536, kernel = 7 }, { type = \"flatten\" }, { type = \"dense\", units = 100000 }]",
    )
    .unwrap();
    let stats = spec.stats([3, 32, 32]).unwrap();
    assert_eq!(
        stats.params,
        7 * 7 * 3 * 65536 + 65536 + 65536 * 32 * 32 * 100_000 + 100_000
    );
}

fn config_error(name: &str) -> String {
    format!(
        "{:#}",
        ExperimentConfig::from_toml_str(&finding(name)).unwrap_err()
    )
}

#[test]
fn an_empty_temperature_or_t2_list_is_rejected_with_kd() {
    // used to pass validation with an empty grid: the run trained the teacher and the scratch
    // student, then panicked building the report ("the sweep has at least one point")
    let err = config_error("experiment_config-empty-temperature");
    assert_eq!(
        err,
        "`sweep.temperature` must list at least one value with loss \"kd\""
    );
    let err = config_error("experiment_config-empty-t2-scaling");
    assert_eq!(
        err,
        "`sweep.t2_scaling` must list at least one value with loss \"kd\""
    );
    // `mse` ignores both lists, so empty ones are fine there
    let mse = "teacher = \"t\"\n[sweep]\nalpha = [0.5]\ntemperature = []\nt2_scaling = []\nloss = \"mse\"\n";
    let config = ExperimentConfig::from_toml_str(mse).unwrap();
    assert_eq!(config.grid().len(), 1);
}

#[test]
fn a_grid_of_millions_of_points_is_rejected_before_it_is_built() {
    // 3 kB of lists: 600 alpha × 600 temperature × 150 t2_scaling values. Validation used to
    // build all 54 million points (1.3 GB) and check each one: a timeout under the fuzzer.
    let started = std::time::Instant::now();
    let err = config_error("experiment_config-54M-point-grid");
    assert!(started.elapsed().as_secs() < 5);
    assert!(
        err.contains(
            "`sweep` has 600 alpha × 600 temperature × 150 t2_scaling values, 54000000 points; expected at most 10000"
        ),
        "{err}"
    );
    // the limit is on the product of the list lengths, not on any one list
    assert_eq!(distill::experiment::MAX_SWEEP_POINTS, 10_000);
    let config: ExperimentConfig =
        toml::from_str("teacher = \"t\"\n[sweep]\nalpha = [0.5]\n").unwrap();
    let mut huge = config.clone();
    huge.sweep.alpha = vec![0.5; 100];
    huge.sweep.temperature = vec![1.0; 100];
    huge.sweep.t2_scaling = vec![true; 2];
    assert!(huge
        .validate()
        .unwrap_err()
        .to_string()
        .contains("20000 points"));
    huge.sweep.t2_scaling = vec![true; 1];
    huge.validate().unwrap();
}
