//! `distill run` on an image dataset, in three steps: [`prepare`] (data, splits, the teacher
//! loaded or trained, its logit cache and the feature methods' reads), the executor over the
//! [plan](super::plan) with an [`ImageTrainer`] (a chain trains its own way), and [`render`]
//! (every run evaluated once on the test split, the speed measured, the report written).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use super::{
    eval_result, execute, plan, preflight, read_cache_build_seconds, read_history, seeds,
    stage_seed, teacher_logits, ArmKind, ArmRuns, ArmTrainer, ExperimentConfig, GridPoint,
    MethodArm, PlannedArm, RunOptions, RunPlan, Runner, Shard, TeacherSetting, TrainedArm,
};
use crate::bench::{measure_speed, measure_speed_of};
use crate::data::{self, DataSpec, Dataset, Split};
use crate::distill::{Teacher, TeacherLogits};
use crate::methods::{FeatureMethod, TeacherFeatures};
use crate::models::{checkpoint, ModelSpec};
use crate::onnx::ImportOptions;
use crate::report::{ChainStage, DistilledInput, MethodInput, ModelResult, Report, ReportInputs};
use crate::train::{EpochRecord, Objective};

/// An image study ready to train its students.
struct Prepared {
    config: ExperimentConfig,
    dataset: Dataset,
    train: Split,
    eval: Split,
    student_spec: ModelSpec,
    scratch_spec: ModelSpec,
    teacher_dir: PathBuf,
    teacher_history: Vec<EpochRecord>,
    import_options: ImportOptions,
    logits: TeacherLogits,
    cache_build_seconds: Option<f64>,
}

/// The image study: prepare, train this process's runs, and (without a shard) render.
pub(super) fn run(
    config: &ExperimentConfig,
    options: &RunOptions,
    started: Instant,
    shard: Option<Shard>,
) -> anyhow::Result<Option<Report>> {
    let (study, method_features) = prepare(config, options)?;
    if shard.is_none() {
        if let Some(start_workers) = &options.before_students {
            start_workers()?;
        }
    }
    let trained = train(&study, method_features, options, shard)?;
    if shard.is_some() {
        return Ok(None);
    }
    render(&study.config, options, &study, trained, started).map(Some)
}

/// Loads the data and carves the validation split, checks the students against it, loads (or
/// trains) the teacher, resolves every feature method's taps and builds the teacher-logit cache,
/// all before any student trains (so parallel workers find the caches ready).
fn prepare(
    config: &ExperimentConfig,
    options: &RunOptions,
) -> anyhow::Result<(Prepared, Vec<Option<TeacherFeatures>>)> {
    let out = &options.out;
    let config = config.with_embedded_teacher_in(out)?;
    let device = &options.device;
    let (student_spec, scratch_spec) = config.student.specs()?;
    let spec: DataSpec = config.data.parse()?;
    let dataset: Dataset = data::load(&spec)?;
    let classes = dataset.classes.len();
    let student_spec = crate::models::sized_for(student_spec, &config.student.model, classes);
    let scratch_spec = crate::models::sized_for(scratch_spec, &config.student.model, classes);
    let mut train = dataset.train.clone();
    let eval = match config.training.val_split {
        Some(fraction) => train.split_off_validation(fraction, config.training.seed)?,
        None => dataset.test.clone(),
    };
    preflight(&config, &dataset, &train, &student_spec)?;

    let import_options = config.teacher_import_options(Some(dataset.shape))?;
    let teacher_dir = match &config.teacher {
        TeacherSetting::Checkpoint(path) => path.clone(),
        TeacherSetting::Train(teacher) => {
            let spec = crate::models::resolve_spec_for(&teacher.model, classes)?;
            let dir = out.join("teacher");
            println!("== teacher `{}` ({} epochs)", spec.name, teacher.epochs);
            let runner = Runner {
                classes: &dataset.classes,
                train: &train,
                eval: &eval,
                progress: options.progress,
                device,
            };
            runner.fit(
                &spec,
                &config.teacher_train_config(teacher),
                Objective::Labels,
                &dir,
                None,
            )?;
            dir
        }
    };
    let teacher = Teacher::load_with(&teacher_dir, &import_options, device)?;
    teacher
        .check_fits(dataset.shape, classes)
        .with_context(|| {
            format!(
                "teacher {} and data `{}`",
                teacher_dir.display(),
                config.data
            )
        })?;
    let teacher_history = read_history(&teacher_dir);
    let method_features = method_features(&config, &teacher, &student_spec, &train)?;
    if let Some(note) = &teacher.note {
        println!("{note}");
    }
    let logits = teacher_logits(&config, teacher, &train, out, device, options.progress)?;
    let cache_build_seconds = match &logits {
        TeacherLogits::Views(cache) => cache.build_seconds,
        _ => None,
    };
    // written when the cache is built, read back by a resumed run that finds it on disk
    if let Some(seconds) = cache_build_seconds.filter(|_| crate::distributed::is_root()) {
        let _ = std::fs::write(
            out.join("teacher-logits").join("build-seconds.txt"),
            format!("{seconds:.3}\n"),
        );
    }
    let cache_build_seconds = cache_build_seconds.or_else(|| read_cache_build_seconds(out));
    Ok((
        Prepared {
            config,
            dataset,
            train,
            eval,
            student_spec,
            scratch_spec,
            teacher_dir,
            teacher_history,
            import_options,
            logits,
            cache_build_seconds,
        },
        method_features,
    ))
}

