//! Helpers shared by the integration tests that train on the embedded data.
// each test binary uses its own subset of these
#![allow(dead_code)]

use std::path::Path;

use distill::data::{self, DataSpec, Dataset, Split};
use distill::models::ModelSpec;
use distill::train::{Objective, TrainConfig, TrainJob};

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
