//! ONNX in and out.
//!
//! - Import: a CNN trained in Keras on the embedded data and exported by tf2onnx
//!   (tests/fixtures/onnx-keras/, made by make_fixture.py there) is rebuilt as a native network
//!   whose logits match Keras' on the recorded probes and whose test accuracy is the one Keras
//!   measured; in NHWC form (with tf2onnx's grayscale Reshape, its batch norm folded into Mul/Add
//!   and its computed Flatten shape), in NCHW form, and with a final softmax (dropped).
//! - Export: every zoo model, and a spec with batch norm and global average pooling, exported
//!   and imported again gives the native logits; the same files through ONNX Runtime (Python,
//!   tests/fixtures/onnx-export/check_onnxruntime.py) give them too, where that Python is
//!   installed (SKIPPED through `common::require` where not).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{embedded, max_abs_diff, to_vec};
use distill::models::spec::Shortcut;
use distill::models::{zoo, LayerSpec, ModelSpec, Network};
use distill::onnx::{self, ImportOptions, Layout, OutputKind};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-keras")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap())
        .unwrap()
}

/// Test accuracy (percent) of `network` on the embedded test split.
fn accuracy(network: &Network) -> f64 {
    let data = embedded();
    let device = Device::flex();
    let indices: Vec<usize> = (0..data.test.len()).collect();
    let mut correct = 0;
    for chunk in indices.chunks(250) {
        let (images, labels) = data.test.batch(chunk, &device, None);
        let predicted = network.forward(images).argmax(1).flatten::<1>(0, 1);
        let labels: Vec<i64> = labels.into_data().convert::<i64>().try_to_vec().unwrap();
        let predicted: Vec<i64> = predicted.into_data().convert::<i64>().try_to_vec().unwrap();
        correct += labels
            .iter()
            .zip(&predicted)
            .filter(|(a, b)| a == b)
            .count();
    }
    100.0 * correct as f64 / data.test.len() as f64
}

fn import_keras(file: &str) -> onnx::ImportedModel {
    let options = ImportOptions {
        expected_input: Some([1, 28, 28]),
        ..ImportOptions::default()
    };
    onnx::import_file(&fixture_dir().join(file), &options, &Device::flex())
        .unwrap_or_else(|e| panic!("{file}: {e:#}"))
}

fn probe_logits(network: &Network) -> Vec<f32> {
    let data = embedded();
    let (images, _) = data
        .test
        .batch(&(0..16).collect::<Vec<_>>(), &Device::flex(), None);
    to_vec(network.forward(images))
}

