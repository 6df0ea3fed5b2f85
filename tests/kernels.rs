//! The local Flex kernels (`distill::kernels`) against burn's own layers, which serve as the
//! independent reference: same weights, same input, same dropout draws; logits and every
//! parameter's gradient must agree to float tolerance. (The kernels' own unit tests check them
//! against the textbook convolution, finite differences and hand-worked pooling.)

use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use distill::kernels;
use distill::models::network::Layer;
use distill::models::{zoo, LayerSpec, ModelSpec, Network, Padding};

/// `kernels::set_enabled` is process-wide: tests that flip it take turns.
static SWITCH: Mutex<()> = Mutex::new(());

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `param`'s gradient in `grads`, flattened.
fn grad_values<const D: usize>(
    param: &burn::module::Param<Tensor<D>>,
    grads: &burn::tensor::Gradients,
) -> Vec<f32> {
    param
        .val()
        .grad(grads)
        .expect("gradient")
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// A linear layer's weight and bias gradients.
fn linear_grads(linear: &burn::nn::Linear, grads: &burn::tensor::Gradients) -> [Vec<f32>; 2] {
    let bias = linear.bias.as_ref().expect("a bias");
    [grad_values(&linear.weight, grads), grad_values(bias, grads)]
}

/// Three token-id texts of 8, 3 and 5 tokens, padded into one batch.
fn three_texts(device: &Device) -> distill::data::tokenizer::TokenBatch {
    let texts: [&[u32]; 3] = [&[2, 5, 6, 8, 11, 12, 13, 3], &[2, 40, 3], &[2, 7, 9, 30, 3]];
    distill::data::tokenizer::TokenBatch::new(&texts, 0, device)
}

/// Logits and, per parameter tensor in layer order, its gradient of `sum(logits ⊙ r)`.
fn logits_and_grads(
    network: &Network,
    input: &[f32],
    dims: [usize; 4],
    local: bool,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    kernels::set_enabled(local);
    let device = Device::flex().autodiff();
    device.seed(11);
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), dims), &device);
    let logits = network.forward(x);
    let [b, k] = logits.dims();
    let r = Tensor::<2>::from_data(TensorData::new(values(b * k, 5), [b, k]), &device);
    let grads = (logits.clone() * r).sum().backward();
    let mut out = Vec::new();
    layer_grads(&network.layers, &grads, &mut out);
    kernels::set_enabled(true);
    (logits.into_data().try_to_vec::<f32>().unwrap(), out)
}

/// Every parameter's gradient in `layers`, residual blocks' bodies and shortcuts included.
fn layer_grads(layers: &[Layer], grads: &burn::tensor::Gradients, out: &mut Vec<Vec<f32>>) {
    for layer in layers {
        match layer {
            Layer::Conv2d(conv) => {
                out.push(grad_values(&conv.weight, grads));
                if let Some(bias) = &conv.bias {
                    out.push(grad_values(bias, grads));
                }
            }
            Layer::Dense(dense) => out.extend(linear_grads(&dense.linear, grads)),
            Layer::BatchNorm(norm) => {
                out.push(grad_values(&norm.gamma, grads));
                out.push(grad_values(&norm.beta, grads));
            }
            Layer::Residual(stage) => {
                for block in &stage.blocks {
                    layer_grads(&block.body, grads, out);
                    layer_grads(&block.shortcut, grads, out);
                }
            }
            _ => {}
        }
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if scale < 1e-5 {
        // Zero up to rounding (a convolution's bias right before a batch norm gets no gradient):
        // the local value must be as well.
        let worst = got.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            worst < 1e-5,
            "{what}: local kernels give {worst}, burn gives 0 up to rounding"
        );
        return;
    }
    let scale = scale.max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale + 1e-6,
            "{what}[{i}]: local kernels give {g}, burn gives {w} (scale {scale})"
        );
    }
}

