//! The experiment report: "was distillation worth it?" as Markdown, JSON and PNG plots.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use plotters::prelude::*;
use serde::Serialize;

use crate::data::Dataset;
use crate::experiment::{ExperimentConfig, GridPoint};
use crate::models::Network;
use crate::train::EpochRecord;

/// Inference speed of one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Speed {
    /// Median milliseconds per image at batch size 1.
    pub latency_ms: f64,
    /// Median images per second at batch size 256.
    pub throughput_ips: f64,
}

/// Times `network` in inference mode on zeros of shape `input`.
pub fn measure_speed(network: &Network, input: [usize; 3], device: &Device) -> Speed {
    let plain = device.clone().without_autodiff();
    let model = network.valid();
    let [c, h, w] = input;
    let median_seconds = |batch: usize, warmup: usize, runs: usize| {
        let x = Tensor::<4>::zeros([batch, c, h, w], &plain);
        let mut times: Vec<f64> = (0..warmup + runs)
            .map(|_| {
                let start = Instant::now();
                let _ = model.forward(x.clone()).into_data();
                start.elapsed().as_secs_f64()
            })
            .skip(warmup)
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let latency = median_seconds(1, 3, 21);
    let batch = median_seconds(256, 1, 3);
    Speed {
        latency_ms: latency * 1e3,
        throughput_ips: 256.0 / batch,
    }
}

/// Test results of one model (over its seeds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    /// Run name (`teacher`, `scratch`, or the grid point).
    pub name: String,
    /// Mean test accuracy over seeds.
    pub accuracy: f64,
    /// Standard deviation of the test accuracy over seeds (0 with one seed).
    pub accuracy_std: f64,
    /// Test accuracy of each seed.
    pub accuracies: Vec<f64>,
    /// Mean test cross-entropy.
    pub loss: f64,
    /// Parameters.
    pub params: usize,
    /// Bytes of f32 weights.
    pub bytes: usize,
    /// Inference speed.
    pub speed: Speed,
    /// Per-epoch history of each seed.
    #[serde(skip)]
    pub histories: Vec<Vec<EpochRecord>>,
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64
    } else {
        0.0
    };
    (mean, var.sqrt())
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
        ModelResult {
            name: name.into(),
            accuracy,
            accuracy_std,
            accuracies,
            loss,
            params,
            bytes,
            speed: Speed::default(),
            histories,
        }
    }

    /// The same result with its architecture's inference speed.
    pub fn with_speed(mut self, speed: Speed) -> Self {
        self.speed = speed;
        self
    }
}

/// One distilled student in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistilledResult {
    /// Label-loss weight.
    pub alpha: f64,
    /// Temperature.
    pub temperature: f64,
    /// T² scaling.
    pub t2_scaling: bool,
    /// Mean test accuracy over seeds.
    pub accuracy: f64,
    /// Its standard deviation over seeds.
    pub accuracy_std: f64,
    /// Full result.
    #[serde(flatten)]
    pub result: ModelResult,
}

/// The answer: best distilled student against the scratch student.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Winning alpha.
    pub alpha: f64,
    /// Winning temperature.
    pub temperature: f64,
    /// Winning T² setting.
    pub t2_scaling: bool,
    /// Its mean test accuracy.
    pub accuracy: f64,
    /// Accuracy minus the scratch student's (fraction, not points).
    pub gain_over_scratch: f64,
    /// Seed-to-seed spread used for the comparison (larger of the two std devs; 0 with one seed).
    pub seed_spread: f64,
    /// Whether the gain is larger than twice the spread (`None` with one seed: unknown).
    pub exceeds_spread: Option<bool>,
    /// The answer in one sentence.
    pub verdict: String,
}

/// A learning curve: validation accuracy per epoch of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCurve {
    /// Legend label.
    pub label: String,
    /// Validation accuracy after each epoch.
    pub val_accuracy: Vec<f64>,
}

