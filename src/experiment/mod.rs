//! The whole study of the reference notebook as one resumable job: train (or load) the teacher,
//! train the student from scratch, distil it for every point of an (alpha, T, T²) grid, over
//! one or more seeds, then evaluate everything and write the report.
//!
//! Layout of the output directory:
//! `teacher/`, `scratch/seed-S/`, `distilled/<point>/seed-S/` (each a run directory of
//! [`crate::train`]; with `sweep.chain`, `scratch-chain/stage-N/seed-S/` and
//! `distilled-chain/stage-N-<point>/seed-S/`), `teacher-logits/` (the shared logit caches),
//! `report.md`, `report.json` and the plots. Starting the same experiment again with the same
//! `--out` skips finished runs and resumes an interrupted one from its last checkpoint.
//!
//! Seeds are *paired*: seed `s` gives the scratch student and every distilled student the same
//! initial weights, batch order, augmented views and dropout stream, so the per-seed difference
//! between two arms is the effect of the objective alone.
//!
//! A text dataset in `data` runs the same study with text models (`experiment/text.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::data::{Augmentation, DataSpec, Dataset, Split};
use crate::distill::{self, CacheLocation, LogitSource, Teacher, TeacherLogits};
use crate::losses::DistillLoss;
use crate::models::{checkpoint, pretrained, resolve_spec, ModelSpec};
use crate::onnx::{ImportOptions, Layout, Normalization};
use crate::report::{ModelResult, Report, Selection};
use crate::train::{
    fit, EpochRecord, Objective, OptimizerConfig, TrainConfig, TrainJob, TrainOutcome,
};

mod execute;
mod image;
pub mod plan;
mod text;

use execute::{execute, ArmRuns, ArmTrainer, RunPlan, TrainedArm};

pub use plan::{plan, ArmKind, MethodArm, PlannedArm};

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
    /// `teacher = "DIR"` or `"FILE.onnx"`: a checkpoint directory from an earlier `distill train`,
    /// or an ONNX classifier (imported natively, or run on tract; see `teacher_engine`); `"embedded"`: the pretrained Fashion-MNIST teacher
    /// compiled into the binary ([`pretrained`]).
    Checkpoint(PathBuf),
    /// `[teacher]` table: train this model first.
    Train(TeacherConfig),
}

/// `[teacher]`: the model to train as teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Zoo name or spec file; with a text dataset, a pretrained encoder directory (or its name
    /// in the data cache, e.g. `all-MiniLM-L6-v2`) to fine-tune.
    pub model: String,
    /// Epochs of teacher training.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Batch size of the teacher's training (default: `training.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Optimizer of the teacher's training (default: `training.optimizer`); fine-tuning a
    /// pretrained transformer wants a far smaller learning rate than training a student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerConfig>,
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
    /// Rates of the student's dropout layers, in order, for the distilled students (and the
    /// scratch student unless `scratch_dropout` is given); default: the model's own.
    #[serde(default)]
    pub dropout: Option<Vec<f64>>,
    /// Rates of the student's dropout layers for the scratch student (default: `dropout`).
    /// Dropout fights soft targets, so each arm may need its own rate.
    #[serde(default)]
    pub scratch_dropout: Option<Vec<f64>>,
    /// Warm-start every student from this checkpoint's weights (fresh optimizer).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Epochs of the distilled students when they differ from the scratch student's `epochs`
    /// (a text transfer set makes each distillation epoch several times longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distilled_epochs: Option<usize>,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            model: default_student(),
            epochs: default_epochs(),
            dropout: None,
            scratch_dropout: None,
            init_from: None,
            distilled_epochs: None,
        }
    }
}

impl StudentConfig {
    /// Epochs of a distilled student.
    pub fn distilled_epochs(&self) -> usize {
        self.distilled_epochs.unwrap_or(self.epochs)
    }

