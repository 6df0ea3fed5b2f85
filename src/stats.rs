//! Small, dependency-free statistics for comparing runs over paired seeds.
//!
//! When the distilled student and the scratch student (or two distillation settings) are trained
//! with the same seeds, run `i` of each shares its initial weights, data order and augmentation
//! with run `i` of the other. Most of the seed-to-seed noise is therefore common to both arms, and
//! the per-seed difference `d_i = treatment_i - control_i` removes it. A paired comparison —
//! mean and standard deviation of the `d_i`, with a Student-t 95% confidence interval — is then
//! much sharper than comparing the two arms' means as if they were independent samples.
//!
//! Everything here is plain `f64` arithmetic: [`mean`], [`median`], [`sample_std`], [`t_quantile_975`] and
//! [`paired_diff`], whose [`PairedDiff`] says whether a change is a clear gain, a clear loss, or
//! neither ([`PairedDiff::is_gain`], [`PairedDiff::is_loss`]).

use serde::{Deserialize, Serialize};

/// Arithmetic mean of `xs`; `NaN` for an empty slice (there is no mean of nothing).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The middle value of `xs` (the mean of the two middle ones for an even count); `NaN` for an
/// empty slice, like [`mean`].
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Sample standard deviation of `xs`, with the unbiased `n - 1` denominator (Bessel's
/// correction), since the mean is estimated from the same values.
///
/// Returns `0.0` for a single value (no spread can be observed) and `NaN` for an empty slice.
/// Computed in two passes (mean first, then squared deviations) on values shifted by the first
/// one, which stays accurate when the values are close together, as accuracies of one model over
/// seeds are, and gives exactly `0.0` for a constant slice.
pub fn sample_std(xs: &[f64]) -> f64 {
    match xs.len() {
        0 => f64::NAN,
        1 => 0.0,
        n => {
            // Shift by the first value: the spread is unchanged, a constant slice gives exactly
            // zero deviations, and the sums stay small.
            let shift = xs[0];
            let m = xs.iter().map(|x| x - shift).sum::<f64>() / n as f64;
            let ss: f64 = xs.iter().map(|x| (x - shift - m) * (x - shift - m)).sum();
            (ss / (n - 1) as f64).sqrt()
        }
    }
}

/// 0.975 quantiles of Student's t for 1..=30 degrees of freedom (index `df - 1`).
const T_975: [f64; 30] = [
    12.706_204_736_2,
    4.302_652_729_75,
    3.182_446_305_28,
    2.776_445_105_20,
    2.570_581_835_64,
    2.446_911_851_14,
    2.364_624_251_59,
    2.306_004_135_20,
    2.262_157_162_80,
    2.228_138_851_99,
    2.200_985_160_09,
    2.178_812_829_67,
    2.160_368_656_46,
    2.144_786_687_92,
    2.131_449_545_56,
    2.119_905_299_22,
    2.109_815_577_83,
    2.100_922_040_24,
    2.093_024_054_41,
    2.085_963_447_27,
    2.079_613_844_73,
    2.073_873_067_90,
    2.068_657_610_42,
    2.063_898_561_63,
    2.059_538_552_75,
    2.055_529_438_64,
    2.051_830_516_48,
    2.048_407_141_80,
    2.045_229_642_13,
    2.042_272_456_30,
];

/// 0.975 quantile of the standard normal distribution.
const Z_975: f64 = 1.959_963_984_540_054;

/// Two-sided 95% critical value of Student's t with `df` degrees of freedom, i.e. its 0.975
/// quantile: the multiplier of the standard error in a 95% confidence interval of a mean
/// estimated from `df + 1` values.
///
/// For `df` in `1..=30` the value comes from a table (exact to about 1e-10). Beyond that it uses
/// the Cornish-Fisher expansion around the normal quantile 1.959964 (Abramowitz & Stegun
/// 26.7.5, terms `g1..g4`), whose error is below 1e-7 from `df = 31` on and shrinks as `df`
/// grows; the table is used below 31 because the expansion degrades for few degrees of freedom.
///
/// # Panics
///
/// Panics when `df == 0`: with a single value there is no spread estimate, hence no interval.
/// Callers with one seed should report no interval rather than ask for this quantile (as
/// [`paired_diff`] does).
pub fn t_quantile_975(df: usize) -> f64 {
    assert!(
        df >= 1,
        "Student's t quantile needs at least 1 degree of freedom (2 or more values), got df = 0"
    );
    if df <= T_975.len() {
        return T_975[df - 1];
    }
    let x = Z_975;
    let x2 = x * x;
    let x3 = x2 * x;
    let x5 = x3 * x2;
    let x7 = x5 * x2;
    let x9 = x7 * x2;
    let g1 = (x3 + x) / 4.0;
    let g2 = (5.0 * x5 + 16.0 * x3 + 3.0 * x) / 96.0;
    let g3 = (3.0 * x7 + 19.0 * x5 + 17.0 * x3 - 15.0 * x) / 384.0;
    let g4 = (79.0 * x9 + 776.0 * x7 + 1482.0 * x5 - 1920.0 * x3 - 945.0 * x) / 92160.0;
    let v = df as f64;
    x + g1 / v + g2 / (v * v) + g3 / (v * v * v) + g4 / (v * v * v * v)
}

/// Why a paired comparison could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// The two arms hold different numbers of runs, so they cannot be paired seed by seed.
    #[error(
        "paired comparison needs one control value per treatment value (same seeds), \
         got {treatment} treatment and {control} control values"
    )]
    LengthMismatch {
        /// Number of treatment values.
        treatment: usize,
        /// Number of control values.
        control: usize,
    },
    /// No runs at all.
    #[error("paired comparison needs at least one treatment/control pair (one seed), got none")]
    Empty,
    /// A value is NaN or infinite (e.g. a diverged run), which would silently poison the result.
    #[error(
        "paired comparison needs finite values, got {value} as {arm} value {index} \
         (0-based seed position)"
    )]
    NonFinite {
        /// `"treatment"` or `"control"`.
        arm: &'static str,
        /// Position of the value (the seed's index).
        index: usize,
        /// The offending value.
        value: f64,
    },
}

