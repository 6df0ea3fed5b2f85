//! The experiment report: "was distillation worth it?" as Markdown, JSON and PNG plots.
//!
//! The report only renders what the study runner ([`crate::experiment`]) measured: test
//! accuracies per seed, histories, inference speed. The verdict rests on paired seeds: for each
//! distilled setting, the per-seed difference to the scratch student (same initial weights, data
//! order, views and dropout stream) with its 95% Student-t interval ([`crate::stats`]). A gain is
//! claimed only when the interval lies above zero. With a validation split, the best setting is
//! chosen on validation accuracy and the test split only reports it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use crate::bench::Speed;
use crate::data::{Augmentation, DataInfo};
use crate::losses::DistillLoss;
use crate::stats::{mean, median, paired_diff, sample_std, PairedDiff};
use crate::train::{Compute, EpochRecord};

mod plots;
mod render;
mod timing;

pub use plots::{plot_accuracy_by_setting, plot_accuracy_vs_alpha, plot_learning_curves};
pub use render::escape_html;
use render::{Block, Span, Table};
pub use timing::{compare_epoch_times, EpochComparison, EpochTimes};

/// Test results of one model (over its seeds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    /// Run name (`teacher`, `scratch`, or the grid point).
    pub name: String,
    /// Mean test accuracy over seeds.
    pub accuracy: f64,
    /// Sample standard deviation of the test accuracy over seeds (0 with one seed).
    pub accuracy_std: f64,
    /// Test accuracy of each seed, in seed order.
    pub accuracies: Vec<f64>,
    /// Mean test cross-entropy.
    pub loss: f64,
    /// Mean over seeds of the last epoch's accuracy on the evaluation split used during
    /// training (the validation split when there is one).
    pub final_val_accuracy: Option<f64>,
    /// Parameters.
    pub params: usize,
    /// Bytes of f32 weights.
    pub bytes: usize,
    /// Rates of the model's dropout layers, in order.
    pub dropout: Vec<f64>,
    /// Inference speed.
    pub speed: Speed,
    /// Mean wall time of one training epoch over every run of this model (seconds).
    pub epoch_seconds: Option<f64>,
    /// Per-epoch history of each seed.
    #[serde(skip)]
    pub histories: Vec<Vec<EpochRecord>>,
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    (mean(values), sample_std(values))
}

impl ModelResult {
    /// Aggregates per-seed results.
    pub fn new(
        name: &str,
        accuracies: Vec<f64>,
        losses: Vec<f64>,
        params: usize,
        bytes: usize,
        histories: Vec<Vec<EpochRecord>>,
    ) -> Self {
        let (accuracy, accuracy_std) = mean_std(&accuracies);
        let (loss, _) = mean_std(&losses);
        let finals: Vec<f64> = histories
            .iter()
            .filter_map(|h| h.last().map(|e| e.val_accuracy))
            .collect();
        let epochs: Vec<f64> = histories.iter().flatten().map(|e| e.seconds).collect();
        ModelResult {
            name: name.into(),
            accuracy,
            accuracy_std,
            accuracies,
            loss,
            final_val_accuracy: (!finals.is_empty()).then(|| mean(&finals)),
            params,
            bytes,
            dropout: Vec::new(),
            speed: Speed::default(),
            epoch_seconds: (!epochs.is_empty()).then(|| mean(&epochs)),
            histories,
        }
    }

    /// The same result with its architecture's inference speed.
    pub fn with_speed(mut self, speed: Speed) -> Self {
        self.speed = speed;
        self
    }

    /// The same result with the dropout rates it was trained with.
    pub fn with_dropout(mut self, rates: Vec<f64>) -> Self {
        self.dropout = rates;
        self
    }

    /// Mean, std and per-seed accuracies, for compact tables.
    pub fn summary(&self) -> AccuracySummary {
        AccuracySummary {
            accuracy: self.accuracy,
            accuracy_std: self.accuracy_std,
            accuracies: self.accuracies.clone(),
        }
    }
}

/// Mean ± std of a test accuracy over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracySummary {
    /// Mean.
    pub accuracy: f64,
    /// Sample standard deviation.
    pub accuracy_std: f64,
    /// Per seed.
    pub accuracies: Vec<f64>,
}

/// One distilled setting as the runner hands it over.
#[derive(Debug, Clone)]
pub struct DistilledInput {
    /// The loss and its hyper-parameters.
    pub loss: DistillLoss,
    /// Readable description of the setting.
    pub label: String,
    /// Its results.
    pub result: ModelResult,
    /// The control it is paired with, when it is not the scratch student (a chain stage's
    /// labels-only twin).
    pub control: Option<ModelResult>,
}

