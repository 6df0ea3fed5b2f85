//! `distill run` on a text dataset: the study of [`super::run`] with text models. The teacher is
//! a pretrained encoder fine-tuned here (`[teacher]`) or a text model trained earlier
//! (`teacher = "DIR"`); the students are a text spec (`student.model = "configs/text/….toml"`)
//! over the teacher's tokenizer, trained on labels and distilled for every grid point and seed
//! from the teacher's cached logits, on the training texts plus an optional transfer set
//! (`text.transfer_copies`) and with an optional hidden-state cosine term
//! (`text.cosine_weight`). The directory layout, resuming and the report are the image study's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::Device;

use super::{
    execute, plan, ArmKind, ArmRuns, ArmTrainer, ExperimentConfig, GridPoint, PlannedArm,
    RunOptions, RunPlan, Shard, TeacherSetting, TextStudyConfig,
};
use crate::bench::measure_text_speed;
use crate::data::text::{load_text, TextDataset, TextExample};
use crate::data::tokenizer::{TextTokenizer, TokenBatch};
use crate::data::{download, DataInfo};
use crate::distill::{CacheLocation, TeacherLogits};
use crate::losses::HiddenTerm;
use crate::modality::text::{
    load_text_model, prepare_text_teaching, BaseModel, Text, TextArchitecture, TextTeaching,
    TokenizedSplit,
};
use crate::modality::SoftTargets;
use crate::models::bert::{BertConfig, CONFIG_FILE, TOKENIZER_FILE};
use crate::models::text::TextModelSpec;
use crate::report::{DistilledInput, ModelResult, Report, ReportInputs};
use crate::train::{evaluate_model, fit_model, EpochRecord, ModelJob, Objective, TrainConfig};

/// A pretrained encoder named in `[teacher] model`: a directory, or the name of one in the
/// data cache (where `scripts/fetch-text-data.sh` puts `all-MiniLM-L6-v2`).
fn resolve_pretrained(model: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.join(CONFIG_FILE).is_file() {
        return Ok(path);
    }
    let cached = download::cache_dir()?.join(model);
    if cached.join(CONFIG_FILE).is_file() {
        return Ok(cached);
    }
    bail!(
        "`teacher.model` `{model}`: expected a pretrained text encoder directory holding {CONFIG_FILE}, model.safetensors and {TOKENIZER_FILE}, or the name of one in the data cache ({}; scripts/fetch-text-data.sh puts all-MiniLM-L6-v2 there)",
        cached.display()
    )
}

/// Trains (or resumes) one text run.
fn fit_text<T: SoftTargets<TokenBatch>>(
    architecture: TextArchitecture<'_>,
    (train, eval): (&TokenizedSplit, &TokenizedSplit),
    config: &TrainConfig,
    objective: Objective<'_, T>,
    out: &Path,
    options: &RunOptions,
) -> anyhow::Result<Vec<EpochRecord>> {
    let outcome = fit_model(
        ModelJob {
            architecture,
            train,
            eval,
            config,
            objective,
            out,
            resume: true,
            init_from: None,
            progress: options.progress,
            verbose: true,
        },
        &options.device,
    )?;
    Ok(outcome.history)
}

/// Test accuracy and loss of each run directory (a trained text model each).
fn eval_result(
    name: &str,
    dirs: &[PathBuf],
    histories: Vec<Vec<EpochRecord>>,
    test: &TokenizedSplit,
    device: &Device,
) -> anyhow::Result<ModelResult> {
    let mut accuracies = Vec::new();
    let mut losses = Vec::new();
    let mut params = 0;
    for dir in dirs {
        let (model, meta) = load_text_model(dir, device)
            .with_context(|| format!("cannot load the text model in {}", dir.display()))?;
        let (loss, accuracy) = evaluate_model::<Text>(&model, test, device, 64);
        accuracies.push(accuracy);
        losses.push(loss);
        params = meta.params;
    }
    Ok(ModelResult::new(
        name,
        accuracies,
        losses,
        params,
        params * std::mem::size_of::<f32>(),
        histories,
    ))
}