/// Summary of the per-seed differences `treatment_i - control_i` (see [`paired_diff`]).
///
/// The sign convention is "treatment minus control": with accuracies, a positive mean means the
/// treatment (e.g. the distilled student) is better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDiff {
    /// Mean of the differences: the estimated effect of the treatment.
    pub mean: f64,
    /// Sample standard deviation of the differences (`n - 1` denominator; 0 for one seed).
    pub std: f64,
    /// 95% confidence interval `[lo, hi]` of the mean difference (Student's t with `n - 1`
    /// degrees of freedom); `None` with a single seed, where the spread cannot be estimated.
    pub ci95: Option<[f64; 2]>,
    /// Number of pairs (seeds).
    pub n: usize,
}

impl PairedDiff {
    /// Whether the treatment is a clear gain: `Some(true)` when the whole 95% interval lies
    /// above zero, `Some(false)` when it does not (it straddles or lies below zero), `None` with
    /// one seed, where there is no interval and so no evidence either way.
    pub fn is_gain(&self) -> Option<bool> {
        self.ci95.map(|[lo, _]| lo > 0.0)
    }

    /// Whether the treatment is a clear loss: `Some(true)` when the whole 95% interval lies
    /// below zero, `Some(false)` otherwise, `None` with one seed.
    pub fn is_loss(&self) -> Option<bool> {
        self.ci95.map(|[_, hi]| hi < 0.0)
    }
}

