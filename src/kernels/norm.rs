//! Batch normalisation of `[batch, channels, plane]` feature maps (a plane is one channel of one
//! image, `h × w` values), with an optional ReLU fused after it, and its backward pass.
//!
//! burn's default batch norm (used by Flex) transposes the input to `[channels, batch · plane]`
//! to take the statistics, and its backward pass transposes the output gradient twice more: on
//! teacher-vgg those copies were a tenth of a training step, and the normalisation, its
//! gradient and the ReLU another dozen elementwise passes. Here the statistics are taken in
//! place, plane by plane, and the forward and backward passes are one read and one write each.
//!
//! Every per-channel sum is taken by one task in a fixed order (planes in batch order, values in
//! order within a plane, in `f64`), so one and two threads give bit-identical results.

use rayon::prelude::*;

/// Sizes of a `[batch, channels, plane]` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    /// Images.
    pub batch: usize,
    /// Channels, each normalised on its own.
    pub channels: usize,
    /// Values per channel per image (`h × w`).
    pub plane: usize,
}

impl NormShape {
    fn check(&self, len: usize, what: &str) {
        assert_eq!(
            len,
            self.batch * self.channels * self.plane,
            "batch norm: {what} is not [batch, channels, plane] = {self:?}"
        );
    }

    /// The planes of channel `c`, in batch order.
    fn planes<'a>(&self, values: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (channels, plane) = (self.channels, self.plane);
        (0..self.batch).map(move |b| &values[(b * channels + c) * plane..][..plane])
    }

    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }
}

/// Per-channel mean and biased variance of `x` (the batch statistics of training mode; two
/// passes, the variance taken around the mean as burn does).
pub fn channel_stats(x: &[f32], shape: &NormShape) -> (Vec<f32>, Vec<f32>) {
    shape.check(x.len(), "the input");
    let n = shape.count();
    (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = shape
                .planes(x, c)
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / n;
            let squares: f64 = shape
                .planes(x, c)
                .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                .sum();
            (mean as f32, (squares / n) as f32)
        })
        .unzip()
}

/// Per-channel `gamma / sqrt(variance + eps)` and the shift that goes with it, so that the
/// normalised, scaled and shifted value is `x · scale + shift`.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], variance: &[f32], eps: f32) -> Vec<[f32; 3]> {
    (0..gamma.len())
        .map(|c| {
            let inv_std = 1.0 / (variance[c] + eps).sqrt();
            let scale = gamma[c] * inv_std;
            [scale, beta[c] - mean[c] * scale, inv_std]
        })
        .collect()
}

/// `gamma · (x − mean) / sqrt(variance + eps) + beta` per channel, then `max(0, ·)` if `relu`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &[f32],
    shape: &NormShape,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    eps: f32,
    relu: bool,
) -> Vec<f32> {
    shape.check(x.len(), "the input");
    for (what, v) in [
        ("gamma", gamma),
        ("beta", beta),
        ("mean", mean),
        ("variance", variance),
    ] {
        assert_eq!(
            v.len(),
            shape.channels,
            "batch norm: {what} is not [channels]"
        );
    }
    let affine = affine(gamma, beta, mean, variance, eps);
    let mut out = super::reserved(x.len());
    // SAFETY: every element is written below before the buffer is read.
    unsafe { out.set_len(x.len()) };
    out.par_chunks_mut(shape.plane.max(1))
        .zip(x.par_chunks(shape.plane.max(1)))
        .enumerate()
        .for_each(|(i, (out, x))| {
            let [scale, shift, _] = affine[i % shape.channels];
            for (o, &v) in out.iter_mut().zip(x) {
                let y = v * scale + shift;
                *o = if relu { y.max(0.0) } else { y };
            }
        });
    out
}

/// Gradients of [`forward`] with respect to its input, `gamma` and `beta`.
pub struct NormGrads {
    /// `[batch, channels, plane]`.
    pub x: Vec<f32>,
    /// `[channels]`.
    pub gamma: Vec<f32>,
    /// `[channels]`.
    pub beta: Vec<f32>,
}