/// The teacher's side of every `[[method]]` with a feature method (`None` for the others),
/// resolved now so that a tap that does not exist, taps that cannot be compared or a teacher on
/// tract stop the study before any student trains.
fn method_features(
    config: &ExperimentConfig,
    teacher: &Teacher,
    student_spec: &ModelSpec,
    train: &Split,
) -> anyhow::Result<Vec<Option<TeacherFeatures>>> {
    config
        .methods
        .iter()
        .map(|arm| {
            arm.features
                .as_ref()
                .map(|method| {
                    let features = TeacherFeatures::new(teacher, &method.teacher_taps())?;
                    check_method(method, &features, student_spec, train, config.training.seed)?;
                    anyhow::Ok(features)
                })
                .transpose()
                .with_context(|| format!("[[method]] `{}`", arm.name()))
        })
        .collect()
}

/// Checks a feature method against the student before anything trains: its taps exist, their
/// shapes fit the teacher's (a regressor or attention map can be built), and CRD's bank fits the
/// training split.
fn check_method(
    method: &FeatureMethod,
    teacher: &TeacherFeatures,
    student_spec: &ModelSpec,
    train: &Split,
    seed: u64,
) -> anyhow::Result<()> {
    let student = method.pick_student_taps(
        &crate::models::taps::taps(student_spec, train.shape)?,
        &format!("the student `{}`", student_spec.name),
    )?;
    let labels = train.labels.iter().map(|&l| l as usize).collect();
    // probe on a plain device: only the shapes and settings are checked
    let device = burn::tensor::Device::default();
    method.prepare(&student, teacher.taps(), labels, seed, &device)?;
    Ok(())
}