#[test]
fn keras_exports_import_with_kerass_logits_and_accuracy() {
    let expected = expected();
    let keras: Vec<f32> = expected["probe_logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let keras_accuracy = expected["keras_test_accuracy"].as_f64().unwrap();
    for (file, layout, kind) in [
        ("keras-nhwc.onnx", Layout::Nhwc, OutputKind::Logits),
        ("keras-nchw.onnx", Layout::Nchw, OutputKind::Logits),
        (
            "keras-softmax-nhwc.onnx",
            Layout::Nhwc,
            OutputKind::SoftmaxDropped,
        ),
    ] {
        let model = import_keras(file);
        assert_eq!(model.layout, layout, "{file}");
        assert_eq!(model.output_kind, kind, "{file}");
        assert_eq!((model.input, model.outputs), ([1, 28, 28], 10), "{file}");
        let diff = max_abs_diff(&probe_logits(&model.network), &keras);
        assert!(diff <= 1e-4, "{file}: logits differ from Keras by {diff}");
        let ours = accuracy(&model.network);
        assert!(
            (ours - keras_accuracy).abs() <= 0.1,
            "{file}: {ours}% vs Keras {keras_accuracy}%"
        );
    }
    // the graph's weights are all counted: 2 convs, the folded batch norm (2 x 16) and 2 denses
    let model = import_keras("keras-nhwc.onnx");
    let convs = (8 * 9 + 8) + (16 * 8 * 9 + 16);
    let dense = (784 * 32 + 32) + (32 * 10 + 10);
    assert!(model.params >= convs + dense + 32, "{}", model.params);
}

/// A spec with batch norm (non-trivial statistics) and global average pooling, next to the zoo.
fn batch_norm_gap_spec() -> ModelSpec {
    ModelSpec::from_toml_str(
        r#"
name = "bn-gap"
[[layers]]
type = "conv2d"
filters = 6
kernel = 3
stride = 2
[[layers]]
type = "batch_norm"
[[layers]]
type = "relu"
[[layers]]
type = "conv2d"
filters = 8
kernel = 3
padding = "valid"
[[layers]]
type = "leaky_relu"
slope = 0.1
[[layers]]
type = "global_avg_pool"
[[layers]]
type = "batch_norm"
[[layers]]
type = "dense"
units = 10
"#,
    )
    .unwrap()
}

/// Every zoo model (on its usual input) and the batch-norm/GAP spec, as `(spec, input)`.
fn export_cases() -> Vec<(ModelSpec, [usize; 3])> {
    let mut cases: Vec<(ModelSpec, [usize; 3])> = zoo::NAMES
        .iter()
        .map(|name| {
            let input = if *name == "teacher-small" {
                [1, 28, 28]
            } else {
                [3, 32, 32]
            };
            (zoo::get(name).unwrap(), input)
        })
        .collect();
    cases.push((batch_norm_gap_spec(), [3, 17, 15]));
    cases
}

fn probe_images(input: [usize; 3], batch: usize, device: &Device) -> (Vec<f32>, Tensor<4>) {
    let [c, h, w] = input;
    let values: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i as f32 * 0.37).sin() * 0.5 + 0.5).clamp(0.0, 1.0))
        .collect();
    let tensor = Tensor::from_data(TensorData::new(values.clone(), [batch, c, h, w]), device);
    (values, tensor)
}

#[test]
fn exported_models_import_back_to_the_same_logits() {
    let device = Device::flex();
    let classes: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    for (seed, (spec, input)) in export_cases().into_iter().enumerate() {
        let network = Network::init(&spec, input, seed as u64, &device).unwrap();
        let network = common::randomize_batch_norms(network, &device).valid();
        let bytes = onnx::to_onnx_bytes(&spec, &network, input, &classes).unwrap();
        let options = ImportOptions {
            expected_input: Some(input),
            ..ImportOptions::default()
        };
        let back = onnx::import_bytes(&bytes, &spec.name, &options, &device)
            .unwrap_or_else(|e| panic!("{}: {e:#}", spec.name));
        assert_eq!(back.layout, Layout::Nchw);
        assert_eq!(back.classes.as_deref(), Some(&classes[..]));
        let (_, images) = probe_images(input, 3, &device);
        let native = to_vec(network.forward(images.clone()));
        let imported = to_vec(back.network.valid().forward(images));
        let diff = max_abs_diff(&native, &imported);
        assert!(diff <= 1e-5, "{}: {diff}", spec.name);
        // dropout is left out of the graph; the rest maps one for one (residual stages too,
        // except a block without shortcut, which is its body's layers in the graph)
        let without_dropout = spec.layers.iter().filter(|l| l.kind() != "dropout").count();
        let no_shortcut = spec.layers.iter().any(|l| {
            matches!(
                l,
                LayerSpec::Residual {
                    shortcut: Shortcut::None,
                    ..
                }
            )
        });
        if !no_shortcut {
            assert_eq!(back.spec.layers.len(), without_dropout, "{}", spec.name);
        }
        // and every parameter comes back
        assert_eq!(
            back.spec.stats(input).unwrap(),
            spec.stats(input).unwrap(),
            "{}",
            spec.name
        );
    }
}

