//! Inverted dropout on `f32` slices with a counter-based mask: element `i` is kept when a hash of
//! `(seed, i)` falls below the keep probability, so the backward pass regenerates the mask from
//! the seed instead of storing it, and any chunking over threads gives the same mask.
//!
//! burn's dropout draws a Bernoulli tensor through its generic random sampler (ChaCha, one
//! sample at a time), about 12 ns per element here: 70 ms of each teacher-v3 training step.
//! The hash is 64-bit integer arithmetic, which the baseline x86-64 target cannot vectorise:
//! the loop is also compiled for AVX-512 (whose `vpmullq` multiplies 64-bit lanes) and AVX2,
//! picked at run time ([`super::multiversioned`]); all give the same mask, bit for bit.

use std::mem::MaybeUninit;

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// The golden-ratio increment that spreads consecutive indices over the hash's input.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijective, well-mixed hash of one 64-bit word.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The keep test in integers: element `i` is kept when the hash's 24 high bits `u`, read as the
/// uniform `u / 2^24` in [0, 1), fall below `keep`, i.e. when the integer `u < ceil(keep · 2^24)`
/// (exact: scaling by a power of two loses nothing).
#[derive(Clone, Copy)]
struct Mask {
    seed: u64,
    threshold: u64,
    scale: f32,
}

impl Mask {
    fn new(keep: f32, seed: u64) -> Self {
        Mask {
            seed,
            threshold: (keep as f64 * (1u64 << 24) as f64).ceil() as u64,
            scale: 1.0 / keep,
        }
    }

    /// The multiplier of element `index`: `1 / keep` when kept, else 0.
    #[inline(always)]
    fn factor(self, index: u64) -> f32 {
        let z = mix(self.seed.wrapping_add(index.wrapping_mul(GOLDEN)));
        if (z >> 40) < self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

super::multiversioned!(
    /// `dst[k] = src[k] · factor(first + k)`.
    fn apply_run(mask: Mask, first: u64, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        for ((d, &v), index) in dst.iter_mut().zip(src).zip(first..) {
            d.write(v * mask.factor(index));
        }
    }
);

/// One dropout layer's draw for one pass: the keep probability and the mask's seed. A kernel that
/// applies it inside another pass (the fused convolution + pool) gives element `i` of the layer's
/// input the same factor as [`apply`] does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// The probability of keeping an element.
    pub keep: f32,
    /// The mask's seed.
    pub seed: u64,
}

super::multiversioned!(
    /// `values ⊙ mask / keep` in place, for the run of a tensor that starts at its element
    /// `first`: the same bits as that run of [`apply`]'s output.
    pub(crate) fn apply_in_place(mask: DropoutMask, first: u64, values: &mut [f32]) {
        let mask = Mask::new(mask.keep, mask.seed);
        for (v, index) in values.iter_mut().zip(first..) {
            *v *= mask.factor(index);
        }
    }
);

/// `values ⊙ mask / keep`, the mask drawn from `seed`; used for the forward pass (on the input)
/// and the backward pass (on the output gradient) alike.
pub fn apply(values: &[f32], keep: f32, seed: u64) -> Vec<f32> {
    let mask = Mask::new(keep, seed);
    let len = values.len();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (dst, src))| apply_run(mask, (chunk * CHUNK) as u64, src, dst));
    // SAFETY: the chunks cover the first `len` elements and `apply_run` writes each of them.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask as first defined: the hash's 24 high bits as a float uniform in [0, 1), compared
    /// with `keep` in floating point.
    fn reference_factor(seed: u64, index: u64, keep: f32) -> f32 {
        let z = mix(seed.wrapping_add(index.wrapping_mul(GOLDEN)));
        let u = (z >> 40) as f32 * (1.0 / (1u32 << 24) as f32);
        if u < keep {
            1.0 / keep
        } else {
            0.0
        }
    }

    #[test]
    fn the_integer_keep_test_and_every_instruction_set_give_the_float_definitions_mask() {
        // Signed zeros, infinities and NaN too: dropped ones must come out as `v · 0`.
        let mut values: Vec<f32> = (0..70_001).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        values[..4].copy_from_slice(&[-0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        for (keep, seed) in [(0.8f32, 1u64), (0.7, 99), (0.5, u64::MAX), (0.1, 12345)] {
            let expected: Vec<u32> = values
                .iter()
                .zip(0u64..)
                .map(|(&v, i)| (v * reference_factor(seed, i, keep)).to_bits())
                .collect();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            // `apply` takes the widest instruction set the CPU has; the baseline loop is checked
            // too, starting mid-stream as a thread's chunk does.
            assert_eq!(bits(apply(&values, keep, seed)), expected, "keep {keep}");
            let mask = Mask::new(keep, seed);
            let mut baseline = vec![MaybeUninit::new(0.0f32); values.len() - 5];
            super::super::on_baseline(|| apply_run(mask, 5, &values[5..], &mut baseline));
            // SAFETY: every element was initialised (to 0, then by `apply_run`).
            let baseline: Vec<f32> = baseline
                .iter()
                .map(|v| unsafe { v.assume_init() })
                .collect();
            assert_eq!(bits(baseline), expected[5..], "keep {keep}, baseline loop");
            let mut in_place = values[7..].to_vec();
            apply_in_place(DropoutMask { keep, seed }, 7, &mut in_place);
            assert_eq!(bits(in_place), expected[7..], "keep {keep}, in place");
        }
    }

    #[test]
    fn keeps_the_requested_share_scales_survivors_and_is_repeatable() {
        let ones = vec![1.0f32; 200_000];
        for keep in [0.5f32, 0.8, 0.6] {
            let out = apply(&ones, keep, 42);
            let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / ones.len() as f64;
            // binomial standard deviation at n = 200,000 is at most 0.0011
            assert!(
                (kept - keep as f64).abs() < 0.006,
                "keep {keep}: kept {kept}"
            );
            assert!(out.iter().all(|&v| v == 0.0 || v == 1.0 / keep));
            assert_eq!(apply(&ones, keep, 42), out, "same seed, same mask");
            assert_ne!(apply(&ones, keep, 43), out, "another seed, another mask");
        }
    }

    #[test]
    fn neighbouring_elements_are_not_correlated() {
        let out = apply(&vec![1.0f32; 100_000], 0.5, 7);
        let both = out
            .windows(2)
            .filter(|w| w[0] != 0.0 && w[1] != 0.0)
            .count() as f64;
        let share = both / (out.len() - 1) as f64;
        assert!((share - 0.25).abs() < 0.01, "P(both kept) = {share}");
    }
}
