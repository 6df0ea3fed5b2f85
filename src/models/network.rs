//! A [`ModelSpec`] made real: a burn [`Module`] whose layers follow the spec one for one.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, LeakyRelu, LeakyReluConfig,
    Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::residual::ResidualStage;
use super::spec::{Activation, LayerSpec, ModelSpec, Padding, Shape, SpecError};
use crate::kernels::{self, Window2d};

/// Collapses channels x height x width into one feature vector (channel-major, as burn lays out
/// NCHW; Keras flattens NHWC, which only permutes the next dense layer's rows).
#[derive(Module, Debug, Default)]
pub struct Flatten;

/// Averages each channel over height and width.
#[derive(Module, Debug, Default)]
pub struct GlobalAvgPool;

/// A fully connected layer with an optional ReLU.
#[derive(Module, Debug)]
pub struct Dense {
    /// The affine map (`weight` is `[inputs, units]`).
    pub linear: Linear,
    /// Whether ReLU follows.
    pub relu: bool,
}

/// One built layer; the variants mirror [`LayerSpec`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer {
    /// See [`LayerSpec::Conv2d`].
    Conv2d(Conv2d),
    /// See [`LayerSpec::LeakyRelu`].
    LeakyRelu(LeakyRelu),
    /// See [`LayerSpec::Relu`].
    Relu(Relu),
    /// See [`LayerSpec::MaxPool2d`].
    MaxPool2d(MaxPool2d),
    /// See [`LayerSpec::Dropout`].
    Dropout(Dropout),
    /// See [`LayerSpec::Flatten`].
    Flatten(Flatten),
    /// See [`LayerSpec::Dense`].
    Dense(Dense),
    /// See [`LayerSpec::BatchNorm`].
    BatchNorm(BatchNorm),
    /// See [`LayerSpec::GlobalAvgPool`].
    GlobalAvgPool(GlobalAvgPool),
    /// See [`LayerSpec::Residual`].
    Residual(ResidualStage),
}

/// A sequential CNN built from a [`ModelSpec`]. Input `[batch, C, H, W]`, output logits `[batch, classes]`.
#[derive(Module, Debug)]
pub struct Network {
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

/// What a feature tap reads: a feature map, or a vector after flattening or global pooling.
#[derive(Debug, Clone)]
pub enum Feature {
    /// `[batch, C, H, W]`.
    Map(Tensor<4>),
    /// `[batch, features]`.
    Vector(Tensor<2>),
}

impl Feature {
    /// The values flattened per example, `[batch, C·H·W]` (an embedding as it is).
    pub fn flat(self) -> Tensor<2> {
        match self {
            Feature::Map(t) => t.flatten(1, 3),
            Feature::Vector(t) => t,
        }
    }

    /// The feature map; `Err` for a vector.
    pub fn map(self) -> anyhow::Result<Tensor<4>> {
        match self {
            Feature::Map(t) => Ok(t),
            Feature::Vector(t) => anyhow::bail!(
                "expected a feature map, got a vector of {} features",
                t.dims()[1]
            ),
        }
    }
}

/// Activations between layers: feature maps before a flatten, vectors after.
pub(super) enum Activations {
    Image(Tensor<4>),
    Flat(Tensor<2>),
}

impl Activations {
    /// These activations as a tap reads them.
    pub(super) fn feature(&self) -> Feature {
        match self {
            Activations::Image(t) => Feature::Map(t.clone()),
            Activations::Flat(t) => Feature::Vector(t.clone()),
        }
    }

    pub(super) fn image(self) -> Tensor<4> {
        match self {
            Activations::Image(x) => x,
            // `ModelSpec::infer` rejects every spec that would get here.
            Activations::Flat(_) => unreachable!("spatial layer after flatten passed validation"),
        }
    }

    fn image_dims(&self) -> [usize; 4] {
        match self {
            Activations::Image(x) => x.dims(),
            Activations::Flat(_) => unreachable!("spatial layer after flatten passed validation"),
        }
    }

    fn dims(&self) -> Vec<usize> {
        match self {
            Activations::Image(t) => t.dims().to_vec(),
            Activations::Flat(t) => t.dims().to_vec(),
        }
    }

    fn is_autodiff(&self) -> bool {
        match self {
            Activations::Image(x) => x.device().is_autodiff(),
            Activations::Flat(x) => x.device().is_autodiff(),
        }
    }

