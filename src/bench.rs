//! `distill bench`: step times and throughput of the reference workloads on random CIFAR-shaped
//! data (batch 64 for training, 256 for inference), medians after warm-up, with the spread.
//!
//! The numbers are comparable with the Keras harness in `../shared/keras-reference/bench.py`
//! when both run on the same machine with the same thread count.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::data::{batch_order, Split};
use crate::distill::{Teacher, TeacherLogits};
use crate::losses::DistillLoss;
use crate::models::taps::taps;
use crate::models::{zoo, Feature, ModelSpec, Network};
use crate::train::{train_step, Objective, OptimizerConfig};

mod parallel;
mod text;
pub use parallel::{
    parallel_table, run_parallel, AllReduceRow, ParallelBenchResult, ParallelTrainRow,
};
pub use text::{measure_text_speed, run_text, text_table, TextBenchOptions, TextBenchResult};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed steps per training workload (at least 20 recommended).
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
}

/// Results; the JSON keys are stable (see the README's performance section).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Median teacher-v3 training step, batch 64 (ms).
    pub teacher_train_ms: f64,
    /// Median student training step, batch 64 (ms).
    pub student_train_ms: f64,
    /// Median distillation step with the teacher's forward pass at every step (ms).
    pub distill_live_ms: f64,
    /// Median distillation step with teacher logits from the cache (ms).
    pub distill_cached_ms: f64,
    /// teacher-v3 inference, batch 256 (images/s, from the median batch time).
    pub teacher_infer_ips: f64,
    /// Student inference, batch 256 (images/s).
    pub student_infer_ips: f64,
    /// Batches of 64 CIFAR-shaped images per second out of the loader (u8 → f32 tensor).
    pub loader_batches_per_s: f64,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mb: f64,
    /// Worker threads of the compute pool.
    pub threads: usize,
    /// Backend name.
    pub backend: String,
    /// Timed steps per workload.
    pub steps: usize,
    /// Per workload: [min, 25th percentile, median, 75th percentile, max] of the timed samples
    /// (ms per step or per batch).
    pub spread: BTreeMap<String, [f64; 5]>,
    /// Which layer implementations ran: `local` (the kernels in [`crate::kernels`]) or `burn`.
    pub layers: String,
    /// With `--compare-burn`: the same workloads timed first with burn's own layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_layers: Option<Box<BenchResult>>,
    /// With `--compare-burn`: per workload, how many times faster the local kernels are (burn's
    /// median time over ours).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub speedup: BTreeMap<String, f64>,
}

impl BenchResult {
    /// Medians in milliseconds per workload (throughputs converted back to ms per batch).
    fn medians_ms(&self) -> [(&'static str, f64); 7] {
        [
            ("teacher_train", self.teacher_train_ms),
            ("student_train", self.student_train_ms),
            ("distill_live", self.distill_live_ms),
            ("distill_cached", self.distill_cached_ms),
            ("teacher_infer", 256e3 / self.teacher_infer_ips),
            ("student_infer", 256e3 / self.student_infer_ips),
            ("loader", 1e3 / self.loader_batches_per_s),
        ]
    }

    /// This result with `baseline` attached and the speed-up of each workload over it.
    pub fn compared_with(mut self, baseline: BenchResult) -> Self {
        self.speedup = speedups(&self.medians_ms(), &baseline.medians_ms());
        self.burn_layers = Some(Box::new(baseline));
        self
    }
}

/// A random CIFAR-shaped split (3x32x32, 10 classes).
pub fn random_split(len: usize, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let images = (0..len * 3 * 32 * 32).map(|_| rng.random::<u8>()).collect();
    let labels = (0..len).map(|_| rng.random_range(0..10u32)).collect();
    Split {
        shape: [3, 32, 32],
        images,
        labels,
    }
}

fn summarize(samples: &mut [f64]) -> [f64; 5] {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]
}

fn time_ms(warmup: usize, runs: usize, mut work: impl FnMut()) -> Vec<f64> {
    (0..warmup + runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64() * 1e3
        })
        .skip(warmup)
        .collect()
}

