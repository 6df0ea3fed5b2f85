//! `[[method]]` arms in a study: the plan (a pure function of the config), config validation, and
//! a tiny study end to end with a feature method beside scratch (paired, logged by part, in the
//! method table, resumable).

use std::path::{Path, PathBuf};
use std::process::Command;

use distill::experiment::{plan, ArmKind, ExperimentConfig};

mod run_support;

const BASE: &str = r#"
data = "embedded"
seeds = 2
teacher = "embedded"

[student]
model = "student"
epochs = 1
dropout = [0.0, 0.0]

[training]
batch_size = 128
seed = 7
val_split = 0.1

[sweep]
alpha = [0.5]
temperature = [2.0]
t2_scaling = [true]
"#;

fn config(methods: &str) -> Result<ExperimentConfig, String> {
    ExperimentConfig::from_toml_str(&format!("{BASE}{methods}")).map_err(|e| format!("{e:#}"))
}

#[test]
fn the_plan_pairs_every_arm_on_the_same_seeds_in_a_fixed_order() {
    let config = config(
        r#"
[[method]]
features = { kind = "at", taps = ["block1", "block2"] }

[[method]]
features = { kind = "crd", negatives = 512 }
logits = { kind = "kd", alpha = 0.5, temperature = 4.0, t2_scaling = true }

[[method]]
name = "dkd-default"
logits = { kind = "dkd", ce_weight = 1.0, alpha = 1.0, beta = 8.0, temperature = 4.0, warmup_epochs = 20 }
"#,
    )
    .unwrap();
    let arms = plan(&config);
    let dirs: Vec<PathBuf> = arms.iter().map(|a| a.dir.clone()).collect();
    assert_eq!(
        dirs,
        [
            "scratch",
            "distilled/a0.5-T2-t2",
            "methods/at",
            "methods/crd+kd-a0.5-T4-t2",
            "methods/dkd-default"
        ]
        .map(PathBuf::from)
    );
    assert!(matches!(arms[0].kind, ArmKind::Scratch));
    assert!(matches!(arms[1].kind, ArmKind::Sweep(_)));
    assert!(matches!(arms[2].kind, ArmKind::Method(_)));
    assert_eq!(arms[3].label, "CRD + KD alpha 0.5, T 4, T² on");
    for arm in &arms {
        assert_eq!(arm.seeds, [7, 8], "{}", arm.name);
        assert_eq!(arm.epochs, 1);
    }
    assert_eq!(
        arms[2].run_dirs(),
        [
            PathBuf::from("methods/at/seed-7"),
            PathBuf::from("methods/at/seed-8")
        ]
    );
    // the plan is a function of the config alone
    assert_eq!(plan(&config), arms);
    // and survives the round trip through the experiment.toml a run writes
    let written = toml::to_string(&config).unwrap();
    let reread = ExperimentConfig::from_toml_str(&written).unwrap();
    assert_eq!(plan(&reread), arms);
}