    fn map(
        self,
        f2: impl FnOnce(Tensor<2>) -> Tensor<2>,
        f4: impl FnOnce(Tensor<4>) -> Tensor<4>,
    ) -> Self {
        match self {
            Activations::Image(x) => Activations::Image(f4(x)),
            Activations::Flat(x) => Activations::Flat(f2(x)),
        }
    }
}

/// The window of `layer` (kernel, stride, padding) on the feature map `x`, or `None` when `x` is
/// not a feature map or the layer uses something the local kernels do not (dilation, groups,
/// ceil mode).
fn window_for(
    x: &Activations,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: &PaddingConfig2d,
) -> Option<Window2d> {
    let Activations::Image(t) = x else {
        return None;
    };
    let [_, _, h, w] = t.dims();
    window_on(h, w, kernel, stride, padding)
}

/// The window of a layer with `kernel`, `stride` and `padding` on a feature map of `h`×`w`.
pub(super) fn window_on(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: &PaddingConfig2d,
) -> Option<Window2d> {
    let ((top, bottom), (left, right)) = match *padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            Padding::Same.amounts(h, kernel[0], stride[0]),
            Padding::Same.amounts(w, kernel[1], stride[1]),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    };
    let window = Window2d {
        kernel,
        stride,
        pad_begin: [top, left],
        pad_end: [bottom, right],
    };
    let fits = (0..2).all(|a| {
        window.stride[a] > 0
            && window.pad_begin[a] < kernel[a]
            && [h, w][a] + window.pad_begin[a] + window.pad_end[a] >= kernel[a]
    });
    fits.then_some(window)
}

fn conv_window(conv: &Conv2d, x: &Activations) -> Option<Window2d> {
    if conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    window_for(x, conv.kernel_size, conv.stride, &conv.padding)
}

fn pool_window(pool: &MaxPool2d, x: &Activations) -> Option<Window2d> {
    let Activations::Image(t) = x else {
        return None;
    };
    let [_, _, h, w] = t.dims();
    pool_window_on(pool, [h, w])
}

/// The window of `pool` on a feature map of `[h, w]`.
fn pool_window_on(pool: &MaxPool2d, [h, w]: [usize; 2]) -> Option<Window2d> {
    if pool.dilation != [1, 1] || pool.ceil_mode {
        return None;
    }
    window_on(h, w, pool.kernel_size, pool.stride, &pool.padding)
}

/// burn's `BatchNorm::forward` on the local kernel: batch statistics and a running-average
/// update when training under autodiff, the running statistics otherwise.
fn local_batch_norm(norm: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    let device = x.device();
    let channels = x.dims()[1];
    let training = device.is_autodiff() && norm.training.is_enabled();
    let (mean, variance) = if training {
        let stats = kernels::channel_stats(x.clone());
        let mean = stats.clone().slice(0..1).reshape([channels]);
        let variance = stats.slice(1..2).reshape([channels]);
        let momentum = norm.momentum;
        let update = |state: &burn::module::RunningState<Tensor<1>>, batch: &Tensor<1>| {
            let running = state.value_sync().to_device(&device);
            let running = running
                .mul_scalar(1.0 - momentum)
                .add(batch.clone().detach().mul_scalar(momentum));
            state.update(running.detach());
        };
        update(&norm.running_mean, &mean);
        update(&norm.running_var, &variance);
        (mean, variance)
    } else {
        (
            norm.running_mean.value().to_device(&device),
            norm.running_var.value().to_device(&device),
        )
    };
    kernels::batch_norm(
        x,
        norm.gamma.val(),
        norm.beta.val(),
        mean,
        variance,
        norm.epsilon,
        relu,
        training,
    )
}

fn padding_config(padding: Padding) -> PaddingConfig2d {
    match padding {
        Padding::Same => PaddingConfig2d::Same,
        Padding::Valid => PaddingConfig2d::Valid,
        Padding::Explicit(n) => PaddingConfig2d::Explicit(n, n, n, n),
    }
}

/// Keras' `glorot_uniform`: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)), drawn from our own
/// seeded generator so initial weights are identical on every backend.
fn glorot_uniform(
    rng: &mut ChaCha8Rng,
    shape: Vec<usize>,
    fan_in: usize,
    fan_out: usize,
    device: &Device,
) -> Tensor<1> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-limit..limit)).collect();
    Tensor::<1>::from_data(TensorData::new(values, [n]), device)
}

