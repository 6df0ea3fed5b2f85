//! The feature distillation methods against their reference code run in PyTorch (float64):
//! tests/fixtures/methods/reference.json, made by scripts/feature_methods_reference.py. Losses and
//! the gradients on the student's side (student features, regressor and embedding heads) agree
//! within 1e-5; CRD runs two steps with a fixed bank and fixed negatives, so the normalising
//! constants and the memory updates are checked too.

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::methods::{at, crd, fitnets, rkd};
use distill::models::spec::Shape;
use distill::models::taps::Tap;
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/methods/reference.json")).unwrap()
}

fn values(entry: &Value) -> Vec<f32> {
    entry["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn tensor<const D: usize>(entry: &Value, device: &Device) -> Tensor<D> {
    let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).unwrap();
    Tensor::from_data(TensorData::new(values(entry), shape), device)
}

fn data<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Every element within 1e-5 of the reference, relative to the reference's largest magnitude
/// (at least 1).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: got {g}, reference {w}"
        );
    }
}

fn assert_scalar(got: Tensor<1>, want: &Value, what: &str) {
    assert_close(&data(got), &[want.as_f64().unwrap() as f32], what);
}

#[test]
fn attention_transfer_matches_mdistiller() {
    let case = &fixture()["at"];
    let ad = Device::flex().autodiff();
    let p = case["p"].as_f64().unwrap();
    let student: Vec<Tensor<4>> = case["student"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| tensor::<4>(e, &ad).require_grad())
        .collect();
    let teacher_maps: Vec<Tensor<2>> = case["teacher"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| at::attention_map(tensor::<4>(e, &ad), p))
        .collect();
    let loss = at::attention_loss(&student, &teacher_maps, p);
    assert_scalar(loss.clone(), &case["loss"], "AT loss");
    let grads = loss.backward();
    for (i, (s, want)) in student
        .iter()
        .zip(case["student_grads"].as_array().unwrap())
        .enumerate()
    {
        assert_close(
            &data(s.grad(&grads).unwrap()),
            &values(want),
            &format!("dAT/df_s{i}"),
        );
    }
}

#[test]
fn attention_maps_are_unit_vectors_and_zero_maps_stay_zero() {
    let device = Device::flex();
    // One example with activations, one all zero: the first map has norm 1, the second is 0
    // (and its gradient finite).
    let mut v = vec![0.0f32; 2 * 2 * 2 * 2];
    v[..8].copy_from_slice(&[1.0, -2.0, 0.5, 3.0, 0.0, 1.0, -1.0, 2.0]);
    let map = at::attention_map(
        Tensor::from_data(TensorData::new(v.clone(), [2, 2, 2, 2]), &device),
        2.0,
    );
    let m = data(map);
    // Hand computation: channel means of squares = [0.5, 2.5, 0.625, 6.5].
    let raw = [0.5f32, 2.5, 0.625, 6.5];
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (got, want) in m[..4].iter().zip(raw.iter().map(|x| x / norm)) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!(m[4..].iter().all(|&x| x == 0.0));
    let ad = device.autodiff();
    let x = Tensor::<4>::from_data(TensorData::new(v, [2, 2, 2, 2]), &ad).require_grad();
    let grads = at::attention_map(x.clone(), 2.0).sum().backward();
    assert!(data(x.grad(&grads).unwrap()).iter().all(|g| g.is_finite()));
}

#[test]
fn rkd_matches_mdistiller() {
    let case = &fixture()["rkd"];
    let ad = Device::flex().autodiff();
    let student = tensor::<2>(&case["student"], &ad).require_grad();
    let teacher = tensor::<2>(&case["teacher"], &ad);
    let parts = rkd::rkd_parts(student.clone(), teacher);
    assert_scalar(parts.distance.clone(), &case["distance"], "RKD distance");
    assert_scalar(parts.angle.clone(), &case["angle"], "RKD angle");
    let total = parts.distance.mul_scalar(25.0) + parts.angle.mul_scalar(50.0);
    assert_scalar(total.clone(), &case["total"], "RKD total");
    let grads = total.backward();
    assert_close(
        &data(student.grad(&grads).unwrap()),
        &values(&case["student_grad"]),
        "dRKD/ds",
    );
}

fn image_tap(name: &str, shape: [usize; 3]) -> Tap {
    Tap {
        name: name.into(),
        layer: 0,
        shape: Shape::Image(shape),
    }
}

