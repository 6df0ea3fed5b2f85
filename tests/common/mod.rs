//! Helpers shared by the integration tests that train on the embedded data, and [`require`], the
//! one gate of every test that needs something a fresh clone lacks.
// each test binary uses its own subset of these
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use distill::data::{self, DataSpec, Dataset, Split};
use distill::models::network::Layer;
use distill::models::{ModelSpec, Network};
use distill::train::{Objective, TrainConfig, TrainJob};

/// Set to `1` (`.ci/run` does), a missing resource fails its test instead of skipping it.
pub const STRICT_ENV: &str = "DISTILL_STRICT_TESTS";

/// Set by `.ci/run` when the machine has no shared directory at all: the tests that read it then
/// say SKIPPED even in strict mode (and `.ci/run` says so loudly), every other skip still fails.
const SHARED_ABSENT_ENV: &str = "DISTILL_SHARED_ABSENT";

/// Whether a test that needs an external resource (downloaded data, a Python with packages, the
/// files in `../shared`) may go on: `present`. Where it is missing the test is to return at once,
/// after one line on stderr, `SKIPPED <test>: needs <what>; <how_to_get>` (written past the test
/// harness's capture, so it shows in a passing run); under `DISTILL_STRICT_TESTS=1` the same line
/// is a panic instead, so a run where everything is installed proves that every test ran.
#[track_caller]
pub fn require(present: bool, what: &str, how_to_get: &str) -> bool {
    gate(present, what, how_to_get, false)
}

#[track_caller]
fn gate(present: bool, what: &str, how_to_get: &str, in_shared_dir: bool) -> bool {
    if present {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!(
        "SKIPPED {}::{test}: needs {what}; {how_to_get}",
        env!("CARGO_CRATE_NAME")
    );
    let exempt = in_shared_dir && std::env::var_os(SHARED_ABSENT_ENV).is_some_and(|v| v == "1");
    if std::env::var_os(STRICT_ENV).is_some_and(|v| v == "1") && !exempt {
        panic!("{line} ({STRICT_ENV}=1: a skipped test fails)");
    }
    let _ = writeln!(std::io::stderr(), "{line}");
    false
}

/// `relative` under the project's shared directory, `../shared` beside the checkout (or
/// `DISTILL_SHARED_DIR`): the pretrained teachers and dataset tarballs the maintainers keep next to
/// their clones, which a user's clone has not. `None`, through [`require`], where it is absent.
#[track_caller]
pub fn shared(relative: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DISTILL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let path = dir.join(relative);
    gate(
        path.exists(),
        &format!("{}", path.display()),
        "it is in the maintainers' shared directory beside their checkouts (../shared), not in a clone",
        true,
    )
    .then_some(path)
}

/// The embedded real Fashion-MNIST subset.
pub fn embedded() -> Dataset {
    data::load(&DataSpec::Embedded).unwrap()
}

/// Dropout draws from the backend's random generator, which is global to the process and reseeded
/// per epoch; trainings running at the same time in one test process would interleave their draws.
/// Tests that train or compare trainings hold this lock.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    TRAINING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Default hyper-parameters over `epochs` epochs.
pub fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        ..TrainConfig::default()
    }
}

/// A quiet job evaluated on the test split, starting from a random initialisation.
pub fn job<'a>(
    spec: &'a ModelSpec,
    data: &'a Dataset,
    train: &'a Split,
    config: &'a TrainConfig,
    objective: Objective<'a>,
    out: &'a Path,
    resume: bool,
) -> TrainJob<'a> {
    TrainJob {
        spec,
        classes: &data.classes,
        train,
        eval: &data.test,
        config,
        objective,
        out,
        resume,
        init_from: None,
        progress: false,
        verbose: false,
    }
}

/// The values of a 2-D tensor, row-major.
pub fn to_vec(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Random batch-norm statistics and affine terms, so the export of every term is exercised (in
/// residual blocks' bodies and shortcuts too).
pub fn randomize_batch_norms(network: Network, device: &Device) -> Network {
    fn visit(layers: &mut [Layer], k: &mut f32, device: &Device) {
        for layer in layers {
            match layer {
                Layer::BatchNorm(norm) => {
                    let n = norm.gamma.val().dims()[0];
                    // a different period per term: with one period for all four, the deep
                    // residual zoo models' ReLUs zeroed every logit
                    let ramp = |offset: f32, scale: f32, speed: f32| -> Tensor<1> {
                        let values: Vec<f32> = (0..n)
                            .map(|i| offset + scale * ((i as f32 + *k) * speed).sin())
                            .collect();
                        Tensor::from_data(TensorData::new(values, [n]), device)
                    };
                    norm.gamma = Param::from_tensor(ramp(1.0, 0.3, 0.7));
                    norm.beta = Param::from_tensor(ramp(0.0, 0.2, 1.3));
                    norm.running_mean = RunningState::new(ramp(0.1, 0.3, 0.9));
                    norm.running_var = RunningState::new(ramp(1.2, 0.5, 0.4));
                    *k += 1.0;
                }
                Layer::Residual(stage) => {
                    for block in &mut stage.blocks {
                        visit(&mut block.body, k, device);
                        visit(&mut block.shortcut, k, device);
                    }
                }
                _ => {}
            }
        }
    }
    let mut network = network;
    visit(&mut network.layers, &mut 0.0, device);
    network
}
