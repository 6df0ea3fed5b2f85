//! The kernels as a burn backend extension: the Flex implementation and the autodiff one, whose
//! backward steps call the slice kernels in [`super::conv`] and [`super::pool`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, ExtensionType, Flex};
use burn::tensor::TensorData;

use std::sync::Arc;

use super::adam::{self, AdamStep};
use super::conv::{self, ConvShape, Patches};
use super::dropout::{self, DropoutMask};
use super::elementwise::Activation;
use super::encoder::{self, Dense, EncoderLayerWeights, EncoderShape, Norm};
use super::norm::{self as batch_norm, NormShape};
use super::{pool, Window2d};

#[backend_extension(Flex, Autodiff)]
pub trait LayerKernels: Backend {
    /// See [`super::max_pool2d`].
    fn cnn_max_pool2d(x: FloatTensor<Self>, window: Window2d) -> FloatTensor<Self>;
    /// See [`super::conv2d`].
    fn cnn_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
    ) -> FloatTensor<Self>;
    /// See [`super::conv2d_max_pooled`].
    fn cnn_conv2d_max_pooled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
        dropout: Option<DropoutMask>,
    ) -> FloatTensor<Self>;
    /// See [`super::dropout`].
    fn cnn_dropout(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self>;
    /// See [`super::gelu`], [`super::sigmoid`] and [`super::tanh`].
    fn layer_activation(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self>;
    /// See [`super::channel_stats`].
    fn cnn_channel_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// See [`super::batch_norm`].
    #[allow(clippy::too_many_arguments)]
    fn cnn_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        eps: f32,
        relu: bool,
        batch_stats: bool,
    ) -> FloatTensor<Self>;
}

/// One BERT layer's parameters as backend tensors (burn's `Linear` weights are `[in, out]`).
#[derive(ExtensionType)]
pub struct EncoderLayerParams<B: Backend> {
    pub query_weight: FloatTensor<B>,
    pub query_bias: FloatTensor<B>,
    pub key_weight: FloatTensor<B>,
    pub key_bias: FloatTensor<B>,
    pub value_weight: FloatTensor<B>,
    pub value_bias: FloatTensor<B>,
    pub output_weight: FloatTensor<B>,
    pub output_bias: FloatTensor<B>,
    pub attention_norm_gamma: FloatTensor<B>,
    pub attention_norm_beta: FloatTensor<B>,
    pub inner_weight: FloatTensor<B>,
    pub inner_bias: FloatTensor<B>,
    pub outer_weight: FloatTensor<B>,
    pub outer_bias: FloatTensor<B>,
    pub output_norm_gamma: FloatTensor<B>,
    pub output_norm_beta: FloatTensor<B>,
}

/// Inference-only kernels of the text encoders (no autodiff implementation: the caller checks
/// that the device does not track gradients).
#[backend_extension(Flex)]
pub trait TextKernels: Backend {
    /// See [`super::encoder_layer`].
    fn text_encoder_layer(
        x: FloatTensor<Self>,
        #[extension_type] params: EncoderLayerParams<Self>,
        padding: Vec<bool>,
        heads: usize,
        eps: f32,
    ) -> FloatTensor<Self>;
}

impl TextKernels for Flex {
    fn text_encoder_layer(
        x: FloatTensor<Self>,
        params: EncoderLayerParams<Self>,
        padding: Vec<bool>,
        heads: usize,
        eps: f32,
    ) -> FloatTensor<Self> {
        let [batch, len, width] = dims::<3>(&x);
        let [_, ffn] = dims::<2>(&params.inner_weight);
        let p = &params;
        let (query_weight, query_bias) = (values(&p.query_weight), values(&p.query_bias));
        let (key_weight, key_bias) = (values(&p.key_weight), values(&p.key_bias));
        let (value_weight, value_bias) = (values(&p.value_weight), values(&p.value_bias));
        let (output_weight, output_bias) = (values(&p.output_weight), values(&p.output_bias));
        let (inner_weight, inner_bias) = (values(&p.inner_weight), values(&p.inner_bias));
        let (outer_weight, outer_bias) = (values(&p.outer_weight), values(&p.outer_bias));
        let (attention_gamma, attention_beta) = (
            values(&p.attention_norm_gamma),
            values(&p.attention_norm_beta),
        );
        let (output_gamma, output_beta) =
            (values(&p.output_norm_gamma), values(&p.output_norm_beta));
        fn dense<'a>(weight: &'a [f32], bias: &'a [f32]) -> Dense<'a> {
            Dense { weight, bias }
        }
        let weights = EncoderLayerWeights {
            query: dense(&query_weight, &query_bias),
            key: dense(&key_weight, &key_bias),
            value: dense(&value_weight, &value_bias),
            output: dense(&output_weight, &output_bias),
            attention_norm: Norm {
                gamma: &attention_gamma,
                beta: &attention_beta,
                eps,
            },
            inner: dense(&inner_weight, &inner_bias),
            outer: dense(&outer_weight, &outer_bias),
            output_norm: Norm {
                gamma: &output_gamma,
                beta: &output_beta,
                eps,
            },
        };
        let shape = EncoderShape {
            batch,
            len,
            width,
            heads,
            ffn,
        };
        tensor(
            encoder::forward(&values(&x), &padding, &weights, &shape),
            vec![batch, len, width],
        )
    }
}

