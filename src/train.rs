//! The training loop, shared by a teacher, a student from scratch and a distilled student.
//!
//! It is a custom loop rather than burn's `Learner`: resuming must reproduce an uninterrupted run
//! bit for bit (batch order, dropout and augmentation are keyed by seed and epoch), a distilled
//! student reads its teacher's logits from a cache by dataset index, and the per-epoch output
//! follows Keras' `fit()`. It also keeps `burn-train` (and its TUI stack) out of the build.
//!
//! A run directory holds the latest model checkpoint at its top level (`spec.toml`, `model.bpk`,
//! `meta.json`; loadable with [`crate::models::checkpoint::load`]), the history (`history.csv`,
//! `history.json`), a log (`train.log`) and, under `checkpoints/epoch-NNNN/`, the last two full
//! training states (model, optimizer, epoch, history) that `--resume` continues from.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{augmentation_seed, batch_order, view_of, Augmentation, LabelMix, Split};
use crate::distill::TeacherLogits;
use crate::losses::{
    cross_entropy, mapped_hidden_cosine, mixup_cross_entropy, DistillLoss, HiddenTerm,
};
use crate::methods::{FeatureMethod, MethodBatch, MethodRun, TeacherFeatures};
use crate::modality::image::{ImageArchitecture, Images};
use crate::modality::{Architecture, Modality, ModelOf, SoftTargets};
use crate::models::checkpoint::{self, write_atomic};
use crate::models::{ModelSpec, Network};
use crate::optimizer::{Betas, LocalAdam, LocalAdamW};

/// Adam(W) settings; the defaults are Keras' Adam.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Learning rate (peak learning rate with the cosine schedule).
    pub learning_rate: f64,
    /// Adam's beta1.
    pub beta1: f32,
    /// Adam's beta2.
    pub beta2: f32,
    /// Adam's epsilon (Keras: 1e-7).
    pub epsilon: f32,
    /// Decoupled weight decay; > 0 switches to AdamW.
    pub weight_decay: f32,
    /// Cosine decay of the learning rate from `learning_rate` to 0 over the run.
    pub cosine_schedule: bool,
    /// Fraction of the run's steps over which the learning rate rises linearly from
    /// `learning_rate / steps` to `learning_rate` before the schedule starts (0: none). Large
    /// first steps kill ReLU units of a narrow layer for good; a warm-up spares them.
    pub warmup_fraction: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
            cosine_schedule: false,
            warmup_fraction: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// The optimizer these settings describe (Adam, or AdamW with weight decay), updating each
    /// parameter in one pass on Flex ([`crate::optimizer`]).
    pub fn build(&self) -> ModuleOptimizer {
        let betas = Betas {
            beta_1: self.beta1,
            beta_2: self.beta2,
            epsilon: self.epsilon,
        };
        if self.weight_decay > 0.0 {
            ModuleOptimizer::from(LocalAdamW::new(betas, self.weight_decay))
        } else {
            ModuleOptimizer::from(LocalAdam::new(betas))
        }
    }

    /// Learning rate at global step `step` of `total` steps: the linear warm-up, then constant
    /// or cosine decay over the steps after it.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let warmup = (self.warmup_fraction * total as f64).round() as usize;
        if step < warmup {
            return self.learning_rate * (step + 1) as f64 / warmup as f64;
        }
        if !self.cosine_schedule || total <= warmup {
            return self.learning_rate;
        }
        let progress = (step - warmup) as f64 / (total - warmup) as f64;
        self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Everything that decides how a model is trained (saved with each checkpoint; a resumed run must
/// use the same values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of passes over the training split.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Seeds initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Optimizer settings.
    pub optimizer: OptimizerConfig,
    /// Label smoothing of the cross-entropy, in [0, 1).
    pub label_smoothing: f64,
    /// Data augmentation, off when `None`.
    pub augmentation: Option<Augmentation>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 20,
            batch_size: 64,
            seed: 42,
            optimizer: OptimizerConfig::default(),
            label_smoothing: 0.0,
            augmentation: None,
        }
    }
}

impl TrainConfig {
    /// Rejects impossible values before any work starts, naming the field.
    pub fn validate(&self, train_len: usize) -> anyhow::Result<()> {
        if self.epochs == 0 {
            bail!("epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if self.batch_size > train_len {
            bail!(
                "batch size {} is larger than the training split ({train_len} images)",
                self.batch_size
            );
        }
        let lr = self.optimizer.learning_rate;
        if !(lr.is_finite() && lr > 0.0) {
            bail!("learning rate must be a finite number > 0, got {lr}");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "label smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        let warmup = self.optimizer.warmup_fraction;
        if !(0.0..1.0).contains(&warmup) {
            bail!("optimizer.warmup_fraction must be in [0, 1), got {warmup}");
        }
        Ok(())
    }
}

/// One line of the history: what Keras' `fit()` prints after an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (the objective: CE, or the distillation total).
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Cross-entropy on the evaluation split.
    pub val_loss: f64,
    /// Accuracy on the evaluation split.
    pub val_accuracy: f64,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f64,
    /// Wall time of the epoch (training + evaluation).
    pub seconds: f64,
    /// A feature method's parts, unweighted, averaged over the epoch's training examples.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, f64>,
    /// What the epoch ran on, so that the report compares only wall times measured alike
    /// (`None` in histories written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
}

/// Set by `distill run --jobs N` on each of its worker processes: N (the training processes
/// sharing the machine). Absent, a run is alone: 1.
pub const JOBS_ENV: &str = "DISTILL_JOBS";

/// What an epoch's wall time depends on besides the work: the compute threads, the training
/// processes side by side and the CPU. Epoch times are comparable only under equal settings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Compute {
    /// Threads of the compute pool the run used (rayon's global pool: Flex runs its kernels on
    /// it; `--threads` or `RAYON_NUM_THREADS` size it).
    pub threads: usize,
    /// Training processes running side by side (`distill run --jobs`; 1 otherwise).
    pub jobs: usize,
    /// The CPU model (`model name` in `/proc/cpuinfo`), or `unknown`.
    pub cpu: String,
}

