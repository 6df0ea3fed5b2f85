//! Loss values against an independent float64 reference (tests/fixtures/losses.json, made by
//! tests/fixtures/make_loss_fixture.py) and gradients against finite differences.

use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::data::LabelMix;
use distill::losses::{cross_entropy, mixup_cross_entropy, DistillLoss};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/losses.json")).unwrap()
}

fn matrix(value: &Value) -> (Vec<f32>, [usize; 2]) {
    let rows: Vec<Vec<f32>> = serde_json::from_value(value.clone()).unwrap();
    let shape = [rows.len(), rows[0].len()];
    (rows.into_iter().flatten().collect(), shape)
}

fn tensors(fx: &Value, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let (s, shape) = matrix(&fx["student_logits"]);
    let (t, _) = matrix(&fx["teacher_logits"]);
    let labels: Vec<i64> = serde_json::from_value(fx["labels"].clone()).unwrap();
    let n = labels.len();
    (
        Tensor::from_data(TensorData::new(s, shape), device),
        Tensor::from_data(TensorData::new(t, shape), device),
        Tensor::from_data(TensorData::new(labels, [n]), device),
    )
}

fn close(got: f32, want: f64, what: &str) {
    let tolerance = 2e-5 * want.abs().max(1.0);
    assert!(
        (got as f64 - want).abs() <= tolerance,
        "{what}: got {got}, reference {want}"
    );
}

#[test]
fn losses_match_float64_reference() {
    let fx = fixture();
    let device = Device::flex();
    let (student, teacher, labels) = tensors(&fx, &device);
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let alpha = case["alpha"].as_f64().unwrap();
        let loss = match case["kind"].as_str().unwrap() {
            "kd" => DistillLoss::Kd {
                alpha,
                temperature: case["temperature"].as_f64().unwrap(),
                t2_scaling: case["t2_scaling"].as_bool().unwrap(),
            },
            "mse" => DistillLoss::Mse { alpha },
            other => panic!("unknown case kind {other}"),
        };
        let parts = loss.forward(student.clone(), teacher.clone(), labels.clone(), 0.0, 1);
        let label = format!("{case}");
        close(
            parts.hard.into_scalar(),
            case["ce"].as_f64().unwrap(),
            &format!("CE {label}"),
        );
        close(
            parts.soft.into_scalar(),
            case["soft"].as_f64().unwrap(),
            &format!("soft {label}"),
        );
        close(
            parts.total.into_scalar(),
            case["total"].as_f64().unwrap(),
            &format!("total {label}"),
        );
    }
    let smoothed: f32 = cross_entropy(student, labels, 0.1).into_scalar();
    close(
        smoothed,
        fx["ce_label_smoothing_0.1"].as_f64().unwrap(),
        "CE with label smoothing 0.1",
    );
}

#[test]
fn extreme_logits_stay_finite() {
    let device = Device::flex();
    let s = Tensor::<2>::from_data(
        TensorData::new(vec![1000.0f32, -1000.0, 0.0, 0.0], [2, 2]),
        &device,
    );
    let t = Tensor::<2>::from_data(
        TensorData::new(vec![-1000.0f32, 1000.0, 500.0, -500.0], [2, 2]),
        &device,
    );
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device);
    let loss = DistillLoss::Kd {
        alpha: 0.5,
        temperature: 1.0,
        t2_scaling: true,
    };
    let value: f32 = loss.forward(s, t, y, 0.0, 1).total.into_scalar();
    assert!(value.is_finite(), "{value}");
    assert!(
        value > 100.0,
        "confidently wrong logits must cost a lot, got {value}"
    );
}

#[test]
fn hyper_parameters_are_validated() {
    assert!(DistillLoss::Kd {
        alpha: 1.5,
        temperature: 1.0,
        t2_scaling: true
    }
    .validate()
    .unwrap_err()
    .contains("alpha"));
    assert!(DistillLoss::Kd {
        alpha: -0.1,
        temperature: 1.0,
        t2_scaling: true
    }
    .validate()
    .is_err());
    assert!(DistillLoss::Kd {
        alpha: 0.5,
        temperature: 0.0,
        t2_scaling: true
    }
    .validate()
    .unwrap_err()
    .contains("temperature"));
    assert!(DistillLoss::Kd {
        alpha: 0.5,
        temperature: f64::NAN,
        t2_scaling: true
    }
    .validate()
    .is_err());
    assert!(DistillLoss::Mse { alpha: 2.0 }.validate().is_err());
    assert!(DistillLoss::Kd {
        alpha: 0.0,
        temperature: 10.0,
        t2_scaling: false
    }
    .validate()
    .is_ok());
}

