//! Text classifier speed: `distill bench --text MODEL` times inference on fixed-shape batches of
//! random token ids (the workload `scripts/torch_text_bench.py` times in PyTorch on the same
//! weights, so the two can be compared side by side), and [`measure_text_speed`] times it on
//! real texts for `distill eval --speed`.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::{peak_rss_mb, summarize, time_ms, Speed};
use crate::data::tokenizer::TokenBatch;
use crate::modality::text::TokenizedSplit;
use crate::models::text::TextClassifier;

/// What `distill bench --text` measures.
#[derive(Debug, Clone)]
pub struct TextBenchOptions {
    /// Texts per batch of the throughput workload.
    pub batch_size: usize,
    /// Tokens per text (special tokens included); no padding.
    pub seq_len: usize,
    /// Texts per training step (forward and backward of the cross-entropy).
    pub train_batch_size: usize,
    /// Timed batches per workload.
    pub steps: usize,
    /// Untimed warm-up batches.
    pub warmup: usize,
}

/// Results of `distill bench --text`; the JSON keys match `scripts/torch_text_bench.py`'s.
#[derive(Debug, Clone, Serialize)]
pub struct TextBenchResult {
    /// The model directory.
    pub model: String,
    /// Parameters of the classifier.
    pub params: usize,
    /// Texts per batch of the throughput workload.
    pub batch_size: usize,
    /// Tokens per text.
    pub seq_len: usize,
    /// Texts per second at `batch_size` (from the median batch time).
    pub infer_texts_per_s: f64,
    /// Median milliseconds for one text alone.
    pub latency_ms: f64,
    /// Texts per training step.
    pub train_batch_size: usize,
    /// Median milliseconds of one training step (forward, cross-entropy, backward; no optimizer;
    /// word embeddings frozen).
    pub train_step_ms: f64,
    /// Per workload (`infer`, `latency`, `train`): [min, 25th percentile, median, 75th
    /// percentile, max] milliseconds per batch.
    pub spread: BTreeMap<String, [f64; 5]>,
    /// Worker threads of the compute pool.
    pub threads: usize,
    /// Backend name.
    pub backend: String,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mb: f64,
    /// Which layer implementations ran: `local` (the kernels in [`crate::kernels`]) or `burn`.
    pub layers: String,
    /// With `--compare-burn`: the same workloads timed first with burn's own layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_layers: Option<Box<TextBenchResult>>,
    /// With `--compare-burn`: per workload, burn's median time over ours.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub speedup: BTreeMap<String, f64>,
}

impl TextBenchResult {
    /// This result with `baseline` attached and the speed-up of each workload over it.
    pub fn compared_with(mut self, baseline: TextBenchResult) -> Self {
        self.speedup = self
            .spread
            .iter()
            .filter_map(|(name, ours)| {
                let theirs = baseline.spread.get(name)?;
                Some((name.clone(), theirs[2] / ours[2]))
            })
            .collect();
        self.burn_layers = Some(Box::new(baseline));
        self
    }
}

/// A `[batch, len]` batch of token ids drawn from `first_id..vocab_size` (ids below `first_id`
/// are BERT's special and unused tokens), with no padding.
pub fn random_token_batch(
    batch: usize,
    len: usize,
    vocab_size: usize,
    seed: u64,
    device: &Device,
) -> TokenBatch {
    let first_id = 1000.min(vocab_size.saturating_sub(1));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..batch * len)
        .map(|_| rng.random_range(first_id..vocab_size) as i64)
        .collect();
    TokenBatch {
        ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), device),
        padding: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; batch * len], [batch, len]),
            device,
        ),
    }
}