/// Inference speed of the text model saved in `dir` on the test texts.
fn speed_of(
    dir: &Path,
    test: &TokenizedSplit,
    device: &Device,
) -> anyhow::Result<crate::bench::Speed> {
    let (model, _) = load_text_model(dir, device)?;
    Ok(measure_text_speed(&model, test, device))
}

/// Runs (or resumes) a text study; `started` is when the invocation began. With a `shard`, only
/// that shard's student runs train, and no report is made (`None`).
pub(super) fn run(
    config: &ExperimentConfig,
    options: &RunOptions,
    started: Instant,
    shard: Option<Shard>,
) -> anyhow::Result<Option<Report>> {
    let settings = config.text.clone().unwrap_or_default();
    let out = &options.out;
    let device = &options.device;
    let mut dataset = load_text(&config.data.parse()?)?;
    let eval_examples = match config.training.val_split {
        Some(fraction) => dataset.split_off_validation(fraction, config.training.seed)?,
        None => dataset.test.clone(),
    };

    // The student's spec is checked against the encoder to fine-tune before hours of teacher
    // training (against a trained teacher, once it is loaded).
    let spec =
        TextModelSpec::from_file(Path::new(&config.student.model)).context("`student.model`")?;
    if let TeacherSetting::Train(teacher) = &config.teacher {
        let encoder =
            BertConfig::from_file(&resolve_pretrained(&teacher.model)?.join(CONFIG_FILE))?;
        spec.encoder_config(Some(&encoder))
            .context("`student.model`")?;
    }

    let teacher_dir =
        fine_tune_or_load_teacher(config, &settings, &dataset, &eval_examples, options)?;
    let base = BaseModel::load(&teacher_dir, "`teacher`", device)?;
    let Some((teacher, meta)) = &base.classifier else {
        bail!(
            "`teacher` {}: a pretrained encoder without a trained head; give a `[teacher]` table (`model = \"{}\"`) to fine-tune it first",
            teacher_dir.display(),
            teacher_dir.display()
        );
    };
    if meta.classes != dataset.classes {
        bail!(
            "`teacher` {} was trained on classes [{}] but data `{}` has [{}]",
            teacher_dir.display(),
            meta.classes.join(", "),
            config.data,
            dataset.classes.join(", ")
        );
    }
    let teacher_history = super::read_history(&teacher_dir);

    // Students read the teacher's token ids.
    let tokenizer = TextTokenizer::from_file(&base.tokenizer, settings.max_len)?;
    let train = TokenizedSplit::new(&dataset.train, &tokenizer)?;
    let eval = TokenizedSplit::new(&eval_examples, &tokenizer)?;
    let test = TokenizedSplit::new(&dataset.test, &tokenizer)?;
    if config.training.batch_size > train.len() {
        bail!(
            "`training.batch_size` {} is larger than the training split ({} texts of `{}`)",
            config.training.batch_size,
            train.len(),
            config.data
        );
    }
    let architecture = TextArchitecture {
        spec: &spec,
        classes: &dataset.classes,
        teacher: Some((&base.bert, &base.config)),
        tokenizer: &base.tokenizer,
        freeze_word_embeddings: settings.freeze_student_word_embeddings,
        max_len: settings.max_len,
    };
    crate::modality::Architecture::check(&architecture).context("`student.model`")?;

    // The teacher labels the training texts (and the transfer set) once, for every point and
    // seed, before any student trains (so parallel workers find the cache ready).
    let teacher_id = crate::models::checkpoint::weights_hash(&teacher_dir)?;
    let cache_dir = out.join("teacher-logits");
    let teaching = prepare_text_teaching(
        teacher,
        &teacher_id,
        &tokenizer,
        train.clone(),
        &config.transfer_config(),
        CacheLocation::Dir(&cache_dir),
        device,
        options.progress,
    )?;
    let transfer = (teaching.train.len() > teaching.labelled).then(|| {
        format!(
            "{} texts the teacher labelled ({} augmented copies per training text, duplicates dropped)",
            teaching.train.len() - teaching.labelled,
            settings.transfer_copies
        )
    });
    println!(
        "== teacher agrees with {:.1}% of the {} training labels{}",
        100.0 * teaching.agreement,
        teaching.labelled,
        transfer
            .as_ref()
            .map(|t| format!("; transfer set: {t}"))
            .unwrap_or_default()
    );
    if shard.is_none() {
        if let Some(start_workers) = &options.before_students {
            start_workers()?;
        }
    }
    let plan_runs = RunPlan::new(shard);
    let mut trainer = TextTrainer {
        config,
        architecture,
        train: &train,
        teaching: &teaching,
        eval: &eval,
        hidden: (settings.cosine_weight != 0.0).then_some(HiddenTerm {
            weight: settings.cosine_weight,
        }),
        options,
    };
    let mut scratch = None;
    let mut distilled = Vec::new();
    for trained in execute(plan(config), out, &plan_runs, &mut trainer)? {
        match trained.arm.kind {
            ArmKind::Scratch => scratch = Some(trained.runs),
            ArmKind::Sweep(point) => distilled.push((point, trained.runs)),
            ArmKind::Method(_) => unreachable!("validated: no [[method]] in a text study"),
        }
    }
    let scratch = scratch.expect("every plan starts with the scratch arm");
    if shard.is_some() {
        return Ok(None);
    }

    render(
        config,
        options,
        TextResults {
            dataset: &dataset,
            spec: &spec,
            teacher_dir: &teacher_dir,
            teacher_history,
            test: &test,
            scratch,
            distilled,
            transfer,
        },
        started,
    )
    .map(Some)
}