/// The backward pass of [`forward`] given its output `y` (read for the ReLU's mask) and the
/// gradient of the loss with respect to it. With `batch_stats` the mean and variance are the
/// batch's own (training mode), so the input gradient includes their dependence on `x`:
/// `dx = scale · (g − mean(g) − x̂ · mean(g · x̂))`; otherwise they are constants (running
/// statistics) and `dx = scale · g`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    y: &[f32],
    grad: &[f32],
    shape: &NormShape,
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    eps: f32,
    relu: bool,
    batch_stats: bool,
) -> NormGrads {
    shape.check(x.len(), "the input");
    shape.check(y.len(), "the output");
    shape.check(grad.len(), "the output gradient");
    let zeros = vec![0.0; shape.channels];
    let affine = affine(gamma, &zeros, mean, variance, eps);
    let g = |y: f32, g: f32| if relu && y <= 0.0 { 0.0 } else { g };
    // Per channel: sum of g (beta's gradient) and of g · x̂ (gamma's).
    let (beta_grad, gamma_grad): (Vec<f32>, Vec<f32>) = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let [_, _, inv_std] = affine[c];
            let m = mean[c];
            let (mut sum, mut sum_xhat) = (0.0f64, 0.0f64);
            for ((x, y), d) in shape
                .planes(x, c)
                .zip(shape.planes(y, c))
                .zip(shape.planes(grad, c))
            {
                let (mut s, mut sx) = (0.0f32, 0.0f32);
                for ((&x, &y), &d) in x.iter().zip(y).zip(d) {
                    let g = g(y, d);
                    s += g;
                    sx += g * (x - m) * inv_std;
                }
                sum += s as f64;
                sum_xhat += sx as f64;
            }
            (sum as f32, sum_xhat as f32)
        })
        .unzip();
    let n = shape.count() as f32;
    let mut x_grad = super::reserved(x.len());
    // SAFETY: every element is written below before the buffer is read.
    unsafe { x_grad.set_len(x.len()) };
    let plane = shape.plane.max(1);
    x_grad
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .zip(y.par_chunks(plane))
        .zip(grad.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (((out, x), y), d))| {
            let c = i % shape.channels;
            let [scale, _, inv_std] = affine[c];
            let m = mean[c];
            let (mean_g, mean_gx) = if batch_stats {
                (beta_grad[c] / n, gamma_grad[c] / n)
            } else {
                (0.0, 0.0)
            };
            for (((o, &x), &y), &d) in out.iter_mut().zip(x).zip(y).zip(d) {
                let xhat = (x - m) * inv_std;
                *o = scale * (g(y, d) - mean_g - xhat * mean_gx);
            }
        });
    NormGrads {
        x: x_grad,
        gamma: gamma_grad,
        beta: beta_grad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    const SHAPE: NormShape = NormShape {
        batch: 3,
        channels: 2,
        plane: 5,
    };

    #[test]
    fn statistics_match_a_hand_computation() {
        // channel 0: planes [1, 2] and [3, 6]; channel 1: [0, 0] and [4, 4]
        let shape = NormShape {
            batch: 2,
            channels: 2,
            plane: 2,
        };
        let x = [1.0, 2.0, 0.0, 0.0, 3.0, 6.0, 4.0, 4.0];
        let (mean, var) = channel_stats(&x, &shape);
        assert_eq!(mean, vec![3.0, 2.0]);
        // ((−2)² + (−1)² + 0² + 3²) / 4 = 3.5; (4 + 4 + 4 + 4) / 4 = 4
        assert_eq!(var, vec![3.5, 4.0]);
        let y = forward(
            &x,
            &shape,
            &[2.0, 1.0],
            &[1.0, 0.0],
            &mean,
            &var,
            0.0,
            false,
        );
        let s = 2.0 / 3.5f32.sqrt();
        let want = [
            1.0 - 2.0 * s,
            1.0 - s,
            -1.0,
            -1.0,
            1.0,
            1.0 + 3.0 * s,
            1.0,
            1.0,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    /// The loss `sum(r ⊙ bn(x))` with the batch's statistics, in f64.
    fn loss(x: &[f32], gamma: &[f32], beta: &[f32], r: &[f32], relu: bool) -> f64 {
        let (mean, var) = channel_stats(x, &SHAPE);
        let y = forward(x, &SHAPE, gamma, beta, &mean, &var, 1e-3, relu);
        y.iter().zip(r).map(|(&y, &r)| y as f64 * r as f64).sum()
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_the_relu() {
        let n = SHAPE.batch * SHAPE.channels * SHAPE.plane;
        let x = values(n, 1);
        let r = values(n, 2);
        let (gamma, beta) = (vec![1.5, -0.7], vec![0.2, 0.1]);
        for relu in [false, true] {
            let (mean, var) = channel_stats(&x, &SHAPE);
            let y = forward(&x, &SHAPE, &gamma, &beta, &mean, &var, 1e-3, relu);
            let grads = backward(&x, &y, &r, &SHAPE, &gamma, &mean, &var, 1e-3, relu, true);
            let h = 1e-2f32;
            let numeric = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
            for i in 0..n {
                let d = numeric(&|e| {
                    let mut x = x.clone();
                    x[i] += e;
                    loss(&x, &gamma, &beta, &r, relu)
                });
                assert!(
                    (grads.x[i] as f64 - d).abs() < 2e-3,
                    "relu {relu}: dx[{i}] {} vs {d}",
                    grads.x[i]
                );
            }
            for c in 0..SHAPE.channels {
                let dg = numeric(&|e| {
                    let mut g = gamma.clone();
                    g[c] += e;
                    loss(&x, &g, &beta, &r, relu)
                });
                let db = numeric(&|e| {
                    let mut b = beta.clone();
                    b[c] += e;
                    loss(&x, &gamma, &b, &r, relu)
                });
                assert!(
                    (grads.gamma[c] as f64 - dg).abs() < 2e-3,
                    "relu {relu}: dgamma[{c}]"
                );
                assert!(
                    (grads.beta[c] as f64 - db).abs() < 2e-3,
                    "relu {relu}: dbeta[{c}]"
                );
            }
        }
    }

    #[test]
    fn with_running_statistics_the_input_gradient_is_the_scale() {
        let n = SHAPE.batch * SHAPE.channels * SHAPE.plane;
        let x = values(n, 3);
        let r = values(n, 4);
        let (mean, var) = (vec![0.1, -0.2], vec![0.5, 2.0]);
        let gamma = vec![2.0, 0.5];
        let y = forward(&x, &SHAPE, &gamma, &[0.0, 0.0], &mean, &var, 1e-3, false);
        let grads = backward(&x, &y, &r, &SHAPE, &gamma, &mean, &var, 1e-3, false, false);
        for (i, (&g, &r)) in grads.x.iter().zip(&r).enumerate() {
            let c = (i / SHAPE.plane) % SHAPE.channels;
            let want = r * gamma[c] / (var[c] + 1e-3).sqrt();
            assert!((g - want).abs() < 1e-6, "dx[{i}] {g} vs {want}");
        }
    }
}
