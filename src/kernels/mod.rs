//! Local CPU kernels for the layers that dominate a training step on Flex (convolution with its
//! bias and leaky ReLU, max pooling, batch norm with its ReLU, and dropout's mask), plugged into burn through its backend
//! extension (`#[backend_extension]`) with hand-written backward passes.
//!
//! They run only on the Flex device (inference and autodiff); on every other backend, and when
//! [`set_enabled`]`(false)` (`distill bench` uses it to time burn's own ops in the same run), the
//! model calls burn's layers as before. Weights, checkpoints and results do not depend on the
//! path taken beyond float rounding: the tests in `tests/kernels.rs` compare both paths' outputs
//! and gradients.

pub mod adam;
pub mod conv;
pub mod direct;
pub mod dropout;
pub mod elementwise;
pub mod encoder;
mod matmul;
pub mod norm;
pub mod pool;
pub mod streaming;

/// Defines `fn $name` whose body is compiled three times, for AVX-512, for AVX2 and for the
/// baseline target, the widest the CPU has picked at run time: for loops LLVM vectorises (the
/// release build targets baseline x86-64, whose SSE2 has 4 lanes and no 64-bit multiply). Only
/// for exact operations (comparisons, selects, copies, integer arithmetic, and float arithmetic
/// without contraction, which Rust never does implicitly), so every path gives the same bits.
macro_rules! multiversioned {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if !$crate::kernels::BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
                    unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                        generic($($arg),*)
                    }
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    #[target_feature(enable = "avx2")]
                    unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
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
pub(crate) use multiversioned;

/// Keeps [`multiversioned`] kernels on their baseline path, so tests can compare it with the
/// wider ones (which any concurrently running test may also take meanwhile: harmless, since
/// every path gives the same bits).
pub(crate) static BASELINE_ONLY: AtomicBool = AtomicBool::new(false);

/// `f()` with every [`multiversioned`] kernel on its baseline path.
#[cfg(test)]
pub(crate) fn on_baseline<R>(f: impl FnOnce() -> R) -> R {
    BASELINE_ONLY.store(true, Ordering::Relaxed);
    let result = f();
    BASELINE_ONLY.store(false, Ordering::Relaxed);
    result
}

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Tensor};

/// Buffers at least this large come from fresh `mmap`s whatever the allocator settings (glibc's
/// mmap threshold cannot exceed 32 MiB on 64-bit).
const HUGE_BUFFER_BYTES: usize = 32 << 20;

/// A buffer of `len` copies of `value`, for a kernel's output.
pub(crate) fn filled(len: usize, value: f32) -> Vec<f32> {
    if len * std::mem::size_of::<f32>() < HUGE_BUFFER_BYTES {
        // `vec!` of zeros takes memory the allocator already zeroed where it can
        return vec![value; len];
    }
    let mut buffer = reserved(len);
    buffer.resize(len, value);
    buffer
}

/// An empty buffer with room for `len` elements, for a kernel that writes every element (so a
/// fill would be wasted: memset was 7.7% of a student training step before these buffers).
///
/// The teacher's first convolution and pooling produce 64 MiB each at batch 256, and every such
/// buffer is a fresh mapping: touching it in 4 KiB pages cost 16,384 page faults per buffer, a
/// quarter of an inference pass. Asking for transparent huge pages before the first touch (the
/// system default here is `madvise`) turns them into 32 faults.
pub(crate) fn reserved(len: usize) -> Vec<f32> {
    let mut buffer = Vec::<f32>::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len * std::mem::size_of::<f32>() >= HUGE_BUFFER_BYTES {
        const PAGE: usize = 4096;
        let bytes = len * std::mem::size_of::<f32>();
        let start = buffer.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(PAGE);
        let length = (start + bytes - aligned) / PAGE * PAGE;
        // SAFETY: the range lies inside the allocation just made and is page-aligned; the advice
        // only changes how the kernel backs the pages, not their contents. A failure (no THP
        // support) leaves ordinary pages, so the result is ignored.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
        }
    }
    buffer
}

