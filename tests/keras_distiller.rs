//! One distillation step against the Keras reference harness' `Distiller`: same weights, batch and
//! teacher logits must give the same logits, loss and student gradients, with T² scaling off
//! (alpha 0.1, T 10: the notebook) and on (alpha 0.1, T 4). This rules out an error of scale or
//! sign (loss weights, temperature, KL direction, T²) and of layout (conv kernels, the flatten
//! order, dense kernels, TensorFlow's asymmetric 'same' padding) before anything is tuned.
//!
//! The fixture, tests/fixtures/keras-distiller/step.json, is made by make_fixture.py next to it
//! (TensorFlow 2.21 / Keras 3.15, float32), which runs the harness' own `Distiller.train_step` on
//! the notebook's student without its dropout layers (random masks have no place in an exact
//! comparison), on 3x12x12 images, with weights given in our layouts. Both our layer paths are
//! checked: the local Flex kernels that training uses, and burn's own layers.
//!
//! Tolerance: for every compared tensor (loss, logits, each parameter's gradient), the largest
//! absolute difference must be at most `1e-5 * max(1, s)`, where `s` is the largest magnitude in
//! the reference tensor. Since gradients here are far below 1 that is an absolute 1e-5, so a second
//! bound, `1e-4 * s`, keeps small tensors from passing with a wrong scale.

use std::sync::Mutex;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::kernels;
use distill::losses::DistillLoss;
use distill::models::network::Layer;
use distill::models::{zoo, LayerSpec, ModelSpec, Network};
use serde_json::Value;

/// `kernels::set_enabled` is process-wide: the tests take turns.
static SWITCH: Mutex<()> = Mutex::new(());

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/keras-distiller/step.json")).unwrap()
}

/// A `{"shape": [...], "data": [...]}` entry of the fixture.
fn array(value: &Value) -> (Vec<usize>, Vec<f64>) {
    let shape: Vec<usize> = serde_json::from_value(value["shape"].clone()).unwrap();
    let data: Vec<f64> = serde_json::from_value(value["data"].clone()).unwrap();
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "fixture array size"
    );
    (shape, data)
}

fn tensor<const D: usize>(value: &Value, device: &Device) -> Tensor<D> {
    let (shape, data) = array(value);
    let data: Vec<f32> = data.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The notebook's student (our zoo's `student`) without its two dropout layers.
fn student_without_dropout() -> ModelSpec {
    let mut spec = zoo::get("student").unwrap();
    spec.layers
        .retain(|l| !matches!(l, LayerSpec::Dropout { .. }));
    let kinds: Vec<&str> = spec.layers.iter().map(|l| l.kind()).collect();
    assert_eq!(
        kinds,
        [
            "conv2d",
            "leaky_relu",
            "max_pool2d",
            "conv2d",
            "leaky_relu",
            "max_pool2d",
            "flatten",
            "dense",
            "dense"
        ]
    );
    spec
}

/// Our network with the fixture's weights (already in our layouts), on `device`.
fn network(fx: &Value, device: &Device) -> Network {
    let input: [usize; 3] = serde_json::from_value(fx["input"].clone()).unwrap();
    let mut network = Network::init(&student_without_dropout(), input, 0, device).unwrap();
    let weights = fx["weights"].as_array().unwrap();
    let mut next = weights.iter();
    for layer in &mut network.layers {
        match layer {
            Layer::Conv2d(conv) => {
                let w: Tensor<4> = tensor(next.next().unwrap(), device);
                assert_eq!(w.dims(), conv.weight.dims(), "conv kernel layout");
                conv.weight = Param::from_tensor(w);
                conv.bias = Some(Param::from_tensor(tensor(next.next().unwrap(), device)));
            }
            Layer::Dense(dense) => {
                let w: Tensor<2> = tensor(next.next().unwrap(), device);
                assert_eq!(w.dims(), dense.linear.weight.dims(), "dense kernel layout");
                dense.linear.weight = Param::from_tensor(w);
                dense.linear.bias = Some(Param::from_tensor(tensor(next.next().unwrap(), device)));
            }
            _ => {}
        }
    }
    assert!(next.next().is_none(), "every fixture weight is used");
    network
}

/// Largest absolute difference and the reference's largest magnitude.
fn max_diff(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "length");
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    (diff, scale)
}

