//! ONNX and residual networks.
//!
//! - Our own exports of residual students (option A and B ResNets, a Wide ResNet with its
//!   convolution shortcuts and pre-activation blocks, MobileNetV2 with its depthwise convolutions
//!   and blocks without shortcut) come back through the native importer, not tract, with the same
//!   logits and the same stages (ONNX Runtime runs the same files in tests/onnx.rs).
//! - CIFAR ResNet-8s exported by PyTorch's `torch.onnx.export` (tests/fixtures/onnx/, made by
//!   scripts/make_onnx_resnet_fixture.py): option A, whose batch norms the exporter folded into
//!   the convolutions and whose shortcut is Slice, Slice and a Pad with computed pads; option B,
//!   with BatchNormalization nodes and a projection shortcut. Both import natively and give
//!   PyTorch's logits.
//! - A branching the importer cannot map still runs, on tract, with the reason recorded.

mod common;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{max_abs_diff, to_vec};
use distill::classifier::{load_classifier, Classifier, Origin};
use distill::models::spec::Shortcut;
use distill::models::{zoo, LayerSpec, ModelSpec, Network, Padding};
use distill::onnx::{self, EngineChoice, ImportOptions};
use serde_json::Value;

const INPUT: [usize; 3] = [3, 32, 32];

fn images(batch: usize, device: &Device) -> Tensor<4> {
    let [c, h, w] = INPUT;
    let values: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i as f32 * 0.37).sin() * 0.5 + 0.5).clamp(0.0, 1.0))
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, c, h, w]), device)
}

fn options() -> ImportOptions {
    ImportOptions {
        expected_input: Some(INPUT),
        ..ImportOptions::default()
    }
}

/// Asserts that `model` was imported natively (not run by tract).
fn assert_native(model: &Classifier, what: &str) {
    match &model.origin {
        Origin::Onnx {
            engine,
            native_failure,
            ..
        } => {
            assert_eq!(
                (*engine, native_failure.as_deref()),
                (EngineChoice::Native, None),
                "{what}"
            );
        }
        other => panic!("{what}: {other:?}"),
    }
    assert!(model.spec.is_some(), "{what}: a native import has a spec");
}

/// `(repeat, shortcut, relu)` of every residual stage.
fn stages(spec: &ModelSpec) -> Vec<(usize, Shortcut, bool)> {
    spec.layers
        .iter()
        .filter_map(|layer| match layer {
            LayerSpec::Residual {
                repeat,
                shortcut,
                relu,
                ..
            } => Some((*repeat, *shortcut, *relu)),
            _ => None,
        })
        .collect()
}

