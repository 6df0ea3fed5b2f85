//! Model spec, zoo, 'same'-padding semantics, initialisation and checkpoints.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use distill::models::checkpoint::{self, ModelMeta};
use distill::models::network::Layer;
use distill::models::spec::{output_size, same_padding, Shape, SpecError};
use distill::models::{zoo, LayerSpec, ModelSpec, Network, Padding};

fn device() -> Device {
    Device::flex()
}

#[test]
fn zoo_parameter_counts_match_keras() {
    let expected = [
        ("teacher-v1", 1_515_018),
        ("teacher-v2", 2_827_402),
        ("teacher-v3", 2_827_402),
        ("student", 43_098),
    ];
    for (name, params) in expected {
        let spec = zoo::get(name).unwrap();
        assert_eq!(spec.stats([3, 32, 32]).unwrap().params, params, "{name}");
        // The built burn module must hold exactly as many parameters as the spec says.
        let net = Network::init(&spec, [3, 32, 32], 0, &device()).unwrap();
        assert_eq!(net.num_params(), params, "{name} (burn module)");
    }
    // Fashion-MNIST counts from Keras (../shared/REFERENCE.md).
    assert_eq!(
        zoo::get("teacher-v3")
            .unwrap()
            .stats([1, 28, 28])
            .unwrap()
            .params,
        2_822_794
    );
    assert_eq!(
        zoo::get("student")
            .unwrap()
            .stats([1, 28, 28])
            .unwrap()
            .params,
        34_842
    );
}

#[test]
fn zoo_flops_match_hand_count() {
    // student: 2*(9*3*32*16*16 + 9*32*32*8*8 + 2048*16 + 16*10)
    assert_eq!(
        zoo::get("student")
            .unwrap()
            .stats([3, 32, 32])
            .unwrap()
            .flops,
        1_687_872
    );
    // teacher-v3: 2*(9*3*256*16*16 + 9*256*256*8*8 + 9*256*512*4*4 + 8192*128 + 128*10)
    assert_eq!(
        zoo::get("teacher-v3")
            .unwrap()
            .stats([3, 32, 32])
            .unwrap()
            .flops,
        118_884_864
    );
    assert_eq!(
        zoo::get("student")
            .unwrap()
            .stats([3, 32, 32])
            .unwrap()
            .bytes,
        43_098 * 4
    );
}

fn spec_shapes(spec: &ModelSpec, input: [usize; 3]) -> Vec<Vec<usize>> {
    spec.infer(input)
        .unwrap()
        .iter()
        .map(|info| match info.output {
            Shape::Image(chw) => chw.to_vec(),
            Shape::Flat(n) => vec![n],
        })
        .collect()
}

fn real_shapes(spec: &ModelSpec, input: [usize; 3]) -> Vec<Vec<usize>> {
    let dev = device();
    let net = Network::init(spec, input, 1, &dev).unwrap();
    let [c, h, w] = input;
    let x = Tensor::<4>::zeros([2, c, h, w], &dev);
    net.layer_output_dims(x)
        .into_iter()
        .map(|d| d[1..].to_vec())
        .collect()
}

#[test]
fn student_shapes_layer_by_layer() {
    let spec = zoo::get("student").unwrap();
    let cifar: Vec<Vec<usize>> = vec![
        vec![32, 16, 16],
        vec![32, 16, 16],
        vec![32, 16, 16],
        vec![32, 8, 8],
        vec![32, 8, 8],
        vec![32, 8, 8],
        vec![32, 8, 8],
        vec![2048],
        vec![16],
        vec![16],
        vec![10],
    ];
    assert_eq!(spec_shapes(&spec, [3, 32, 32]), cifar);
    assert_eq!(real_shapes(&spec, [3, 32, 32]), cifar);
    let mnist: Vec<Vec<usize>> = vec![
        vec![32, 14, 14],
        vec![32, 14, 14],
        vec![32, 14, 14],
        vec![32, 7, 7],
        vec![32, 7, 7],
        vec![32, 7, 7],
        vec![32, 7, 7],
        vec![1568],
        vec![16],
        vec![16],
        vec![10],
    ];
    assert_eq!(spec_shapes(&spec, [1, 28, 28]), mnist);
    assert_eq!(real_shapes(&spec, [1, 28, 28]), mnist);
}