#[test]
fn fitnets_matches_mdistiller() {
    let case = &fixture()["fitnets"];
    let ad = Device::flex().autodiff();
    let mut regressor = fitnets::Regressor::init(
        &image_tap("stage2", [3, 5, 5]),
        &image_tap("stage2", [6, 5, 5]),
        &ad,
    )
    .unwrap();
    regressor.conv.weight = Param::from_tensor(tensor::<4>(&case["conv_weight"], &ad));
    regressor.conv.bias = Some(Param::from_tensor(tensor::<1>(&case["conv_bias"], &ad)));
    regressor.norm.gamma = Param::from_tensor(tensor::<1>(&case["bn_gamma"], &ad));
    regressor.norm.beta = Param::from_tensor(tensor::<1>(&case["bn_beta"], &ad));
    let student = tensor::<4>(&case["student"], &ad).require_grad();
    let teacher = tensor::<4>(&case["teacher"], &ad);
    let loss = fitnets::hint_loss(regressor.forward(student.clone()), teacher);
    assert_scalar(loss.clone(), &case["loss"], "hint loss");
    let grads = loss.backward();
    assert_close(
        &data(student.grad(&grads).unwrap()),
        &values(&case["student_grad"]),
        "dhint/ds",
    );
    let checks: [(Tensor<1>, &str); 3] = [
        (
            regressor.conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
            "conv_bias_grad",
        ),
        (regressor.norm.gamma.grad(&grads).unwrap(), "bn_gamma_grad"),
        (regressor.norm.beta.grad(&grads).unwrap(), "bn_beta_grad"),
    ];
    for (got, key) in checks {
        assert_close(&data(got), &values(&case[key]), key);
    }
    assert_close(
        &data(regressor.conv.weight.grad(&grads).unwrap()),
        &values(&case["conv_weight_grad"]),
        "conv_weight_grad",
    );
}

#[test]
fn fitnets_regressor_maps_only_equal_or_halved_sizes() {
    let device = Device::flex();
    let half = fitnets::Regressor::init(
        &image_tap("stage1", [16, 32, 32]),
        &image_tap("stage2", [64, 16, 16]),
        &device,
    )
    .unwrap();
    let x = Tensor::<4>::zeros([2, 16, 32, 32], &device);
    assert_eq!(half.forward(x).dims(), [2, 64, 16, 16]);
    let err = fitnets::Regressor::init(
        &image_tap("stage3", [64, 8, 8]),
        &image_tap("stage1", [16, 32, 32]),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stage3 (64, 8, 8)") && err.contains("stage1 (16, 32, 32)"),
        "{err}"
    );
}

/// PyTorch `[out, in]` weights as burn's `[in, out]`.
fn linear_weight(entry: &Value, device: &Device) -> Tensor<2> {
    tensor::<2>(entry, device).transpose()
}

