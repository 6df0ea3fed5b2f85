//! 2-D convolution with bias and an optional leaky ReLU, forward and backward, on NCHW `f32`
//! slices: im2col over a group of images, one `gemm` per group, and an epilogue that adds the
//! bias and applies the activation while writing NCHW.
//!
//! Burn computes the same layer as conv (through Flex's 3-D path, after copying the input into an
//! asymmetrically padded tensor), a bias pass, an activation pass, and in the backward pass a
//! transposed convolution for the input gradient and a weight gradient computed as another
//! convolution over swapped batch and channel axes. Here the backward pass is two `gemm`s per group
//! on the same im2col matrix the forward pass built.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::matmul::{Layout, Product};
use super::{valid_outputs, Window2d};

/// Shapes of one convolution: input `[batch, channels, h, w]`, weight `[filters, channels, kh, kw]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output channels.
    pub filters: usize,
    /// Kernel size, stride and padding.
    pub window: Window2d,
}

impl ConvShape {
    fn output(&self) -> [usize; 2] {
        self.window.output_size(self.input)
    }

    /// Rows of the im2col matrix: one per weight of a filter.
    fn patch(&self) -> usize {
        self.channels * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Images per group. Fixed by the layer's shape alone (never by the thread count), so the
    /// summation order, and with it every bit of the result, is the same on any number of threads.
    fn group(&self) -> usize {
        let [oh, ow] = self.output();
        (256 / (oh * ow).max(1)).clamp(1, self.batch.max(1))
    }
}

/// The input patches of `images` consecutive images starting at `x`: `patch` rows × `images *
/// oh * ow` columns, row-major; padding reads as zero. Every element is written once, in order,
/// so the matrix is built by appending (no zero-fill first).
fn im2col(x: &[f32], shape: &ConvShape, images: usize) -> Vec<f32> {
    let [h, w] = shape.input;
    let [oh, ow] = shape.output();
    let [kh, kw] = shape.window.kernel;
    let [sh, sw] = shape.window.stride;
    let [ph, pw] = shape.window.pad_begin;
    let mut col = Vec::with_capacity(shape.patch() * images * oh * ow);
    let zeros = |col: &mut Vec<f32>, n: usize| col.resize(col.len() + n, 0.0);
    for c in 0..shape.channels {
        for i in 0..kh {
            for j in 0..kw {
                let valid = valid_outputs(j, sw, pw, w, ow);
                for g in 0..images {
                    let plane = &x[(g * shape.channels + c) * h * w..][..h * w];
                    for r in 0..oh {
                        let ir = (r * sh + i).checked_sub(ph).filter(|&ir| ir < h);
                        match (ir, valid) {
                            (None, _) | (_, None) => zeros(&mut col, ow),
                            (Some(ir), Some((lo, hi, first))) => {
                                let in_row = &plane[ir * w..(ir + 1) * w];
                                zeros(&mut col, lo);
                                if sw == 1 {
                                    col.extend_from_slice(&in_row[first..first + hi - lo]);
                                } else {
                                    // An index map rather than `step_by`: whether the compiler
                                    // inlines `StepBy`'s generic fold here changed with unrelated
                                    // code elsewhere in the crate (student inference 0.8x when
                                    // it did not).
                                    col.extend((0..hi - lo).map(|k| in_row[first + k * sw]));
                                }
                                zeros(&mut col, ow - hi);
                            }
                        }
                    }
                }
            }
        }
    }
    col
}

/// Adds `col` (the layout [`im2col`] writes) back into the input gradient `grad_x` of `images`
/// consecutive images.
fn col2im(col: &[f32], shape: &ConvShape, images: usize, grad_x: &mut [f32]) {
    let [h, w] = shape.input;
    let [oh, ow] = shape.output();
    let [kh, kw] = shape.window.kernel;
    let [sh, sw] = shape.window.stride;
    let [ph, pw] = shape.window.pad_begin;
    let spatial = oh * ow;
    let columns = images * spatial;
    for c in 0..shape.channels {
        for i in 0..kh {
            for j in 0..kw {
                let Some((lo, hi, first)) = valid_outputs(j, sw, pw, w, ow) else {
                    continue;
                };
                let row = (c * kh + i) * kw + j;
                let src = &col[row * columns..(row + 1) * columns];
                for g in 0..images {
                    let plane = &mut grad_x[(g * shape.channels + c) * h * w..][..h * w];
                    let src = &src[g * spatial..(g + 1) * spatial];
                    for r in 0..oh {
                        let Some(ir) = (r * sh + i).checked_sub(ph).filter(|&ir| ir < h) else {
                            continue;
                        };
                        let in_row = &mut plane[ir * w..(ir + 1) * w];
                        // strided by `chunks_mut`, not `step_by`, for the reason given in
                        // `im2col`
                        for (x, &v) in in_row[first..]
                            .chunks_mut(sw)
                            .zip(&src[r * ow + lo..r * ow + hi])
                        {
                            x[0] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The im2col matrices of a forward pass, one per group of images, kept for the backward pass so
/// it does not gather the patches again (the teacher's largest costs about 38 MB per batch of 64).
#[derive(Debug, Clone)]
pub struct Patches(Vec<Vec<f32>>);

/// `y = act(conv(x, weight) + bias)` in NCHW, where `act` is the identity or, with `slope`, a
/// leaky ReLU with that negative slope.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> Vec<f32> {
    forward_impl(x, weight, bias, shape, slope, false).0
}

/// [`forward`], also returning the patches for [`backward`].
pub fn forward_keeping_patches(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> (Vec<f32>, Patches) {
    let (y, patches) = forward_impl(x, weight, bias, shape, slope, true);
    (y, Patches(patches.into_iter().flatten().collect()))
}

fn forward_impl(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    keep: bool,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, patch, group) = (shape.filters, shape.patch(), shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let len = shape.batch * filters * spatial;
    let mut y = super::reserved(len);
    let patches = y.spare_capacity_mut()[..len]
        .par_chunks_mut(group * filters * spatial)
        .zip(x.par_chunks(group * image_in))
        .map(|(y, x)| {
            let images = y.len() / (filters * spatial);
            let columns = images * spatial;
            let col = im2col(x, shape, images);
            let product = Product::new(
                [filters, columns, patch],
                Layout::rows(patch),
                Layout::rows(columns),
            );
            // One image: the product's layout (filters × spatial) is the output's, so it is
            // computed in place; a group of several is reordered image-major afterwards.
            if images == 1 {
                product.write_into_uninit(y, columns, weight, &col);
            } else {
                let product = product.new_matrix(weight, &col);
                for g in 0..images {
                    for f in 0..filters {
                        let dst = &mut y[(g * filters + f) * spatial..][..spatial];
                        let src = &product[f * columns + g * spatial..][..spatial];
                        for (d, &v) in dst.iter_mut().zip(src) {
                            d.write(v);
                        }
                    }
                }
            }
            // SAFETY: the product (one image) or the copy (several) initialised every element of
            // this chunk; `MaybeUninit<f32>` has the layout of `f32`.
            let y = unsafe { &mut *(y as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (row, f) in y.chunks_exact_mut(spatial).zip((0..filters).cycle()) {
                add_bias_activate(row, bias[f], slope);
            }
            keep.then_some(col)
        })
        .collect();
    // SAFETY: the chunks cover the first `len` elements, each initialised above.
    unsafe { y.set_len(len) };
    (y, patches)
}

/// `values + bias`, through a leaky ReLU when `slope` is given.
fn add_bias_activate(values: &mut [f32], bias: f32, slope: Option<f32>) {
    match slope {
        Some(slope) => {
            for v in values {
                let z = *v + bias;
                *v = if z < 0.0 { z * slope } else { z };
            }
        }
        None => {
            for v in values {
                *v += bias;
            }
        }
    }
}

/// Gradients of [`forward`]: `(x, weight, bias)`; the input gradient only when `want_x`.
/// `y` is forward's output (the activation's derivative is read off its sign, which is the sign
/// of its input for a positive slope).
pub struct ConvGrads {
    /// d loss / d x, `[batch, channels, h, w]`, when asked for.
    pub x: Option<Vec<f32>>,
    /// d loss / d weight, `[filters, channels, kh, kw]`.
    pub weight: Vec<f32>,
    /// d loss / d bias, `[filters]`.
    pub bias: Vec<f32>,
}

/// See [`ConvGrads`].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    grad_y: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    want_x: bool,
    patches: Option<&Patches>,
) -> ConvGrads {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, patch, group) = (shape.filters, shape.patch(), shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let image_out = filters * spatial;
    let mut grad_x = if want_x {
        super::filled(shape.batch * image_in, 0.0)
    } else {
        Vec::new()
    };
    let tasks: Vec<(Vec<f32>, Vec<f32>)> = if want_x {
        grad_x
            .par_chunks_mut(group * image_in)
            .enumerate()
            .map(|(t, gx)| {
                let col = patches.map(|p| p.0[t].as_slice());
                group_backward(t, Some(gx), x, col, weight, y, grad_y, shape, slope)
            })
            .collect()
    } else {
        (0..shape.batch.div_ceil(group))
            .into_par_iter()
            .map(|t| {
                let col = patches.map(|p| p.0[t].as_slice());
                group_backward(t, None, x, col, weight, y, grad_y, shape, slope)
            })
            .collect()
    };
    // Summed in group order (deterministic whatever the thread count), in parallel over slices of
    // the weight gradient: for the teacher this is ~15 M additions per step.
    let mut grad_w = vec![0.0f32; filters * patch];
    const SLICE: usize = 1 << 13;
    grad_w
        .par_chunks_mut(SLICE)
        .enumerate()
        .for_each(|(slice, out)| {
            for (gw, _) in &tasks {
                let part = &gw[slice * SLICE..slice * SLICE + out.len()];
                out.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }
        });
    let mut grad_b = vec![0.0f32; filters];
    for (_, gb) in &tasks {
        grad_b.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
    }
    debug_assert_eq!(grad_y.len(), shape.batch * image_out);
    ConvGrads {
        x: want_x.then_some(grad_x),
        weight: grad_w,
        bias: grad_b,
    }
}

/// One group's share of [`backward`]: writes its input gradient into `grad_x` (the group's slice)
/// and returns its weight and bias gradients.
#[allow(clippy::too_many_arguments)]
fn group_backward(
    task: usize,
    grad_x: Option<&mut [f32]>,
    x: &[f32],
    patches: Option<&[f32]>,
    weight: &[f32],
    y: &[f32],
    grad_y: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, patch, group) = (shape.filters, shape.patch(), shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let image_out = filters * spatial;
    let first = task * group;
    let images = group.min(shape.batch - first);
    let columns = images * spatial;

    // d loss / d (conv + bias), laid out filters × (image, position) like the forward product.
    let mut grad_z = vec![0.0f32; filters * columns];
    for g in 0..images {
        let at = (first + g) * image_out;
        for f in 0..filters {
            let dst = &mut grad_z[f * columns + g * spatial..][..spatial];
            let gy = &grad_y[at + f * spatial..][..spatial];
            match slope {
                Some(slope) => {
                    let yv = &y[at + f * spatial..][..spatial];
                    for ((d, &gv), &yv) in dst.iter_mut().zip(gy).zip(yv) {
                        *d = if yv < 0.0 { gv * slope } else { gv };
                    }
                }
                None => dst.copy_from_slice(gy),
            }
        }
    }
    let grad_b: Vec<f32> = grad_z.chunks(columns).map(|row| row.iter().sum()).collect();

    let gathered;
    let col = match patches {
        Some(col) => col,
        None => {
            gathered = im2col(&x[first * image_in..], shape, images);
            &gathered
        }
    };
    // grad_w (filters × patch) = grad_z (filters × columns) · colᵀ (columns × patch)
    let grad_w = Product::new(
        [filters, patch, columns],
        Layout::rows(columns),
        Layout::columns(columns),
    )
    .new_matrix(&grad_z, col);
    if let Some(grad_x) = grad_x {
        // grad_col (patch × columns) = weightᵀ (patch × filters) · grad_z (filters × columns)
        let grad_col = Product::new(
            [patch, columns, filters],
            Layout::columns(patch),
            Layout::rows(columns),
        )
        .new_matrix(weight, &grad_z);
        col2im(&grad_col, shape, images, grad_x);
    }
    (grad_w, grad_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        batch: usize,
        channels: usize,
        input: [usize; 2],
        filters: usize,
        k: usize,
        s: usize,
        pad: [usize; 2],
    ) -> ConvShape {
        ConvShape {
            batch,
            channels,
            input,
            filters,
            window: Window2d {
                kernel: [k, k],
                stride: [s, s],
                pad_begin: [pad[0], pad[0]],
                pad_end: [pad[1], pad[1]],
            },
        }
    }

    /// The textbook definition, one output at a time.
    fn direct(x: &[f32], wt: &[f32], b: &[f32], s: &ConvShape) -> Vec<f32> {
        let [h, w] = s.input;
        let [oh, ow] = s.output();
        let [kh, kw] = s.window.kernel;
        let mut y = vec![0.0; s.batch * s.filters * oh * ow];
        for n in 0..s.batch {
            for f in 0..s.filters {
                for r in 0..oh {
                    for q in 0..ow {
                        let mut acc = b[f] as f64;
                        for c in 0..s.channels {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let ir = (r * s.window.stride[0] + i) as isize
                                        - s.window.pad_begin[0] as isize;
                                    let ic = (q * s.window.stride[1] + j) as isize
                                        - s.window.pad_begin[1] as isize;
                                    if ir < 0 || ic < 0 || ir >= h as isize || ic >= w as isize {
                                        continue;
                                    }
                                    acc += (x[((n * s.channels + c) * h + ir as usize) * w
                                        + ic as usize]
                                        * wt[((f * s.channels + c) * kh + i) * kw + j])
                                        as f64;
                                }
                            }
                        }
                        y[((n * s.filters + f) * oh + r) * ow + q] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn forward_matches_the_definition_with_odd_shapes_and_padding() {
        for s in [
            shape(3, 2, [7, 6], 4, 3, 2, [0, 1]),
            shape(2, 3, [5, 5], 2, 3, 1, [1, 1]),
            shape(1, 1, [4, 4], 3, 2, 2, [0, 0]),
            // kernel offsets with no valid input column at all
            shape(2, 2, [1, 2], 2, 3, 1, [2, 0]),
        ] {
            let [h, w] = s.input;
            let x = values(s.batch * s.channels * h * w, 1);
            let wt = values(s.filters * s.patch(), 2);
            let b = values(s.filters, 3);
            let got = forward(&x, &wt, &b, &s, None);
            let want = direct(&x, &wt, &b, &s);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w} for {s:?}");
            }
            let leaky = forward(&x, &wt, &b, &s, Some(0.2));
            for (g, w) in leaky.iter().zip(&want) {
                let w = if *w < 0.0 { w * 0.2 } else { *w };
                assert!((g - w).abs() < 1e-5);
            }
        }
    }

    /// Central differences of `sum(dy ⊙ y)` against the analytic gradients, in f64 arithmetic
    /// through the f32 kernel (step 1e-2 on values of order 1, so rounding stays far below 1e-2).
    #[test]
    fn backward_matches_finite_differences() {
        let s = shape(2, 2, [5, 4], 3, 3, 2, [0, 1]);
        let [h, w] = s.input;
        let x = values(s.batch * s.channels * h * w, 7);
        let wt = values(s.filters * s.patch(), 8);
        let b = values(s.filters, 9);
        let y = forward(&x, &wt, &b, &s, None);
        let dy = values(y.len(), 10);
        let grads = backward(&x, &wt, &y, &dy, &s, None, true, None);
        // The patches kept by the forward pass give exactly the same gradients.
        let (y_kept, patches) = forward_keeping_patches(&x, &wt, &b, &s, None);
        assert_eq!(y_kept, y);
        let with_patches = backward(&x, &wt, &y, &dy, &s, None, true, Some(&patches));
        assert_eq!(with_patches.x, grads.x);
        assert_eq!(with_patches.weight, grads.weight);
        assert_eq!(with_patches.bias, grads.bias);
        let objective = |x: &[f32], wt: &[f32], b: &[f32]| -> f64 {
            forward(x, wt, b, &s, None)
                .iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let eps = 1e-2f32;
        let check = |analytic: &[f32], base: &[f32], which: usize| {
            for i in 0..base.len() {
                let mut plus = base.to_vec();
                let mut minus = base.to_vec();
                plus[i] += eps;
                minus[i] -= eps;
                let (fp, fm) = match which {
                    0 => (objective(&plus, &wt, &b), objective(&minus, &wt, &b)),
                    1 => (objective(&x, &plus, &b), objective(&x, &minus, &b)),
                    _ => (objective(&x, &wt, &plus), objective(&x, &wt, &minus)),
                };
                let numeric = (fp - fm) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-3,
                    "input {which} index {i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        };
        check(grads.x.as_ref().expect("asked for"), &x, 0);
        check(&grads.weight, &wt, 1);
        check(&grads.bias, &b, 2);
    }

    #[test]
    fn leaky_backward_scales_negative_outputs_by_the_slope() {
        let s = shape(1, 1, [3, 3], 1, 1, 1, [0, 0]);
        let x = vec![-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, -3.0, 4.0, -4.0];
        let y = forward(&x, &[1.0], &[0.0], &s, Some(0.5));
        assert_eq!(y, vec![-1.0, -0.5, 0.0, 1.0, 2.0, 3.0, -1.5, 4.0, -2.0]);
        let grads = backward(&x, &[1.0], &y, &[1.0; 9], &s, Some(0.5), true, None);
        assert_eq!(
            grads.x.unwrap(),
            vec![0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 0.5]
        );
        // d/dw sum(y) = sum over x of x * act'(x)
        assert_eq!(
            grads.weight,
            vec![-1.0 - 0.5 + 0.0 + 1.0 + 2.0 + 3.0 - 1.5 + 4.0 - 2.0]
        );
        assert_eq!(grads.bias, vec![7.0]);
    }
}