/// One distilled student in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistilledResult {
    /// The loss and its hyper-parameters (`kind`, `alpha`, `temperature`, ...).
    #[serde(flatten)]
    pub loss: DistillLoss,
    /// Readable description of the setting.
    pub label: String,
    /// Name of the run it is compared with (`scratch`, or a chain stage's control).
    pub control: String,
    /// Mean test accuracy of that control.
    pub control_accuracy: f64,
    /// Per-seed difference to the control (test accuracy, fraction): mean, std, 95% interval.
    pub paired_diff: Option<PairedDiff>,
    /// Full result.
    #[serde(flatten)]
    pub result: ModelResult,
}

impl DistilledResult {
    /// Mean test accuracy over seeds.
    pub fn accuracy(&self) -> f64 {
        self.result.accuracy
    }
}

/// One `[[method]]` arm as the runner hands it over.
#[derive(Debug, Clone)]
pub struct MethodInput {
    /// Readable description (`AT`, `CRD + KD alpha 0.5, T 4, T² on`).
    pub label: String,
    /// Its results (its `name` is the arm's).
    pub result: ModelResult,
}

/// One row of the method table: a paired arm against the student from scratch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodRow {
    /// Readable description.
    pub label: String,
    /// Per-seed difference to scratch (test accuracy, fraction).
    pub paired_diff: Option<PairedDiff>,
    /// Its mean training epoch over a scratch epoch (wall time), when both were timed under
    /// the same compute settings.
    pub epoch_cost: Option<f64>,
    /// Why there is no `epoch_cost` although both were timed (their runs' compute threads, jobs
    /// or CPU differ), or which runs it leaves out for that reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_cost_note: Option<String>,
    /// Full result.
    #[serde(flatten)]
    pub result: ModelResult,
}

/// How the best distilled setting was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// On the validation split carved from train (the test split is only reported).
    Validation,
    /// On the test split (no validation split was configured: optimistic).
    Test,
}

/// The answer: the chosen distilled student against its control.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Run name of the chosen setting.
    pub name: String,
    /// Its description.
    pub label: String,
    /// How it was chosen.
    pub selected_by: Selection,
    /// Its mean test accuracy.
    pub accuracy: f64,
    /// Mean test accuracy minus the control's (fraction, not points).
    pub gain_over_scratch: f64,
    /// The paired difference (None with one seed... or when seeds differ in number).
    pub paired_diff: Option<PairedDiff>,
    /// Whether the 95% interval lies above zero (`None` with one seed: unknown).
    pub significant_gain: Option<bool>,
    /// The answer in one sentence.
    pub verdict: String,
}

/// A chain stage (`sweep.chain`): the distilled chain and the labels-only chain after the same
/// number of epochs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainStage {
    /// 1-based stage.
    pub stage: usize,
    /// The stage's distillation setting.
    pub label: String,
    /// Epochs trained in total after this stage.
    pub epochs_so_far: usize,
    /// The distilled chain.
    pub distilled: AccuracySummary,
    /// The labels-only chain.
    pub labels_only: Option<AccuracySummary>,
}

/// The cost of consistent teaching with the augmented-view cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheCost {
    /// Seconds to run the teacher over every view (once per study).
    pub build_seconds: Option<f64>,
    /// Mean distillation epoch (seconds), over the runs under the compared compute settings.
    pub distill_epoch_seconds: Option<f64>,
    /// Mean scratch epoch with the same augmentation (seconds), under the same settings.
    pub scratch_epoch_seconds: Option<f64>,
    /// Their ratio.
    pub ratio: Option<f64>,
    /// The compute settings both means were measured under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
    /// Why there are no epoch times (no distilled and scratch runs share their compute
    /// settings), or which runs they leave out for that reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A learning curve: validation accuracy per epoch of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCurve {
    /// Legend label.
    pub label: String,
    /// Validation accuracy after each epoch.
    pub val_accuracy: Vec<f64>,
}

/// What the runner measured, handed to [`Report::build`].
#[derive(Debug, Clone)]
pub struct ReportInputs {
    /// Dataset name, sizes, shape.
    pub dataset: DataInfo,
    /// Backend used.
    pub backend: String,
    /// Seeds per student.
    pub seeds: usize,
    /// Student epochs (per stage, with a chain).
    pub student_epochs: usize,
    /// Epochs of the distilled students, when they differ from `student_epochs`.
    pub distilled_epochs: Option<usize>,
    /// How the distilled students' extra training examples were made, when they had any (a
    /// text study's transfer set).
    pub transfer: Option<String>,
    /// How the best setting is chosen.
    pub selection: Selection,
    /// The teacher.
    pub teacher: ModelResult,
    /// The student from scratch.
    pub scratch: ModelResult,
    /// What the report calls that control arm (`student from scratch`; `student on labels
    /// alone` when it starts from the teacher's layers).
    pub scratch_label: String,
    /// Every distilled setting.
    pub distilled: Vec<DistilledInput>,
    /// The `[[method]]` arms.
    pub methods: Vec<MethodInput>,
    /// Chain stages, with `sweep.chain`.
    pub chain: Option<Vec<ChainStage>>,
    /// Seconds spent building the augmented-view cache, when one was used.
    pub cache_build_seconds: Option<f64>,
    /// The training augmentation.
    pub augmentation: Option<Augmentation>,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
}