/// Trains this process's runs: the planned arms through the executor, or with `sweep.chain` the
/// scratch arm and then the chain.
fn train(
    study: &Prepared,
    method_features: Vec<Option<TeacherFeatures>>,
    options: &RunOptions,
    shard: Option<Shard>,
) -> anyhow::Result<TrainedStudy> {
    let config = &study.config;
    let out = &options.out;
    let runner = Runner {
        classes: &study.dataset.classes,
        train: &study.train,
        eval: &study.eval,
        progress: options.progress,
        device: &options.device,
    };
    let plan_runs = RunPlan::new(shard);
    let mut trainer = ImageTrainer {
        config,
        runner: &runner,
        scratch_spec: &study.scratch_spec,
        student_spec: &study.student_spec,
        logits: &study.logits,
        features: config
            .methods
            .iter()
            .map(MethodArm::name)
            .zip(method_features)
            .filter_map(|(name, f)| Some((name, f?)))
            .collect(),
        train: &study.train,
        init_from: config.student.init_from.as_deref(),
        progress: options.progress,
    };
    let arms = plan(config);
    // A chain's stages depend on each other: it trains its own way after the scratch arm.
    let arms = if config.sweep.chain {
        arms.into_iter().take(1).collect()
    } else {
        arms
    };
    let mut scratch = None;
    let mut distilled = Vec::new();
    let mut methods = Vec::new();
    for trained in execute(arms, out, &plan_runs, &mut trainer)? {
        match trained.arm.kind {
            ArmKind::Scratch => scratch = Some(trained.runs),
            ArmKind::Sweep(point) => distilled.push((point, trained.runs)),
            ArmKind::Method(_) => methods.push(trained),
        }
    }
    let scratch = scratch.expect("every plan starts with the scratch arm");
    let mut scratch_chain = Vec::new();
    if config.sweep.chain {
        (distilled, scratch_chain) = train_chain(
            config,
            &runner,
            (&study.student_spec, &study.scratch_spec),
            &study.logits,
            &scratch,
            out,
            &plan_runs,
        )?;
    }
    Ok(TrainedStudy {
        scratch,
        distilled,
        scratch_chain,
        methods,
    })
}

/// The chain of `sweep.chain`: stage k of each seed's student starts from stage k-1's weights
/// with a fresh optimizer, beside the scratch student chained as often on labels alone. Its
/// stages depend on each other, so a `--jobs` worker owns whole seeds. Returns each stage's
/// distilled runs and its labels-only control.
fn train_chain(
    config: &ExperimentConfig,
    runner: &Runner,
    specs: (&ModelSpec, &ModelSpec),
    logits: &TeacherLogits,
    scratch: &ArmRuns,
    out: &Path,
    plan_runs: &RunPlan,
) -> anyhow::Result<(SweepRuns, Vec<ArmRuns>)> {
    let (student_spec, scratch_spec) = specs;
    let init_from = config.student.init_from.as_deref();
    let grid = config.grid();
    let mut distilled = Vec::new();
    let mut scratch_chain: Vec<ArmRuns> = Vec::new();
    // Stage k of each chain starts from stage k-1's weights with a fresh optimizer.
    let mut previous_distilled: Vec<Option<PathBuf>> = seeds(config)
        .iter()
        .map(|_| init_from.map(Path::to_path_buf))
        .collect();
    // (by path, not from `scratch.dirs`: a worker's arm holds only its own seeds)
    let mut previous_scratch: Vec<PathBuf> = seeds(config)
        .iter()
        .map(|seed| out.join("scratch").join(format!("seed-{seed}")))
        .collect();
    for (stage, point) in grid.iter().enumerate() {
        let mut runs = ArmRuns::default();
        for (k, seed) in seeds(config).into_iter().enumerate() {
            // a chain's stages depend on each other: a worker owns whole seeds
            if !plan_runs.owns(k) {
                continue;
            }
            let dir = out
                .join("distilled-chain")
                .join(format!("stage-{}-{}", stage + 1, point.dir_name()))
                .join(format!("seed-{seed}"));
            println!(
                "== chain stage {}: {}, seed {seed}",
                stage + 1,
                point.label()
            );
            let outcome = runner.fit(
                student_spec,
                &config.train_config(config.student.epochs, stage_seed(seed, stage)),
                Objective::Distill {
                    loss: point.loss,
                    teacher: logits,
                    hidden: None,
                },
                &dir,
                previous_distilled[k].as_deref(),
            )?;
            previous_distilled[k] = Some(dir.clone());
            runs.histories.push(outcome.history);
            runs.dirs.push(dir);
        }
        distilled.push((*point, runs));
        if stage == 0 {
            scratch_chain.push(ArmRuns {
                dirs: scratch.dirs.clone(),
                histories: scratch.histories.clone(),
            });
            continue;
        }
        let mut control = ArmRuns::default();
        for (k, seed) in seeds(config).into_iter().enumerate() {
            if !plan_runs.owns(k) {
                continue;
            }
            let dir = out
                .join("scratch-chain")
                .join(format!("stage-{}", stage + 1))
                .join(format!("seed-{seed}"));
            println!(
                "== chain stage {}: labels only (control), seed {seed}",
                stage + 1
            );
            let outcome = runner.fit(
                scratch_spec,
                &config.train_config(config.student.epochs, stage_seed(seed, stage)),
                Objective::Labels,
                &dir,
                Some(&previous_scratch[k]),
            )?;
            previous_scratch[k] = dir.clone();
            control.histories.push(outcome.history);
            control.dirs.push(dir);
        }
        scratch_chain.push(control);
    }
    Ok((distilled, scratch_chain))
}

