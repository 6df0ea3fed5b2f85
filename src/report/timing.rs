//! Epoch times compared only between runs made under the same compute settings (threads,
//! `--jobs`, CPU model): a cost figure from unlike runs would measure the machine, not the method.
//! Each side's figure is the median epoch: an epoch that spanned a pause (a run stopped with
//! SIGSTOP while the machine measured something else, a suspended laptop) records hours, and
//! would dominate a mean.

use super::*;

/// Median epoch times of an arm and its control, over the runs under one compute setting.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochTimes {
    /// The arm's median epoch (seconds).
    pub arm_seconds: f64,
    /// The control's median epoch (seconds).
    pub control_seconds: f64,
    /// The setting both were measured under.
    pub compute: Compute,
    /// Runs of either side left out: they ran under another setting (or changed it on a resume,
    /// or were recorded before settings were).
    pub runs_left_out: usize,
}

impl EpochTimes {
    /// Arm over control.
    pub fn ratio(&self) -> f64 {
        self.arm_seconds / self.control_seconds
    }

    /// `only the runs with 2 threads, 1 job, CPU: 3 runs under other settings left out`, when
    /// runs were left out.
    pub fn note(&self) -> Option<String> {
        (self.runs_left_out > 0).then(|| {
            format!(
                "only the runs with {}: {} run{} under other settings left out",
                self.compute.describe(),
                self.runs_left_out,
                if self.runs_left_out == 1 { "" } else { "s" }
            )
        })
    }
}

/// Whether an arm's epoch times can be set against its control's.
#[derive(Debug, Clone, PartialEq)]
pub enum EpochComparison {
    /// Runs of both sides share a compute setting: their median epochs.
    Comparable(EpochTimes),
    /// No setting in common: why (`scratch ran with 2 threads, the distilled runs with 1
    /// thread`).
    NotComparable(String),
    /// One side has no timed epoch.
    Untimed,
}

/// Epoch seconds of the runs of `results`, grouped by the compute setting each run ran under
/// throughout.
#[derive(Default)]
pub(super) struct Timings {
    by_setting: std::collections::BTreeMap<Compute, (Vec<f64>, usize)>,
    unrecorded: usize,
    mixed: usize,
    runs: usize,
}

impl Timings {
    pub(super) fn of(results: &[&ModelResult]) -> Self {
        let mut t = Timings::default();
        for history in results.iter().flat_map(|r| &r.histories) {
            if history.is_empty() {
                continue;
            }
            t.runs += 1;
            let first = &history[0].compute;
            if history.iter().any(|e| e.compute != *first) {
                t.mixed += 1;
                continue;
            }
            match first {
                None => t.unrecorded += 1,
                Some(c) => {
                    let entry = t.by_setting.entry(c.clone()).or_default();
                    entry.0.extend(history.iter().map(|e| e.seconds));
                    entry.1 += 1;
                }
            }
        }
        t
    }

    /// What these runs ran under, for a sentence.
    pub(super) fn describe(&self) -> String {
        let mut parts: Vec<String> = self.by_setting.keys().map(Compute::describe).collect();
        if self.unrecorded > 0 {
            parts.push("settings not recorded (trained before distill recorded them)".into());
        }
        if self.mixed > 0 {
            parts.push("settings that changed on a resume".into());
        }
        parts.join(" / ")
    }
}

/// `with 2 threads and 1 job on CPU`: the fields of `mine` that differ from `other`'s.
pub(super) fn compute_difference(mine: &Compute, other: &Compute) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut with = Vec::new();
    if mine.threads != other.threads {
        with.push(plural(mine.threads, "thread"));
    }
    if mine.jobs != other.jobs {
        with.push(plural(mine.jobs, "job"));
    }
    let mut out = Vec::new();
    if !with.is_empty() {
        out.push(format!("with {}", with.join(" and ")));
    }
    if mine.cpu != other.cpu {
        out.push(format!("on {}", mine.cpu));
    }
    out.join(" ")
}

/// Sets the epoch times of `arm` (one or several results) against `control`'s, from the runs that
/// ran under the same compute threads, jobs and CPU only. Where several settings are shared, the
/// one with the most runs is used; where none is, the answer says why.
pub fn compare_epoch_times(
    arm: &[&ModelResult],
    arm_name: &str,
    control: &ModelResult,
    control_name: &str,
) -> EpochComparison {
    let a = Timings::of(arm);
    let c = Timings::of(&[control]);
    if a.runs == 0 || c.runs == 0 {
        return EpochComparison::Untimed;
    }
    let common = a
        .by_setting
        .iter()
        .filter_map(|(k, va)| c.by_setting.get(k).map(|vc| (k, va, vc)))
        .max_by_key(|(_, va, vc)| va.1 + vc.1);
    if let Some((compute, (arm_seconds, arm_runs), (control_seconds, control_runs))) = common {
        return EpochComparison::Comparable(EpochTimes {
            arm_seconds: median(arm_seconds),
            control_seconds: median(control_seconds),
            compute: compute.clone(),
            runs_left_out: a.runs + c.runs - arm_runs - control_runs,
        });
    }
    let single = |t: &Timings| {
        (t.by_setting.len() == 1 && t.unrecorded == 0 && t.mixed == 0)
            .then(|| t.by_setting.keys().next().cloned())
            .flatten()
    };
    let why = match (single(&c), single(&a)) {
        (Some(sc), Some(sa)) => format!(
            "{control_name} ran {}, {arm_name} {}",
            compute_difference(&sc, &sa),
            compute_difference(&sa, &sc)
        ),
        _ => format!(
            "{control_name} ran with {}; {arm_name} with {}",
            c.describe(),
            a.describe()
        ),
    };
    EpochComparison::NotComparable(format!("not comparable: {why}"))
}
