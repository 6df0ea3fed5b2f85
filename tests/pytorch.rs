//! PyTorch checkpoints read directly: synthetic checkpoints in both `torch.save` formats, with
//! wrappers, `module.` prefixes and both naming conventions, against logits PyTorch computed
//! (`tests/fixtures/torch/synthetic.json`); the shared pretrained CIFAR-10 ResNets against their
//! stated accuracy and a reference forward (`shared_resnets.json`); and bad files refused.
//! Fixtures: `scripts/torch_reference.py`. The shared ResNets and CIFAR-10 come from `../shared`,
//! which a user's clone has not: that test says SKIPPED there (`common::shared`).

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use common::max_abs_diff;
use distill::classifier::load_classifier;
use distill::data::{self, DataSpec};
use distill::models::{pytorch, zoo};
use distill::onnx::{ImportOptions, Normalization};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| match row.as_array() {
            Some(row) => row.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            None => vec![row.as_f64().unwrap() as f32],
        })
        .collect()
}

#[test]
fn synthetic_checkpoints_give_pytorchs_logits() {
    let reference = json(&fixtures().join("synthetic.json"));
    let device = Device::flex();
    let input: Vec<f32> = (0..12288)
        .map(|i| ((2 * i - 12287) as f64 / 12287.0) as f32)
        .collect();
    let checkpoints = reference["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 4);
    for case in checkpoints {
        let file = case["file"].as_str().unwrap();
        let spec = zoo::get(case["arch"].as_str().unwrap()).unwrap();
        let loaded =
            pytorch::load(&fixtures().join(file), &spec, [3, 32, 32], None, &device).unwrap();
        assert_eq!(
            loaded.classes as u64,
            case["num_classes"].as_u64().unwrap(),
            "{file}: classes from the last layer"
        );
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [4, 3, 32, 32]), &device);
        let logits = loaded
            .network
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want = floats(&case["logits"]);
        let diff = max_abs_diff(&logits, &want);
        assert!(diff <= 1e-4, "{file}: logits differ by {diff}");
    }
}

#[test]
fn the_state_dict_is_found_under_its_wrapper_without_module_prefixes() {
    let legacy = pytorch::read_state_dict(&fixtures().join("resnet8-legacy.pth")).unwrap();
    assert_eq!(legacy.wrapper.as_deref(), Some("state_dict"));
    assert!(legacy.tensors.contains_key("conv1.weight"));
    assert!(legacy.tensors.keys().all(|k| !k.starts_with("module.")));
    assert!(legacy
        .tensors
        .keys()
        .all(|k| !k.ends_with("num_batches_tracked")));
    let zip = pytorch::read_state_dict(&fixtures().join("resnet8-zip.pt")).unwrap();
    assert_eq!(zip.wrapper, None);
    // the same weights in both formats
    assert_eq!(zip.tensors, legacy.tensors);
    let net = pytorch::read_state_dict(&fixtures().join("resnet8-proj-net.pt")).unwrap();
    assert_eq!(net.wrapper.as_deref(), Some("net"));
    assert_eq!(net.tensors["linear.weight"].shape, [100, 64]);
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/cases")
        .join(name)
        .join("model.pth")
}

#[test]
fn bad_checkpoints_are_refused_with_what_was_expected() {
    let device = Device::flex();
    let spec = zoo::get("resnet8").unwrap();
    let error = |name: &str| {
        format!(
            "{:#}",
            pytorch::load(&corpus(name), &spec, [3, 32, 32], None, &device).unwrap_err()
        )
    };
    let hostile = error("torch-hostile-global");
    assert!(
        hostile.contains("`posix.system`") && hostile.contains("refused"),
        "{hostile}"
    );
    let truncated = error("torch-truncated");
    assert!(truncated.contains("model.pth"), "{truncated}");
    let missing = error("torch-zip-missing-storage");
    assert!(missing.contains("model.pth"), "{missing}");
    let wrong = error("torch-wrong-arch");
    assert!(
        wrong.contains("Missing key(s): \"conv1.weight\" [16, 3, 3, 3]")
            && wrong.contains("Unexpected key(s): \"0.bias\" [10], \"0.weight\" [10, 3072]"),
        "{wrong}"
    );
    // a checkpoint of another architecture: option B's projections are unexpected in option A
    let proj = format!(
        "{:#}",
        pytorch::load(
            &fixtures().join("resnet8x4-model.pth"),
            &spec,
            [3, 32, 32],
            None,
            &device
        )
        .unwrap_err()
    );
    assert!(
        proj.contains("Unexpected key(s): \"layer2.0.downsample.0.weight\" [32, 16, 1, 1]"),
        "{proj}"
    );
}

#[test]
fn the_shared_pretrained_resnets_score_their_stated_accuracy_and_match_pytorch() {
    let Some(teachers) = common::shared("teachers/cifar10-resnet") else {
        return;
    };
    let Some(tarball) = common::shared("datasets/cifar10-bin.tar.gz") else {
        return;
    };
    // CIFAR-10's original pixels
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(&tarball).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(tmp.path())
        .unwrap();
    let reference = json(&fixtures().join("shared_resnets.json"));
    let dataset = data::load(&DataSpec::Cifar10(Some(tmp.path().into()))).unwrap();
    let device = Device::flex();
    let normalize = Normalization {
        mean: floats(&reference["normalize"]["mean"]),
        std: floats(&reference["normalize"]["std"]),
    };
    let images = reference["images"].as_u64().unwrap() as usize;
    let first: Vec<usize> = (0..images).collect();
    for (name, case) in reference["models"].as_object().unwrap() {
        let options = ImportOptions {
            expected_input: Some([3, 32, 32]),
            normalize: Some(normalize.clone()),
            spec: Some(name.clone()),
            ..Default::default()
        };
        let path = teachers.join(case["file"].as_str().unwrap());
        let classifier = load_classifier(&path, &options, &device).unwrap();
        assert_eq!(classifier.outputs, 10);
        let (x, _) = dataset.test.batch(&first, &device, None);
        let logits = classifier
            .forward(x)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let diff = max_abs_diff(&logits, &floats(&case["logits"]));
        assert!(
            diff <= 1e-4,
            "{name}: logits differ from PyTorch's by {diff}"
        );
        let (_, accuracy) = classifier.evaluate(&dataset.test, &device, 500).unwrap();
        let stated = case["accuracy"].as_f64().unwrap();
        eprintln!("{name}: {:.2}% (stated {stated}%)", accuracy * 100.0);
        assert!(
            (accuracy * 100.0 - stated).abs() <= 0.05,
            "{name}: {:.2}% where {stated}% is stated",
            accuracy * 100.0
        );
    }
}