/// A 2-D sliding window: kernel size, stride and the padding before and after each axis
/// (`[height, width]` each). Padding after only matters for the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2d {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Padding before (top, left).
    pub pad_begin: [usize; 2],
    /// Padding after (bottom, right).
    pub pad_end: [usize; 2],
}

impl Window2d {
    /// Output height and width for an input of `input` (height, width).
    pub fn output_size(&self, input: [usize; 2]) -> [usize; 2] {
        std::array::from_fn(|a| {
            (input[a] + self.pad_begin[a] + self.pad_end[a]).saturating_sub(self.kernel[a])
                / self.stride[a]
                + 1
        })
    }
}

/// The output columns `o` whose input column `o * stride + offset - pad` lies in `0..input`, as
/// `(first output, end of outputs, input column of the first)`; `None` when there is none.
pub(crate) fn valid_outputs(
    offset: usize,
    stride: usize,
    pad: usize,
    input: usize,
    output: usize,
) -> Option<(usize, usize, usize)> {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = if input + pad > offset {
        ((input + pad - offset - 1) / stride + 1).min(output)
    } else {
        0
    };
    (lo < hi).then(|| (lo, hi, lo * stride + offset - pad))
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the local kernels on or off for the whole process (on by default).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the model should use the local kernels on `device`: on Flex, unless turned off with
/// [`set_enabled`] or by the environment variable `DISTILL_LAYERS=burn` (which reproduces results
/// made before the kernels existed, bit for bit).
pub fn active(device: &Device) -> bool {
    ENABLED.load(Ordering::Relaxed) && !burn_layers_requested() && is_flex(device)
}

fn burn_layers_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REQUESTED.get_or_init(|| match std::env::var("DISTILL_LAYERS").as_deref() {
        Ok("burn") => true,
        Ok("local") | Err(_) => false,
        Ok(other) => {
            eprintln!("warning: DISTILL_LAYERS={other:?} is not `burn` or `local`; using the local kernels");
            false
        }
    })
}

#[cfg(feature = "flex")]
fn is_flex(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

#[cfg(not(feature = "flex"))]
fn is_flex(_device: &Device) -> bool {
    false
}

/// Whether inference-only kernels may run on `device`: [`active`], and gradients are not tracked.
pub fn inference_active(device: &Device) -> bool {
    active(device) && !device.is_autodiff()
}

/// One post-norm BERT layer with exact GELU, inference only: `x` is `[batch, len, width]`,
/// `padding` `[batch, len]` row-major (true on padding), `eps` the layer norms' epsilon (Flex only: check
/// [`inference_active`]).
#[cfg(feature = "flex")]
pub fn encoder_layer(
    layer: &burn::nn::transformer::TransformerEncoderLayer,
    x: Tensor<3>,
    padding: &[bool],
    eps: f64,
) -> Tensor<3> {
    use burn::backend::Dispatch;
    use burn::nn::{LayerNorm, Linear};
    let linear = |l: &Linear| {
        let bias = l
            .bias
            .as_ref()
            .expect("BERT's dense layers have biases")
            .val();
        (l.weight.val().into_dispatch(), bias.into_dispatch())
    };
    let norm = |n: &LayerNorm| {
        let beta = n
            .beta
            .as_ref()
            .expect("BERT's layer norms have shifts")
            .val();
        (n.gamma.val().into_dispatch(), beta.into_dispatch())
    };
    let (query_weight, query_bias) = linear(&layer.mha.query);
    let (key_weight, key_bias) = linear(&layer.mha.key);
    let (value_weight, value_bias) = linear(&layer.mha.value);
    let (output_weight, output_bias) = linear(&layer.mha.output);
    let (attention_norm_gamma, attention_norm_beta) = norm(&layer.norm_1);
    let (inner_weight, inner_bias) = linear(&layer.pwff.linear_inner);
    let (outer_weight, outer_bias) = linear(&layer.pwff.linear_outer);
    let (output_norm_gamma, output_norm_beta) = norm(&layer.norm_2);
    let params = flex::EncoderLayerParams {
        query_weight,
        query_bias,
        key_weight,
        key_bias,
        value_weight,
        value_bias,
        output_weight,
        output_bias,
        attention_norm_gamma,
        attention_norm_beta,
        inner_weight,
        inner_bias,
        outer_weight,
        outer_bias,
        output_norm_gamma,
        output_norm_beta,
    };
    Tensor::from_dispatch(<Dispatch as flex::TextKernels>::text_encoder_layer(
        x.into_dispatch(),
        params,
        padding.to_vec(),
        layer.mha.n_heads,
        eps as f32,
    ))
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`inference_active`] is always false.
pub fn encoder_layer(
    _layer: &burn::nn::transformer::TransformerEncoderLayer,
    _x: Tensor<3>,
    _padding: &[bool],
    _eps: f64,
) -> Tensor<3> {
    unreachable!("local kernels need the flex feature")
}

/// Max pooling of `[batch, channels, h, w]` over `window` (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn max_pool2d(x: Tensor<4>, window: Window2d) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_max_pool2d(
        x.into_dispatch(),
        window,
    ))
}