/// How a text study trains each arm's runs: scratch on the training texts and labels, sweep
/// points on the teacher-labelled texts (with the transfer set) and the teacher's logits.
struct TextTrainer<'a> {
    config: &'a ExperimentConfig,
    architecture: TextArchitecture<'a>,
    train: &'a TokenizedSplit,
    teaching: &'a TextTeaching,
    eval: &'a TokenizedSplit,
    hidden: Option<HiddenTerm>,
    options: &'a RunOptions,
}

impl ArmTrainer for TextTrainer<'_> {
    fn scratch_name(&self) -> String {
        self.config.student.model.clone()
    }

    fn train(
        &mut self,
        arm: &PlannedArm,
        seed: u64,
        dir: &Path,
    ) -> anyhow::Result<Vec<EpochRecord>> {
        let train_config = self.config.train_config(arm.epochs, seed);
        match &arm.kind {
            ArmKind::Scratch => fit_text(
                self.architecture,
                (self.train, self.eval),
                &train_config,
                Objective::<TeacherLogits>::Labels,
                dir,
                self.options,
            ),
            ArmKind::Sweep(point) => fit_text(
                self.architecture,
                (&self.teaching.train, self.eval),
                &train_config,
                Objective::Distill {
                    loss: point.loss,
                    teacher: &self.teaching.teacher,
                    hidden: self.hidden,
                },
                dir,
                self.options,
            ),
            ArmKind::Method(_) => anyhow::bail!("[[method]] arms apply to image studies"),
        }
    }
}

