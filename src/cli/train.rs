//! `distill train`, `distill distill` and `distill eval`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::backend::Backend;
use crate::data::{self, Augmentation, DataSpec, Dataset, Split};
use crate::distill::{teacher_logits, CacheLocation, LogitSource, Teacher};
use crate::losses::DistillLoss;
use crate::models::{checkpoint, resolve_spec};
use crate::train::{fit, Objective, OptimizerConfig, TrainConfig, TrainJob};

/// Options shared by every training command.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset: `embedded`, `cifar10[:DIR]`, `cifar100[:DIR]` (fine labels),
    /// `cifar100-coarse[:DIR]`, `mnist[:DIR]`, `fashion-mnist[:DIR]` or `folder:DIR`;
    /// text: `rotten-tomatoes[:DIR]` or `text:TRAIN[,TEST]` (.tsv/.csv with label and text columns).
    #[arg(long, default_value = "embedded")]
    pub data: String,
    /// Passes over the training split.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Run directory (checkpoints, history, log).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights of this checkpoint directory (same architecture; dropout rates may
    /// differ), of a `.safetensors` file whose tensor names follow the model's spec, or of a
    /// PyTorch checkpoint (`.pth`/`.pt`/`.th`) of the same architecture, with a fresh optimizer,
    /// instead of a random initialisation.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Seeds initialisation, shuffling, dropout and augmentation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// Decoupled weight decay (switches Adam to AdamW when > 0).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Cosine learning-rate decay to 0 over the run.
    #[arg(long)]
    pub cosine: bool,
    /// Linear learning-rate warm-up over this fraction of the steps, in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub warmup_fraction: f64,
    /// Label smoothing of the cross-entropy, in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub label_smoothing: f64,
    /// Augment training images: random crop with 4-pixel padding + horizontal flip.
    #[arg(long)]
    pub augment: bool,
    /// With --augment: draw each image's transform from K fixed views (the teacher's logits for
    /// all of them are cached once, so distillation sees exactly the view the teacher saw).
    #[arg(long, requires = "augment")]
    pub views: Option<usize>,
    /// Evaluate on this fraction of the training split (held out) instead of the test split.
    #[arg(long, allow_negative_numbers = true)]
    pub val_split: Option<f64>,
    /// Text: most tokens kept per text, special tokens included.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Text: keep the word embeddings fixed while fine-tuning (a faster backward pass).
    #[arg(long)]
    pub freeze_word_embeddings: bool,
    /// Text, with a student spec as --model: the pretrained directory or trained text model whose
    /// tokenizer and vocabulary the student uses (and, with `teacher_layers`, whose layers it
    /// starts from). `distill distill` uses its --teacher.
    #[arg(long)]
    pub base_model: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::default_compiled())]
    pub backend: Backend,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The training settings, checked before any data is loaded; the errors name the flags.
    pub(super) fn checked_config(&self) -> anyhow::Result<TrainConfig> {
        let config = self.config();
        config.validate(usize::MAX)?;
        if self.views == Some(0) {
            anyhow::bail!(
                "--views must be at least 1 (the number of fixed augmented views per image; leave it out for fresh transforms each epoch), got 0"
            );
        }
        if let Some(aug) = &config.augmentation {
            aug.validate().map_err(anyhow::Error::msg)?;
        }
        if let Some(fraction) = self.val_split {
            if !(fraction > 0.0 && fraction < 1.0) {
                anyhow::bail!("--val-split must be strictly between 0 and 1, got {fraction}");
            }
        }
        Ok(config)
    }

    fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            optimizer: OptimizerConfig {
                learning_rate: self.lr,
                weight_decay: self.weight_decay,
                cosine_schedule: self.cosine,
                warmup_fraction: self.warmup_fraction,
                ..OptimizerConfig::default()
            },
            label_smoothing: self.label_smoothing,
            augmentation: self.augment.then_some(Augmentation {
                crop_padding: 4,
                horizontal_flip: true,
                views: self.views,
                view_seed: 0,
                mixup: None,
            }),
        }
    }

    /// Trains `spec` with these options and prints the final line.
    fn fit(
        &self,
        spec: &crate::models::ModelSpec,
        dataset: &Dataset,
        train: &Split,
        eval: &Split,
        objective: Objective,
        device: &burn::tensor::Device,
    ) -> anyhow::Result<()> {
        let outcome = fit(
            TrainJob {
                spec,
                classes: &dataset.classes,
                train,
                eval,
                config: &self.config(),
                objective,
                out: &self.out,
                resume: self.resume,
                init_from: self.init_from.as_deref(),
                progress: !self.quiet,
                verbose: true,
            },
            device,
        )?;
        report_final(&self.out, outcome.history.last());
        Ok(())
    }

    /// Loads the dataset and returns (dataset, training split, evaluation split).
    fn load_data(&self) -> anyhow::Result<(Dataset, Split, Split)> {
        let spec: DataSpec = self.data.parse()?;
        let dataset = data::load(&spec)?;
        let mut train = dataset.train.clone();
        let eval = match self.val_split {
            Some(fraction) => train.split_off_validation(fraction, self.seed)?,
            None => dataset.test.clone(),
        };
        Ok((dataset, train, eval))
    }
}