/// Peak resident set size of this process in MiB (`VmHWM`; 0 where /proc is missing).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs every workload on `device`.
pub fn run(options: &BenchOptions, device: &Device, backend: &str) -> anyhow::Result<BenchResult> {
    let plain = device.clone().without_autodiff();
    let train_device = device.clone().autodiff();
    let data = random_split(1024, 1);
    let mut spread = BTreeMap::new();
    let mut median = |name: &str, mut samples: Vec<f64>| {
        let summary = summarize(&mut samples);
        spread.insert(name.to_string(), summary);
        summary[2]
    };
    let order = batch_order(data.len(), 64, true, 3, 0);
    let batch = |step: usize, dev: &Device| data.batch(&order[step % order.len()], dev, None);

    let train_ms = |spec_name: &str, objective: &Objective| {
        let spec = zoo::get(spec_name).expect("zoo model");
        time_training(&spec, objective, options, &data, &order, &train_device)
    };

    let student_train = train_ms("student", &Objective::Labels)?;
    let teacher_net = Network::init(
        &zoo::get("teacher-v3").expect("zoo"),
        [3, 32, 32],
        0,
        &plain,
    )?;
    let teacher = Teacher::from_network(&teacher_net, [3, 32, 32], 10);
    let loss = DistillLoss::Kd {
        alpha: 0.1,
        temperature: 10.0,
        t2_scaling: true,
    };
    let cached = TeacherLogits::Cached {
        teacher_hash: teacher.hash.clone(),
        classes: 10,
        values: teacher.logits_all(&data, &plain, false)?,
    };
    let distill_cached = train_ms(
        "student",
        &Objective::Distill {
            loss,
            teacher: &cached,
            hidden: None,
        },
    )?;
    let live = TeacherLogits::Live(teacher);
    let distill_live = train_ms(
        "student",
        &Objective::Distill {
            loss,
            teacher: &live,
            hidden: None,
        },
    )?;
    let teacher_train = train_ms("teacher-v3", &Objective::Labels)?;

    let infer = |network: &Network, runs: usize| time_inference(network, runs, &plain);
    let student_net = Network::init(&zoo::get("student").expect("zoo"), [3, 32, 32], 0, &plain)?;
    let infer_runs = (options.steps / 2).max(5);
    let teacher_infer = infer(&teacher_net, infer_runs);
    let student_infer = infer(&student_net, infer_runs);
    let loader = time_ms(2, options.steps.max(20), {
        let mut step = 0;
        move || {
            let _ = batch(step, &plain);
            step += 1;
        }
    });

    Ok(BenchResult {
        teacher_train_ms: median("teacher_train_ms", teacher_train),
        student_train_ms: median("student_train_ms", student_train),
        distill_live_ms: median("distill_live_ms", distill_live),
        distill_cached_ms: median("distill_cached_ms", distill_cached),
        teacher_infer_ips: 256.0 / (median("teacher_infer_ms_per_batch", teacher_infer) / 1e3),
        student_infer_ips: 256.0 / (median("student_infer_ms_per_batch", student_infer) / 1e3),
        loader_batches_per_s: 1e3 / median("loader_ms_per_batch", loader),
        peak_rss_mb: peak_rss_mb(),
        threads: rayon::current_num_threads(),
        backend: backend.into(),
        steps: options.steps,
        spread,
        layers: if crate::kernels::active(device) {
            "local"
        } else {
            "burn"
        }
        .into(),
        burn_layers: None,
        speedup: BTreeMap::new(),
    })
}

