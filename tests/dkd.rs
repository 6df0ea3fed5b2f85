//! Decoupled knowledge distillation (DKD) against an independent float64 reference
//! (tests/fixtures/dkd/dkd.json, made by tests/fixtures/dkd/make_dkd_fixture.py): loss values,
//! autodiff gradients, a float32 finite-difference check, hand-checkable identities, the warm-up
//! and validation.

use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::losses::{cross_entropy, dkd_warmup, nckd, soft_kl, tckd, DistillLoss};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/dkd/dkd.json")).unwrap()
}

fn matrix(value: &Value) -> (Vec<f32>, [usize; 2]) {
    let rows: Vec<Vec<f64>> = serde_json::from_value(value.clone()).unwrap();
    let shape = [rows.len(), rows[0].len()];
    (
        rows.into_iter().flatten().map(|v| v as f32).collect(),
        shape,
    )
}

fn logits(values: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn labels(values: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn case_loss(case: &Value) -> DistillLoss {
    DistillLoss::Dkd {
        ce_weight: case["ce_weight"].as_f64().unwrap(),
        alpha: case["alpha"].as_f64().unwrap(),
        beta: case["beta"].as_f64().unwrap(),
        temperature: case["temperature"].as_f64().unwrap(),
        warmup_epochs: case["warmup_epochs"].as_u64().unwrap() as usize,
    }
}

fn close(got: f32, want: f64, what: &str) {
    let tolerance = 1e-5 * want.abs().max(1e-1);
    assert!(
        (got as f64 - want).abs() <= tolerance,
        "{what}: got {got}, reference {want}"
    );
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar()
}

fn dkd(alpha: f64, beta: f64, temperature: f64, warmup_epochs: usize) -> DistillLoss {
    DistillLoss::Dkd {
        ce_weight: 1.0,
        alpha,
        beta,
        temperature,
        warmup_epochs,
    }
}

#[test]
fn dkd_matches_float64_reference() {
    let fx = fixture();
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (n, case) in cases.iter().enumerate() {
        let loss = case_loss(case);
        loss.validate().unwrap();
        let (s, shape) = matrix(&case["student_logits"]);
        let (t, _) = matrix(&case["teacher_logits"]);
        let y: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
        let temperature = case["temperature"].as_f64().unwrap();
        let smoothing = case["label_smoothing"].as_f64().unwrap();
        let epoch = case["epoch"].as_u64().unwrap() as usize;
        let what = |part: &str| format!("case {n} {part}");

        let (sp, tp, yp) = (
            logits(&s, shape, &plain),
            logits(&t, shape, &plain),
            labels(&y, &plain),
        );
        close(
            scalar(tckd(sp.clone(), tp.clone(), yp.clone(), temperature)),
            case["tckd"].as_f64().unwrap(),
            &what("TCKD"),
        );
        close(
            scalar(nckd(sp.clone(), tp.clone(), yp.clone(), temperature)),
            case["nckd"].as_f64().unwrap(),
            &what("NCKD"),
        );
        let parts = loss.forward(sp, tp, yp, smoothing, epoch);
        close(
            scalar(parts.hard),
            case["ce"].as_f64().unwrap(),
            &what("CE"),
        );
        close(
            scalar(parts.soft),
            case["soft"].as_f64().unwrap(),
            &what("soft"),
        );
        close(
            scalar(parts.total),
            case["total"].as_f64().unwrap(),
            &what("total"),
        );

        // Gradient w.r.t. the student logits, through burn's autodiff.
        let student = logits(&s, shape, &ad).require_grad();
        let total = loss
            .forward(
                student.clone(),
                logits(&t, shape, &ad),
                labels(&y, &ad),
                smoothing,
                epoch,
            )
            .total;
        let grads = total.backward();
        let got: Vec<f32> = student
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let (want, _) = matrix(&case["grad"]);
        let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * largest + 1e-4 * w.abs(),
                "case {n} d/ds[{i}]: autodiff {g}, reference {w}"
            );
        }
    }
}