/// `act(conv2d(x, weight) + bias)` over `window`, with `act` a leaky ReLU of slope `slope` or the
/// identity (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    window: Window2d,
    slope: Option<f32>,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        window,
        slope,
    ))
}

/// `maxpool(act(conv2d(x, weight) + bias))`, where the pool is Keras' 2×2, stride-1, 'same' max
/// pool ([`is_same_2x2_pool`]): the convolution's output is pooled a group of images at a time
/// while in cache. Without gradients it is never written out at all; in training it is kept for
/// the backward pass, which routes the pooled gradient back a plane at a time (Flex only: check
/// [`active`]).
///
/// With `dropout_rate`, training-time [`dropout`] of the pooled output follows in the same pass
/// (its mask drawn as [`dropout`] draws it, so the result is the same bits as the two calls), and
/// its backward pass is folded into the convolution's.
#[cfg(feature = "flex")]
pub fn conv2d_max_pooled(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    window: Window2d,
    slope: Option<f32>,
    dropout_rate: Option<f64>,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    let dropout = dropout_rate.map(|rate| dropout::DropoutMask {
        keep: (1.0 - rate) as f32,
        seed: draw_dropout_seed(&x.device()),
    });
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_conv2d_max_pooled(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        window,
        slope,
        dropout,
    ))
}

/// Whether `window` is Keras' `MaxPooling2D(2, strides=1, padding="same")`, the pool that
/// [`conv2d_max_pooled`] fuses.
pub fn is_same_2x2_pool(window: &Window2d) -> bool {
    pool::is_keras_same_2x2(window)
}

/// Per-channel mean and biased variance of `[batch, channels, h, w]` as a `[2, channels]` tensor
/// (row 0 the means), untracked by autodiff (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn channel_stats(x: Tensor<4>) -> Tensor<2> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_channel_stats(
        x.into_dispatch(),
    ))
}

/// Batch normalisation of `[batch, channels, h, w]` with the given per-channel statistics,
/// followed by a ReLU if `relu`. `batch_stats` says the statistics are `x`'s own (training mode,
/// from [`channel_stats`]), so the input gradient accounts for them; otherwise they are
/// constants (running statistics). Flex only: check [`active`].
#[cfg(feature = "flex")]
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    variance: Tensor<1>,
    eps: f64,
    relu: bool,
    batch_stats: bool,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        eps as f32,
        relu,
        batch_stats,
    ))
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn channel_stats(_x: Tensor<4>) -> Tensor<2> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    _x: Tensor<4>,
    _gamma: Tensor<1>,
    _beta: Tensor<1>,
    _mean: Tensor<1>,
    _variance: Tensor<1>,
    _eps: f64,
    _relu: bool,
    _batch_stats: bool,
) -> Tensor<4> {
    unreachable!("local kernels need the flex feature")
}

