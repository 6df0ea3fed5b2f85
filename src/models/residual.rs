//! Residual stages made real: blocks computing `body(x) + shortcut(x)` (then ReLU where the spec
//! says so), built from a [`LayerSpec::Residual`].
//!
//! Parameter names follow the nesting: `layers.{i}.blocks.{b}.body.{j}.weight` for the `j`-th
//! layer of block `b`'s body, `layers.{i}.blocks.{b}.shortcut.{0|1}` for a projection's
//! convolution and batch norm.

use burn::module::Module;
use burn::tensor::{s, Device, Tensor};
use rand::rngs::ChaCha8Rng;

use super::network::{batch_norm, build_layers, glorot_conv, run_layers, Activations, Layer};
use super::spec::{block_body, body_stride, sequence_info, LayerSpec, Padding, Shape, Shortcut};

/// One residual block.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// The body's layers, in order.
    pub body: Vec<Layer>,
    /// The shortcut's layers: a 1×1 convolution and, for a projection, its batch norm; empty
    /// for the parameter-free shortcuts.
    pub shortcut: Vec<Layer>,
    /// Whether the input (or what the shortcut makes of it) is added: false for
    /// [`Shortcut::None`].
    pub add_input: bool,
    /// Option A's subsampling stride (1: none).
    pub subsample: usize,
    /// Option A's zero channels before the input's.
    pub pad_before: usize,
    /// Option A's zero channels after the input's.
    pub pad_after: usize,
    /// Whether ReLU follows the addition.
    pub relu: bool,
}

/// A stage of residual blocks (see [`LayerSpec::Residual`]).
#[derive(Module, Debug)]
pub struct ResidualStage {
    /// The blocks, in order.
    pub blocks: Vec<ResidualBlock>,
}

impl ResidualStage {
    /// Builds the stage for inputs of `input`; the spec was validated by
    /// [`ModelSpec::infer`](super::ModelSpec::infer).
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        repeat: usize,
        body: &[LayerSpec],
        shortcut: Shortcut,
        relu: bool,
        input: [usize; 3],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Self {
        let mut shape = input;
        let blocks = (0..repeat)
            .map(|index| {
                let layers = block_body(body, index);
                let kind = if index == 0 {
                    shortcut
                } else {
                    Shortcut::Identity
                };
                let (block, out) = ResidualBlock::init(&layers, kind, relu, shape, rng, device);
                shape = out;
                block
            })
            .collect();
        ResidualStage { blocks }
    }

    /// Applies the blocks in order.
    pub fn forward(&self, x: Tensor<4>, local_kernels: bool) -> Tensor<4> {
        self.blocks
            .iter()
            .fold(x, |x, block| block.forward(x, local_kernels))
    }
}

impl ResidualBlock {
    /// The block and its output shape.
    fn init(
        body: &[LayerSpec],
        shortcut: Shortcut,
        relu: bool,
        input: [usize; 3],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> (Self, [usize; 3]) {
        let infos = sequence_info(body, Shape::Image(input)).expect("validated by the caller");
        let Some(Shape::Image(output)) = infos.last().map(|i| i.output) else {
            unreachable!("a block ending in a flat vector passed validation")
        };
        let filters = output[0];
        let stride = body_stride(body);
        let layers = build_layers(body, Shape::Image(input), rng, device);
        let projection = |rng: &mut ChaCha8Rng| {
            Layer::Conv2d(glorot_conv(
                rng,
                [input[0], filters],
                1,
                stride,
                Padding::Valid,
                false,
                1,
                device,
            ))
        };
        let shortcut_layers = match shortcut {
            Shortcut::Projection => vec![
                projection(rng),
                Layer::BatchNorm(batch_norm(filters, 1e-5, 0.1, device)),
            ],
            Shortcut::Conv => vec![projection(rng)],
            Shortcut::Identity | Shortcut::ZeroPad | Shortcut::None => Vec::new(),
        };
        let (subsample, pad_before, pad_after) = match shortcut {
            Shortcut::ZeroPad => {
                let extra = filters - input[0];
                (stride, extra / 2, extra - extra / 2)
            }
            _ => (1, 0, 0),
        };
        let block = ResidualBlock {
            body: layers,
            shortcut: shortcut_layers,
            add_input: shortcut != Shortcut::None,
            subsample,
            pad_before,
            pad_after,
            relu,
        };
        (block, output)
    }

    /// `body(x) + shortcut(x)`, then ReLU if the block has one.
    pub fn forward(&self, x: Tensor<4>, local_kernels: bool) -> Tensor<4> {
        let run = |layers: &[Layer], x: Tensor<4>| {
            run_layers(layers, Activations::Image(x), local_kernels, &mut |_, _| {}).image()
        };
        let out = run(&self.body, x.clone());
        if !self.add_input {
            return out;
        }
        let carried = if self.shortcut.is_empty() {
            self.zero_pad(x)
        } else {
            run(&self.shortcut, x)
        };
        let sum = out + carried;
        if self.relu {
            burn::tensor::activation::relu(sum)
        } else {
            sum
        }
    }

    /// Option A: every `subsample`-th pixel, new channels zero-filled (the identity when there
    /// is nothing to subsample or pad).
    fn zero_pad(&self, x: Tensor<4>) -> Tensor<4> {
        let step = self.subsample as isize;
        let x = if self.subsample > 1 {
            x.slice(s![.., .., ..;step, ..;step])
        } else {
            x
        };
        if self.pad_before + self.pad_after == 0 {
            return x;
        }
        let [b, _, h, w] = x.dims();
        let device = x.device();
        let zeros = |c: usize| (c > 0).then(|| Tensor::<4>::zeros([b, c, h, w], &device));
        let parts = [zeros(self.pad_before), Some(x), zeros(self.pad_after)];
        Tensor::cat(parts.into_iter().flatten().collect(), 1)
    }
}