/// Exports every case to `dir` with probe inputs and native logits, for ONNX Runtime.
fn write_onnxruntime_cases(dir: &Path) {
    let device = Device::flex();
    let classes: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let mut manifest = Vec::new();
    for (seed, (spec, input)) in export_cases().into_iter().enumerate() {
        let network = Network::init(&spec, input, seed as u64, &device).unwrap();
        let network = common::randomize_batch_norms(network, &device).valid();
        let file = format!("{}.onnx", spec.name);
        std::fs::write(
            dir.join(&file),
            onnx::to_onnx_bytes(&spec, &network, input, &classes).unwrap(),
        )
        .unwrap();
        let batch = 3;
        let (values, images) = probe_images(input, batch, &device);
        let logits = to_vec(network.forward(images));
        // logits that are all equal (every ReLU dead) would compare nothing
        let (low, high) = logits
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(high - low > 1e-3, "{}: logits {logits:?}", spec.name);
        let [c, h, w] = input;
        manifest.push(serde_json::json!({
            "file": file,
            "shape": [batch, c, h, w],
            "input": values,
            "logits": logits,
        }));
    }
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string(&manifest).unwrap(),
    )
    .unwrap();
}

/// The Python with ONNX Runtime and numpy, `ONNXRUNTIME_PYTHON` (else `python3`), where it can
/// import both.
fn onnxruntime_python() -> Option<String> {
    let python = std::env::var("ONNXRUNTIME_PYTHON").unwrap_or_else(|_| "python3".into());
    let imports = Command::new(&python)
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|out| out.status.success());
    common::require(
        imports,
        &format!("a Python with onnxruntime and numpy (ONNXRUNTIME_PYTHON, else python3; {python} cannot import them)"),
        "python3 -m venv ~/.cache/distill-onnxruntime && ~/.cache/distill-onnxruntime/bin/pip install onnxruntime numpy, then export ONNXRUNTIME_PYTHON=~/.cache/distill-onnxruntime/bin/python (.ci/run does this)",
    )
    .then_some(python)
}

#[test]
fn exported_models_run_in_onnx_runtime_with_the_native_logits() {
    let Some(python) = onnxruntime_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_onnxruntime_cases(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx-export/check_onnxruntime.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ONNX Runtime check failed ({python}; set ONNXRUNTIME_PYTHON to a Python with onnxruntime and numpy):\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), export_cases().len());
    for case in cases {
        let diff = case["max_abs_diff"].as_f64().unwrap();
        eprintln!(
            "{}: ONNX Runtime vs native, max abs diff {diff:e}",
            case["file"]
        );
        assert!(diff <= 1e-4, "{case}");
    }
}

