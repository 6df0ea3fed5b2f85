//! Relational knowledge distillation, RKD (Park et al., "Relational Knowledge Distillation", CVPR
//! 2019; reference implementation mdistiller `mdistiller/distillers/RKD.py`).
//!
//! RKD matches the geometry of a batch of embeddings (the `embedding` tap: the pooled features
//! before the classifier), not the embeddings themselves, so student and teacher widths may
//! differ:
//!
//! - distance: `ψ_D(i, j) = |e_i - e_j| / μ`, `μ` the mean over the pairs `i ≠ j`;
//!   `L_D = smooth_l1(ψ_D^s, ψ_D^t)` over all `B²` entries (the diagonal is 0 on both sides);
//! - angle: `ψ_A(i, j, k) = <n(e_j - e_i), n(e_k - e_i)>`, `n` the L2 normalisation;
//!   `L_A = smooth_l1(ψ_A^s, ψ_A^t)` over all `B³` entries;
//!
//! `RKD = distance_weight · L_D + angle_weight · L_A` (mdistiller: 25 and 50), trained as
//! `ce_weight · CE + weight · RKD`. `smooth_l1` is PyTorch's with `beta = 1`, averaged.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{check_weight, norm_floor_sq};

/// Floor on squared distances before their square root (mdistiller's `eps = 1e-12`).
const DISTANCE_FLOOR: f64 = 1e-12;

/// RKD's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rkd {
    /// Weight of the whole RKD term.
    pub weight: f64,
    /// Weight of the distance term inside it (mdistiller: 25).
    pub distance_weight: f64,
    /// Weight of the angle term inside it (mdistiller: 50).
    pub angle_weight: f64,
    /// The tap read on both networks.
    pub tap: String,
}

impl Default for Rkd {
    fn default() -> Self {
        Rkd {
            weight: 1.0,
            distance_weight: 25.0,
            angle_weight: 50.0,
            tap: "embedding".into(),
        }
    }
}

impl Rkd {
    /// Rejects negative or non-finite weights.
    pub fn validate(&self) -> Result<(), String> {
        check_weight("rkd weight", self.weight)?;
        check_weight("rkd distance_weight", self.distance_weight)?;
        check_weight("rkd angle_weight", self.angle_weight)
    }
}

/// The two parts of RKD for one batch, unweighted.
#[derive(Debug, Clone)]
pub struct RkdParts {
    /// `L_D`.
    pub distance: Tensor<1>,
    /// `L_A`.
    pub angle: Tensor<1>,
}

/// `L_D` and `L_A` between the student's embeddings `[batch, ds]` and the teacher's
/// `[batch, dt]` (the teacher side carries no gradient).
pub fn rkd_parts(student: Tensor<2>, teacher: Tensor<2>) -> RkdParts {
    let teacher = teacher.detach();
    let distance = smooth_l1(
        normalized_distances(student.clone()),
        normalized_distances(teacher.clone()),
    );
    let angle = smooth_l1::<1>(angles(student).flatten(0, 2), angles(teacher).flatten(0, 2));
    RkdParts { distance, angle }
}

/// `|e_i - e_j|` over the batch, divided by its mean over `i ≠ j`; 0 on the diagonal.
fn normalized_distances(e: Tensor<2>) -> Tensor<2> {
    let [batch, _] = e.dims();
    let squares = e.clone().powi_scalar(2).sum_dim(1); // [B, 1]
    let gram = e.clone().matmul(e.transpose());
    let squared =
        (squares.clone() + squares.transpose() - gram.mul_scalar(2.0)).clamp_min(DISTANCE_FLOOR);
    let off_diagonal = Tensor::<2>::eye(batch, &squared.device()).neg() + 1.0;
    let distances = squared.sqrt() * off_diagonal;
    let mean = distances
        .clone()
        .sum()
        .div_scalar((batch * (batch - 1)) as f64);
    distances / mean.reshape([1, 1])
}

/// `<n(e_j - e_i), n(e_k - e_i)>` as `[B, B, B]` (index `[i, j, k]`).
fn angles(e: Tensor<2>) -> Tensor<3> {
    let [batch, width] = e.dims();
    let rows = e.clone().reshape([1, batch, width]);
    let anchors = e.reshape([batch, 1, width]);
    let differences = rows - anchors; // [i, j, :] = e_j - e_i
    let norms = differences
        .clone()
        .powi_scalar(2)
        .sum_dim(2)
        .clamp_min(norm_floor_sq())
        .sqrt();
    let unit = differences / norms;
    unit.clone().matmul(unit.swap_dims(1, 2))
}

/// PyTorch's `smooth_l1_loss` with `beta = 1`, averaged: `0.5 d²` where `|d| < 1`, else
/// `|d| - 0.5`.
fn smooth_l1<const D: usize>(input: Tensor<D>, target: Tensor<D>) -> Tensor<1> {
    let size = (input.clone() - target).abs();
    let inner = size.clone().clamp_max(1.0);
    (inner.clone() * (size - inner.mul_scalar(0.5)))
        .mean()
        .reshape([1])
}
