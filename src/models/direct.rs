//! Inference of a whole convolutional network on the direct kernels ([`kernels::direct`]): a
//! network whose feature part is convolutions (each with its batch norm and ReLU), residual
//! stages and global average pooling runs image by image in the blocked layout, each image's
//! maps staying in the core's cache from the stem to the pooling, and the images shared out
//! over the thread pool. The layers after the pooling (the classifier) run as usual.
//!
//! A plan is made per call from the layers' current weights (the batch norms folded in, the
//! weights reordered): about a millisecond for a ResNet-56 (its single-image latency went from
//! 3.9 to 3.2 ms with the plan included), against half a second for a batch of 256.

use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::network::{
    conv_bias, fold_batch_norm, run_layers, window_on, Activations, Feature, Layer,
};
use super::residual::ResidualBlock;
use crate::kernels::{self, direct as blocked};
use blocked::{BlockedConv, BlockedMap};

/// The logits of `layers` for `input` `[batch, C, H, W]` through the direct kernels, or `None`
/// where they do not apply: gradients tracked, the local kernels off, no AVX-512, or a layer
/// the plan cannot take (see [`Plan::new`]).
pub(super) fn forward(layers: &[Layer], input: &Tensor<4>) -> Option<Tensor<2>> {
    forward_tapped(layers, input, &[]).map(|(logits, _)| logits)
}

/// The logits and the outputs of the top-level layers at `taps` (in the order asked), as
/// [`Network::forward_tapped`](super::Network::forward_tapped) gives them, or `None` where the
/// direct kernels do not apply or a tap falls inside a step of the plan (a convolution's output
/// before its fused batch norm, say).
pub(super) fn forward_tapped(
    layers: &[Layer],
    input: &Tensor<4>,
    taps: &[usize],
) -> Option<(Tensor<2>, Vec<Feature>)> {
    let device = input.device();
    if !kernels::inference_active(&device) || !blocked::available() {
        return None;
    }
    let [batch, channels, height, width] = input.dims();
    let plan = Plan::new(layers, [channels, height, width])?;
    let map_taps: Vec<usize> = taps.iter().copied().filter(|&l| l < plan.pooling).collect();
    if !map_taps
        .iter()
        .all(|l| plan.step_layers.contains(&Some(*l)))
    {
        return None;
    }
    let image_len = channels * height * width;
    let pixels = input
        .clone()
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 images");
    // per image: its pooled features, and each map tap's `[C, H, W]` planes
    let images: Vec<(Vec<f32>, Vec<Planes>)> = pixels
        .par_chunks(image_len)
        .map_init(Maps::default, |maps, image| {
            let mut pooled = vec![0.0f32; plan.output_channels];
            let mut taken = vec![Planes::default(); map_taps.len()];
            plan.run(maps, image, &mut pooled, |layer, map| {
                for (k, _) in map_taps.iter().enumerate().filter(|(_, &l)| l == layer) {
                    taken[k] = Planes {
                        dims: [map.channels, map.height, map.width],
                        values: map.to_planes(),
                    };
                }
            });
            (pooled, taken)
        })
        .collect();
    let pooled: Vec<f32> = images.iter().flat_map(|(p, _)| p.iter().copied()).collect();
    let pooled = Tensor::<2>::from_data(
        TensorData::new(pooled, [batch, plan.output_channels]),
        &device,
    );
    let mut features: Vec<Option<Feature>> = vec![None; taps.len()];
    for (slot, &layer) in taps.iter().enumerate() {
        if let Some(k) = map_taps.iter().position(|&l| l == layer) {
            let per_image = images.iter().map(|(_, taken)| &taken[k]);
            features[slot] = Some(Feature::Map(Planes::stack(per_image, &device)));
        } else if layer == plan.pooling {
            features[slot] = Some(Feature::Vector(pooled.clone()));
        }
    }
    let head_start = plan.pooling + 1;
    let mut observe = |index: usize, x: &Activations| {
        let tapped = |(_, &l): &(_, &usize)| l == head_start + index;
        for (slot, _) in features.iter_mut().zip(taps).filter(tapped) {
            *slot = Some(x.feature());
        }
    };
    let logits = match run_layers(
        &layers[head_start..],
        Activations::Flat(pooled),
        true,
        &mut observe,
    ) {
        Activations::Flat(logits) => logits,
        Activations::Image(_) => unreachable!("the classifier after pooling is flat"),
    };
    let features = features.into_iter().collect::<Option<Vec<_>>>()?;
    Some((logits, features))
}