#[test]
fn crd_matches_repdistiller_over_two_steps() {
    let case = &fixture()["crd"];
    let ad = Device::flex().autodiff();
    let n = case["examples"].as_u64().unwrap() as usize;
    let dim = case["feat_dim"].as_u64().unwrap() as usize;
    let temperature = case["temperature"].as_f64().unwrap();
    let momentum = case["momentum"].as_f64().unwrap();
    let mut memory = crd::Memory {
        examples: n,
        feat_dim: dim,
        student: values(&case["student_memory"]),
        teacher: values(&case["teacher_memory"]),
        z_student: None,
        z_teacher: None,
    };
    let mut embeds = crd::Embeds::init(
        &Tap {
            name: "embedding".into(),
            layer: 0,
            shape: Shape::Flat(5),
        },
        &Tap {
            name: "embedding".into(),
            layer: 0,
            shape: Shape::Flat(6),
        },
        dim,
        &ad,
    );
    embeds.student.weight = Param::from_tensor(linear_weight(&case["embed_student_weight"], &ad));
    embeds.student.bias = Some(Param::from_tensor(tensor::<1>(
        &case["embed_student_bias"],
        &ad,
    )));
    embeds.teacher.weight = Param::from_tensor(linear_weight(&case["embed_teacher_weight"], &ad));
    embeds.teacher.bias = Some(Param::from_tensor(tensor::<1>(
        &case["embed_teacher_bias"],
        &ad,
    )));
    for (k, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let what = |s: &str| format!("step {k}: {s}");
        let anchors: Vec<usize> = serde_json::from_value(step["anchors"].clone()).unwrap();
        let candidates: Vec<Vec<i64>> = serde_json::from_value(step["candidates"].clone()).unwrap();
        let width = candidates[0].len();
        let ids: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(candidates.concat(), [anchors.len(), width]),
            &ad,
        );
        let student = tensor::<2>(&step["student"], &ad).require_grad();
        let teacher = tensor::<2>(&step["teacher"], &ad);
        let v_student = crd::l2_normalize(embeds.student.forward(student.clone()));
        let v_teacher = crd::l2_normalize(embeds.teacher.forward(teacher));
        let parts = crd::crd_parts(
            &mut memory,
            v_student.clone(),
            v_teacher.clone(),
            ids,
            temperature,
        );
        let z = |v: Option<f64>, key: &str| {
            let want = step[key].as_f64().unwrap();
            assert!(
                (v.unwrap() - want).abs() <= 1e-5 * want.abs(),
                "{}: {v:?} vs {want}",
                what(key)
            );
        };
        z(memory.z_student, "z_student");
        z(memory.z_teacher, "z_teacher");
        assert_scalar(
            parts.student.clone(),
            &step["student_loss"],
            &what("student NCE"),
        );
        assert_scalar(
            parts.teacher.clone(),
            &step["teacher_loss"],
            &what("teacher NCE"),
        );
        let grads = (parts.student + parts.teacher).backward();
        assert_close(
            &data(student.grad(&grads).unwrap()),
            &values(&step["student_grad"]),
            &what("dCRD/df_s"),
        );
        for (param, key) in [
            (&embeds.student.weight, "embed_student_weight_grad"),
            (&embeds.teacher.weight, "embed_teacher_weight_grad"),
        ] {
            assert_close(
                &data(param.grad(&grads).unwrap().transpose()),
                &values(&step[key]),
                &what(key),
            );
        }
        for (param, key) in [
            (&embeds.student.bias, "embed_student_bias_grad"),
            (&embeds.teacher.bias, "embed_teacher_bias_grad"),
        ] {
            assert_close(
                &data(param.as_ref().unwrap().grad(&grads).unwrap()),
                &values(&step[key]),
                &what(key),
            );
        }
        memory.update(
            &anchors,
            &data(v_student.detach()),
            &data(v_teacher.detach()),
            momentum,
        );
        assert_close(
            &memory.student,
            &values(&step["student_memory_after"]),
            &what("M_s"),
        );
        assert_close(
            &memory.teacher,
            &values(&step["teacher_memory_after"]),
            &what("M_t"),
        );
    }
}

#[test]
fn crd_negatives_come_from_other_classes_uniformly() {
    use rand::SeedableRng;
    let labels: Vec<usize> = (0..30).map(|i| i % 3).collect();
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(1);
    let ids = crd::sample_candidates(&[0, 4], &labels, 3000, &mut rng);
    assert_eq!(ids.len(), 2 * 3001);
    for (row, &anchor) in [0usize, 4].iter().enumerate() {
        let row = &ids[row * 3001..(row + 1) * 3001];
        assert_eq!(row[0] as usize, anchor);
        let mut counts = [0usize; 30];
        for &j in &row[1..] {
            assert_ne!(
                labels[j as usize], labels[anchor],
                "a negative of the anchor's class"
            );
            counts[j as usize] += 1;
        }
        // 20 eligible examples, 150 draws each expected: every one drawn, none far off.
        for (j, &c) in counts.iter().enumerate() {
            if labels[j] != labels[anchor] {
                assert!((90..=210).contains(&c), "example {j} drawn {c} times");
            }
        }
    }
}

#[test]
fn method_settings_are_validated() {
    let bad = [
        (
            "kind = \"at\"\nbeta = -1.0",
            "at beta must be a finite number >= 0",
        ),
        ("kind = \"rkd\"\nangle_weight = nan", "rkd angle_weight"),
        ("kind = \"crd\"\ntemperature = 0.0", "crd temperature"),
        ("kind = \"crd\"\nmomentum = 1.0", "crd momentum"),
        ("kind = \"fitnets\"\nweight = inf", "fitnets weight"),
    ];
    for (text, expected) in bad {
        let method: distill::methods::FeatureMethod = toml::from_str(text).unwrap();
        let err = method.validate().unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
    let crd = crd::Crd::default();
    let err = crd.check_bank(10_000).unwrap_err();
    assert!(
        err.contains("16384") && err.contains("10000 examples"),
        "{err}"
    );
    assert!(crd.check_bank(50_000).is_ok());
}