/// The spec without its dropout layers: the local dropout draws its masks from another generator
/// than burn's, so equality is checked without it (and dropout on its own below).
fn without_dropout(spec: &ModelSpec) -> ModelSpec {
    ModelSpec {
        name: spec.name.clone(),
        layers: spec
            .layers
            .iter()
            .filter(|l| !matches!(l, LayerSpec::Dropout { .. }))
            .cloned()
            .collect(),
    }
}

fn compare(spec: &ModelSpec, input: [usize; 3], batch: usize) {
    let spec = &without_dropout(spec);
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    assert!(kernels::active(&device) && kernels::active(&Device::flex()));
    let network = Network::init(spec, input, 3, &device).unwrap();
    let dims = [batch, input[0], input[1], input[2]];
    let x = values(dims.iter().product(), 9);
    let (burn_logits, burn_grads) = logits_and_grads(&network, &x, dims, false);
    let (local_logits, local_grads) = logits_and_grads(&network, &x, dims, true);
    assert_close(
        &format!("{} logits", spec.name),
        &local_logits,
        &burn_logits,
    );
    assert_eq!(local_grads.len(), burn_grads.len());
    for (i, (l, b)) in local_grads.iter().zip(&burn_grads).enumerate() {
        assert_close(
            &format!("{} gradient of parameter tensor {i}", spec.name),
            l,
            b,
        );
    }
    // Inference (no autodiff) takes the same kernels.
    let plain = Device::flex();
    let model = network.valid();
    let xi = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &plain);
    kernels::set_enabled(false);
    let want = model
        .forward(xi.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    kernels::set_enabled(true);
    let got = model.forward(xi).into_data().try_to_vec::<f32>().unwrap();
    assert_close(&format!("{} inference logits", spec.name), &got, &want);
}

#[test]
fn student_matches_burn_layers_forward_and_backward() {
    compare(&zoo::get("student").unwrap(), [3, 32, 32], 20);
}

#[test]
fn teacher_v1_matches_burn_layers_forward_and_backward() {
    compare(&zoo::get("teacher-v1").unwrap(), [3, 16, 16], 3);
}

#[test]
fn teacher_small_relu_and_stride_2_pools_match_burn_layers() {
    compare(&zoo::get("teacher-small").unwrap(), [1, 28, 28], 5);
}

#[test]
fn odd_sizes_valid_padding_and_a_conv_without_activation_match_burn_layers() {
    let spec = ModelSpec {
        name: "odd".into(),
        layers: vec![
            LayerSpec::Conv2d {
                filters: 5,
                kernel: 3,
                stride: 2,
                padding: Padding::Valid,
                bias: true,
                groups: 1,
            },
            LayerSpec::MaxPool2d {
                size: 3,
                stride: Some(2),
                padding: Padding::Same,
            },
            LayerSpec::Conv2d {
                filters: 4,
                kernel: 2,
                stride: 1,
                padding: Padding::Same,
                bias: true,
                groups: 1,
            },
            LayerSpec::LeakyRelu { slope: 0.3 },
            LayerSpec::MaxPool2d {
                size: 2,
                stride: None,
                padding: Padding::Valid,
            },
            LayerSpec::Flatten,
            LayerSpec::Dense {
                units: 3,
                activation: None,
            },
        ],
    };
    compare(&spec, [2, 15, 13], 3);
}

fn teacher_vgg() -> ModelSpec {
    ModelSpec::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs/teacher-vgg.toml"),
    )
    .unwrap()
}