/// `distill train`.
pub fn train(model: &str, args: &TrainArgs) -> anyhow::Result<()> {
    if super::text::is_text_data(&args.data) {
        return super::text::train(model, args);
    }
    // Settings first, so a typo fails before a large dataset is loaded.
    args.checked_config()?;
    let spec = resolve_spec(model)?;
    let device = args.backend.device()?;
    let (dataset, train, eval) = args.load_data()?;
    let spec = crate::models::sized_for(spec, model, dataset.classes.len());
    args.fit(&spec, &dataset, &train, &eval, Objective::Labels, &device)
}

/// Which distillation loss to use.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossKind {
    /// alpha * CE + (1 - alpha) * s * KL(softmax(t/T) || softmax(s/T)).
    Kd,
    /// alpha * CE + (1 - alpha) * MSE(student logits, teacher logits).
    Mse,
    /// Decoupled KD (Zhao et al. 2022): ce-weight * CE + warm-up * (dkd-alpha * TCKD + dkd-beta * NCKD).
    Dkd,
}

/// How an ONNX teacher reads our `[0, 1]` NCHW pixels.
#[derive(Debug, Args)]
pub struct TeacherImportArgs {
    /// Input layout of an ONNX teacher, when its declared shape fits both (default: detected
    /// from the shape against the data's C×H×W; Keras/tf2onnx exports are NHWC).
    #[arg(long, value_enum)]
    pub teacher_layout: Option<crate::onnx::Layout>,
    /// Per-channel normalisation an ONNX or PyTorch teacher was trained with, applied to our
    /// [0, 1] pixels: `mean=0.485,0.456,0.406,std=0.229,0.224,0.225`.
    #[arg(long)]
    pub teacher_normalize: Option<String>,
    /// Model spec (zoo name or spec .toml) of a PyTorch checkpoint (`.pth`/`.pt`/`.th`, e.g.
    /// `--spec resnet56`), or of a `.safetensors` model whose file carries none: weights
    /// trained elsewhere under the names `distill export` writes (`layers.<i>.weight`, ...).
    #[arg(long)]
    pub spec: Option<String>,
    /// Engine for an ONNX model: `auto` imports it natively (our kernels) when every node maps
    /// onto our layers and runs it on tract otherwise; `native` or `tract` force one.
    #[arg(long, value_enum, default_value_t)]
    pub onnx_engine: crate::onnx::EngineChoice,
}

