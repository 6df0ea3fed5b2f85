//! The pieces a study that shows distillation paying needs: warm starts, the augmented-view
//! teacher-logit cache (consistent teaching), paired seeds and chained stages.

use std::path::Path;
use std::process::Command;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use distill::data::{view_of, Augmentation, Dataset, Split};
use rand::SeedableRng;
mod common;

use common::{config, embedded, job, serial};
use distill::distill::{view_logits, views_cache_path, CacheLocation, Teacher, TeacherLogits};
use distill::losses::DistillLoss;
use distill::models::{checkpoint, zoo, ModelSpec, Network};
use distill::train::{fit, Objective, TrainConfig, TrainJob};

fn views(k: usize) -> Augmentation {
    Augmentation {
        crop_padding: 3,
        horizontal_flip: true,
        views: Some(k),
        view_seed: 5,
        mixup: None,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn flatten(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Checks that the batch of images 0..64 under `aug` at augmentation seed `seed` shows each
/// image's view as `view_of` names it (`view_batch` of those views), and returns the views and the
/// batch's labels.
fn batch_shows_chosen_views(
    split: &Split,
    aug: &Augmentation,
    seed: u64,
) -> (Vec<usize>, Tensor<1, Int>) {
    let device = Device::flex();
    let indices: Vec<usize> = (0..64).collect();
    let chosen: Vec<usize> = indices
        .iter()
        .map(|&i| view_of(aug, seed, i).unwrap())
        .collect();
    let (batch, labels) = split.batch(&indices, &device, Some((aug, seed)));
    let expected = split.view_batch(&indices, &chosen, aug, &device);
    assert_eq!(
        batch.into_data().try_to_vec::<f32>().unwrap(),
        expected.into_data().try_to_vec::<f32>().unwrap()
    );
    (chosen, labels)
}

/// An untrained teacher-small's logits for every fixed view of `train` under `aug`, in memory.
fn small_teacher_views(train: &Split, aug: &Augmentation) -> TeacherLogits {
    let device = Device::flex();
    let net = Network::init(&zoo::get("teacher-small").unwrap(), [1, 28, 28], 3, &device).unwrap();
    let teacher = Teacher::from_network(&net, [1, 28, 28], 10);
    view_logits(&teacher, train, aug, CacheLocation::Memory, &device, false).unwrap()
}

fn train<'a>(
    spec: &ModelSpec,
    data: &Dataset,
    train: &Split,
    config: &TrainConfig,
    objective: Objective<'a>,
    out: &Path,
    init_from: Option<&Path>,
) -> distill::train::TrainOutcome {
    let job = TrainJob {
        init_from,
        ..job(spec, data, train, config, objective, out, false)
    };
    fit(job, &Device::flex()).unwrap()
}

#[test]
fn warm_start_continues_from_the_saved_weights() {
    let _serial = serial();
    let data = embedded();
    let subset = data.train.subset(&(0..256).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let spec = zoo::get("student").unwrap();
    let config = config(1);
    let first = dir.path().join("first");
    train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Labels,
        &first,
        None,
    );

    // A run warm-started with a vanishing learning rate ends where it started: the saved model.
    let device = Device::flex();
    let probe = data.test.subset(&(0..16).collect::<Vec<_>>());
    let (images, _) = probe.batch(&(0..16).collect::<Vec<_>>(), &device, None);
    let saved = checkpoint::load(&first, &device).unwrap().network;
    let saved_logits = flatten(saved.valid().forward(images.clone()));
    let still = TrainConfig {
        epochs: 1,
        seed: 99,
        optimizer: distill::train::OptimizerConfig {
            learning_rate: 1e-12,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let second = dir.path().join("second");
    let outcome = train(
        &spec,
        &data,
        &subset,
        &still,
        Objective::Labels,
        &second,
        Some(&first),
    );
    let warm_logits = flatten(outcome.network.valid().forward(images.clone()));
    let max_diff = max_abs_diff(&saved_logits, &warm_logits);
    assert!(max_diff < 1e-5, "warm start moved the logits by {max_diff}");

    // The same run from a random initialisation (seed 99) is nowhere near the saved model.
    let cold = dir.path().join("cold");
    let cold_net = train(
        &spec,
        &data,
        &subset,
        &still,
        Objective::Labels,
        &cold,
        None,
    )
    .network;
    let cold_logits = flatten(cold_net.valid().forward(images));
    let cold_diff = max_abs_diff(&saved_logits, &cold_logits);
    assert!(cold_diff > 1e-2, "{cold_diff}");
    let log = std::fs::read_to_string(second.join("train.log")).unwrap();
    assert!(log.contains("warm start from"), "{log}");
}

#[test]
fn warm_start_refuses_another_architecture_naming_the_layer() {
    let _serial = serial();
    let data = embedded();
    let subset = data.train.subset(&(0..128).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let student = zoo::get("student").unwrap();
    let config = config(1);
    let saved = dir.path().join("student");
    train(
        &student,
        &data,
        &subset,
        &config,
        Objective::Labels,
        &saved,
        None,
    );

    let mut wider = student.clone();
    wider.layers[0] = distill::models::LayerSpec::conv(48, 3, 2);
    let err = fit(
        TrainJob {
            spec: &wider,
            classes: &data.classes,
            train: &subset,
            eval: &data.test,
            config: &config,
            objective: Objective::Labels,
            out: &dir.path().join("wider"),
            resume: false,
            init_from: Some(&saved),
            progress: false,
            verbose: false,
        },
        &Device::flex(),
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("layer 0 differs"), "{message}");
    assert!(
        message.contains("\"filters\":48") && message.contains("\"filters\":32"),
        "{message}"
    );

    // Other dropout rates are the same weights: accepted.
    let no_dropout = student.with_dropout_rates(&[0.0, 0.0]).unwrap();
    let out = dir.path().join("no-dropout");
    train(
        &no_dropout,
        &data,
        &subset,
        &config,
        Objective::Labels,
        &out,
        Some(&saved),
    );
    assert_eq!(
        student.stats([1, 28, 28]).unwrap().params,
        no_dropout.stats([1, 28, 28]).unwrap().params
    );
}

#[test]
fn views_are_fixed_per_image_and_chosen_per_seed_and_epoch() {
    let data = embedded();
    let split = data.train.subset(&(0..64).collect::<Vec<_>>());
    let aug = views(4);
    // a view is the same bytes whatever the run
    assert_eq!(split.view_image(3, 2, &aug), split.view_image(3, 2, &aug));
    let distinct: std::collections::HashSet<Vec<u8>> =
        (0..4).map(|v| split.view_image(3, v, &aug)).collect();
    assert!(distinct.len() >= 3, "views differ from each other");
    // the batch shows, for each image, the view `view_of` names
    let indices: Vec<usize> = (0..64).collect();
    let seed = distill::data::augmentation_seed(11, 3);
    let (chosen, _) = batch_shows_chosen_views(&split, &aug, seed);
    // every view gets used, and another epoch picks differently
    let used: std::collections::HashSet<usize> = chosen.iter().copied().collect();
    assert_eq!(used.len(), 4);
    let next = distill::data::augmentation_seed(11, 4);
    assert!(indices
        .iter()
        .any(|&i| view_of(&aug, next, i) != view_of(&aug, seed, i)));
    assert_eq!(view_of(&Augmentation::default(), seed, 0), None);
}

/// Mixup views: each fixed view is `λ · view(i) + (1 − λ) · view(j)` (pixels scaled to [0, 1]),
/// with the partner and `λ` fixed per view like the view itself; the batch shows them, and the
/// label side names each partner's label and weight.
#[test]
fn mixup_views_blend_two_fixed_views_and_name_both_labels() {
    let data = embedded();
    let split = data.train.subset(&(0..64).collect::<Vec<_>>());
    let aug = Augmentation {
        mixup: Some(1.0),
        ..views(4)
    };
    assert!(aug.validate().is_ok());
    assert!(
        aug.describe().ends_with("mixup alpha 1"),
        "{}",
        aug.describe()
    );
    let device = Device::flex();
    let mix = split.view_mix(5, 2, &aug).unwrap();
    assert_eq!(split.view_mix(5, 2, &aug), Some(mix), "fixed per view");
    assert!((0.5..=1.0).contains(&mix.lambda) && mix.partner < 64);
    let (own, other) = (
        split.view_image(5, 2, &aug),
        split.view_image(mix.partner, 2, &aug),
    );
    let blended = flatten(split.view_batch(&[5], &[2], &aug, &device).reshape([1, -1]));
    let lambda = mix.lambda as f64;
    for ((&got, &a), &b) in blended.iter().zip(&own).zip(&other) {
        let want = (lambda * a as f64 + (1.0 - lambda) * b as f64) / 255.0;
        assert!((got as f64 - want).abs() <= 1e-6, "{got} vs {want}");
    }
    assert!(
        split.view_mix(5, 2, &views(4)).is_none(),
        "no mixup, no blend"
    );

    // The training batch shows the chosen views' blends; the label side matches them.
    let indices: Vec<usize> = (0..64).collect();
    let seed = distill::data::augmentation_seed(7, 1);
    let (chosen, labels) = batch_shows_chosen_views(&split, &aug, seed);
    let label_mix = split.label_mix(&indices, &chosen, &aug).unwrap();
    for (k, (&i, &v)) in indices.iter().zip(&chosen).enumerate() {
        let m = split.view_mix(i, v, &aug).unwrap();
        assert_eq!(label_mix.partners[k], split.labels[m.partner]);
        assert_eq!(label_mix.lambdas[k], m.lambda);
    }
    assert_eq!(
        labels.into_data().iter::<i64>().collect::<Vec<_>>(),
        indices
            .iter()
            .map(|&i| split.labels[i] as i64)
            .collect::<Vec<_>>(),
        "the first label stays the image's own"
    );
    assert!(split.label_mix(&indices, &chosen, &views(4)).is_none());

    // Beta(1, 1) is uniform, so the own weight max(λ, 1 − λ) is uniform on [0.5, 1]: mean 0.75,
    // half of the draws below 0.75 (20,000 draws: the mean's standard error is 0.001).
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(3);
    let draws: Vec<f64> = (0..20_000)
        .map(|_| distill::data::draw_mix(1.0, 64, &mut rng).lambda as f64)
        .collect();
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    let below = draws.iter().filter(|&&l| l < 0.75).count() as f64 / draws.len() as f64;
    assert!((mean - 0.75).abs() < 0.01, "mean {mean}");
    assert!((below - 0.5).abs() < 0.02, "below 0.75: {below}");

    // Mixup needs fixed views and a positive alpha.
    let fresh = Augmentation {
        views: None,
        ..aug.clone()
    };
    assert!(fresh
        .validate()
        .unwrap_err()
        .contains("`augmentation.views`"));
    for alpha in [0.0, -1.0, f64::NAN] {
        let bad = Augmentation {
            mixup: Some(alpha),
            ..aug.clone()
        };
        assert!(bad.validate().unwrap_err().contains("`augmentation.mixup`"));
    }
}

#[test]
fn view_cache_matches_the_live_teacher_and_is_reused_or_rebuilt() {
    let data = embedded();
    let train = data.train.subset(&(0..300).collect::<Vec<_>>());
    let device = Device::flex();
    let net = Network::init(&zoo::get("teacher-small").unwrap(), [1, 28, 28], 3, &device).unwrap();
    let teacher = Teacher::from_network(&net, [1, 28, 28], 10);
    let dir = tempfile::tempdir().unwrap();
    let aug = views(3);
    let file = views_cache_path(dir.path(), &teacher.hash, &train.fingerprint());
    let cached = view_logits(
        &teacher,
        &train,
        &aug,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap();
    let TeacherLogits::Views(cache) = &cached else {
        panic!("expected the augmented-view cache")
    };
    assert!(cache.build_seconds.is_some(), "built now");
    assert_eq!(cache.len(), 300);

    // Same views, same loss as the live teacher (f16 storage: within 1e-3).
    let live = TeacherLogits::Live(Teacher::from_network(&net, [1, 28, 28], 10));
    let student = Network::init(&zoo::get("student").unwrap(), [1, 28, 28], 4, &device).unwrap();
    let indices: Vec<usize> = (0..64).collect();
    let seed = distill::data::augmentation_seed(42, 0);
    let chosen: Vec<usize> = indices
        .iter()
        .map(|&i| view_of(&aug, seed, i).unwrap())
        .collect();
    let (images, labels) = train.batch(&indices, &device, Some((&aug, seed)));
    let student_logits = student.valid().forward(images.clone());
    let loss = DistillLoss::Kd {
        alpha: 0.1,
        temperature: 4.0,
        t2_scaling: true,
    };
    let value = |teacher: &TeacherLogits| -> f32 {
        let t = teacher
            .logits_at(&indices, Some(&chosen), images.clone(), &device)
            .unwrap();
        loss.forward(student_logits.clone(), t, labels.clone(), 0.0, 1)
            .total
            .into_scalar()
    };
    let (from_cache, from_live) = (value(&cached), value(&live));
    assert!(
        (from_cache - from_live).abs() <= 1e-3,
        "{from_cache} vs {from_live}"
    );
    assert!(cached.logits_at(&indices, None, images, &device).is_err());

    // Read back (verified against the live teacher), not rebuilt.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let again = view_logits(
        &teacher,
        &train,
        &aug,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap();
    let TeacherLogits::Views(again) = again else {
        panic!()
    };
    assert!(again.build_seconds.is_none(), "read from disk");
    assert_eq!(again.values, cache.values);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified
    );

    // Another K misses: a named file is an error naming both settings, the default is rebuilt.
    let other = views(5);
    let err = view_logits(
        &teacher,
        &train,
        &other,
        CacheLocation::File(&file),
        &device,
        false,
    )
    .err()
    .unwrap();
    let message = format!("{err:#}");
    assert!(
        message.contains("3 fixed views") && message.contains("5 fixed views"),
        "{message}"
    );
    let rebuilt = view_logits(
        &teacher,
        &train,
        &other,
        CacheLocation::Dir(dir.path()),
        &device,
        false,
    )
    .unwrap();
    let TeacherLogits::Views(rebuilt) = rebuilt else {
        panic!()
    };
    assert!(rebuilt.build_seconds.is_some());
    assert_eq!(rebuilt.views, 5);

    // K = 0 is refused.
    let zero = Augmentation {
        views: Some(0),
        ..views(1)
    };
    let err = view_logits(
        &teacher,
        &train,
        &zero,
        CacheLocation::Memory,
        &device,
        false,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("at least 1"), "{err:#}");
}

/// Function matching: a student distilled on mixup views from the teacher alone (KD, alpha 0)
/// trains, and so does the mixup scratch control; a label term, which would need the blend's two
/// labels, is refused with a message that says what to use.
#[test]
fn function_matching_trains_on_mixup_views_and_refuses_a_label_term() {
    let _serial = serial();
    let data = embedded();
    let subset = data.train.subset(&(0..256).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let aug = Augmentation {
        mixup: Some(1.0),
        ..views(4)
    };
    let cached = small_teacher_views(&subset, &aug);
    let spec = zoo::get("student").unwrap();
    let config = TrainConfig {
        epochs: 1,
        augmentation: Some(aug),
        seed: 5,
        ..TrainConfig::default()
    };
    let kd = |alpha: f64| DistillLoss::Kd {
        alpha,
        temperature: 1.0,
        t2_scaling: false,
    };
    let matched = train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Distill {
            loss: kd(0.0),
            teacher: &cached,
            hidden: None,
        },
        &dir.path().join("matched"),
        None,
    );
    assert!(matched.history[0].loss.is_finite());
    let control = train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Labels,
        &dir.path().join("scratch"),
        None,
    );
    assert!(control.history[0].loss.is_finite());

    let labelled = dir.path().join("labelled");
    let job = job(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Distill {
            loss: kd(0.1),
            teacher: &cached,
            hidden: None,
        },
        &labelled,
        false,
    );
    let message = format!("{:#}", fit(job, &device).err().unwrap());
    assert!(
        message.contains("KD with alpha 0.1") && message.contains("function matching"),
        "{message}"
    );
}

/// Paired seeds: with alpha = 1 the KD loss is exactly the label cross-entropy, so a distilled
/// run and a scratch run of the same seed are the same computation — same initial weights, batch
/// order, augmented views and dropout stream — and must end bit-identical.
#[test]
fn paired_arms_see_identical_batches() {
    let _serial = serial();
    let data = embedded();
    let subset = data.train.subset(&(0..512).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let aug = views(4);
    let cached = small_teacher_views(&subset, &aug);
    let spec = zoo::get("student").unwrap();
    let config = TrainConfig {
        epochs: 2,
        augmentation: Some(aug),
        seed: 17,
        ..TrainConfig::default()
    };
    let scratch = train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Labels,
        &dir.path().join("scratch"),
        None,
    );
    let distilled = train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Distill {
            loss: DistillLoss::Kd {
                alpha: 1.0,
                temperature: 4.0,
                t2_scaling: true,
            },
            teacher: &cached,
            hidden: None,
        },
        &dir.path().join("distilled"),
        None,
    );
    let probe = data.test.subset(&(0..32).collect::<Vec<_>>());
    let (images, _) = probe.batch(&(0..32).collect::<Vec<_>>(), &device, None);
    assert_eq!(
        flatten(scratch.network.valid().forward(images.clone())),
        flatten(distilled.network.valid().forward(images.clone()))
    );
    assert_eq!(scratch.history.len(), distilled.history.len());
    for (a, b) in scratch.history.iter().zip(&distilled.history) {
        assert_eq!((a.loss, a.accuracy), (b.loss, b.accuracy));
    }
    // A soft term makes them differ: the comparison above can fail.
    let soft = train(
        &spec,
        &data,
        &subset,
        &config,
        Objective::Distill {
            loss: DistillLoss::Kd {
                alpha: 0.5,
                temperature: 4.0,
                t2_scaling: true,
            },
            teacher: &cached,
            hidden: None,
        },
        &dir.path().join("soft"),
        None,
    );
    assert_ne!(
        flatten(scratch.network.valid().forward(images.clone())),
        flatten(soft.network.valid().forward(images))
    );
}

#[test]
fn a_chained_study_runs_end_to_end_and_reports_each_stage() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chain.toml");
    std::fs::write(
        &config,
        r#"
data = "embedded"
seeds = 2
[teacher]
model = "teacher-small"
epochs = 1
[student]
model = "student"
epochs = 1
dropout = [0.0, 0.0]
[training]
batch_size = 256
seed = 3
val_split = 0.2
[training.augmentation]
crop_padding = 2
horizontal_flip = true
views = 2
[sweep]
alpha = [0.1, 0.9, 0.5]
temperature = [4.0]
t2_scaling = [true]
chain = true
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["run", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let stages = report["chain"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for (k, stage) in stages.iter().enumerate() {
        assert_eq!(stage["stage"].as_u64(), Some(k as u64 + 1));
        assert_eq!(stage["epochs_so_far"].as_u64(), Some(k as u64 + 1));
        assert_eq!(
            stage["distilled"]["accuracies"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            stage["labels_only"]["accuracies"].as_array().unwrap().len(),
            2
        );
    }
    // stage 1's control is the scratch student itself; later stages pair with their own
    assert_eq!(report["distilled"][0]["control"], "scratch-chain-stage-1");
    assert_eq!(
        report["distilled"][0]["control_accuracy"],
        report["scratch"]["accuracy"]
    );
    assert_eq!(report["distilled"][2]["control"], "scratch-chain-stage-3");
    assert_eq!(report["best"]["selected_by"], "validation");
    // each stage continued from the previous one
    for k in 2..=3 {
        let log = std::fs::read_to_string(
            std::fs::read_dir(out.join("distilled-chain"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("stage-{k}-"))
                })
                .unwrap()
                .join("seed-3/train.log"),
        )
        .unwrap();
        assert!(log.contains("warm start from"), "{log}");
        assert!(out
            .join(format!("scratch-chain/stage-{k}/seed-4/model.bpk"))
            .is_file());
    }
    // the augmented-view cache was built once for the whole study
    let caches: Vec<_> = std::fs::read_dir(out.join("teacher-logits"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("views-"))
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    assert_eq!(report["scratch"]["dropout"], serde_json::json!([0.0, 0.0]));
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## Chain"), "{markdown}");
}

#[test]
fn cli_distillation_reuses_one_view_cache_across_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(args)
            .env("DISTILL_DATA", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let teacher = dir.path().join("teacher");
    let t = teacher.to_str().unwrap();
    run(&[
        "train",
        "--model",
        "teacher-small",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--quiet",
        "--out",
        t,
    ]);
    let cache = dir.path().join("logits");
    let c = cache.to_str().unwrap();
    let distill = |alpha: &str, out: &str| {
        let out = dir.path().join(out);
        run(&[
            "distill",
            "--teacher",
            t,
            "--alpha",
            alpha,
            "--temperature",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--augment",
            "--views",
            "2",
            "--logit-cache",
            c,
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
    };
    distill("0.1", "a");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    distill("0.5", "b");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        modified
    );
}