/// The teacher's directory: a trained text model given as `teacher = "DIR"`, or a pretrained
/// encoder fine-tuned here on the training texts (`[teacher]`, resumable).
fn fine_tune_or_load_teacher(
    config: &ExperimentConfig,
    settings: &TextStudyConfig,
    dataset: &TextDataset,
    eval_examples: &[TextExample],
    options: &RunOptions,
) -> anyhow::Result<PathBuf> {
    let out = &options.out;
    Ok(match &config.teacher {
        TeacherSetting::Checkpoint(dir) => dir.clone(),
        TeacherSetting::Train(teacher) => {
            let pretrained = resolve_pretrained(&teacher.model)?;
            let teacher_spec = TextModelSpec::Pretrained {
                dir: pretrained.clone(),
            };
            let tokenizer_path = pretrained.join(TOKENIZER_FILE);
            let tokenizer = TextTokenizer::from_file(&tokenizer_path, settings.max_len)?;
            let train = TokenizedSplit::new(&dataset.train, &tokenizer)?;
            let eval = TokenizedSplit::new(eval_examples, &tokenizer)?;
            let dir = out.join("teacher");
            println!("== teacher `{}` ({} epochs)", teacher.model, teacher.epochs);
            fit_text(
                TextArchitecture {
                    spec: &teacher_spec,
                    classes: &dataset.classes,
                    teacher: None,
                    tokenizer: &tokenizer_path,
                    freeze_word_embeddings: settings.freeze_teacher_word_embeddings,
                    max_len: settings.max_len,
                },
                (&train, &eval),
                &config.teacher_train_config(teacher),
                Objective::<TeacherLogits>::Labels,
                &dir,
                options,
            )?;
            dir
        }
    })
}

/// What a text study trained and what its report needs.
struct TextResults<'a> {
    dataset: &'a TextDataset,
    spec: &'a TextModelSpec,
    teacher_dir: &'a Path,
    teacher_history: Vec<EpochRecord>,
    test: &'a TokenizedSplit,
    scratch: ArmRuns,
    distilled: Vec<(GridPoint, ArmRuns)>,
    transfer: Option<String>,
}

/// Evaluates every run once on the test split, times teacher and student, writes the report.
fn render(
    config: &ExperimentConfig,
    options: &RunOptions,
    results: TextResults,
    started: Instant,
) -> anyhow::Result<Report> {
    let TextResults {
        dataset,
        spec,
        teacher_dir,
        teacher_history,
        test,
        scratch,
        distilled,
        transfer,
    } = results;
    let settings = config.text.clone().unwrap_or_default();
    let device = &options.device;
    // Evaluation on the test split (once, after every choice is made), speed, report.
    println!("== evaluating on the test split and timing inference");
    let teacher_result = eval_result(
        "teacher",
        std::slice::from_ref(&teacher_dir.to_path_buf()),
        vec![teacher_history],
        test,
        device,
    )?
    .with_speed(speed_of(teacher_dir, test, device)?);
    let student_speed = speed_of(&scratch.dirs[0], test, device)?;
    let scratch_result = eval_result("scratch", &scratch.dirs, scratch.histories, test, device)?
        .with_speed(student_speed);
    let mut distilled_inputs = Vec::new();
    for (point, runs) in distilled {
        let result = eval_result(&point.dir_name(), &runs.dirs, runs.histories, test, device)?
            .with_speed(student_speed);
        distilled_inputs.push(DistilledInput {
            loss: point.loss,
            label: point.label(),
            result,
            control: None,
        });
    }
    let report = Report::build(ReportInputs {
        dataset: DataInfo {
            name: dataset.name.clone(),
            train: dataset.train.len(),
            test: dataset.test.len(),
            classes: dataset.classes.clone(),
            shape: None,
            max_tokens: Some(settings.max_len),
        },
        backend: options.backend.clone(),
        seeds: config.seeds,
        student_epochs: config.student.epochs,
        distilled_epochs: config.distinct_distilled_epochs(),
        transfer,
        selection: config.selection(),
        teacher: teacher_result,
        scratch: scratch_result,
        scratch_label: match spec {
            TextModelSpec::Transformer {
                teacher_layers: Some(_),
                ..
            } => "student on labels alone (from the teacher's layers)".into(),
            _ => "student from scratch".into(),
        },
        distilled: distilled_inputs,
        methods: Vec::new(),
        chain: None,
        cache_build_seconds: None,
        augmentation: None,
        wall_seconds: started.elapsed().as_secs_f64(),
    });
    report.write(&options.out)?;
    Ok(report)
}