impl TeacherImportArgs {
    /// Import options for data of C×H×W `shape` (`None`: take the model's own input shape).
    pub fn options(&self, shape: Option<[usize; 3]>) -> anyhow::Result<crate::onnx::ImportOptions> {
        let normalize = self
            .teacher_normalize
            .as_deref()
            .map(str::parse::<crate::onnx::Normalization>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--teacher-normalize: {e}"))?;
        Ok(crate::onnx::ImportOptions {
            expected_input: shape,
            layout: self.teacher_layout,
            normalize,
            spec: self.spec.clone(),
            engine: self.onnx_engine,
        })
    }
}

/// Options of `distill distill`.
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// Teacher: a checkpoint directory (the --out of a `distill train` run) or an ONNX
    /// classifier (`.onnx`, e.g. exported from PyTorch or Keras), imported natively or run on
    /// tract (see --onnx-engine).
    #[arg(long)]
    pub teacher: PathBuf,
    #[command(flatten)]
    pub teacher_import: TeacherImportArgs,
    /// Student: a zoo name or a spec .toml file.
    #[arg(long, default_value = "student")]
    pub student: String,
    /// Weight of the label cross-entropy, in [0, 1].
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Softening temperature (> 0).
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Do not multiply the KL term by T² (the reference notebook's choice).
    #[arg(long)]
    pub no_t2_scaling: bool,
    /// Distillation loss.
    #[arg(long, value_enum, default_value_t = LossKind::Kd)]
    pub loss: LossKind,
    /// DKD: weight of the label cross-entropy (>= 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub dkd_ce_weight: f64,
    /// DKD: weight of the target-class term TCKD (>= 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub dkd_alpha: f64,
    /// DKD: weight of the non-target-class term NCKD (>= 0).
    #[arg(long, default_value_t = 8.0, allow_negative_numbers = true)]
    pub dkd_beta: f64,
    /// DKD: epochs of linear warm-up of the DKD term (0: none).
    #[arg(long, default_value_t = 5)]
    pub dkd_warmup: usize,
    /// Run the teacher at every step instead of caching its logits (live with --augment unless
    /// --views is given).
    #[arg(long)]
    pub no_logit_cache: bool,
    /// Where teacher logits are cached on disk (default: $DISTILL_DATA/teacher-logits or
    /// ~/.cache/distill/teacher-logits).
    #[arg(long)]
    pub logit_cache: Option<PathBuf>,
    /// Read the teacher logits from this exact file (written there first if it does not exist);
    /// a file made by another teacher or for another training split is an error.
    #[arg(long, conflicts_with_all = ["logit_cache", "no_logit_cache"])]
    pub teacher_logits: Option<PathBuf>,
    /// Text: augmented copies per training text in Tang et al.'s transfer set (masking, random
    /// token swaps, n-gram sampling), labelled by the teacher; 0: none.
    #[arg(long, default_value_t = 0)]
    pub transfer_copies: usize,
    /// Text: weight of DistilBERT's cosine loss between the student's hidden states and the
    /// teacher's (mapped layers; the teacher runs live for it); 0: none.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub cosine_weight: f64,
    /// Text: seed of the transfer set (fixed by default, so paired seeds share one set and one
    /// teacher pass).
    #[arg(long, default_value_t = 0)]
    pub transfer_seed: u64,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Default directory of the on-disk teacher-logit cache.
pub fn default_logit_cache() -> anyhow::Result<PathBuf> {
    Ok(crate::data::download::cache_dir()?.join("teacher-logits"))
}

impl DistillArgs {
    /// Where this run's teacher logits live (`cache_dir` holds the default directory's path).
    pub(super) fn logit_source<'a>(
        &'a self,
        cache_dir: &'a mut PathBuf,
    ) -> anyhow::Result<LogitSource<'a>> {
        Ok(if self.no_logit_cache {
            LogitSource::Live
        } else if let Some(file) = &self.teacher_logits {
            LogitSource::Cache(CacheLocation::File(file))
        } else {
            *cache_dir = match &self.logit_cache {
                Some(dir) => dir.clone(),
                None => default_logit_cache()?,
            };
            LogitSource::Cache(CacheLocation::Dir(cache_dir))
        })
    }
}

