//! The training and distillation engine on the embedded (real Fashion-MNIST) data: accuracy well
//! above chance, exact resume, a frozen teacher, the teacher-logit cache and bad input.

use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
mod common;

use common::{config, embedded, job, serial};
use distill::distill::{cache_path, cached_logits, CacheLocation, Teacher, TeacherLogits};
use distill::losses::DistillLoss;
use distill::models::{zoo, LayerSpec, ModelSpec, Network};
use distill::train::{fit, Objective, TrainConfig};

/// A teacher small enough for CI but clearly stronger than the reference student.
fn small_teacher() -> ModelSpec {
    zoo::get("teacher-small").unwrap()
}

/// Collects every float parameter's values, in visiting order.
struct Snapshot(Vec<(ParamId, Vec<f32>)>);

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((
            param.id,
            param.val().into_data().try_to_vec::<f32>().unwrap(),
        ));
    }
}

fn snapshot(network: &Network) -> Vec<(ParamId, Vec<f32>)> {
    let mut s = Snapshot(Vec::new());
    network.visit(&mut s);
    s.0
}

#[test]
fn teacher_scratch_and_distilled_students_learn_and_resume_exactly() {
    let _serial = serial();
    let device = Device::flex();
    let data = embedded();
    let dir = tempfile::tempdir().unwrap();
    let train = data.train.clone();

    // Teacher.
    let teacher_spec = small_teacher();
    let teacher_dir = dir.path().join("teacher");
    let cfg = config(2);
    let teacher_run = fit(
        job(
            &teacher_spec,
            &data,
            &train,
            &cfg,
            Objective::Labels,
            &teacher_dir,
            false,
        ),
        &device,
    )
    .unwrap();
    let teacher_acc = teacher_run.history.last().unwrap().val_accuracy;
    assert!(teacher_acc > 0.6, "teacher accuracy {teacher_acc}");
    assert!(teacher_dir.join("history.csv").is_file() && teacher_dir.join("model.bpk").is_file());

    // Student from scratch.
    let student = zoo::get("student").unwrap();
    let scratch = fit(
        job(
            &student,
            &data,
            &train,
            &cfg,
            Objective::Labels,
            &dir.path().join("scratch"),
            false,
        ),
        &device,
    )
    .unwrap();
    let scratch_acc = scratch.history.last().unwrap().val_accuracy;
    assert!(scratch_acc > 0.3, "scratch student accuracy {scratch_acc}");

    // Distilled student, teacher logits from the cache.
    let teacher = Teacher::load(&teacher_dir, &device).unwrap();
    let before = snapshot(teacher.engine.network().expect("native teacher"));
    let logits = cached_logits(
        &teacher,
        &train,
        CacheLocation::Dir(&dir.path().join("cache")),
        &device,
        false,
    )
    .unwrap();
    let loss = DistillLoss::Kd {
        alpha: 0.1,
        temperature: 10.0,
        t2_scaling: true,
    };
    let distilled_dir = dir.path().join("distilled");
    let distilled = fit(
        job(
            &student,
            &data,
            &train,
            &cfg,
            Objective::Distill {
                loss,
                teacher: &logits,
                hidden: None,
            },
            &distilled_dir,
            false,
        ),
        &device,
    )
    .unwrap();
    let distilled_acc = distilled.history.last().unwrap().val_accuracy;
    assert!(
        distilled_acc > 0.3,
        "distilled student accuracy {distilled_acc}"
    );

    // Live teacher for one epoch: its weights must stay bit-identical.
    let live = TeacherLogits::Live(teacher);
    let cfg1 = config(1);
    fit(
        job(
            &student,
            &data,
            &train,
            &cfg1,
            Objective::Distill {
                loss,
                teacher: &live,
                hidden: None,
            },
            &dir.path().join("live"),
            false,
        ),
        &device,
    )
    .unwrap();
    let TeacherLogits::Live(teacher) = live else {
        unreachable!()
    };
    assert_eq!(
        before,
        snapshot(teacher.engine.network().expect("native teacher")),
        "the teacher's weights changed during distillation"
    );

    // Resume: drop the last checkpoint (as if killed during epoch 2) and continue.
    let final_weights = fs::read(distilled_dir.join("model.bpk")).unwrap();
    let history = fs::read_to_string(distilled_dir.join("history.json")).unwrap();
    // Corrupt the newest checkpoint (as a crash or a bad disk would): resume must notice it from
    // the manifest and continue from the previous one.
    let newest = distilled_dir.join("checkpoints/epoch-0002/model.bpk");
    let mut bytes = fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&newest, bytes).unwrap();
    let refused = fit(
        job(
            &student,
            &data,
            &train,
            &cfg,
            Objective::Distill {
                loss,
                teacher: &logits,
                hidden: None,
            },
            &distilled_dir,
            false,
        ),
        &device,
    );
    assert!(refused.unwrap_err().to_string().contains("--resume"));
    fit(
        job(
            &student,
            &data,
            &train,
            &cfg,
            Objective::Distill {
                loss,
                teacher: &logits,
                hidden: None,
            },
            &distilled_dir,
            true,
        ),
        &device,
    )
    .unwrap();
    assert_eq!(
        fs::read(distilled_dir.join("model.bpk")).unwrap(),
        final_weights,
        "resumed weights differ"
    );
    let resumed_history: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(distilled_dir.join("history.json")).unwrap())
            .unwrap();
    let original_history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    for (a, b) in resumed_history.iter().zip(&original_history) {
        assert_eq!(a["val_accuracy"], b["val_accuracy"]);
        assert_eq!(a["loss"], b["loss"]);
    }
    // Resuming with other settings is refused.
    let other = TrainConfig {
        seed: 1,
        ..config(2)
    };
    let err = fit(
        job(
            &student,
            &data,
            &train,
            &other,
            Objective::Labels,
            &distilled_dir,
            true,
        ),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot resume"), "{err}");
}