#[test]
fn teacher_shapes_layer_by_layer() {
    let spec = zoo::get("teacher-v3").unwrap();
    let cifar: Vec<Vec<usize>> = vec![
        vec![256, 16, 16],
        vec![256, 16, 16],
        vec![256, 16, 16],
        vec![256, 16, 16],
        vec![256, 8, 8],
        vec![256, 8, 8],
        vec![256, 8, 8],
        vec![256, 8, 8],
        vec![512, 4, 4],
        vec![512, 4, 4],
        vec![512, 4, 4],
        vec![512, 4, 4],
        vec![8192],
        vec![128],
        vec![128],
        vec![10],
    ];
    assert_eq!(spec_shapes(&spec, [3, 32, 32]), cifar);
    assert_eq!(real_shapes(&spec, [3, 32, 32]), cifar);
    // 7 -> 4 with stride 2 'same' (ceil), as TensorFlow.
    let mnist = spec_shapes(&spec, [1, 28, 28]);
    assert_eq!(mnist[0], vec![256, 14, 14]);
    assert_eq!(mnist[4], vec![256, 7, 7]);
    assert_eq!(mnist[8], vec![512, 4, 4]);
    assert_eq!(mnist[12], vec![8192]);
    assert_eq!(real_shapes(&spec, [1, 28, 28]), mnist);
    let v1 = zoo::get("teacher-v1").unwrap();
    assert_eq!(spec_shapes(&v1, [3, 32, 32]), real_shapes(&v1, [3, 32, 32]));
    assert_eq!(spec_shapes(&v1, [3, 32, 32])[3], vec![512, 8, 8]);
}

#[test]
fn same_padding_arithmetic_matches_tensorflow() {
    // (input, kernel, stride) -> (before, after), worked out by hand from TF's rule
    // total = max((ceil(in/s) - 1) * s + k - in, 0), before = total / 2.
    assert_eq!(same_padding(32, 3, 2), (0, 1));
    assert_eq!(same_padding(16, 3, 2), (0, 1));
    assert_eq!(same_padding(28, 3, 2), (0, 1));
    assert_eq!(same_padding(7, 3, 2), (1, 1));
    assert_eq!(same_padding(16, 2, 1), (0, 1)); // 2x2 pool, stride 1: pad bottom/right only
    assert_eq!(same_padding(5, 3, 1), (1, 1));
    assert_eq!(same_padding(8, 5, 1), (2, 2));
    assert_eq!(same_padding(4, 1, 2), (0, 0));
    assert_eq!(output_size(32, 3, 2, Padding::Same), Some(16));
    assert_eq!(output_size(7, 3, 2, Padding::Same), Some(4));
    assert_eq!(output_size(16, 2, 1, Padding::Same), Some(16));
    assert_eq!(output_size(32, 3, 2, Padding::Valid), Some(15));
    assert_eq!(output_size(2, 3, 1, Padding::Valid), None);
}