    /// The student's spec for the distilled arms and for the scratch arm.
    pub fn specs(&self) -> anyhow::Result<(ModelSpec, ModelSpec)> {
        let base = resolve_spec(&self.model)?;
        let with = |rates: Option<&Vec<f64>>, key: &str| -> anyhow::Result<ModelSpec> {
            match rates {
                Some(rates) => base
                    .with_dropout_rates(rates)
                    .map_err(|e| anyhow::anyhow!("`student.{key}`: {e}")),
                None => Ok(base.clone()),
            }
        };
        let distilled = with(self.dropout.as_ref(), "dropout")?;
        let scratch = match &self.scratch_dropout {
            Some(rates) => with(Some(rates), "scratch_dropout")?,
            None => distilled.clone(),
        };
        Ok((distilled, scratch))
    }
}

/// Where distilled students get their teacher's logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeacherLogitsSource {
    /// Computed once and replayed: per image without augmentation, per fixed view with
    /// `augmentation.views`; live when augmentation draws fresh transforms.
    #[default]
    Cache,
    /// The teacher runs on every batch.
    Live,
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
    /// Evaluate on this fraction of the training split instead of the test split during
    /// training; the best distilled setting is then chosen on it, and the test split is only
    /// used for the final numbers.
    #[serde(default)]
    pub val_split: Option<f64>,
    /// Teacher logits from the cache (default) or from the live teacher.
    #[serde(default)]
    pub teacher_logits: TeacherLogitsSource,
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
            teacher_logits: TeacherLogitsSource::Cache,
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
    /// DKD points added to the grid (`[sweep.dkd]`).
    #[serde(default)]
    pub dkd: Option<DkdSweep>,
    /// Train the grid's points one after another on one student, each stage starting from the
    /// previous stage's weights with a fresh optimizer (what the Keras notebook's cells do),
    /// next to a control that chains the scratch student as many times.
    #[serde(default)]
    pub chain: bool,
}

/// `[sweep.dkd]`: decoupled KD points (one per beta × temperature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkdSweep {
    /// Weight of the label cross-entropy.
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// Weight of the target-class term.
    #[serde(default = "one")]
    pub alpha: f64,
    /// Weights of the non-target-class term.
    #[serde(default = "default_dkd_beta")]
    pub beta: Vec<f64>,
    /// Temperatures.
    #[serde(default = "default_dkd_temperature")]
    pub temperature: Vec<f64>,
    /// Epochs of linear warm-up of the DKD term.
    #[serde(default = "default_dkd_warmup")]
    pub warmup_epochs: usize,
}

fn one() -> f64 {
    1.0
}
fn default_dkd_beta() -> Vec<f64> {
    vec![8.0]
}
fn default_dkd_temperature() -> Vec<f64> {
    vec![4.0]
}
fn default_dkd_warmup() -> usize {
    5
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
            dkd: None,
            chain: false,
        }
    }
}

fn default_max_len() -> usize {
    128
}

/// `[text]`: settings of a study on a text dataset (`data = "rotten-tomatoes"` or
/// `"text:FILE"`), as the text flags of `distill train` and `distill distill` set them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextStudyConfig {
    /// Most tokens kept per text, special tokens included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Keep the teacher's word embeddings fixed while it is fine-tuned (the 30,522 × 384
    /// embedding gradient of MiniLM dominates its backward pass).
    #[serde(default)]
    pub freeze_teacher_word_embeddings: bool,
    /// Keep the students' word embeddings fixed (sensible for students that start from the
    /// teacher's embeddings, `teacher_layers`; not for a BiLSTM's random ones).
    #[serde(default)]
    pub freeze_student_word_embeddings: bool,
    /// Augmented copies per training text in the distilled students' transfer set (Tang et
    /// al.), labelled by the teacher; 0: none.
    #[serde(default)]
    pub transfer_copies: usize,
    /// Seed of the transfer set (fixed, so every seed and point shares it and its teacher pass).
    #[serde(default)]
    pub transfer_seed: u64,
    /// Weight of DistilBERT's cosine loss between the student's and the teacher's hidden states
    /// (transformer students); 0: none.
    #[serde(default)]
    pub cosine_weight: f64,
}