/// Everything `distill run` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Dataset name, sizes, shape.
    pub dataset: crate::data::DataInfo,
    /// Backend used.
    pub backend: String,
    /// Seeds per student.
    pub seeds: usize,
    /// Student epochs.
    pub student_epochs: usize,
    /// Wall time of this invocation (small when it resumed finished runs).
    pub wall_seconds: f64,
    /// Sum of the epoch times of every run (teacher included), across resumes.
    pub training_seconds: f64,
    /// The teacher.
    pub teacher: ModelResult,
    /// The student from scratch.
    pub scratch: ModelResult,
    /// Every distilled student.
    pub distilled: Vec<DistilledResult>,
    /// The best distilled student and the verdict.
    pub best: Best,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

impl Report {
    /// Assembles the report and decides the verdict.
    pub fn build(
        config: &ExperimentConfig,
        dataset: &Dataset,
        teacher: ModelResult,
        scratch: ModelResult,
        distilled: Vec<(GridPoint, ModelResult)>,
        wall_seconds: f64,
        backend: &str,
    ) -> Self {
        let distilled: Vec<DistilledResult> = distilled
            .into_iter()
            .map(|(p, r)| DistilledResult {
                alpha: p.alpha,
                temperature: p.temperature,
                t2_scaling: p.t2_scaling,
                accuracy: r.accuracy,
                accuracy_std: r.accuracy_std,
                result: r,
            })
            .collect();
        let top = distilled
            .iter()
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .expect("the sweep has at least one point");
        let gain = top.accuracy - scratch.accuracy;
        let spread = top.accuracy_std.max(scratch.accuracy_std);
        let exceeds = (config.seeds > 1).then_some(gain.abs() > 2.0 * spread);
        let setting = format!(
            "alpha {}, T {}, {}",
            top.alpha,
            top.temperature,
            if top.t2_scaling {
                "T² scaling on"
            } else {
                "T² scaling off"
            }
        );
        let verdict = match (gain > 0.0, exceeds) {
            (true, Some(true)) => format!(
                "Distillation helped: the best distilled student ({setting}) reached {} vs {} from scratch (+{:.2} points), more than twice the seed-to-seed spread (±{:.2}).",
                pct(top.accuracy), pct(scratch.accuracy), gain * 100.0, spread * 100.0
            ),
            (true, Some(false)) => format!(
                "No clear win: the best distilled student ({setting}) reached {} vs {} from scratch (+{:.2} points), within twice the seed-to-seed spread (±{:.2}).",
                pct(top.accuracy), pct(scratch.accuracy), gain * 100.0, spread * 100.0
            ),
            (true, None) => format!(
                "The best distilled student ({setting}) reached {} vs {} from scratch (+{:.2} points); with one seed the spread is unknown, so run with --seeds 3 to tell a gain from noise.",
                pct(top.accuracy), pct(scratch.accuracy), gain * 100.0
            ),
            (false, Some(true)) => format!(
                "Distillation hurt: the best distilled student ({setting}) reached {} vs {} from scratch ({:.2} points), more than twice the seed-to-seed spread (±{:.2}).",
                pct(top.accuracy), pct(scratch.accuracy), gain * 100.0, spread * 100.0
            ),
            (false, spread_known) => format!(
                "Distillation did not help here: the best distilled student ({setting}) reached {} vs {} from scratch ({:.2} points){}",
                pct(top.accuracy),
                pct(scratch.accuracy),
                gain * 100.0,
                match spread_known {
                    Some(_) => format!(", within twice the seed-to-seed spread (±{:.2}).", spread * 100.0),
                    None => "; with one seed the spread is unknown, so run with --seeds 3 to tell a difference from noise.".to_string(),
                }
            ),
        };
        let best = Best {
            alpha: top.alpha,
            temperature: top.temperature,
            t2_scaling: top.t2_scaling,
            accuracy: top.accuracy,
            gain_over_scratch: gain,
            seed_spread: spread,
            exceeds_spread: exceeds,
            verdict,
        };
        let epoch_seconds =
            |r: &ModelResult| r.histories.iter().flatten().map(|e| e.seconds).sum::<f64>();
        let training_seconds = epoch_seconds(&teacher)
            + epoch_seconds(&scratch)
            + distilled
                .iter()
                .map(|d| epoch_seconds(&d.result))
                .sum::<f64>();
        Report {
            training_seconds,
            dataset: dataset.info(),
            backend: backend.into(),
            seeds: config.seeds,
            student_epochs: config.student.epochs,
            wall_seconds,
            teacher,
            scratch,
            distilled,
            best,
        }
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
            curves.push(curve(
                format!(
                    "a={} T={}{}",
                    d.alpha,
                    d.temperature,
                    if d.t2_scaling { " T²" } else { "" }
                ),
                &d.result,
            ));
        }
        curves
    }

    fn accuracy_cell(&self, r: &ModelResult) -> String {
        if self.seeds > 1 {
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
            "Dataset `{}`: {} train / {} test images of shape {:?}, {} classes. Students trained {} epochs, {} seed(s); backend {}; training time {:.0} s (this invocation: {:.0} s).\n",
            d.name, d.train, d.test, d.shape, d.classes.len(), self.student_epochs, self.seeds, self.backend, self.training_seconds, self.wall_seconds
        );
        let _ = writeln!(md, "## Teacher vs student\n");
        let _ = writeln!(md, "| model | test accuracy | CE loss | params | weights | latency, batch 1 | throughput, batch 256 | compression | speed-up |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let t = &self.teacher;
        let mut row = |name: String, r: &ModelResult| {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.4} | {} | {:.1} KB | {:.3} ms | {:.0} img/s | {:.1}x | {:.1}x |",
                self.accuracy_cell(r),
                r.loss,
                crate::models::summary::thousands(r.params as u64),
                r.bytes as f64 / 1024.0,
                r.speed.latency_ms,
                r.speed.throughput_ips,
                t.params as f64 / r.params.max(1) as f64,
                r.speed.throughput_ips / t.speed.throughput_ips.max(1e-9),
            );
        };
        row("teacher".into(), t);
        row("student from scratch".into(), &self.scratch);
        let top = self
            .distilled
            .iter()
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .expect("non-empty sweep");
        row(
            format!("best distilled student ({})", top.result.name),
            &top.result,
        );
        let _ = writeln!(md, "\n## Sweep\n");
        let _ = writeln!(
            md,
            "| alpha | T | T² scaling | test accuracy | vs scratch | CE loss |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for r in &self.distilled {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:+.2} | {:.4} |",
                r.alpha,
                r.temperature,
                if r.t2_scaling { "on" } else { "off" },
                self.accuracy_cell(&r.result),
                (r.accuracy - self.scratch.accuracy) * 100.0,
                r.result.loss
            );
        }
        let _ = writeln!(md, "\n## Plots\n");
        let _ = writeln!(md, "![accuracy vs alpha](accuracy_vs_alpha.png)\n");
        let _ = writeln!(md, "![learning curves](learning_curves.png)");
        md
    }

    /// Writes `report.md`, `report.json`, `learning_curves.png` and `accuracy_vs_alpha.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.md"), self.markdown())
            .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
        plot_learning_curves(&self.curves(), &dir.join("learning_curves.png"))?;
        plot_accuracy_vs_alpha(self, &dir.join("accuracy_vs_alpha.png"))?;
        Ok(())
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

