//! Residual networks in the spec and the zoo: parameter counts equal PyTorch's reference
//! definitions (`tests/fixtures/torch/param_counts.json`, made by `scripts/torch_reference.py`),
//! shapes agree between the spec's arithmetic and the tensors, specs round-trip through TOML, and
//! impossible blocks are refused with the layer and what would fit.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use distill::models::spec::Shortcut;
use distill::models::{zoo, LayerSpec, ModelSpec, Network, Padding};

fn reference_counts() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/param_counts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const RESIDUAL: [&str; 19] = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8-proj",
    "resnet14-proj",
    "resnet20-proj",
    "resnet32-proj",
    "resnet44-proj",
    "resnet56-proj",
    "resnet110-proj",
    "resnet8x4",
    "resnet32x4",
    "wrn-16-2",
    "wrn-40-2",
    "mobilenetv2",
];

#[test]
fn parameter_counts_equal_the_pytorch_reference_definitions_at_10_and_100_classes() {
    let reference = reference_counts();
    for name in RESIDUAL {
        assert!(zoo::NAMES.contains(&name), "{name} is not in the zoo");
        for classes in [10, 100] {
            let spec = zoo::get(name).unwrap().with_outputs(classes).unwrap();
            let stats = spec.stats([3, 32, 32]).unwrap();
            let want = &reference[name][classes.to_string()];
            assert_eq!(
                stats.trainable as u64,
                want["trainable"].as_u64().unwrap(),
                "{name} at {classes} classes: trainable parameters"
            );
            // the state dict adds batch norm's running mean and variance
            assert_eq!(
                stats.params as u64,
                want["state"].as_u64().unwrap(),
                "{name} at {classes} classes: parameters with running statistics"
            );
        }
    }
}

#[test]
fn the_shared_checkpoints_parameter_counts_match_the_zoo() {
    // the counts the teachers' README gives, read from the files by the reference script
    for (name, params) in [
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
    ] {
        let stats = zoo::get(name).unwrap().stats([3, 32, 32]).unwrap();
        assert_eq!(stats.trainable, params, "{name}");
    }
}

#[test]
fn every_residual_zoo_model_produces_the_shapes_its_spec_infers() {
    let device = Device::flex();
    for name in RESIDUAL {
        if name == "resnet110" || name == "resnet110-proj" || name == "resnet32x4" {
            continue; // same blocks as their smaller siblings, only more of them
        }
        let spec = zoo::get(name).unwrap();
        let infos = spec.infer([3, 32, 32]).unwrap();
        let network = Network::init(&spec, [3, 32, 32], 1, &device).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32; 2 * 3 * 32 * 32], [2, 3, 32, 32]),
            &device,
        );
        let dims = network.layer_output_dims(x);
        assert_eq!(dims.len(), infos.len(), "{name}");
        for (index, (got, info)) in dims.iter().zip(&infos).enumerate() {
            let mut want = vec![2];
            match info.output {
                distill::models::spec::Shape::Image(chw) => want.extend(chw),
                distill::models::spec::Shape::Flat(n) => want.push(n),
            }
            assert_eq!(got, &want, "{name} layer {index} ({})", info.kind);
        }
    }
}

#[test]
fn residual_specs_round_trip_through_toml() {
    for name in RESIDUAL {
        let spec = zoo::get(name).unwrap();
        let text = spec.to_toml_string();
        assert_eq!(ModelSpec::from_toml_str(&text).unwrap(), spec, "{name}");
    }
    let text = zoo::get("resnet8").unwrap().to_toml_string();
    // PyTorch's symmetric padding and the bias-free convolutions read as they are written
    assert!(text.contains("padding = 1"), "{text}");
    assert!(text.contains("bias = false"), "{text}");
    assert!(text.contains("shortcut = \"zero_pad\""), "{text}");
}

#[test]
fn a_hand_written_residual_spec_parses() {
    let spec = ModelSpec::from_toml_str(
        r#"
name = "tiny-resnet"
[[layers]]
type = "conv2d"
filters = 8
kernel = 3
padding = 1
bias = false
[[layers]]
type = "residual"
repeat = 2
shortcut = "projection"
relu = true
body = [
  { type = "conv2d", filters = 16, kernel = 3, stride = 2, padding = 1, bias = false },
  { type = "batch_norm", epsilon = 1e-5, momentum = 0.1 },
  { type = "relu" },
  { type = "conv2d", filters = 16, kernel = 3, padding = 1, bias = false, groups = 16 },
]
[[layers]]
type = "global_avg_pool"
[[layers]]
type = "dense"
units = 10
"#,
    )
    .unwrap();
    let stats = spec.stats([3, 32, 32]).unwrap();
    // stem 3*8*9; block 0: 8*16*9 + BN 16*2 + depthwise 16*9 + projection 8*16 + its BN 16*2;
    // block 1: 16*16*9 + 32 + 144; classifier 16*10 + 10
    let trainable = 216 + (1152 + 32 + 144 + 128 + 32) + (2304 + 32 + 144) + 170;
    assert_eq!(stats.trainable, trainable);
    // running mean and variance of the three batch norms
    assert_eq!(stats.params, trainable + 3 * 32);
    assert_eq!(
        spec.infer([3, 32, 32]).unwrap()[1].output,
        distill::models::spec::Shape::Image([16, 16, 16])
    );
}