/// Builds the layer `spec` describes for inputs of `shape` (already validated), drawing its
/// initial weights from `rng`.
pub(super) fn build_layer(
    spec: &LayerSpec,
    shape: Shape,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Layer {
    match *spec {
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            bias,
            groups,
        } => {
            let Shape::Image([c, _, _]) = shape else {
                unreachable!("a convolution after flatten passed validation")
            };
            Layer::Conv2d(glorot_conv(
                rng,
                [c, filters],
                kernel,
                stride,
                padding,
                bias,
                groups,
                device,
            ))
        }
        LayerSpec::LeakyRelu { slope } => {
            Layer::LeakyRelu(LeakyReluConfig::new().with_negative_slope(slope).init())
        }
        LayerSpec::Relu => Layer::Relu(Relu::new()),
        LayerSpec::MaxPool2d {
            size,
            stride,
            padding,
        } => {
            let stride = stride.unwrap_or(size);
            Layer::MaxPool2d(
                MaxPool2dConfig::new([size, size])
                    .with_strides([stride, stride])
                    .with_padding(padding_config(padding))
                    .init(),
            )
        }
        LayerSpec::Dropout { rate } => Layer::Dropout(DropoutConfig::new(rate).init()),
        LayerSpec::Flatten => Layer::Flatten(Flatten),
        LayerSpec::GlobalAvgPool => Layer::GlobalAvgPool(GlobalAvgPool),
        LayerSpec::BatchNorm { epsilon, momentum } => {
            let features = match shape {
                Shape::Image([c, _, _]) => c,
                Shape::Flat(n) => n,
            };
            // Keras' defaults: epsilon 1e-3, moving-average momentum 0.99 (burn's 0.01).
            Layer::BatchNorm(batch_norm(
                features,
                epsilon.unwrap_or(1e-3),
                momentum.unwrap_or(0.01),
                device,
            ))
        }
        LayerSpec::Dense { units, activation } => {
            let Shape::Flat(n) = shape else {
                unreachable!("dense on a feature map passed validation")
            };
            let mut linear = LinearConfig::new(n, units)
                .with_initializer(Initializer::Zeros)
                .init(device);
            let weight = glorot_uniform(rng, vec![n, units], n, units, device);
            linear.weight = Param::from_tensor(weight.reshape([n, units]));
            Layer::Dense(Dense {
                linear,
                relu: activation == Some(Activation::Relu),
            })
        }
        LayerSpec::Residual {
            repeat,
            ref body,
            shortcut,
            relu,
        } => {
            let Shape::Image(input) = shape else {
                unreachable!("a residual block after flatten passed validation")
            };
            Layer::Residual(ResidualStage::init(
                repeat, body, shortcut, relu, input, rng, device,
            ))
        }
    }
}

/// A batch norm over `features` channels with burn's `momentum` convention (PyTorch's).
pub(super) fn batch_norm(
    features: usize,
    epsilon: f64,
    momentum: f64,
    device: &Device,
) -> BatchNorm {
    BatchNormConfig::new(features)
        .with_epsilon(epsilon)
        .with_momentum(momentum)
        .init(device)
}

/// A convolution from `channels[0]` to `channels[1]` with Keras' Glorot-uniform kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn glorot_conv(
    rng: &mut ChaCha8Rng,
    [c, filters]: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: Padding,
    bias: bool,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let mut conv = Conv2dConfig::new([c, filters], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(padding_config(padding))
        .with_bias(bias)
        .with_groups(groups)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let per_group = c / groups;
    let weight = glorot_uniform(
        rng,
        vec![filters, per_group, kernel, kernel],
        kernel * kernel * per_group,
        kernel * kernel * filters / groups,
        device,
    );
    conv.weight = Param::from_tensor(weight.reshape([filters, per_group, kernel, kernel]));
    conv
}

