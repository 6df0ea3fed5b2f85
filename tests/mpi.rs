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

/// `distill ARGS` in one process on one thread, which must succeed.
fn alone<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .env("RAYON_NUM_THREADS", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    output
}

/// `mpirun -np 2 [MPIRUN_ARGS] distill ARGS`, which must succeed.
fn on_two_ranks<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(
    mpirun_args: &[&str],
    args: I,
) -> Output {
    let output = mpirun(2)
        .args(mpirun_args)
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    output
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
    // 47 of the 6,000 embedded images held out leave 5,953 = 93 x 64 + 1 to train on: the last
    // batch holds one image, so rank 1's share of it is empty and it adds nothing
    let args = |out: &str| -> Vec<String> {
        let mut args = train_args(&spec, &dir.path().join(out), 64);
        args.extend(["--val-split".to_string(), "0.00783".to_string()]);
        args
    };
    alone(args("one"));
    on_two_ranks(&[], args("two"));

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

fn distill_args(teacher: &Path, spec: &Path, out: &Path, cache: &Path, views: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--student",
        spec.to_str().unwrap(),
        "--data",
        "embedded",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--teacher-logits",
        cache.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if views {
        args.extend(["--augment", "--views", "3"].map(String::from));
    }
    args
}

#[test]
fn teacher_logit_caches_built_by_two_ranks_are_the_files_one_process_writes() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    std::fs::write(path("spec.toml"), SPEC).unwrap();
    let teacher = path("teacher");
    alone([
        "train",
        "--model",
        "teacher-small",
        "--data",
        "embedded",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        teacher.to_str().unwrap(),
    ]);
    for (views, name) in [(false, "plain"), (true, "views")] {
        let run = |ranks: &str| {
            distill_args(
                &teacher,
                &path("spec.toml"),
                &path(&format!("{name}-{ranks}")),
                &path(&format!("{name}-{ranks}.bin")),
                views,
            )
        };
        alone(run("one"));
        on_two_ranks(&[], run("two"));
        let (a, b) = (
            std::fs::read(path(&format!("{name}-one.bin"))).unwrap(),
            std::fs::read(path(&format!("{name}-two.bin"))).unwrap(),
        );
        assert!(a.len() > 10_000, "{name}: {} bytes", a.len());
        assert!(
            a == b,
            "{name}: the 2-rank cache differs from the 1-process cache"
        );
    }
}

/// The ranks' process ids: mpirun's children running distill.
fn ranks_of(mpirun: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &mpirun.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(unix)]
#[test]
fn a_rank_killed_mid_epoch_ends_the_job_quickly_and_its_checkpoint_resumes_on_one_or_two_ranks() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.path().join("run");
    let mut args = train_args(&spec, &out, 64);
    let epochs = args.iter().position(|a| a == "--epochs").unwrap();
    args[epochs + 1] = "4".into();
    let job = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = out.join("checkpoints/epoch-0001/state.json");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed().as_secs() < 300,
            "no first checkpoint within 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let ranks = ranks_of(job.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    let killed_at = std::time::Instant::now();
    // the second child is rank 1 (mpirun starts them in rank order); either one will do
    Command::new("kill")
        .args(["-KILL", &ranks[1].to_string()])
        .status()
        .unwrap();
    let output = job.wait_with_output().unwrap();
    let ended_after = killed_at.elapsed();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        ended_after.as_secs() < 30,
        "the job took {ended_after:?} to end"
    );
    assert!(
        !out.join("checkpoints/epoch-0004").exists(),
        "the run finished before the kill"
    );
    // the survivor says why it stops; the launcher names the rank that died
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error (rank 0 of 2): stopped by the MPI launcher"),
        "{}",
        text(&output)
    );
    eprintln!(
        "a killed rank ended the job in {:.2} s",
        ended_after.as_secs_f64()
    );
    // the surviving checkpoint resumes to the end on one process, and (a copy of it) on two ranks
    let copy = dir.path().join("copy");
    copy_dir(&out, &copy);
    let mut one_args = args.clone();
    one_args.push("--resume".into());
    alone(&one_args);
    let mut two_args = args.clone();
    let at = two_args.iter().position(|a| a == "--out").unwrap();
    two_args[at + 1] = copy.to_str().unwrap().into();
    two_args.push("--resume".into());
    on_two_ranks(&[], &two_args);
    assert!(
        out.join("checkpoints/epoch-0004").exists() && copy.join("checkpoints/epoch-0004").exists()
    );
    // the same training from the same checkpoint, up to summation order
    let diff = common::max_abs_diff(&run_support::weights(&out), &run_support::weights(&copy));
    eprintln!("resumed on 1 process vs 2 ranks: max abs weight difference {diff:e}");
    assert!(diff <= 1e-5, "resumed on 1 process vs 2 ranks: {diff:e}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `distill run --config CONFIG --quiet [EXTRA] --out OUT`.
fn study_args(config: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    ["run", "--config", config.to_str().unwrap(), "--quiet"]
        .iter()
        .chain(extra)
        .chain(&["--out", out.to_str().unwrap()])
        .map(|s| s.to_string())
        .collect()
}

/// A small study: a teacher, 2 seeds of scratch and of 2 distilled points (6 student runs).
const STUDY: &str = r#"
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
t2_scaling = [true]
"#;

#[test]
fn a_study_spread_over_two_ranks_reports_what_one_process_reports() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("study.toml");
    std::fs::write(&config, STUDY).unwrap();
    let study = |out: &str| study_args(&config, &dir.path().join(out), &["--distribute", "runs"]);
    alone(study("one"));
    let two = on_two_ranks(&["--tag-output"], study("two"));
    let stdout = String::from_utf8_lossy(&two.stdout);
    assert!(stdout.contains("on 2 MPI ranks"), "{stdout}");
    assert_eq!(
        stdout.matches("# Distillation report").count(),
        1,
        "{stdout}"
    );
    let report = |out: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("report.json")).unwrap(),
        )
        .unwrap()
    };
    let accuracies = |report: &serde_json::Value| -> Vec<serde_json::Value> {
        let mut all = vec![report["scratch"]["accuracies"].clone()];
        for d in report["distilled"].as_array().unwrap() {
            all.push(d["accuracies"].clone());
            all.push(d["control"].clone());
        }
        all
    };
    // each run is trained whole by one rank, alone: the same bits as one process
    assert_eq!(accuracies(&report("one")), accuracies(&report("two")));
    // both ranks trained runs (mpirun tags each line with `[job,rank]<stdout>:`)
    for rank in 0..2 {
        let tag = format!(",{rank}]<stdout>:");
        let runs = stdout
            .lines()
            .filter(|l| l.contains(&tag) && l.contains(", seed "))
            .count();
        assert!(runs > 0, "rank {rank} trained no run:\n{stdout}");
    }
}