/// The optimizer's update on Flex tensors (optimizers step the inner tensors, without autodiff).
#[backend_extension(Flex)]
pub trait OptimizerKernels: Backend {
    /// See [`super::adam_update`].
    fn adam_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl OptimizerKernels for Flex {
    fn adam_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (mut param, mut moment_1, mut moment_2) =
            (exclusive(param), exclusive(moment_1), exclusive(moment_2));
        adam::update(
            param.storage_mut(),
            &values(&grad),
            moment_1.storage_mut(),
            moment_2.storage_mut(),
            &step,
        );
        (param, moment_1, moment_2)
    }
}

/// `tensor` with storage that is exactly its values in row-major order, to update in place:
/// `storage_mut` then copies it only if another tensor shares it (views are copied here).
fn exclusive(tensor: FlexTensor) -> FlexTensor {
    let len = tensor.layout().num_elements();
    let whole = tensor.layout().contiguous_offsets() == Some((0, len))
        && tensor.bytes().len() == len * std::mem::size_of::<f32>();
    if whole {
        tensor
    } else {
        let shape = tensor.layout().shape().to_vec();
        FlexTensor::from_data(TensorData::new(values(&tensor).into_owned(), shape))
    }
}

/// The tensor's values in row-major order (copied only when it is a strided view).
fn values(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(
            tensor
                .to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous f32 tensor")
                .to_vec(),
        ),
    }
}

fn dims<const D: usize>(tensor: &FlexTensor) -> [usize; D] {
    let shape = tensor.layout().shape();
    assert_eq!(shape.num_dims(), D, "expected a rank-{D} tensor");
    std::array::from_fn(|i| shape[i])
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn pool_forward(x: &FlexTensor, window: Window2d) -> FlexTensor {
    let [b, c, h, w] = dims::<4>(x);
    let [oh, ow] = window.output_size([h, w]);
    tensor(
        pool::forward(&values(x), b * c, h, w, &window),
        vec![b, c, oh, ow],
    )
}

fn conv_shape(x: &FlexTensor, weight: &FlexTensor, window: Window2d) -> ConvShape {
    let [batch, channels, h, w] = dims::<4>(x);
    let [filters, weight_channels, kh, kw] = dims::<4>(weight);
    assert_eq!(
        channels, weight_channels,
        "conv2d: input channels differ from the weight's"
    );
    assert_eq!(
        [kh, kw],
        window.kernel,
        "conv2d: kernel size differs from the weight's"
    );
    ConvShape {
        batch,
        channels,
        input: [h, w],
        filters,
        window,
    }
}

/// The convolution without gradients, followed by the 2×2 stride-1 'same' max pool when
/// `pooled` (then the convolution's output never leaves the cache).
fn conv_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    window: Window2d,
    slope: Option<f32>,
    pooled: bool,
) -> FlexTensor {
    let shape = conv_shape(x, weight, window);
    let [oh, ow] = window.output_size(shape.input);
    let forward = if pooled {
        conv::forward_max_pooled
    } else {
        conv::forward
    };
    let y = forward(&values(x), &values(weight), &values(bias), &shape, slope);
    tensor(y, vec![shape.batch, shape.filters, oh, ow])
}

fn norm_shape(x: &FlexTensor) -> NormShape {
    let [batch, channels, h, w] = dims::<4>(x);
    NormShape {
        batch,
        channels,
        plane: h * w,
    }
}

fn channel_stats(x: &FlexTensor) -> FlexTensor {
    let shape = norm_shape(x);
    let (mut stats, variance) = batch_norm::channel_stats(&values(x), &shape);
    stats.extend(variance);
    tensor(stats, vec![2, shape.channels])
}

fn batch_norm_forward(
    x: &FlexTensor,
    [gamma, beta, mean, variance]: [&FlexTensor; 4],
    eps: f32,
    relu: bool,
) -> FlexTensor {
    let y = batch_norm::forward(
        &values(x),
        &norm_shape(x),
        &values(gamma),
        &values(beta),
        &values(mean),
        &values(variance),
        eps,
        relu,
    );
    tensor(y, x.layout().shape().to_vec())
}