/// Everything `distill run` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Dataset name, sizes, shape.
    pub dataset: DataInfo,
    /// Backend used.
    pub backend: String,
    /// Seeds per student.
    pub seeds: usize,
    /// Student epochs.
    pub student_epochs: usize,
    /// Epochs of the distilled students, when they differ from `student_epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distilled_epochs: Option<usize>,
    /// The distilled students' transfer set, when they had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// Wall time of this invocation (small when it resumed finished runs).
    pub wall_seconds: f64,
    /// Sum of the epoch times of every run (teacher included), across resumes.
    pub training_seconds: f64,
    /// The teacher's part of `training_seconds` (recorded when it was trained, possibly by
    /// another study whose teacher this one reuses).
    #[serde(default)]
    pub teacher_training_seconds: f64,
    /// The training augmentation, if any.
    pub augmentation: Option<Augmentation>,
    /// The teacher.
    pub teacher: ModelResult,
    /// The student from scratch.
    pub scratch: ModelResult,
    /// What the report calls that control arm.
    pub scratch_label: String,
    /// Every distilled student.
    pub distilled: Vec<DistilledResult>,
    /// The method table: every `[[method]]` arm against scratch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodRow>,
    /// Chain stages, with `sweep.chain`.
    pub chain: Option<Vec<ChainStage>>,
    /// The augmented-view cache's cost, when one was used.
    pub cache: Option<CacheCost>,
    /// The chosen distilled student and the verdict.
    pub best: Best,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn points(x: f64) -> String {
    format!("{:+.2}", x * 100.0)
}

/// `+1.23 [+0.40, +2.06]` (points), or the reason there is no interval.
fn interval_cell(diff: Option<&PairedDiff>) -> String {
    match diff {
        Some(PairedDiff {
            mean,
            ci95: Some([lo, hi]),
            ..
        }) => format!("{} [{}, {}]", points(*mean), points(*lo), points(*hi)),
        Some(d) => format!("{} (an interval needs at least 2 seeds)", points(d.mean)),
        None => "n/a".into(),
    }
}

impl Report {
    /// Pairs every distilled setting with its control, chooses the best one and decides the
    /// verdict.
    pub fn build(inputs: ReportInputs) -> Self {
        let ReportInputs {
            dataset,
            backend,
            seeds,
            student_epochs,
            distilled_epochs,
            transfer,
            selection,
            teacher,
            scratch,
            scratch_label,
            distilled,
            methods,
            chain,
            cache_build_seconds,
            augmentation,
            wall_seconds,
        } = inputs;
        let methods: Vec<MethodRow> = methods
            .into_iter()
            .map(|m| {
                let (epoch_cost, epoch_cost_note) =
                    match compare_epoch_times(&[&m.result], &m.label, &scratch, "scratch") {
                        EpochComparison::Comparable(times) => (Some(times.ratio()), times.note()),
                        EpochComparison::NotComparable(why) => (None, Some(why)),
                        EpochComparison::Untimed => (None, None),
                    };
                MethodRow {
                    label: m.label,
                    paired_diff: paired_diff(&m.result.accuracies, &scratch.accuracies).ok(),
                    epoch_cost,
                    epoch_cost_note,
                    result: m.result,
                }
            })
            .collect();
        let distilled: Vec<DistilledResult> = distilled
            .into_iter()
            .map(|d| {
                let control = d.control.as_ref().unwrap_or(&scratch);
                DistilledResult {
                    loss: d.loss,
                    label: d.label,
                    control: control.name.clone(),
                    control_accuracy: control.accuracy,
                    paired_diff: paired_diff(&d.result.accuracies, &control.accuracies).ok(),
                    result: d.result,
                }
            })
            .collect();
        let score = |d: &DistilledResult| match selection {
            Selection::Validation => d.result.final_val_accuracy.unwrap_or(d.accuracy()),
            Selection::Test => d.accuracy(),
        };
        let top = distilled
            .iter()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .expect("the sweep has at least one point");
        let best = verdict(top, selection, seeds, &scratch_label);
        let epoch_seconds = |r: &ModelResult| {
            r.histories
                .iter()
                .flatten()
                .fold(0.0, |sum, e| sum + e.seconds)
        };
        let training_seconds = epoch_seconds(&teacher)
            + epoch_seconds(&scratch)
            + distilled
                .iter()
                .map(|d| epoch_seconds(&d.result))
                .sum::<f64>()
            + methods
                .iter()
                .map(|m| epoch_seconds(&m.result))
                .sum::<f64>();
        let cache = augmentation
            .as_ref()
            .filter(|a| a.views.is_some())
            .and_then(|_| {
                let arms: Vec<&ModelResult> = distilled.iter().map(|d| &d.result).collect();
                let cost = CacheCost {
                    build_seconds: cache_build_seconds,
                    distill_epoch_seconds: None,
                    scratch_epoch_seconds: None,
                    ratio: None,
                    compute: None,
                    note: None,
                };
                match compare_epoch_times(&arms, "the distilled runs", &scratch, "scratch") {
                    EpochComparison::Comparable(times) => Some(CacheCost {
                        distill_epoch_seconds: Some(times.arm_seconds),
                        scratch_epoch_seconds: Some(times.control_seconds),
                        ratio: Some(times.ratio()),
                        note: times.note(),
                        compute: Some(times.compute),
                        ..cost
                    }),
                    EpochComparison::NotComparable(why) => Some(CacheCost {
                        note: Some(why),
                        ..cost
                    }),
                    EpochComparison::Untimed => None,
                }
            });
        Report {
            training_seconds,
            teacher_training_seconds: epoch_seconds(&teacher),
            dataset,
            backend,
            seeds,
            student_epochs,
            distilled_epochs,
            transfer,
            wall_seconds,
            augmentation,
            teacher,
            scratch,
            scratch_label,
            distilled,
            methods,
            chain,
            cache,
            best,
        }
    }

