//! `distill bench --data-parallel`: training throughput when the ranks of an MPI job split each
//! batch (or of one process, for the baseline), and the time of the gradient all-reduce alone
//! for every zoo model. Run it as `distill bench --data-parallel` and as `mpirun -np N distill
//! bench --data-parallel` on the same machine, and compare the tables: only ratios from one
//! machine mean anything.

use serde::Serialize;

use super::{random_split, summarize, time_ms};
use crate::data::batch_order;
use crate::distributed::{self, GradientAverage};
use crate::models::{summary::zoo_entries, ModelSpec, Network};
use crate::train::{data_parallel_train_step, train_step, Objective, OptimizerConfig};
use burn::tensor::Device;

/// One model's data-parallel training step.
#[derive(Debug, Clone, Serialize)]
pub struct ParallelTrainRow {
    /// Model name.
    pub model: String,
    /// Trainable parameters (the all-reduce moves one f32 each, plus a flag per tensor).
    pub trainable: usize,
    /// Median step over the global batch (ms), on rank 0.
    pub step_ms: f64,
    /// Images of the global batch per second.
    pub images_per_s: f64,
    /// [min, 25th percentile, median, 75th percentile, max] of the step times (ms).
    pub spread: [f64; 5],
    /// Median time of the gradient exchange within a step (ms): flattening, the all-reduce
    /// (waiting for the slowest rank included) and rebuilding the tensors; 0 for one rank.
    pub sync_ms: f64,
}

