//! Attention transfer, AT (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR
//! 2017; reference implementation mdistiller `mdistiller/distillers/AT.py`).
//!
//! A stage's attention map is the channel mean of its activations raised to the power `p`,
//! flattened and L2-normalised per example: `a(f) = normalize(mean_c f^p)`. The loss sums, over
//! the stage pairs, the mean squared difference of the two maps:
//!
//! `AT = Σ_stages mean_{i,x} (a(f_s)_{i,x} - a(f_t)_{i,x})²`
//!
//! and the student is trained on `ce_weight · CE + beta · AT`, with `p = 2` and `beta = 1000` as
//! in the paper. The taps are stage outputs after their ReLU (mdistiller's `feats[1:]`). Student
//! and teacher maps must have the same height and width; the channel counts may differ.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{check_weight, l2_normalize};
use crate::models::spec::Shape;
use crate::models::taps::Tap;

/// Attention transfer's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionTransfer {
    /// Weight of the attention term (`beta`; the paper's 1000).
    pub beta: f64,
    /// The power the activations are raised to before the channel mean (the paper's 2).
    pub p: f64,
    /// The stage pairs, tap names read on both student and teacher.
    pub taps: Vec<String>,
}

impl Default for AttentionTransfer {
    fn default() -> Self {
        AttentionTransfer {
            beta: 1000.0,
            p: 2.0,
            taps: vec!["stage1".into(), "stage2".into(), "stage3".into()],
        }
    }
}

impl AttentionTransfer {
    /// Rejects a weight or power that is negative or not finite, and an empty tap list.
    pub fn validate(&self) -> Result<(), String> {
        check_weight("at beta", self.beta)?;
        if !(self.p.is_finite() && self.p > 0.0) {
            return Err(format!("at p must be a finite number > 0, got {}", self.p));
        }
        if self.taps.is_empty() {
            return Err(
                "at taps: name at least one stage (e.g. [\"stage1\", \"stage2\", \"stage3\"])"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `normalize(mean_c f^p)`: one attention map per example, `[batch, H·W]`, unit L2 norm (a zero
/// map stays zero, as with PyTorch's `F.normalize`).
pub fn attention_map(features: Tensor<4>, p: f64) -> Tensor<2> {
    let [batch, _, h, w] = features.dims();
    let powered = if p == 2.0 {
        features.powi_scalar(2)
    } else {
        features.powf_scalar(p)
    };
    l2_normalize(powered.mean_dim(1).reshape([batch, h * w]))
}

/// `Σ_pairs mean (a(f_s) - a_t)²` over the stage pairs; `teacher_maps` are the teacher's
/// attention maps ([`attention_map`]), `[batch, H·W]` each, and carry no gradient.
pub fn attention_loss(student: &[Tensor<4>], teacher_maps: &[Tensor<2>], p: f64) -> Tensor<1> {
    assert_eq!(
        student.len(),
        teacher_maps.len(),
        "one teacher map per stage"
    );
    student
        .iter()
        .zip(teacher_maps)
        .map(|(s, t)| {
            (attention_map(s.clone(), p) - t.clone().detach())
                .powi_scalar(2)
                .mean()
                .reshape([1])
        })
        .reduce(|a, b| a + b)
        .expect("at least one stage")
}

/// Rejects a stage pair whose maps differ in height or width (the channels may differ).
pub fn check_pair(student: &Tap, teacher: &Tap) -> anyhow::Result<()> {
    match (student.shape, teacher.shape) {
        (Shape::Image([_, hs, ws]), Shape::Image([_, ht, wt])) if (hs, ws) == (ht, wt) => Ok(()),
        _ => anyhow::bail!(
            "at: the student tap {student} and the teacher tap {teacher} cannot be compared: attention maps need feature maps of the same height and width"
        ),
    }
}