/// Builds the layers of `specs` for inputs of `input` (validated by the caller).
pub(super) fn build_layers(
    specs: &[LayerSpec],
    input: Shape,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Vec<Layer> {
    let infos = super::spec::sequence_info(specs, input).expect("validated by the caller");
    let inputs = std::iter::once(input).chain(infos.iter().map(|info| info.output));
    specs
        .iter()
        .zip(inputs)
        .map(|(spec, shape)| build_layer(spec, shape, rng, device))
        .collect()
}

impl Network {
    /// Builds the network for `input` (C, H, W) with Keras' initialisation (Glorot-uniform
    /// kernels, zero biases), seeded by `seed`. The spec is validated first.
    pub fn init(
        spec: &ModelSpec,
        input: [usize; 3],
        seed: u64,
        device: &Device,
    ) -> Result<Self, SpecError> {
        spec.infer(input)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = build_layers(&spec.layers, Shape::Image(input), &mut rng, device);
        Ok(Network { layers })
    }

    /// Logits for a batch of images `[batch, C, H, W]`. Without gradients, a network of
    /// convolutions, batch norms, ReLUs and residual stages up to a global average pooling runs
    /// on the direct kernels (see `models::direct`): the same function, to float rounding.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        if let Some(logits) = super::direct::forward(&self.layers, &input) {
            return logits;
        }
        self.forward_observed(input, |_, _| {})
    }

    /// Logits and the outputs of the top-level layers at `layers` (indices from
    /// [`crate::models::taps`]), in the order asked. Each is a feature map `[batch, C, H, W]` or,
    /// after flattening or global pooling, a vector `[batch, features]`.
    pub fn forward_tapped(&self, input: Tensor<4>, layers: &[usize]) -> (Tensor<2>, Vec<Feature>) {
        match super::direct::forward_tapped(&self.layers, &input, layers) {
            Some(tapped) => tapped,
            None => self.forward_tapped_layerwise(input, layers),
        }
    }

    /// [`Network::forward_tapped`] layer by layer, never on the direct inference kernels (the
    /// path gradients take; the bench's baseline for the direct one).
    pub fn forward_tapped_layerwise(
        &self,
        input: Tensor<4>,
        layers: &[usize],
    ) -> (Tensor<2>, Vec<Feature>) {
        let mut taken: Vec<Option<Feature>> = vec![None; layers.len()];
        let logits = self.forward_observed(input, |index, x| {
            for (slot, _) in taken.iter_mut().zip(layers).filter(|(_, &l)| l == index) {
                *slot = Some(x.feature());
            }
        });
        let features = taken
            .into_iter()
            .zip(layers)
            .map(|(f, l)| f.unwrap_or_else(|| panic!("layer {l} is not in this network")))
            .collect();
        (logits, features)
    }

    /// The output dimensions (batch included) of every layer for `input`; checks a spec's shape
    /// arithmetic against what the tensors really do.
    pub fn layer_output_dims(&self, input: Tensor<4>) -> Vec<Vec<usize>> {
        let mut dims = Vec::with_capacity(self.layers.len());
        self.forward_observed(input, |_, x| dims.push(x.dims()));
        dims
    }

    pub(super) fn forward_observed(
        &self,
        input: Tensor<4>,
        mut observe: impl FnMut(usize, &Activations),
    ) -> Tensor<2> {
        let local_kernels = kernels::active(&input.device());
        match run_layers(
            &self.layers,
            Activations::Image(input),
            local_kernels,
            &mut observe,
        ) {
            Activations::Flat(logits) => logits,
            Activations::Image(_) => {
                unreachable!("a model ending in a feature map passed validation")
            }
        }
    }
}

/// The bias of `conv`, zeros for a convolution without one.
pub(super) fn conv_bias(conv: &Conv2d) -> Tensor<1> {
    match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([conv.weight.dims()[0]], &conv.weight.device()),
    }
}

/// The weight and bias of `conv` followed by `norm` in inference mode (running statistics):
/// `w·s` and `(b - mean)·s + beta` per filter, with `s = gamma / sqrt(var + epsilon)`.
pub fn fold_batch_norm(conv: &Conv2d, norm: &BatchNorm) -> (Tensor<4>, Tensor<1>) {
    let weight = conv.weight.val();
    let device = weight.device();
    let filters = weight.dims()[0];
    let variance = norm.running_var.value().to_device(&device);
    let mean = norm.running_mean.value().to_device(&device);
    let scale = norm.gamma.val() / variance.add_scalar(norm.epsilon).sqrt();
    let bias = conv_bias(conv);
    let folded_bias = (bias - mean) * scale.clone() + norm.beta.val();
    let folded_weight = weight * scale.reshape([filters, 1, 1, 1]);
    (folded_weight, folded_bias)
}

/// Whether `drop` runs on the local kernels' dropout for `x` (in training, with gradients
/// tracked; the local kernels themselves checked by the caller).
fn local_dropout(drop: &Dropout, x: &Activations) -> bool {
    drop.prob > 0.0 && drop.training.is_enabled() && x.is_autodiff()
}

