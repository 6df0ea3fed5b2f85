//! The whole study of the reference notebook as one resumable job: train (or load) the teacher,
//! train the student from scratch, distil it for every point of an (alpha, T, T²) grid, over
//! one or more seeds, then evaluate everything and write the report.
//!
//! Layout of the output directory:
//! `teacher/`, `scratch/seed-S/`, `distilled/<alpha>-<T>-<t2>/seed-S/` (each a run directory of
//! [`crate::train`]), `teacher-logits/` (the shared logit cache), `report.md`, `report.json` and the
//! plots. Starting the same experiment again with the same `--out` skips finished runs and resumes
//! an interrupted one from its last checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::data::{self, Augmentation, DataSpec, Dataset, Split};
use crate::distill::{cached_logits, Teacher, TeacherLogits};
use crate::losses::DistillLoss;
use crate::models::{checkpoint, resolve_spec, ModelSpec};
use crate::report::{self, ModelResult, Report};
use crate::train::{
    fit, EpochRecord, Objective, OptimizerConfig, TrainConfig, TrainJob, TrainOutcome,
};

fn default_data() -> String {
    "embedded".into()
}
fn default_seeds() -> usize {
    1
}
fn default_epochs() -> usize {
    20
}
fn default_student() -> String {
    "student".into()
}
fn default_batch_size() -> usize {
    64
}
fn default_seed() -> u64 {
    42
}

/// How to get the teacher: train it from a model, or load a trained one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TeacherSetting {
    /// `teacher = "DIR"`: a checkpoint directory from an earlier `distill train`.
    Checkpoint(PathBuf),
    /// `[teacher]` table: train this model first.
    Train(TeacherConfig),
}

/// `[teacher]`: the model to train as teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Zoo name or spec file.
    pub model: String,
    /// Epochs of teacher training.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
}

/// `[student]`: the model trained from scratch and by distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Zoo name or spec file.
    #[serde(default = "default_student")]
    pub model: String,
    /// Epochs for the scratch and the distilled students.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            model: default_student(),
            epochs: default_epochs(),
        }
    }
}

/// `[training]`: settings shared by every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Images per step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Base seed; seed k of `--seeds K` is `seed + k`.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Adam(W) and the learning-rate schedule.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Label smoothing of the cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Augmentation; when set, the teacher runs live instead of from the logit cache.
    #[serde(default)]
    pub augmentation: Option<Augmentation>,
    /// Evaluate on this fraction of the training split instead of the test split during training.
    #[serde(default)]
    pub val_split: Option<f64>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            batch_size: default_batch_size(),
            seed: default_seed(),
            optimizer: OptimizerConfig::default(),
            label_smoothing: 0.0,
            augmentation: None,
            val_split: None,
        }
    }
}

/// Which distillation loss the sweep uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SweepLoss {
    /// Hinton's KD loss (see [`DistillLoss::Kd`]).
    #[default]
    Kd,
    /// MSE on logits (temperature and T² are ignored).
    Mse,
}

/// `[sweep]`: the grid of distillation settings; every combination is one distilled student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Weights of the label loss.
    pub alpha: Vec<f64>,
    /// Temperatures.
    #[serde(default = "default_temperatures")]
    pub temperature: Vec<f64>,
    /// Whether the KL term is scaled by T².
    #[serde(default = "default_t2")]
    pub t2_scaling: Vec<bool>,
    /// The loss.
    #[serde(default)]
    pub loss: SweepLoss,
}

fn default_temperatures() -> Vec<f64> {
    vec![10.0]
}
fn default_t2() -> Vec<bool> {
    vec![true]
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            alpha: vec![0.1, 0.2, 0.5, 0.9],
            temperature: default_temperatures(),
            t2_scaling: default_t2(),
            loss: SweepLoss::Kd,
        }
    }
}

/// An experiment file (`configs/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Dataset spec (see [`DataSpec`]).
    #[serde(default = "default_data")]
    pub data: String,
    /// Output directory (overridden by `--out`).
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Number of seeds for the students (mean ± std in the report).
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// The teacher: a checkpoint directory, or a `[teacher]` table to train one.
    pub teacher: TeacherSetting,
    /// The student.
    #[serde(default)]
    pub student: StudentConfig,
    /// Shared training settings.
    #[serde(default)]
    pub training: TrainingConfig,
    /// The distillation grid.
    #[serde(default)]
    pub sweep: SweepConfig,
}

/// Most points a sweep may have (alpha × temperature × T² values): each point trains a student
/// per seed, so more is never a real study, only a typo or a corrupt file.
pub const MAX_SWEEP_POINTS: usize = 10_000;