impl Compute {
    /// The settings of this process, now.
    pub fn current() -> Self {
        static CPU: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let cpu = CPU.get_or_init(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| cpu_model(&text))
                .unwrap_or_else(|| "unknown".into())
        });
        Compute {
            threads: rayon::current_num_threads(),
            jobs: std::env::var(JOBS_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(1),
            cpu: cpu.clone(),
        }
    }

    /// `2 threads, 1 job, Intel(R) Xeon(R) ...`.
    pub fn describe(&self) -> String {
        format!(
            "{} thread{}, {} job{}, {}",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.jobs,
            if self.jobs == 1 { "" } else { "s" },
            self.cpu
        )
    }
}

/// The first `model name` of a `/proc/cpuinfo`, whitespace collapsed.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name")
                .then(|| value.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|m| !m.is_empty())
}

/// What a student is trained against; `T` supplies the teacher's logits ([`SoftTargets`]).
pub enum Objective<'a, T: ?Sized = TeacherLogits> {
    /// Labels only (a teacher, or a student from scratch).
    Labels,
    /// Labels and a teacher's logits.
    Distill {
        /// How the two are combined.
        loss: DistillLoss,
        /// Where the teacher's logits come from.
        teacher: &'a T,
        /// A cosine term on hidden states (the teacher must offer them), if any.
        hidden: Option<HiddenTerm>,
    },
    /// Labels and a teacher's hidden features through a feature method ([`crate::methods`]),
    /// with KD on the teacher's logits as well when `kd` is set.
    Features {
        /// The method and its settings.
        method: &'a FeatureMethod,
        /// The teacher's taps.
        teacher: &'a TeacherFeatures,
        /// Weight of the label cross-entropy (without `kd`; KD's `alpha` weighs it otherwise).
        ce_weight: f64,
        /// KD (or DKD) on the logits too, and where the teacher's logits come from.
        kd: Option<(DistillLoss, &'a T)>,
    },
}

/// A training job.
pub struct TrainJob<'a> {
    /// Architecture of the model to train.
    pub spec: &'a ModelSpec,
    /// Class names (their count must equal the model's outputs).
    pub classes: &'a [String],
    /// Training split.
    pub train: &'a Split,
    /// Evaluation split (test, or a validation split carved from train).
    pub eval: &'a Split,
    /// Hyper-parameters.
    pub config: &'a TrainConfig,
    /// Labels only, or distillation.
    pub objective: Objective<'a>,
    /// Run directory.
    pub out: &'a Path,
    /// Continue from the newest checkpoint in `out` if there is one.
    pub resume: bool,
    /// Start from this checkpoint's weights (with a fresh optimizer) instead of a random
    /// initialisation; ignored when resuming, since the run's own checkpoint holds newer weights.
    pub init_from: Option<&'a Path>,
    /// Show progress bars (they are hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Print one line per epoch on stdout.
    pub verbose: bool,
}

/// A training job for any modality: the architecture builds and stores the model, the splits
/// hold that modality's examples. [`TrainJob`] is the image form of it.
pub struct ModelJob<'a, A: Architecture, T: ?Sized = TeacherLogits> {
    /// Builds, sizes and stores the model.
    pub architecture: A,
    /// Training split.
    pub train: &'a <A::Modality as Modality>::Split,
    /// Evaluation split (test, or a validation split carved from train).
    pub eval: &'a <A::Modality as Modality>::Split,
    /// Hyper-parameters.
    pub config: &'a TrainConfig,
    /// Labels only, or distillation.
    pub objective: Objective<'a, T>,
    /// Run directory.
    pub out: &'a Path,
    /// Continue from the newest checkpoint in `out` if there is one.
    pub resume: bool,
    /// Start from the model saved in this directory (with a fresh optimizer); ignored when resuming.
    pub init_from: Option<&'a Path>,
    /// Show progress bars (they are hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Print one line per epoch on stdout.
    pub verbose: bool,
}

/// The result of a finished run of a [`ModelJob`].
#[derive(Debug)]
pub struct ModelOutcome<M> {
    /// The trained model (on the training device, autodiff enabled).
    pub model: M,
    /// Per-epoch history, including epochs from before a resume.
    pub history: Vec<EpochRecord>,
}

/// The result of a finished run.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained network (on the training device, autodiff enabled).
    pub network: Network,
    /// Per-epoch history, including epochs from before a resume.
    pub history: Vec<EpochRecord>,
}

/// Saved at each checkpoint; a resumed run refuses to continue under a different configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    format: u32,
    epochs_done: usize,
    config: TrainConfig,
    objective: String,
    model: String,
    history: Vec<EpochRecord>,
}

const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.bpk";

fn objective_label<I, T: SoftTargets<I> + ?Sized>(objective: &Objective<T>) -> String {
    match objective {
        Objective::Labels => "labels".to_string(),
        Objective::Distill {
            loss,
            teacher,
            hidden,
        } => {
            let hidden = hidden
                .map(|h| format!(" cosine={}", h.weight))
                .unwrap_or_default();
            format!("{loss:?}{hidden} teacher={}", teacher.teacher_id())
        }
        Objective::Features {
            method,
            teacher,
            ce_weight,
            kd,
        } => {
            let kd = kd
                .map(|(loss, logits)| format!(" kd={loss:?} logits={}", logits.teacher_id()))
                .unwrap_or_default();
            format!(
                "{method:?} ce={ce_weight}{kd} teacher={}",
                teacher.teacher_id()
            )
        }
    }
}