impl LayerKernels for Flex {
    fn cnn_max_pool2d(x: FloatTensor<Self>, window: Window2d) -> FloatTensor<Self> {
        pool_forward(&x, window)
    }

    fn cnn_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        conv_forward(&x, &weight, &bias, window, slope, false)
    }

    fn cnn_conv2d_max_pooled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
        dropout: Option<DropoutMask>,
    ) -> FloatTensor<Self> {
        let pooled = conv_forward(&x, &weight, &bias, window, slope, true);
        match dropout {
            // Not a path the models take (they drop out only while tracking gradients).
            Some(mask) => dropout_apply(&pooled, mask.keep, mask.seed),
            None => pooled,
        }
    }

    fn cnn_dropout(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self> {
        dropout_apply(&x, keep, seed)
    }

    fn layer_activation(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self> {
        activation_forward(&x, activation)
    }

    fn cnn_channel_stats(x: FloatTensor<Self>) -> FloatTensor<Self> {
        channel_stats(&x)
    }

    fn cnn_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        eps: f32,
        relu: bool,
        _batch_stats: bool,
    ) -> FloatTensor<Self> {
        batch_norm_forward(&x, [&gamma, &beta, &mean, &variance], eps, relu)
    }
}

#[derive(Debug)]
struct BatchNormBackward;

/// What the batch norm's backward pass reads: input, output, gamma, mean, variance, and the
/// settings `eps`, `relu`, `batch_stats`.
type BatchNormState = (FlexTensor, FlexTensor, [FlexTensor; 3], f32, bool, bool);

impl Backward<Flex, 3> for BatchNormBackward {
    type State = BatchNormState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, y, [gamma, mean, variance], eps, relu, batch_stats) = ops.state;
        let shape = norm_shape(&x);
        let result = batch_norm::backward(
            &values(&x),
            &values(&y),
            &values(&grad),
            &shape,
            &values(&gamma),
            &values(&mean),
            &values(&variance),
            eps,
            relu,
            batch_stats,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(result.x, x.layout().shape().to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(result.gamma, vec![shape.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(result.beta, vec![shape.channels]));
        }
    }
}

fn activation_forward(x: &FlexTensor, activation: Activation) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    tensor(activation.forward(&values(x)), shape)
}

#[derive(Debug)]
struct ActivationBackward;

impl Backward<Flex, 1> for ActivationBackward {
    /// The tensor the derivative reads (the input or the output, as
    /// [`Activation::saves_input`] says) and the activation.
    type State = (FlexTensor, Activation);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (saved, activation) = ops.state;
        if let Some(node) = node_x {
            let shape = saved.layout().shape().to_vec();
            let grad_x = activation.backward(&values(&saved), &values(&grad));
            grads.register::<Flex>(node.id, tensor(grad_x, shape));
        }
    }
}

fn dropout_apply(x: &FlexTensor, keep: f32, seed: u64) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    tensor(dropout::apply(&values(x), keep, seed), shape)
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// The keep probability and the mask's seed.
    type State = (f32, u64);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (keep, seed) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dropout_apply(&grad, keep, seed));
        }
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    type State = (NodeId, Window2d);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, window) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        if let Some(node) = node_x {
            let [b, c, h, w] = dims::<4>(&x);
            let grad_x = pool::backward(&values(&x), &values(&grad), b * c, h, w, &window);
            grads.register::<Flex>(node.id, tensor(grad_x, vec![b, c, h, w]));
        }
    }
}

#[derive(Debug)]
struct ConvBackward;

/// What the convolution's backward pass reads.
#[derive(Debug, Clone)]
struct ConvState {
    /// The input's checkpoint.
    x: NodeId,
    /// The weight's checkpoint.
    weight: NodeId,
    /// The (activated) convolution's output: the activation's derivative is read off its sign,
    /// and a fused pool's winners off its values.
    y: FlexTensor,
    window: Window2d,
    slope: Option<f32>,
    patches: Arc<Patches>,
    /// Whether the op's output is the 2×2 stride-1 'same' max pool of `y` (so the incoming
    /// gradient is the pooled output's).
    pooled: bool,
    /// The dropout applied to the pooled output, if any.
    dropout: Option<DropoutMask>,
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let window = state.window;
        let x: FlexTensor = checkpointer.retrieve_node_output(state.x);
        let weight: FlexTensor = checkpointer.retrieve_node_output(state.weight);
        let shape = conv_shape(&x, &weight, window);
        let (x_v, weight_v, y_v, grad_v) =
            (values(&x), values(&weight), values(&state.y), values(&grad));
        let (want_x, patches) = (node_x.is_some(), Some(&*state.patches));
        let result = if state.pooled {
            conv::backward_max_pooled(
                &x_v,
                &weight_v,
                &y_v,
                &grad_v,
                &shape,
                state.slope,
                state.dropout,
                want_x,
                patches,
            )
        } else {
            conv::backward(
                &x_v,
                &weight_v,
                &y_v,
                &grad_v,
                &shape,
                state.slope,
                want_x,
                patches,
            )
        };
        if let (Some(node), Some(grad_x)) = (node_x, result.x) {
            let [h, w] = shape.input;
            grads.register::<Flex>(
                node.id,
                tensor(grad_x, vec![shape.batch, shape.channels, h, w]),
            );
        }
        if let Some(node) = node_weight {
            let [kh, kw] = window.kernel;
            grads.register::<Flex>(
                node.id,
                tensor(result.weight, vec![shape.filters, shape.channels, kh, kw]),
            );
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, tensor(result.bias, vec![shape.filters]));
        }
    }
}