#[test]
fn batch_norm_with_and_without_a_fused_relu_matches_burn_layers() {
    // teacher-vgg: every norm followed by a ReLU, stride-2 pools, global average pooling.
    compare(&teacher_vgg(), [3, 16, 16], 3);
    // A norm before a pool (no ReLU to fuse), one on a 1x1 plane, and one after a dense layer
    // (a flat input: burn's layer).
    let spec = ModelSpec {
        name: "norms".into(),
        layers: vec![
            LayerSpec::Conv2d {
                filters: 4,
                kernel: 3,
                stride: 1,
                padding: Padding::Same,
                bias: true,
                groups: 1,
            },
            LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            LayerSpec::MaxPool2d {
                size: 5,
                stride: None,
                padding: Padding::Valid,
            },
            // Four values per channel: a small epsilon would leave the gradient ill-conditioned.
            LayerSpec::BatchNorm {
                epsilon: Some(1e-2),
                momentum: None,
            },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            LayerSpec::Dense {
                units: 6,
                activation: None,
            },
            LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            LayerSpec::Dense {
                units: 3,
                activation: None,
            },
        ],
    };
    compare(&spec, [2, 5, 5], 4);
}

#[test]
fn batch_norm_running_statistics_follow_burn_layers() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let spec = teacher_vgg();
    let device = Device::flex().autodiff();
    let dims = [4, 3, 8, 8];
    let x = values(dims.iter().product(), 21);
    let running = |local: bool| {
        let network = Network::init(&spec, [3, 8, 8], 3, &device).unwrap();
        for _ in 0..2 {
            logits_and_grads(&network, &x, dims, local);
        }
        let mut stats = Vec::new();
        for layer in &network.layers {
            if let Layer::BatchNorm(norm) = layer {
                for state in [&norm.running_mean, &norm.running_var] {
                    stats.push(state.value().into_data().try_to_vec::<f32>().unwrap());
                }
            }
        }
        stats
    };
    let (want, got) = (running(false), running(true));
    assert_eq!(want.len(), 10, "teacher-vgg has five norms");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            w.iter().any(|&v| v != 0.0 && v != 1.0),
            "statistic {i} never moved"
        );
        assert_close(&format!("running statistic {i}"), g, w);
    }
}

/// Logits and gradients computed on a rayon pool of `threads` threads.
fn on_threads(
    threads: usize,
    work: impl FnOnce() -> (Vec<f32>, Vec<Vec<f32>>) + Send,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(work)
}

#[test]
fn one_and_two_threads_give_bit_identical_logits_and_gradients() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // teacher-v3 with its dropout layers; the student at a batch (70) whose last group of images
    // is smaller than the others in its second convolution.
    // teacher-vgg: batch norms on planes of every size down to 4x4.
    for (name, batch) in [("teacher-v3", 6), ("student", 70), ("teacher-vgg", 5)] {
        let spec = match name {
            "teacher-vgg" => teacher_vgg(),
            _ => zoo::get(name).unwrap(),
        };
        let input = [3, 32, 32];
        let network = Network::init(&spec, input, 3, &Device::flex().autodiff()).unwrap();
        let dims = [batch, 3, 32, 32];
        let x = values(dims.iter().product(), 4);
        let one = on_threads(1, || logits_and_grads(&network, &x, dims, true));
        let two = on_threads(2, || logits_and_grads(&network, &x, dims, true));
        assert!(
            one.0 == two.0,
            "{name}: logits differ between 1 and 2 threads"
        );
        for (i, (a, b)) in one.1.iter().zip(&two.1).enumerate() {
            assert!(
                a == b,
                "{name}: gradient {i} differs between 1 and 2 threads"
            );
        }
    }
}

#[test]
fn residual_networks_match_burn_layers_forward_and_backward() {
    // option A (zero-padded subsampling), option B (projection with its batch norm), Wide
    // ResNet's pre-activation blocks with a bare 1x1 shortcut
    for name in ["resnet8", "resnet8-proj", "wrn-16-2"] {
        compare(&zoo::get(name).unwrap(), [3, 32, 32], 3);
    }
    // MobileNetV2's depthwise convolutions, blocks without shortcut and repeated identity
    // blocks, down to 8x8: its later stages batch-normalise 2x2 maps of 3 images, 12 values per
    // channel, whose gradient is too ill-conditioned (epsilon 1e-5) to compare two summation
    // orders at 1e-4 (with epsilon 0.1 the whole network agrees)
    let full = zoo::get("mobilenetv2").unwrap();
    let mut layers = full.layers[..8].to_vec();
    layers.extend([LayerSpec::GlobalAvgPool, LayerSpec::dense(10, false)]);
    let front = ModelSpec {
        name: "mobilenetv2-front".into(),
        layers,
    };
    compare(&front, [3, 32, 32], 3);
}