#[cfg(unix)]
#[test]
fn a_hung_rank_stops_the_job_after_the_stated_timeout_with_the_last_checkpoint_intact() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.path().join("run");
    let mut args = train_args(&spec, &out, 64);
    let epochs = args.iter().position(|a| a == "--epochs").unwrap();
    args[epochs + 1] = "30".into();
    let job = mpirun(2)
        .args(["-x", "DISTILL_MPI_TIMEOUT=5"])
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = out.join("checkpoints/epoch-0001/state.json");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed().as_secs() < 300,
            "no first checkpoint within 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ranks = ranks_of(job.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    // a stopped process neither dies nor answers: what a hung peer or a dead link looks like
    Command::new("kill")
        .args(["-STOP", &ranks[1].to_string()])
        .status()
        .unwrap();
    let stopped_at = std::time::Instant::now();
    let output = job.wait_with_output().unwrap();
    let ended_after = stopped_at.elapsed();
    let _ = Command::new("kill")
        .args(["-KILL", &ranks[1].to_string()])
        .status();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        ended_after.as_secs() >= 4 && ended_after.as_secs() < 30,
        "the job ended {ended_after:?} after the stop (timeout 5 s)"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("did not answer within 5 s"),
        "{}",
        text(&output)
    );
    eprintln!(
        "a hung rank ended the job after {:.1} s",
        ended_after.as_secs_f64()
    );
    // the last checkpoint resumes, here on one process, to the end
    alone(args.iter().map(String::as_str).chain(["--resume"]));
    assert!(out.join("checkpoints/epoch-0030").exists());
}

#[test]
fn a_study_trained_data_parallel_on_two_ranks_matches_one_process() {
    if !have_mpirun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    // no dropout anywhere (each rank draws its own masks), and a feature method (AT, whose heads
    // are empty; its loss is a mean over the images, so the shares add up to the global batch's)
    let study = format!(
        r#"
data = "embedded"
seeds = 1

[teacher]
model = "{spec}"
epochs = 1

[student]
model = "{spec}"
epochs = 2

[training]
batch_size = 64
seed = 7

[sweep]
alpha = [0.5]
temperature = [2.0]
t2_scaling = [true]

[[method]]
features = {{ kind = "at", taps = ["block1"] }}
"#,
        spec = spec.display()
    );
    let config = dir.path().join("study.toml");
    std::fs::write(&config, study).unwrap();
    let args = |out: &str| study_args(&config, &dir.path().join(out), &[]);
    alone(args("one"));
    let two = on_two_ranks(&[], args("two"));
    let stdout = String::from_utf8_lossy(&two.stdout);
    // rank 1's standard output is dropped: one report, not two
    assert_eq!(
        stdout.matches("# Distillation report").count(),
        1,
        "{stdout}"
    );
    for run in [
        "teacher",
        "scratch/seed-7",
        "distilled/a0.5-T2-t2/seed-7",
        "methods/at/seed-7",
    ] {
        let (a, b) = (
            dir.path().join("one").join(run),
            dir.path().join("two").join(run),
        );
        let diff = common::max_abs_diff(&run_support::weights(&a), &run_support::weights(&b));
        eprintln!("{run}: 2 ranks vs 1 process, max abs weight difference {diff:e}");
        assert!(diff <= 1e-5, "{run}: {diff:e}");
        let log = std::fs::read_to_string(b.join("train.log")).unwrap();
        assert!(
            log.contains("epoch 1: the 2 ranks hold the same weights"),
            "{run}: {log}"
        );
    }
}