impl Default for TextStudyConfig {
    fn default() -> Self {
        TextStudyConfig {
            max_len: default_max_len(),
            freeze_teacher_word_embeddings: false,
            freeze_student_word_embeddings: false,
            transfer_copies: 0,
            transfer_seed: 0,
            cosine_weight: 0.0,
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
    /// The teacher: a checkpoint directory or an ONNX file, or a `[teacher]` table to train one.
    pub teacher: TeacherSetting,
    /// Input layout of an ONNX teacher (`"nchw"` or `"nhwc"`), when its declared shape fits both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_layout: Option<Layout>,
    /// Model spec (zoo name or spec file) of a `.safetensors` teacher whose file carries none
    /// (weights trained in PyTorch, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_spec: Option<String>,
    /// Engine for an ONNX teacher: `"auto"` (native import when every node maps onto our layers,
    /// tract otherwise), `"native"` or `"tract"`.
    #[serde(default, skip_serializing_if = "is_default_engine")]
    pub teacher_engine: crate::onnx::EngineChoice,
    /// Per-channel normalisation an ONNX teacher was trained with:
    /// `"mean=0.485,0.456,0.406,std=0.229,0.224,0.225"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_normalize: Option<String>,
    /// The student.
    #[serde(default)]
    pub student: StudentConfig,
    /// Shared training settings.
    #[serde(default)]
    pub training: TrainingConfig,
    /// The distillation grid.
    #[serde(default)]
    pub sweep: SweepConfig,
    /// Settings of a study on a text dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextStudyConfig>,
    /// Further paired arms, `[[method]]` in the file: feature methods (FitNets, AT, RKD, CRD),
    /// alone or with KD, and single logit losses.
    #[serde(default, rename = "method", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodArm>,
}

/// Most points a sweep may have (alpha × temperature × T² values): each point trains a student
/// per seed, so more is never a real study, only a typo or a corrupt file.
pub const MAX_SWEEP_POINTS: usize = 10_000;

/// One point of the sweep grid: a distillation loss with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// The loss and its settings.
    pub loss: DistillLoss,
}

impl GridPoint {
    /// Directory name of this point, e.g. `a0.1-T10-t2`, `mse-a0.5`, `dkd-ce1-a1-b8-T4-w5`.
    pub fn dir_name(self) -> String {
        let (method, settings) = self.settings();
        let parts: Vec<&str> = std::iter::once(method.short.as_str())
            .filter(|prefix| !prefix.is_empty())
            .chain(settings.iter().map(|s| s.short.as_str()))
            .collect();
        parts.join("-")
    }

    /// A readable description, e.g. `KD alpha 0.1, T 4, T² on`.
    pub fn label(self) -> String {
        let (method, settings) = self.settings();
        let parts: Vec<&str> = settings.iter().map(|s| s.long.as_str()).collect();
        format!("{} {}", method.long, parts.join(", "))
    }

