//! The inference pass of one BERT encoder layer (post-norm: self-attention, add & norm, GELU
//! feed-forward, add & norm) on `f32` slices: teacher logits, evaluation and serving.
//!
//! burn's layer is some forty tensor ops; on Flex its exact GELU calls libm's scalar `erf` (a
//! quarter of a MiniLM pass here) and its attention is two batched products of 32×32 matrices
//! with masking and a softmax in separate passes between them. Here the projections are one
//! matrix product each with the bias folded in, each text does its attention for all heads while
//! its rows are in cache, and GELU, softmax and layer norm run on vectorised polynomial `exp` and
//! `erf` (no libm calls). Dropout is absent: this is the inference pass only.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elementwise;
use super::matmul::{Layout, Product};

/// Sizes of one layer's input `[batch, len, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderShape {
    /// Texts in the batch.
    pub batch: usize,
    /// Tokens per text (padding included).
    pub len: usize,
    /// Hidden width.
    pub width: usize,
    /// Attention heads (divides `width`).
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
}

/// A dense layer: `weight` is `[inputs, outputs]` row-major (burn's `Linear` layout).
#[derive(Clone, Copy, Debug)]
pub struct Dense<'a> {
    /// `[inputs, outputs]`.
    pub weight: &'a [f32],
    /// `[outputs]`.
    pub bias: &'a [f32],
}

/// A layer norm over the last axis.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    /// Scale, `[width]`.
    pub gamma: &'a [f32],
    /// Shift, `[width]`.
    pub beta: &'a [f32],
    /// Added to the variance.
    pub eps: f32,
}

/// One layer's parameters.
#[derive(Clone, Copy, Debug)]
pub struct EncoderLayerWeights<'a> {
    /// Query projection.
    pub query: Dense<'a>,
    /// Key projection.
    pub key: Dense<'a>,
    /// Value projection.
    pub value: Dense<'a>,
    /// Attention output projection.
    pub output: Dense<'a>,
    /// Norm after the attention block (burn's `norm_1`).
    pub attention_norm: Norm<'a>,
    /// Feed-forward expansion (followed by GELU).
    pub inner: Dense<'a>,
    /// Feed-forward contraction.
    pub outer: Dense<'a>,
    /// Norm after the feed-forward block (burn's `norm_2`).
    pub output_norm: Norm<'a>,
}

/// The layer's output for `x` (`[batch, len, width]` row-major); `padding[b * len + t]` marks
/// token `t` of text `b` as padding, which no token attends to.
///
/// With several threads and at least as many texts, each thread runs the whole layer on its
/// own share of the texts (serial products, its activations staying in its core's cache); with
/// fewer texts (a single text's latency) the products themselves are split. Each output element
/// is the same sum in the same order either way, so results do not depend on the thread count.
pub fn forward(
    x: &[f32],
    padding: &[bool],
    weights: &EncoderLayerWeights,
    shape: &EncoderShape,
) -> Vec<f32> {
    let EncoderShape {
        batch,
        len,
        width,
        heads,
        ..
    } = *shape;
    let rows = batch * len;
    assert_eq!(
        x.len(),
        rows * width,
        "encoder input is not [batch, len, width]"
    );
    assert_eq!(padding.len(), rows, "padding mask is not [batch, len]");
    assert!(
        heads > 0 && width % heads == 0,
        "{heads} heads do not divide width {width}"
    );
    let mut out = Vec::with_capacity(rows * width);
    let threads = rayon::current_num_threads();
    if threads > 1 && batch >= threads {
        let texts = batch.div_ceil(threads);
        out.spare_capacity_mut()[..rows * width]
            .par_chunks_mut(texts * len * width)
            .zip(x.par_chunks(texts * len * width))
            .zip(padding.par_chunks(texts * len))
            .for_each(|((out, x), padding)| {
                let share = EncoderShape {
                    batch: padding.len() / len,
                    ..*shape
                };
                layer(x, padding, weights, &share, false, out);
            });
    } else {
        layer(
            x,
            padding,
            weights,
            shape,
            true,
            &mut out.spare_capacity_mut()[..rows * width],
        );
    }
    // SAFETY: `layer` initialised every element of each chunk it was given, and the chunks
    // cover the first `rows * width` elements.
    unsafe { out.set_len(rows * width) };
    out
}

/// [`forward`] on one share of the texts, into `out` (`[batch, len, width]`, initialised here);
/// `split` spreads each matrix product over rayon's threads.
fn layer(
    x: &[f32],
    padding: &[bool],
    weights: &EncoderLayerWeights,
    shape: &EncoderShape,
    split: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let EncoderShape {
        batch,
        len,
        width,
        ffn,
        ..
    } = *shape;
    let rows = batch * len;
    let mut scratch = SCRATCH.with(|scratch| scratch.take());
    let Scratch {
        query,
        key,
        value,
        context,
        hidden,
        inner,
    } = &mut scratch;
    let product = |inputs, outputs| {
        let product = Product::new(
            [rows, outputs, inputs],
            Layout::rows(inputs),
            Layout::rows(outputs),
        );
        if split {
            product.parallel()
        } else {
            product
        }
    };
    for (buffer, layer) in [
        (&mut *query, &weights.query),
        (&mut *key, &weights.key),
        (&mut *value, &weights.value),
    ] {
        check_dense(layer, width, width);
        buffer.clear();
        for _ in 0..rows {
            buffer.extend_from_slice(layer.bias);
        }
        product(width, width)
            .accumulating()
            .write_into(buffer, width, x, layer.weight);
    }
    attention(query, key, value, padding, shape, context);
    // The later products leave their bias to the pass that follows them.
    check_dense(&weights.output, width, width);
    product(width, width).replace_contents(hidden, context, weights.output.weight);
    add_norm(
        hidden,
        x,
        weights.output.bias,
        &weights.attention_norm,
        width,
    );
    check_dense(&weights.inner, width, ffn);
    product(width, ffn).replace_contents(inner, hidden, weights.inner.weight);
    bias_gelu(inner, weights.inner.bias);
    check_dense(&weights.outer, ffn, width);
    assert_eq!(
        out.len(),
        rows * width,
        "encoder output is not [batch, len, width]"
    );
    product(ffn, width).write_into_uninit(out, width, inner, weights.outer.weight);
    // SAFETY: the product initialised all of `out` (rows × width at row stride width).
    let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
    add_norm(out, hidden, weights.outer.bias, &weights.output_norm, width);
    SCRATCH.with(|cell| cell.replace(scratch));
}

