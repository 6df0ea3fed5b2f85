//! FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015; reference
//! implementation mdistiller `mdistiller/distillers/FitNet.py`).
//!
//! A regressor `r` (a convolution, batch norm and ReLU: mdistiller's `ConvReg`) maps the student's
//! hint layer onto the teacher's guided layer, and the hint loss is their mean squared error:
//!
//! `hint = mean (r(f_s) - f_t)²`, trained as `ce_weight · CE + weight · hint`
//!
//! with mdistiller's `weight = 100` on the second stage's output (`hint_layer = 2`, after its
//! ReLU). The regressor is a 1×1 convolution when the two maps have the same size, and a 3×3
//! stride-2 one when the student's is twice the teacher's.
//!
//! We follow mdistiller's joint loss rather than the paper's two stages (hint pre-training of the
//! student's lower half, then KD): one run per arm with the same schedule as every other method,
//! which is what the published tables that users compare against measure.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::check_weight;
use crate::models::spec::Shape;
use crate::models::taps::Tap;

/// FitNets' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitNets {
    /// Weight of the hint loss (mdistiller: 100).
    pub weight: f64,
    /// The student's hint tap.
    pub student_tap: String,
    /// The teacher's guided tap.
    pub teacher_tap: String,
}

impl Default for FitNets {
    fn default() -> Self {
        FitNets {
            weight: 100.0,
            student_tap: "stage2".into(),
            teacher_tap: "stage2".into(),
        }
    }
}

impl FitNets {
    /// Rejects a negative or non-finite weight.
    pub fn validate(&self) -> Result<(), String> {
        check_weight("fitnets weight", self.weight)
    }
}

/// The student-side regressor: convolution, batch norm (batch statistics while training), ReLU.
#[derive(Module, Debug)]
pub struct Regressor {
    /// 1×1 (same size) or 3×3 stride 2 (student twice the teacher's size), with bias.
    pub conv: Conv2d,
    /// Over the teacher's channels.
    pub norm: BatchNorm,
}

impl Regressor {
    /// A regressor from the student's tap to the teacher's, or an error saying why no regressor
    /// maps the two shapes.
    pub fn init(student: &Tap, teacher: &Tap, device: &Device) -> anyhow::Result<Self> {
        let (Shape::Image([cs, hs, ws]), Shape::Image([ct, ht, wt])) =
            (student.shape, teacher.shape)
        else {
            anyhow::bail!(
                "fitnets: the hint and guided taps must both be feature maps; student tap {student}, teacher tap {teacher}"
            );
        };
        let (kernel, stride, padding) = if (hs, ws) == (ht, wt) {
            (1, 1, 0)
        } else if (hs, ws) == (2 * ht, 2 * wt) {
            (3, 2, 1)
        } else {
            anyhow::bail!(
                "fitnets: no regressor maps the student tap {student} onto the teacher tap {teacher}: the maps must have the same height and width, or the student's must be twice the teacher's"
            );
        };
        let conv = Conv2dConfig::new([cs, ct], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_bias(true)
            .init(device);
        let norm = BatchNormConfig::new(ct).init(device);
        Ok(Regressor { conv, norm })
    }

    /// `relu(norm(conv(x)))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        burn::tensor::activation::relu(self.norm.forward(self.conv.forward(x)))
    }
}

/// `mean (r(f_s) - f_t)²` over every element; the teacher's map carries no gradient.
pub fn hint_loss(regressed: Tensor<4>, teacher: Tensor<4>) -> Tensor<1> {
    (regressed - teacher.detach())
        .powi_scalar(2)
        .mean()
        .reshape([1])
}