/// Total loss as a function of the student logits, on a plain device.
fn total_at(
    loss: &DistillLoss,
    s: &[f32],
    shape: [usize; 2],
    t: &Tensor<2>,
    y: &Tensor<1, Int>,
    epoch: usize,
    device: &Device,
) -> f64 {
    scalar(
        loss.forward(logits(s, shape, device), t.clone(), y.clone(), 0.0, epoch)
            .total,
    ) as f64
}

#[test]
fn dkd_gradient_matches_finite_differences() {
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    let shape = [3, 4];
    let s: Vec<f32> = vec![
        0.5, -1.0, 2.0, 0.1, //
        -0.3, 0.8, -1.5, 1.2, //
        1.7, 0.2, -0.6, -2.1,
    ];
    let t: Vec<f32> = vec![
        1.5, -0.5, 0.3, -1.0, //
        0.4, 2.2, -0.7, 0.9, //
        -0.2, 0.6, 1.9, -1.4,
    ];
    let y = [0i64, 1, 3];
    let teacher = logits(&t, shape, &plain);
    let targets = labels(&y, &plain);
    for (loss, epoch) in [
        (dkd(1.0, 8.0, 4.0, 20), 10),
        (dkd(0.5, 2.0, 1.0, 0), 1),
        (dkd(1.0, 0.0, 2.0, 0), 1),
    ] {
        let student = logits(&s, shape, &ad).require_grad();
        let total = loss
            .forward(
                student.clone(),
                teacher.clone().autodiff(),
                targets.clone().autodiff(),
                0.0,
                epoch,
            )
            .total;
        let grads = total.backward();
        let analytic: Vec<f32> = student
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in 0..s.len() {
            let mut plus = s.clone();
            plus[i] += eps;
            let mut minus = s.clone();
            minus[i] -= eps;
            let numeric = (total_at(&loss, &plus, shape, &teacher, &targets, epoch, &plain)
                - total_at(&loss, &minus, shape, &teacher, &targets, epoch, &plain))
                / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                "{loss:?} d/ds[{i}]: autodiff {a}, finite difference {numeric}"
            );
        }
    }
}