    /// The distilled student the verdict is about.
    pub fn best_distilled(&self) -> &DistilledResult {
        self.distilled
            .iter()
            .find(|d| d.result.name == self.best.name)
            .expect("the best point is one of the distilled students")
    }

    /// Learning curves of every run (first seed of each).
    pub fn curves(&self) -> Vec<RunCurve> {
        let curve = |label: String, r: &ModelResult| RunCurve {
            label,
            val_accuracy: r
                .histories
                .first()
                .map(|h| h.iter().map(|e| e.val_accuracy).collect())
                .unwrap_or_default(),
        };
        let mut curves = vec![
            curve("teacher".into(), &self.teacher),
            curve("scratch".into(), &self.scratch),
        ];
        for d in &self.distilled {
            curves.push(curve(d.label.clone(), &d.result));
        }
        for m in &self.methods {
            curves.push(curve(m.label.clone(), &m.result));
        }
        curves
    }

    fn accuracy_cell(&self, r: &ModelResult) -> String {
        if r.accuracies.len() > 1 {
            format!("{} ± {:.2}", pct(r.accuracy), r.accuracy_std * 100.0)
        } else {
            pct(r.accuracy)
        }
    }

    /// The report as blocks, rendered by [`Report::markdown`] and [`Report::html`] alike.
    fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        let d = &self.dataset;
        blocks.push(Block::Title("Distillation report".into()));
        blocks.push(Block::Verdict(self.best.verdict.clone()));
        blocks.push(Block::Paragraph(vec![
            Span::Text("Dataset ".into()),
            Span::Code(d.name.clone()),
            Span::Text(format!(
                ": {} train / {} test {}, {} classes. Students trained {} epochs{}, {} paired seed(s); augmentation: {}{}; backend {}; training time {:.0} s (teacher {:.0} s, students {:.0} s; this invocation: {:.0} s).",
                d.train,
                d.test,
                d.examples(),
                d.classes.len(),
                self.student_epochs,
                self.distilled_epochs
                    .map(|e| format!(" (distilled: {e})"))
                    .unwrap_or_default(),
                self.seeds,
                self.augmentation
                    .as_ref()
                    .filter(|a| !a.is_identity())
                    .map_or_else(|| "none".to_string(), Augmentation::describe),
                self.transfer
                    .as_ref()
                    .map(|t| format!("; distilled students' transfer set: {t}"))
                    .unwrap_or_default(),
                self.backend,
                self.training_seconds,
                self.teacher_training_seconds,
                self.training_seconds - self.teacher_training_seconds,
                self.wall_seconds
            )),
        ]));
        blocks.push(Block::Heading("Teacher vs student".into()));
        let batch = if d.shape.is_some() { 256 } else { 64 };
        let t = &self.teacher;
        let row = |name: String, r: &ModelResult| {
            vec![
                name,
                self.accuracy_cell(r),
                format!("{:.4}", r.loss),
                crate::models::summary::thousands(r.params as u64),
                format!("{:?}", r.dropout),
                format!("{:.1} KB", r.bytes as f64 / 1024.0),
                format!("{:.3} ms", r.speed.latency_ms),
                format!("{:.0} {}", r.speed.throughput_ips, d.throughput_unit()),
                format!("{:.1}x", t.params as f64 / r.params.max(1) as f64),
                format!(
                    "{:.1}x",
                    r.speed.throughput_ips / t.speed.throughput_ips.max(1e-9)
                ),
            ]
        };
        let top = self.best_distilled();
        blocks.push(Block::Table(Table {
            header: [
                "model",
                "test accuracy",
                "CE loss",
                "params",
                "dropout",
                "weights",
                "latency, batch 1",
                &format!("throughput, batch {batch}"),
                "compression",
                "speed-up",
            ]
            .map(String::from)
            .to_vec(),
            rows: vec![
                row("teacher".into(), t),
                row(self.scratch_label.clone(), &self.scratch),
                row(
                    format!("best distilled student ({})", top.label),
                    &top.result,
                ),
            ],
            chosen: Some(2),
        }));
        blocks.push(Block::Heading("Sweep".into()));
        let mut note = vec![Span::Text("Paired difference: per seed, distilled minus its control (same initial weights, data order, augmented views and dropout stream), in points, with its 95% Student-t interval. ".into())];
        match self.best.selected_by {
            Selection::Validation => note.push(Span::Text("The best setting is chosen on validation accuracy (final epoch, mean over seeds); test accuracy is reported for every setting but used for no choice.".into())),
            Selection::Test => note.extend([
                Span::Text("No validation split was configured, so the best setting is chosen on test accuracy (optimistic; set ".into()),
                Span::Code("training.val_split".into()),
                Span::Text(" to choose on validation).".into()),
            ]),
        }
        blocks.push(Block::Paragraph(note));
        let val = |r: &ModelResult| r.final_val_accuracy.map_or_else(|| "n/a".into(), pct);
        blocks.push(Block::Table(Table {
            header: [
                "setting",
                "test accuracy",
                "val accuracy",
                "vs control, paired [95% CI]",
                "control",
                "CE loss",
            ]
            .map(String::from)
            .to_vec(),
            rows: self
                .distilled
                .iter()
                .map(|r| {
                    vec![
                        format!(
                            "{}{}",
                            r.label,
                            if r.result.name == self.best.name {
                                " (chosen)"
                            } else {
                                ""
                            }
                        ),
                        self.accuracy_cell(&r.result),
                        val(&r.result),
                        interval_cell(r.paired_diff.as_ref()),
                        r.control.clone(),
                        format!("{:.4}", r.result.loss),
                    ]
                })
                .collect(),
            chosen: self
                .distilled
                .iter()
                .position(|r| r.result.name == self.best.name),
        }));
        if !self.methods.is_empty() {
            blocks.push(Block::Heading("Methods".into()));
            blocks.push(Block::Paragraph(vec![Span::Text(
                "Each method is a paired arm: the same seeds, initial weights, batch order and views as the student from scratch. Cost: the arm's mean training epoch (wall time, teacher reads included) over a scratch epoch, from runs with the same compute threads, jobs and CPU only.".into(),
            )]));
            let mut rows = vec![vec![
                self.scratch_label.clone(),
                self.accuracy_cell(&self.scratch),
                val(&self.scratch),
                "(control)".into(),
                "1.00x".into(),
            ]];
            for m in &self.methods {
                let cost = match (m.epoch_cost, &m.epoch_cost_note) {
                    (Some(c), None) => format!("{c:.2}x"),
                    (Some(c), Some(note)) => format!("{c:.2}x ({note})"),
                    (None, Some(why)) => format!("n/a ({why})"),
                    (None, None) => "n/a".into(),
                };
                rows.push(vec![
                    m.label.clone(),
                    self.accuracy_cell(&m.result),
                    val(&m.result),
                    interval_cell(m.paired_diff.as_ref()),
                    cost,
                ]);
            }
            blocks.push(Block::Table(Table {
                header: [
                    "method",
                    "test accuracy",
                    "val accuracy",
                    "vs scratch, paired [95% CI]",
                    "epoch cost vs scratch",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                chosen: None,
            }));
        }
        if let Some(stages) = &self.chain {
            blocks.push(Block::Heading(
                "Chain (one student trained stage after stage, fresh optimizer each stage)".into(),
            ));
            let cell = |a: &AccuracySummary| {
                if a.accuracies.len() > 1 {
                    format!("{} ± {:.2}", pct(a.accuracy), a.accuracy_std * 100.0)
                } else {
                    pct(a.accuracy)
                }
            };
            blocks.push(Block::Table(Table {
                header: [
                    "stage",
                    "setting",
                    "epochs so far",
                    "distilled chain",
                    "labels-only chain",
                ]
                .map(String::from)
                .to_vec(),
                rows: stages
                    .iter()
                    .map(|s| {
                        vec![
                            s.stage.to_string(),
                            s.label.clone(),
                            s.epochs_so_far.to_string(),
                            cell(&s.distilled),
                            s.labels_only.as_ref().map_or_else(|| "n/a".into(), cell),
                        ]
                    })
                    .collect(),
                chosen: None,
            }));
        }
        if let Some(cache) = &self.cache {
            let built = cache.build_seconds.map_or_else(
                || "an earlier invocation".to_string(),
                |s| format!("{s:.0} s"),
            );
            let times = match (
                cache.distill_epoch_seconds,
                cache.scratch_epoch_seconds,
                cache.ratio,
            ) {
                (Some(distill), Some(scratch), Some(ratio)) => format!(
                    "a distillation epoch took {distill:.1} s against {scratch:.1} s for a scratch epoch with the same augmentation ({ratio:.2}x){}",
                    cache
                        .note
                        .as_ref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                ),
                _ => format!(
                    "no epoch-time figure, {}",
                    cache.note.as_deref().unwrap_or("the epochs were not timed")
                ),
            };
            blocks.push(Block::Paragraph(vec![Span::Text(format!(
                "Augmented-view teacher-logit cache: built in {built}; {times}."
            ))]));
        }
        blocks.push(Block::Heading("Plots".into()));
        blocks.push(Block::Plot {
            alt: "test accuracy per setting and seed".into(),
            file: "accuracy_by_setting.png",
        });
        blocks.push(Block::Plot {
            alt: "accuracy vs alpha".into(),
            file: "accuracy_vs_alpha.png",
        });
        blocks.push(Block::Plot {
            alt: "learning curves".into(),
            file: "learning_curves.png",
        });
        blocks
    }