    /// The method and each setting, in short (directory) and long (report) form, in one order.
    fn settings(self) -> (Setting, Vec<Setting>) {
        let on_off = |on: bool| if on { "on" } else { "off" };
        match self.loss {
            DistillLoss::Kd {
                alpha,
                temperature,
                t2_scaling,
            } => (
                Setting::new("", "KD"),
                vec![
                    Setting::new(format!("a{alpha}"), format!("alpha {alpha}")),
                    Setting::new(format!("T{temperature}"), format!("T {temperature}")),
                    Setting::new(
                        if t2_scaling { "t2" } else { "no-t2" },
                        format!("T² {}", on_off(t2_scaling)),
                    ),
                ],
            ),
            DistillLoss::Mse { alpha } => (
                Setting::new("mse", "logit MSE,"),
                vec![Setting::new(format!("a{alpha}"), format!("alpha {alpha}"))],
            ),
            DistillLoss::Dkd {
                ce_weight,
                alpha,
                beta,
                temperature,
                warmup_epochs,
            } => (
                Setting::new("dkd", "DKD"),
                vec![
                    Setting::new(format!("ce{ce_weight}"), format!("CE weight {ce_weight}")),
                    Setting::new(format!("a{alpha}"), format!("alpha {alpha}")),
                    Setting::new(format!("b{beta}"), format!("beta {beta}")),
                    Setting::new(format!("T{temperature}"), format!("T {temperature}")),
                    Setting::new(
                        format!("w{warmup_epochs}"),
                        format!("warm-up {warmup_epochs} epochs"),
                    ),
                ],
            ),
        }
    }
}

/// One setting of a grid point, as a directory name part and as report text.
struct Setting {
    short: String,
    long: String,
}

impl Setting {
    fn new(short: impl Into<String>, long: impl Into<String>) -> Self {
        Setting {
            short: short.into(),
            long: long.into(),
        }
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

    /// The grid, in a stable order: KD/MSE points (T² setting, then temperature, then alpha, as
    /// listed), then DKD points (temperature, then beta). With `sweep.chain` this is the order
    /// of the stages.
    pub fn grid(&self) -> Vec<GridPoint> {
        let mut points = Vec::new();
        match self.sweep.loss {
            SweepLoss::Mse => {
                for &alpha in &self.sweep.alpha {
                    points.push(GridPoint {
                        loss: DistillLoss::Mse { alpha },
                    });
                }
            }
            SweepLoss::Kd => {
                for &t2_scaling in &self.sweep.t2_scaling {
                    for &temperature in &self.sweep.temperature {
                        for &alpha in &self.sweep.alpha {
                            points.push(GridPoint {
                                loss: DistillLoss::Kd {
                                    alpha,
                                    temperature,
                                    t2_scaling,
                                },
                            });
                        }
                    }
                }
            }
        }
        if let Some(dkd) = &self.sweep.dkd {
            for &temperature in &dkd.temperature {
                for &beta in &dkd.beta {
                    points.push(GridPoint {
                        loss: DistillLoss::Dkd {
                            ce_weight: dkd.ce_weight,
                            alpha: dkd.alpha,
                            beta,
                            temperature,
                            warmup_epochs: dkd.warmup_epochs,
                        },
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
        let mut names = std::collections::BTreeSet::new();
        for (k, method) in self.methods.iter().enumerate() {
            method.validate().map_err(|e| {
                anyhow::anyhow!("[[method]] number {} (`{}`): {e}", k + 1, method.name())
            })?;
            if !names.insert(method.name()) {
                bail!(
                    "[[method]] number {}: another method is already called `{}`; give one a `name`",
                    k + 1,
                    method.name()
                );
            }
        }
        if !self.methods.is_empty() && self.sweep.chain {
            bail!("[[method]] arms are not chained: drop them or set `sweep.chain = false`");
        }
        if !self.methods.is_empty() && self.is_text() {
            bail!("[[method]] arms apply to image studies; a text study distils through `[text]`");
        }
        if self.student.epochs == 0 {
            bail!("`student.epochs` must be at least 1");
        }
        self.teacher_import_options(None)?;
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
        if let Some(dkd) = &self.sweep.dkd {
            if dkd.beta.is_empty() || dkd.temperature.is_empty() {
                bail!("`sweep.dkd` must list at least one `beta` and one `temperature`");
            }
            if dkd.beta.len().saturating_mul(dkd.temperature.len()) > MAX_SWEEP_POINTS {
                bail!("`sweep.dkd` has more than {MAX_SWEEP_POINTS} points");
            }
        }
        for point in self.grid() {
            let key = if matches!(point.loss, DistillLoss::Dkd { .. }) {
                "`sweep.dkd`"
            } else {
                "`sweep`"
            };
            point
                .loss
                .validate()
                .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        }
        if let Some(aug) = &self.training.augmentation {
            aug.validate()
                .map_err(|e| anyhow::anyhow!("`training`: {e}"))?;
            if aug.mixup.is_some() {
                self.check_function_matching()?;
            }
        }
        if let Some(fraction) = self.training.val_split {
            if !(fraction > 0.0 && fraction < 1.0) {
                bail!("`training.val_split` must be strictly between 0 and 1, got {fraction}");
            }
        }
        if self.seeds > 1_000 {
            bail!(
                "`seeds` must be at most 1000 (each seed trains every student), got {}",
                self.seeds
            );
        }
        if self.training.seed.checked_add(self.seeds as u64).is_none() {
            bail!(
                "`training.seed` {} + {} seeds overflows a 64-bit seed",
                self.training.seed,
                self.seeds
            );
        }
        if let Some(epochs) = self.student.distilled_epochs {
            if epochs == 0 {
                bail!("`student.distilled_epochs` must be at least 1");
            }
        }
        if let TeacherSetting::Train(t) = &self.teacher {
            if t.batch_size == Some(0) {
                bail!("`teacher.batch_size` must be at least 1");
            }
        }
        if self.sweep.chain && self.student.distilled_epochs.is_some() {
            bail!("`student.distilled_epochs` cannot be used with `sweep.chain`: each chain stage pairs a distilled student with a labels-only one of the same length");
        }
        if self.is_text() {
            return self.validate_text();
        }
        if self.text.is_some() {
            bail!(
                "`[text]` applies to text datasets; `data` `{}` is an image dataset",
                self.data
            );
        }
        self.data
            .parse::<DataSpec>()
            .map_err(|e| anyhow::anyhow!("`data`: {e}"))?;
        Ok(())
    }

    /// Under mixup views a distilled student learns from the teacher alone (function matching):
    /// a label term would need each blend's two labels, which only the scratch arm's loss takes.
    fn check_function_matching(&self) -> anyhow::Result<()> {
        let refuse = |what: String| {
            anyhow::anyhow!("`training.augmentation.mixup`: {what} has a label term, but the distilled students on mixup views learn from the teacher alone (function matching): use KD or MSE with alpha = 0")
        };
        if let Some(point) = self.grid().into_iter().find(|p| !p.loss.ignores_labels()) {
            return Err(refuse(format!("the sweep's {}", point.loss.name())));
        }
        for method in &self.methods {
            if method.features.is_some() {
                bail!("`training.augmentation.mixup`: [[method]] `{}` reads the teacher's features, which the mixup views do not support; leave it out of a function-matching study", method.name());
            }
            if let Some(loss) = method.logits.filter(|l| !l.ignores_labels()) {
                return Err(refuse(format!(
                    "[[method]] `{}` ({})",
                    method.name(),
                    loss.name()
                )));
            }
        }
        Ok(())
    }

    /// How the report chooses the best distilled setting: on the validation split when there is
    /// one.
    fn selection(&self) -> Selection {
        if self.training.val_split.is_some() {
            Selection::Validation
        } else {
            Selection::Test
        }
    }

    /// Epochs of the distilled students when they differ from the scratch student's (for the
    /// report).
    fn distinct_distilled_epochs(&self) -> Option<usize> {
        self.student
            .distilled_epochs
            .filter(|&e| e != self.student.epochs)
    }

    /// True when `data` names a text dataset: the study runs text models.
    pub fn is_text(&self) -> bool {
        crate::data::text::is_text_data(&self.data)
    }

    /// The checks of [`Self::validate`] that only a text study needs: image-only settings are
    /// refused by name rather than ignored.
    fn validate_text(&self) -> anyhow::Result<()> {
        let image_only = [
            (self.training.augmentation.is_some(), "`training.augmentation` (a text study's distilled students learn from `text.transfer_copies`)"),
            (self.sweep.chain, "`sweep.chain`"),
            (self.student.dropout.is_some() || self.student.scratch_dropout.is_some(), "`student.dropout` and `student.scratch_dropout` (a text student's spec sets its `dropout`)"),
            (self.student.init_from.is_some(), "`student.init_from` (a text student starts from `teacher_layers` or at random)"),
            (self.teacher_layout.is_some() || self.teacher_spec.is_some() || self.teacher_normalize.is_some() || !is_default_engine(&self.teacher_engine), "the ONNX teacher settings"),
            (self.training.teacher_logits == TeacherLogitsSource::Live, "`training.teacher_logits = \"live\"` (a text teacher's logits are cached)"),
        ];
        if let Some((_, what)) = image_only.iter().find(|(set, _)| *set) {
            bail!(
                "data `{}` is a text dataset: {what} applies to images only",
                self.data
            );
        }
        let text = self.text.clone().unwrap_or_default();
        if text.max_len < 3 {
            bail!(
                "`text.max_len` must be at least 3 (the special tokens and one word), got {}",
                text.max_len
            );
        }
        crate::losses::HiddenTerm {
            weight: text.cosine_weight,
        }
        .validate()
        .map_err(|e| anyhow::anyhow!("`text.cosine_weight`: {e}"))?;
        self.transfer_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("`text.transfer_copies`: {e}"))?;
        self.data
            .parse::<crate::data::text::TextSpec>()
            .map_err(|e| anyhow::anyhow!("`data`: {e}"))?;
        Ok(())
    }

    /// The transfer set of a text study's distilled students.
    fn transfer_config(&self) -> crate::data::transfer::TransferConfig {
        let text = self.text.clone().unwrap_or_default();
        crate::data::transfer::TransferConfig {
            copies: text.transfer_copies,
            seed: text.transfer_seed,
            ..Default::default()
        }
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

    /// This config with `teacher = "embedded"` replaced by the embedded teacher's checkpoint,
    /// written into `out/teacher` (the run directory then holds its teacher like a trained one).
    fn with_embedded_teacher_in(&self, out: &Path) -> anyhow::Result<Self> {
        let mut config = self.clone();
        if let TeacherSetting::Checkpoint(path) = &self.teacher {
            if pretrained::is_embedded_teacher(path) {
                let dir = out.join("teacher");
                pretrained::write_embedded_teacher(&dir)?;
                config.teacher = TeacherSetting::Checkpoint(dir);
            }
        }
        Ok(config)
    }

    /// How an ONNX teacher is read, for data of C×H×W `shape`.
    pub fn teacher_import_options(
        &self,
        shape: Option<[usize; 3]>,
    ) -> anyhow::Result<ImportOptions> {
        let normalize = self
            .teacher_normalize
            .as_deref()
            .map(str::parse::<Normalization>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("`teacher_normalize`: {e}"))?;
        Ok(ImportOptions {
            expected_input: shape,
            layout: self.teacher_layout,
            normalize,
            spec: self.teacher_spec.clone(),
            engine: self.teacher_engine,
        })
    }

    /// The teacher trains with fresh transforms each epoch: fixed views exist only so that the
    /// students' teacher logits can be cached.
    fn teacher_train_config(&self, teacher: &TeacherConfig) -> TrainConfig {
        let mut config = self.train_config(teacher.epochs, self.training.seed);
        if let Some(aug) = config.augmentation.as_mut() {
            aug.views = None;
        }
        if let Some(batch_size) = teacher.batch_size {
            config.batch_size = batch_size;
        }
        if let Some(optimizer) = &teacher.optimizer {
            config.optimizer = optimizer.clone();
        }
        config
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
    /// Called once the teacher and its logit cache are ready, before any student trains:
    /// `distill run --jobs N` starts its worker processes here (each trains one [`Shard`] of the
    /// students) and waits for them; the runs they finish are then skipped like resumed ones.
    pub before_students: Option<Box<dyn Fn() -> anyhow::Result<()>>>,
}

/// One of `count` disjoint parts of a study's student runs, trained by one worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which part, in `0..count`.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`, with `I < N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => Err(format!("`{text}` is not a shard I/N with I < N")),
        }
    }
}

fn seeds(config: &ExperimentConfig) -> Vec<u64> {
    (0..config.seeds as u64)
        .map(|k| config.training.seed + k)
        .collect()
}

fn is_default_engine(engine: &crate::onnx::EngineChoice) -> bool {
    *engine == crate::onnx::EngineChoice::Auto
}

/// The seed of chain stage `stage` (0-based) for a run seeded `seed`: each stage sees a new
/// batch order and dropout stream (as a continued `fit()` would), the same in both chains.
fn stage_seed(seed: u64, stage: usize) -> u64 {
    seed.wrapping_add((stage as u64).wrapping_mul(1_000_003))
}

/// Test accuracy and loss of each run directory, plus its final validation accuracy when the
/// runs were evaluated on a validation split.
fn eval_result(
    name: &str,
    dirs: &[PathBuf],
    import_options: &ImportOptions,
    histories: Vec<Vec<EpochRecord>>,
    test: &Split,
    device: &burn::tensor::Device,
) -> anyhow::Result<ModelResult> {
    let mut accuracies = Vec::new();
    let mut losses = Vec::new();
    let mut described = None;
    for dir in dirs {
        let loaded = crate::classifier::load_classifier(dir, import_options, device)?;
        let (loss, accuracy) = loaded.evaluate(test, device, 256)?;
        accuracies.push(accuracy);
        losses.push(loss);
        if described.is_none() {
            described = Some((loaded.stats()?, loaded.dropout_rates()));
        }
    }
    let (stats, dropout) = described.context("no runs to evaluate")?;
    Ok(ModelResult::new(
        name,
        accuracies,
        losses,
        stats.params,
        stats.bytes,
        histories,
    )
    .with_dropout(dropout))
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
        TeacherSetting::Train(teacher) => fits(
            "teacher",
            &crate::models::resolve_spec_for(&teacher.model, classes)?,
        )?,
        // A model file (ONNX, PyTorch, safetensors) is checked when it loads, before any
        // student trains.
        TeacherSetting::Checkpoint(dir) if !dir.is_file() => {
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
        TeacherSetting::Checkpoint(_) => {}
    }
    if let Some(dir) = &config.student.init_from {
        // the same checks `fit` makes, before hours of teacher training
        if !dir.exists() {
            bail!(
                "`student.init_from`: checkpoint directory {} does not exist; expected the --out of an earlier train or distill run (or a .safetensors file)",
                dir.display()
            );
        }
        let device = burn::tensor::Device::default();
        let network = crate::models::Network::init(student_spec, dataset.shape, 0, &device)?;
        checkpoint::load_for_warm_start(dir, student_spec, dataset.shape, classes, network)
            .context("`student.init_from`")?;
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
    let report = run_study(config, options, None)?;
    Ok(report.expect("a study without a shard ends with its report"))
}

/// A worker of `distill run --jobs N`: trains `shard`'s student runs of the study in
/// `options.out` (whose teacher and logit cache are ready) and stops, without evaluating.
/// Image and text studies alike.
pub fn train_shard(
    config: &ExperimentConfig,
    options: &RunOptions,
    shard: Shard,
) -> anyhow::Result<()> {
    run_study(config, options, Some(shard)).map(|_| ())
}

/// The study; with a `shard`, only that shard's student runs, and no report (`None`).
fn run_study(
    config: &ExperimentConfig,
    options: &RunOptions,
    shard: Option<Shard>,
) -> anyhow::Result<Option<Report>> {
    config.validate()?;
    let started = Instant::now();
    let out = &options.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    if crate::distributed::is_root() {
        std::fs::write(out.join("experiment.toml"), toml::to_string(config)?)
            .with_context(|| format!("output directory {} is not writable", out.display()))?;
    }
    if config.is_text() {
        return text::run(config, options, started, shard);
    }
    image::run(config, options, started, shard)
}

/// The distilled students' source of teacher logits under this config: the per-view cache with
/// `augmentation.views`, the live teacher for fresh transforms (or when asked), else the
/// per-image cache. Caches live in `out/teacher-logits/`, shared by every point and seed.
fn teacher_logits(
    config: &ExperimentConfig,
    teacher: Teacher,
    train: &Split,
    out: &Path,
    device: &burn::tensor::Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let cache_dir = out.join("teacher-logits");
    let source = match config.training.teacher_logits {
        TeacherLogitsSource::Live => LogitSource::Live,
        TeacherLogitsSource::Cache => LogitSource::Cache(CacheLocation::Dir(&cache_dir)),
    };
    if let Some(aug) = config.training.augmentation.as_ref().filter(|aug| {
        aug.views.is_some() && !aug.is_identity() && matches!(source, LogitSource::Cache(_))
    }) {
        println!("== teacher logits for {}", aug.describe());
    }
    distill::teacher_logits(
        teacher,
        train,
        config.training.augmentation.as_ref(),
        source,
        device,
        progress,
    )
}

fn read_cache_build_seconds(out: &Path) -> Option<f64> {
    std::fs::read_to_string(out.join("teacher-logits").join("build-seconds.txt"))
        .ok()?
        .trim()
        .parse()
        .ok()
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
        init_from: Option<&Path>,
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
                init_from,
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
