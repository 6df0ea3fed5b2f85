//! 2-D max pooling on NCHW `f32` slices, forward and backward.
//!
//! Flex pools through a generic 3-D kernel that recomputes the valid window with three integer
//! divisions per output element and writes an `i64` index tensor; on the student that was about
//! 40% of a training step. Here the valid range is computed once per kernel offset, the inner loop
//! runs over a contiguous (stride 1) or strided row, and the backward pass recomputes the argmax
//! from the saved input instead of storing indices.

use rayon::prelude::*;

use super::Window2d;

/// Planes (one channel of one image) per parallel task: fixed, so results never depend on the
/// thread count.
const PLANES_PER_TASK: usize = 16;

/// The output columns `ow` whose input column `ow * stride + offset - pad` lies in `0..input`.
fn valid_outputs(
    offset: usize,
    stride: usize,
    pad: usize,
    input: usize,
    output: usize,
) -> (usize, usize) {
    // input index i = ow * stride + offset - pad must satisfy 0 <= i < input.
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = if input + pad > offset {
        ((input + pad - offset - 1) / stride + 1).min(output)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Max pooling of `x` (`planes` planes of `h`×`w`) into `planes` planes of the window's output
/// size. NaN wins a window, like Flex and PyTorch; padding never does.
pub fn forward(x: &[f32], planes: usize, h: usize, w: usize, window: &Window2d) -> Vec<f32> {
    let [oh, ow] = window.output_size([h, w]);
    let mut out = vec![f32::NEG_INFINITY; planes * oh * ow];
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [ph, pw] = window.pad_begin;
    let columns: Vec<(usize, usize)> = (0..kw).map(|j| valid_outputs(j, sw, pw, w, ow)).collect();
    out.par_chunks_mut(PLANES_PER_TASK * oh * ow)
        .zip(x.par_chunks(PLANES_PER_TASK * h * w))
        .for_each(|(out, x)| {
            for (out, x) in out.chunks_mut(oh * ow).zip(x.chunks(h * w)) {
                for r in 0..oh {
                    let row_out = &mut out[r * ow..(r + 1) * ow];
                    for i in 0..kh {
                        let Some(ir) = (r * sh + i).checked_sub(ph).filter(|&ir| ir < h) else {
                            continue;
                        };
                        let row_in = &x[ir * w..(ir + 1) * w];
                        for (j, &(lo, hi)) in columns.iter().enumerate() {
                            let first = lo * sw + j - pw;
                            if sw == 1 {
                                for (m, &v) in row_out[lo..hi].iter_mut().zip(&row_in[first..]) {
                                    *m = if v > *m || v.is_nan() { v } else { *m };
                                }
                            } else {
                                for (m, &v) in row_out[lo..hi]
                                    .iter_mut()
                                    .zip(row_in[first..].iter().step_by(sw))
                                {
                                    *m = if v > *m || v.is_nan() { v } else { *m };
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}

/// Gradient of [`forward`] with respect to `x`: each output's gradient goes to the element that
/// won its window (the first maximum in row-major window order; the last NaN if any).
pub fn backward(
    x: &[f32],
    grad_out: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    window: &Window2d,
) -> Vec<f32> {
    let [oh, ow] = window.output_size([h, w]);
    debug_assert_eq!(grad_out.len(), planes * oh * ow);
    let mut grad_x = vec![0.0f32; planes * h * w];
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [ph, pw] = window.pad_begin;
    let range = |o: usize, k: usize, s: usize, p: usize, n: usize| {
        let start = (o * s).saturating_sub(p);
        let end = (o * s + k).saturating_sub(p).min(n);
        start..end
    };
    grad_x
        .par_chunks_mut(PLANES_PER_TASK * h * w)
        .zip(x.par_chunks(PLANES_PER_TASK * h * w))
        .zip(grad_out.par_chunks(PLANES_PER_TASK * oh * ow))
        .for_each(|((grad_x, x), grad_out)| {
            for ((grad_x, x), grad_out) in grad_x
                .chunks_mut(h * w)
                .zip(x.chunks(h * w))
                .zip(grad_out.chunks(oh * ow))
            {
                for r in 0..oh {
                    let rows = range(r, kh, sh, ph, h);
                    for c in 0..ow {
                        let cols = range(c, kw, sw, pw, w);
                        let mut best: Option<(usize, f32)> = None;
                        for ir in rows.clone() {
                            for ic in cols.clone() {
                                let v = x[ir * w + ic];
                                if best.is_none_or(|(_, m)| v > m || v.is_nan()) {
                                    best = Some((ir * w + ic, v));
                                }
                            }
                        }
                        if let Some((at, _)) = best {
                            grad_x[at] += grad_out[r * ow + c];
                        }
                    }
                }
            }
        });
    grad_x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(k: usize, s: usize, pad: (usize, usize)) -> Window2d {
        Window2d {
            kernel: [k, k],
            stride: [s, s],
            pad_begin: [pad.0, pad.0],
            pad_end: [pad.1, pad.1],
        }
    }

    #[test]
    fn same_padding_2x2_stride_1_by_hand() {
        // 1 plane, 2x3: the last row and column see the padding, which never wins.
        let x = [1.0, 5.0, 2.0, 4.0, 3.0, -1.0];
        let out = forward(&x, 1, 2, 3, &window(2, 1, (0, 1)));
        assert_eq!(out, vec![5.0, 5.0, 2.0, 4.0, 3.0, -1.0]);
        let grad = backward(
            &x,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            1,
            2,
            3,
            &window(2, 1, (0, 1)),
        );
        // 5.0 wins the first two windows, 2.0 the third, the bottom row wins its own windows.
        assert_eq!(grad, vec![0.0, 3.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn stride_2_valid_by_hand_and_ties_go_to_the_first() {
        let x = [
            1.0, 1.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0, -3.0, -2.0, 7.0, 7.0, -4.0, -1.0, 7.0, 7.0,
        ];
        let out = forward(&x, 1, 4, 4, &window(2, 2, (0, 0)));
        assert_eq!(out, vec![1.0, 2.0, -1.0, 7.0]);
        let grad = backward(&x, &[1.0, 1.0, 1.0, 1.0], 1, 4, 4, &window(2, 2, (0, 0)));
        let mut expected = vec![0.0; 16];
        expected[0] = 1.0; // the tie 1, 1, 1 goes to the first
        expected[3] = 1.0;
        expected[13] = 1.0;
        expected[10] = 1.0; // four 7s: the first
        assert_eq!(grad, expected);
    }

    #[test]
    fn nan_wins_its_windows() {
        let x = [0.0, f32::NAN, 1.0, 2.0];
        let out = forward(&x, 1, 2, 2, &window(2, 1, (0, 1)));
        assert!(out[0].is_nan() && out[1].is_nan());
        assert_eq!(&out[2..], &[2.0, 2.0]);
    }
}