fn block(shortcut: Shortcut, stride: usize, filters: usize) -> ModelSpec {
    ModelSpec {
        name: "bad".into(),
        layers: vec![
            LayerSpec::torch_conv(16, 3, 1, 1),
            LayerSpec::residual(
                1,
                vec![LayerSpec::torch_conv(filters, 3, stride, 1)],
                shortcut,
                true,
            ),
            LayerSpec::GlobalAvgPool,
            LayerSpec::dense(10, false),
        ],
    }
}

#[test]
fn impossible_blocks_are_refused_with_what_would_fit() {
    let err = |spec: ModelSpec| spec.infer([3, 32, 32]).unwrap_err().to_string();
    let identity_stride = err(block(Shortcut::Identity, 2, 16));
    assert!(
        identity_stride.contains("layer 1 (residual), field `shortcut`")
            && identity_stride.contains("this body has stride 2")
            && identity_stride.contains("(16, 16, 16)"),
        "{identity_stride}"
    );
    let fewer = err(block(Shortcut::ZeroPad, 1, 8));
    assert!(fewer.contains("can only add channels"), "{fewer}");
    let nested = err(block(Shortcut::Projection, 1, 0));
    assert!(
        nested.contains("body layer 0 (conv2d), field `filters`: must be at least 1"),
        "{nested}"
    );
    let mut grouped = block(Shortcut::Projection, 1, 24);
    if let LayerSpec::Residual { body, .. } = &mut grouped.layers[1] {
        body[0] = LayerSpec::torch_conv(24, 3, 1, 5);
    }
    let groups = err(grouped);
    assert!(
        groups.contains("5 group(s) must divide both the 16 input channels and the 24 filters"),
        "{groups}"
    );
    let mut zero = block(Shortcut::Identity, 1, 16);
    if let LayerSpec::Residual { repeat, .. } = &mut zero.layers[1] {
        *repeat = 0;
    }
    assert!(err(zero).contains("field `repeat`: must be at least 1"));
    let padding = ModelSpec {
        name: "bad".into(),
        layers: vec![LayerSpec::Conv2d {
            filters: 4,
            kernel: 3,
            stride: 1,
            padding: Padding::Explicit(3),
            bias: true,
            groups: 1,
        }],
    };
    assert!(err(padding).contains("field `padding`: 3 pixels per side"));
}

#[test]
fn pytorch_padding_differs_from_tensorflow_same_at_stride_2() {
    use distill::models::spec::output_size;
    // both give 16 outputs, but PyTorch pads one pixel on each side where TensorFlow pads only
    // the bottom/right
    assert_eq!(output_size(32, 3, 2, Padding::Explicit(1)), Some(16));
    assert_eq!(Padding::Explicit(1).amounts(32, 3, 2), (1, 1));
    assert_eq!(Padding::Same.amounts(32, 3, 2), (0, 1));
    assert_eq!(output_size(32, 1, 2, Padding::Explicit(0)), Some(16));
    assert_eq!(output_size(2, 5, 1, Padding::Explicit(1)), None);
}

#[test]
fn zoo_classifiers_are_sized_to_the_data_and_spec_files_are_not() {
    let sized = distill::models::resolve_spec_for("resnet8", 100).unwrap();
    assert_eq!(sized.num_outputs([3, 32, 32]).unwrap(), 100);
    // the same architecture otherwise: only the classifier's rows change
    let ten = zoo::get("resnet8").unwrap().stats([3, 32, 32]).unwrap();
    assert_eq!(
        sized.stats([3, 32, 32]).unwrap().trainable - ten.trainable,
        90 * 65
    );
    // a spec file says what it predicts; a mismatch is reported where the data is known
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tiny-a.toml");
    let kept = distill::models::resolve_spec_for(file.to_str().unwrap(), 100).unwrap();
    assert_eq!(kept.num_outputs([1, 28, 28]).unwrap(), 10);
}
