//! Local CPU kernels for the two layers that dominate a training step on Flex (convolution with
//! its bias and leaky ReLU, and max pooling), plugged into burn through its backend extension
//! (`#[backend_extension]`) with hand-written backward passes.
//!
//! They run only on the Flex device (inference and autodiff); on every other backend, and when
//! [`set_enabled`]`(false)` (`distill bench` uses it to time burn's own ops in the same run), the
//! model calls burn's layers as before. Weights, checkpoints and results do not depend on the
//! path taken beyond float rounding: the tests in `tests/kernels.rs` compare both paths' outputs
//! and gradients.

pub mod conv;
pub mod dropout;
pub mod pool;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Tensor};

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

/// Max pooling of `[batch, channels, h, w]` over `window` (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn max_pool2d(x: Tensor<4>, window: Window2d) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as flex::CnnKernels>::cnn_max_pool2d(
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
    Tensor::from_dispatch(<Dispatch as flex::CnnKernels>::cnn_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        window,
        slope,
    ))
}

/// Training-time inverted dropout: each element is kept with probability `1 - rate` and scaled by
/// `1 / (1 - rate)`. The mask's seed is drawn from the device's random generator, so
/// `Device::seed` makes runs repeatable as with burn's dropout (Flex only: check [`active`]).
#[cfg(feature = "flex")]
pub fn dropout<const D: usize>(x: Tensor<D>, rate: f64) -> Tensor<D> {
    use burn::backend::Dispatch;
    use burn::tensor::Distribution;
    let draws = Tensor::<1>::random([2], Distribution::Default, &x.device())
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 draws");
    // Two 24-bit uniform draws make a 48-bit seed.
    let seed = draws.iter().fold(0u64, |s, u| {
        (s << 24) | ((u * (1u32 << 24) as f32) as u64 & 0xFF_FFFF)
    });
    let keep = (1.0 - rate) as f32;
    Tensor::from_dispatch(<Dispatch as flex::CnnKernels>::cnn_dropout(
        x.into_dispatch(),
        keep,
        seed,
    ))
}

#[cfg(not(feature = "flex"))]
/// Unreachable without the `flex` feature: [`active`] is always false.
pub fn dropout<const D: usize>(_x: Tensor<D>, _rate: f64) -> Tensor<D> {
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
