//! Helpers shared by the tests that compare whole training runs (`cli`, `experiment`).

#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The weights of a model directory, by value (burnpack files also hold random parameter ids,
/// so two identical trainings are not byte-identical on disk).
pub fn weights(dir: &Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let loaded = distill::models::checkpoint::load(dir, &burn::tensor::Device::flex())
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
    let mut collect = Collect(Vec::new());
    loaded.network.visit(&mut collect);
    collect.0
}

/// A run directory's `history.json` without the wall-clock field and the compute settings it was
/// measured under (threads, jobs, CPU).
pub fn history(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("history.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut h: serde_json::Value = serde_json::from_str(&text).unwrap();
    for epoch in h.as_array_mut().unwrap() {
        let epoch = epoch.as_object_mut().unwrap();
        epoch.remove("seconds");
        epoch.remove("compute");
    }
    h
}

/// Waits until `marker` exists (the child is training past it), then a little more so the kill
/// lands mid-epoch, and SIGKILLs the child.
pub fn kill_after(child: &mut Child, marker: &Path, extra: Duration) {
    let started = Instant::now();
    while !marker.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the run ended ({status}) before {} appeared",
                marker.display()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{} did not appear within 5 minutes",
            marker.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(extra);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// `distill run --config CONFIG --out OUT --quiet` on one compute thread, stdout discarded: a
/// study to run whole, or to kill and resume.
pub fn quiet_run(config: &Path, out: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_distill"));
    command
        .args(["run", "--config"])
        .arg(config)
        .arg("--quiet")
        .arg("--out")
        .arg(out)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null());
    command
}