/// Naive TensorFlow-semantics convolution (NCHW, one image) for checking burn's numbers.
fn naive_conv(
    x: &[f32],
    [c, h, w]: [usize; 3],
    k: &[f32],
    filters: usize,
    ks: usize,
    stride: usize,
) -> Vec<f32> {
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let (top, _) = same_padding(h, ks, stride);
    let (left, _) = same_padding(w, ks, stride);
    let mut out = vec![0.0; filters * oh * ow];
    for f in 0..filters {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0;
                for ci in 0..c {
                    for ky in 0..ks {
                        for kx in 0..ks {
                            let iy = (oy * stride + ky) as isize - top as isize;
                            let ix = (ox * stride + kx) as isize - left as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                acc += x[ci * h * w + iy as usize * w + ix as usize]
                                    * k[((f * c + ci) * ks + ky) * ks + kx];
                            }
                        }
                    }
                }
                out[(f * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * scale)
        .collect()
}

#[test]
fn conv_same_stride2_pads_bottom_right_like_tensorflow() {
    let dev = device();
    let (c, h, w, filters) = (2, 6, 6, 3);
    let spec = ModelSpec {
        name: "conv".into(),
        layers: vec![
            LayerSpec::conv(filters, 3, 2),
            LayerSpec::Flatten,
            LayerSpec::dense(1, false),
        ],
    };
    let mut net = Network::init(&spec, [c, h, w], 0, &dev).unwrap();
    let kernel = ramp(filters * c * 9, 0.1);
    let Layer::Conv2d(conv) = &mut net.layers[0] else {
        panic!("first layer is a conv")
    };
    conv.weight = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(kernel.clone(), [filters, c, 3, 3]),
        &dev,
    ));
    let x = ramp(c * h * w, 0.05);
    let dims = net.layer_output_dims(Tensor::from_data(
        TensorData::new(x.clone(), [1, c, h, w]),
        &dev,
    ));
    assert_eq!(dims[0], vec![1, filters, 3, 3]);
    let Layer::Conv2d(conv) = &net.layers[0] else {
        unreachable!()
    };
    let got: Vec<f32> = conv
        .forward(Tensor::from_data(
            TensorData::new(x.clone(), [1, c, h, w]),
            &dev,
        ))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let want = naive_conv(&x, [c, h, w], &kernel, filters, 3, 2);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "burn {g} vs TF-style {w}");
    }
}

#[test]
fn max_pool_2x2_stride1_same_keeps_size_and_ignores_padding() {
    let dev = device();
    let spec = ModelSpec {
        name: "pool".into(),
        layers: vec![
            LayerSpec::max_pool(2, 1),
            LayerSpec::Flatten,
            LayerSpec::dense(1, false),
        ],
    };
    let net = Network::init(&spec, [1, 3, 3], 0, &dev).unwrap();
    // All negative, so a zero pad would wrongly win the max at the bottom/right border.
    let x: Vec<f32> = vec![-9.0, -2.0, -3.0, -4.0, -5.0, -1.0, -7.0, -8.0, -6.0];
    let Layer::MaxPool2d(pool) = &net.layers[0] else {
        panic!()
    };
    let got: Vec<f32> = pool
        .forward(Tensor::from_data(TensorData::new(x, [1, 1, 3, 3]), &dev))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    // TF: window [y..y+2, x..x+2] clipped at the bottom/right edge.
    assert_eq!(
        got,
        vec![-2.0, -1.0, -1.0, -4.0, -1.0, -1.0, -7.0, -6.0, -6.0]
    );
}

#[test]
fn glorot_uniform_init_is_seeded_and_bounded() {
    let dev = device();
    let spec = zoo::get("student").unwrap();
    let a = Network::init(&spec, [3, 32, 32], 7, &dev).unwrap();
    let b = Network::init(&spec, [3, 32, 32], 7, &dev).unwrap();
    let c = Network::init(&spec, [3, 32, 32], 8, &dev).unwrap();
    let Layer::Conv2d(conv_a) = &a.layers[0] else {
        panic!()
    };
    let Layer::Conv2d(conv_b) = &b.layers[0] else {
        panic!()
    };
    let Layer::Conv2d(conv_c) = &c.layers[0] else {
        panic!()
    };
    let wa: Vec<f32> = conv_a.weight.val().into_data().try_to_vec::<f32>().unwrap();
    let wb: Vec<f32> = conv_b.weight.val().into_data().try_to_vec::<f32>().unwrap();
    let wc: Vec<f32> = conv_c.weight.val().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(wa, wb);
    assert_ne!(wa, wc);
    let limit = (6.0f32 / (27.0 + 288.0)).sqrt();
    assert!(wa.iter().all(|v| v.abs() <= limit));
    // Spread: a uniform sample fills most of the range (mean |w| ~ limit / 2).
    let mean_abs = wa.iter().map(|v| v.abs()).sum::<f32>() / wa.len() as f32;
    assert!(
        (mean_abs / limit - 0.5).abs() < 0.1,
        "mean |w| / limit = {}",
        mean_abs / limit
    );
    let bias: Vec<f32> = conv_a
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(bias.iter().all(|&v| v == 0.0));
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let spec = zoo::get("student").unwrap();
    let net = Network::init(&spec, [3, 32, 32], 3, &dev).unwrap();
    let meta = ModelMeta {
        format: 1,
        input: [3, 32, 32],
        classes: (0..10).map(|i| i.to_string()).collect(),
        params: 43_098,
    };
    checkpoint::save(dir.path(), &spec, &meta, &net).unwrap();
    let loaded = checkpoint::load(dir.path(), &dev).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.meta, meta);
    let x = Tensor::<4>::from_data(
        TensorData::new(ramp(2 * 3 * 32 * 32, 0.01), [2, 3, 32, 32]),
        &dev,
    );
    let before: Vec<f32> = net
        .valid()
        .forward(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let after: Vec<f32> = loaded
        .network
        .valid()
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(before, after);
    // The model resolves by directory, without knowing the architecture in advance.
    assert_eq!(
        distill::models::resolve_spec(dir.path().to_str().unwrap()).unwrap(),
        spec
    );
}

