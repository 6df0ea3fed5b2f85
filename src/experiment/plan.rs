//! The plan of a study: its config turned into the list of arms and runs, a pure function.
//!
//! Every arm trains one run per seed into `out/<dir>/seed-S`; seed `s` gives every arm the same
//! initial weights, batch order, views and dropout stream (the pairing). The order of the list
//! is the order every process visits the runs, so `--jobs` workers split them consistently.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ExperimentConfig, GridPoint};
use crate::losses::DistillLoss;
use crate::methods::FeatureMethod;

fn one() -> f64 {
    1.0
}

/// One `[[method]]` entry of a study: a paired arm trained with a feature method, a loss on the
/// logits, or both (`features` and `logits` together: CRD+KD, say).
///
/// ```toml
/// [[method]]
/// features = { kind = "at" }                 # beta 1000, p 2, stage1..stage3
///
/// [[method]]
/// name = "crd+kd"
/// features = { kind = "crd" }
/// logits = { kind = "kd", alpha = 0.5, temperature = 4.0, t2_scaling = true }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodArm {
    /// Directory and report name (letters, digits, `-`, `_`, `+`, `.`); derived when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A feature method and its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureMethod>,
    /// A loss on the logits (KD, DKD, logit MSE), alone or beside the feature method; it then
    /// weighs the label cross-entropy itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<DistillLoss>,
    /// Weight of the label cross-entropy beside a feature method without `logits`.
    #[serde(default = "one")]
    pub ce_weight: f64,
}

impl MethodArm {
    /// Checks the entry; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.features.is_none() && self.logits.is_none() {
            return Err("a [[method]] needs `features`, `logits` or both".into());
        }
        if let Some(f) = &self.features {
            f.validate()?;
        }
        if let Some(l) = &self.logits {
            l.validate().map_err(|e| format!("logits: {e}"))?;
        }
        crate::methods::check_weight("ce_weight", self.ce_weight)?;
        if let Some(name) = &self.name {
            let fine = |c: char| c.is_ascii_alphanumeric() || "-_+.".contains(c);
            if name.is_empty() || !name.chars().all(fine) || name.starts_with('.') {
                return Err(format!(
                    "method name `{name}`: use letters, digits, `-`, `_`, `+` and `.` (it names a directory)"
                ));
            }
        }
        Ok(())
    }

    /// Its directory and report name: `name`, else the method's (`at`, `crd+kd-a0.5-T4-t2`,
    /// `a0.5-T4-t2` for KD alone).
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let logits = self.logits.map(|loss| GridPoint { loss }.dir_name());
        match (&self.features, logits) {
            (Some(f), Some(l)) if l.starts_with('a') => format!("{}+kd-{l}", f.name()),
            (Some(f), Some(l)) => format!("{}+{l}", f.name()),
            (Some(f), None) => f.name().to_string(),
            (None, Some(l)) => l,
            (None, None) => "method".into(),
        }
    }

    /// A readable description: `AT`, `CRD + KD alpha 0.5, T 4, T² on`.
    pub fn label(&self) -> String {
        let features = self.features.as_ref().map(|f| match f {
            FeatureMethod::Fitnets(_) => "FitNets",
            FeatureMethod::At(_) => "AT",
            FeatureMethod::Rkd(_) => "RKD",
            FeatureMethod::Crd(_) => "CRD",
        });
        let logits = self.logits.map(|loss| GridPoint { loss }.label());
        match (features, logits) {
            (Some(f), Some(l)) => format!("{f} + {l}"),
            (Some(f), None) => f.to_string(),
            (None, Some(l)) => l,
            (None, None) => "method".into(),
        }
    }
}

/// What an arm is trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum ArmKind {
    /// Labels alone (the control every other arm is paired with).
    Scratch,
    /// A point of the `[sweep]` grid.
    Sweep(GridPoint),
    /// A `[[method]]` entry.
    Method(MethodArm),
}

/// One arm of the study: its runs, one per seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedArm {
    /// What it is trained on.
    pub kind: ArmKind,
    /// Its directory under the study's `out`; runs go to `dir/seed-S`.
    pub dir: PathBuf,
    /// Its report name.
    pub name: String,
    /// Its readable description.
    pub label: String,
    /// Training epochs of each run.
    pub epochs: usize,
    /// One run per seed.
    pub seeds: Vec<u64>,
}

impl PlannedArm {
    /// The run directories, in seed order.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        self.seeds
            .iter()
            .map(|s| self.dir.join(format!("seed-{s}")))
            .collect()
    }
}

/// The arms of a study without `sweep.chain`, in visiting order: scratch, the sweep's points,
/// the `[[method]]` entries. (A chain's stages depend on each other and are planned by the
/// runner, stage by stage.)
pub fn plan(config: &ExperimentConfig) -> Vec<PlannedArm> {
    let seeds = super::seeds(config);
    let mut arms = vec![PlannedArm {
        kind: ArmKind::Scratch,
        dir: PathBuf::from("scratch"),
        name: "scratch".into(),
        label: "student from scratch".into(),
        epochs: config.student.epochs,
        seeds: seeds.clone(),
    }];
    for point in config.grid() {
        arms.push(PlannedArm {
            kind: ArmKind::Sweep(point),
            dir: PathBuf::from("distilled").join(point.dir_name()),
            name: point.dir_name(),
            label: point.label(),
            epochs: config.student.distilled_epochs(),
            seeds: seeds.clone(),
        });
    }
    for method in &config.methods {
        arms.push(PlannedArm {
            dir: PathBuf::from("methods").join(method.name()),
            name: format!("method-{}", method.name()),
            label: method.label(),
            epochs: config.student.distilled_epochs(),
            seeds: seeds.clone(),
            kind: ArmKind::Method(method.clone()),
        });
    }
    arms
}