/// One image's feature map as `[C, H, W]` planes.
#[derive(Clone, Default)]
struct Planes {
    dims: [usize; 3],
    values: Vec<f32>,
}

impl Planes {
    /// The maps of a batch, an image each, as one `[batch, C, H, W]` tensor.
    fn stack<'a>(images: impl ExactSizeIterator<Item = &'a Planes>, device: &Device) -> Tensor<4> {
        let mut dims = [images.len(), 0, 0, 0];
        let mut values = Vec::new();
        for image in images {
            dims[1..].copy_from_slice(&image.dims);
            values.extend_from_slice(&image.values);
        }
        Tensor::from_data(TensorData::new(values, dims), device)
    }
}

/// The feature part of a network, ready for the direct kernels.
struct Plan {
    /// Input channels, height and width.
    input: [usize; 3],
    /// An input normalisation in front (an inference-mode batch norm, as a PyTorch teacher's
    /// `--teacher-normalize` becomes): per-channel scale and shift.
    normalize: Option<(Vec<f32>, Vec<f32>)>,
    steps: Vec<Step>,
    /// For each step, the top-level layer whose output it completes (`None` for a residual
    /// stage's blocks before its last).
    step_layers: Vec<Option<usize>>,
    /// Index of the global average pooling among the network's layers.
    pooling: usize,
    output_channels: usize,
}

enum Step {
    Conv(BlockedConv),
    Block(Block),
}

/// A residual block: `relu?(body(x) + shortcut(x))`, the add and the ReLU done by the body's last
/// convolution.
struct Block {
    body: Vec<BlockedConv>,
    shortcut: Shortcut,
}

enum Shortcut {
    /// No add.
    None,
    Identity,
    /// Option A: subsampled, zero channels before (and after).
    ZeroPad {
        stride: usize,
        before: usize,
    },
    /// A 1×1 convolution (with its batch norm folded in).
    Conv(BlockedConv),
}

impl Plan {
    /// The plan for `layers` on images of `input`, or `None` unless the layers are
    /// convolutions (each optionally followed by a batch norm, then optionally a ReLU) and
    /// residual stages of them, up to a global average pooling.
    fn new(layers: &[Layer], input: [usize; 3]) -> Option<Plan> {
        if !blocked::blockable(input[0]) {
            return None;
        }
        let mut shape = input;
        let mut steps = Vec::new();
        let mut step_layers = Vec::new();
        let normalize = match layers.first()? {
            Layer::BatchNorm(norm) => Some(affine(norm)?),
            _ => None,
        };
        let mut index = usize::from(normalize.is_some());
        loop {
            match layers.get(index)? {
                Layer::GlobalAvgPool(_) => break,
                Layer::Conv2d(_) => {
                    let (conv, used) = fuse_conv(&layers[index..], &mut shape)?;
                    steps.push(Step::Conv(conv));
                    step_layers.push(Some(index + used - 1));
                    index += used;
                }
                Layer::Residual(stage) => {
                    for block in &stage.blocks {
                        steps.push(Step::Block(Block::new(block, &mut shape)?));
                        step_layers.push(None);
                    }
                    *step_layers.last_mut()? = Some(index);
                    index += 1;
                }
                _ => return None,
            }
        }
        (!steps.is_empty()).then_some(Plan {
            input,
            normalize,
            steps,
            step_layers,
            pooling: index,
            output_channels: shape[0],
        })
    }

    /// Pools the features of one `image` (`[C, H, W]`) into `out`, showing `observe` the output
    /// of every top-level layer a step completes.
    fn run(
        &self,
        maps: &mut Maps,
        image: &[f32],
        out: &mut [f32],
        mut observe: impl FnMut(usize, &BlockedMap),
    ) {
        let [c, h, w] = self.input;
        let mut x = maps.take(c, h, w);
        x.load_planes(image);
        if let Some((scale, shift)) = &self.normalize {
            x.scale_shift(scale, shift);
        }
        for (step, layer) in self.steps.iter().zip(&self.step_layers) {
            x = match step {
                Step::Conv(conv) => {
                    let out = apply(maps, &x, conv, None);
                    maps.give(x);
                    out
                }
                Step::Block(block) => block.run(maps, x),
            };
            if let Some(layer) = layer {
                observe(*layer, &x);
            }
        }
        x.channel_means(out);
        maps.give(x);
    }
}

