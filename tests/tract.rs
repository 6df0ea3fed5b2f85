//! The tract engine for ONNX graphs outside the native importer's vocabulary.
//!
//! Fixture: a residual CNN trained in PyTorch on the embedded data and exported by
//! `torch.onnx.export` (tests/fixtures/onnx-tract/, made by make_fixture.py there), whose skip
//! connection (Add of two branches), channel Concat and ReduceMean the native importer cannot
//! map. It must run on tract with PyTorch's logits and test accuracy, as a teacher too; and on a
//! graph both engines can run (the Keras export of tests/fixtures/onnx-keras) they must agree.
#![cfg(feature = "tract")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::Device;
use common::{embedded, max_abs_diff, to_vec};
use distill::classifier::{load_classifier, Classifier, Origin};
use distill::onnx::{EngineChoice, ImportOptions, OutputKind};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("onnx-tract/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn options(engine: EngineChoice) -> ImportOptions {
    ImportOptions {
        expected_input: Some([1, 28, 28]),
        engine,
        ..ImportOptions::default()
    }
}

fn load(path: &Path, engine: EngineChoice) -> Classifier {
    load_classifier(path, &options(engine), &Device::flex())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// Logits of the first `n` embedded test images.
fn probe(model: &Classifier, n: usize) -> Vec<f32> {
    let (images, _) = embedded()
        .test
        .batch(&(0..n).collect::<Vec<_>>(), &Device::flex(), None);
    to_vec(model.forward(images).unwrap())
}

fn pytorch_logits() -> Vec<f32> {
    expected()["probe_logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn log_softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    logits
        .chunks(classes)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            row.iter().map(move |v| v - log_sum)
        })
        .collect()
}

#[test]
fn a_residual_graph_runs_on_tract_with_pytorchs_logits_and_accuracy() {
    let path = fixture("onnx-tract/residual.onnx");
    let model = load(&path, EngineChoice::Auto);
    let Origin::Onnx {
        engine,
        output_kind,
        native_failure,
        params,
        ..
    } = &model.origin
    else {
        panic!("{:?}", model.origin);
    };
    assert_eq!(*engine, EngineChoice::Tract);
    assert_eq!(*output_kind, OutputKind::Logits);
    let why = native_failure
        .as_deref()
        .expect("why the native importer declined");
    assert!(why.contains("single data path"), "{why}");
    assert!(model.spec.is_none(), "tract runs the graph, no spec");
    assert_eq!((model.input, model.outputs), ([1, 28, 28], 10));
    // stem 1→16, two 16→16 3x3 convs, a 1x1 projection, the 32→10 head
    let weights = (9 * 16 + 16) + 2 * (9 * 16 * 16 + 16) + (16 * 16 + 16) + (32 * 10 + 10);
    assert_eq!(*params, weights);
    assert_eq!(model.stats().unwrap().params, weights);

    let diff = max_abs_diff(&probe(&model, 8), &pytorch_logits());
    assert!(
        diff <= 1e-4,
        "tract's logits differ from PyTorch's by {diff}"
    );
    let data = embedded();
    let (_, accuracy) = model.evaluate(&data.test, &Device::flex(), 256).unwrap();
    let torch_accuracy = expected()["test_accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - torch_accuracy).abs() <= 0.001,
        "{accuracy} vs PyTorch {torch_accuracy}"
    );
    // a batch size of its own (tract plans per batch size) gives the same rows
    let diff = max_abs_diff(&probe(&model, 3), &probe(&model, 8)[..30]);
    assert!(diff <= 1e-5, "{diff}");

    // forcing the native importer names what it cannot map
    let err = format!(
        "{:#}",
        load_classifier(&path, &options(EngineChoice::Native), &Device::flex()).unwrap_err()
    );
    assert!(err.contains("single data path"), "{err}");
}

#[test]
fn a_final_softmax_run_on_tract_gives_log_probabilities() {
    let model = load(
        &fixture("onnx-tract/residual-softmax.onnx"),
        EngineChoice::Auto,
    );
    let Origin::Onnx { output_kind, .. } = &model.origin else {
        panic!("{:?}", model.origin);
    };
    assert_eq!(*output_kind, OutputKind::Probabilities);
    let want = log_softmax_rows(&pytorch_logits(), 10);
    let diff = max_abs_diff(&probe(&model, 8), &want);
    assert!(diff <= 1e-4, "log-probabilities differ by {diff}");
}

#[test]
fn tract_and_the_native_import_agree_on_a_keras_export() {
    let keras: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("onnx-keras/expected.json")).unwrap(),
    )
    .unwrap();
    let keras_logits: Vec<f32> = keras["probe_logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for file in ["keras-nhwc.onnx", "keras-nchw.onnx"] {
        let path = fixture("onnx-keras").join(file);
        let native = load(&path, EngineChoice::Auto);
        let tract = load(&path, EngineChoice::Tract);
        assert!(
            matches!(
                native.origin,
                Origin::Onnx {
                    engine: EngineChoice::Native,
                    ..
                }
            ),
            "{file}: a graph the importer maps runs natively by default"
        );
        assert!(matches!(
            tract.origin,
            Origin::Onnx {
                engine: EngineChoice::Tract,
                native_failure: None,
                ..
            }
        ));
        let ours = probe(&tract, 16);
        let diff = max_abs_diff(&ours, &keras_logits);
        assert!(diff <= 1e-4, "{file}: tract vs Keras {diff}");
        let diff = max_abs_diff(&ours, &probe(&native, 16));
        assert!(diff <= 1e-4, "{file}: tract vs native {diff}");
        // both engines key the teacher caches by the file
        assert_eq!(native.hash, tract.hash);
    }
}

#[test]
fn a_student_distils_from_a_teacher_run_on_tract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let teacher = fixture("onnx-tract/residual.onnx");
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["distill", "--teacher"])
        .arg(&teacher)
        .args([
            "--student",
            "student",
            "--data",
            "embedded",
            "--epochs",
            "1",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("run on tract"), "{stdout}");
    assert!(out.join("model.bpk").is_file());

    // eval through the CLI reports PyTorch's accuracy
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["eval", "--model"])
        .arg(&teacher)
        .args(["--data", "embedded", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let torch_accuracy = expected()["test_accuracy"].as_f64().unwrap();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((accuracy - torch_accuracy).abs() <= 0.001, "{report}");
}