/// One point of the sweep grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// Label-loss weight.
    pub alpha: f64,
    /// Temperature.
    pub temperature: f64,
    /// T² scaling of the KL term.
    pub t2_scaling: bool,
}

impl GridPoint {
    fn loss(self, kind: SweepLoss) -> DistillLoss {
        match kind {
            SweepLoss::Kd => DistillLoss::Kd {
                alpha: self.alpha,
                temperature: self.temperature,
                t2_scaling: self.t2_scaling,
            },
            SweepLoss::Mse => DistillLoss::Mse { alpha: self.alpha },
        }
    }

    /// Directory name of this point, e.g. `a0.1-T10-t2`.
    pub fn dir_name(self) -> String {
        format!(
            "a{}-T{}-{}",
            self.alpha,
            self.temperature,
            if self.t2_scaling { "t2" } else { "no-t2" }
        )
    }
}

impl ExperimentConfig {
    /// Reads and validates an experiment file. Unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment config {}", path.display()))?;
        let config: ExperimentConfig = toml::from_str(&text)
            .with_context(|| format!("experiment config {} is invalid", path.display()))?;
        config
            .validate()
            .with_context(|| format!("experiment config {}", path.display()))?;
        Ok(config)
    }

    /// Parses and validates an experiment config from TOML text, as [`ExperimentConfig::from_file`]
    /// does after reading the file (whose errors also name the path). Unknown keys are errors.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Self> {
        let config: ExperimentConfig =
            toml::from_str(text).context("experiment config is invalid")?;
        config.validate()?;
        Ok(config)
    }

    /// The grid, in a stable order (T² setting, then temperature, then alpha).
    pub fn grid(&self) -> Vec<GridPoint> {
        let mut points = Vec::new();
        let temperatures = if self.sweep.loss == SweepLoss::Mse {
            vec![1.0]
        } else {
            self.sweep.temperature.clone()
        };
        let t2s = if self.sweep.loss == SweepLoss::Mse {
            vec![false]
        } else {
            self.sweep.t2_scaling.clone()
        };
        for &t2_scaling in &t2s {
            for &temperature in &temperatures {
                for &alpha in &self.sweep.alpha {
                    points.push(GridPoint {
                        alpha,
                        temperature,
                        t2_scaling,
                    });
                }
            }
        }
        points
    }

    /// Rejects impossible values before any work starts, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.seeds == 0 {
            bail!("`seeds` must be at least 1");
        }
        if self.student.epochs == 0 {
            bail!("`student.epochs` must be at least 1");
        }
        if let TeacherSetting::Train(t) = &self.teacher {
            if t.epochs == 0 {
                bail!("`teacher.epochs` must be at least 1");
            }
        }
        if self.training.batch_size == 0 {
            bail!("`training.batch_size` must be at least 1");
        }
        if self.sweep.alpha.is_empty() {
            bail!("`sweep.alpha` must list at least one value");
        }
        // `mse` ignores the temperatures and T² settings; `kd` crosses them with every alpha, so
        // an empty list would leave no point to train (and no distilled student to report).
        if self.sweep.loss == SweepLoss::Kd {
            if self.sweep.temperature.is_empty() {
                bail!("`sweep.temperature` must list at least one value with loss \"kd\"");
            }
            if self.sweep.t2_scaling.is_empty() {
                bail!("`sweep.t2_scaling` must list at least one value with loss \"kd\"");
            }
        }
        // counted before `grid()` builds the points: a few kB of lists can describe billions
        let (temperatures, t2s) = match self.sweep.loss {
            SweepLoss::Kd => (self.sweep.temperature.len(), self.sweep.t2_scaling.len()),
            SweepLoss::Mse => (1, 1),
        };
        let points = self
            .sweep
            .alpha
            .len()
            .checked_mul(temperatures)
            .and_then(|n| n.checked_mul(t2s));
        match points {
            Some(points) if points <= MAX_SWEEP_POINTS => {}
            _ => bail!(
                "`sweep` has {} alpha × {temperatures} temperature × {t2s} t2_scaling values, {} points; expected at most {MAX_SWEEP_POINTS} (each point trains a student)",
                self.sweep.alpha.len(),
                points.map_or_else(|| format!("more than 2^{}", usize::BITS), |p| p.to_string())
            ),
        }
        for point in self.grid() {
            point
                .loss(self.sweep.loss)
                .validate()
                .map_err(|e| anyhow::anyhow!("`sweep`: {e}"))?;
        }
        self.data
            .parse::<DataSpec>()
            .map_err(|e| anyhow::anyhow!("`data`: {e}"))?;
        Ok(())
    }

    fn train_config(&self, epochs: usize, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: self.training.batch_size,
            seed,
            optimizer: self.training.optimizer.clone(),
            label_smoothing: self.training.label_smoothing,
            augmentation: self.training.augmentation.clone(),
        }
    }
}

