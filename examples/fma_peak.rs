//! The f32 multiply-add peak of one core: the ceiling against which the speed chapter sizes its
//! targets (a training step's FLOPs per second as a share of what the core can do at all).
//!
//! Twelve independent chains of 512-bit (or, without AVX-512, 256-bit) fused multiply-adds, more
//! than the FMA units' latency × throughput, so the loop is bound by the units alone. Pin it to
//! one core on an otherwise idle machine:
//!
//! ```sh
//! cargo run --release --example fma_peak
//! taskset -c 0 target/release/examples/fma_peak
//! ```

use std::time::Instant;

const CHAINS: usize = 12;
const ROUNDS: u64 = 200_000_000;

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let (width, (seconds, checksum)) = if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            (16, unsafe { x86::run_avx512() })
        } else if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the feature was detected at run time.
            (8, unsafe { x86::run_avx2() })
        } else {
            eprintln!("neither AVX-512F nor FMA: nothing to measure");
            std::process::exit(1);
        };
        let flops = ROUNDS as f64 * CHAINS as f64 * width as f64 * 2.0;
        // The checksum is printed so that the chains cannot be optimised away.
        println!(
            "{} f32 multiply-add peak, one thread: {:.1} GFLOP/s ({:.2} s; checksum {:.3})",
            if width == 16 { "AVX-512" } else { "AVX2" },
            flops / seconds / 1e9,
            seconds,
            checksum
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        eprintln!("fma_peak measures x86-64 vector units only");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Instant, CHAINS, ROUNDS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn run_avx512() -> (f64, f32) {
        let scale = _mm512_set1_ps(0.999_999);
        let shift = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(i as f32);
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, scale, shift);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let sum = acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum();
        (seconds, sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run_avx2() -> (f64, f32) {
        let scale = _mm256_set1_ps(0.999_999);
        let shift = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_set1_ps(i as f32);
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, scale, shift);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut lanes = [0f32; 8];
        let mut sum = 0.0;
        for a in acc {
            _mm256_storeu_ps(lanes.as_mut_ptr(), a);
            sum += lanes.iter().sum::<f32>();
        }
        (seconds, sum)
    }
}