fn distill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_stdout(args: &[&str]) -> String {
    let output = distill(args);
    assert!(
        output.status.success(),
        "distill {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn cli_export_eval_predict_and_distill_from_an_onnx_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = |name: &str| dir.path().join(name).display().to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkpoint = root
        .join("tests/corpus/tiny-a-checkpoint")
        .display()
        .to_string();

    // export, then the same test accuracy and loss through the file
    ok_stdout(&["export", "--model", &checkpoint, "--out", &tmp("tiny.onnx")]);
    let native: Value =
        serde_json::from_str(&ok_stdout(&["eval", "--model", &checkpoint, "--json"])).unwrap();
    let exported: Value = serde_json::from_str(&ok_stdout(&[
        "eval",
        "--model",
        &tmp("tiny.onnx"),
        "--json",
    ]))
    .unwrap();
    assert_eq!(native["accuracy"], exported["accuracy"]);
    let (a, b) = (
        native["loss"].as_f64().unwrap(),
        exported["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");

    // predict on embedded test images written as PNG agrees with the Keras logits' argmax
    let data = embedded();
    let keras = expected();
    let mut files = Vec::new();
    for i in 0..8 {
        let path = dir.path().join(format!("image-{i}.png"));
        image::GrayImage::from_raw(28, 28, data.test.image(i).to_vec())
            .unwrap()
            .save(&path)
            .unwrap();
        files.push(path.display().to_string());
    }
    let model = fixture_dir().join("keras-nhwc.onnx").display().to_string();
    let mut args = vec!["predict", "--model", model.as_str(), "--json", "--top", "2"];
    args.extend(files.iter().map(String::as_str));
    let stdout = ok_stdout(&args);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for (i, line) in lines.iter().enumerate() {
        let logits: Vec<f64> = keras["probe_logits"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..10)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert_eq!(line["file"], files[i].as_str());
        let predictions = line["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 2);
        assert_eq!(
            predictions[0]["class"],
            format!("class {best}").as_str(),
            "{line}"
        );
        // softmax of the logits
        let total: f64 = logits.iter().map(|l| (l - logits[best]).exp()).sum();
        let p = predictions[0]["probability"].as_f64().unwrap();
        assert!((p - 1.0 / total).abs() < 1e-4, "{p} vs {}", 1.0 / total);
    }

    // a student distilled from the Keras teacher, end to end
    let out = tmp("student");
    let stdout = ok_stdout(&[
        "distill",
        "--teacher",
        &model,
        "--student",
        "student",
        "--data",
        "embedded",
        "--epochs",
        "1",
        "--out",
        &out,
        "--quiet",
    ]);
    assert!(stdout.contains("NHWC input [1, 28, 28]"), "{stdout}");
    assert!(dir.path().join("student/model.bpk").is_file());
}

#[test]
fn safetensors_export_round_trips_to_identical_logits_under_pytorch_names() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for (seed, (spec, input)) in export_cases().into_iter().enumerate() {
        let network = Network::init(&spec, input, seed as u64, &device).unwrap();
        let network = common::randomize_batch_norms(network, &device).valid();
        let path = dir.path().join(format!("{}.safetensors", spec.name));
        distill::models::safetensors::save(&path, &spec, &network, input, &classes).unwrap();
        let back = distill::models::safetensors::load(&path, None, None, &device).unwrap();
        assert_eq!((back.spec.clone(), back.input), (spec.clone(), input));
        assert_eq!(back.classes, Some(classes.clone()));
        let (_, images) = probe_images(input, 2, &device);
        assert_eq!(
            to_vec(network.forward(images.clone())),
            to_vec(back.network.valid().forward(images)),
            "{}",
            spec.name
        );
        // PyTorch-style names: Linear weights [out, in], batch norm weight/bias/running stats
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        for (index, layer) in spec.layers.iter().enumerate() {
            let names: Vec<String> = match layer.kind() {
                // PyTorch's ResNets have convolutions without bias
                "conv2d" if matches!(layer, LayerSpec::Conv2d { bias: false, .. }) => {
                    vec![format!("layers.{index}.weight")]
                }
                "conv2d" => vec![
                    format!("layers.{index}.weight"),
                    format!("layers.{index}.bias"),
                ],
                "dense" => vec![format!("layers.{index}.linear.weight")],
                "batch_norm" => ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|n| format!("layers.{index}.{n}"))
                    .collect(),
                _ => vec![],
            };
            for name in names {
                assert!(header.get(&name).is_some(), "{}: no {name}", spec.name);
            }
            if let (LayerSpec::Dense { units, .. }, Some(shape)) = (
                layer,
                header[format!("layers.{index}.linear.weight")]["shape"].as_array(),
            ) {
                assert_eq!(shape[0].as_u64().unwrap() as usize, *units, "[out, in]");
            }
        }
    }
    // not a safetensors file: a clear error
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not safetensors").unwrap();
    let err = distill::models::safetensors::load(&bad, None, None, &device).unwrap_err();
    assert!(
        format!("{err:#}").contains("is not a safetensors file"),
        "{err:#}"
    );
}

/// Weights trained in PyTorch and saved as a plain state dict (no `distill export` metadata,
/// tests/fixtures/pytorch-safetensors/make_fixture.py) load through `--spec`: the logits of the
/// first test images match PyTorch's, `eval` gives PyTorch's test accuracy, the file warm-starts
/// a training run, and a missing or wrong spec is a clear error.
#[test]
fn a_pytorch_state_dict_loads_with_its_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch-safetensors");
    let weights = root.join("student-bn-torch.safetensors");
    let spec = root.join("student-bn-torch.toml");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap())
            .unwrap();
    let device = Device::flex();

    let options = ImportOptions {
        expected_input: Some([1, 28, 28]),
        spec: Some(spec.display().to_string()),
        ..ImportOptions::default()
    };
    let model = distill::classifier::load_classifier(&weights, &options, &device).unwrap();
    assert_eq!(model.classes, None, "a plain state dict names no classes");
    assert_eq!(model.outputs, 10);
    let data = embedded();
    let (images, _) = data.test.batch(&(0..8).collect::<Vec<_>>(), &device, None);
    let ours = to_vec(model.engine.network().unwrap().valid().forward(images));
    let theirs: Vec<f32> = expected["probe_logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff <= 1e-4, "logits differ from PyTorch's by {diff}");

    let (weights_arg, spec_arg) = (weights.display().to_string(), spec.display().to_string());
    let report: Value = serde_json::from_str(&ok_stdout(&[
        "eval",
        "--model",
        &weights_arg,
        "--spec",
        &spec_arg,
        "--json",
    ]))
    .unwrap();
    let torch_accuracy = expected["test_accuracy"].as_f64().unwrap();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - torch_accuracy).abs() < 1e-3,
        "eval {accuracy} vs PyTorch {torch_accuracy}"
    );

    // a warm start from the file: after one epoch at a vanishing learning rate the model still
    // scores at least what PyTorch measured, not a fresh network's 10% (the batch-norm running
    // statistics do move: re-estimated over a whole epoch they fit the weights better than
    // PyTorch's last few batches, 73% here)
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("warm");
    ok_stdout(&[
        "train",
        "--model",
        &spec_arg,
        "--init-from",
        &weights_arg,
        "--epochs",
        "1",
        "--lr",
        "1e-12",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(out.join("train.log"))
        .unwrap()
        .contains("warm start from"));
    let warm: Value = serde_json::from_str(&ok_stdout(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let warm_accuracy = warm["accuracy"].as_f64().unwrap();
    assert!(
        warm_accuracy > torch_accuracy - 0.02,
        "warm-started {warm_accuracy} vs PyTorch {torch_accuracy}"
    );

    // no spec: the error says how to give one; the wrong spec: the error names what does not fit
    let output = distill(&["eval", "--model", &weights_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--spec") && stderr.contains("layers.<i>.weight"),
        "{stderr}"
    );
    let output = distill(&["eval", "--model", &weights_arg, "--spec", "student"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("student"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_graph_ending_in_a_feature_map_is_refused_by_both_engines() {
    // tiny-a (conv, flatten, dense) exported, then cut after its convolution: [batch, 2, 7, 7]
    // out, not [batch, classes].
    use prost::Message;
    let spec: ModelSpec = toml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tiny-a.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let network = Network::init(&spec, [1, 28, 28], 1, &device).unwrap();
    let classes: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    let whole = onnx::to_onnx_bytes(&spec, &network, [1, 28, 28], &classes).unwrap();
    let mut model = onnx::import::decode(&whole).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let conv = graph.node.iter().position(|n| n.op_type == "Conv").unwrap();
    graph.node.truncate(conv + 1);
    let feature_map = graph.node[conv].output[0].clone();
    graph.output[0].name = feature_map;
    graph.output[0].r#type = None;
    let bytes = model.encode_to_vec();
    let options = ImportOptions {
        expected_input: Some([1, 28, 28]),
        ..ImportOptions::default()
    };
    let Err(err) = onnx::import_bytes(&bytes, "no-head", &options, &device) else {
        panic!("a feature map is not a classifier's output");
    };
    assert!(
        format!("{err:#}").contains("the output is not [batch, classes]"),
        "{err:#}"
    );
    // Through the CLI (the default engine choice tries tract after the importer): one clear
    // error, exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-head.onnx");
    std::fs::write(&file, &bytes).unwrap();
    let output = distill(&[
        "eval",
        "--model",
        file.to_str().unwrap(),
        "--data",
        "embedded",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ends with a [2, 7, 7] (C, H, W) feature map"),
        "{stderr}"
    );
    assert!(stderr.contains("[1, 2, 7, 7] for a batch of 1"), "{stderr}");
    assert!(stderr.contains("no-head.onnx"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