impl<C: CheckpointStrategy> LayerKernels for Autodiff<Flex, C> {
    fn cnn_channel_stats(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // The statistics feed the running averages, which are not trained.
        <Self as AutodiffBackend>::from_inner(channel_stats(x.primitive()))
    }

    fn cnn_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        eps: f32,
        relu: bool,
        batch_stats: bool,
    ) -> FloatTensor<Self> {
        let y = batch_norm_forward(
            x.primitive(),
            [
                gamma.primitive(),
                beta.primitive(),
                mean.primitive(),
                variance.primitive(),
            ],
            eps,
            relu,
        );
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let saved = [
                    gamma.primitive().clone(),
                    mean.primitive().clone(),
                    variance.primitive().clone(),
                ];
                let state = (
                    x.primitive().clone(),
                    y.clone(),
                    saved,
                    eps,
                    relu,
                    batch_stats,
                );
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cnn_max_pool2d(x: FloatTensor<Self>, window: Window2d) -> FloatTensor<Self> {
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let out = pool_forward(x.primitive(), window);
                prep.finish((x_state, window), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool_forward(x.primitive(), window)),
        }
    }

    fn layer_activation(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self> {
        let y = activation_forward(x.primitive(), activation);
        match ActivationBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let saved = if activation.saves_input() {
                    x.primitive().clone()
                } else {
                    y.clone()
                };
                prep.finish((saved, activation), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cnn_dropout(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self> {
        let y = dropout_apply(x.primitive(), keep, seed);
        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep, seed), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cnn_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        tracked_conv::<C>(x, weight, bias, window, slope, None)
    }

    fn cnn_conv2d_max_pooled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window2d,
        slope: Option<f32>,
        dropout: Option<DropoutMask>,
    ) -> FloatTensor<Self> {
        tracked_conv::<C>(x, weight, bias, window, slope, Some(dropout))
    }
}

/// The convolution under autodiff, followed when `pool` is given by the 2×2 stride-1 'same' max
/// pool (and the dropout it holds, if any).
fn tracked_conv<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    bias: FloatTensor<Autodiff<Flex, C>>,
    window: Window2d,
    slope: Option<f32>,
    pool: Option<Option<DropoutMask>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    let (pooled, dropout) = (pool.is_some(), pool.flatten());
    match ConvBackward
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (x_p, weight_p) = (x.primitive(), weight.primitive());
            let shape = conv_shape(x_p, weight_p, window);
            let [oh, ow] = window.output_size(shape.input);
            let dims = vec![shape.batch, shape.filters, oh, ow];
            let (x_v, weight_v, bias_v) = (values(x_p), values(weight_p), values(bias.primitive()));
            let (y, out, patches) = if pooled {
                let fused = conv::forward_max_pooled_keeping_patches(
                    &x_v, &weight_v, &bias_v, &shape, slope, dropout,
                );
                let y = tensor(fused.y, dims.clone());
                (y, tensor(fused.pooled, dims), fused.patches)
            } else {
                let (y, patches) =
                    conv::forward_keeping_patches(&x_v, &weight_v, &bias_v, &shape, slope);
                let y = tensor(y, dims);
                (y.clone(), y, patches)
            };
            let state = ConvState {
                x: prep.checkpoint(&x),
                weight: prep.checkpoint(&weight),
                y,
                window,
                slope,
                patches: Arc::new(patches),
                pooled,
                dropout,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let (x, weight, bias) = (x.primitive(), weight.primitive(), bias.primitive());
            let y = conv_forward(x, weight, bias, window, slope, pooled);
            prep.finish(match dropout {
                Some(mask) => dropout_apply(&y, mask.keep, mask.seed),
                None => y,
            })
        }
    }
}