#[test]
fn residual_networks_give_bit_identical_results_on_one_and_two_threads() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (name, batch) in [("resnet20", 5), ("resnet8-proj", 70)] {
        let spec = zoo::get(name).unwrap();
        let network = Network::init(&spec, [3, 32, 32], 3, &Device::flex().autodiff()).unwrap();
        let dims = [batch, 3, 32, 32];
        let x = values(dims.iter().product(), 4);
        let one = on_threads(1, || logits_and_grads(&network, &x, dims, true));
        let two = on_threads(2, || logits_and_grads(&network, &x, dims, true));
        assert!(one == two, "{name}: 1 and 2 threads differ");
    }
}

#[test]
fn layer_shapes_are_reported_for_fused_layers_too() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let spec = zoo::get("student").unwrap();
    let device = Device::flex();
    let network = Network::init(&spec, [3, 32, 32], 0, &device).unwrap();
    let x = Tensor::<4>::zeros([2, 3, 32, 32], &device);
    kernels::set_enabled(false);
    let burn = network.layer_output_dims(x.clone());
    kernels::set_enabled(true);
    let local = network.layer_output_dims(x);
    assert_eq!(local, burn);
    assert_eq!(local.len(), spec.layers.len());
}

#[test]
fn teacher_v3_without_dropout_matches_burn_layers() {
    compare(&zoo::get("teacher-v3").unwrap(), [3, 8, 8], 2);
}

/// Dropout through the model: the local mask keeps about `1 - rate` of the elements, scales them
/// by `1 / (1 - rate)`, repeats under the same device seed, and its gradient is the same mask.
#[test]
fn local_dropout_keeps_scales_repeats_and_backpropagates_its_mask() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let spec = ModelSpec {
        name: "drop".into(),
        layers: vec![
            LayerSpec::Dropout { rate: 0.3 },
            LayerSpec::Flatten,
            LayerSpec::Dense {
                units: 1,
                activation: None,
            },
        ],
    };
    let device = Device::flex().autodiff();
    let network = Network::init(&spec, [4, 16, 16], 1, &device).unwrap();
    let n = 64 * 4 * 16 * 16;
    let x_values: Vec<f32> = values(n, 3).iter().map(|v| v + 2.0).collect(); // all > 0
    let run = |seed: u64| {
        device.seed(seed);
        let x = Tensor::<4>::from_data(TensorData::new(x_values.clone(), [64, 4, 16, 16]), &device)
            .require_grad();
        let Layer::Dropout(drop) = &network.layers[0] else {
            unreachable!()
        };
        assert!(drop.training.is_enabled());
        let y = kernels::dropout(x.clone(), 0.3);
        let g = Tensor::<4>::from_data(TensorData::new(values(n, 4), [64, 4, 16, 16]), &device);
        let grads = (y.clone() * g).sum().backward();
        let grad_x = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        (y.into_data().try_to_vec::<f32>().unwrap(), grad_x)
    };
    let (y, grad_x) = run(5);
    let g = values(n, 4);
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
    for i in 0..n {
        let factor = y[i] / x_values[i];
        assert!(
            factor == 0.0 || (factor - 1.0 / 0.7).abs() < 1e-5,
            "factor {factor}"
        );
        assert!((grad_x[i] - g[i] * factor).abs() < 1e-5, "gradient {i}");
    }
    assert_eq!(run(5).0, y, "same device seed, same mask");
    assert_ne!(run(6).0, y, "another seed, another mask");
    // The network takes the local path only when training.
    kernels::set_enabled(true);
    let plain = Tensor::<4>::from_data(
        TensorData::new(x_values.clone(), [64, 4, 16, 16]),
        &Device::flex(),
    );
    let inference = network.valid().forward(plain.clone());
    let Layer::Dense(dense) = &network.valid().layers[2] else {
        unreachable!()
    };
    let expected = dense.linear.forward(plain.flatten::<2>(1, 3));
    assert_eq!(
        inference.into_data().try_to_vec::<f32>().unwrap(),
        expected.into_data().try_to_vec::<f32>().unwrap()
    );
}