#[test]
fn corrupt_checkpoint_files_are_named() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let spec = zoo::get("student").unwrap();
    let net = Network::init(&spec, [1, 28, 28], 0, &device).unwrap();
    let meta = distill::models::checkpoint::ModelMeta {
        format: 1,
        input: [1, 28, 28],
        classes: vec!["c".into(); 10],
        params: 34_842,
    };
    distill::models::checkpoint::save(dir.path(), &spec, &meta, &net).unwrap();
    assert!(distill::models::checkpoint::load(dir.path(), &device).is_ok());
    let weights = dir.path().join("model.bpk");
    let mut bytes = fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&weights, bytes).unwrap();
    let err = distill::models::checkpoint::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.bpk is corrupt"), "{err}");
    fs::remove_file(&weights).unwrap();
    let err = distill::models::checkpoint::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.bpk is missing"), "{err}");
}

#[test]
fn only_student_parameters_receive_gradients() {
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    let data = embedded();
    let subset = data.train.subset(&(0..32).collect::<Vec<_>>());
    let teacher_net = Network::init(&small_teacher(), [1, 28, 28], 1, &ad).unwrap();
    let teacher = Teacher::from_network(&teacher_net, [1, 28, 28], 10);
    let student = Network::init(&zoo::get("student").unwrap(), [1, 28, 28], 2, &ad).unwrap();
    let indices: Vec<usize> = (0..32).collect();
    let (images, labels) = subset.batch(&indices, &ad, None);
    let live = TeacherLogits::Live(teacher);
    let teacher_logits = live.logits(&indices, images.clone(), &plain).unwrap();
    assert!(
        !teacher_logits.is_autodiff(),
        "teacher logits must not be tracked"
    );
    // Pure soft loss (alpha = 0): every student parameter still gets a gradient through the KL term,
    // and none reaches the teacher.
    for alpha in [0.0, 1.0] {
        let loss = DistillLoss::Kd {
            alpha,
            temperature: 4.0,
            t2_scaling: true,
        };
        let total = loss
            .forward(
                student.forward(images.clone()),
                teacher_logits.clone().autodiff(),
                labels.clone(),
                0.0,
                1,
            )
            .total;
        let grads = total.backward();
        let student_grads = GradientsParams::from_grads(grads, &student);
        let ids: Vec<ParamId> = snapshot(&student).into_iter().map(|(id, _)| id).collect();
        assert_eq!(
            student_grads.len(),
            ids.len(),
            "alpha {alpha}: every student tensor gets a gradient"
        );
        let TeacherLogits::Live(teacher) = &live else {
            unreachable!()
        };
        for (id, _) in snapshot(teacher.engine.network().expect("native teacher")) {
            assert!(student_grads.get::<1>(id).is_none() && student_grads.get::<2>(id).is_none());
        }
    }
}