/// Training-time inverted dropout: each element is kept with probability `1 - rate` and scaled by
/// `1 / (1 - rate)`. The mask's seed is drawn from the device's random generator, so
/// `Device::seed` makes runs repeatable as with burn's dropout (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn dropout<const D: usize>(x: Tensor<D>, rate: f64) -> Tensor<D> {
    use burn::backend::Dispatch;
    let seed = draw_dropout_seed(&x.device());
    let keep = (1.0 - rate) as f32;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::cnn_dropout(
        x.into_dispatch(),
        keep,
        seed,
    ))
}

/// A dropout mask's seed from the device's random generator: two 24-bit uniform draws make a
/// 48-bit seed.
#[cfg(feature = "flex")]
fn draw_dropout_seed(device: &Device) -> u64 {
    use burn::tensor::Distribution;
    let draws = Tensor::<1>::random([2], Distribution::Default, device)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 draws");
    draws.iter().fold(0u64, |s, u| {
        (s << 24) | ((u * (1u32 << 24) as f32) as u64 & 0xFF_FFFF)
    })
}

/// One Adam(W) update of a parameter tensor and its two moments, in one pass (see
/// [`adam::update`]); returns the new parameter, first and second moments. On the first step
/// (`step.time == 1`) the moments' values are not read. Flex only: check [`active`]; the
/// tensors must not track gradients (an optimizer's inner tensors).
#[cfg(feature = "flex")]
pub fn adam_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: adam::AdamStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    use burn::backend::Dispatch;
    let (param, moment_1, moment_2) = <Dispatch as flex::OptimizerKernels>::adam_update(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(param),
        Tensor::from_dispatch(moment_1),
        Tensor::from_dispatch(moment_2),
    )
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn adam_update<const D: usize>(
    _param: Tensor<D>,
    _grad: Tensor<D>,
    _moment_1: Tensor<D>,
    _moment_2: Tensor<D>,
    _step: adam::AdamStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    unreachable!("local kernels need the flex feature")
}

/// BERT's exact GELU, `x · Φ(x)`, with its derivative for the backward pass (Flex only: check
/// [`active`]).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation(x, elementwise::Activation::Gelu)
}

/// The logistic sigmoid, with its derivative for the backward pass (Flex only: check
/// [`active`]).
pub fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation(x, elementwise::Activation::Sigmoid)
}

/// `tanh`, with its derivative for the backward pass (Flex only: check [`active`]).
pub fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation(x, elementwise::Activation::Tanh)
}

#[cfg(feature = "flex")]
fn activation<const D: usize>(x: Tensor<D>, activation: elementwise::Activation) -> Tensor<D> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::LayerKernels>::layer_activation(
        x.into_dispatch(),
        activation,
    ))
}

#[cfg(not(feature = "flex"))]
fn activation<const D: usize>(_x: Tensor<D>, _activation: elementwise::Activation) -> Tensor<D> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn dropout<const D: usize>(_x: Tensor<D>, _rate: f64) -> Tensor<D> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn conv2d_max_pooled(
    _x: Tensor<4>,
    _weight: Tensor<4>,
    _bias: Tensor<1>,
    _window: Window2d,
    _slope: Option<f32>,
    _dropout_rate: Option<f64>,
) -> Tensor<4> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn max_pool2d(_x: Tensor<4>, _window: Window2d) -> Tensor<4> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn conv2d(
    _x: Tensor<4>,
    _weight: Tensor<4>,
    _bias: Tensor<1>,
    _window: Window2d,
    _slope: Option<f32>,
) -> Tensor<4> {
    unreachable!("local kernels need the flex feature")
}

#[cfg(feature = "flex")]
mod flex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_buffers_hold_the_value_below_and_above_the_huge_page_size() {
        for len in [0, 1, 1000, HUGE_BUFFER_BYTES / 4 + 3] {
            for value in [0.0, f32::NEG_INFINITY] {
                let buffer = filled(len, value);
                assert_eq!(buffer.len(), len);
                assert!(
                    buffer.iter().all(|&v| v == value),
                    "len {len}, value {value}"
                );
            }
        }
    }
}