/// Asserts the tolerance rule of the module docs and prints the measured difference.
fn check(what: &str, got: &[f32], want: &[f64]) {
    let (diff, scale) = max_diff(got, want);
    println!(
        "{what:<48} max |diff| {diff:.3e}  scale {scale:.3e}  relative {:.3e}",
        diff / scale.max(f64::MIN_POSITIVE)
    );
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "{what}: max |ours - Keras| = {diff:e} > 1e-5 * max(1, {scale:e})"
    );
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max |ours - Keras| = {diff:e} > 1e-4 * {scale:e} (a wrong scale on a small tensor?)"
    );
}

/// One step on the fixture's batch for `case`, with the local kernels on or off; compares logits,
/// loss and every parameter gradient with Keras.
fn step(fx: &Value, case: &Value, local_kernels: bool) {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    kernels::set_enabled(local_kernels);
    let device = Device::flex().autodiff();
    assert_eq!(kernels::active(&device), local_kernels);
    let path = if local_kernels {
        "local kernels"
    } else {
        "burn layers"
    };
    let name = format!("{} ({path})", case["name"].as_str().unwrap());

    let network = network(fx, &device);
    // The images are pixels / 255 in float32, as in the script.
    let (shape, pixels) = array(&fx["pixels"]);
    let images: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    let images = Tensor::<4>::from_data(TensorData::new(images, shape), &device);
    let labels: Vec<i64> = serde_json::from_value(fx["labels"].clone()).unwrap();
    let labels =
        Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [labels.len()]), &device);
    let teacher: Tensor<2> = tensor(&fx["teacher_logits"], &device);

    let logits = network.forward(images);
    check(
        &format!("{name}: logits"),
        &to_vec(logits.clone()),
        &array(&fx["logits"]).1,
    );

    let temperature = case["temperature"].as_f64().unwrap();
    let t2_scaling = case["t2_scaling"].as_bool().unwrap();
    let loss = DistillLoss::Kd {
        alpha: case["alpha"].as_f64().unwrap(),
        temperature,
        t2_scaling,
    };
    let parts = loss.forward(logits, teacher, labels, 0.0, 1);
    // Keras' distillation loss includes the T² factor when it is on; our `soft` part does not.
    let scale = if t2_scaling {
        temperature * temperature
    } else {
        1.0
    };
    check(
        &format!("{name}: cross-entropy"),
        &to_vec(parts.hard),
        &[case["student_loss"].as_f64().unwrap()],
    );
    check(
        &format!("{name}: distillation term"),
        &to_vec(parts.soft.mul_scalar(scale)),
        &[case["distillation_loss"].as_f64().unwrap()],
    );
    check(
        &format!("{name}: loss"),
        &to_vec(parts.total.clone()),
        &[case["loss"].as_f64().unwrap()],
    );

    let grads = parts.total.backward();
    let mut ours: Vec<Vec<f32>> = Vec::new();
    for layer in &network.layers {
        match layer {
            Layer::Conv2d(conv) => {
                ours.push(to_vec(conv.weight.val().grad(&grads).expect("gradient")));
                let bias = conv.bias.as_ref().expect("bias").val();
                ours.push(to_vec(bias.grad(&grads).expect("gradient")));
            }
            Layer::Dense(dense) => {
                let linear = &dense.linear;
                ours.push(to_vec(linear.weight.val().grad(&grads).expect("gradient")));
                let bias = linear.bias.as_ref().expect("bias").val();
                ours.push(to_vec(bias.grad(&grads).expect("gradient")));
            }
            _ => {}
        }
    }
    let params = fx["params"].as_array().unwrap();
    let want = case["grads"].as_array().unwrap();
    assert_eq!(ours.len(), want.len(), "one gradient per Keras variable");
    for ((got, want), param) in ours.iter().zip(want).zip(params) {
        check(
            &format!("{name}: d loss / d {}", param.as_str().unwrap()),
            got,
            &array(want).1,
        );
    }
    kernels::set_enabled(true);
}

fn run_case(name: &str) {
    let fx = fixture();
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} in the fixture"))
        .clone();
    // Keras' KLDivergence clips probabilities to [1e-7, 1]; the fixture avoids the clip.
    assert!(case["min_probability"].as_f64().unwrap() > 1e-7);
    for local_kernels in [true, false] {
        step(&fx, &case, local_kernels);
    }
}

#[test]
fn one_step_matches_keras_distiller_without_t2_scaling() {
    run_case("t2_off");
}

#[test]
fn one_step_matches_keras_distiller_with_t2_scaling() {
    run_case("t2_on");
}