/// The runs of each sweep point (each chain stage), in grid order.
type SweepRuns = Vec<(GridPoint, ArmRuns)>;

/// What an image study trained, by arm, for the report.
struct TrainedStudy {
    scratch: ArmRuns,
    distilled: SweepRuns,
    /// A chain's labels-only control per stage (empty without `sweep.chain`).
    scratch_chain: Vec<ArmRuns>,
    methods: Vec<TrainedArm>,
}

/// Evaluates every trained run once on the test split, times teacher and student, and writes
/// the report (which only renders what it is given).
fn render(
    config: &ExperimentConfig,
    options: &RunOptions,
    study: &Prepared,
    trained: TrainedStudy,
    started: Instant,
) -> anyhow::Result<Report> {
    let Prepared {
        dataset,
        teacher_dir,
        teacher_history,
        import_options,
        cache_build_seconds,
        ..
    } = study;
    let TrainedStudy {
        scratch,
        distilled,
        scratch_chain,
        methods,
    } = trained;
    let device = &options.device;
    // Evaluation on the test split (once, after every choice is made), speed, report.
    println!("== evaluating on the test split and timing inference");
    let test = &dataset.test;
    let teacher_result = eval_result(
        "teacher",
        std::slice::from_ref(teacher_dir),
        import_options,
        vec![teacher_history.clone()],
        test,
        device,
    )?;
    let scratch_result = eval_result(
        "scratch",
        &scratch.dirs,
        &ImportOptions::default(),
        scratch.histories,
        test,
        device,
    )?;
    let mut chain_controls = Vec::new();
    for (stage, runs) in scratch_chain.into_iter().enumerate() {
        chain_controls.push(eval_result(
            &format!("scratch-chain-stage-{}", stage + 1),
            &runs.dirs,
            &ImportOptions::default(),
            runs.histories,
            test,
            device,
        )?);
    }
    let mut distilled_inputs = Vec::new();
    for (stage, (point, runs)) in distilled.into_iter().enumerate() {
        let name = if config.sweep.chain {
            format!("stage-{}-{}", stage + 1, point.dir_name())
        } else {
            point.dir_name()
        };
        let result = eval_result(
            &name,
            &runs.dirs,
            &ImportOptions::default(),
            runs.histories,
            test,
            device,
        )?;
        distilled_inputs.push(DistilledInput {
            loss: point.loss,
            label: point.label(),
            result,
            control: chain_controls.get(stage).cloned(),
        });
    }
    let mut method_inputs = Vec::new();
    for TrainedArm { arm, runs } in methods {
        let result = eval_result(
            &arm.name,
            &runs.dirs,
            &ImportOptions::default(),
            runs.histories,
            test,
            device,
        )?;
        method_inputs.push(MethodInput {
            label: arm.label,
            result,
        });
    }
    let teacher_classifier =
        crate::classifier::load_classifier(teacher_dir, import_options, device)?;
    let teacher_engine = teacher_classifier.engine.valid();
    let teacher_speed = measure_speed_of(|x| teacher_engine.forward(x), dataset.shape, device)?;
    let student_speed = measure_speed(
        &checkpoint::load(&scratch.dirs[0], device)?.network,
        dataset.shape,
        device,
    );
    let chain = config.sweep.chain.then(|| {
        distilled_inputs
            .iter()
            .enumerate()
            .map(|(stage, d)| ChainStage {
                stage: stage + 1,
                label: d.label.clone(),
                epochs_so_far: (stage + 1) * config.student.epochs,
                distilled: d.result.summary(),
                labels_only: d.control.as_ref().map(ModelResult::summary),
            })
            .collect()
    });
    let report = Report::build(ReportInputs {
        dataset: dataset.info(),
        backend: options.backend.clone(),
        seeds: config.seeds,
        student_epochs: config.student.epochs,
        distilled_epochs: config.distinct_distilled_epochs(),
        transfer: None,
        selection: config.selection(),
        teacher: teacher_result.with_speed(teacher_speed),
        scratch: scratch_result.with_speed(student_speed),
        scratch_label: if config.student.init_from.is_some() {
            "student on labels alone (warm-started)".into()
        } else {
            "student from scratch".into()
        },
        distilled: distilled_inputs
            .into_iter()
            .map(|mut d| {
                d.result = d.result.with_speed(student_speed);
                d
            })
            .collect(),
        methods: method_inputs
            .into_iter()
            .map(|mut m| {
                m.result = m.result.with_speed(student_speed);
                m
            })
            .collect(),
        chain,
        cache_build_seconds: *cache_build_seconds,
        augmentation: config.training.augmentation.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
    });
    report.write(&options.out)?;
    Ok(report)
}