impl Block {
    fn new(block: &ResidualBlock, shape: &mut [usize; 3]) -> Option<Block> {
        let input = *shape;
        let mut body = Vec::new();
        let mut index = 0;
        while index < block.body.len() {
            let (conv, used) = fuse_conv(&block.body[index..], shape)?;
            body.push(conv);
            index += used;
        }
        let shortcut = if !block.add_input {
            Shortcut::None
        } else if !block.shortcut.is_empty() {
            let mut projected = input;
            let (conv, used) = fuse_conv(&block.shortcut, &mut projected)?;
            if used != block.shortcut.len() || conv.relu || projected != *shape {
                return None;
            }
            Shortcut::Conv(conv)
        } else if block.subsample > 1 || block.pad_before + block.pad_after > 0 {
            let subsampled = [
                input[0] + block.pad_before + block.pad_after,
                input[1].div_ceil(block.subsample),
                input[2].div_ceil(block.subsample),
            ];
            if subsampled != *shape {
                return None;
            }
            Shortcut::ZeroPad {
                stride: block.subsample,
                before: block.pad_before,
            }
        } else if input == *shape {
            Shortcut::Identity
        } else {
            return None;
        };
        let last = body.last_mut()?;
        if last.relu && !matches!(shortcut, Shortcut::None) {
            // a ReLU inside the body before the add: not this block's pattern
            return None;
        }
        last.relu |= block.relu;
        Some(Block { body, shortcut })
    }

    fn run(&self, maps: &mut Maps, x: BlockedMap) -> BlockedMap {
        let carried = match &self.shortcut {
            Shortcut::ZeroPad { stride, before } => {
                let last = self.body.last().expect("a block has a body");
                let [h, w] = [x.height.div_ceil(*stride), x.width.div_ceil(*stride)];
                let mut map = maps.take(last.out_channels, h, w);
                blocked::subsample_pad(&x, *stride, *before, &mut map);
                Some(map)
            }
            Shortcut::Conv(conv) => Some(apply(maps, &x, conv, None)),
            Shortcut::None | Shortcut::Identity => None,
        };
        let residual = match &self.shortcut {
            Shortcut::None => None,
            Shortcut::Identity => Some(&x),
            _ => carried.as_ref(),
        };
        let (last, first) = self.body.split_last().expect("a block has a body");
        let mut h: Option<BlockedMap> = None;
        for conv in first {
            let next = apply(maps, h.as_ref().unwrap_or(&x), conv, None);
            if let Some(old) = h.replace(next) {
                maps.give(old);
            }
        }
        let out = apply(maps, h.as_ref().unwrap_or(&x), last, residual);
        for map in [h, carried, Some(x)].into_iter().flatten() {
            maps.give(map);
        }
        out
    }
}

/// `conv` on `x` into a map from `maps`.
fn apply(
    maps: &mut Maps,
    x: &BlockedMap,
    conv: &BlockedConv,
    residual: Option<&BlockedMap>,
) -> BlockedMap {
    let [h, w] = conv
        .output_size([x.height, x.width])
        .expect("sizes checked by the plan");
    let mut out = maps.take(conv.out_channels, h, w);
    blocked::conv(x, conv, residual, &mut out);
    out
}