#[test]
fn dkd_hand_checks() {
    let device = Device::flex();
    let s = logits(
        &[0.5, -1.0, 2.0, 0.1, -0.3, 0.8, -1.5, 1.2],
        [2, 4],
        &device,
    );
    let t = logits(
        &[1.5, -0.5, 0.3, -1.0, 0.4, 2.2, -0.7, 0.9],
        [2, 4],
        &device,
    );
    let y = labels(&[2, 1], &device);

    // Equal teacher and student logits: both terms vanish, whatever T.
    for temperature in [1.0, 4.0] {
        let tc = scalar(tckd(s.clone(), s.clone(), y.clone(), temperature));
        let nc = scalar(nckd(s.clone(), s.clone(), y.clone(), temperature));
        assert!(
            tc.abs() < 1e-6 && nc.abs() < 1e-6,
            "T={temperature}: {tc} {nc}"
        );
    }

    // Shifting the non-target logits of both by constants per row changes neither p_g's split
    // nor p̂: only the gt logit moves TCKD; NCKD ignores the gt logit entirely.
    let moved_gt = logits(
        &[0.5, -1.0, 5.0, 0.1, -0.3, -2.0, -1.5, 1.2],
        [2, 4],
        &device,
    );
    let base = scalar(nckd(s.clone(), t.clone(), y.clone(), 4.0));
    let moved = scalar(nckd(moved_gt, t.clone(), y.clone(), 4.0));
    assert!(
        (base - moved).abs() < 1e-5 * base.abs().max(1.0),
        "{base} vs {moved}"
    );

    // Two classes: NCKD is 0 and TCKD is exactly Hinton's T²·KL.
    let s2 = logits(&[0.3, -1.2, 2.0, 0.5], [2, 2], &device);
    let t2 = logits(&[1.1, 0.4, -0.5, 1.5], [2, 2], &device);
    let y2 = labels(&[0, 1], &device);
    let temperature = 3.0;
    let kd = scalar(soft_kl(s2.clone(), t2.clone(), temperature)) * 9.0;
    let tc = scalar(tckd(s2.clone(), t2.clone(), y2.clone(), temperature));
    assert!((kd - tc).abs() < 1e-5 * kd.abs(), "KD {kd} vs TCKD {tc}");
    assert!(scalar(nckd(s2, t2, y2, temperature)).abs() < 1e-6);

    // The paper's decomposition (one sample): T²·KL = TCKD + (1 - p^t_g)·NCKD.
    let s1 = logits(&[0.5, -1.0, 2.0, 0.1], [1, 4], &device);
    let t1 = logits(&[1.5, -0.5, 0.3, -1.0], [1, 4], &device);
    let y1 = labels(&[2], &device);
    let temperature = 2.0f64;
    let zt: Vec<f64> = [1.5f64, -0.5, 0.3, -1.0]
        .iter()
        .map(|v| (v / temperature).exp())
        .collect();
    let p_t_gt = zt[2] / zt.iter().sum::<f64>();
    let kd = scalar(soft_kl(s1.clone(), t1.clone(), temperature)) as f64 * temperature.powi(2);
    let tc = scalar(tckd(s1.clone(), t1.clone(), y1.clone(), temperature)) as f64;
    let nc = scalar(nckd(s1, t1, y1, temperature)) as f64;
    let recomposed = tc + (1.0 - p_t_gt) * nc;
    assert!(
        (kd - recomposed).abs() < 1e-5 * kd,
        "KD {kd} vs {recomposed}"
    );

    // beta = 0 leaves alpha·TCKD; alpha = 0 leaves beta·NCKD; the CE is the plain label CE.
    let tc = scalar(tckd(s.clone(), t.clone(), y.clone(), 4.0));
    let nc = scalar(nckd(s.clone(), t.clone(), y.clone(), 4.0));
    let ce = scalar(cross_entropy(s.clone(), y.clone(), 0.0));
    let only_t = dkd(2.0, 0.0, 4.0, 0).forward(s.clone(), t.clone(), y.clone(), 0.0, 1);
    assert!((scalar(only_t.soft) - 2.0 * tc).abs() < 1e-5 * tc.max(1.0));
    assert!((scalar(only_t.hard) - ce).abs() < 1e-6);
    let only_n = dkd(0.0, 8.0, 4.0, 0).forward(s.clone(), t.clone(), y.clone(), 0.0, 1);
    assert!((scalar(only_n.total) - (ce + 8.0 * nc)).abs() < 1e-5 * (ce + 8.0 * nc));
}

#[test]
fn dkd_warm_up_scales_the_distillation_term() {
    assert_eq!(dkd_warmup(10, 20), 0.5);
    assert_eq!(dkd_warmup(1, 20), 0.05);
    assert_eq!(dkd_warmup(20, 20), 1.0);
    assert_eq!(dkd_warmup(35, 20), 1.0);
    assert_eq!(dkd_warmup(1, 0), 1.0);

    let device = Device::flex();
    let s = logits(&[0.5, -1.0, 2.0, 0.1, -0.3, 0.8], [2, 3], &device);
    let t = logits(&[1.5, -0.5, 0.3, -1.0, 0.4, 2.2], [2, 3], &device);
    let y = labels(&[0, 2], &device);
    let dkd_term = |loss: DistillLoss, epoch: usize| {
        let parts = loss.forward(s.clone(), t.clone(), y.clone(), 0.0, epoch);
        (scalar(parts.total) - scalar(parts.hard), scalar(parts.soft))
    };
    let (full, soft) = dkd_term(dkd(1.0, 8.0, 4.0, 0), 1);
    assert!(
        (full - soft).abs() < 1e-5 * soft,
        "no warm-up: {full} vs {soft}"
    );
    let (half, soft_half) = dkd_term(dkd(1.0, 8.0, 4.0, 20), 10);
    assert!(
        (half - 0.5 * full).abs() < 1e-5 * full,
        "{half} vs {full} / 2"
    );
    assert_eq!(soft_half, soft, "parts.soft is before the warm-up factor");
    let (done, _) = dkd_term(dkd(1.0, 8.0, 4.0, 20), 20);
    assert!((done - full).abs() < 1e-5 * full);
}