#[test]
fn method_entries_are_validated_before_any_work() {
    let cases = [
        ("[[method]]\nce_weight = 1.0\n", "needs `features`, `logits` or both"),
        (
            "[[method]]\nfeatures = { kind = \"at\" }\n[[method]]\nfeatures = { kind = \"at\", beta = 10.0 }\n",
            "another method is already called `at`",
        ),
        (
            "[[method]]\nname = \"../x\"\nfeatures = { kind = \"rkd\" }\n",
            "it names a directory",
        ),
        (
            "[[method]]\nfeatures = { kind = \"rkd\" }\nce_weight = -1.0\n",
            "ce_weight must be a finite number >= 0",
        ),
        (
            "[[method]]\nfeatures = { kind = \"crd\", momentum = 1.5 }\n",
            "crd momentum must be in [0, 1)",
        ),
        (
            "[[method]]\nfeatures = { kind = \"hint\" }\n",
            "unknown variant `hint`",
        ),
        (
            "[[method]]\nfeatures = { kind = \"at\", betta = 1.0 }\n",
            "unknown field `betta`",
        ),
        (
            "[[method]]\nlogits = { kind = \"kd\", alpha = 2.0, temperature = 4.0, t2_scaling = true }\n",
            "alpha must be in [0, 1]",
        ),
    ];
    for (methods, expected) in cases {
        let err = config(methods).unwrap_err();
        assert!(err.contains(expected), "{methods}\n→ {err}");
    }
    let chained = BASE.replace("t2_scaling = [true]", "t2_scaling = [true]\nchain = true");
    let err = ExperimentConfig::from_toml_str(&format!(
        "{chained}[[method]]\nfeatures = {{ kind = \"rkd\" }}\n"
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("not chained"), "{err:#}");
}

fn run(config: &Path, out: &Path) -> (serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["run", "--config", config.to_str().unwrap(), "--out"])
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    (
        serde_json::from_str(&report).unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_study_with_feature_methods_reports_a_method_table_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("experiment.toml");
    std::fs::write(
        &config_path,
        format!(
            "{BASE}{}",
            r#"
[[method]]
features = { kind = "at", taps = ["block1", "block2"] }

[[method]]
features = { kind = "crd", negatives = 256 }
logits = { kind = "kd", alpha = 0.5, temperature = 4.0, t2_scaling = true }
"#
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (report, stdout) = run(&config_path, &out);
    assert!(stdout.contains("## Methods"), "{stdout}");
    assert!(stdout.contains("| AT | "), "{stdout}");
    let methods = report["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    for m in methods {
        assert_eq!(m["accuracies"].as_array().unwrap().len(), 2);
        let acc = m["accuracy"].as_f64().unwrap();
        // one epoch on 5,400 images: well above chance, whatever the method
        assert!(acc > 0.3 && acc <= 1.0, "{m}");
        let diff = &m["paired_diff"];
        let scratch: Vec<f64> =
            serde_json::from_value(report["scratch"]["accuracies"].clone()).unwrap();
        let mine: Vec<f64> = serde_json::from_value(m["accuracies"].clone()).unwrap();
        let mean = (mine[0] - scratch[0] + mine[1] - scratch[1]) / 2.0;
        assert!(
            (diff["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{diff}"
        );
        assert!(m["epoch_cost"].as_f64().unwrap() > 0.0);
    }
    // each method logs its parts by name, per epoch
    let history = std::fs::read_to_string(out.join("methods/at/seed-7/history.json")).unwrap();
    assert!(history.contains("\"attention\""), "{history}");
    let log =
        std::fs::read_to_string(out.join("methods/crd+kd-a0.5-T4-t2/seed-8/train.log")).unwrap();
    assert!(
        log.contains("crd_student: ") && log.contains("crd_teacher: "),
        "{log}"
    );
    // the CRD checkpoint holds its heads, their optimizer and the memory banks
    let checkpoint = out.join("methods/crd+kd-a0.5-T4-t2/seed-8/checkpoints/epoch-0001");
    for file in [
        "method-heads.bpk",
        "method-optimizer.bpk",
        "method-memory.bin",
    ] {
        assert!(checkpoint.join(file).is_file(), "{file}");
    }
    // a second invocation trains nothing and reports the same
    let before = std::fs::read(out.join("methods/at/seed-7/model.bpk")).unwrap();
    let (again, _) = run(&config_path, &out);
    assert_eq!(
        again["methods"][0]["accuracies"],
        report["methods"][0]["accuracies"]
    );
    assert_eq!(
        std::fs::read(out.join("methods/at/seed-7/model.bpk")).unwrap(),
        before
    );
}

#[test]
fn a_killed_crd_run_resumes_to_the_same_weights() {
    // Killed after its first epoch and resumed, a CRD arm ends with the weights of an
    // uninterrupted run: the heads, their optimizer state and the memory banks come back from
    // the checkpoint, and the negatives are drawn per step.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crd.toml");
    let text = format!(
        "{}[[method]]\nfeatures = {{ kind = \"crd\", negatives = 128 }}\n",
        BASE.replace("epochs = 1", "epochs = 2")
            .replace("seeds = 2", "seeds = 1")
    );
    std::fs::write(&config, text).unwrap();
    let command = |out: &Path| run_support::quiet_run(&config, out);
    let whole = dir.path().join("whole");
    assert!(command(&whole).status().unwrap().success());
    let killed = dir.path().join("killed");
    let run = killed.join("methods/crd/seed-7");
    let mut child = command(&killed).spawn().unwrap();
    run_support::kill_after(
        &mut child,
        &run.join("checkpoints/epoch-0001/state.json"),
        std::time::Duration::from_millis(300),
    );
    assert!(
        !run.join("checkpoints/epoch-0002").exists(),
        "the CRD run finished before it was killed"
    );
    assert!(command(&killed).status().unwrap().success());
    let same = |rel: &str| {
        assert!(
            run_support::weights(&whole.join(rel)) == run_support::weights(&killed.join(rel)),
            "{rel}: weights differ after the kill and resume"
        );
        assert_eq!(
            run_support::history(&whole.join(rel)),
            run_support::history(&killed.join(rel)),
            "{rel}"
        );
    };
    same("methods/crd/seed-7");
    let memory = |out: &Path| {
        std::fs::read(out.join("methods/crd/seed-7/checkpoints/epoch-0002/method-memory.bin"))
            .unwrap()
    };
    assert!(memory(&whole) == memory(&killed), "memory banks differ");
}