/// How an image study trains each arm's runs: scratch on labels, sweep points on the teacher's
/// logits, `[[method]]` arms through their method.
struct ImageTrainer<'a> {
    config: &'a ExperimentConfig,
    runner: &'a Runner<'a>,
    scratch_spec: &'a ModelSpec,
    student_spec: &'a ModelSpec,
    logits: &'a TeacherLogits,
    /// The teacher's side of each `[[method]]` with a feature method, by arm name.
    features: Vec<(String, TeacherFeatures)>,
    train: &'a Split,
    init_from: Option<&'a Path>,
    progress: bool,
}

impl ArmTrainer for ImageTrainer<'_> {
    fn scratch_name(&self) -> String {
        self.scratch_spec.name.clone()
    }

    fn train(
        &mut self,
        arm: &PlannedArm,
        seed: u64,
        dir: &Path,
    ) -> anyhow::Result<Vec<EpochRecord>> {
        let train_config = self.config.train_config(arm.epochs, seed);
        let (spec, objective) = match &arm.kind {
            ArmKind::Scratch => (self.scratch_spec, Objective::Labels),
            ArmKind::Sweep(point) => (
                self.student_spec,
                Objective::Distill {
                    loss: point.loss,
                    teacher: self.logits,
                    hidden: None,
                },
            ),
            ArmKind::Method(method) => {
                let name = method.name();
                let features = match self.features.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, f)) => {
                        // Exact only when the batches show the stored images: no augmentation.
                        if train_config.augmentation.is_none()
                            && !f.is_cached()
                            && !crate::train::is_complete(dir, arm.epochs)
                        {
                            println!("== teacher features for {}", arm.label);
                            f.cache_split(self.train, self.runner.device, self.progress);
                        }
                        Some(&*f)
                    }
                    None => None,
                };
                let objective = match (&method.features, features) {
                    (Some(feature_method), Some(teacher)) => Objective::Features {
                        method: feature_method,
                        teacher,
                        ce_weight: method.ce_weight,
                        kd: method.logits.map(|loss| (loss, self.logits)),
                    },
                    _ => Objective::Distill {
                        loss: method.logits.expect("validated: features or logits"),
                        teacher: self.logits,
                        hidden: None,
                    },
                };
                (self.student_spec, objective)
            }
        };
        let outcome = self
            .runner
            .fit(spec, &train_config, objective, dir, self.init_from)?;
        Ok(outcome.history)
    }

    fn finished(&mut self, arm: &PlannedArm) {
        // the cached reads of a finished arm are not needed again
        if let ArmKind::Method(method) = &arm.kind {
            self.features.retain(|(name, _)| *name != method.name());
        }
    }
}