#[test]
fn loading_weights_of_another_shape_names_the_tensor_and_both_shapes() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let spec = zoo::get("student").unwrap();
    let net = Network::init(&spec, [3, 32, 32], 3, &dev).unwrap();
    let meta = ModelMeta {
        format: 1,
        input: [3, 32, 32],
        classes: vec!["a".into(); 10],
        params: 43_098,
    };
    checkpoint::save(dir.path(), &spec, &meta, &net).unwrap();
    // Same layers, other widths: conv filters 32 -> 16.
    let mut other = spec.clone();
    other.layers[0] = LayerSpec::conv(16, 3, 2);
    let target = Network::init(&other, [3, 32, 32], 0, &dev).unwrap();
    let err = checkpoint::load_weights(&dir.path().join(checkpoint::WEIGHTS_FILE), target)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.bpk"), "{err}");
    assert!(err.contains("layers.0") && err.contains("weight"), "{err}");
    assert!(
        err.contains("[16, 3, 3, 3]") && err.contains("[32, 3, 3, 3]"),
        "{err}"
    );
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = checkpoint::load(&dir.path().join("nope"), &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = checkpoint::load(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.toml is missing"), "{err}");
}

#[test]
fn toml_round_trip_and_example_spec() {
    for name in zoo::NAMES {
        let spec = zoo::get(name).unwrap();
        assert_eq!(
            ModelSpec::from_toml_str(&spec.to_toml_string()).unwrap(),
            spec
        );
    }
    let text = r#"
        name = "tiny"
        [[layers]]
        type = "conv2d"
        filters = 8
        kernel = 3
        [[layers]]
        type = "batch_norm"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "max_pool2d"
        size = 2
        padding = "valid"
        [[layers]]
        type = "global_avg_pool"
        [[layers]]
        type = "dense"
        units = 10
    "#;
    let spec = ModelSpec::from_toml_str(text).unwrap();
    let infos = spec.infer([3, 32, 32]).unwrap();
    assert_eq!(infos[0].output, Shape::Image([8, 32, 32])); // stride defaults to 1, padding to same
    assert_eq!(infos[1].params, 32); // gamma, beta, moving mean, moving variance
    assert_eq!(infos[3].output, Shape::Image([8, 16, 16])); // pool stride defaults to its size
    assert_eq!(infos[4].output, Shape::Flat(8));
    assert_eq!(
        spec.stats([3, 32, 32]).unwrap().params,
        3 * 9 * 8 + 8 + 32 + 8 * 10 + 10
    );
    let net = Network::init(&spec, [3, 32, 32], 0, &device()).unwrap();
    let logits = net.forward(Tensor::zeros([4, 3, 32, 32], &device()));
    assert_eq!(logits.dims(), [4, 10]);
    let shipped =
        ModelSpec::from_file(std::path::Path::new("examples/specs/student-bn.toml")).unwrap();
    assert!(shipped.infer([3, 32, 32]).is_ok());
}

fn layer_error(spec: &ModelSpec, input: [usize; 3]) -> (usize, &'static str, String) {
    match spec.infer(input) {
        Err(SpecError::Layer {
            index,
            field,
            message,
            ..
        }) => (index, field, message),
        other => panic!("expected a layer error, got {other:?}"),
    }
}

#[test]
fn bad_specs_are_rejected_naming_layer_and_field() {
    let spec = |layers: Vec<LayerSpec>| ModelSpec {
        name: "bad".into(),
        layers,
    };
    let tail = || vec![LayerSpec::Flatten, LayerSpec::dense(10, false)];

    let kernel_too_big = spec(
        [
            vec![LayerSpec::Conv2d {
                filters: 4,
                kernel: 5,
                stride: 1,
                padding: Padding::Valid,
                bias: true,
                groups: 1,
            }],
            tail(),
        ]
        .concat(),
    );
    let (index, field, message) = layer_error(&kernel_too_big, [1, 4, 4]);
    assert_eq!((index, field), (0, "kernel"));
    assert!(message.contains("larger than its 4x4 input"), "{message}");

    let dense_first = spec(vec![LayerSpec::dense(10, false)]);
    let (index, field, message) = layer_error(&dense_first, [3, 8, 8]);
    assert_eq!((index, field), (0, "input"));
    assert!(message.contains("flatten"), "{message}");

    let zero_filters = spec([vec![LayerSpec::conv(0, 3, 1)], tail()].concat());
    assert_eq!(layer_error(&zero_filters, [3, 8, 8]).1, "filters");

    for rate in [1.0, -0.1, 1.5] {
        let bad_dropout = spec([vec![LayerSpec::Dropout { rate }], tail()].concat());
        let (index, field, _) = layer_error(&bad_dropout, [3, 8, 8]);
        assert_eq!((index, field), (0, "rate"));
    }

    let conv_after_flatten = spec(vec![
        LayerSpec::Flatten,
        LayerSpec::conv(4, 3, 1),
        LayerSpec::dense(10, false),
    ]);
    assert_eq!(layer_error(&conv_after_flatten, [3, 8, 8]).0, 1);

    let no_logits = spec(vec![LayerSpec::conv(4, 3, 1)]);
    assert!(
        matches!(no_logits.infer([3, 8, 8]), Err(SpecError::Model(m)) if m.contains("must end with flat logits"))
    );
    assert!(spec(vec![]).infer([3, 8, 8]).is_err());

    // Init refuses the same specs, so nothing is built from a bad one.
    assert!(Network::init(&kernel_too_big, [1, 4, 4], 0, &device()).is_err());
}

#[test]
fn bad_toml_specs_name_the_layer() {
    let unknown = "[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"conv3d\"\nfilters = 3\n";
    let err = ModelSpec::from_toml_str(unknown).unwrap_err().to_string();
    assert!(err.starts_with("layer 1 (conv3d)"), "{err}");
    assert!(err.contains("unknown variant"), "{err}");

    let unknown_field = "[[layers]]\ntype = \"dropout\"\nrate = 0.1\nsize = 3\n";
    let err = ModelSpec::from_toml_str(unknown_field)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("layer 0 (dropout)") && err.contains("size"),
        "{err}"
    );

    let missing = "[[layers]]\ntype = \"dense\"\n";
    let err = ModelSpec::from_toml_str(missing).unwrap_err().to_string();
    assert!(
        err.contains("layer 0 (dense)") && err.contains("units"),
        "{err}"
    );

    assert!(ModelSpec::from_toml_str("layers = 3").is_err());
}

#[test]
fn free_space_check_reports_both_sizes_and_passes_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let free = checkpoint::available_bytes(dir.path()).unwrap();
    assert!(free > 0, "a writable temp dir reports free space");
    checkpoint::ensure_room(dir.path(), 1, "one checkpoint").unwrap();
    let err = checkpoint::ensure_room(dir.path(), u64::MAX, "one checkpoint")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&dir.path().display().to_string())
            && err.contains("free but one checkpoint needs about 18446744.1 TB"),
        "{err}"
    );
    assert_eq!(checkpoint::human_bytes(999), "999 B");
    assert_eq!(checkpoint::human_bytes(1_500_000), "1.5 MB");
}