/// `distill distill`.
pub fn distill(args: &DistillArgs) -> anyhow::Result<()> {
    let loss = match args.loss {
        LossKind::Kd => DistillLoss::Kd {
            alpha: args.alpha,
            temperature: args.temperature,
            t2_scaling: !args.no_t2_scaling,
        },
        LossKind::Mse => DistillLoss::Mse { alpha: args.alpha },
        LossKind::Dkd => DistillLoss::Dkd {
            ce_weight: args.dkd_ce_weight,
            alpha: args.dkd_alpha,
            beta: args.dkd_beta,
            temperature: args.temperature,
            warmup_epochs: args.dkd_warmup,
        },
    };
    loss.validate().map_err(anyhow::Error::msg)?;
    if super::text::is_text_data(&args.train.data) {
        return super::text::distill(args, loss);
    }
    if args.transfer_copies > 0 || args.cosine_weight != 0.0 {
        anyhow::bail!("--transfer-copies and --cosine-weight apply to text datasets");
    }
    let config = args.train.checked_config()?;
    let spec = resolve_spec(&args.student)?;
    let device = args.train.backend.device()?;
    let (dataset, train, eval) = args.train.load_data()?;
    let spec = crate::models::sized_for(spec, &args.student, dataset.classes.len());
    let teacher = Teacher::load_with(
        &args.teacher,
        &args.teacher_import.options(Some(dataset.shape))?,
        &device,
    )?;
    teacher
        .check_fits(dataset.shape, dataset.classes.len())
        .with_context(|| {
            format!(
                "teacher {} and data `{}`",
                args.teacher.display(),
                args.train.data
            )
        })?;
    if let Some(note) = &teacher.note {
        println!("{note}");
    }
    if let Some(dir) = &args.train.init_from {
        // before the teacher runs over the data: a bad --init-from should not wait for the cache
        let network = crate::models::Network::init(&spec, dataset.shape, 0, &device)?;
        checkpoint::load_for_warm_start(dir, &spec, dataset.shape, dataset.classes.len(), network)?;
    }
    let mut cache_dir = PathBuf::new();
    let source = args.logit_source(&mut cache_dir)?;
    let logits = teacher_logits(
        teacher,
        &train,
        config.augmentation.as_ref(),
        source,
        &device,
        !args.train.quiet,
    )?;
    args.train.fit(
        &spec,
        &dataset,
        &train,
        &eval,
        Objective::Distill {
            loss,
            teacher: &logits,
            hidden: None,
        },
        &device,
    )
}

pub(super) fn report_final(out: &Path, last: Option<&crate::train::EpochRecord>) {
    if let Some(last) = last.filter(|_| crate::distributed::is_root()) {
        println!(
            "Final val_accuracy {:.4} (val_loss {:.4}); model saved in {}",
            last.val_accuracy,
            last.val_loss,
            out.display()
        );
    }
}

/// `distill eval`: test accuracy and cross-entropy of a checkpoint or an ONNX classifier.
pub fn eval(
    model: &Path,
    data_spec: &str,
    import: &TeacherImportArgs,
    json: bool,
    speed: bool,
    backend: Backend,
) -> anyhow::Result<()> {
    let device = backend.device()?;
    if super::text::is_text_data(data_spec) {
        return super::text::eval(model, data_spec, json, speed, &device);
    }
    let spec: DataSpec = data_spec.parse()?;
    let dataset = data::load(&spec)?;
    let loaded =
        crate::classifier::load_classifier(model, &import.options(Some(dataset.shape))?, &device)?;
    if loaded.input != dataset.shape {
        anyhow::bail!(
            "the model in {} takes {:?} images but {data_spec} has {:?}",
            model.display(),
            loaded.input,
            dataset.shape
        );
    }
    if loaded.outputs != dataset.classes.len() {
        anyhow::bail!(
            "the model in {} predicts {} classes but {data_spec} has {}",
            model.display(),
            loaded.outputs,
            dataset.classes.len()
        );
    }
    if let Some(note) = loaded.onnx_note(model) {
        eprintln!("{note}");
    }
    let (loss, accuracy) = loaded.evaluate(&dataset.test, &device, 256)?;
    let timed = if speed {
        let engine = loaded.engine.valid();
        Some(crate::bench::measure_speed_of(
            |images| engine.forward(images),
            loaded.input,
            &device,
        )?)
    } else {
        None
    };
    if json {
        let mut out =
            serde_json::json!({"accuracy": accuracy, "loss": loss, "samples": dataset.test.len()});
        if let Some(timed) = &timed {
            out["latency_ms"] = timed.latency_ms.into();
            out["throughput_ips"] = timed.throughput_ips.into();
            out["threads"] = rayon::current_num_threads().into();
        }
        println!("{out}");
    } else {
        println!(
            "{}: test accuracy {:.4}, loss {:.4} on {} images of {data_spec}",
            model.display(),
            accuracy,
            loss,
            dataset.test.len()
        );
        if let Some(timed) = &timed {
            println!(
                "inference on {} thread(s): {:.0} images/s at batch 256, {:.2} ms per single image",
                rayon::current_num_threads(),
                timed.throughput_ips,
                timed.latency_ms
            );
        }
    }
    Ok(())
}