/// Every hidden state of `model` on `batch`, through the local encoder kernel or burn's layers.
fn bert_states(
    model: &distill::models::bert::Bert,
    batch: &distill::data::tokenizer::TokenBatch,
    local: bool,
) -> Vec<Vec<f32>> {
    kernels::set_enabled(local);
    let states = model
        .hidden_states(batch)
        .into_iter()
        .map(|s| s.into_data().try_to_vec::<f32>().unwrap())
        .collect();
    kernels::set_enabled(true);
    states
}

#[test]
fn bert_inference_kernel_matches_burn_layers_at_every_position() {
    use distill::models::bert;
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let (tiny, _) = bert::load_pretrained(&tiny_bert_dir(), &device).unwrap();
    // A wider random encoder too, so the matrix kernels take their vectorised paths.
    let wide = wide_bert(&device, 3);
    for (name, model) in [("tiny-bert", &tiny), ("64-wide", &wide)] {
        let batch = three_texts(&device);
        let want = bert_states(model, &batch, false);
        let got = bert_states(model, &batch, true);
        assert_eq!(got.len(), want.len());
        for (layer, (got, want)) in got.iter().zip(&want).enumerate() {
            // padding positions included: they attend to the real tokens in both paths
            assert_close(&format!("{name} hidden state {layer}"), got, want);
        }
    }
}

#[test]
fn bert_inference_kernel_gives_bit_identical_states_on_one_and_two_threads() {
    // Two threads split the batch's texts (shares of 2 and 1 here); one text alone splits the
    // products instead. Every hidden state must be the same bits as on one thread, and a text
    // alone must get the states it gets inside the padded batch.
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let model = wide_bert(&device, 2);
    let batch = three_texts(&device);
    let states = |threads: usize, batch: &distill::data::tokenizer::TokenBatch| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| bert_states(&model, batch, true))
    };
    assert_eq!(
        states(1, &batch),
        states(2, &batch),
        "a batch of three texts"
    );
    let first: [&[u32]; 1] = [&[2, 5, 6, 8, 11, 12, 13, 3]];
    let alone = distill::data::tokenizer::TokenBatch::new(&first, 0, &device);
    let alone_one = states(1, &alone);
    assert_eq!(alone_one, states(2, &alone), "one text");
    let in_batch = states(1, &batch);
    for (layer, (alone, batch)) in alone_one.iter().zip(&in_batch).enumerate() {
        assert_eq!(
            alone[..],
            batch[..alone.len()],
            "the first text's state {layer}"
        );
    }
}

/// Multiplies every float parameter by 5 (weights of std 0.1 instead of 0.02; much more and
/// attention scores pass burn's padding fill of -10⁴, which then no longer masks).
struct Spread;