/// Seed of the backend's generator (dropout masks) for one epoch, so every epoch can be replayed
/// on its own after a resume. Shuffling and augmentation are keyed by seed and epoch in
/// [`crate::data`] itself.
fn dropout_seed(seed: u64, epoch: usize) -> u64 {
    // SplitMix64 finaliser over the pair, with a constant that sets it apart from the data streams.
    let mut z = seed ^ 0x6A09_E667_F3BC_C909 ^ (epoch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixed into the dropout seed of MPI rank `rank` (0 for rank 0, so one process and rank 0
/// draw alike).
fn rank_stream(rank: usize) -> u64 {
    (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Mean cross-entropy and accuracy of `network` on `split`, in inference mode.
pub fn evaluate(
    network: &Network,
    split: &Split,
    device: &Device,
    batch_size: usize,
) -> (f64, f64) {
    evaluate_model::<Images>(network, split, device, batch_size)
}

/// Mean cross-entropy and accuracy of a model of any modality on `split`, in inference mode.
pub fn evaluate_model<M: Modality>(
    model: &M::Model,
    split: &M::Split,
    device: &Device,
    batch_size: usize,
) -> (f64, f64) {
    let model = model.valid();
    let plain = device.clone().without_autodiff();
    let scored = score_batches(M::len(split), batch_size, |indices| {
        let (input, labels) = M::batch(split, indices, &plain, None);
        Ok::<_, std::convert::Infallible>((M::logits(&model, input), labels))
    });
    match scored {
        Ok(scores) => scores,
        Err(never) => match never {},
    }
}

/// Mean cross-entropy and accuracy on an image split of any function from images to logits
/// (a classifier run by another engine, such as tract).
pub fn evaluate_images_with(
    split: &Split,
    device: &Device,
    batch_size: usize,
    forward: impl Fn(Tensor<4>) -> anyhow::Result<Tensor<2>>,
) -> anyhow::Result<(f64, f64)> {
    let plain = device.clone().without_autodiff();
    score_batches(split.len(), batch_size, |indices| {
        let (images, labels) = split.batch(indices, &plain, None);
        Ok((forward(images)?, labels))
    })
}

/// Mean cross-entropy and accuracy over `len` examples in batches of `batch_size`, from each
/// batch's logits and labels.
fn score_batches<E>(
    len: usize,
    batch_size: usize,
    mut logits_and_labels: impl FnMut(&[usize]) -> Result<(Tensor<2>, Tensor<1, Int>), E>,
) -> Result<(f64, f64), E> {
    let mut loss_sum = 0.0;
    let mut correct = 0i64;
    for indices in batch_order(len, batch_size, false, 0, 0) {
        let (logits, labels) = logits_and_labels(&indices)?;
        let loss: f32 = cross_entropy(logits.clone(), labels.clone(), 0.0).into_scalar();
        loss_sum += loss as f64 * indices.len() as f64;
        correct += count_correct(logits, labels);
    }
    let n = len.max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Number of rows whose arg-max logit is the label.
pub fn count_correct(logits: Tensor<2>, labels: Tensor<1, Int>) -> i64 {
    let [batch, _] = logits.dims();
    logits
        .argmax(1)
        .reshape([batch])
        .equal(labels)
        .int()
        .sum()
        .into_scalar()
}

/// What a run directory records about its training, read back from its newest checkpoint.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run's seed.
    pub seed: u64,
    /// The objective ("labels", or the distillation loss and its teacher).
    pub objective: String,
    /// One record per finished epoch.
    pub history: Vec<EpochRecord>,
}

impl RunRecord {
    /// Reads the newest checkpoint of the run in `dir`; errors name the directory.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let Some((_, newest)) = checkpoint_dirs(dir).pop() else {
            bail!(
                "{}: no training checkpoint (expected {CHECKPOINTS_DIR}/epoch-NNNN/{STATE_FILE}); is it the --out of a train or distill run?",
                dir.display()
            );
        };
        let state = read_state(&newest)?;
        if state.history.is_empty() {
            bail!("{}: the run has no finished epoch", dir.display());
        }
        Ok(Self {
            seed: state.config.seed,
            objective: state.objective,
            history: state.history,
        })
    }

    /// Accuracy on the evaluation split after the last epoch.
    pub fn final_accuracy(&self) -> f64 {
        self.history.last().map_or(f64::NAN, |r| r.val_accuracy)
    }

    /// Wall time of all epochs.
    pub fn seconds(&self) -> f64 {
        self.history.iter().map(|r| r.seconds).sum()
    }
}

/// The training state saved in the checkpoint directory `dir`.
fn read_state(dir: &Path) -> anyhow::Result<TrainState> {
    let path = dir.join(STATE_FILE);
    serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a valid training state", path.display()))
}

fn checkpoint_dirs(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut dirs: Vec<(usize, PathBuf)> = fs::read_dir(out.join(CHECKPOINTS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
            entry
                .path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (epoch, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// The newest checkpoint whose files match their manifest. A corrupt newer one is reported and
/// skipped (the previous one is kept for exactly this); none valid is an error naming the file.
fn newest_valid_checkpoint(
    dirs: &[(usize, PathBuf)],
    resume: bool,
) -> anyhow::Result<Option<&(usize, PathBuf)>> {
    let mut first_error = None;
    for entry in dirs.iter().rev() {
        if !resume {
            return Ok(Some(entry));
        }
        match checkpoint::verify_manifest(&entry.1) {
            Ok(()) => {
                if let Some(err) = &first_error {
                    eprintln!(
                        "warning: {err:#}; resuming from the previous checkpoint {}",
                        entry.1.display()
                    );
                }
                return Ok(Some(entry));
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err.context("no intact checkpoint to resume from")),
        None => Ok(None),
    }
}

/// Whether the run in `out` has a checkpoint after its last epoch (of `epochs`).
pub fn is_complete(out: &Path, epochs: usize) -> bool {
    checkpoint_dirs(out).last().map(|(e, _)| *e) == Some(epochs)
}

fn write_history(out: &Path, history: &[EpochRecord]) -> anyhow::Result<()> {
    let mut csv = String::from("epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,seconds\n");
    for r in history {
        let _ = writeln!(
            csv,
            "{},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.3}",
            r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy, r.learning_rate, r.seconds
        );
    }
    write_atomic(&out.join("history.csv"), csv.as_bytes())?;
    write_atomic(
        &out.join("history.json"),
        serde_json::to_string_pretty(history)?.as_bytes(),
    )
}

/// Writes a complete training state as `checkpoints/epoch-NNNN/` (built under a temporary name and
/// renamed, so a partial one is never picked up), refreshes the model at the top of `out`, and
/// keeps the two newest states.
fn save_checkpoint<A: Architecture>(
    out: &Path,
    architecture: &A,
    model: &ModelOf<A>,
    optimizer: &ModuleOptimizer,
    method: Option<&MethodRun>,
    state: &TrainState,
) -> anyhow::Result<()> {
    if !crate::distributed::is_root() {
        return Ok(());
    }
    let root = out.join(CHECKPOINTS_DIR);
    let final_dir = root.join(format!("epoch-{:04}", state.epochs_done));
    let tmp_dir = root.join(format!(".epoch-{:04}.partial", state.epochs_done));
    let _ = fs::remove_dir_all(&tmp_dir);
    architecture.save(&tmp_dir, model)?;
    let optimizer_bytes = optimizer
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialise the optimizer state: {e}"))?;
    write_atomic(&tmp_dir.join(OPTIMIZER_FILE), &optimizer_bytes)?;
    write_atomic(
        &tmp_dir.join(STATE_FILE),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    let mut files = architecture.model_files();
    files.extend([OPTIMIZER_FILE, STATE_FILE]);
    if let Some(method) = method {
        files.extend(method.save(&tmp_dir)?);
    }
    checkpoint::write_manifest(&tmp_dir, &files)?;
    let _ = fs::remove_dir_all(&final_dir);
    fs::rename(&tmp_dir, &final_dir).with_context(|| {
        format!(
            "cannot move checkpoint into place at {}",
            final_dir.display()
        )
    })?;
    architecture.save(out, model)?;
    write_history(out, &state.history)?;
    let dirs = checkpoint_dirs(out);
    for (_, old) in dirs.iter().take(dirs.len().saturating_sub(2)) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// Appends `line` to the run's log (rank 0 writes for every rank).
fn append_log(out: &Path, line: &str) {
    if !crate::distributed::is_root() {
        return;
    }
    if let Ok(mut file) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("train.log"))
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Trains the job's model on `device` (an autodiff device is derived from it).
pub fn fit(job: TrainJob, device: &Device) -> anyhow::Result<TrainOutcome> {
    let TrainJob {
        spec,
        classes,
        train,
        eval,
        config,
        objective,
        out,
        resume,
        init_from,
        progress,
        verbose,
    } = job;
    match &objective {
        Objective::Distill { teacher, .. }
        | Objective::Features {
            kd: Some((_, teacher)),
            ..
        } => teacher.check_compatible(train, classes.len())?,
        _ => {}
    }
    let outcome = fit_model(
        ModelJob {
            architecture: ImageArchitecture {
                spec,
                input: train.shape,
                classes,
            },
            train,
            eval,
            config,
            objective,
            out,
            resume,
            init_from,
            progress,
            verbose,
        },
        device,
    )?;
    Ok(TrainOutcome {
        network: outcome.model,
        history: outcome.history,
    })
}

/// Trains a model of any modality on `device` (an autodiff device is derived from it): the one
/// training loop behind [`fit`] and the text path.
pub fn fit_model<A, T>(
    job: ModelJob<A, T>,
    device: &Device,
) -> anyhow::Result<ModelOutcome<ModelOf<A>>>
where
    A: Architecture,
    T: SoftTargets<<A::Modality as Modality>::Input> + ?Sized,
{
    let ModelJob {
        architecture,
        train,
        eval,
        config,
        objective,
        out,
        resume,
        init_from,
        progress,
        verbose,
    } = job;
    let train_len = <A::Modality as Modality>::len(train);
    config.validate(train_len)?;
    if let Objective::Distill { loss, hidden, .. } = &objective {
        loss.validate()
            .map_err(|e| anyhow::anyhow!("distillation loss: {e}"))?;
        if let Some(term) = hidden {
            term.validate().map_err(anyhow::Error::msg)?;
        }
    }
    if let Objective::Features {
        method,
        ce_weight,
        kd,
        ..
    } = &objective
    {
        method
            .validate()
            .map_err(|e| anyhow::anyhow!("method {}: {e}", method.name()))?;
        crate::methods::check_weight("ce_weight", *ce_weight).map_err(anyhow::Error::msg)?;
        if let Some((loss, _)) = kd {
            loss.validate()
                .map_err(|e| anyhow::anyhow!("method {} kd: {e}", method.name()))?;
        }
    }
    architecture.check()?;
    let identity = architecture.identity();
    fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    if crate::distributed::is_root() {
        let probe = out.join(".write-test");
        fs::write(&probe, b"ok")
            .with_context(|| format!("output directory {} is not writable", out.display()))?;
        let _ = fs::remove_file(probe);
    }
    let parallel = crate::distributed::is_parallel();
    // An epoch checkpoint holds the weights and Adam's two moments (4 bytes each); the final
    // model is written next to it, and the previous checkpoint is only removed afterwards.
    let params = architecture.params()? as u64;
    checkpoint::ensure_room(
        out,
        2 * (params * 4 * 3 + (1 << 20)),
        "one checkpoint and the final model",
    )?;

    let train_device = device.clone().autodiff();
    let objective_name = objective_label(&objective);
    if parallel {
        check_data_parallel(&objective, config, train_len, &identity, &objective_name)?;
    }
    let mut model = architecture.init(config.seed, &train_device)?;
    let mut optimizer = config.optimizer.build();
    let mut method_run = match &objective {
        Objective::Features {
            method, teacher, ..
        } => Some(prepare_method(
            &architecture,
            method,
            teacher,
            <A::Modality as Modality>::labels(train),
            config,
            &train_device,
        )?),
        _ => None,
    };
    let mut history = Vec::new();

    let existing = checkpoint_dirs(out);
    let resuming = newest_valid_checkpoint(&existing, resume)?;
    if let (Some(dir), None) = (init_from, resuming) {
        model = architecture.warm_start(dir, model)?;
        append_log(out, &format!("warm start from {}", dir.display()));
    }
    if let Some((epochs_done, dir)) = resuming {
        if !resume {
            bail!(
                "{} already holds a training run (last checkpoint: epoch {epochs_done}); pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        let state = read_state(dir)?;
        if state.model != identity {
            bail!(
                "cannot resume from {}: it was made for a different model spec",
                dir.display()
            );
        }
        if state.config != *config {
            bail!(
                "cannot resume from {}: it was made with different training settings ({:?})",
                dir.display(),
                state.config
            );
        }
        if state.objective != objective_name {
            bail!(
                "cannot resume from {}: it was made with a different objective ({})",
                dir.display(),
                state.objective
            );
        }
        model = architecture.load_weights(dir, model)?;
        optimizer = optimizer.load(dir.join(OPTIMIZER_FILE)).map_err(|e| {
            anyhow::anyhow!(
                "cannot load optimizer state {}: {e}",
                dir.join(OPTIMIZER_FILE).display()
            )
        })?;
        history = state.history;
        if let Some(run) = method_run.take() {
            method_run = Some(run.load(dir)?);
        }
        if verbose {
            println!(
                "Resuming {} from epoch {epochs_done}/{}",
                out.display(),
                config.epochs
            );
        }
    }

    // Every rank starts from rank 0's weights (the same seed gives the same ones; this makes
    // sure of it, and covers a warm start read on rank 0's file system).
    model = crate::distributed::broadcast_module(model, "the starting weights");
    let averager = parallel.then(|| crate::distributed::GradientAverage::new(&model));
    if let Some(run) = method_run.as_mut().filter(|_| parallel) {
        let heads = std::mem::take(&mut run.heads);
        run.heads = crate::distributed::broadcast_module(heads, "the method's starting heads");
    }
    let head_averager = method_run
        .as_ref()
        .filter(|_| parallel)
        .map(|run| crate::distributed::GradientAverage::new(&run.heads));
    if parallel {
        crate::distributed::agree(
            history.len() as u64,
            "the epoch to resume from (every rank reads --out's checkpoints: put --out on a file system all ranks share)",
        )?;
    }
    let place = crate::distributed::place();
    let compute = Compute::current();
    let steps_per_epoch = train_len.div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let plain_device = device.clone().without_autodiff();
    for epoch in history.len()..config.epochs {
        let started = Instant::now();
        // each rank draws its own dropout masks for its own images (rank 0 those of one process)
        train_device.seed(dropout_seed(config.seed, epoch) ^ rank_stream(place.rank));
        let order = batch_order(train_len, config.batch_size, true, config.seed, epoch);
        let bar = crate::progress::bar(
            order.len() as u64,
            &format!("Epoch {}/{}", epoch + 1, config.epochs),
            progress && place.rank == 0,
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        let mut part_sums: Vec<(&'static str, f64)> = Vec::new();
        let mut lr = config.optimizer.learning_rate;
        // Each image's transform is keyed by this seed and its dataset index.
        let augment = config
            .augmentation
            .as_ref()
            .map(|aug| (aug, augmentation_seed(config.seed, epoch)));
        for (step, global) in order.iter().enumerate() {
            // Under MPI this rank trains on its contiguous part of the global batch.
            let indices = crate::distributed::own_share(global);
            let share = indices.len() as f32 / global.len() as f32;
            let batch = (!indices.is_empty())
                .then(|| <A::Modality as Modality>::batch(train, indices, &train_device, augment));
            let views: Option<Vec<usize>> = augment
                .and_then(|(aug, seed)| indices.iter().map(|&i| view_of(aug, seed, i)).collect());
            let mix = augment.zip(views.as_deref()).and_then(|((aug, _), views)| {
                <A::Modality as Modality>::label_mix(train, indices, views, aug)
            });
            lr = config
                .optimizer
                .learning_rate_at(epoch * steps_per_epoch + step, total_steps);
            let context = StepContext {
                indices,
                views: views.as_deref(),
                mix: mix.as_ref(),
                learning_rate: lr,
                label_smoothing: config.label_smoothing,
                epoch: epoch + 1,
            };
            let (next, loss_value, batch_correct) = match (&objective, method_run.as_mut()) {
                (Objective::Features { .. }, Some(run)) => {
                    if mix.is_some() {
                        bail!("feature methods do not train on mixup views (their blends have two labels): leave `augmentation.mixup` out for them, or distill with KD at alpha 0");
                    }
                    let sync = match (&averager, &head_averager) {
                        (Some(student), Some(heads)) => Some(FeatureSync {
                            student,
                            heads,
                            share,
                        }),
                        _ => None,
                    };
                    let (next, loss_value, batch_correct, parts) = feature_step::<A::Modality, T>(
                        model,
                        &mut optimizer,
                        run,
                        &objective,
                        batch,
                        FeatureStepInfo {
                            indices,
                            views: views.as_deref(),
                            learning_rate: lr,
                            label_smoothing: config.label_smoothing,
                            epoch: epoch + 1,
                            step_seed: method_step_seed(
                                config.seed,
                                epoch * steps_per_epoch + step,
                            ),
                        },
                        sync,
                        &plain_device,
                    )?;
                    // one process: its batch; under MPI: rank 0's share, as its mean
                    add_parts(&mut part_sums, &parts, global.len());
                    (next, loss_value, batch_correct)
                }
                (_, _) if averager.is_some() => data_parallel_step::<A::Modality, T>(
                    model,
                    &mut optimizer,
                    averager.as_ref().expect("checked"),
                    &objective,
                    batch,
                    context,
                    share,
                    &plain_device,
                )?,
                _ => step_on::<A::Modality, T>(
                    model,
                    &mut optimizer,
                    &objective,
                    batch.expect("one process trains on the whole batch"),
                    context,
                    &plain_device,
                )?,
            };
            model = next;
            if !loss_value.is_finite() {
                bar.abandon();
                let kept = checkpoint_dirs(out)
                    .last()
                    .map(|(e, d)| {
                        format!(
                            "the last good checkpoint (epoch {e}) is kept in {}",
                            d.display()
                        )
                    })
                    .unwrap_or_else(|| "no checkpoint had been written yet".to_string());
                let message = format!(
                    "the loss became {loss_value} at epoch {}, step {}; {kept}. Try a lower learning rate{}",
                    epoch + 1,
                    step + 1,
                    if matches!(objective, Objective::Distill { .. }) { ", or a temperature between 1 and 20" } else { "" }
                );
                append_log(out, &format!("error: {message}"));
                bail!(message);
            }
            correct += batch_correct;
            seen += global.len();
            loss_sum += loss_value as f64 * global.len() as f64;
            bar.set_message(format!(
                "loss {:.4} acc {:.4}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if parallel {
            let (synchronised, hash) = synchronise_epoch(model)?;
            model = synchronised;
            append_log(
                out,
                &format!(
                    "epoch {}: the {} ranks hold the same weights (hash {hash:016x})",
                    epoch + 1,
                    place.size
                ),
            );
        }
        let (val_loss, val_accuracy) =
            evaluate_model::<A::Modality>(&model, eval, device, 256.max(config.batch_size));
        let record = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            val_loss,
            val_accuracy,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
            parts: part_sums
                .iter()
                .map(|(name, sum)| (name.to_string(), sum / seen as f64))
                .collect(),
            compute: Some(compute.clone()),
        };
        let mut line = format!(
            "Epoch {}/{} - {:.1}s - loss: {:.4} - accuracy: {:.4} - val_loss: {:.4} - val_accuracy: {:.4}",
            record.epoch, config.epochs, record.seconds, record.loss, record.accuracy, record.val_loss, record.val_accuracy
        );
        for (name, value) in &record.parts {
            let _ = write!(line, " - {name}: {value:.4}");
        }
        if verbose && place.rank == 0 {
            println!("{line}");
        }
        append_log(out, &line);
        history.push(record);
        let state = TrainState {
            format: 1,
            epochs_done: epoch + 1,
            config: config.clone(),
            objective: objective_name.clone(),
            model: identity.clone(),
            history: history.clone(),
        };
        save_checkpoint(
            out,
            &architecture,
            &model,
            &optimizer,
            method_run.as_ref(),
            &state,
        )?;
        if parallel {
            // nobody reads the run (to evaluate it, or to resume) before rank 0 has written it
            crate::distributed::barrier("rank 0 writing the checkpoint", false);
        }
    }
    if history.len() == config.epochs
        && existing.last().map(|(e, _)| *e) == Some(config.epochs)
        && verbose
    {
        println!(
            "{} is already complete ({} epochs)",
            out.display(),
            config.epochs
        );
    }
    Ok(ModelOutcome { model, history })
}

/// What data-parallel training needs before its first step: an objective it supports, a batch
/// the ranks can split evenly, and every rank on the same model, settings, data and binary.
fn check_data_parallel<T: ?Sized>(
    objective: &Objective<T>,
    config: &TrainConfig,
    train_len: usize,
    identity: &impl std::fmt::Debug,
    objective_name: &str,
) -> anyhow::Result<()> {
    let size = crate::distributed::size();
    if let Objective::Features { method, .. } = objective {
        if !method.trains_data_parallel() {
            bail!(
                "method {} trains in one process: its memory bank, updated by every batch, is not shared across ranks yet. Spread a study's runs over the ranks instead (`mpirun … distill run --distribute runs`)",
                method.name()
            );
        }
    }
    if !config.batch_size.is_multiple_of(size) {
        bail!(
            "`batch_size` {} cannot be split evenly over {size} MPI ranks; choose a batch size that is a multiple of {size}, or another rank count",
            config.batch_size
        );
    }
    crate::distributed::agree_on_settings(
        &format!("{identity:?}|{config:?}|{objective_name}|{train_len}"),
        "the model, the training settings and the data size",
    )
}

/// The end of a data-parallel epoch: the ranks must still hold the same trainable weights
/// (checked by hash), and rank 0's batch-norm running statistics become everyone's, as PyTorch
/// DDP's buffer broadcast leaves them (each rank normalises with its own batch statistics).
/// Returns the model and the weights' hash.
fn synchronise_epoch<M: Module>(model: M) -> anyhow::Result<(M, u64)> {
    let hash = crate::distributed::trainable_fingerprint(&model);
    crate::distributed::agree(hash, "the trained weights (the ranks drifted apart)")?;
    let model = crate::distributed::broadcast_module(model, "rank 0's batch-norm statistics");
    Ok((model, hash))
}

/// One optimisation step on a batch: forward, the objective's loss, backward, Adam update.
/// `views` gives the fixed augmented view each image shows (for the augmented-view logit cache);
/// `epoch` is the 1-based epoch being trained (DKD's warm-up reads it).
/// Returns the updated network, the batch loss and the number of correct predictions. A
/// non-finite loss skips the update (the caller stops the run with the weights of the last good step).
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    network: Network,
    optimizer: &mut ModuleOptimizer,
    objective: &Objective,
    batch: (Tensor<4>, Tensor<1, Int>),
    indices: &[usize],
    views: Option<&[usize]>,
    learning_rate: f64,
    label_smoothing: f64,
    epoch: usize,
    plain_device: &Device,
) -> anyhow::Result<(Network, f32, i64)> {
    model_step::<Images, TeacherLogits>(
        network,
        optimizer,
        objective,
        batch,
        indices,
        views,
        learning_rate,
        label_smoothing,
        epoch,
        plain_device,
    )
}

/// One step of an image network trained on labels as [`fit`] takes it under MPI: `batch` is this
/// rank's `share` of the global batch (`None` for an empty share); the gradients are averaged
/// over the ranks before the update. For `distill bench --data-parallel`.
#[allow(clippy::too_many_arguments)]
pub fn data_parallel_train_step(
    network: Network,
    optimizer: &mut ModuleOptimizer,
    averager: &crate::distributed::GradientAverage,
    batch: Option<(Tensor<4>, Tensor<1, Int>)>,
    indices: &[usize],
    share: f32,
    learning_rate: f64,
    plain_device: &Device,
) -> anyhow::Result<(Network, f32, i64)> {
    data_parallel_step::<Images, TeacherLogits>(
        network,
        optimizer,
        averager,
        &Objective::Labels,
        batch,
        StepContext {
            indices,
            views: None,
            mix: None,
            learning_rate,
            label_smoothing: 0.0,
            epoch: 1,
        },
        share,
        plain_device,
    )
}

/// [`train_step`] for a model of any modality.
#[allow(clippy::too_many_arguments)]
pub fn model_step<M, T>(
    model: M::Model,
    optimizer: &mut ModuleOptimizer,
    objective: &Objective<T>,
    batch: (M::Input, Tensor<1, Int>),
    indices: &[usize],
    views: Option<&[usize]>,
    learning_rate: f64,
    label_smoothing: f64,
    epoch: usize,
    plain_device: &Device,
) -> anyhow::Result<(M::Model, f32, i64)>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let step = StepContext {
        indices,
        views,
        mix: None,
        learning_rate,
        label_smoothing,
        epoch,
    };
    step_on::<M, T>(model, optimizer, objective, batch, step, plain_device)
}

/// One optimisation step where `step` says everything about the batch (mixup's second labels
/// included).
fn step_on<M, T>(
    model: M::Model,
    optimizer: &mut ModuleOptimizer,
    objective: &Objective<T>,
    batch: (M::Input, Tensor<1, Int>),
    step: StepContext<'_>,
    plain_device: &Device,
) -> anyhow::Result<(M::Model, f32, i64)>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let learning_rate = step.learning_rate;
    match model_gradients::<M, T>(&model, objective, batch, step, plain_device)? {
        (Some(grads), loss, correct) => {
            Ok((optimizer.step(learning_rate, model, grads), loss, correct))
        }
        (None, loss, _) => Ok((model, loss, 0)),
    }
}

/// Where a step is: the batch's dataset indices and fixed views (for cached teacher logits), their
/// blends' second labels under mixup, the learning rate, label smoothing and the 1-based epoch (DKD's warm-up reads it).
#[derive(Clone, Copy)]
struct StepContext<'a> {
    indices: &'a [usize],
    views: Option<&'a [usize]>,
    /// Each example's second label and weight when the views blend two images (mixup).
    mix: Option<&'a LabelMix>,
    learning_rate: f64,
    label_smoothing: f64,
    epoch: usize,
}

/// The objective's loss on a batch and its gradients: `None` when the loss is not finite (the
/// caller keeps the weights of the last good step). Also returns the loss and the correct count.
fn model_gradients<M, T>(
    model: &M::Model,
    objective: &Objective<T>,
    (input, labels): (M::Input, Tensor<1, Int>),
    step: StepContext<'_>,
    plain_device: &Device,
) -> anyhow::Result<(Option<GradientsParams>, f32, i64)>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let StepContext {
        indices,
        views,
        mix,
        label_smoothing,
        epoch,
        ..
    } = step;
    let wants_states = matches!(
        objective,
        Objective::Distill {
            hidden: Some(_),
            ..
        }
    );
    let (logits, student_states) = if wants_states {
        M::logits_and_states(model, input.clone())
    } else {
        (M::logits(model, input.clone()), None)
    };
    let loss = match objective {
        Objective::Labels => match mix {
            Some(mix) => mixup_cross_entropy(logits.clone(), labels.clone(), mix, label_smoothing),
            None => cross_entropy(logits.clone(), labels.clone(), label_smoothing),
        },
        Objective::Features { .. } => {
            bail!("a feature method trains through `fit_model`, which keeps its heads")
        }
        Objective::Distill {
            loss,
            teacher,
            hidden,
        } => {
            if mix.is_some() && !loss.ignores_labels() {
                bail!("on mixup views the label term is a blend of two labels, which {} does not take: distill on the teacher alone (KD or MSE with alpha = 0: function matching)", loss.name());
            }
            let teacher_logits = teacher
                .logits_at(indices, views, &input, plain_device)?
                .autodiff();
            let total = loss
                .forward(
                    logits.clone(),
                    teacher_logits,
                    labels.clone(),
                    label_smoothing,
                    epoch,
                )
                .total;
            match hidden {
                None => total,
                Some(term) => {
                    let student = student_states.context(
                        "the cosine term needs a student with hidden states (a transformer)",
                    )?;
                    let teacher_states = teacher.states_at(&input, plain_device)?.context(
                        "the cosine term needs a teacher that runs live and offers hidden states",
                    )?;
                    let teacher_states: Vec<Tensor<3>> =
                        teacher_states.into_iter().map(|t| t.autodiff()).collect();
                    total + mapped_hidden_cosine(&student, &teacher_states)? * term.weight
                }
            }
        }
    };
    let loss_value: f32 = loss.clone().into_scalar();
    if !loss_value.is_finite() {
        return Ok((None, loss_value, 0));
    }
    let correct = count_correct(logits.detach(), labels);
    let grads = GradientsParams::from_grads(loss.backward(), model);
    Ok((Some(grads), loss_value, correct))
}

/// One data-parallel step (see [`crate::distributed`]): this rank's gradients on its `shard`
/// of the global batch (none when a short last batch leaves it nothing), averaged with the other
/// ranks' in proportion to their shares, then the same update on every rank. Returns the model
/// and the global batch's mean loss and correct count; a non-finite global loss skips the update
/// on every rank alike.
#[allow(clippy::too_many_arguments)]
fn data_parallel_step<M, T>(
    model: M::Model,
    optimizer: &mut ModuleOptimizer,
    averager: &crate::distributed::GradientAverage,
    objective: &Objective<T>,
    shard: Option<(M::Input, Tensor<1, Int>)>,
    step: StepContext<'_>,
    share: f32,
    plain_device: &Device,
) -> anyhow::Result<(M::Model, f32, i64)>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let (grads, loss, correct) = match shard {
        Some(batch) => model_gradients::<M, T>(&model, objective, batch, step, plain_device)?,
        None => (None, 0.0, 0),
    };
    let (grads, totals) = averager.apply(grads, loss, correct, share, plain_device);
    if !totals.loss.is_finite() {
        return Ok((model, totals.loss, 0));
    }
    Ok((
        optimizer.step(step.learning_rate, model, grads),
        totals.loss,
        totals.correct,
    ))
}

/// Builds a feature method's heads and state for `architecture`'s student: its taps resolved by
/// name (an unknown one is an error listing those that exist).
fn prepare_method<A: Architecture>(
    architecture: &A,
    method: &FeatureMethod,
    teacher: &TeacherFeatures,
    labels: Vec<usize>,
    config: &TrainConfig,
    device: &Device,
) -> anyhow::Result<MethodRun> {
    let student = method.pick_student_taps(&architecture.taps()?, "the student")?;
    let (heads, state) = method
        .prepare(&student, teacher.taps(), labels, config.seed, device)
        .with_context(|| format!("method {}", method.name()))?;
    Ok(MethodRun {
        heads,
        optimizer: config.optimizer.build(),
        state,
        student_layers: student.iter().map(|t| t.layer).collect(),
    })
}

/// Seeds what a method samples at global step `step` (CRD's negatives): a function of the run's
/// seed and the step, so a resumed run draws the same.
fn method_step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

fn add_parts(sums: &mut Vec<(&'static str, f64)>, parts: &[(&'static str, f32)], batch: usize) {
    for &(name, value) in parts {
        match sums.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum += value as f64 * batch as f64,
            None => sums.push((name, value as f64 * batch as f64)),
        }
    }
}

/// A feature method's parts for one batch, by name, unweighted.
type MethodParts = Vec<(&'static str, f32)>;

/// What a feature step needs to know about its batch besides the data.
struct FeatureStepInfo<'a> {
    indices: &'a [usize],
    views: Option<&'a [usize]>,
    learning_rate: f64,
    label_smoothing: f64,
    epoch: usize,
    step_seed: u64,
}

/// Under MPI, the gradient averages of the student and of a feature method's heads, and this
/// rank's share of the global batch.
struct FeatureSync<'a> {
    student: &'a crate::distributed::GradientAverage,
    heads: &'a crate::distributed::GradientAverage,
    share: f32,
}

/// What one process or one rank of a feature step computes: the student's and the heads'
/// gradients (`None` for a non-finite loss), the loss, the correct count and the method's parts.
type FeatureGradients = (
    Option<(GradientsParams, GradientsParams)>,
    f32,
    i64,
    MethodParts,
);

/// One optimisation step of a student under a feature method: the student's logits and taps,
/// the teacher's reads, CE (or KD) plus the method's terms, and one update of the student and of
/// the method's heads. Under MPI (`sync`) both sets of gradients are averaged over the ranks
/// first, and `batch` is this rank's share (`None` when it is empty). Returns the model, the
/// batch loss (global under MPI), the correct predictions and the method's parts (unweighted;
/// this rank's under MPI).
#[allow(clippy::too_many_arguments)]
fn feature_step<M, T>(
    model: M::Model,
    optimizer: &mut ModuleOptimizer,
    run: &mut MethodRun,
    objective: &Objective<T>,
    batch: Option<(M::Input, Tensor<1, Int>)>,
    info: FeatureStepInfo,
    sync: Option<FeatureSync<'_>>,
    plain_device: &Device,
) -> anyhow::Result<(M::Model, f32, i64, MethodParts)>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let (grads, loss, correct, parts) = match batch {
        Some(batch) => {
            feature_gradients::<M, T>(&model, run, objective, batch, &info, plain_device)?
        }
        None => (None, 0.0, 0, Vec::new()),
    };
    let (student_grads, head_grads, loss, correct) = match (sync, grads) {
        (None, None) => return Ok((model, loss, 0, parts)),
        (None, Some((student, heads))) => (student, heads, loss, correct),
        (Some(sync), grads) => {
            let (student, heads) = grads.unzip();
            let (student, totals) =
                sync.student
                    .apply(student, loss, correct, sync.share, plain_device);
            let (heads, _) = sync.heads.apply(heads, 0.0, 0, sync.share, plain_device);
            if !totals.loss.is_finite() {
                return Ok((model, totals.loss, 0, parts));
            }
            (student, heads, totals.loss, totals.correct)
        }
    };
    let heads = std::mem::take(&mut run.heads);
    run.heads = run.optimizer.step(info.learning_rate, heads, head_grads);
    Ok((
        optimizer.step(info.learning_rate, model, student_grads),
        loss,
        correct,
        parts,
    ))
}

/// The forward and backward pass of [`feature_step`] on one batch.
fn feature_gradients<M, T>(
    model: &M::Model,
    run: &mut MethodRun,
    objective: &Objective<T>,
    (input, labels): (M::Input, Tensor<1, Int>),
    info: &FeatureStepInfo,
    plain_device: &Device,
) -> anyhow::Result<FeatureGradients>
where
    M: Modality,
    T: SoftTargets<M::Input> + ?Sized,
{
    let Objective::Features {
        method,
        teacher,
        ce_weight,
        kd,
    } = objective
    else {
        unreachable!("called for feature objectives only")
    };
    let (logits, student) = M::logits_and_features(model, input.clone(), &run.student_layers)?;
    let images = M::images(&input).context("feature methods read images")?;
    let teacher_reads = teacher
        .at(info.indices, images, plain_device)
        .into_iter()
        .map(|t| t.autodiff())
        .collect();
    let method_loss = method.loss(
        &run.heads,
        &mut run.state,
        MethodBatch {
            student,
            teacher: teacher_reads,
            indices: info.indices,
            step_seed: info.step_seed,
        },
    )?;
    let base = match kd {
        None => cross_entropy(logits.clone(), labels.clone(), info.label_smoothing)
            .mul_scalar(*ce_weight),
        Some((loss, logit_source)) => {
            let teacher_logits = logit_source
                .logits_at(info.indices, info.views, &input, plain_device)?
                .autodiff();
            loss.forward(
                logits.clone(),
                teacher_logits,
                labels.clone(),
                info.label_smoothing,
                info.epoch,
            )
            .total
        }
    };
    let loss = base + method_loss.total;
    let loss_value: f32 = loss.clone().into_scalar();
    let parts = method_loss
        .parts
        .into_iter()
        .map(|(name, part)| (name, part.into_scalar::<f32>()))
        .collect();
    if !loss_value.is_finite() {
        return Ok((None, loss_value, 0, parts));
    }
    let correct = count_correct(logits.detach(), labels);
    let mut grads = loss.backward();
    let student_grads = GradientsParams::from_module(&mut grads, model);
    let head_grads = GradientsParams::from_module(&mut grads, &run.heads);
    Ok((
        Some((student_grads, head_grads)),
        loss_value,
        correct,
        parts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_model_is_the_first_model_name_of_proc_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model(text).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t:\n"), None);
        let here = Compute::current();
        assert!(here.threads >= 1 && here.jobs >= 1 && !here.cpu.is_empty());
    }
}
