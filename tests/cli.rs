//! The command line as a user runs it: JSON outputs, the train → distill → eval path, and clear
//! errors (exit code 1, never a panic's 101).

use std::process::{Command, Output};

mod run_support;

fn distill(args: &[&str]) -> Output {
    distill_with_env(args, &[])
}

/// [`distill`] with extra environment variables.
fn distill_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    ok_json_with_env(args, &[])
}

/// [`ok_json`] with extra environment variables.
fn ok_json_with_env(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = distill_with_env(args, env);
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
    assert_eq!(bench["layers"], "local");
}

#[test]
fn bench_model_times_one_architecture_against_burns_layers() {
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/specs/teacher-vgg.toml"
    );
    let bench = ok_json(&[
        "bench",
        "--model",
        spec,
        "--json",
        "--threads",
        "1",
        "--steps",
        "1",
        "--compare-burn",
    ]);
    assert_eq!(bench["model"], "teacher-vgg");
    assert_eq!(bench["layers"], "local");
    assert_eq!(bench["burn_layers"]["layers"], "burn");
    for result in [&bench, &bench["burn_layers"]] {
        for key in [
            "train_ms",
            "infer_ips",
            "features_ms",
            "features_layerwise_ms",
        ] {
            assert!(result[key].as_f64().unwrap() > 0.0, "{key}: {bench}");
        }
    }
    for key in ["train", "infer"] {
        let ratio = bench["speedup"][key].as_f64().unwrap();
        let want = match key {
            "train" => {
                bench["burn_layers"]["train_ms"].as_f64().unwrap()
                    / bench["train_ms"].as_f64().unwrap()
            }
            _ => {
                bench["infer_ips"].as_f64().unwrap()
                    / bench["burn_layers"]["infer_ips"].as_f64().unwrap()
            }
        };
        assert!(
            (ratio - want).abs() < 1e-9 * want,
            "{key}: {ratio} vs {want}"
        );
    }
    fails_with(
        &["bench", "--model", "no-such-model"],
        "unknown model `no-such-model`",
    );
}

/// `DISTILL_LAYERS=burn` switches Flex back to burn's own layers (how the recorded studies, made
/// before the local kernels, are reproduced).
#[test]
fn distill_layers_burn_selects_burns_layers() {
    let bench = ok_json_with_env(
        &["bench", "--json", "--threads", "1", "--steps", "1"],
        &[("DISTILL_LAYERS", "burn")],
    );
    assert_eq!(bench["layers"], "burn");
    assert!(bench["teacher_train_ms"].as_f64().unwrap() > 0.0);
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
    run_support::kill_after(&mut child, &first, std::time::Duration::from_millis(600)); // into epoch 2
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
        run_support::weights(&dir.path().join("whole"))
            == run_support::weights(&dir.path().join("killed")),
        "weights differ after the kill and resume"
    );
    assert_eq!(
        run_support::history(&dir.path().join("whole")),
        run_support::history(&dir.path().join("killed"))
    );
}

#[test]
fn an_output_directory_that_cannot_be_created_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    // a regular file where a directory is needed: unwritable even for root
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    fails_with(
        &[
            "train",
            "--model",
            "student",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ],
        "cannot create output directory",
    );
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quick.toml");
    fails_with(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "cannot create output directory",
    );
}

#[test]
fn a_diverging_run_stops_naming_epoch_and_step_and_keeps_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let output = distill(&[
        "train",
        "--model",
        "student",
        "--epochs",
        "2",
        "--lr",
        "1e30",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the loss became") && stderr.contains("at epoch 1, step "),
        "{stderr}"
    );
    assert!(stderr.contains("Try a lower learning rate"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("error: the loss became"), "{log}");
    assert!(
        !out.join("model.bpk").exists(),
        "no model presented as trained"
    );
}

/// Sets every weight of the checkpoint in `dir` to NaN and re-records its manifest, as if the
/// state saved after an epoch held a numerical fault that only shows in the next one.
fn poison_checkpoint(dir: &std::path::Path) {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::Tensor;
    use distill::models::checkpoint;
    struct Nan;
    impl ModuleMapper for Nan {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.mul_scalar(f32::NAN))
        }
    }
    let loaded = checkpoint::load(dir, &burn::tensor::Device::flex()).unwrap();
    let poisoned = loaded.network.map(&mut Nan);
    let manifest: std::collections::BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(dir.join(checkpoint::MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    checkpoint::save(dir, &loaded.spec, &loaded.meta, &poisoned).unwrap();
    let files: Vec<&str> = manifest.keys().map(String::as_str).collect();
    checkpoint::write_manifest(dir, &files).unwrap();
}

#[test]
fn a_nan_in_a_resumed_epoch_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = [
        "distill",
        "--teacher",
        "",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    // a teacher, and a distilled student with two epochs, of which only the first is kept
    let teacher = dir.path().join("teacher");
    let trained = distill(&[
        "train",
        "--model",
        "tests/corpus/tiny-b.toml",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        teacher.to_str().unwrap(),
    ]);
    assert!(trained.status.success());
    let mut args = args.to_vec();
    args[2] = teacher.to_str().unwrap();
    let cache = dir.path().join("logits.bin");
    args.extend(["--teacher-logits", cache.to_str().unwrap()]);
    assert!(distill(&args).status.success());
    std::fs::remove_dir_all(out.join("checkpoints/epoch-0002")).unwrap();
    let kept = out.join("checkpoints/epoch-0001");
    poison_checkpoint(&kept);

    args.push("--resume");
    let output = distill(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the loss became NaN at epoch 2, step 1")
            && stderr.contains("the last good checkpoint (epoch 1) is kept in")
            && stderr.contains("or a temperature"),
        "{stderr}"
    );
    assert!(kept.join("state.json").exists());
    distill::models::checkpoint::verify_manifest(&kept).unwrap();
}

/// Same seed and backend ⇒ the same weights and metrics, whether the Flex kernels run on one
/// thread or two (the README's reproducibility section relies on this).
#[test]
fn one_and_two_threads_train_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let train = |threads: &str| {
        let out = dir.path().join(format!("threads-{threads}"));
        let status = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args([
                "train", "--model", "student", "--epochs", "1", "--seed", "11", "--quiet",
            ])
            .arg("--out")
            .arg(&out)
            .env("RAYON_NUM_THREADS", threads)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        (run_support::weights(&out), run_support::history(&out))
    };
    let (one_weights, one_history) = train("1");
    let (two_weights, two_history) = train("2");
    assert!(
        one_weights == two_weights,
        "weights differ between 1 and 2 threads"
    );
    assert_eq!(one_history, two_history);
}

/// A build without the `mpi` feature started by `mpirun` (its variables simulated here) must
/// not train one copy of the run per rank: rank 0 says how to build the feature, and every
/// rank exits 2 without touching --out.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_started_by_an_mpi_launcher_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let launched = |rank: &str| {
        Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(["train", "--model", "student", "--epochs", "1", "--out"])
            .arg(&out)
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("OMPI_COMM_WORLD_RANK", rank)
            .output()
            .unwrap()
    };
    let root = launched("0");
    let stderr = String::from_utf8_lossy(&root.stderr);
    assert_eq!(root.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("started by an MPI launcher (OMPI_COMM_WORLD_SIZE=2)")
            && stderr.contains("cargo build --release --features mpi"),
        "{stderr}"
    );
    let other = launched("1");
    assert_eq!(other.status.code(), Some(2));
    assert!(
        other.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(!out.exists());
}