/// One zoo model's gradient all-reduce, timed alone.
#[derive(Debug, Clone, Serialize)]
pub struct AllReduceRow {
    /// Model name.
    pub model: String,
    /// Bytes each rank sends into the all-reduce per step (f32 gradients).
    pub bytes: usize,
    /// Median all-reduce time (ms); 0 in a world of one rank.
    pub allreduce_ms: f64,
    /// Forward FLOPs per image (the scaling model's compute side).
    pub flops_per_image: u64,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ParallelBenchResult {
    /// MPI ranks.
    pub ranks: usize,
    /// Compute threads per rank.
    pub threads: usize,
    /// Global batch (split evenly over the ranks).
    pub batch: usize,
    /// CPU model.
    pub cpu: String,
    /// Timed steps per model.
    pub steps: usize,
    /// Training steps.
    pub train: Vec<ParallelTrainRow>,
    /// All-reduce times of every zoo model.
    pub allreduce: Vec<AllReduceRow>,
}

/// Times `models`' training steps at global batch `batch` split over the ranks, then the
/// all-reduce of every zoo model's gradients.
pub fn run_parallel(
    models: &[ModelSpec],
    batch: usize,
    steps: usize,
    device: &Device,
) -> anyhow::Result<ParallelBenchResult> {
    let place = distributed::place();
    if batch == 0 || !batch.is_multiple_of(place.size) {
        anyhow::bail!(
            "--batch-size {batch} cannot be split evenly over {} ranks",
            place.size
        );
    }
    let mut train = Vec::new();
    for spec in models {
        train.push(time_parallel_training(spec, batch, steps, device)?);
    }
    let mut allreduce = Vec::new();
    // one rank has nothing to reduce
    let entries = if distributed::is_parallel() {
        zoo_entries([3, 32, 32])?
    } else {
        Vec::new()
    };
    for entry in entries {
        let mut values = vec![0f32; entry.trainable];
        distributed::barrier("the all-reduce benchmark", false);
        let mut samples = time_ms(2, steps, || {
            distributed::all_reduce_sum(&mut values, "the all-reduce benchmark")
        });
        allreduce.push(AllReduceRow {
            model: entry.name,
            bytes: entry.trainable * 4,
            allreduce_ms: summarize(&mut samples)[2],
            flops_per_image: entry.flops,
        });
    }
    Ok(ParallelBenchResult {
        ranks: place.size,
        threads: rayon::current_num_threads(),
        batch,
        cpu: crate::train::Compute::current().cpu,
        steps,
        train,
        allreduce,
    })
}

fn time_parallel_training(
    spec: &ModelSpec,
    batch: usize,
    steps: usize,
    device: &Device,
) -> anyhow::Result<ParallelTrainRow> {
    let train_device = device.clone().autodiff();
    let plain = device.clone().without_autodiff();
    let data = random_split(batch * 8, 1);
    let order = batch_order(data.len(), batch, true, 3, 0);
    let mut network = Some(Network::init(spec, [3, 32, 32], 0, &train_device)?);
    let averager = distributed::is_parallel()
        .then(|| GradientAverage::new(network.as_ref().expect("network")));
    let trainable = spec.stats([3, 32, 32])?.trainable;
    let mut optimizer = OptimizerConfig::default().build();
    let mut failure = None;
    let mut step = 0;
    let mut syncs = Vec::new();
    distributed::barrier("the training benchmark", false);
    let mut samples = time_ms(3, steps, || {
        let global = &order[step % order.len()];
        let indices = distributed::own_share(global);
        let current = network.take().expect("network");
        let batch = data.batch(indices, &train_device, None);
        let result = match &averager {
            Some(averager) => data_parallel_train_step(
                current,
                &mut optimizer,
                averager,
                Some(batch),
                indices,
                indices.len() as f32 / global.len() as f32,
                1e-3,
                &plain,
            ),
            None => train_step(
                current,
                &mut optimizer,
                &Objective::Labels,
                batch,
                indices,
                None,
                1e-3,
                0.0,
                1,
                &plain,
            ),
        };
        if let Some(averager) = &averager {
            syncs.push(averager.last_sync().as_secs_f64() * 1e3);
        }
        match result {
            Ok((next, _, _)) => network = Some(next),
            Err(e) => {
                failure = Some(e);
                network =
                    Some(Network::init(spec, [3, 32, 32], 0, &train_device).expect("valid spec"));
            }
        }
        step += 1;
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let spread = summarize(&mut samples);
    let timed_syncs = syncs.len().saturating_sub(steps);
    let sync_ms = match syncs.split_at_mut(timed_syncs).1 {
        [] => 0.0,
        timed => summarize(timed)[2],
    };
    Ok(ParallelTrainRow {
        sync_ms,
        model: spec.name.clone(),
        trainable,
        step_ms: spread[2],
        images_per_s: batch as f64 * 1e3 / spread[2],
        spread,
    })
}

/// The result as two text tables.
pub fn parallel_table(result: &ParallelBenchResult) -> String {
    let mut out = format!(
        "distill bench --data-parallel — {} rank(s) x {} thread(s), global batch {}, {} timed steps, {}\n",
        result.ranks, result.threads, result.batch, result.steps, result.cpu
    );
    out.push_str(&format!(
        "{:<14} {:>11} {:>10} {:>11} {:>10}  {}\n",
        "model", "trainable", "step (ms)", "images/s", "sync (ms)", "interquartile range (ms)"
    ));
    for row in &result.train {
        out.push_str(&format!(
            "{:<14} {:>11} {:>10.1} {:>11.0} {:>10.1}  [{:.1} – {:.1}]\n",
            row.model,
            row.trainable,
            row.step_ms,
            row.images_per_s,
            row.sync_ms,
            row.spread[1],
            row.spread[3]
        ));
    }
    if result.allreduce.is_empty() {
        out.push_str("\none rank: no gradient all-reduce (run under mpirun for its times)\n");
        return out;
    }
    out.push_str(&format!(
        "\ngradient all-reduce per step, {} rank(s)\n{:<14} {:>12} {:>14}\n",
        result.ranks, "model", "bytes/rank", "all-reduce ms"
    ));
    for row in &result.allreduce {
        out.push_str(&format!(
            "{:<14} {:>12} {:>14.3}\n",
            row.model, row.bytes, row.allreduce_ms
        ));
    }
    out
}