impl burn::module::ModuleMapper for Spread {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| {
            let t = (t * 5.0).detach();
            if t.is_autodiff() {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

fn tiny_bert_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/tiny-bert")
}

/// A random encoder of `layers` layers, 64 wide (4 heads, feed-forward 256), with tiny-bert's
/// vocabulary, dropout off, and its weights spread out: BERT's initialisation (std 0.02) makes
/// near-constant layers.
fn wide_bert(device: &Device, layers: usize) -> distill::models::bert::Bert {
    use distill::models::bert::{self, BertConfig};
    let text = std::fs::read_to_string(tiny_bert_dir().join(bert::CONFIG_FILE)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["hidden_size"] = 64.into();
    config["num_attention_heads"] = 4.into();
    config["intermediate_size"] = 256.into();
    config["num_hidden_layers"] = layers.into();
    config["hidden_dropout_prob"] = 0.0.into();
    let config: BertConfig = serde_json::from_value(config).unwrap();
    device.seed(5);
    let mut model = config.init(device).map(&mut Spread);
    model.set_dropout(0.0);
    model
}

/// The last hidden state and, per layer parameter (projections, feed-forward, norms), its
/// gradient of `sum(state ⊙ r)`, through the local kernels or burn's layers.
fn bert_state_and_grads(local: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    kernels::set_enabled(local);
    let device = Device::flex().autodiff();
    let model = wide_bert(&device, 2);
    let batch = three_texts(&device);
    let state = model.forward(&batch);
    let [b, l, w] = state.dims();
    let r = Tensor::<3>::from_data(TensorData::new(values(b * l * w, 9), [b, l, w]), &device);
    let grads = (state.clone() * r).sum().backward();
    let mut out = Vec::new();
    for layer in &model.encoder.layers {
        let linears = [
            &layer.mha.query,
            &layer.mha.key,
            &layer.mha.value,
            &layer.mha.output,
            &layer.pwff.linear_inner,
            &layer.pwff.linear_outer,
        ];
        for linear in linears {
            out.extend(linear_grads(linear, &grads));
        }
        for norm in [&layer.norm_1, &layer.norm_2] {
            out.push(grad_values(&norm.gamma, &grads));
            out.push(grad_values(norm.beta.as_ref().expect("a shift"), &grads));
        }
    }
    out.push(grad_values(
        &model.embeddings.word_embeddings.weight,
        &grads,
    ));
    kernels::set_enabled(true);
    (state.into_data().try_to_vec::<f32>().unwrap(), out)
}

#[test]
fn bert_training_layers_match_burn_layers_forward_and_backward() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let (want_state, want_grads) = bert_state_and_grads(false);
    let (state, grads) = bert_state_and_grads(true);
    assert_close("last hidden state", &state, &want_state);
    assert_eq!(grads.len(), want_grads.len());
    // One scale for all gradients: the key bias's is zero in exact arithmetic (softmax ignores a
    // shift shared by a row of scores), so both paths give rounding noise there.
    let scale = want_grads
        .iter()
        .flatten()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-2, "gradients too small to compare: {scale}");
    for (i, (got, want)) in grads.iter().zip(&want_grads).enumerate() {
        assert_eq!(got.len(), want.len());
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "gradient {i}[{j}]: local kernels give {g}, burn gives {w} (scale {scale})"
            );
        }
    }
}

/// A BiLSTM encoder's pooled features and, per parameter, its gradient of `sum(features ⊙ r)`,
/// through the local kernels or burn's LSTM.
fn bilstm_features_and_grads(local: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    use distill::models::bilstm::BiLstmEncoderConfig;
    kernels::set_enabled(local);
    let device = Device::flex().autodiff();
    device.seed(8);
    let config = BiLstmEncoderConfig {
        vocab_size: 50,
        embedding: 16,
        hidden: 12,
    };
    let model = config.init(&device).map(&mut Spread);
    let batch = three_texts(&device);
    let features = model.pooled(&batch);
    let [b, w] = features.dims();
    let r = Tensor::<2>::from_data(TensorData::new(values(b * w, 4), [b, w]), &device);
    let grads = (features.clone() * r).sum().backward();
    let mut out = vec![grad_values(&model.embeddings.weight, &grads)];
    for lstm in [&model.forward, &model.backward] {
        let gates = [
            &lstm.input_gate,
            lstm.forget_gate.as_ref().unwrap(),
            &lstm.output_gate,
            &lstm.cell_gate,
        ];
        for gate in gates {
            out.extend(linear_grads(&gate.input_transform, &grads));
            out.extend(linear_grads(&gate.hidden_transform, &grads));
        }
    }
    kernels::set_enabled(true);
    (features.into_data().try_to_vec::<f32>().unwrap(), out)
}