/// Loss as a function of the student logits, evaluated on a plain device.
fn loss_at(
    loss: &DistillLoss,
    s: &[f32],
    shape: [usize; 2],
    t: &Tensor<2>,
    y: &Tensor<1, Int>,
    device: &Device,
) -> f64 {
    let s = Tensor::<2>::from_data(TensorData::new(s.to_vec(), shape), device);
    loss.forward(s, t.clone(), y.clone(), 0.0, 1)
        .total
        .into_scalar::<f32>() as f64
}

#[test]
fn student_gradient_matches_finite_differences() {
    let fx = fixture();
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    let (s_values, shape) = matrix(&fx["student_logits"]);
    let (_, teacher, labels) = tensors(&fx, &plain);
    for loss in [
        DistillLoss::Kd {
            alpha: 0.1,
            temperature: 4.0,
            t2_scaling: true,
        },
        DistillLoss::Kd {
            alpha: 0.5,
            temperature: 10.0,
            t2_scaling: false,
        },
        DistillLoss::Mse { alpha: 0.3 },
    ] {
        let s =
            Tensor::<2>::from_data(TensorData::new(s_values.clone(), shape), &ad).require_grad();
        let total = loss
            .forward(
                s.clone(),
                teacher.clone().autodiff(),
                labels.clone().autodiff(),
                0.0,
                1,
            )
            .total;
        let grads = total.backward();
        let analytic: Vec<f32> = s
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..s_values.len()).step_by(7) {
            let mut plus = s_values.clone();
            plus[i] += eps;
            let mut minus = s_values.clone();
            minus[i] -= eps;
            let numeric = (loss_at(&loss, &plus, shape, &teacher, &labels, &plain)
                - loss_at(&loss, &minus, shape, &teacher, &labels, &plain))
                / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                "{loss:?} d/ds[{i}]: autodiff {a}, finite difference {numeric}"
            );
        }
    }
}

/// Mixup's cross-entropy against a hand computation in f64: `-(λ log p_y + (1 - λ) log p_y')`
/// per example, averaged, and with smoothing the uniform term on top; with every `λ = 1` it is
/// the plain cross-entropy.
#[test]
fn mixup_cross_entropy_blends_the_two_labels_log_probabilities() {
    let device = Device::flex();
    let rows = [[2.0f64, -1.0, 0.5], [0.0, 3.0, -2.0]];
    let (labels, partners, lambdas) = ([0i64, 1], [2u32, 0], [0.7f32, 0.55]);
    let logits = Tensor::<2>::from_data(
        TensorData::new(
            rows.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>(),
            [2, 3],
        ),
        &device,
    );
    let labels_t = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [2]), &device);
    let mix = LabelMix {
        partners: partners.to_vec(),
        lambdas: lambdas.to_vec(),
    };
    let log_softmax = |row: &[f64; 3]| -> Vec<f64> {
        let norm = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        row.iter().map(|v| v - norm).collect()
    };
    let mut blended = 0.0;
    let mut uniform = 0.0;
    for (k, row) in rows.iter().enumerate() {
        let lp = log_softmax(row);
        let lambda = lambdas[k] as f64;
        blended += lambda * lp[labels[k] as usize] + (1.0 - lambda) * lp[partners[k] as usize];
        uniform += lp.iter().sum::<f64>() / 3.0;
    }
    let (blended, uniform) = (blended / 2.0, uniform / 2.0);
    let got: f32 = mixup_cross_entropy(logits.clone(), labels_t.clone(), &mix, 0.0).into_scalar();
    close(got, -blended, "mixup CE");
    let eps = 0.1;
    let got: f32 = mixup_cross_entropy(logits.clone(), labels_t.clone(), &mix, eps).into_scalar();
    close(
        got,
        -((1.0 - eps) * blended + eps * uniform),
        "smoothed mixup CE",
    );

    let unmixed = LabelMix {
        partners: partners.to_vec(),
        lambdas: vec![1.0, 1.0],
    };
    let plain: f32 = cross_entropy(logits.clone(), labels_t.clone(), 0.1).into_scalar();
    let got: f32 = mixup_cross_entropy(logits, labels_t, &unmixed, 0.1).into_scalar();
    assert!((got - plain).abs() <= 1e-6, "{got} vs {plain}");
}
