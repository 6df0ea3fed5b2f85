//! The inference pass of one BERT encoder layer (post-norm: self-attention, add & norm, GELU
//! feed-forward, add & norm) on `f32` slices: teacher logits, evaluation and serving.
//!
//! burn's layer is some forty tensor ops; on Flex its exact GELU calls libm's scalar `erf` (a
//! quarter of a MiniLM pass here) and its attention is two batched products of 32×32 matrices
//! with masking and a softmax in separate passes between them. Here the projections are one
//! matrix product each with the bias folded in, each text does its attention for all heads while
//! its rows are in cache, and GELU, softmax and layer norm run on vectorised polynomial `exp` and
//! `erf` (no libm calls). Dropout is absent: this is the inference pass only.

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
        ffn,
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
    let query = dense(x, rows, width, &weights.query, width);
    let key = dense(x, rows, width, &weights.key, width);
    let value = dense(x, rows, width, &weights.value, width);
    let context = attention(&query, &key, &value, padding, shape);
    // The later products leave their bias to the pass that follows them.
    let mut hidden = matmul(&context, rows, width, weights.output.weight, width);
    add_norm(
        &mut hidden,
        x,
        weights.output.bias,
        &weights.attention_norm,
        width,
    );
    let mut inner = matmul(&hidden, rows, width, weights.inner.weight, ffn);
    bias_gelu(&mut inner, weights.inner.bias);
    let mut out = matmul(&inner, rows, ffn, weights.outer.weight, width);
    add_norm(
        &mut out,
        &hidden,
        weights.outer.bias,
        &weights.output_norm,
        width,
    );
    out
}

/// `x · weight + bias` for `rows` rows of `inputs` values (`weight` is `[inputs, outputs]`).
fn dense(x: &[f32], rows: usize, inputs: usize, layer: &Dense, outputs: usize) -> Vec<f32> {
    assert_eq!(layer.bias.len(), outputs, "dense bias is not [outputs]");
    let mut out = Vec::with_capacity(rows * outputs);
    for _ in 0..rows {
        out.extend_from_slice(layer.bias);
    }
    projection(x, rows, inputs, layer.weight, outputs)
        .accumulating()
        .write_into(&mut out, outputs, x, layer.weight);
    out
}

/// `x · weight` for `rows` rows of `inputs` values, the bias left to the pass that follows.
fn matmul(x: &[f32], rows: usize, inputs: usize, weight: &[f32], outputs: usize) -> Vec<f32> {
    projection(x, rows, inputs, weight, outputs).new_matrix(x, weight)
}

/// The product of `x`'s `rows` row-major rows with a row-major `[inputs, outputs]` weight, on
/// all of rayon's threads.
fn projection(x: &[f32], rows: usize, inputs: usize, weight: &[f32], outputs: usize) -> Product {
    assert_eq!(x.len(), rows * inputs, "dense input is not [rows, inputs]");
    assert_eq!(
        weight.len(),
        inputs * outputs,
        "dense weight is not [inputs, outputs]"
    );
    Product::new(
        [rows, outputs, inputs],
        Layout::rows(inputs),
        Layout::rows(outputs),
    )
    .parallel()
}

/// Scaled dot-product attention of every head, `[batch, len, width]` in and out (head `h` owns
/// columns `h * d .. (h + 1) * d`).
fn attention(
    query: &[f32],
    key: &[f32],
    value: &[f32],
    padding: &[bool],
    shape: &EncoderShape,
) -> Vec<f32> {
    let EncoderShape {
        len, width, heads, ..
    } = *shape;
    let d = width / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let text_size = len * width;
    let mut context = vec![0.0f32; query.len()];
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
    context
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