/// Options of one `distill run`.
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Progress bars.
    pub progress: bool,
    /// Device.
    pub device: burn::tensor::Device,
    /// Backend name, for the report.
    pub backend: String,
}

fn seeds(config: &ExperimentConfig) -> Vec<u64> {
    (0..config.seeds as u64)
        .map(|k| config.training.seed + k)
        .collect()
}

fn eval_result(
    name: &str,
    dirs: &[PathBuf],
    spec: &ModelSpec,
    histories: Vec<Vec<EpochRecord>>,
    test: &Split,
    device: &burn::tensor::Device,
) -> anyhow::Result<ModelResult> {
    let mut accuracies = Vec::new();
    let mut losses = Vec::new();
    for dir in dirs {
        let loaded = checkpoint::load(dir, device)?;
        let (loss, accuracy) = crate::train::evaluate(&loaded.network, test, device, 256);
        accuracies.push(accuracy);
        losses.push(loss);
    }
    let stats = spec.stats(test.shape)?;
    Ok(ModelResult::new(
        name,
        accuracies,
        losses,
        stats.params,
        stats.bytes,
        histories,
    ))
}

/// Checks everything that can be checked against the loaded data before the first epoch, so a
/// study does not train a teacher for hours and then stop on a student that cannot fit.
fn preflight(
    config: &ExperimentConfig,
    dataset: &Dataset,
    train: &Split,
    student_spec: &ModelSpec,
) -> anyhow::Result<()> {
    let classes = dataset.classes.len();
    let fits = |role: &str, spec: &ModelSpec| -> anyhow::Result<()> {
        let outputs = spec
            .num_outputs(dataset.shape)
            .with_context(|| format!("`{role}.model` `{}` on data `{}`", spec.name, config.data))?;
        if outputs != classes {
            bail!(
                "`{role}.model` `{}` has {outputs} outputs but data `{}` has {classes} classes; its last dense layer must have {classes} units",
                spec.name,
                config.data
            );
        }
        Ok(())
    };
    fits("student", student_spec)?;
    match &config.teacher {
        TeacherSetting::Train(teacher) => fits("teacher", &resolve_spec(&teacher.model)?)?,
        TeacherSetting::Checkpoint(dir) => {
            let meta = checkpoint::read_meta(dir).context("`teacher`")?;
            if meta.input != dataset.shape || meta.classes.len() != classes {
                bail!(
                    "`teacher`: the model in {} takes {:?} images and predicts {} classes, but data `{}` has {:?} images and {classes} classes",
                    dir.display(),
                    meta.input,
                    meta.classes.len(),
                    config.data,
                    dataset.shape
                );
            }
        }
    }
    if config.training.batch_size > train.len() {
        bail!(
            "`training.batch_size` {} is larger than the training split ({} images of `{}`)",
            config.training.batch_size,
            train.len(),
            config.data
        );
    }
    Ok(())
}

