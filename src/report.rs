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
use crate::stats::{mean, paired_diff, sample_std, PairedDiff};
use crate::train::EpochRecord;

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
    /// Its mean training epoch over a scratch epoch (wall time), when both were timed.
    pub epoch_cost: Option<f64>,
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
    /// Mean distillation epoch (seconds).
    pub distill_epoch_seconds: f64,
    /// Mean scratch epoch with the same augmentation (seconds).
    pub scratch_epoch_seconds: f64,
    /// Their ratio.
    pub ratio: f64,
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
            .map(|m| MethodRow {
                label: m.label,
                paired_diff: paired_diff(&m.result.accuracies, &scratch.accuracies).ok(),
                epoch_cost: m
                    .result
                    .epoch_seconds
                    .zip(scratch.epoch_seconds)
                    .map(|(arm, control)| arm / control),
                result: m.result,
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
        let epoch_seconds =
            |r: &ModelResult| r.histories.iter().flatten().map(|e| e.seconds).sum::<f64>();
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
                let distill_epoch = mean(
                    &distilled
                        .iter()
                        .filter_map(|d| d.result.epoch_seconds)
                        .collect::<Vec<_>>(),
                );
                let scratch_epoch = scratch.epoch_seconds?;
                Some(CacheCost {
                    build_seconds: cache_build_seconds,
                    distill_epoch_seconds: distill_epoch,
                    scratch_epoch_seconds: scratch_epoch,
                    ratio: distill_epoch / scratch_epoch,
                })
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

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let d = &self.dataset;
        let _ = writeln!(md, "# Distillation report\n");
        let _ = writeln!(md, "**{}**\n", self.best.verdict);
        let _ = writeln!(
            md,
            "Dataset `{}`: {} train / {} test {}, {} classes. Students trained {} epochs{}, {} paired seed(s); augmentation: {}{}; backend {}; training time {:.0} s (teacher {:.0} s, students {:.0} s; this invocation: {:.0} s).\n",
            d.name,
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
        );
        let _ = writeln!(md, "## Teacher vs student\n");
        let batch = if d.shape.is_some() { 256 } else { 64 };
        let _ = writeln!(md, "| model | test accuracy | CE loss | params | dropout | weights | latency, batch 1 | throughput, batch {batch} | compression | speed-up |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        let t = &self.teacher;
        let mut row = |name: String, r: &ModelResult| {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.4} | {} | {:?} | {:.1} KB | {:.3} ms | {:.0} {} | {:.1}x | {:.1}x |",
                self.accuracy_cell(r),
                r.loss,
                crate::models::summary::thousands(r.params as u64),
                r.dropout,
                r.bytes as f64 / 1024.0,
                r.speed.latency_ms,
                r.speed.throughput_ips,
                d.throughput_unit(),
                t.params as f64 / r.params.max(1) as f64,
                r.speed.throughput_ips / t.speed.throughput_ips.max(1e-9),
            );
        };
        row("teacher".into(), t);
        row(self.scratch_label.clone(), &self.scratch);
        let top = self.best_distilled();
        row(
            format!("best distilled student ({})", top.label),
            &top.result,
        );
        let _ = writeln!(md, "\n## Sweep\n");
        let selection_note = match self.best.selected_by {
            Selection::Validation => "The best setting is chosen on validation accuracy (final epoch, mean over seeds); test accuracy is reported for every setting but used for no choice.",
            Selection::Test => "No validation split was configured, so the best setting is chosen on test accuracy (optimistic; set `training.val_split` to choose on validation).",
        };
        let _ = writeln!(
            md,
            "Paired difference: per seed, distilled minus its control (same initial weights, data order, augmented views and dropout stream), in points, with its 95% Student-t interval. {selection_note}\n"
        );
        let _ = writeln!(
            md,
            "| setting | test accuracy | val accuracy | vs control, paired [95% CI] | control | CE loss |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for r in &self.distilled {
            let _ = writeln!(
                md,
                "| {}{} | {} | {} | {} | {} | {:.4} |",
                r.label,
                if r.result.name == self.best.name {
                    " (chosen)"
                } else {
                    ""
                },
                self.accuracy_cell(&r.result),
                r.result
                    .final_val_accuracy
                    .map_or_else(|| "n/a".into(), pct),
                interval_cell(r.paired_diff.as_ref()),
                r.control,
                r.result.loss
            );
        }
        if !self.methods.is_empty() {
            self.method_table(&mut md);
        }
        if let Some(stages) = &self.chain {
            let _ = writeln!(
                md,
                "\n## Chain (one student trained stage after stage, fresh optimizer each stage)\n"
            );
            let _ = writeln!(
                md,
                "| stage | setting | epochs so far | distilled chain | labels-only chain |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            let cell = |a: &AccuracySummary| {
                if a.accuracies.len() > 1 {
                    format!("{} ± {:.2}", pct(a.accuracy), a.accuracy_std * 100.0)
                } else {
                    pct(a.accuracy)
                }
            };
            for s in stages {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    s.stage,
                    s.label,
                    s.epochs_so_far,
                    cell(&s.distilled),
                    s.labels_only.as_ref().map_or_else(|| "n/a".into(), cell)
                );
            }
        }
        if let Some(cache) = &self.cache {
            let _ = writeln!(
                md,
                "\nAugmented-view teacher-logit cache: built in {}; a distillation epoch took {:.1} s against {:.1} s for a scratch epoch with the same augmentation ({:.2}x).",
                cache
                    .build_seconds
                    .map_or_else(|| "an earlier invocation".to_string(), |s| format!("{s:.0} s")),
                cache.distill_epoch_seconds,
                cache.scratch_epoch_seconds,
                cache.ratio
            );
        }
        let _ = writeln!(md, "\n## Plots\n");
        let _ = writeln!(
            md,
            "![test accuracy per setting and seed](accuracy_by_setting.png)\n"
        );
        let _ = writeln!(md, "![accuracy vs alpha](accuracy_vs_alpha.png)\n");
        let _ = writeln!(md, "![learning curves](learning_curves.png)");
        md
    }

    /// The `## Methods` section: each arm against scratch, paired, with its cost.
    fn method_table(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Methods\n");
        let _ = writeln!(
            md,
            "Each method is a paired arm: the same seeds, initial weights, batch order and views as the student from scratch. Cost: the arm's mean training epoch (wall time, teacher reads included) over a scratch epoch.\n"
        );
        let _ = writeln!(
            md,
            "| method | test accuracy | val accuracy | vs scratch, paired [95% CI] | epoch cost vs scratch |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        let val = |r: &ModelResult| r.final_val_accuracy.map_or_else(|| "n/a".into(), pct);
        let _ = writeln!(
            md,
            "| {} | {} | {} | (control) | 1.00x |",
            self.scratch_label,
            self.accuracy_cell(&self.scratch),
            val(&self.scratch)
        );
        for m in &self.methods {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                m.label,
                self.accuracy_cell(&m.result),
                val(&m.result),
                interval_cell(m.paired_diff.as_ref()),
                m.epoch_cost
                    .map_or_else(|| "n/a".into(), |c| format!("{c:.2}x"))
            );
        }
    }

    /// Writes `report.md`, `report.json`, `learning_curves.png`, `accuracy_vs_alpha.png` and
    /// `accuracy_by_setting.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.md"), self.markdown())
            .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
        plot_learning_curves(&self.curves(), &dir.join("learning_curves.png"))?;
        plot_accuracy_vs_alpha(self, &dir.join("accuracy_vs_alpha.png"))?;
        plot_accuracy_by_setting(self, &dir.join("accuracy_by_setting.png"))?;
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

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so this cannot fail at run time.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn save_png(path: &Path, buffer: &[u8]) -> anyhow::Result<()> {
    image::save_buffer(path, buffer, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("cannot write plot {}", path.display()))
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// Validation accuracy per epoch of every run.
pub fn plot_learning_curves(curves: &[RunCurve], path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let epochs = curves
            .iter()
            .map(|c| c.val_accuracy.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let lo = curves
            .iter()
            .flat_map(|c| c.val_accuracy.iter().copied())
            .fold(1.0, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption("Validation accuracy per epoch", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(1f64..epochs as f64, (lo - 0.02).max(0.0)..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (i, curve) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if i < 2 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(
                    curve
                        .val_accuracy
                        .iter()
                        .enumerate()
                        .map(|(e, &a)| ((e + 1) as f64, a)),
                    color.stroke_width(width),
                ))
                .map_err(plot_error)?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}

/// The KD points of a report as `(alpha, temperature, t2, mean, std)`.
fn kd_points(report: &Report) -> Vec<(f64, f64, bool, f64, f64)> {
    report
        .distilled
        .iter()
        .filter_map(|d| match d.loss {
            DistillLoss::Kd {
                alpha,
                temperature,
                t2_scaling,
            } => Some((
                alpha,
                temperature,
                t2_scaling,
                d.accuracy(),
                d.result.accuracy_std,
            )),
            _ => None,
        })
        .collect()
}

/// Final test accuracy against alpha, one line per (T, T²) setting with ± one std whiskers over
/// seeds, with the scratch student and the teacher as horizontal references.
pub fn plot_accuracy_vs_alpha(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font();
    let kd = kd_points(report);
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let accs: Vec<f64> = kd
            .iter()
            .flat_map(|p| [p.3 - p.4, p.3 + p.4])
            .chain([report.scratch.accuracy, report.teacher.accuracy])
            .collect();
        let lo = accs.iter().copied().fold(1.0, f64::min);
        let hi = accs.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.01);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Test accuracy vs alpha (KD; whiskers: ± 1 std over seeds)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..1f64, (lo - pad).max(0.0)..(hi + pad).min(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("alpha (weight of the label loss)")
            .y_desc("test accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (label, value, color) in [
            ("teacher".to_string(), report.teacher.accuracy, BLACK),
            (report.scratch_label.clone(), report.scratch.accuracy, RED),
        ] {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, value), (1.0, value)],
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        let mut settings: Vec<(f64, bool)> = Vec::new();
        for p in &kd {
            if !settings.contains(&(p.1, p.2)) {
                settings.push((p.1, p.2));
            }
        }
        for (i, (temperature, t2)) in settings.into_iter().enumerate() {
            let color = Palette99::pick(i + 2).to_rgba();
            let mut line: Vec<(f64, f64, f64)> = kd
                .iter()
                .filter(|p| p.1 == temperature && p.2 == t2)
                .map(|p| (p.0, p.3, p.4))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    line.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(format!(
                    "distilled, T={temperature}{}",
                    if t2 { ", T²" } else { "" }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&(a, m, sd)| {
                    ErrorBar::new_vertical(a, m - sd, m, m + sd, color.filled(), 8)
                }))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}

/// Test accuracy of every seed (dots) and the mean (bar) for the scratch student and each
/// distilled setting, so the seed spread is visible next to the differences.
pub fn plot_accuracy_by_setting(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut columns: Vec<(String, &ModelResult)> = vec![("scratch".into(), &report.scratch)];
    for (i, d) in report.distilled.iter().enumerate() {
        columns.push((format!("{}", i + 1), &d.result));
    }
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let all: Vec<f64> = columns
            .iter()
            .flat_map(|(_, r)| r.accuracies.iter().copied())
            .collect();
        let lo = all.iter().copied().fold(1.0, f64::min);
        let hi = all.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.005);
        let n = columns.len();
        let names: Vec<String> = columns.iter().map(|(name, _)| name.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Test accuracy per seed (dots) and mean (bar); settings numbered as in the sweep table",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo - pad).max(0.0)..(hi + pad).min(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_desc("setting")
            .y_desc("test accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (i, (_, r)) in columns.iter().enumerate() {
            let color = if i == 0 {
                RED.to_rgba()
            } else {
                Palette99::pick(i + 1).to_rgba()
            };
            let x = i as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.3, r.accuracy), (x + 0.3, r.accuracy)],
                    color.stroke_width(3),
                )))
                .map_err(plot_error)?;
            let k = r.accuracies.len().max(1) as f64;
            chart
                .draw_series(r.accuracies.iter().enumerate().map(|(j, &a)| {
                    let dx = if k > 1.0 {
                        -0.2 + 0.4 * j as f64 / (k - 1.0)
                    } else {
                        0.0
                    };
                    Circle::new((x + dx, a), 4, color.filled())
                }))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}