#[test]
fn logit_cache_matches_live_teacher_and_rejects_foreign_files() {
    let device = Device::flex();
    let data = embedded();
    let train = data.train.subset(&(0..500).collect::<Vec<_>>());
    let net = Network::init(&small_teacher(), [1, 28, 28], 5, &device).unwrap();
    let teacher = Teacher::from_network(&net, [1, 28, 28], 10);
    let dir = tempfile::tempdir().unwrap();
    let TeacherLogits::Cached { values, .. } = cached_logits(
        &teacher,
        &train,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap() else {
        panic!("expected cached logits")
    };
    let path = cache_path(dir.path(), &teacher.hash, &train.fingerprint());
    assert!(path.is_file());
    // Cached rows equal live logits.
    let live: Vec<f32> = teacher
        .logits_for(&train, &[0, 17, 499], &device)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (k, &i) in [0usize, 17, 499].iter().enumerate() {
        for c in 0..10 {
            assert!((values[i * 10 + c] - live[k * 10 + c]).abs() <= 1e-5);
        }
    }
    // A second call reads the file (same values).
    let TeacherLogits::Cached { values: again, .. } = cached_logits(
        &teacher,
        &train,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(values, again);
    // A corrupted file is detected and replaced, not trusted.
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();
    let TeacherLogits::Cached {
        values: recomputed, ..
    } = cached_logits(
        &teacher,
        &train,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap()
    else {
        panic!()
    };
    assert_eq!(values, recomputed);
    // A cache written for another teacher, placed under this teacher's name, is rejected.
    let other_net = Network::init(&small_teacher(), [1, 28, 28], 6, &device).unwrap();
    let other = Teacher::from_network(&other_net, [1, 28, 28], 10);
    let _ = cached_logits(
        &other,
        &train,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap();
    fs::copy(
        cache_path(dir.path(), &other.hash, &train.fingerprint()),
        &path,
    )
    .unwrap();
    let TeacherLogits::Cached {
        values: checked, ..
    } = cached_logits(
        &teacher,
        &train,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap()
    else {
        panic!()
    };
    assert_eq!(values, checked);
}

#[test]
fn bad_settings_fail_before_training() {
    let device = Device::flex();
    let data = embedded();
    let dir = tempfile::tempdir().unwrap();
    let student = zoo::get("student").unwrap();
    let run = |cfg: &TrainConfig, spec: &ModelSpec| {
        fit(
            job(
                spec,
                &data,
                &data.train,
                cfg,
                Objective::Labels,
                &dir.path().join("x"),
                false,
            ),
            &device,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(run(
        &TrainConfig {
            epochs: 0,
            ..config(1)
        },
        &student
    )
    .contains("epochs"));
    assert!(run(
        &TrainConfig {
            batch_size: 0,
            ..config(1)
        },
        &student
    )
    .contains("batch size"));
    assert!(run(
        &TrainConfig {
            batch_size: 100_000,
            ..config(1)
        },
        &student
    )
    .contains("larger than the training split"));
    let mut five = student.clone();
    *five.layers.last_mut().unwrap() = LayerSpec::dense(5, false);
    assert!(run(&config(1), &five).contains("5 outputs but the dataset has 10 classes"));
    assert!(!dir.path().join("x").join("checkpoints").exists());

    let net = Network::init(&small_teacher(), [1, 28, 28], 5, &device).unwrap();
    let logits = TeacherLogits::Live(Teacher::from_network(&net, [1, 28, 28], 10));
    let bad_alpha = DistillLoss::Kd {
        alpha: 1.5,
        temperature: 10.0,
        t2_scaling: false,
    };
    let err = fit(
        job(
            &student,
            &data,
            &data.train,
            &config(1),
            Objective::Distill {
                loss: bad_alpha,
                teacher: &logits,
                hidden: None,
            },
            dir.path(),
            false,
        ),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("alpha must be in [0, 1]"), "{err}");
    let wrong_shape = TeacherLogits::Live(Teacher::from_network(&net, [3, 32, 32], 10));
    let loss = DistillLoss::Kd {
        alpha: 0.5,
        temperature: 10.0,
        t2_scaling: false,
    };
    let err = fit(
        job(
            &student,
            &data,
            &data.train,
            &config(1),
            Objective::Distill {
                loss,
                teacher: &wrong_shape,
                hidden: None,
            },
            dir.path(),
            false,
        ),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("[3, 32, 32]"), "{err}");
}

#[test]
fn a_diverging_loss_stops_with_epoch_and_step() {
    let _serial = serial();
    let device = Device::flex();
    let data = embedded();
    let dir = tempfile::tempdir().unwrap();
    let student = zoo::get("student").unwrap();
    let mut cfg = config(1);
    cfg.optimizer.learning_rate = 1e30; // weights overflow f32 within a few steps
    let train = data.train.subset(&(0..2000).collect::<Vec<_>>());
    let err = fit(
        job(
            &student,
            &data,
            &train,
            &cfg,
            Objective::Labels,
            dir.path(),
            false,
        ),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at epoch 1, step"), "{err}");
    assert!(err.contains("lower learning rate"), "{err}");
    assert!(fs::read_to_string(dir.path().join("train.log"))
        .unwrap()
        .contains("the loss became"));
}

#[test]
fn cosine_schedule_decays_to_zero() {
    let constant = distill::train::OptimizerConfig::default();
    assert_eq!(constant.learning_rate_at(500, 1000), 1e-3);
    let cosine = distill::train::OptimizerConfig {
        cosine_schedule: true,
        ..Default::default()
    };
    assert_eq!(cosine.learning_rate_at(0, 1000), 1e-3);
    assert!((cosine.learning_rate_at(500, 1000) - 5e-4).abs() < 1e-12);
    assert!(
        (cosine.learning_rate_at(250, 1000) - 1e-3 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0)
            .abs()
            < 1e-12
    );
    assert!(cosine.learning_rate_at(1000, 1000) < 1e-15);
    // a linear warm-up over the first 10% of the steps, then the cosine over the other 90%
    let warm = distill::train::OptimizerConfig {
        cosine_schedule: true,
        warmup_fraction: 0.1,
        ..Default::default()
    };
    assert!((warm.learning_rate_at(0, 1000) - 1e-5).abs() < 1e-15);
    assert!((warm.learning_rate_at(49, 1000) - 5e-4).abs() < 1e-15);
    assert_eq!(warm.learning_rate_at(100, 1000), 1e-3);
    assert!((warm.learning_rate_at(550, 1000) - 5e-4).abs() < 1e-12);
    assert!(warm.learning_rate_at(1000, 1000) < 1e-15);
    let flat = distill::train::OptimizerConfig {
        warmup_fraction: 0.5,
        ..Default::default()
    };
    assert!((flat.learning_rate_at(99, 400) - 5e-4).abs() < 1e-15);
    assert_eq!(flat.learning_rate_at(300, 400), 1e-3);
}

#[test]
fn opt_in_extras_train_with_a_live_teacher() {
    let _serial = serial();
    let device = Device::flex();
    let data = embedded();
    let dir = tempfile::tempdir().unwrap();
    let train = data.train.subset(&(0..1024).collect::<Vec<_>>());
    let mut cfg = config(2);
    cfg.optimizer.cosine_schedule = true;
    cfg.optimizer.weight_decay = 1e-4;
    cfg.label_smoothing = 0.1;
    cfg.augmentation = Some(distill::data::Augmentation {
        crop_padding: 4,
        horizontal_flip: true,
        ..Default::default()
    });
    let net = Network::init(&small_teacher(), [1, 28, 28], 5, &device).unwrap();
    let live = TeacherLogits::Live(Teacher::from_network(&net, [1, 28, 28], 10));
    let loss = DistillLoss::Mse { alpha: 0.5 };
    let student = zoo::get("student").unwrap();
    let run = |out: &Path| {
        fit(
            job(
                &student,
                &data,
                &train,
                &cfg,
                Objective::Distill {
                    loss,
                    teacher: &live,
                    hidden: None,
                },
                out,
                false,
            ),
            &device,
        )
        .unwrap()
    };
    let a = run(&dir.path().join("a"));
    assert_eq!(a.history.len(), 2);
    assert!(a.history.iter().all(|e| e.loss.is_finite()));
    // The last step of a cosine schedule runs at a tiny learning rate.
    assert!(
        a.history[1].learning_rate < 1e-5,
        "{}",
        a.history[1].learning_rate
    );
    // Augmentation and dropout are seeded: a second run is identical.
    let b = run(&dir.path().join("b"));
    assert_eq!(a.history[1].loss, b.history[1].loss);
    let weights = |run: &str| -> Vec<Vec<f32>> {
        let loaded = distill::models::checkpoint::load(&dir.path().join(run), &device).unwrap();
        snapshot(&loaded.network)
            .into_iter()
            .map(|(_, values)| values)
            .collect()
    };
    // (Compared by value: the files also hold random parameter ids.)
    assert!(
        weights("a") == weights("b"),
        "two runs with one seed gave different weights"
    );
}