/// Runs (or resumes) the experiment and writes the report into `options.out`.
pub fn run(config: &ExperimentConfig, options: &RunOptions) -> anyhow::Result<Report> {
    config.validate()?;
    let started = Instant::now();
    let out = &options.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    std::fs::write(out.join("experiment.toml"), toml::to_string(config)?)
        .with_context(|| format!("output directory {} is not writable", out.display()))?;
    let device = &options.device;
    let student_spec = resolve_spec(&config.student.model)?;
    let spec: DataSpec = config.data.parse()?;
    let dataset: Dataset = data::load(&spec)?;
    let mut train = dataset.train.clone();
    let eval_split = match config.training.val_split {
        Some(fraction) => train.split_off_validation(fraction, config.training.seed)?,
        None => dataset.test.clone(),
    };
    preflight(config, &dataset, &train, &student_spec)?;

    let runner = Runner {
        classes: &dataset.classes,
        train: &train,
        eval: &eval_split,
        progress: options.progress,
        device,
    };

    // Teacher: load, or train (resumable).
    let (teacher_dir, teacher_spec) = match &config.teacher {
        TeacherSetting::Checkpoint(dir) => (dir.clone(), checkpoint::read_spec(dir)?),
        TeacherSetting::Train(teacher) => {
            let spec = resolve_spec(&teacher.model)?;
            let dir = out.join("teacher");
            println!("== teacher `{}` ({} epochs)", spec.name, teacher.epochs);
            runner.fit(
                &spec,
                &config.train_config(teacher.epochs, config.training.seed),
                Objective::Labels,
                &dir,
            )?;
            (dir, spec)
        }
    };
    let teacher = Teacher::load(&teacher_dir, device)?;
    teacher
        .check_fits(dataset.shape, dataset.classes.len())
        .with_context(|| {
            format!(
                "teacher {} and data `{}`",
                teacher_dir.display(),
                config.data
            )
        })?;
    let teacher_history = read_history(&teacher_dir);

    // Students from scratch.
    let mut scratch_dirs = Vec::new();
    let mut scratch_histories = Vec::new();
    for seed in seeds(config) {
        let dir = out.join("scratch").join(format!("seed-{seed}"));
        println!(
            "== student `{}` from scratch, seed {seed}",
            student_spec.name
        );
        let outcome = runner.fit(
            &student_spec,
            &config.train_config(config.student.epochs, seed),
            Objective::Labels,
            &dir,
        )?;
        scratch_histories.push(outcome.history);
        scratch_dirs.push(dir);
    }

    // Distilled students over the grid, sharing the teacher logits.
    let logits = if config.training.augmentation.is_some() {
        TeacherLogits::Live(teacher)
    } else {
        cached_logits(
            &teacher,
            &train,
            Some(&out.join("teacher-logits")),
            device,
            options.progress,
        )?
    };
    let mut distilled = Vec::new();
    for point in config.grid() {
        let mut dirs = Vec::new();
        let mut histories = Vec::new();
        for seed in seeds(config) {
            let dir = out
                .join("distilled")
                .join(point.dir_name())
                .join(format!("seed-{seed}"));
            println!(
                "== distilled student: alpha {} T {} {}, seed {seed}",
                point.alpha,
                point.temperature,
                if point.t2_scaling {
                    "with T²"
                } else {
                    "without T²"
                }
            );
            let outcome = runner.fit(
                &student_spec,
                &config.train_config(config.student.epochs, seed),
                Objective::Distill {
                    loss: point.loss(config.sweep.loss),
                    teacher: &logits,
                },
                &dir,
            )?;
            histories.push(outcome.history);
            dirs.push(dir);
        }
        distilled.push((point, dirs, histories));
    }

    // Evaluation on the test split, speed, report.
    println!("== evaluating on the test split and timing inference");
    let test = &dataset.test;
    let teacher_result = eval_result(
        "teacher",
        std::slice::from_ref(&teacher_dir),
        &teacher_spec,
        vec![teacher_history],
        test,
        device,
    )?;
    let scratch_result = eval_result(
        "scratch",
        &scratch_dirs,
        &student_spec,
        scratch_histories,
        test,
        device,
    )?;
    let mut distilled_results = Vec::new();
    for (point, dirs, histories) in distilled {
        let result = eval_result(
            &point.dir_name(),
            &dirs,
            &student_spec,
            histories,
            test,
            device,
        )?;
        distilled_results.push((point, result));
    }
    let teacher_speed = report::measure_speed(
        &checkpoint::load(&teacher_dir, device)?.network,
        dataset.shape,
        device,
    );
    let student_speed = report::measure_speed(
        &checkpoint::load(&scratch_dirs[0], device)?.network,
        dataset.shape,
        device,
    );
    let report = Report::build(
        config,
        &dataset,
        teacher_result.with_speed(teacher_speed),
        scratch_result.with_speed(student_speed),
        distilled_results
            .into_iter()
            .map(|(p, r)| (p, r.with_speed(student_speed)))
            .collect(),
        started.elapsed().as_secs_f64(),
        &options.backend,
    );
    report.write(out)?;
    Ok(report)
}

/// What every run of one experiment shares; each run resumes from its own checkpoints.
struct Runner<'a> {
    classes: &'a [String],
    train: &'a Split,
    eval: &'a Split,
    progress: bool,
    device: &'a burn::tensor::Device,
}

impl Runner<'_> {
    fn fit(
        &self,
        spec: &ModelSpec,
        config: &TrainConfig,
        objective: Objective,
        out: &Path,
    ) -> anyhow::Result<TrainOutcome> {
        fit(
            TrainJob {
                spec,
                classes: self.classes,
                train: self.train,
                eval: self.eval,
                config,
                objective,
                out,
                resume: true,
                progress: self.progress,
                verbose: true,
            },
            self.device,
        )
    }
}

fn read_history(dir: &Path) -> Vec<EpochRecord> {
    std::fs::read_to_string(dir.join("history.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}