/// Training steps of `spec` (batch 64 from `order` over `data`, learning rate 1e-3), timed.
fn time_training(
    spec: &ModelSpec,
    objective: &Objective,
    options: &BenchOptions,
    data: &Split,
    order: &[Vec<usize>],
    train_device: &Device,
) -> anyhow::Result<Vec<f64>> {
    let plain = train_device.clone().without_autodiff();
    let mut network = Some(Network::init(spec, [3, 32, 32], 0, train_device)?);
    let mut optimizer = OptimizerConfig::default().build();
    let mut step = 0;
    let mut failure = None;
    let samples = time_ms(options.warmup, options.steps, || {
        let indices = &order[step % order.len()];
        let result = train_step(
            network.take().expect("network"),
            &mut optimizer,
            objective,
            data.batch(indices, train_device, None),
            indices,
            None,
            1e-3,
            0.0,
            1,
            &plain,
        );
        match result {
            Ok((next, _, _)) => network = Some(next),
            Err(e) => {
                failure = Some(e);
                network =
                    Some(Network::init(spec, [3, 32, 32], 0, train_device).expect("valid spec"));
            }
        }
        step += 1;
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

/// Inference passes of `network` over a batch of 256 CIFAR-shaped zeros, timed.
fn time_inference(network: &Network, runs: usize, plain: &Device) -> Vec<f64> {
    let model = network.valid();
    let x = Tensor::<4>::zeros([256, 3, 32, 32], plain);
    time_ms(1, runs, || {
        let _ = model.forward(x.clone()).into_data();
    })
}

/// `distill bench --model`: one architecture's training step and inference on CIFAR-shaped data.
#[derive(Debug, Clone, Serialize)]
pub struct ModelBenchResult {
    /// The model's name (from its spec).
    pub model: String,
    /// Median training step, batch 64 (ms).
    pub train_ms: f64,
    /// Inference at batch 256 (images/s, from the median batch time).
    pub infer_ips: f64,
    /// Median forward pass at batch 64 that reads every feature tap (the stages and the
    /// embedding), as a feature method's teacher runs at each step (ms).
    pub features_ms: f64,
    /// The same pass layer by layer, without the direct inference kernels (ms).
    pub features_layerwise_ms: f64,
    /// Worker threads of the compute pool.
    pub threads: usize,
    /// Backend name.
    pub backend: String,
    /// Timed steps per workload.
    pub steps: usize,
    /// Per workload: [min, 25th percentile, median, 75th percentile, max] (ms per step or batch).
    pub spread: BTreeMap<String, [f64; 5]>,
    /// Which layer implementations ran: `local` or `burn`.
    pub layers: String,
    /// With `--compare-burn`: the same workloads timed first with burn's own layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_layers: Option<Box<ModelBenchResult>>,
    /// With `--compare-burn`: per workload, burn's median time over ours.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub speedup: BTreeMap<String, f64>,
}

impl ModelBenchResult {
    /// Joins a run on the local kernels with `baseline`, the same run on burn's layers.
    pub fn compared_with(mut self, baseline: ModelBenchResult) -> Self {
        let ms = |r: &ModelBenchResult| {
            [
                ("train", r.train_ms),
                ("infer", 256e3 / r.infer_ips),
                ("features", r.features_ms),
                ("features_layerwise", r.features_layerwise_ms),
            ]
        };
        self.speedup = speedups(&ms(&self), &ms(&baseline));
        self.burn_layers = Some(Box::new(baseline));
        self
    }
}

/// Times `spec`'s training step (batch 64) and inference (batch 256) on random CIFAR-shaped data.
pub fn run_model(
    spec: &ModelSpec,
    options: &BenchOptions,
    device: &Device,
    backend: &str,
) -> anyhow::Result<ModelBenchResult> {
    let plain = device.clone().without_autodiff();
    let data = random_split(1024, 1);
    let order = batch_order(data.len(), 64, true, 3, 0);
    let mut train = time_training(
        spec,
        &Objective::Labels,
        options,
        &data,
        &order,
        &device.clone().autodiff(),
    )?;
    let network = Network::init(spec, [3, 32, 32], 0, &plain)?;
    let runs = (options.steps / 2).max(5);
    let mut infer = time_inference(&network, runs, &plain);
    let taps: Vec<usize> = taps(spec, [3, 32, 32])?.iter().map(|t| t.layer).collect();
    let x = Tensor::<4>::zeros([64, 3, 32, 32], &plain);
    let read = |(logits, features): (Tensor<2>, Vec<Feature>)| {
        let _ = logits.into_data();
        features
            .into_iter()
            .for_each(|f| drop(f.flat().into_data()));
    };
    let mut features = time_ms(1, runs, || read(network.forward_tapped(x.clone(), &taps)));
    let mut features_layerwise = time_ms(1, runs, || {
        read(network.forward_tapped_layerwise(x.clone(), &taps))
    });
    let (train_summary, infer_summary) = (summarize(&mut train), summarize(&mut infer));
    let features_summary = summarize(&mut features);
    let features_layerwise_summary = summarize(&mut features_layerwise);
    Ok(ModelBenchResult {
        model: spec.name.clone(),
        train_ms: train_summary[2],
        infer_ips: 256e3 / infer_summary[2],
        features_ms: features_summary[2],
        features_layerwise_ms: features_layerwise_summary[2],
        threads: rayon::current_num_threads(),
        backend: backend.into(),
        steps: options.steps,
        spread: BTreeMap::from([
            ("train_ms".to_string(), train_summary),
            ("infer_ms_per_batch".to_string(), infer_summary),
            ("features_ms".to_string(), features_summary),
            (
                "features_layerwise_ms".to_string(),
                features_layerwise_summary,
            ),
        ]),
        layers: if crate::kernels::active(device) {
            "local"
        } else {
            "burn"
        }
        .into(),
        burn_layers: None,
        speedup: BTreeMap::new(),
    })
}

/// One workload row of a bench table: label, median as text, interquartile range as text, and
/// the key of its speed-up.
type Row = (&'static str, String, String, &'static str);

/// The interquartile range of one workload's samples, as a table cell.
fn interquartile(spread: &BTreeMap<String, [f64; 5]>, key: &str) -> String {
    spread
        .get(key)
        .map(|v| format!("[{:.2} – {:.2}]", v[1], v[3]))
        .unwrap_or_default()
}

/// Per workload, the baseline's median time over ours.
fn speedups(ours: &[(&'static str, f64)], theirs: &[(&'static str, f64)]) -> BTreeMap<String, f64> {
    ours.iter()
        .zip(theirs)
        .map(|((name, ours), (_, theirs))| (name.to_string(), theirs / ours))
        .collect()
}

/// Renders `rows` under `title` with a label column `width` wide; with `baseline` (the same rows
/// timed on burn's layers), both columns and the speed-up.
fn render_rows(
    title: String,
    width: usize,
    rows: Vec<Row>,
    baseline: Option<Vec<Row>>,
    speedup: &BTreeMap<String, f64>,
) -> String {
    let mut out = title;
    match baseline {
        None => {
            out.push_str(&format!(
                "{:<width$} {:>16}  {}\n",
                "workload", "median", "interquartile range (ms)"
            ));
            for (name, value, spread, _) in rows {
                out.push_str(&format!("{name:<width$} {value:>16}  {spread}\n"));
            }
        }
        Some(baseline) => {
            out.push_str(&format!(
                "{:<width$} {:>16} {:>16} {:>9}  {}\n",
                "workload",
                "local kernels",
                "burn layers",
                "speed-up",
                "interquartile ranges (ms): local; burn"
            ));
            for ((name, value, spread, key), (_, theirs, their_spread, _)) in
                rows.into_iter().zip(baseline)
            {
                let ratio = speedup
                    .get(key)
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{name:<width$} {value:>16} {theirs:>16} {ratio:>9}  {spread}; {their_spread}\n"
                ));
            }
        }
    }
    out
}

/// [`run_model`]'s result as a text table (with `--compare-burn`, burn's layers alongside).
pub fn model_table(result: &ModelBenchResult) -> String {
    let rows = |r: &ModelBenchResult| -> Vec<Row> {
        let ms = |label, median: f64, spread_key, key| {
            let spread = interquartile(&r.spread, spread_key);
            (label, format!("{median:.1} ms"), spread, key)
        };
        vec![
            ms("train step", r.train_ms, "train_ms", "train"),
            (
                "inference",
                format!("{:.0} img/s", r.infer_ips),
                interquartile(&r.spread, "infer_ms_per_batch"),
                "infer",
            ),
            ms("taps read", r.features_ms, "features_ms", "features"),
            ms(
                "  layerwise",
                r.features_layerwise_ms,
                "features_layerwise_ms",
                "features_layerwise",
            ),
        ]
    };
    let title = format!(
        "distill bench --model {} — backend {}, {} thread(s), {} timed steps, batch 64 (train, taps read) / 256 (inference), 3x32x32 inputs; \"taps read\": a forward pass reading every feature tap, as a feature method's teacher at each step (\"layerwise\": without the direct kernels)\n",
        result.model, result.backend, result.threads, result.steps
    );
    render_rows(
        title,
        14,
        rows(result),
        result.burn_layers.as_deref().map(rows),
        &result.speedup,
    )
}

/// The result as a text table (with `--compare-burn`, burn's layers and the speed-up alongside).
pub fn table(result: &BenchResult) -> String {
    let rows = |r: &BenchResult| -> Vec<Row> {
        let range = |key: &str| interquartile(&r.spread, key);
        vec![
            (
                "teacher-v3 train step",
                format!("{:.1} ms", r.teacher_train_ms),
                range("teacher_train_ms"),
                "teacher_train",
            ),
            (
                "student train step",
                format!("{:.1} ms", r.student_train_ms),
                range("student_train_ms"),
                "student_train",
            ),
            (
                "distill step, teacher live",
                format!("{:.1} ms", r.distill_live_ms),
                range("distill_live_ms"),
                "distill_live",
            ),
            (
                "distill step, cached logits",
                format!("{:.1} ms", r.distill_cached_ms),
                range("distill_cached_ms"),
                "distill_cached",
            ),
            (
                "teacher-v3 inference",
                format!("{:.0} img/s", r.teacher_infer_ips),
                range("teacher_infer_ms_per_batch"),
                "teacher_infer",
            ),
            (
                "student inference",
                format!("{:.0} img/s", r.student_infer_ips),
                range("student_infer_ms_per_batch"),
                "student_infer",
            ),
            (
                "loader (CIFAR-shaped)",
                format!("{:.0} batches/s", r.loader_batches_per_s),
                range("loader_ms_per_batch"),
                "loader",
            ),
            (
                "peak RSS",
                format!("{:.0} MiB", r.peak_rss_mb),
                String::new(),
                "",
            ),
        ]
    };
    let title = format!(
        "distill bench — backend {}, {} thread(s), {} timed steps, batch 64 (train) / 256 (inference), {} layers\n",
        result.backend, result.threads, result.steps, result.layers
    );
    render_rows(
        title,
        30,
        rows(result),
        result.burn_layers.as_deref().map(rows),
        &result.speedup,
    )
}

/// Inference speed of one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Speed {
    /// Median milliseconds per image at batch size 1.
    pub latency_ms: f64,
    /// Median images per second at batch size 256 (7 timed runs after 2 warm-up runs).
    pub throughput_ips: f64,
}