/// The convolution at the head of `layers` with the batch norm and ReLU that follow it, and
/// how many layers it took; `shape` becomes its output's.
fn fuse_conv(layers: &[Layer], shape: &mut [usize; 3]) -> Option<(BlockedConv, usize)> {
    let Some(Layer::Conv2d(conv)) = layers.first() else {
        return None;
    };
    if conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    let [channels, h, w] = *shape;
    let window = window_on(h, w, conv.kernel_size, conv.stride, &conv.padding)?;
    if !blocked::fast(channels.min(blocked::LANES), window.stride[1]) {
        // the portable kernel is exact but slower than the layers' path
        return None;
    }
    let (weight, bias, mut used) = match layers.get(1) {
        Some(Layer::BatchNorm(norm)) => {
            let (weight, bias) = fold_batch_norm(conv, norm);
            (weight, bias, 2)
        }
        _ => (conv.weight.val(), conv_bias(conv), 1),
    };
    let dims = weight.dims();
    if dims[1] != channels {
        return None;
    }
    let values = |t: TensorData| t.try_into_vec::<f32>().ok();
    let mut blocked = BlockedConv::new(
        &values(weight.into_data())?,
        dims,
        &values(bias.into_data())?,
        window.stride,
        window.pad_begin,
        window.pad_end,
    )?;
    if matches!(layers.get(used), Some(Layer::Relu(_))) {
        blocked.relu = true;
        used += 1;
    }
    let [oh, ow] = blocked.output_size([h, w])?;
    *shape = [dims[0], oh, ow];
    Some((blocked, used))
}

/// An inference-mode batch norm as `x · scale + shift` per channel.
fn affine(norm: &BatchNorm) -> Option<(Vec<f32>, Vec<f32>)> {
    let values = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().ok();
    let gamma = values(norm.gamma.val())?;
    let beta = values(norm.beta.val())?;
    let mean = values(norm.running_mean.value())?;
    let variance = values(norm.running_var.value())?;
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&variance)
        .map(|(g, v)| g / (v + norm.epsilon as f32).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    Some((scale, shift))
}

/// Feature maps no longer in use, kept for the next layer or image of their shape (their
/// borders stay zero: the kernels write interiors only).
#[derive(Default)]
struct Maps {
    free: Vec<BlockedMap>,
}

impl Maps {
    fn take(&mut self, channels: usize, height: usize, width: usize) -> BlockedMap {
        match self
            .free
            .iter()
            .position(|m| m.channels == channels && m.height == height && m.width == width)
        {
            Some(at) => self.free.swap_remove(at),
            None => BlockedMap::zeros(channels, height, width),
        }
    }

    fn give(&mut self, map: BlockedMap) {
        self.free.push(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::network::batch_norm;
    use crate::models::{zoo, Network};
    use burn::module::{Param, RunningState};
    use burn::tensor::{Device, Distribution};

    /// Batch norms with running statistics and affine parameters away from their initial
    /// values, so folding them is exercised.
    fn randomise_norms(layers: &mut [Layer], device: &Device) {
        let random = |n: usize, low: f64, high: f64| {
            Tensor::<1>::random([n], Distribution::Uniform(low, high), device)
        };
        for layer in layers {
            match layer {
                Layer::BatchNorm(norm) => {
                    let n = norm.gamma.dims()[0];
                    norm.gamma = Param::from_tensor(random(n, 0.5, 1.5));
                    norm.beta = Param::from_tensor(random(n, -0.5, 0.5));
                    norm.running_mean = RunningState::new(random(n, -0.5, 0.5));
                    norm.running_var = RunningState::new(random(n, 0.5, 2.0));
                }
                Layer::Residual(stage) => {
                    for block in &mut stage.blocks {
                        randomise_norms(&mut block.body, device);
                        randomise_norms(&mut block.shortcut, device);
                    }
                }
                _ => {}
            }
        }
    }

    fn network(name: &str, device: &Device) -> Network {
        let spec = zoo::get(name).expect("zoo model");
        let mut net = Network::init(&spec, [3, 32, 32], 11, device).expect("valid spec");
        randomise_norms(&mut net.layers, device);
        net
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32")
    }

    /// The direct path's `got` against the layer-by-layer `want`, within 1e-4 of the larger of 1
    /// and `want`'s largest magnitude.
    fn assert_close(what: &str, got: Tensor<2>, want: Tensor<2>) {
        assert_eq!(got.dims(), want.dims(), "{what}");
        let (got, want) = (values(got), values(want));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{what}[{i}]: direct {a} vs layer by layer {b}"
            );
        }
    }