#[test]
fn residual_exports_import_natively_with_the_same_logits() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    for (seed, name) in [
        "resnet8",
        "resnet8-proj",
        "resnet20",
        "wrn-16-2",
        "mobilenetv2",
    ]
    .into_iter()
    .enumerate()
    {
        let spec = zoo::get(name).unwrap();
        let network = Network::init(&spec, INPUT, 100 + seed as u64, &device).unwrap();
        let network = common::randomize_batch_norms(network, &device).valid();
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(
            &path,
            onnx::to_onnx_bytes(&spec, &network, INPUT, &classes).unwrap(),
        )
        .unwrap();
        let model =
            load_classifier(&path, &options(), &device).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_native(&model, name);
        let back = model.spec.as_ref().unwrap();
        assert_eq!(model.classes.as_deref(), Some(&classes[..]), "{name}");
        let x = images(3, &device);
        let ours = to_vec(network.forward(x.clone()));
        let theirs = to_vec(model.forward(x).unwrap());
        let diff = max_abs_diff(&ours, &theirs);
        let largest = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{name}: export → native import, max abs diff {diff:e} (largest logit {largest})"
        );
        assert!(diff <= 1e-4, "{name}: {diff}");
        assert_eq!(
            back.stats(INPUT).unwrap(),
            spec.stats(INPUT).unwrap(),
            "{name}"
        );
        if name == "mobilenetv2" {
            // its blocks without shortcut are their bodies' layers in the graph; the identity
            // blocks after them come back as stages
            assert!(stages(back)
                .iter()
                .all(|&(_, shortcut, relu)| (shortcut, relu) == (Shortcut::Identity, false)));
            let depthwise = back
                .layers
                .iter()
                .filter(|l| matches!(l, LayerSpec::Conv2d { groups, .. } if *groups > 1))
                .count();
            assert!(depthwise > 0, "mobilenetv2: depthwise convolutions");
        } else {
            // stage for stage, repeated blocks merged back into their stage
            assert_eq!(stages(back), stages(&spec), "{name}");
            assert_eq!(back.layers.len(), spec.layers.len(), "{name}");
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

/// The probe of scripts/make_onnx_resnet_fixture.py: `x[i] = (2i - (n - 1)) / (n - 1)` in f64,
/// rounded to f32, as `[2, 3, 32, 32]`.
fn pytorch_probe(device: &Device) -> Tensor<4> {
    let shape = [2, 3, 32, 32];
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((2.0 * i as f64 - (n - 1) as f64) / (n - 1) as f64) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[test]
fn pytorch_resnets_import_natively_with_pytorchs_logits() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("resnet8.json")).unwrap()).unwrap();
    let device = Device::flex();
    for (file, shortcut, folded) in [
        ("resnet8-a.onnx", Shortcut::ZeroPad, true),
        ("resnet8-b.onnx", Shortcut::Projection, false),
    ] {
        let model = load_classifier(&fixture(file), &options(), &device)
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_native(&model, file);
        let spec = model.spec.as_ref().unwrap();
        // three stages of one basic block each: identity, then the option's shortcut twice
        assert_eq!(
            stages(spec),
            vec![
                (1, Shortcut::Identity, true),
                (1, shortcut, true),
                (1, shortcut, true)
            ],
            "{file}"
        );
        for layer in &spec.layers {
            let LayerSpec::Residual { body, .. } = layer else {
                continue;
            };
            for conv in body {
                if let LayerSpec::Conv2d { padding, bias, .. } = conv {
                    // PyTorch's padding=1; a bias where the exporter folded the batch norm in
                    assert_eq!((*padding, *bias), (Padding::Explicit(1), folded), "{file}");
                }
            }
            let norms = body
                .iter()
                .filter(|l| matches!(l, LayerSpec::BatchNorm { .. }))
                .count();
            assert_eq!(norms, if folded { 0 } else { 2 }, "{file}");
        }
        let logits: Vec<f32> = expected["models"][file]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ours = to_vec(model.forward(pytorch_probe(&device)).unwrap());
        let diff = max_abs_diff(&ours, &logits);
        eprintln!("{file}: native import vs PyTorch, max abs diff {diff:e}");
        assert!(
            diff <= 1e-4,
            "{file}: logits differ from PyTorch's by {diff}"
        );
        // the weights all count (the batch norms of option B's file included)
        let Origin::Onnx { params, .. } = model.origin else {
            unreachable!()
        };
        assert_eq!(
            params as u64,
            expected["models"][file]["params"].as_u64().unwrap(),
            "{file}"
        );
    }
}

/// A graph whose branches join in something other than an Add is no residual block: the native
/// importer says why, and tract runs it.
#[cfg(feature = "tract")]
#[test]
fn an_unmappable_branching_runs_on_tract_with_the_reason() {
    use prost::Message;
    let device = Device::flex();
    let spec = zoo::get("resnet8").unwrap();
    let network = Network::init(&spec, INPUT, 7, &device).unwrap().valid();
    let classes: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let bytes = onnx::to_onnx_bytes(&spec, &network, INPUT, &classes).unwrap();
    let mut model = onnx::import::decode(&bytes).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let add = graph.node.iter().position(|n| n.op_type == "Add").unwrap();
    graph.node[add].op_type = "Mul".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multiplied.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();

    let native = ImportOptions {
        engine: EngineChoice::Native,
        ..options()
    };
    let err = format!(
        "{:#}",
        load_classifier(&path, &native, &device).unwrap_err()
    );
    assert!(
        err.contains("single data path") && err.contains("not an Add"),
        "{err}"
    );
    let model = load_classifier(&path, &options(), &device).unwrap();
    let Origin::Onnx {
        engine,
        native_failure,
        ..
    } = &model.origin
    else {
        panic!("{:?}", model.origin);
    };
    assert_eq!(*engine, EngineChoice::Tract);
    assert!(
        native_failure
            .as_deref()
            .is_some_and(|why| why.contains("not an Add")),
        "{native_failure:?}"
    );
    let logits = to_vec(model.forward(images(2, &device)).unwrap());
    assert_eq!(logits.len(), 20);
    assert!(logits.iter().all(|v| v.is_finite()));
}