/// Final test accuracy against alpha, one line per (T, T²) setting, with the scratch student and
/// the teacher as horizontal references.
pub fn plot_accuracy_vs_alpha(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let accs: Vec<f64> = report
            .distilled
            .iter()
            .map(|d| d.accuracy)
            .chain([report.scratch.accuracy, report.teacher.accuracy])
            .collect();
        let lo = accs.iter().copied().fold(1.0, f64::min);
        let hi = accs.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.01);
        let mut chart = ChartBuilder::on(&root)
            .caption("Test accuracy vs alpha", ("sans-serif", 22))
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
            (
                "student from scratch".to_string(),
                report.scratch.accuracy,
                RED,
            ),
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
        for d in &report.distilled {
            if !settings.contains(&(d.temperature, d.t2_scaling)) {
                settings.push((d.temperature, d.t2_scaling));
            }
        }
        for (i, (temperature, t2)) in settings.into_iter().enumerate() {
            let color = Palette99::pick(i + 2).to_rgba();
            let mut points: Vec<(f64, f64)> = report
                .distilled
                .iter()
                .filter(|d| d.temperature == temperature && d.t2_scaling == t2)
                .map(|d| (d.alpha, d.accuracy))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!(
                    "distilled, T={temperature}{}",
                    if t2 { ", T²" } else { "" }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
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
