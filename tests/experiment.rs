//! `distill run` end to end on a tiny config: report structure and values, plots, resume, and
//! config validation.

use std::path::Path;
use std::process::Command;

use distill::experiment::ExperimentConfig;
use distill::models::zoo;

mod run_support;

const TINY: &str = r#"
data = "embedded"
seeds = 2

[teacher]
model = "teacher-small"
epochs = 1

[student]
model = "student"
epochs = 1

[training]
batch_size = 128
seed = 7

[sweep]
alpha = [0.5, 0.9]
temperature = [2.0]
t2_scaling = [true, false]
"#;

fn distill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .unwrap()
}

fn run(config: &Path, out: &Path) -> serde_json::Value {
    let output = distill(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("# Distillation report"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn accuracy(v: &serde_json::Value) -> f64 {
    let a = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&a), "accuracy {a}");
    a
}

#[test]
fn tiny_experiment_writes_a_consistent_report_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out = dir.path().join("out");
    let report = run(&config, &out);

    let student_params = zoo::get("student")
        .unwrap()
        .stats([1, 28, 28])
        .unwrap()
        .params as u64;
    let teacher_params = zoo::get("teacher-small")
        .unwrap()
        .stats([1, 28, 28])
        .unwrap()
        .params as u64;
    // the training time splits into the teacher's (its history) and the students'
    let history: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("teacher/history.json")).unwrap())
            .unwrap();
    let teacher_seconds: f64 = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seconds"].as_f64().unwrap())
        .sum();
    assert_eq!(
        report["teacher_training_seconds"].as_f64(),
        Some(teacher_seconds)
    );
    assert!(
        teacher_seconds > 0.0 && teacher_seconds < report["training_seconds"].as_f64().unwrap()
    );
    assert_eq!(report["teacher"]["params"].as_u64(), Some(teacher_params));
    assert_eq!(report["scratch"]["params"].as_u64(), Some(student_params));
    assert!(accuracy(&report["teacher"]) > 0.5);
    assert!(accuracy(&report["scratch"]) > 0.2);
    assert_eq!(report["scratch"]["accuracies"].as_array().unwrap().len(), 2);

    let distilled = report["distilled"].as_array().unwrap();
    assert_eq!(distilled.len(), 4);
    let mut best = 0.0f64;
    for d in distilled {
        assert!([0.5, 0.9].contains(&d["alpha"].as_f64().unwrap()));
        assert_eq!(d["temperature"].as_f64(), Some(2.0));
        assert!(d["t2_scaling"].is_boolean());
        assert_eq!(d["params"].as_u64(), Some(student_params));
        best = best.max(accuracy(d));
    }
    assert_eq!(report["best"]["accuracy"].as_f64(), Some(best));
    let gain = report["best"]["gain_over_scratch"].as_f64().unwrap();
    assert!((gain - (best - report["scratch"]["accuracy"].as_f64().unwrap())).abs() < 1e-12);
    // two paired seeds give an interval; the chosen point's is the one in `best`
    let chosen = distilled
        .iter()
        .find(|d| d["name"] == report["best"]["name"])
        .unwrap();
    assert_eq!(chosen["paired_diff"], report["best"]["paired_diff"]);
    assert_eq!(report["best"]["paired_diff"]["n"].as_u64(), Some(2));
    assert!(report["best"]["significant_gain"].is_boolean());
    for d in distilled {
        let diff = &d["paired_diff"];
        let per_seed: Vec<f64> = d["accuracies"]
            .as_array()
            .unwrap()
            .iter()
            .zip(report["scratch"]["accuracies"].as_array().unwrap())
            .map(|(a, b)| a.as_f64().unwrap() - b.as_f64().unwrap())
            .collect();
        let mean = (per_seed[0] + per_seed[1]) / 2.0;
        assert!((diff["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        let [lo, hi] = [0, 1].map(|i| diff["ci95"][i].as_f64().unwrap());
        assert!(lo <= mean && mean <= hi, "{diff}");
        // n = 2: half-width = t(1) * |d1 - d2| / sqrt(2) / sqrt(2) = 12.706 * |d1 - d2| / 2
        let half = 12.706_204_7 * (per_seed[0] - per_seed[1]).abs() / 2.0;
        assert!((hi - mean - half).abs() < 1e-6, "{diff}");
    }
    assert!(report["best"]["verdict"]
        .as_str()
        .unwrap()
        .contains("from scratch"));
    assert!(
        report["teacher"]["speed"]["throughput_ips"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        markdown.contains("| student from scratch |") && markdown.contains(" ± "),
        "{markdown}"
    );
    for plot in [
        "learning_curves.png",
        "accuracy_vs_alpha.png",
        "accuracy_by_setting.png",
    ] {
        let bytes = std::fs::read(out.join(plot)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{plot} is a PNG");
        assert!(bytes.len() > 10_000, "{plot} has content");
    }

    // Started again with the same --out: every run is complete, so nothing is retrained and the
    // accuracies are the same.
    let weights = out.join("scratch/seed-7/model.bpk");
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let again = run(&config, &out);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(
        again["scratch"]["accuracies"],
        report["scratch"]["accuracies"]
    );
    assert_eq!(again["best"]["accuracy"], report["best"]["accuracy"]);
}

/// `teacher = "embedded"`: the pretrained teacher compiled into the binary is written into the
/// run directory as a checkpoint like a trained one (verified against its manifest) and is the
/// strong teacher the default study relies on: teacher-small trained on all 60,000 Fashion-MNIST
/// training images scores 93.0% on the embedded test split (a teacher-small trained 10 epochs on
/// the embedded 5,400 scores about 87%).
#[test]
fn the_embedded_teacher_is_written_into_the_run_and_is_strong() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded-teacher.toml");
    std::fs::write(
        &config,
        r#"
data = "embedded"
seeds = 1
teacher = "embedded"

[student]
model = "student"
epochs = 1

[training]
batch_size = 128
seed = 7

[sweep]
alpha = [0.1]
temperature = [2.0]
t2_scaling = [true]
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let report = run(&config, &out);
    for file in [
        "spec.toml",
        "model.bpk",
        "meta.json",
        "manifest.json",
        "history.csv",
    ] {
        assert!(out.join("teacher").join(file).is_file(), "teacher/{file}");
    }
    let teacher_params = zoo::get("teacher-small")
        .unwrap()
        .stats([1, 28, 28])
        .unwrap()
        .params as u64;
    assert_eq!(report["teacher"]["params"].as_u64(), Some(teacher_params));
    let teacher_accuracy = accuracy(&report["teacher"]);
    assert!(
        (0.925..=0.935).contains(&teacher_accuracy),
        "embedded teacher: {teacher_accuracy} on the embedded test split"
    );
    assert_eq!(report["distilled"].as_array().unwrap().len(), 1);
    // an untrained teacher took no time, printed as such (an empty f64 sum is -0.0)
    assert_eq!(
        report["teacher_training_seconds"]
            .as_f64()
            .map(f64::to_bits),
        Some(0.0f64.to_bits())
    );
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("(teacher 0 s, students "), "{markdown}");

    // the teacher is loaded, never trained: a second run finds the same files
    let weights = std::fs::read(out.join("teacher/model.bpk")).unwrap();
    let again = run(&config, &out);
    assert_eq!(
        std::fs::read(out.join("teacher/model.bpk")).unwrap(),
        weights
    );
    assert_eq!(again["teacher"]["accuracy"], report["teacher"]["accuracy"]);

    // the default config is the study with this teacher
    let quick = ExperimentConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quick.toml"),
    )
    .unwrap();
    assert_eq!(
        quick.teacher,
        distill::experiment::TeacherSetting::Checkpoint("embedded".into())
    );
}

#[test]
fn shipped_configs_parse() {
    // Every experiment config in configs/ (configs/text/ holds model specs, not experiments).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for expected in [
        "quick",
        "keras-notebook-exact",
        "cifar10-recipe",
        "cifar10-vgg-teacher-60",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for name in &names {
        let path = dir.join(format!("{name}.toml"));
        let config = ExperimentConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!config.grid().is_empty());
    }
    let keras = ExperimentConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/keras-example-cifar10.toml"),
    )
    .unwrap();
    assert_eq!(keras.grid().len(), 8, "4 alphas x T² off/on");
    assert_eq!(keras.student.epochs, 20);

    let load = |name: &str| {
        ExperimentConfig::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.toml")),
        )
        .unwrap()
    };
    // The notebook's cells in their real order, one student, no T², T 10.
    let exact = load("keras-notebook-exact");
    assert!(exact.sweep.chain);
    let stages: Vec<String> = exact.grid().iter().map(|p| p.dir_name()).collect();
    assert_eq!(
        stages,
        [
            "a0.1-T10-no-t2",
            "a0.5-T10-no-t2",
            "a0.2-T10-no-t2",
            "a0.9-T10-no-t2"
        ]
    );
    // The recipe: KD at T 4 with T², and DKD; 5 paired seeds; choices on validation;
    // the exact student (dropout off, same parameters); consistent teaching from cached views.
    let recipe = load("cifar10-recipe");
    let names: Vec<String> = recipe.grid().iter().map(|p| p.dir_name()).collect();
    assert_eq!(names, ["a0.1-T4-t2", "dkd-ce1-a1-b8-T4-w5"]);
    assert!(recipe.seeds >= 5);
    assert!(recipe.training.val_split.is_some());
    assert!(recipe.student.epochs > 20);
    assert!(recipe
        .training
        .augmentation
        .as_ref()
        .unwrap()
        .views
        .is_some());
    let (distilled, scratch) = recipe.student.specs().unwrap();
    assert_eq!(distilled.stats([3, 32, 32]).unwrap().params, 43_098);
    assert_eq!(scratch.dropout_rates(), [0.0, 0.0]);

    // The text studies: Tang's transfer set with shorter distilled runs; DistilBERT's cosine
    // term on students that keep the teacher's embeddings fixed.
    let tang = load("text-tang");
    assert!(tang.is_text());
    let text = tang.text.as_ref().unwrap();
    assert_eq!(text.transfer_copies, 4);
    assert!(text.freeze_teacher_word_embeddings && !text.freeze_student_word_embeddings);
    assert_eq!(
        (tang.student.epochs, tang.student.distilled_epochs()),
        (6, 2)
    );
    let distilbert = load("text-distilbert");
    let text = distilbert.text.as_ref().unwrap();
    assert_eq!(text.cosine_weight, 1.0);
    assert!(text.freeze_student_word_embeddings);
}