/// Times `model` (on an autodiff device): inference on batches of `options.batch_size` texts and
/// on single texts, and training steps on `options.train_batch_size` texts, all
/// `options.seq_len` tokens long.
pub fn run_text(
    model: &TextClassifier,
    name: &str,
    vocab_size: usize,
    options: &TextBenchOptions,
    backend: &str,
) -> TextBenchResult {
    let device = model.head.weight.device();
    let plain = device.clone().without_autodiff();
    let inference = model.valid();
    let mut spread = BTreeMap::new();
    let mut record = |workload: &str, mut samples: Vec<f64>| {
        let summary = summarize(&mut samples);
        spread.insert(workload.to_string(), summary);
        summary[2]
    };
    let mut infer_ms = |workload: &str, batch: usize| {
        let input = random_token_batch(batch, options.seq_len, vocab_size, 0, &plain);
        let samples = time_ms(options.warmup, options.steps, || {
            let _ = inference.forward(&input).into_data();
        });
        record(workload, samples)
    };
    let batch_ms = infer_ms("infer", options.batch_size);
    let latency_ms = infer_ms("latency", 1);
    let batch = options.train_batch_size;
    let input = random_token_batch(batch, options.seq_len, vocab_size, 1, &device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 2).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let loss = CrossEntropyLossConfig::new().init(&device);
    // The word embeddings frozen, as the text study fine-tunes (their dense gradient would
    // otherwise dominate the step).
    let mut trainable = model.clone();
    let words = trainable.encoder.word_embeddings_mut();
    words.weight = words.weight.clone().set_require_grad(false);
    let train_step_ms = record(
        "train",
        time_ms(options.warmup, options.steps, || {
            let logits = trainable.forward(&input);
            let _ = loss.forward(logits, labels.clone()).backward();
        }),
    );
    TextBenchResult {
        model: name.to_string(),
        params: model.num_params(),
        batch_size: options.batch_size,
        seq_len: options.seq_len,
        infer_texts_per_s: options.batch_size as f64 * 1e3 / batch_ms,
        latency_ms,
        train_batch_size: batch,
        train_step_ms,
        spread,
        threads: rayon::current_num_threads(),
        backend: backend.to_string(),
        peak_rss_mb: peak_rss_mb(),
        layers: if crate::kernels::active(&device) {
            "local"
        } else {
            "burn"
        }
        .to_string(),
        burn_layers: None,
        speedup: BTreeMap::new(),
    }
}

/// `result` as a plain-text table.
pub fn text_table(result: &TextBenchResult) -> String {
    let spread = |key: &str| {
        result
            .spread
            .get(key)
            .map(|[min, q1, _, q3, max]| {
                format!("min {min:.2}, q1 {q1:.2}, q3 {q3:.2}, max {max:.2} ms")
            })
            .unwrap_or_default()
    };
    let mut out = format!(
        "{} ({} parameters), {} thread(s), backend {}, peak RSS {:.0} MiB\n",
        result.model, result.params, result.threads, result.backend, result.peak_rss_mb
    );
    out.push_str(&format!(
        "{:<40} {:>16}  spread per batch\n",
        "workload", "median"
    ));
    let rows = [
        (
            format!(
                "inference, {} x {} tokens",
                result.batch_size, result.seq_len
            ),
            format!("{:.1} texts/s", result.infer_texts_per_s),
            "infer",
        ),
        (
            format!("latency, 1 x {} tokens", result.seq_len),
            format!("{:.2} ms", result.latency_ms),
            "latency",
        ),
        (
            format!(
                "training step, {} x {} tokens",
                result.train_batch_size, result.seq_len
            ),
            format!("{:.1} ms", result.train_step_ms),
            "train",
        ),
    ];
    for (workload, median, key) in rows {
        out.push_str(&format!("{workload:<40} {median:>16}  {}\n", spread(key)));
    }
    if let Some(burn) = &result.burn_layers {
        out.push_str(&format!(
            "\nwith burn's layers (same run): {:.1} texts/s, {:.2} ms latency, {:.1} ms per training step\n",
            burn.infer_texts_per_s, burn.latency_ms, burn.train_step_ms
        ));
        for (name, speedup) in &result.speedup {
            out.push_str(&format!(
                "speed-up of the local kernels, {name}: {speedup:.2}x\n"
            ));
        }
    }
    out
}

/// Times a text classifier in inference mode on real texts: the median latency of one text (the
/// first 21 texts of `split`, after 3 warm-up calls) and the throughput of one pass over all of
/// `split` in batches of 64, in split order (so batches pad as they would in use).
pub fn measure_text_speed(
    model: &TextClassifier,
    split: &TokenizedSplit,
    device: &Device,
) -> Speed {
    use crate::modality::{text::Text, Modality};
    let plain = device.clone().without_autodiff();
    let model = model.valid();
    let run = |indices: &[usize]| {
        let (input, _) = Text::batch(split, indices, &plain, None);
        let start = Instant::now();
        let _ = model.forward(&input).into_data();
        start.elapsed().as_secs_f64()
    };
    let singles = split.len().min(21);
    for i in 0..split.len().min(3) {
        run(&[i]);
    }
    let mut times: Vec<f64> = (0..singles).map(|i| run(&[i])).collect();
    times.sort_by(f64::total_cmp);
    let latency = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let all: Vec<usize> = (0..split.len()).collect();
    let total: f64 = all.chunks(64).map(run).sum();
    Speed {
        latency_ms: latency * 1e3,
        throughput_ips: split.len() as f64 / total,
    }
}
