//! Element-wise math for the text kernels: `exp`, `erf` and GELU (forward and derivative)
//! written so that LLVM vectorises them (no libm calls, no branches), and the loops over slices,
//! compiled for AVX2 + FMA (picked at run time) and for the baseline target.
//!
//! burn's GELU on Flex calls libm's scalar `erf` per element: a sixth of a MiniLM inference pass
//! and a tenth of a fine-tuning step here.

use rayon::prelude::*;

pub(crate) use simd::{add_norm_row, bias_gelu_row, exp_in_place};

/// The element-wise loops, compiled twice: for AVX2 + FMA (chosen at run time) and for the
/// baseline target. The math is written so that LLVM vectorises it (no libm calls, no branches).
mod simd {
    /// Defines `pub fn $name`, which runs `$body` compiled for AVX2 + FMA when the CPU has them
    /// and for the baseline target otherwise.
    macro_rules! dispatch {
        (fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
            pub fn $name($($arg: $ty),*) {
                #[inline(always)]
                fn generic($($arg: $ty),*) $body
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        #[target_feature(enable = "avx2,fma")]
                        unsafe fn avx2($($arg: $ty),*) {
                            generic($($arg),*)
                        }
                        // SAFETY: the CPU supports the features `avx2` was compiled for.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                generic($($arg),*)
            }
        };
    }

    /// `values[i] = f(values[i])`.
    #[inline(always)]
    fn map(values: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in values.iter_mut() {
            *v = f(*v);
        }
    }

    /// `grad[i] *= derivative(saved[i])`.
    #[inline(always)]
    fn chain(grad: &mut [f32], saved: &[f32], derivative: impl Fn(f32) -> f32) {
        for (g, s) in grad.iter_mut().zip(saved) {
            *g *= derivative(*s);
        }
    }

    dispatch!(
        fn exp_in_place(values: &mut [f32]) {
            map(values, super::exp)
        }
    );
    dispatch!(
        fn gelu_in_place(values: &mut [f32]) {
            map(values, super::gelu_scalar)
        }
    );
    dispatch!(
        fn sigmoid_in_place(values: &mut [f32]) {
            map(values, super::sigmoid_scalar)
        }
    );
    dispatch!(
        fn tanh_in_place(values: &mut [f32]) {
            map(values, super::tanh_scalar)
        }
    );
    // GELU's derivative reads the input; sigmoid's and tanh's read the output `y`.
    dispatch!(
        fn gelu_grad_in_place(grad: &mut [f32], x: &[f32]) {
            chain(grad, x, super::gelu_derivative)
        }
    );
    dispatch!(
        fn sigmoid_grad_in_place(grad: &mut [f32], y: &[f32]) {
            chain(grad, y, |y| y * (1.0 - y))
        }
    );
    dispatch!(
        fn tanh_grad_in_place(grad: &mut [f32], y: &[f32]) {
            chain(grad, y, |y| 1.0 - y * y)
        }
    );
    dispatch!(
        fn bias_gelu_row(values: &mut [f32], bias: &[f32]) {
            for (v, b) in values.iter_mut().zip(bias) {
                *v = super::gelu_scalar(*v + b);
            }
        }
    );
    dispatch!(
        fn add_norm_row(
            row: &mut [f32],
            residual: &[f32],
            bias: &[f32],
            gamma: &[f32],
            beta: &[f32],
            eps: f32,
        ) {
            for ((v, r), b) in row.iter_mut().zip(residual).zip(bias) {
                *v += r + b;
            }
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (variance + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    );
}

/// `e^x` in `f32` (Cephes' `expf`: relative error below 2e-7) for `x` up to 88.3; 0 below
/// -87.3 and for -∞.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * scale
    }
}

/// `erf(x)`: Eigen's rational approximation (odd degree-13 over even degree-8 polynomial on
/// [-4, 4], where `f32` erf reaches ±1), a few ulp; no `exp`, one division.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    let p = x2 * p + -2.101_024e-6;
    let p = x2 * p + -5.692_506_4e-5;
    let p = x2 * p + -7.349_906_3e-4;
    let p = x2 * p + -2.954_600_1e-3;
    let p = x2 * p + -1.609_603_3e-2;
    let q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    let q = x2 * q + -1.682_827e-3;
    let q = x2 * q + -7.373_329e-3;
    let q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// `x · Φ(x)`, BERT's exact GELU.
#[inline(always)]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

const CHUNK: usize = 1 << 14;

