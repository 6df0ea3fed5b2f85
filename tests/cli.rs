//! The command line as a user runs it: JSON outputs, the train → distill → eval path, and clear
//! errors (exit code 1, never a panic's 101).

use std::process::{Command, Output};

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = distill(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not one JSON value ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fails_with(args: &[&str], needle: &str) {
    let out = distill(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected `{needle}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn models_json_lists_the_zoo() {
    let zoo = ok_json(&["models", "--json"]);
    let rows = zoo.as_array().unwrap();
    let student = rows.iter().find(|r| r["name"] == "student").unwrap();
    assert_eq!(student["params"], 43_098);
    assert_eq!(student["flops"], 1_687_872);
    assert_eq!(student["bytes"], 43_098 * 4);
    let teacher = rows.iter().find(|r| r["name"] == "teacher-v3").unwrap();
    assert_eq!(teacher["params"], 2_827_402);
    let fashion = ok_json(&["models", "--json", "--input", "1x28x28"]);
    assert_eq!(
        fashion
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "student")
            .unwrap()["params"],
        34_842
    );
    fails_with(&["summary", "resnet"], "unknown model `resnet`");
    let out = distill(&["summary", "teacher-v3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Total params: 2,827,402") && text.contains("(None, 512, 4, 4)"),
        "{text}"
    );
}

#[test]
fn train_distill_eval_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let cache = path("cache");
    let train = distill(&[
        "train",
        "--model",
        "teacher-small",
        "--data",
        "embedded",
        "--epochs",
        "1",
        "--out",
        &path("t"),
        "--quiet",
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    assert!(String::from_utf8_lossy(&train.stdout).contains("Epoch 1/1 - "));
    let run = distill(&[
        "distill",
        "--teacher",
        &path("t"),
        "--student",
        "student",
        "--alpha",
        "0.5",
        "--temperature",
        "4",
        "--data",
        "embedded",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--out",
        &path("s"),
        "--logit-cache",
        &cache,
        "--quiet",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one teacher-logit cache file"
    );
    let eval = ok_json(&[
        "eval",
        "--model",
        &path("s"),
        "--data",
        "embedded",
        "--json",
    ]);
    let accuracy = eval["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.2 && accuracy <= 1.0, "{eval}");
    assert!(eval["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(eval["samples"], 1000);
    // The history the run wrote agrees with a fresh evaluation of the saved model.
    let history: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s/history.json")).unwrap())
            .unwrap();
    assert!((history[0]["val_accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-9);

    // Clear errors before any work.
    let teacher = path("t");
    let bad = path("bad");
    for (extra, needle) in [
        (["--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--temperature", "0"], "temperature must be"),
        (["--batch-size", "0"], "batch size must be at least 1"),
    ] {
        let mut args = vec![
            "distill",
            "--teacher",
            &teacher,
            "--data",
            "embedded",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            &bad,
        ];
        args.extend(extra);
        fails_with(&args, needle);
    }
    fails_with(
        &[
            "distill",
            "--teacher",
            &path("nope"),
            "--data",
            "embedded",
            "--out",
            &path("bad"),
        ],
        "does not exist",
    );
    fails_with(
        &[
            "eval",
            "--model",
            &path("t"),
            "--data",
            "folder:/nonexistent",
        ],
        "/nonexistent",
    );
    fails_with(
        &[
            "train",
            "--model",
            "student",
            "--epochs",
            "0",
            "--out",
            &path("bad"),
        ],
        "epochs must be at least 1",
    );
    assert!(!dir.path().join("bad").join("checkpoints").exists());
}

#[test]
fn bench_json_has_every_key() {
    let bench = ok_json(&["bench", "--json", "--threads", "1", "--steps", "1"]);
    for key in [
        "teacher_train_ms",
        "student_train_ms",
        "distill_live_ms",
        "distill_cached_ms",
        "teacher_infer_ips",
        "student_infer_ips",
        "peak_rss_mb",
    ] {
        assert!(bench[key].as_f64().unwrap() > 0.0, "{key}: {bench}");
    }
    assert_eq!(bench["threads"], 1);
    assert_eq!(bench["backend"], "flex");
}

/// The final weights of a run directory, by value (the files also hold random parameter ids).
fn weights(dir: &std::path::Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let loaded = distill::models::checkpoint::load(dir, &burn::tensor::Device::flex()).unwrap();
    let mut collect = Collect(Vec::new());
    loaded.network.visit(&mut collect);
    collect.0
}

#[cfg(unix)]
#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let args = |out: &str| -> Vec<String> {
        [
            "train", "--model", "student", "--data", "embedded", "--epochs", "3", "--seed", "5",
            "--quiet", "--out", out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = distill(
        &args(&path("whole"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(whole.status.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args(&path("killed")))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = dir.path().join("killed/checkpoints/epoch-0001/state.json");
    let started = std::time::Instant::now();
    while !first.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(600)); // into epoch 2
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !dir.path().join("killed/checkpoints/epoch-0003").exists(),
        "the run finished before it was killed"
    );

    let mut resume = args(&path("killed"));
    resume.push("--resume".into());
    let resumed = distill(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        weights(&dir.path().join("whole")) == weights(&dir.path().join("killed")),
        "weights differ after the kill and resume"
    );
    let history = |run: &str| -> serde_json::Value {
        let mut h: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(run).join("history.json")).unwrap(),
        )
        .unwrap();
        for epoch in h.as_array_mut().unwrap() {
            epoch.as_object_mut().unwrap().remove("seconds");
        }
        h
    };
    assert_eq!(history("whole"), history("killed"));
}
