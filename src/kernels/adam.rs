//! Adam and AdamW updates of one parameter tensor in a single pass over its values.
//!
//! burn's optimizers compose the update from a dozen tensor ops (scale the first moment, scale
//! the gradient, add, square, ..., subtract), each a pass over the parameter's memory with a
//! fresh buffer, and run it one tensor after another on one thread: on teacher-v3 (2.8 M
//! parameters) that is ~20 ms of a training step whatever the thread count. Here each element's
//! parameter and moments are updated in place while in registers, in chunks spread over rayon's
//! threads. Every element goes through burn's float operations in burn's order (no fused
//! multiply-add), so the weights are bit for bit those of `burn::optim::Adam`/`AdamW`.

use rayon::prelude::*;

/// The decoupled form of weight decay (AdamW) or none (Adam), which also decides how burn
/// applies the bias corrections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    /// `burn::optim::Adam` without weight decay.
    Adam,
    /// `burn::optim::AdamW` with this decoupled weight decay.
    AdamW {
        /// The weight decay coefficient.
        weight_decay: f32,
    },
}

/// One update's coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the second moment's square root.
    pub epsilon: f32,
    /// This step's learning rate.
    pub learning_rate: f64,
    /// 1 on the first update (the moments start from this gradient), then 2, 3, ...
    pub time: usize,
    /// Adam or AdamW.
    pub variant: Variant,
}

/// Elements per task: large enough that a task's overhead is noise, small enough that a
/// teacher's larger tensors split over every thread.
const CHUNK: usize = 1 << 14;

/// Updates `param`, `moment_1` and `moment_2` in place with `grad` (all the same length). On
/// the first update (`step.time == 1`) the moments' old values are not read.
pub fn update(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: &AdamStep,
) {
    let len = param.len();
    assert!(
        grad.len() == len && moment_1.len() == len && moment_2.len() == len,
        "adam: parameter, gradient and moments differ in length ({len}, {}, {}, {})",
        grad.len(),
        moment_1.len(),
        moment_2.len()
    );
    assert!(step.time >= 1, "adam: steps count from 1");
    let coefficients = Coefficients::new(step);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(moment_1.par_chunks_mut(CHUNK))
        .zip(moment_2.par_chunks_mut(CHUNK))
        .for_each(|(((param, grad), m), v)| apply(&coefficients, param, grad, m, v));
}

super::multiversioned!(
    /// [`Coefficients::apply`] compiled for the widest vectors the CPU has (the same bits: the
    /// update is multiplications, additions, a division and a square root, each correctly
    /// rounded whatever the vector width).
    fn apply(
        coefficients: &Coefficients,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        coefficients.apply(param, grad, m, v)
    }
);

/// The step's scalars, computed as burn computes them.
struct Coefficients {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    first: bool,
    update: Update,
}

enum Update {
    /// `param - (m · combined) / (sqrt(v) + eps') · lr`.
    Adam {
        combined: f32,
        epsilon: f32,
        learning_rate: f32,
    },
    /// `param · keep - (m / correction_1) / (sqrt(v / correction_2) + eps) · lr`.
    AdamW {
        correction_1: f32,
        correction_2: f32,
        epsilon: f32,
        learning_rate: f32,
        keep: Option<f32>,
    },
}

impl Coefficients {
    fn new(step: &AdamStep) -> Self {
        let time = step.time as i32;
        let update = match step.variant {
            Variant::Adam => {
                let correction_2_sqrt = (1.0 - step.beta_2.powi(time)).sqrt();
                Update::Adam {
                    combined: correction_2_sqrt / (1.0 - step.beta_1.powi(time)),
                    epsilon: step.epsilon * correction_2_sqrt,
                    learning_rate: step.learning_rate as f32,
                }
            }
            Variant::AdamW { weight_decay } => {
                let decay_rate = step.learning_rate * weight_decay as f64;
                Update::AdamW {
                    correction_1: 1.0 - step.beta_1.powi(time),
                    correction_2: 1.0 - step.beta_2.powi(time),
                    epsilon: step.epsilon,
                    learning_rate: step.learning_rate as f32,
                    keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
                }
            }
        };
        Coefficients {
            beta_1: step.beta_1,
            beta_2: step.beta_2,
            factor_1: 1.0 - step.beta_1,
            factor_2: 1.0 - step.beta_2,
            first: step.time == 1,
            update,
        }
    }