/// Asserts that `layer` maps `inputs` values to `outputs`.
fn check_dense(layer: &Dense, inputs: usize, outputs: usize) {
    assert_eq!(
        layer.weight.len(),
        inputs * outputs,
        "dense weight is not [inputs, outputs]"
    );
    assert_eq!(layer.bias.len(), outputs, "dense bias is not [outputs]");
}

/// One pass's intermediate activations, kept on the thread between passes so that a pass does
/// not depend on the allocator to recycle ~30 MB of buffers per layer (64 texts × 32 tokens):
/// with glibc's default thresholds they are unmapped and faulted in again every pass, 15–20% of
/// a MiniLM layer in a process that does not raise them as the `distill` binary does
/// ([`crate::backend::tune_allocator`]). What is kept is one batch's worth (about 56 MB per
/// thread at 64 × 64 tokens for MiniLM) until the thread ends.
#[derive(Default)]
struct Scratch {
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
    context: Vec<f32>,
    hidden: Vec<f32>,
    inner: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Scaled dot-product attention of every head, `[batch, len, width]` in and out (head `h` owns
/// columns `h * d .. (h + 1) * d`).
fn attention(
    query: &[f32],
    key: &[f32],
    value: &[f32],
    padding: &[bool],
    shape: &EncoderShape,
    context: &mut Vec<f32>,
) {
    let EncoderShape {
        len, width, heads, ..
    } = *shape;
    let d = width / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let text_size = len * width;
    // Every element is written: the second product of each head overwrites its columns.
    context.clear();
    context.resize(query.len(), 0.0);
    context
        .par_chunks_mut(text_size)
        .enumerate()
        .for_each(|(b, context)| {
            let rows = b * text_size..(b + 1) * text_size;
            let (query, key, value) = (&query[rows.clone()], &key[rows.clone()], &value[rows]);
            let padding = &padding[b * len..(b + 1) * len];
            let mut scores = vec![0.0f32; len * len];
            for h in 0..heads {
                let column = h * d;
                // scores = q · kᵀ: kᵀ's element (i, j) is key[j * width + column + i].
                Product::new([len, len, d], Layout::rows(width), Layout::columns(width))
                    .scaled(scale)
                    .write_into(&mut scores, len, &query[column..], &key[column..]);
                for row in scores.chunks_exact_mut(len) {
                    masked_softmax(row, padding);
                }
                Product::new([len, d, len], Layout::rows(len), Layout::rows(width)).write_into(
                    &mut context[column..],
                    width,
                    &scores,
                    &value[column..],
                );
            }
        });
}

/// Softmax of `row` over the positions `padding` leaves; padded positions get weight 0 (burn
/// fills them with -10⁴ before its softmax, whose exponential is 0 in `f32` as well).
fn masked_softmax(row: &mut [f32], padding: &[bool]) {
    let max = row
        .iter()
        .zip(padding)
        .filter(|(_, &pad)| !pad)
        .map(|(&v, _)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    for (v, &pad) in row.iter_mut().zip(padding) {
        *v = if pad { f32::NEG_INFINITY } else { *v - max };
    }
    elementwise::exp_in_place(row);
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `out = layer_norm(out + bias + residual)` row by row.
fn add_norm(out: &mut [f32], residual: &[f32], bias: &[f32], norm: &Norm, width: usize) {
    assert_eq!(out.len(), residual.len());
    assert_eq!(bias.len(), width, "dense bias is not [outputs]");
    assert_eq!(norm.gamma.len(), width, "layer norm scale is not [width]");
    assert_eq!(norm.beta.len(), width, "layer norm shift is not [width]");
    const ROWS_PER_TASK: usize = 64;
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(residual.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(out, residual)| {
            for (row, residual) in out
                .chunks_exact_mut(width)
                .zip(residual.chunks_exact(width))
            {
                elementwise::add_norm_row(row, residual, bias, norm.gamma, norm.beta, norm.eps);
            }
        });
}

/// `values = gelu(values + bias)` row by row, with the exact (erf) GELU.
fn bias_gelu(values: &mut [f32], bias: &[f32]) {
    const ROWS_PER_TASK: usize = 16;
    assert_eq!(values.len() % bias.len(), 0, "dense bias is not [outputs]");
    values
        .par_chunks_mut(bias.len() * ROWS_PER_TASK)
        .for_each(|rows| {
            for row in rows.chunks_exact_mut(bias.len()) {
                elementwise::bias_gelu_row(row, bias);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_softmax_ignores_padding_and_sums_to_one() {
        let mut row = vec![1.0, 2.0, 50.0, 3.0];
        masked_softmax(&mut row, &[false, false, true, false]);
        let e = [1.0f64.exp(), 2.0f64.exp(), 3.0f64.exp()];
        let total: f64 = e.iter().sum();
        for (got, want) in [row[0], row[1], row[3]]
            .iter()
            .zip(e.iter().map(|v| v / total))
        {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(row[2], 0.0);
    }
}