    /// Writes `report.md`, `report.html` (the same, self-contained, with the plots inside),
    /// `report.json`, `learning_curves.png`, `accuracy_vs_alpha.png` and
    /// `accuracy_by_setting.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        // under MPI, rank 0 writes for every rank
        if !crate::distributed::is_root() {
            return Ok(());
        }
        std::fs::write(dir.join("report.md"), self.markdown())
            .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
        plot_learning_curves(&self.curves(), &dir.join("learning_curves.png"))?;
        plot_accuracy_vs_alpha(self, &dir.join("accuracy_vs_alpha.png"))?;
        plot_accuracy_by_setting(self, &dir.join("accuracy_by_setting.png"))?;
        let html = self.html(|file| {
            std::fs::read(dir.join(file))
                .with_context(|| format!("cannot read plot {}", dir.join(file).display()))
        })?;
        std::fs::write(dir.join("report.html"), html)
            .with_context(|| format!("cannot write {}", dir.join("report.html").display()))?;
        Ok(())
    }
}

/// The verdict on the chosen setting, from its paired interval.
fn verdict(top: &DistilledResult, selection: Selection, seeds: usize, scratch_label: &str) -> Best {
    let gain = top.accuracy() - top.control_accuracy;
    let chosen = match selection {
        Selection::Validation => "chosen on validation",
        Selection::Test => "chosen on test accuracy",
    };
    let head = format!(
        "the best distilled student ({}, {chosen}) reached {} vs {} for {} ({} points)",
        top.label,
        pct(top.accuracy()),
        pct(top.control_accuracy),
        if top.control == "scratch" {
            format!("the {scratch_label}")
        } else {
            top.control.clone()
        },
        points(gain)
    );
    let diff = top.paired_diff.clone();
    let interval = diff.as_ref().and_then(|d| d.ci95);
    let significant_gain = diff.as_ref().and_then(PairedDiff::is_gain);
    let verdict = match (interval, diff.as_ref()) {
        (Some([lo, hi]), Some(d)) if lo > 0.0 => format!(
            "Distillation pays: {head}; over {} paired seeds the difference is {} points, 95% CI [{}, {}], above zero.",
            d.n, points(d.mean), points(lo), points(hi)
        ),
        (Some([lo, hi]), Some(d)) if hi < 0.0 => format!(
            "Distillation hurt: {head}; over {} paired seeds the difference is {} points, 95% CI [{}, {}], below zero.",
            d.n, points(d.mean), points(lo), points(hi)
        ),
        (Some([lo, hi]), Some(d)) => format!(
            "No significant difference: {head}; over {} paired seeds the difference is {} points, 95% CI [{}, {}], which includes zero.",
            d.n, points(d.mean), points(lo), points(hi)
        ),
        _ => format!(
            "Not enough seeds to tell: {head}; a confidence interval needs at least 2 paired seeds ({seeds} run), so run with --seeds 3 or more to tell a gain from noise."
        ),
    };
    let mut first = verdict;
    // sentence case
    if let Some(c) = first.get(0..1) {
        let upper = c.to_uppercase();
        first.replace_range(0..1, &upper);
    }
    Best {
        name: top.result.name.clone(),
        label: top.label.clone(),
        selected_by: selection,
        accuracy: top.accuracy(),
        gain_over_scratch: gain,
        paired_diff: diff,
        significant_gain,
        verdict: first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(threads: usize, jobs: usize, cpu: &str) -> Compute {
        Compute {
            threads,
            jobs,
            cpu: cpu.into(),
        }
    }

    /// A history of `epochs` epochs of `seconds` each, run under `compute`.
    fn history(epochs: usize, seconds: f64, compute: Option<&Compute>) -> Vec<EpochRecord> {
        (1..=epochs)
            .map(|epoch| EpochRecord {
                epoch,
                loss: 1.0,
                accuracy: 0.5,
                val_loss: 1.0,
                val_accuracy: 0.5,
                learning_rate: 1e-3,
                seconds,
                parts: Default::default(),
                compute: compute.cloned(),
            })
            .collect()
    }

    fn result(name: &str, accuracies: &[f64], histories: Vec<Vec<EpochRecord>>) -> ModelResult {
        let losses = vec![0.5; accuracies.len()];
        ModelResult::new(name, accuracies.to_vec(), losses, 1000, 4000, histories)
    }

    fn inputs(
        scratch: Vec<Vec<EpochRecord>>,
        distilled: Vec<Vec<EpochRecord>>,
        method: Vec<Vec<EpochRecord>>,
    ) -> ReportInputs {
        ReportInputs {
            dataset: DataInfo {
                name: "embedded <subset> & co".into(),
                train: 100,
                test: 50,
                classes: (0..10).map(|c| c.to_string()).collect(),
                shape: Some([1, 28, 28]),
                max_tokens: None,
            },
            backend: "flex".into(),
            seeds: 2,
            student_epochs: 2,
            distilled_epochs: None,
            transfer: None,
            selection: Selection::Validation,
            teacher: result("teacher", &[0.9], vec![history(2, 5.0, None)]),
            scratch: result("scratch", &[0.80, 0.81], scratch),
            scratch_label: "student from scratch".into(),
            distilled: vec![DistilledInput {
                loss: DistillLoss::Kd {
                    alpha: 0.5,
                    temperature: 4.0,
                    t2_scaling: true,
                },
                label: "KD alpha 0.5, T 4, T² on".into(),
                result: result("a0.5-T4-t2", &[0.83, 0.85], distilled),
                control: None,
            }],
            methods: vec![MethodInput {
                label: "AT <maps>".into(),
                result: result("at", &[0.82, 0.82], method),
            }],
            chain: None,
            cache_build_seconds: Some(3.0),
            augmentation: Some(Augmentation {
                crop_padding: 4,
                horizontal_flip: true,
                views: Some(4),
                view_seed: 0,
                mixup: None,
            }),
            wall_seconds: 10.0,
        }
    }

    #[test]
    fn epoch_times_are_compared_only_under_the_same_threads_jobs_and_cpu() {
        let two = compute(2, 1, "Xeon");
        let one = compute(1, 1, "Xeon");
        let same = || vec![history(2, 2.0, Some(&two)), history(2, 2.0, Some(&two))];
        // all alike: figures, and no note
        let report = Report::build(inputs(
            same(),
            vec![history(2, 3.0, Some(&two)), history(2, 3.0, Some(&two))],
            vec![history(2, 5.0, Some(&two)), history(2, 5.0, Some(&two))],
        ));
        let cache = report.cache.as_ref().unwrap();
        assert_eq!(cache.ratio, Some(1.5));
        assert_eq!(cache.compute.as_ref(), Some(&two));
        assert_eq!(cache.note, None);
        assert_eq!(report.methods[0].epoch_cost, Some(2.5));
        let md = report.markdown();
        assert!(
            md.contains("a distillation epoch took 3.0 s against 2.0 s for a scratch epoch with the same augmentation (1.50x)."),
            "{md}"
        );
        assert!(md.contains("| 2.50x |"), "{md}");

        // scratch on 2 threads, the distilled runs and the method on 1: no figure, and why
        let report = Report::build(inputs(
            same(),
            vec![history(2, 3.0, Some(&one)), history(2, 3.0, Some(&one))],
            vec![history(2, 5.0, Some(&one)), history(2, 5.0, Some(&one))],
        ));
        let cache = report.cache.as_ref().unwrap();
        assert_eq!(cache.ratio, None);
        assert_eq!(
            cache.note.as_deref(),
            Some("not comparable: scratch ran with 2 threads, the distilled runs with 1 thread")
        );
        assert_eq!(report.methods[0].epoch_cost, None);
        assert_eq!(
            report.methods[0].epoch_cost_note.as_deref(),
            Some("not comparable: scratch ran with 2 threads, AT <maps> with 1 thread")
        );
        let md = report.markdown();
        assert!(md.contains("built in 3 s; no epoch-time figure, not comparable: scratch ran with 2 threads, the distilled runs with 1 thread."), "{md}");
        assert!(
            md.contains(
                "| n/a (not comparable: scratch ran with 2 threads, AT <maps> with 1 thread) |"
            ),
            "{md}"
        );

        // other jobs and another CPU: both named
        let elsewhere = compute(2, 2, "EPYC");
        match compare_epoch_times(
            &[&result("x", &[0.8], vec![history(1, 1.0, Some(&elsewhere))])],
            "the distilled runs",
            &result("scratch", &[0.8], vec![history(1, 1.0, Some(&two))]),
            "scratch",
        ) {
            EpochComparison::NotComparable(why) => assert_eq!(
                why,
                "not comparable: scratch ran with 1 job on Xeon, the distilled runs with 2 jobs on EPYC"
            ),
            other => panic!("{other:?}"),
        }

        // one scratch seed resumed elsewhere, one distilled seed on 1 thread: the runs on 2
        // threads are compared, the others left out (and said so)
        let mut resumed = history(2, 9.0, Some(&two));
        resumed[1].compute = Some(one.clone());
        let report = Report::build(inputs(
            vec![history(2, 2.0, Some(&two)), resumed],
            vec![history(2, 3.0, Some(&two)), history(2, 7.0, Some(&one))],
            vec![history(2, 5.0, Some(&two)), history(2, 5.0, Some(&two))],
        ));
        let cache = report.cache.as_ref().unwrap();
        assert_eq!(cache.ratio, Some(1.5));
        assert_eq!(
            cache.note.as_deref(),
            Some("only the runs with 2 threads, 1 job, Xeon: 2 runs under other settings left out")
        );
        assert_eq!(report.methods[0].epoch_cost, Some(2.5));

        // histories from before the settings were recorded compare with nothing
        let report = Report::build(inputs(
            vec![history(2, 2.0, None)],
            vec![history(2, 3.0, Some(&two))],
            vec![history(2, 5.0, None)],
        ));
        let note = report.cache.as_ref().unwrap().note.clone().unwrap();
        assert!(
            note.starts_with("not comparable: scratch ran with settings not recorded"),
            "{note}"
        );
        assert!(
            note.ends_with("the distilled runs with 2 threads, 1 job, Xeon"),
            "{note}"
        );
        assert_eq!(report.methods[0].epoch_cost, None);

        // an epoch that spanned a pause (SIGSTOP for an hour) does not move the figure: the
        // median epoch of 2, 2, 2, 3600 s is 2 s against scratch's 4 s
        let mut paused = history(4, 2.0, Some(&two));
        paused[2].seconds = 3600.0;
        match compare_epoch_times(
            &[&result("AT", &[0.8], vec![paused])],
            "AT",
            &result("scratch", &[0.8], vec![history(3, 4.0, Some(&two))]),
            "scratch",
        ) {
            EpochComparison::Comparable(times) => assert_eq!(times.ratio(), 0.5),
            other => panic!("{other:?}"),
        }

        // nothing timed on one side: no figure and nothing to explain
        assert_eq!(
            compare_epoch_times(
                &[&result("x", &[0.8], vec![])],
                "x",
                &result("scratch", &[0.8], vec![history(1, 1.0, Some(&two))]),
                "scratch"
            ),
            EpochComparison::Untimed
        );
    }

    #[test]
    fn the_html_report_has_the_markdown_tables_escaped_and_the_plots_inline() {
        let two = compute(2, 1, "Xeon");
        let report = Report::build(inputs(
            vec![history(2, 2.0, Some(&two)), history(2, 2.0, Some(&two))],
            vec![history(2, 3.0, Some(&two)), history(2, 3.0, Some(&two))],
            vec![history(2, 5.0, Some(&two)), history(2, 5.0, Some(&two))],
        ));
        let html = report
            .html(|file| Ok(format!("png of {file}").into_bytes()))
            .unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(&escape_html(&report.best.verdict)));
        // every table of the Markdown, row for row
        let md = report.markdown();
        let md_rows = md.lines().filter(|l| l.starts_with("| ")).count();
        assert_eq!(html.matches("<tr").count(), md_rows);
        assert!(html.contains("<h2>Methods</h2>"));
        assert!(html.contains("<td>AT &lt;maps&gt;</td>"), "{html}");
        assert!(html.contains("<code>embedded &lt;subset&gt; &amp; co</code>"));
        assert!(!html.contains("<maps>") && !html.contains("<subset>"));
        assert!(html.contains("Augmented-view teacher-logit cache: built in 3 s"));
        // the plots inside, as data URIs
        use base64::Engine as _;
        for file in [
            "accuracy_by_setting.png",
            "accuracy_vs_alpha.png",
            "learning_curves.png",
        ] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("png of {file}"));
            assert!(
                html.contains(&format!("src=\"data:image/png;base64,{encoded}\"")),
                "{file}"
            );
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert_eq!(
            escape_html("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
    }
}