#[test]
fn bad_configs_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (TINY.replace("seeds = 2", "seeds = 2\nepochz = 3"), "epochz"),
        (
            TINY.replace("alpha = [0.5, 0.9]", "alpha = [0.5, 1.5]"),
            "alpha must be in [0, 1]",
        ),
        (
            TINY.replace("temperature = [2.0]", "temperature = [0.0]"),
            "temperature",
        ),
        (
            TINY.replace(
                "[student]\nmodel = \"student\"\nepochs = 1",
                "[student]\nmodel = \"student\"\nepochs = 0",
            ),
            "student.epochs",
        ),
        (
            TINY.replace("data = \"embedded\"", "data = \"nonsense:x\""),
            "data",
        ),
        (
            TINY.replace("epochs = 1\n\n[training]", "epochs = 1\ndistilled_epochs = 0\n\n[training]"),
            "student.distilled_epochs",
        ),
        // Text settings on an image dataset, and image settings on a text dataset, are
        // refused by name rather than ignored.
        (
            format!("{TINY}\n[text]\nmax_len = 64\n"),
            "`[text]` applies to text datasets",
        ),
        (
            TINY.replace("data = \"embedded\"", "data = \"rotten-tomatoes\"")
                .replace("seed = 7", "seed = 7\n[training.augmentation]\nhorizontal_flip = true"),
            "`training.augmentation` (a text study's distilled students learn from `text.transfer_copies`) applies to images only",
        ),
        // Mixup views: only with fixed views, and the distilled students learn from the
        // teacher alone (function matching).
        (
            TINY.replace("seed = 7", "seed = 7\n[training.augmentation]\nmixup = 1.0"),
            "`augmentation.mixup` blends fixed views: set `augmentation.views`",
        ),
        (
            TINY.replace(
                "seed = 7",
                "seed = 7\n[training.augmentation]\nhorizontal_flip = true\nviews = 4\nmixup = 1.0",
            ),
            "`training.augmentation.mixup`: the sweep's KD with alpha 0.5 has a label term",
        ),
        (
            format!(
                "{}\n[text]\ncosine_weight = -1.0\n",
                TINY.replace("data = \"embedded\"", "data = \"rotten-tomatoes\"")
            ),
            "`text.cosine_weight`",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let output = distill(&[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(output.status.code(), Some(1), "case {i}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "case {i}: {stderr}");
        assert!(
            stderr.contains(&format!("bad{i}.toml")),
            "case {i} names the file: {stderr}"
        );
        assert!(!out.exists(), "case {i}: nothing written");
    }
}

/// A sweep killed (SIGKILL) in the middle of its first distillation, then started again with the
/// same --out, ends with the same weights, histories and accuracies as an uninterrupted sweep
/// (same backend, one thread).
#[cfg(unix)]
#[test]
fn a_sweep_killed_mid_distillation_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tiny-b.toml");
    let text = format!(
        r#"
data = "embedded"
[teacher]
model = "{}"
epochs = 1
[student]
model = "student"
epochs = 2
[training]
batch_size = 128
seed = 3
[sweep]
alpha = [0.3, 0.7]
temperature = [4.0]
t2_scaling = [false]
"#,
        teacher.display()
    );
    let config = dir.path().join("sweep.toml");
    std::fs::write(&config, &text).unwrap();
    let command = |out: &Path| run_support::quiet_run(&config, out);
    let whole = dir.path().join("whole");
    assert!(command(&whole).status().unwrap().success());

    let killed = dir.path().join("killed");
    let first = toml::from_str::<ExperimentConfig>(&text).unwrap().grid()[0].dir_name();
    let first_run = killed.join("distilled").join(&first).join("seed-3");
    let mut child = command(&killed).spawn().unwrap();
    run_support::kill_after(
        &mut child,
        &first_run.join("checkpoints/epoch-0001/state.json"),
        std::time::Duration::from_millis(300),
    );
    assert!(
        !first_run.join("checkpoints/epoch-0002").exists() && !killed.join("report.json").exists(),
        "the sweep finished its first distillation before it was killed"
    );
    assert!(command(&killed).status().unwrap().success());

    let mut runs = vec!["teacher".to_string(), "scratch/seed-3".to_string()];
    for entry in std::fs::read_dir(whole.join("distilled")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        runs.push(format!("distilled/{name}/seed-3"));
    }
    assert_eq!(runs.len(), 4);
    for run in &runs {
        assert!(
            run_support::weights(&whole.join(run)) == run_support::weights(&killed.join(run)),
            "{run}: weights differ after the kill and resume"
        );
        assert_eq!(
            run_support::history(&whole.join(run)),
            run_support::history(&killed.join(run)),
            "{run}"
        );
    }
    let accuracies = |out: &Path| -> Vec<serde_json::Value> {
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        report["distilled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["accuracy"].clone())
            .chain([report["scratch"]["accuracy"].clone()])
            .collect()
    };
    assert_eq!(accuracies(&whole), accuracies(&killed));
}

/// `--jobs 2` trains the students in two worker processes: every run's accuracy equals the
/// one-process run's, the workers' logs split the runs between them, and a chain (whose stages
/// depend on each other) keeps each seed in one worker.
#[test]
fn parallel_jobs_give_the_same_runs_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let chain = format!(
        "{}chain = true\n",
        TINY.replace("t2_scaling = [true, false]", "t2_scaling = [true]")
    );
    for (name, text, runs) in [("grid", TINY.to_string(), 10), ("chain", chain, 8)] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let one = run(&config, &dir.path().join(format!("{name}-one")));
        let out = dir.path().join(format!("{name}-two"));
        let output = distill(&[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("in 2 parallel jobs"), "{stdout}");
        let two: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let accuracies = |report: &serde_json::Value| -> Vec<serde_json::Value> {
            let mut all = vec![report["scratch"]["accuracies"].clone()];
            for d in report["distilled"].as_array().unwrap() {
                all.push(d["accuracies"].clone());
                all.push(d["control"].clone());
            }
            all
        };
        assert_eq!(accuracies(&one), accuracies(&two), "{name}");
        // each worker announced its own runs; together, every student run once
        let announced: Vec<Vec<String>> = (1..=2)
            .map(|k| {
                std::fs::read_to_string(out.join("logs").join(format!("job-{k}.log")))
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with("== ") && l.contains(", seed "))
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        assert!(announced.iter().all(|a| !a.is_empty()), "{announced:?}");
        let mut all: Vec<&String> = announced.iter().flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), runs, "{name}: {announced:?}");
        assert_eq!(announced[0].len() + announced[1].len(), runs, "{name}");
        if name == "chain" {
            for (k, lines) in announced.iter().enumerate() {
                let seed = if k == 0 { "seed 7" } else { "seed 8" };
                assert!(lines.iter().all(|l| l.ends_with(seed)), "{lines:?}");
            }
        }
    }
    let bad = distill(&["run", "--jobs", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--jobs must be at least 1"));
}