    #[inline(always)]
    fn apply(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
            if self.first {
                *m = g * self.factor_1;
                *v = g * g * self.factor_2;
            } else {
                *m = *m * self.beta_1 + g * self.factor_1;
                *v = *v * self.beta_2 + g * g * self.factor_2;
            }
            *p = match self.update {
                Update::Adam {
                    combined,
                    epsilon,
                    learning_rate,
                } => *p - *m * combined / (v.sqrt() + epsilon) * learning_rate,
                Update::AdamW {
                    correction_1,
                    correction_2,
                    epsilon,
                    learning_rate,
                    keep,
                } => {
                    let delta = *m / correction_1 / ((*v / correction_2).sqrt() + epsilon);
                    let kept = match keep {
                        Some(keep) => *p * keep,
                        None => *p,
                    };
                    kept - delta * learning_rate
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam written out in f64 from the paper's formulas (Kingma & Ba, algorithm 1, with burn's
    /// epsilon placement), for a hand check of the f32 kernel over a few steps.
    fn reference(
        variant: Variant,
        grads: &[[f64; 3]],
        start: [f64; 3],
        lr: f64,
        beta: (f64, f64),
        eps: f64,
    ) -> [f64; 3] {
        let (mut p, mut m, mut v) = (start, [0.0; 3], [0.0; 3]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..3 {
                m[i] = beta.0 * m[i] + (1.0 - beta.0) * g[i];
                v[i] = beta.1 * v[i] + (1.0 - beta.1) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - beta.0.powi(t));
                let v_hat = v[i] / (1.0 - beta.1.powi(t));
                p[i] = match variant {
                    // burn's Adam adds epsilon to sqrt(v̂) scaled back: sqrt(v) + eps·sqrt(1-β₂ᵗ)
                    Variant::Adam => p[i] - lr * m_hat / (v_hat.sqrt() + eps),
                    Variant::AdamW { weight_decay } => {
                        p[i] * (1.0 - lr * weight_decay as f64) - lr * m_hat / (v_hat.sqrt() + eps)
                    }
                };
            }
        }
        p
    }

    #[test]
    fn three_steps_match_the_formulas_in_f64() {
        let grads = [[0.5, -2.0, 1e-3], [0.25, 1.0, -4.0], [-1.0, 0.0, 2.0]];
        let start = [1.0, -0.5, 0.25];
        for variant in [Variant::Adam, Variant::AdamW { weight_decay: 0.1 }] {
            let mut p = start.map(|x| x as f32);
            let (mut m, mut v) = ([0.0f32; 3], [0.0f32; 3]);
            for (t, g) in grads.iter().enumerate() {
                let step = AdamStep {
                    beta_1: 0.9,
                    beta_2: 0.999,
                    epsilon: 1e-7,
                    learning_rate: 0.01,
                    time: t + 1,
                    variant,
                };
                update(&mut p, &g.map(|x| x as f32), &mut m, &mut v, &step);
            }
            let want = reference(variant, &grads, start, 0.01, (0.9, 0.999), 1e-7);
            for (got, want) in p.iter().zip(want) {
                assert!(
                    (*got as f64 - want).abs() < 1e-6,
                    "{variant:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_first_step_ignores_whatever_the_moments_held() {
        let step = AdamStep {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            learning_rate: 0.1,
            time: 1,
            variant: Variant::Adam,
        };
        let (mut a, mut b) = ([1.0f32, 2.0], [1.0f32, 2.0]);
        let (mut m, mut v) = ([f32::NAN, 7.0], [f32::NAN, -3.0]);
        let (mut m0, mut v0) = ([0.0f32; 2], [0.0f32; 2]);
        update(&mut a, &[0.5, -1.0], &mut m, &mut v, &step);
        update(&mut b, &[0.5, -1.0], &mut m0, &mut v0, &step);
        assert_eq!(a, b);
        assert_eq!((m, v), (m0, v0));
        // The first Adam step moves each weight by the learning rate against its gradient's sign.
        assert!(
            (a[0] - 0.9).abs() < 1e-6 && (a[1] - 2.1).abs() < 1e-6,
            "{a:?}"
        );
    }
}