/// Applies `layers` in order to `x`, on the local kernels where `local_kernels` allows (fusing a
/// convolution with the activation, pool and dropout after it, a batch norm with its ReLU), and
/// reports each layer's output dimensions to `observe` by index.
pub(super) fn run_layers(
    layers: &[Layer],
    mut x: Activations,
    local_kernels: bool,
    observe: &mut dyn FnMut(usize, &Activations),
) -> Activations {
    let mut iter = layers.iter().enumerate().peekable();
    while let Some((index, layer)) = iter.next() {
        // How many of the following layers this layer's kernel also applied.
        let mut fused = 0;
        x = match layer {
            Layer::Conv2d(conv)
                if local_kernels
                    && !x.is_autodiff()
                    && matches!(iter.peek(), Some((_, Layer::BatchNorm(_))))
                    && conv_window(conv, &x).is_some() =>
            {
                // Inference: the batch norm's affine map folded into the weights and bias, so
                // its pass over the feature map disappears.
                let Some((_, Layer::BatchNorm(norm))) = iter.peek() else {
                    unreachable!("checked above")
                };
                let window = conv_window(conv, &x).expect("checked above");
                let (weight, bias) = fold_batch_norm(conv, norm);
                fused = 1;
                Activations::Image(kernels::conv2d(x.image(), weight, bias, window, None))
            }
            Layer::Conv2d(conv) if local_kernels && conv_window(conv, &x).is_some() => {
                let window = conv_window(conv, &x).expect("checked above");
                // A leaky ReLU right after the convolution runs inside its kernel.
                let slope = match iter.peek() {
                    Some((_, Layer::LeakyRelu(act))) if act.negative_slope > 0.0 => {
                        Some(act.negative_slope as f32)
                    }
                    _ => None,
                };
                let weight = conv.weight.val();
                let bias = conv_bias(conv);
                fused = usize::from(slope.is_some());
                // A 2×2 stride-1 'same' pool next is applied in the same pass.
                let pool = match layers.get(index + 1 + fused) {
                    Some(Layer::MaxPool2d(pool)) => {
                        let [_, _, h, w] = x.image_dims();
                        let [oh, ow] = window.output_size([h, w]);
                        pool_window_on(pool, [oh, ow]).filter(kernels::is_same_2x2_pool)
                    }
                    _ => None,
                };
                // And a training-time dropout after the pool, in the same pass too.
                let dropout_rate = match layers.get(index + 2 + fused) {
                    Some(Layer::Dropout(drop)) if pool.is_some() && local_dropout(drop, &x) => {
                        Some(drop.prob)
                    }
                    _ => None,
                };
                Activations::Image(match pool {
                    Some(_) => {
                        fused += 1 + usize::from(dropout_rate.is_some());
                        kernels::conv2d_max_pooled(
                            x.image(),
                            weight,
                            bias,
                            window,
                            slope,
                            dropout_rate,
                        )
                    }
                    None => kernels::conv2d(x.image(), weight, bias, window, slope),
                })
            }
            Layer::MaxPool2d(pool) if local_kernels && pool_window(pool, &x).is_some() => {
                let window = pool_window(pool, &x).expect("checked above");
                Activations::Image(kernels::max_pool2d(x.image(), window))
            }
            Layer::Conv2d(conv) => Activations::Image(conv.forward(x.image())),
            Layer::MaxPool2d(pool) => Activations::Image(pool.forward(x.image())),
            Layer::LeakyRelu(act) => x.map(|t| act.forward(t), |t| act.forward(t)),
            Layer::Relu(act) => x.map(|t| act.forward(t), |t| act.forward(t)),
            Layer::Dropout(drop) if local_kernels && local_dropout(drop, &x) => x.map(
                |t| kernels::dropout(t, drop.prob),
                |t| kernels::dropout(t, drop.prob),
            ),
            Layer::Dropout(drop) => x.map(|t| drop.forward(t), |t| drop.forward(t)),
            Layer::BatchNorm(norm) if local_kernels && matches!(x, Activations::Image(_)) => {
                // A ReLU right after the norm runs inside its kernel.
                let relu = matches!(iter.peek(), Some((_, Layer::Relu(_))));
                fused = usize::from(relu);
                Activations::Image(local_batch_norm(norm, x.image(), relu))
            }
            Layer::BatchNorm(norm) => x.map(|t| norm.forward(t), |t| norm.forward(t)),
            Layer::Flatten(_) => Activations::Flat(x.image().flatten(1, 3)),
            Layer::GlobalAvgPool(_) => {
                let t = x.image();
                let [b, c, _, _] = t.dims();
                Activations::Flat(t.mean_dim(3).mean_dim(2).reshape([b, c]))
            }
            Layer::Dense(dense) => match x {
                Activations::Flat(t) => {
                    let y = dense.linear.forward(t);
                    Activations::Flat(if dense.relu {
                        burn::tensor::activation::relu(y)
                    } else {
                        y
                    })
                }
                Activations::Image(_) => {
                    unreachable!("dense on a feature map passed validation")
                }
            },
            Layer::Residual(stage) => Activations::Image(stage.forward(x.image(), local_kernels)),
        };
        // The fused layers keep the feature map's size (an activation, a 'same' pool), and
        // their observers see the group's output.
        observe(index, &x);
        for _ in 0..fused {
            let (next, _) = iter.next().expect("fused layers follow");
            observe(next, &x);
        }
    }
    x
}