#[test]
fn bilstm_on_local_kernels_matches_burn_lstm_forward_and_backward() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let (want_features, want_grads) = bilstm_features_and_grads(false);
    let (features, grads) = bilstm_features_and_grads(true);
    assert_close("pooled features", &features, &want_features);
    assert_eq!(grads.len(), want_grads.len());
    for (i, (got, want)) in grads.iter().zip(&want_grads).enumerate() {
        assert_close(&format!("gradient {i}"), got, want);
    }
}

/// Every float parameter of a module, in visiting order.
struct Weights(Vec<Vec<f32>>);

impl burn::module::ModuleVisitor for Weights {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        self.0
            .push(param.val().into_data().try_to_vec::<f32>().unwrap());
    }
}

/// teacher-small's weights after four optimizer steps (dropout on, the same draws each time) on
/// a rayon pool of `threads` threads, with the optimizer `optimizer` makes.
fn weights_after_steps(
    threads: usize,
    optimizer: impl FnOnce() -> burn::optim::ModuleOptimizer + Send,
) -> Vec<Vec<f32>> {
    use burn::optim::GradientsParams;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| {
            let device = Device::flex().autodiff();
            device.seed(21);
            let spec = zoo::get("teacher-small").unwrap();
            let mut network = Network::init(&spec, [3, 32, 32], 3, &device).unwrap();
            let mut optimizer = optimizer();
            for step in 0..4u64 {
                let x = Tensor::<4>::from_data(
                    TensorData::new(values(8 * 3 * 32 * 32, step), [8, 3, 32, 32]),
                    &device,
                );
                let logits = network.forward(x);
                let r = Tensor::<2>::from_data(
                    TensorData::new(values(80, 50 + step), [8, 10]),
                    &device,
                );
                let grads = GradientsParams::from_grads((logits * r).sum().backward(), &network);
                // a warm-up-like schedule: the learning rate changes every step
                network = optimizer.step(1e-3 * (step + 1) as f64, network, grads);
            }
            let mut weights = Weights(Vec::new());
            network.visit(&mut weights);
            weights.0
        })
}

#[test]
fn one_pass_adam_and_adamw_give_burn_s_weights_bit_for_bit_on_one_and_two_threads() {
    use burn::optim::{AdamConfig, AdamWConfig};
    use distill::train::OptimizerConfig;
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for weight_decay in [0.0f32, 0.05] {
        let config = OptimizerConfig {
            weight_decay,
            ..OptimizerConfig::default()
        };
        let burn_optimizer = || {
            if weight_decay > 0.0 {
                AdamWConfig::new()
                    .with_beta_1(config.beta1)
                    .with_beta_2(config.beta2)
                    .with_epsilon(config.epsilon)
                    .with_weight_decay(weight_decay)
                    .init()
            } else {
                AdamConfig::new()
                    .with_beta_1(config.beta1)
                    .with_beta_2(config.beta2)
                    .with_epsilon(config.epsilon)
                    .init()
            }
        };
        let want = weights_after_steps(1, burn_optimizer);
        let start = {
            let device = Device::flex().autodiff();
            let spec = zoo::get("teacher-small").unwrap();
            let mut weights = Weights(Vec::new());
            Network::init(&spec, [3, 32, 32], 3, &device)
                .unwrap()
                .visit(&mut weights);
            weights.0
        };
        assert_ne!(want, start, "the steps moved the weights");
        assert!(
            want.iter().any(|w| w.len() > 1 << 14),
            "a tensor large enough to be split over threads"
        );
        for threads in [1, 2] {
            let got = weights_after_steps(threads, || config.build());
            assert_eq!(got.len(), want.len());
            for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                assert!(
                    got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "weight decay {weight_decay}, {threads} thread(s): parameter {i} differs from burn's"
                );
            }
        }
    }
}