    #[test]
    fn residual_networks_match_the_layer_by_layer_path() {
        if !blocked::available() {
            eprintln!("note: no AVX-512 on this CPU; the direct path is not taken");
            return;
        }
        let device = Device::flex();
        // option A, option B, the wider RepDistiller variant (stem 32, stages to 256), and
        // option A behind an input normalisation (how a PyTorch teacher's runs)
        for name in ["resnet8", "resnet8-proj", "resnet8x4", "normalised resnet8"] {
            let net = match name.strip_prefix("normalised ") {
                Some(base) => {
                    let mut net = network(base, &device);
                    let mut norm = vec![Layer::BatchNorm(batch_norm(3, 1e-5, 0.1, &device))];
                    randomise_norms(&mut norm, &device);
                    net.layers.splice(0..0, norm);
                    net
                }
                None => network(name, &device),
            };
            let x = Tensor::<4>::random([5, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
            let direct = forward(&net.layers, &x).expect("the plan takes a ResNet");
            let layerwise = net.forward_observed(x, |_, _| {});
            assert_close(&format!("{name}, logits"), direct, layerwise);
        }
    }

    #[test]
    fn taps_match_the_layer_by_layer_path() {
        if !blocked::available() {
            return;
        }
        let device = Device::flex();
        let spec = zoo::get("resnet8").expect("zoo model");
        let net = network("resnet8", &device);
        // stage1..3 and the embedding (the pooling's output), asked out of order and twice
        let mut layers: Vec<usize> = crate::models::taps::taps(&spec, [3, 32, 32])
            .expect("taps")
            .iter()
            .map(|t| t.layer)
            .collect();
        assert_eq!(layers.len(), 4, "three stages and the embedding");
        layers.reverse();
        layers.push(layers[1]);
        let x = Tensor::<4>::random([3, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        let (logits, direct) =
            forward_tapped(&net.layers, &x, &layers).expect("the plan takes these taps");
        let (expected_logits, layerwise) = net.forward_tapped_layerwise(x.clone(), &layers);
        assert_close("logits", logits, expected_logits);
        for ((layer, got), want) in layers.iter().zip(direct).zip(layerwise) {
            assert_eq!(
                matches!(got, Feature::Map(_)),
                matches!(want, Feature::Map(_)),
                "layer {layer}: map vs vector"
            );
            assert_close(&format!("layer {layer}"), got.flat(), want.flat());
        }
        // the convolution's output before its fused batch norm and ReLU is not in the plan
        assert!(forward_tapped(&net.layers, &x, &[0]).is_none());
        let (_, fallback) = net.forward_tapped(x, &[0]);
        assert_eq!(
            fallback[0].clone().map().expect("a map").dims(),
            [3, 16, 32, 32]
        );
    }

    #[test]
    fn an_image_gets_the_same_bits_alone_in_a_batch_and_on_any_thread_count() {
        if !blocked::available() {
            return;
        }
        let device = Device::flex();
        let net = network("resnet8", &device);
        let x = Tensor::<4>::random([6, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        let on = |threads: usize, x: &Tensor<4>| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| values(net.forward(x.clone())))
        };
        let one = on(1, &x);
        assert_eq!(one, on(2, &x), "1 vs 2 threads");
        let third = x.clone().slice(burn::tensor::s![2..3, .., .., ..]);
        assert_eq!(
            on(2, &third),
            one[20..30].to_vec(),
            "image 2 alone vs in the batch"
        );
    }

    #[test]
    fn networks_outside_the_pattern_are_left_to_the_layers() {
        let device = Device::flex();
        // the notebook's student: max pooling and flatten, no global pooling
        let spec = zoo::get("student").expect("zoo model");
        let net = Network::init(&spec, [3, 32, 32], 1, &device).expect("valid spec");
        assert!(Plan::new(&net.layers, [3, 32, 32]).is_none());
        // MobileNetV2's depthwise convolutions
        let spec = zoo::get("mobilenetv2").expect("zoo model");
        let net = Network::init(&spec, [3, 32, 32], 1, &device).expect("valid spec");
        assert!(Plan::new(&net.layers, [3, 32, 32]).is_none());
        let spec = zoo::get("resnet20").expect("zoo model");
        let net = Network::init(&spec, [3, 32, 32], 1, &device).expect("valid spec");
        let plan = Plan::new(&net.layers, [3, 32, 32]).expect("ResNet-20 fits");
        assert_eq!((plan.steps.len(), plan.output_channels), (1 + 9, 64));
    }
}