/// Times `network` in inference mode on zeros of shape `input` (the study runner measures every
/// architecture with it; the report only renders the numbers).
pub fn measure_speed(network: &Network, input: [usize; 3], device: &Device) -> Speed {
    let model = network.valid();
    measure_speed_of(|x| Ok(model.forward(x)), input, device)
        .expect("a native network's forward pass cannot fail")
}

/// [`measure_speed`] for any function from images to logits (a classifier on another engine).
pub fn measure_speed_of(
    forward: impl Fn(Tensor<4>) -> anyhow::Result<Tensor<2>>,
    input: [usize; 3],
    device: &Device,
) -> anyhow::Result<Speed> {
    let plain = device.clone().without_autodiff();
    let [c, h, w] = input;
    let median_seconds = |batch: usize, warmup: usize, runs: usize| -> anyhow::Result<f64> {
        let x = Tensor::<4>::zeros([batch, c, h, w], &plain);
        let mut times = Vec::with_capacity(runs);
        for run in 0..warmup + runs {
            let start = Instant::now();
            let _ = forward(x.clone())?.into_data();
            if run >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let latency = median_seconds(1, 3, 21)?;
    let batch = median_seconds(256, 2, 7)?;
    Ok(Speed {
        latency_ms: latency * 1e3,
        throughput_ips: 256.0 / batch,
    })
}
