//! The executor of a study: trains the planned arms through the one training loop, each run
//! resuming from its own checkpoints, and hands back where each run lives. What a run is trained
//! on differs between image and text studies ([`ArmTrainer`]); the visiting order, the sharding
//! between `--jobs` workers and the directories do not.

use std::path::{Path, PathBuf};

use super::plan::{ArmKind, PlannedArm};
use super::Shard;
use crate::train::EpochRecord;

/// Trains one run of an arm: the part of a study that depends on its modality.
pub(super) trait ArmTrainer {
    /// The scratch student's name, for the log.
    fn scratch_name(&self) -> String;

    /// What the log announces before each run of `arm` (`student `x` from scratch`, ...).
    fn announce(&self, arm: &PlannedArm) -> String {
        match &arm.kind {
            ArmKind::Scratch => format!("student `{}` from scratch", self.scratch_name()),
            ArmKind::Sweep(point) => format!("distilled student: {}", point.label()),
            ArmKind::Method(_) => format!("method: {}", arm.label),
        }
    }

    /// Trains (or resumes, or finds finished) the run of `arm` for `seed` in `dir`; returns its
    /// history.
    fn train(
        &mut self,
        arm: &PlannedArm,
        seed: u64,
        dir: &Path,
    ) -> anyhow::Result<Vec<EpochRecord>>;

    /// Called once an arm's runs in this process are done (to free what only it needed).
    fn finished(&mut self, arm: &PlannedArm) {
        let _ = arm;
    }
}

/// An arm and the runs of it this process trained.
pub(super) struct TrainedArm {
    /// The arm.
    pub(super) arm: PlannedArm,
    /// Its runs.
    pub(super) runs: ArmRuns,
}

/// Trains every arm of `arms`, in order, into `out` (this process's share under a shard).
pub(super) fn execute(
    arms: Vec<PlannedArm>,
    out: &Path,
    plan: &RunPlan,
    trainer: &mut dyn ArmTrainer,
) -> anyhow::Result<Vec<TrainedArm>> {
    let mut trained = Vec::with_capacity(arms.len());
    for arm in arms {
        let label = trainer.announce(&arm);
        let runs = ArmRuns::train(
            &arm.seeds,
            &out.join(&arm.dir),
            &label,
            plan,
            |seed, dir| trainer.train(&arm, seed, dir),
        )?;
        trainer.finished(&arm);
        trained.push(TrainedArm { arm, runs });
    }
    Ok(trained)
}

/// Decides which student runs this process trains: all of them, or those of its shard. Runs are
/// numbered in the order every process visits them, so the shards are disjoint and cover all.
pub(super) struct RunPlan {
    shard: Option<Shard>,
    next: std::cell::Cell<usize>,
}

impl RunPlan {
    pub(super) fn new(shard: Option<Shard>) -> Self {
        RunPlan {
            shard,
            next: std::cell::Cell::new(0),
        }
    }

    /// Whether the next run in visiting order is this process's to train.
    pub(super) fn take(&self) -> bool {
        let k = self.next.get();
        self.next.set(k + 1);
        self.owns(k)
    }

    /// Whether run (or seed, for chains) number `k` is this process's.
    pub(super) fn owns(&self, k: usize) -> bool {
        self.shard.is_none_or(|s| k % s.count == s.index)
    }
}

/// A trained arm: its run directories (one per seed) and histories.
#[derive(Default)]
pub(super) struct ArmRuns {
    pub(super) dirs: Vec<PathBuf>,
    pub(super) histories: Vec<Vec<EpochRecord>>,
}

impl ArmRuns {
    /// Trains (or resumes) one run per seed into `root/seed-S`, announcing each with `label`;
    /// `fit` trains one run into its directory and returns its history.
    /// With a sharded `plan`, only this process's runs train (the arm is then incomplete: a
    /// worker stops before evaluation).
    pub(super) fn train(
        seeds: &[u64],
        root: &Path,
        label: &str,
        plan: &RunPlan,
        mut fit: impl FnMut(u64, &Path) -> anyhow::Result<Vec<EpochRecord>>,
    ) -> anyhow::Result<Self> {
        let mut runs = ArmRuns::default();
        for &seed in seeds {
            if !plan.take() {
                continue;
            }
            let dir = root.join(format!("seed-{seed}"));
            println!("== {label}, seed {seed}");
            runs.histories.push(fit(seed, &dir)?);
            runs.dirs.push(dir);
        }
        Ok(runs)
    }
}
