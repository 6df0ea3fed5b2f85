//! 2-D max pooling on NCHW `f32` slices, forward and backward.
//!
//! Flex pools through a generic 3-D kernel that recomputes the valid window with three integer
//! divisions per output element and writes an `i64` index tensor; on the student that was about
//! 40% of a training step. Here the valid range is computed once per kernel offset, the inner loop
//! runs over a contiguous (stride 1) or strided row, and the backward pass recomputes the argmax
//! from the saved input instead of storing indices.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{valid_outputs, Window2d};

/// Planes (one channel of one image) per parallel task: fixed, so results never depend on the
/// thread count.
const PLANES_PER_TASK: usize = 16;

/// Max pooling of `x` (`planes` planes of `h`×`w`) into `planes` planes of the window's output
/// size. NaN wins a window, like Flex and PyTorch; padding never does.
pub fn forward(x: &[f32], planes: usize, h: usize, w: usize, window: &Window2d) -> Vec<f32> {
    if is_keras_same_2x2(window) {
        let len = planes * h * w;
        let mut out = super::reserved(len);
        let pool = Same2x2::new(h, w);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(PLANES_PER_TASK * h * w)
            .zip(x.par_chunks(PLANES_PER_TASK * h * w))
            .for_each(|(out, x)| pool.pool(x, out));
        // SAFETY: `Same2x2::pool` wrote every element of every task's planes, and the tasks cover
        // the first `len` elements.
        unsafe { out.set_len(len) };
        return out;
    }
    let [oh, ow] = window.output_size([h, w]);
    let mut out = super::filled(planes * oh * ow, f32::NEG_INFINITY);
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [ph, pw] = window.pad_begin;
    let columns: Vec<(usize, usize, usize)> = (0..kw)
        .filter_map(|j| valid_outputs(j, sw, pw, w, ow))
        .collect();
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
                        for &(lo, hi, first) in &columns {
                            if sw == 1 {
                                for (m, &v) in row_out[lo..hi].iter_mut().zip(&row_in[first..]) {
                                    *m = if (v > *m) | v.is_nan() { v } else { *m };
                                }
                            } else {
                                for (m, &v) in row_out[lo..hi]
                                    .iter_mut()
                                    .zip(row_in[first..].iter().step_by(sw))
                                {
                                    *m = if (v > *m) | v.is_nan() { v } else { *m };
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}

/// Keras' `MaxPooling2D(2, strides=1, padding="same")`, the pool of every reference model: the
/// window covers (r, c), (r, c+1), (r+1, c), (r+1, c+1), the last row and column see padding.
pub(crate) fn is_keras_same_2x2(window: &Window2d) -> bool {
    *window
        == Window2d {
            kernel: [2, 2],
            stride: [1, 1],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        }
}

/// The 2×2, stride-1, 'same' pool over a run of `h`×`w` planes laid end to end (a group's
/// channels, or several images' planes of one channel): one vector loop over the whole run, each
/// window's candidates cut to the plane by a per-position pattern, instead of one call per plane
/// with scalar fix-ups of its last row and column (most of the cost on the 8×8 and 4×4 planes of
/// the reference models' later layers). Candidates are visited in window order, so the maxima
/// and winners follow the same rule as the general path.
pub(crate) struct Same2x2 {
    h: usize,
    w: usize,
    /// Per position of a plane: bit 0 set when the right neighbour is in the plane (not the last
    /// column), bit 1 when the row below is (not the last row).
    edges: Vec<u8>,
}

/// Whether the window at a position with `edges` takes candidate `v` over the current `m`, for
/// the right neighbour (`RIGHT`), the row below (`BELOW`) or both (`RIGHT | BELOW`): NaN wins,
/// ties go to the earlier candidate.
#[inline(always)]
fn takes(edges: u8, needs: u8, m: f32, v: f32) -> bool {
    (edges & needs == needs) & ((v > m) | v.is_nan())
}

const RIGHT: u8 = 1;
const BELOW: u8 = 2;

impl Same2x2 {
    /// The pool of `h`×`w` planes.
    pub(crate) fn new(h: usize, w: usize) -> Self {
        let edges = (0..h)
            .flat_map(|i| {
                (0..w).map(move |j| {
                    (if j + 1 < w { RIGHT } else { 0 }) | (if i + 1 < h { BELOW } else { 0 })
                })
            })
            .collect();
        Same2x2 { h, w, edges }
    }

    /// Pools every plane of `x` into `best` (the same length); every element of `best` is
    /// written, so it may start uninitialised.
    pub(crate) fn pool(&self, x: &[f32], best: &mut [MaybeUninit<f32>]) {
        self.check(x.len(), best.len());
        pool_planes(x, self.w, &self.edges, best);
    }

    /// The offset in `x` of the input that wins each window of each plane of `x` (NaN first,
    /// then the first maximum in window order).
    pub(crate) fn winners(&self, x: &[f32]) -> Vec<u32> {
        let len = x.len();
        self.check(len, len);
        assert!(
            u32::try_from(len).is_ok(),
            "pool: {len} elements do not fit the winners' u32 offsets"
        );
        let mut winner = Vec::with_capacity(len);
        winner_planes(
            x,
            self.w,
            &self.edges,
            &mut winner.spare_capacity_mut()[..len],
        );
        // SAFETY: `winner_planes` wrote each of the first `len` elements.
        unsafe { winner.set_len(len) };
        winner
    }

    fn check(&self, len: usize, out: usize) {
        let plane = self.h * self.w;
        assert!(
            plane > 0 && len.is_multiple_of(plane) && out == len,
            "pool: {len} inputs and {out} outputs are not whole {}x{} planes",
            self.h,
            self.w
        );
    }
}

/// The elements of a run of planes whose four candidates all lie inside it (the last `w + 1`
/// do not: their row below or right neighbour would be past the end), as `(start, len)` pieces
/// of at most one plane each, so a piece's positions index `edges` from 0.
fn pieces(total: usize, w: usize, plane: usize) -> impl Iterator<Item = (usize, usize)> {
    let body = total.saturating_sub(w + 1);
    (0..body)
        .step_by(plane)
        .map(move |start| (start, plane.min(body - start)))
}

super::multiversioned!(
    /// [`Same2x2::pool`] on checked lengths.
    fn pool_planes(x: &[f32], w: usize, edges: &[u8], best: &mut [MaybeUninit<f32>]) {
        let total = x.len();
        let plane = edges.len();
        let max = |e: u8, a: f32, b: f32, c: f32, d: f32| {
            let mut v = a;
            v = if takes(e, RIGHT, v, b) { b } else { v };
            v = if takes(e, BELOW, v, c) { c } else { v };
            if takes(e, RIGHT | BELOW, v, d) {
                d
            } else {
                v
            }
        };
        for (start, len) in pieces(total, w, plane) {
            let (a, b) = (&x[start..start + len], &x[start + 1..start + 1 + len]);
            let (c, d) = (&x[start + w..start + w + len], &x[start + w + 1..][..len]);
            let out = &mut best[start..start + len];
            for (((((m, &e), &a), &b), &c), &d) in out
                .iter_mut()
                .zip(&edges[..len])
                .zip(a)
                .zip(b)
                .zip(c)
                .zip(d)
            {
                m.write(max(e, a, b, c, d));
            }
        }
        // The tail: a candidate is read only where the plane holds it, so inside `x`.
        for p in total.saturating_sub(w + 1)..total {
            let e = edges[p % plane];
            let at = |offset: usize, needs: u8| {
                if e & needs == needs {
                    x[p + offset]
                } else {
                    0.0
                }
            };
            best[p].write(max(
                e,
                x[p],
                at(1, RIGHT),
                at(w, BELOW),
                at(w + 1, RIGHT | BELOW),
            ));
        }
    }
);

super::multiversioned!(
    /// [`Same2x2::winners`] on checked lengths.
    fn winner_planes(x: &[f32], w: usize, edges: &[u8], winner: &mut [MaybeUninit<u32>]) {
        let total = x.len();
        let plane = edges.len();
        let (right, below, diagonal) = (1u32, w as u32, w as u32 + 1);
        let pick = |e: u8, p: u32, a: f32, b: f32, c: f32, d: f32| {
            let (mut v, mut i) = (a, p);
            (v, i) = if takes(e, RIGHT, v, b) {
                (b, p + right)
            } else {
                (v, i)
            };
            (v, i) = if takes(e, BELOW, v, c) {
                (c, p + below)
            } else {
                (v, i)
            };
            if takes(e, RIGHT | BELOW, v, d) {
                p + diagonal
            } else {
                i
            }
        };
        for (start, len) in pieces(total, w, plane) {
            let (a, b) = (&x[start..start + len], &x[start + 1..start + 1 + len]);
            let (c, d) = (&x[start + w..start + w + len], &x[start + w + 1..][..len]);
            let out = &mut winner[start..start + len];
            let positions = start as u32..;
            for ((((((at, &e), &a), &b), &c), &d), p) in out
                .iter_mut()
                .zip(&edges[..len])
                .zip(a)
                .zip(b)
                .zip(c)
                .zip(d)
                .zip(positions)
            {
                at.write(pick(e, p, a, b, c, d));
            }
        }
        for p in total.saturating_sub(w + 1)..total {
            let e = edges[p % plane];
            let at = |offset: usize, needs: u8| {
                if e & needs == needs {
                    x[p + offset]
                } else {
                    0.0
                }
            };
            winner[p].write(pick(
                e,
                p as u32,
                x[p],
                at(1, RIGHT),
                at(w, BELOW),
                at(w + 1, RIGHT | BELOW),
            ));
        }
    }
);

super::multiversioned!(
    /// The input gradient of the 2×2 stride-1 'same' pool over a run of planes `w` wide, from
    /// the pooled gradient `grad` and the winners [`Same2x2::winners`] found (offsets in the
    /// run): `grad_x[q]` is the sum of `grad[p]` over the windows `p` that `q` won. Only the
    /// windows `q - w - 1`, `q - w`, `q - 1` and `q` contain `q`, so each element is gathered
    /// from those four (vector compares and selects) instead of scattering every window's
    /// gradient to its winner one element at a time; the terms are added in increasing `p`,
    /// starting from zero, as the scatter adds them, so the sums are the same bits. A window of
    /// the plane before never names `q`, so the run reads as one tall plane (a zero term added
    /// to a sum that started at +0 leaves its bits alone). Every element of `grad_x` is written.
    pub(crate) fn gather_same_2x2(
        winner: &[u32],
        grad: &[f32],
        w: usize,
        grad_x: &mut [MaybeUninit<f32>],
    ) {
        let n = grad_x.len();
        assert!(
            winner.len() == n && grad.len() == n,
            "pool: plane sizes differ"
        );
        if w == 1 {
            // One column: only windows `q - 1` and `q` hold `q` (`q - w` is `q - 1` here).
            for (q, x) in grad_x.iter_mut().enumerate() {
                let mut sum = 0.0f32;
                if q > 0 && winner[q - 1] as usize == q {
                    sum += grad[q - 1];
                }
                if winner[q] as usize == q {
                    sum += grad[q];
                }
                x.write(sum);
            }
            return;
        }
        // The first row and one: windows `q - 1` and `q`, and for `q = w` also window 0.
        let head = (w + 1).min(n);
        let term = |p: usize, q: usize| {
            if winner[p] as usize == q {
                grad[p]
            } else {
                0.0
            }
        };
        grad_x[0].write(0.0 + term(0, 0));
        for (q, x) in grad_x[..head].iter_mut().enumerate().skip(1) {
            let above = if q == w { term(0, q) } else { 0.0 };
            x.write(0.0 + above + term(q - 1, q) + term(q, q));
        }
        if n == head {
            return;
        }
        let len = n - head;
        let (w0, g0) = (&winner[head..n], &grad[head..n]);
        let (w1, g1) = (&winner[head - 1..n - 1], &grad[head - 1..n - 1]);
        let (ww, gw) = (&winner[head - w..n - w], &grad[head - w..n - w]);
        let (ww1, gw1) = (
            &winner[head - w - 1..n - w - 1],
            &grad[head - w - 1..n - w - 1],
        );
        let out = &mut grad_x[head..n];
        let (w0, w1, ww, ww1) = (&w0[..len], &w1[..len], &ww[..len], &ww1[..len]);
        let (g0, g1, gw, gw1) = (&g0[..len], &g1[..len], &gw[..len], &gw1[..len]);
        for (k, x) in out.iter_mut().enumerate() {
            let q = (head + k) as u32;
            let term = |won: u32, g: f32| if won == q { g } else { 0.0 };
            x.write(
                0.0 + term(ww1[k], gw1[k])
                    + term(ww[k], gw[k])
                    + term(w1[k], g1[k])
                    + term(w0[k], g0[k]),
            );
        }
    }
);

/// Gradient of [`forward`] with respect to `x`: each output's gradient goes to the element that
/// won its window (the first maximum in row-major window order; the last NaN if any). The winners
/// are found a row of outputs at a time, in the same loop order as [`forward`].
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
    if is_keras_same_2x2(window) {
        let (len, pool) = (planes * h * w, Same2x2::new(h, w));
        let mut grad_x = super::reserved(len);
        grad_x.spare_capacity_mut()[..len]
            .par_chunks_mut(PLANES_PER_TASK * h * w)
            .zip(x.par_chunks(PLANES_PER_TASK * h * w))
            .zip(grad_out.par_chunks(PLANES_PER_TASK * h * w))
            .for_each(|((grad_x, x), grad_out)| {
                gather_same_2x2(&pool.winners(x), grad_out, w, grad_x);
            });
        // SAFETY: `gather_same_2x2` wrote every element of every task's planes, and the tasks
        // cover the first `len` elements.
        unsafe { grad_x.set_len(len) };
        return grad_x;
    }
    let mut grad_x = super::filled(planes * h * w, 0.0);
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [ph, pw] = window.pad_begin;
    let columns: Vec<(usize, usize, usize)> = (0..kw)
        .filter_map(|j| valid_outputs(j, sw, pw, w, ow))
        .collect();
    grad_x
        .par_chunks_mut(PLANES_PER_TASK * h * w)
        .zip(x.par_chunks(PLANES_PER_TASK * h * w))
        .zip(grad_out.par_chunks(PLANES_PER_TASK * oh * ow))
        .for_each(|((grad_x, x), grad_out)| {
            let mut best = vec![0.0f32; ow];
            let mut winner = vec![u32::MAX; ow];
            for ((grad_x, x), grad_out) in grad_x
                .chunks_mut(h * w)
                .zip(x.chunks(h * w))
                .zip(grad_out.chunks(oh * ow))
            {
                for r in 0..oh {
                    winner.fill(u32::MAX);
                    for i in 0..kh {
                        let Some(ir) = (r * sh + i).checked_sub(ph).filter(|&ir| ir < h) else {
                            continue;
                        };
                        for &(lo, hi, first) in &columns {
                            let first = ir * w + first;
                            let values = x[first..].iter().step_by(sw);
                            let candidates = best[lo..hi]
                                .iter_mut()
                                .zip(&mut winner[lo..hi])
                                .zip(values.zip((first as u32..).step_by(sw)));
                            // Branch-free (selects), so it vectorises and never mispredicts on
                            // random data.
                            for ((m, at), (&v, index)) in candidates {
                                let take = (*at == u32::MAX) | (v > *m) | v.is_nan();
                                *m = if take { v } else { *m };
                                *at = if take { index } else { *at };
                            }
                        }
                    }
                    for (&at, &g) in winner.iter().zip(&grad_out[r * ow..(r + 1) * ow]) {
                        if at != u32::MAX {
                            grad_x[at as usize] += g;
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

    /// Forward and backward against a direct per-window scan, on shapes where some kernel
    /// offsets see no valid input column at all (padding 2 on a 1-wide input).
    #[test]
    fn matches_a_direct_scan_on_awkward_shapes() {
        // Three planes: the 'same' pool runs over all of them at once, so the middle one has
        // neighbours on both sides whose values must not leak into its windows.
        const PLANES: usize = 3;
        for (h, w, k, s, pb, pe) in [
            (1, 1, 3, 1, 2, 0),
            (3, 2, 3, 2, 1, 1),
            (5, 4, 2, 3, 1, 0),
            (2, 7, 3, 1, 2, 2),
            // Keras' 2x2 stride-1 'same' pool (its own path), down to one row or column
            (1, 1, 2, 1, 0, 1),
            (1, 5, 2, 1, 0, 1),
            (4, 1, 2, 1, 0, 1),
            (2, 2, 2, 1, 0, 1),
            (5, 7, 2, 1, 0, 1),
            (6, 6, 2, 1, 0, 1),
        ] {
            let win = Window2d {
                kernel: [k, k],
                stride: [s, s],
                pad_begin: [pb, pb],
                pad_end: [pe, pe],
            };
            let [oh, ow] = win.output_size([h, w]);
            let x: Vec<f32> = (0..PLANES * h * w)
                .map(|i| ((i * 37 % 11) as f32) - 5.0)
                .collect();
            let g: Vec<f32> = (0..PLANES * oh * ow).map(|i| i as f32 + 1.0).collect();
            let mut want = vec![f32::NEG_INFINITY; PLANES * oh * ow];
            let mut want_grad = vec![0.0; PLANES * h * w];
            for p in 0..PLANES {
                for r in 0..oh {
                    for c in 0..ow {
                        let mut best: Option<usize> = None;
                        for i in 0..k {
                            for j in 0..k {
                                let (ir, ic) = (
                                    (r * s + i) as isize - pb as isize,
                                    (c * s + j) as isize - pb as isize,
                                );
                                if ir < 0 || ic < 0 || ir >= h as isize || ic >= w as isize {
                                    continue;
                                }
                                let at = p * h * w + ir as usize * w + ic as usize;
                                if best.is_none_or(|b| x[at] > x[b]) {
                                    best = Some(at);
                                }
                            }
                        }
                        let at = best.expect("every window holds an input");
                        want[(p * oh + r) * ow + c] = x[at];
                        want_grad[at] += g[(p * oh + r) * ow + c];
                    }
                }
            }
            assert_eq!(forward(&x, PLANES, h, w, &win), want, "{win:?} on {h}x{w}");
            assert_eq!(
                backward(&x, &g, PLANES, h, w, &win),
                want_grad,
                "{win:?} on {h}x{w}"
            );
            let baseline = crate::kernels::on_baseline(|| {
                (
                    forward(&x, PLANES, h, w, &win),
                    backward(&x, &g, PLANES, h, w, &win),
                )
            });
            assert_eq!(
                baseline,
                (want, want_grad),
                "baseline path, {win:?} on {h}x{w}"
            );
        }
    }

    /// The gradient scattered window by window to its winner, the way the gather replaces.
    fn scattered(winner: &[u32], grad: &[f32]) -> Vec<f32> {
        let mut grad_x = vec![0.0f32; grad.len()];
        for (&at, &g) in winner.iter().zip(grad) {
            grad_x[at as usize] += g;
        }
        grad_x
    }

    #[test]
    fn gathered_gradients_are_the_scattered_sums_bit_for_bit() {
        for (h, w) in [
            (8, 8),
            (16, 16),
            (4, 4),
            (1, 6),
            (6, 1),
            (1, 1),
            (2, 3),
            (5, 7),
        ] {
            let n = h * w;
            // Few distinct values, so windows tie; a NaN and signed zeros among them.
            let mut x: Vec<f32> = (0..n).map(|i| ((i * 7 % 5) as f32) - 2.0).collect();
            x[n / 2] = f32::NAN;
            x[n - 1] = -0.0;
            // Gradients whose sums round differently in another order; some -0.0.
            let grad: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    3 => -0.0,
                    _ => ((i as f32) * 0.731).sin() * 1e3 + 1e-3 * i as f32,
                })
                .collect();
            for baseline in [false, true] {
                let run = || {
                    let winner = Same2x2::new(h, w).winners(&x);
                    let mut grad_x = vec![MaybeUninit::new(f32::NAN); n];
                    gather_same_2x2(&winner, &grad, w, &mut grad_x);
                    // SAFETY: initialised (to NaN, then by the gather).
                    let grad_x: Vec<f32> =
                        grad_x.iter().map(|v| unsafe { v.assume_init() }).collect();
                    (winner, grad_x)
                };
                let (winner, got) = if baseline {
                    crate::kernels::on_baseline(run)
                } else {
                    run()
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&scattered(&winner, &grad)),
                    "{h}x{w}, baseline {baseline}"
                );
            }
        }
    }
}