/// An element-wise activation whose derivative is a function of one saved tensor: the input
/// for GELU, the output for sigmoid and tanh (see [`Activation::saves_input`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · Φ(x)`, BERT's exact GELU.
    Gelu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// Whether the backward pass reads the input (else the output).
    pub fn saves_input(self) -> bool {
        self == Activation::Gelu
    }

    /// The activation of every value, in parallel chunks.
    pub fn forward(self, values: &[f32]) -> Vec<f32> {
        let mut out = values.to_vec();
        let apply = match self {
            Activation::Gelu => simd::gelu_in_place,
            Activation::Sigmoid => simd::sigmoid_in_place,
            Activation::Tanh => simd::tanh_in_place,
        };
        out.par_chunks_mut(CHUNK).for_each(apply);
        out
    }

    /// The input's gradient from the output's, `grad`, and the saved tensor (the input or the
    /// output, as [`Activation::saves_input`] says).
    pub fn backward(self, saved: &[f32], grad: &[f32]) -> Vec<f32> {
        assert_eq!(
            saved.len(),
            grad.len(),
            "activation backward: saved tensor and gradient differ in size"
        );
        let mut out = grad.to_vec();
        let apply = match self {
            Activation::Gelu => simd::gelu_grad_in_place,
            Activation::Sigmoid => simd::sigmoid_grad_in_place,
            Activation::Tanh => simd::tanh_grad_in_place,
        };
        out.par_chunks_mut(CHUNK)
            .zip(saved.par_chunks(CHUNK))
            .for_each(|(grad, saved)| apply(grad, saved));
        out
    }
}

/// `1 / (1 + e^-x)` (relative error below 3e-7).
#[inline(always)]
pub fn sigmoid_scalar(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x.max(-88.0)))
}

/// `tanh(x)` as `sign(x) · (1 - e^-2|x|) / (1 + e^-2|x|)` (no cancellation near 0 beyond
/// `exp`'s own rounding: absolute error below 3e-7).
#[inline(always)]
pub fn tanh_scalar(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_float_rounding() {
        let mut worst = 0.0f64;
        // (the kernels only take exp of values ≤ 0; above 88.3, 2ⁿ overflows)
        for i in -8700..=8830 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
    }

    #[test]
    fn gelu_matches_a_float64_erf_gelu() {
        // erf(x) = 2/√π · e^(-x²) · Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1)): every term positive, so
        // no cancellation in f64 (the alternating Taylor series loses 1e-4 near x = 4).
        fn erf64(x: f64) -> f64 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-18 * sum.abs() {
                n += 1.0;
                term *= 2.0 * x * x / (2.0 * n + 1.0);
                sum += term;
            }
            2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
        }
        let mut worst = 0.0f64;
        for i in -800..=800 {
            let x = i as f64 * 0.01;
            let want = 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
            let got = gelu_scalar(x as f32) as f64;
            worst = worst.max((got - want).abs());
        }
        assert!(worst < 2e-6, "worst absolute error {worst}");
        // and the dispatched slice version agrees with the scalar one
        let mut values: Vec<f32> = (-300..300).map(|i| i as f32 * 0.02).collect();
        let want: Vec<f32> = values.iter().map(|&x| gelu_scalar(x + 0.5)).collect();
        bias_gelu_row(&mut values, &[0.5; 600]);
        for (g, w) in values.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn sigmoid_and_tanh_match_std_and_their_derivatives() {
        let x: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.01).collect();
        let sig = Activation::Sigmoid.forward(&x);
        let tanh = Activation::Tanh.forward(&x);
        for ((x, s), t) in x.iter().zip(&sig).zip(&tanh) {
            let xf = *x as f64;
            let want_s = 1.0 / (1.0 + (-xf).exp());
            assert!(
                (*s as f64 - want_s).abs() < 3e-7,
                "sigmoid({x}) = {s}, want {want_s}"
            );
            assert!((*t as f64 - xf.tanh()).abs() < 3e-7, "tanh({x}) = {t}");
        }
        let grad = vec![3.0f32; x.len()];
        let ds = Activation::Sigmoid.backward(&sig, &grad);
        let dt = Activation::Tanh.backward(&tanh, &grad);
        for ((x, ds), dt) in x.iter().zip(&ds).zip(&dt) {
            let xf = *x as f64;
            let s = 1.0 / (1.0 + (-xf).exp());
            assert!(
                (*ds as f64 - 3.0 * s * (1.0 - s)).abs() < 2e-6,
                "sigmoid'({x})"
            );
            assert!(
                (*dt as f64 - 3.0 * (1.0 - xf.tanh().powi(2))).abs() < 2e-6,
                "tanh'({x})"
            );
        }
    }

    #[test]
    fn gelu_slices_and_derivative_match_the_scalar_function() {
        let x: Vec<f32> = (-500..500).map(|i| i as f32 * 0.013).collect();
        let y = Activation::Gelu.forward(&x);
        for (x, y) in x.iter().zip(&y) {
            assert_eq!(*y, gelu_scalar(*x));
        }
        // central differences in f64 of the f32 function, step 1e-3
        let grad = vec![2.0f32; x.len()];
        let back = Activation::Gelu.backward(&x, &grad);
        for (x, g) in x.iter().zip(&back) {
            let h = 1e-3f64;
            let f = |v: f64| gelu_scalar(v as f32) as f64;
            let numeric = (f(*x as f64 + h) - f(*x as f64 - h)) / (2.0 * h);
            assert!(
                (*g as f64 - 2.0 * numeric).abs() < 2e-3,
                "x {x}: {g} vs 2 × {numeric}"
            );
        }
    }
}
