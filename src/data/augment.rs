//! Training-time augmentation: random crop after zero padding, and random horizontal flip.
//!
//! Both act on the `C×H×W` bytes of one image and keep its shape. Augmentation is off by default;
//! the randomness comes from a caller-supplied RNG so that runs are reproducible.
//!
//! With `views = K`, each training image has a fixed set of K augmented views (drawn once from
//! `view_seed` and the image's index) and every epoch shows one of them. This is what makes
//! *consistent teaching* affordable: the teacher's logits for all K views are computed once and
//! replayed (FKD, Shen & Xing 2022), and the student sees exactly the view the teacher saw.
//!
//! With `mixup = α` as well, each fixed view blends two training images: `λ · view(i) + (1 − λ)
//! · view(j)`, with the partner `j` and `λ ~ Beta(α, α)` drawn with the view, so the teacher's
//! cached logits and the student see the same blend. This is *function matching* (Beyer et al.
//! 2022): a student trained on the teacher's outputs alone for inputs off the data manifold. A
//! student trained on labels sees the blend of the two labels (mixup, Zhang et al. 2018), the
//! control a function-matching study needs.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

/// Which augmentations to apply to training images (the default applies none).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Augmentation {
    /// Pad each side with this many zero pixels, then crop back to the original size at a
    /// random offset (the classic CIFAR recipe uses 4); 0 turns cropping off.
    pub crop_padding: usize,
    /// Mirror the image left–right with probability 1/2.
    pub horizontal_flip: bool,
    /// Draw from a fixed set of this many views per image instead of a fresh transform each
    /// epoch (`None`: fresh transforms). Needed for the augmented-view teacher-logit cache.
    pub views: Option<usize>,
    /// Seeds the fixed views; shared by every run of a study, so one cache serves all seeds.
    pub view_seed: u64,
    /// Blend each fixed view with another training image's view, the weight drawn from
    /// `Beta(α, α)` with this `α` (`None`: no blending). Needs `views`.
    // left out when unset, so configs written before mixup existed serialize as they did
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixup: Option<f64>,
}

impl Augmentation {
    /// True when this augmentation leaves every image unchanged.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip && self.mixup.is_none()
    }

    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.views == Some(0) {
            return Err(
                "`augmentation.views` must be at least 1 (or left out for fresh transforms each epoch), got 0"
                    .into(),
            );
        }
        if let Some(alpha) = self.mixup {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(format!(
                    "`augmentation.mixup` (the Beta distribution's alpha) must be a positive number, got {alpha}"
                ));
            }
            if self.views.is_none() {
                return Err(
                    "`augmentation.mixup` blends fixed views: set `augmentation.views` as well (e.g. 8)"
                        .into(),
                );
            }
        }
        if self.crop_padding > 64 {
            return Err(format!(
                "`augmentation.crop_padding` must be at most 64 pixels, got {}",
                self.crop_padding
            ));
        }
        Ok(())
    }

    /// A short description for logs and cache keys, e.g. `crop 4, flip, 16 views (seed 0)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("crop padding {}", self.crop_padding)];
        parts.push(
            if self.horizontal_flip {
                "flip"
            } else {
                "no flip"
            }
            .to_string(),
        );
        match self.views {
            Some(k) => parts.push(format!("{k} fixed views (view seed {})", self.view_seed)),
            None => parts.push("fresh transforms each epoch".to_string()),
        }
        if let Some(alpha) = self.mixup {
            parts.push(format!("mixup alpha {alpha}"));
        }
        parts.join(", ")
    }

    /// Returns an augmented copy of `image` (`C×H×W` bytes of `shape`). The crop offset is drawn
    /// first, then the flip, so a given RNG state always gives the same result.
    pub fn apply<R: Rng + ?Sized>(&self, image: &[u8], shape: [usize; 3], rng: &mut R) -> Vec<u8> {
        let mut out = if self.crop_padding > 0 {
            let p = self.crop_padding;
            let dy = rng.random_range(0..=2 * p);
            let dx = rng.random_range(0..=2 * p);
            crop_with_padding(image, shape, p, dy, dx)
        } else {
            image.to_vec()
        };
        if self.horizontal_flip && rng.random_bool(0.5) {
            out = flip_horizontal(&out, shape);
        }
        out
    }
}

/// One fixed view's blend: the partner image and the weight of the image itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// Index (in the same split) of the image blended in.
    pub partner: usize,
    /// The image's own weight, in `[0.5, 1]`: of `λ` and `1 − λ` the larger goes to the image
    /// itself, so its label stays the majority one (the blend's distribution is unchanged,
    /// since `Beta(α, α)` is symmetric).
    pub lambda: f32,
}

/// The label side of a batch of blended views: each example's partner label and own weight.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMix {
    /// The label of the image blended into each example.
    pub partners: Vec<u32>,
    /// Each example's own weight `λ` ([`Mix::lambda`]).
    pub lambdas: Vec<f32>,
}

impl LabelMix {
    /// The partners' labels as a tensor, `[batch]`.
    pub fn partner_labels(&self, device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = self.partners.iter().map(|&l| i64::from(l)).collect();
        Tensor::from_data(TensorData::new(labels, [self.partners.len()]), device)
    }

    /// The own weights as a tensor, `[batch]`.
    pub fn lambdas(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(self.lambdas.clone(), [self.lambdas.len()]),
            device,
        )
    }
}

/// Draws a view's blend: the partner uniformly from `0..len` and `λ ~ Beta(alpha, alpha)`.
pub fn draw_mix<R: Rng + ?Sized>(alpha: f64, len: usize, rng: &mut R) -> Mix {
    use rand_distr::{Beta, Distribution};
    let partner = rng.random_range(0..len);
    let beta = Beta::new(alpha, alpha).expect("validated: alpha > 0");
    let lambda: f64 = beta.sample(rng);
    Mix {
        partner,
        lambda: lambda.max(1.0 - lambda) as f32,
    }
}

/// The `H×W` window at offset `(dy, dx)` of `image` padded with `padding` zeros on every side.
/// `dy` and `dx` range over `0..=2 * padding`; `(padding, padding)` returns the image unchanged.
pub fn crop_with_padding(
    image: &[u8],
    [c, h, w]: [usize; 3],
    padding: usize,
    dy: usize,
    dx: usize,
) -> Vec<u8> {
    assert!(
        dy <= 2 * padding && dx <= 2 * padding,
        "crop offset outside the padded image"
    );
    let mut out = vec![0u8; c * h * w];
    // Source row/column of output (y, x) is (y + dy - padding, x + dx - padding); work in
    // signed offsets so rows and columns in the padding are simply skipped.
    let (oy, ox) = (
        dy as isize - padding as isize,
        dx as isize - padding as isize,
    );
    let x0 = (-ox).clamp(0, w as isize) as usize; // first output column with a source pixel
    let x1 = (w as isize - ox).clamp(0, w as isize) as usize; // one past the last
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + oy;
            if sy < 0 || sy >= h as isize || x0 >= x1 {
                continue;
            }
            let src_row = ch * h * w + sy as usize * w;
            let dst_row = ch * h * w + y * w;
            let sx0 = (x0 as isize + ox) as usize;
            out[dst_row + x0..dst_row + x1]
                .copy_from_slice(&image[src_row + sx0..src_row + sx0 + (x1 - x0)]);
        }
    }
    out
}

/// `image` mirrored left–right.
pub fn flip_horizontal(image: &[u8], [c, h, w]: [usize; 3]) -> Vec<u8> {
    let mut out = image[..c * h * w].to_vec();
    for row in out.chunks_exact_mut(w) {
        row.reverse();
    }
    out
}