/// Paired comparison of two arms run with the same seeds: `treatment[i]` and `control[i]` must
/// come from the same seed, so that they share initial weights, data order and augmentation and
/// their difference cancels that shared noise.
///
/// Returns the mean and sample standard deviation of `d_i = treatment[i] - control[i]` and, with
/// `n >= 2` pairs, the 95% confidence interval `mean ± t_quantile_975(n - 1) * std / sqrt(n)`
/// (with a single pair `ci95` is `None`).
///
/// # Errors
///
/// [`StatsError::LengthMismatch`] when the slices differ in length, [`StatsError::Empty`] when
/// they are empty, [`StatsError::NonFinite`] when a value is NaN or infinite.
pub fn paired_diff(treatment: &[f64], control: &[f64]) -> Result<PairedDiff, StatsError> {
    if treatment.len() != control.len() {
        return Err(StatsError::LengthMismatch {
            treatment: treatment.len(),
            control: control.len(),
        });
    }
    if treatment.is_empty() {
        return Err(StatsError::Empty);
    }
    for (arm, xs) in [("treatment", treatment), ("control", control)] {
        if let Some((index, &value)) = xs.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(StatsError::NonFinite { arm, index, value });
        }
    }
    let d: Vec<f64> = treatment.iter().zip(control).map(|(t, c)| t - c).collect();
    let n = d.len();
    let mean = mean(&d);
    let std = sample_std(&d);
    let ci95 = (n >= 2).then(|| {
        let half = t_quantile_975(n - 1) * std / (n as f64).sqrt();
        [mean - half, mean + half]
    });
    Ok(PairedDiff { mean, std, ci95, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mean_and_std_basics() {
        assert!(mean(&[]).is_nan());
        assert!(sample_std(&[]).is_nan());
        assert_eq!(mean(&[3.0]), 3.0);
        assert_eq!(sample_std(&[3.0]), 0.0);
        // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, squared deviations sum to 32, 32 / 7.
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&xs), 5.0);
        assert!(close(sample_std(&xs), (32.0f64 / 7.0).sqrt(), 1e-12));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[2.0, 2.0, 2.0, 3600.0]), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn std_of_constant_vector_is_zero() {
        assert_eq!(sample_std(&[0.7; 6]), 0.0);
        assert_eq!(sample_std(&[-2.5, -2.5]), 0.0);
    }

    #[test]
    fn t_quantile_table() {
        let expected = [
            (1, 12.7062047),
            (2, 4.3026527),
            (3, 3.1824463),
            (4, 2.7764451),
            (5, 2.5705818),
            (6, 2.4469119),
            (7, 2.3646243),
            (8, 2.3060041),
            (9, 2.2621572),
            (10, 2.2281389),
            (20, 2.0859634),
            (30, 2.0422725),
        ];
        for (df, t) in expected {
            assert!(close(t_quantile_975(df), t, 1e-7), "df {df}");
        }
        // Decreasing towards the normal quantile.
        for df in 1..200 {
            assert!(t_quantile_975(df) > t_quantile_975(df + 1), "df {df}");
        }
        assert!(t_quantile_975(1_000_000) > Z_975);
    }

    #[test]
    fn t_quantile_large_df_approximation() {
        for (df, t) in [
            (31, 2.0395134),
            (40, 2.0210754),
            (60, 2.0002978),
            (120, 1.9799304),
            (1000, 1.9623391),
        ] {
            let got = t_quantile_975(df);
            assert!(close(got, t, 1e-4), "df {df}: {got} vs {t}");
            // The expansion is in fact much better than the 1e-4 asked for.
            assert!(close(got, t, 1e-6), "df {df}: {got} vs {t}");
        }
        // Table and expansion join smoothly at 30/31.
        assert!(t_quantile_975(30) - t_quantile_975(31) < 0.003);
    }

    #[test]
    #[should_panic(expected = "df = 0")]
    fn t_quantile_panics_for_zero_df() {
        t_quantile_975(0);
    }

    #[test]
    fn paired_diff_hand_computed() {
        // treatment [0.70, 0.72, 0.71, 0.69, 0.73], control [0.68, 0.69, 0.70, 0.68, 0.70]
        // d = [0.02, 0.03, 0.01, 0.01, 0.03], sum 0.10, mean 0.10 / 5 = 0.02
        // deviations [0, 0.01, -0.01, -0.01, 0.01], squares sum 4 * 0.0001 = 0.0004
        // variance 0.0004 / (5 - 1) = 0.0001, std = 0.01
        // standard error 0.01 / sqrt(5) = 0.004472136, t(4) = 2.7764451
        // half width 2.7764451 * 0.004472136 = 0.012416640
        // interval [0.02 - 0.012416640, 0.02 + 0.012416640] = [0.007583360, 0.032416640]
        let p = paired_diff(
            &[0.70, 0.72, 0.71, 0.69, 0.73],
            &[0.68, 0.69, 0.70, 0.68, 0.70],
        )
        .unwrap();
        assert_eq!(p.n, 5);
        assert!(close(p.mean, 0.02, 1e-12), "{}", p.mean);
        assert!(close(p.std, 0.01, 1e-12), "{}", p.std);
        let [lo, hi] = p.ci95.unwrap();
        assert!(close(lo, 0.007583360, 1e-8), "{lo}");
        assert!(close(hi, 0.032416640, 1e-8), "{hi}");
        assert_eq!(p.is_gain(), Some(true));
        assert_eq!(p.is_loss(), Some(false));
    }

    #[test]
    fn paired_diff_straddling_zero() {
        // d = [0.01, -0.01, 0.01], mean 0.01 / 3 = 0.0033333
        // deviations [0.0066667, -0.0133333, 0.0066667], squares sum 0.00026667
        // variance 0.00026667 / 2 = 0.00013333, std 0.011547
        // half width t(2) * std / sqrt(3) = 4.3026527 * 0.0066667 = 0.028684
        // interval [-0.025351, 0.032018]: neither a gain nor a loss
        let p = paired_diff(&[0.70, 0.71, 0.69], &[0.69, 0.72, 0.68]).unwrap();
        assert!(close(p.mean, 0.01 / 3.0, 1e-12));
        assert!(close(p.std, (0.0002f64 / 1.5).sqrt(), 1e-12));
        let [lo, hi] = p.ci95.unwrap();
        assert!(close(lo, -0.025351, 1e-5), "{lo}");
        assert!(close(hi, 0.032018, 1e-5), "{hi}");
        assert_eq!(p.is_gain(), Some(false));
        assert_eq!(p.is_loss(), Some(false));
    }

    #[test]
    fn paired_diff_clear_loss() {
        let p = paired_diff(&[0.60, 0.61, 0.62], &[0.70, 0.70, 0.71]).unwrap();
        assert_eq!(p.is_gain(), Some(false));
        assert_eq!(p.is_loss(), Some(true));
    }

    #[test]
    fn paired_diff_single_seed_has_no_interval() {
        let p = paired_diff(&[0.75], &[0.70]).unwrap();
        assert_eq!(p.n, 1);
        assert!(close(p.mean, 0.05, 1e-12));
        assert_eq!(p.std, 0.0);
        assert_eq!(p.ci95, None);
        assert_eq!(p.is_gain(), None);
        assert_eq!(p.is_loss(), None);
    }

    #[test]
    fn paired_diff_errors() {
        let err = paired_diff(&[0.1; 5], &[0.1; 4]).unwrap_err();
        assert_eq!(
            err,
            StatsError::LengthMismatch {
                treatment: 5,
                control: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "paired comparison needs one control value per treatment value (same seeds), \
             got 5 treatment and 4 control values"
        );
        assert_eq!(paired_diff(&[], &[]).unwrap_err(), StatsError::Empty);
        let err = paired_diff(&[0.1, 0.2], &[0.1, f64::NAN]).unwrap_err();
        assert!(matches!(
            err,
            StatsError::NonFinite {
                arm: "control",
                index: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("control value 1"), "{err}");
    }

    #[test]
    fn paired_diff_serde_round_trip() {
        let p = paired_diff(&[0.70, 0.72], &[0.68, 0.69]).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: PairedDiff = serde_json::from_str(&json).unwrap();
        // serde_json may round the last bit of a float, so compare to a tolerance.
        assert_eq!(back.n, p.n);
        assert!(close(back.mean, p.mean, 1e-15));
        assert!(close(back.std, p.std, 1e-15));
        let ([a, b], [c, d]) = (back.ci95.unwrap(), p.ci95.unwrap());
        assert!(close(a, c, 1e-15) && close(b, d, 1e-15));
    }
}
