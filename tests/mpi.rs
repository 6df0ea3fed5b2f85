//! Data-parallel training under `mpirun` (the `mpi` feature): 2 ranks on one machine, shared
//! memory transport. Needs Open MPI (`apt-get install openmpi-bin libopenmpi-dev`); `.ci/run`
//! installs it and runs this file with `cargo test --release --features mpi --test mpi`.
#![cfg(feature = "mpi")]

mod common;
mod run_support;

use std::path::Path;
use std::process::{Command, Output};

/// A small convolutional student without dropout: dropout masks are drawn per rank, so a run
/// with dropout cannot match one process step for step.
const SPEC: &str = r#"
name = "mpi-student"

[[layers]]
type = "conv2d"
filters = 8
kernel = 3
stride = 2
padding = "same"

[[layers]]
type = "leaky_relu"
slope = 0.2

[[layers]]
type = "max_pool2d"
size = 2

[[layers]]
type = "flatten"

[[layers]]
type = "dense"
units = 10
"#;

fn have_mpirun() -> bool {
    common::require(
        Command::new("mpirun")
            .arg("--version")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .is_ok_and(|o| o.status.success()),
        "Open MPI's mpirun",
        "apt-get install openmpi-bin libopenmpi-dev",
    )
}

/// `mpirun` for 2 ranks on this machine: as root in a container, sharing 2 cores with the other
/// tests (`--bind-to none`, yield while waiting), with a job-wide timeout as the backstop.
fn mpirun(ranks: usize) -> Command {
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .args([
            "-np",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args([
            "--mca",
            "btl",
            "self,vader",
            "--mca",
            "mpi_yield_when_idle",
            "1",
        ])
        .args(["--timeout", "600", "-q"]);
    command
}

fn train_args(spec: &Path, out: &Path, batch: usize) -> Vec<String> {
    [
        "train",
        "--model",
        spec.to_str().unwrap(),
        "--data",
        "embedded",
        "--epochs",
        "2",
        "--batch-size",
        &batch.to_string(),
        "--seed",
        "3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn two_ranks_train_the_weights_one_process_trains_on_the_same_global_batches() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    // 100 does not divide the embedded training split, so the last batch is short and split
    // unevenly; 2 divides 100
    let single = Command::new(env!("CARGO_BIN_EXE_distill"))
        .env("RAYON_NUM_THREADS", "1")
        .args(train_args(&spec, &dir.path().join("one"), 100))
        .output()
        .unwrap();
    assert!(single.status.success(), "{}", text(&single));
    let parallel = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(train_args(&spec, &dir.path().join("two"), 100))
        .output()
        .unwrap();
    assert!(parallel.status.success(), "{}", text(&parallel));

    // Both ranks hashed their weights after every epoch and agreed (a disagreement fails the run).
    let log = std::fs::read_to_string(dir.path().join("two/train.log")).unwrap();
    for epoch in [1, 2] {
        assert!(
            log.contains(&format!("epoch {epoch}: the 2 ranks hold the same weights")),
            "{log}"
        );
    }
    let one = run_support::weights(&dir.path().join("one"));
    let two = run_support::weights(&dir.path().join("two"));
    assert_eq!(one.len(), two.len());
    let max_diff = common::max_abs_diff(&one, &two);
    // Summation order is the only difference (half-batch gradients added after the fact), so
    // the weights drift apart by rounding alone: about 1e-7 per step, which Adam's normalised
    // updates keep from growing.
    eprintln!(
        "2 ranks vs 1 process: {} weights, max abs difference {max_diff:e}",
        one.len()
    );
    assert!(max_diff <= 1e-5, "weights differ by {max_diff:e}");
    assert!(max_diff > 0.0 || one == two);
    let (h1, h2) = (
        run_support::history(&dir.path().join("one")),
        run_support::history(&dir.path().join("two")),
    );
    for (a, b) in h1.as_array().unwrap().iter().zip(h2.as_array().unwrap()) {
        let loss = |h: &serde_json::Value| h["loss"].as_f64().unwrap();
        assert!((loss(a) - loss(b)).abs() < 1e-4, "{a} vs {b}");
        assert_eq!(a["val_accuracy"], b["val_accuracy"]);
    }
    // only rank 0 wrote: one log line per epoch, not two
    assert_eq!(log.matches("Epoch 1/2").count(), 1, "{log}");
}

#[test]
fn a_batch_the_ranks_cannot_split_and_ranks_with_different_settings_stop_with_one_paragraph() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let odd = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(train_args(&spec, &dir.path().join("odd"), 63))
        .output()
        .unwrap();
    assert!(!odd.status.success(), "{}", text(&odd));
    let stderr = String::from_utf8_lossy(&odd.stderr);
    assert!(
        stderr.contains("`batch_size` 63 cannot be split evenly over 2 MPI ranks"),
        "{}",
        text(&odd)
    );
    assert!(!dir.path().join("odd/checkpoints").exists());

    // MPMD: rank 0 and rank 1 get different seeds
    let mut command = mpirun(1);
    command
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(train_args(&spec, &dir.path().join("mixed"), 64))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_distill")]);
    let mut other = train_args(&spec, &dir.path().join("mixed"), 64);
    let seed = other.iter().position(|a| a == "--seed").unwrap();
    other[seed + 1] = "4".into();
    let mixed = command.args(other).output().unwrap();
    assert!(!mixed.status.success(), "{}", text(&mixed));
    assert!(
        String::from_utf8_lossy(&mixed.stderr)
            .contains("the ranks disagree on the model, the training settings and the data size: rank(s) 1 differ from rank 0"),
        "{}",
        text(&mixed)
    );
}