#[test]
fn dkd_stays_finite_on_extreme_logits() {
    let ad = Device::flex().autodiff();
    let s = logits(&[1000.0, -1000.0, 0.0, 0.0, 50.0, -80.0], [2, 3], &ad).require_grad();
    let t = logits(&[-1000.0, 1000.0, 500.0, -500.0, 0.0, 90.0], [2, 3], &ad);
    let y = labels(&[1, 0], &ad);
    for temperature in [1.0, 4.0] {
        let total = dkd(1.0, 8.0, temperature, 0)
            .forward(s.clone(), t.clone(), y.clone(), 0.0, 1)
            .total;
        let grads = total.backward();
        let value = scalar(total);
        assert!(
            value.is_finite() && value > 100.0,
            "T={temperature}: {value}"
        );
        let grad: Vec<f32> = s
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            grad.iter().all(|g| g.is_finite()),
            "T={temperature}: {grad:?}"
        );
    }
}

#[test]
fn dkd_hyper_parameters_are_validated() {
    let good = dkd(1.0, 8.0, 4.0, 20);
    assert!(good.validate().is_ok());
    assert_eq!(good.alpha(), 1.0, "alpha() is the CE weight");
    let with = |ce_weight: f64, alpha: f64, beta: f64, temperature: f64| DistillLoss::Dkd {
        ce_weight,
        alpha,
        beta,
        temperature,
        warmup_epochs: 0,
    };
    assert_eq!(with(0.25, 1.0, 8.0, 4.0).alpha(), 0.25);
    // Weights above 1 are fine for DKD (beta = 8 is the default).
    assert!(with(2.0, 3.0, 8.0, 0.5).validate().is_ok());
    assert!(with(0.0, 0.0, 0.0, 1.0).validate().is_ok());
    let err = |loss: DistillLoss| loss.validate().unwrap_err();
    assert_eq!(
        err(with(1.0, 1.0, -1.0, 4.0)),
        "dkd beta must be a finite number >= 0, got -1"
    );
    assert!(err(with(1.0, f64::NAN, 8.0, 4.0)).contains("dkd alpha"));
    assert!(err(with(1.0, -0.5, 8.0, 4.0)).contains("dkd alpha"));
    assert!(err(with(f64::INFINITY, 1.0, 8.0, 4.0)).contains("dkd ce_weight"));
    assert!(err(with(-1.0, 1.0, 8.0, 4.0)).contains("dkd ce_weight"));
    assert!(err(with(1.0, 1.0, f64::INFINITY, 4.0)).contains("dkd beta"));
    assert!(err(with(1.0, 1.0, 8.0, 0.0)).contains("dkd temperature"));
    assert!(err(with(1.0, 1.0, 8.0, -2.0)).contains("dkd temperature"));
    assert!(err(with(1.0, 1.0, 8.0, f64::NAN)).contains("dkd temperature"));
}

#[test]
fn dkd_config_round_trips_through_serde() {
    let json = r#"{"kind":"dkd","ce_weight":1.0,"alpha":1.0,"beta":8.0,"temperature":4.0,"warmup_epochs":20}"#;
    let loss: DistillLoss = serde_json::from_str(json).unwrap();
    assert_eq!(loss, dkd(1.0, 8.0, 4.0, 20));
    let back: DistillLoss = serde_json::from_str(&serde_json::to_string(&loss).unwrap()).unwrap();
    assert_eq!(back, loss);
    assert!(serde_json::from_str::<DistillLoss>(
        r#"{"kind":"dkd","ce_weight":1.0,"alpha":1.0,"beta":8.0,"temperature":4.0,"warmup_epochs":20,"gamma":1}"#
    )
    .is_err());
}
