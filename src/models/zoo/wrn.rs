//! Wide ResNets (Zagoruyko & Komodakis, 2016) for CIFAR as RepDistiller defines them: `wrn-D-K`
//! has `(D - 4) / 6` pre-activation blocks per stage, widths 16K/32K/64K after a 16-filter stem,
//! and a 1×1 convolution shortcut (no batch norm) where a block changes the width.
//!
//! A pre-activation block that changes the width applies its first batch norm and ReLU to the
//! input of both branches; the spec writes that norm and ReLU before the block, which computes
//! the same function with the same parameters.

use crate::models::spec::{LayerSpec, Shortcut};

/// The layers of the Wide ResNet called `name` (`wrn-16-2`, `wrn-40-2`) with `classes` outputs.
pub fn layers(name: &str, classes: usize) -> Option<Vec<LayerSpec>> {
    let (depth, widen) = match name {
        "wrn-16-2" => (16, 2),
        "wrn-40-2" => (40, 2),
        _ => return None,
    };
    Some(wide_resnet(depth, widen, classes))
}

/// `wrn-{depth}-{widen}` with `classes` outputs.
pub fn wide_resnet(depth: usize, widen: usize, classes: usize) -> Vec<LayerSpec> {
    let blocks = (depth - 4) / 6;
    let mut layers = vec![LayerSpec::torch_conv(16, 3, 1, 1)];
    let mut channels = 16;
    for (stage, width) in [16 * widen, 32 * widen, 64 * widen].into_iter().enumerate() {
        let stride = if stage == 0 { 1 } else { 2 };
        let mut repeats = blocks;
        if channels != width {
            layers.extend([LayerSpec::torch_batch_norm(), LayerSpec::Relu]);
            layers.push(LayerSpec::residual(
                1,
                vec![
                    LayerSpec::torch_conv(width, 3, stride, 1),
                    LayerSpec::torch_batch_norm(),
                    LayerSpec::Relu,
                    LayerSpec::torch_conv(width, 3, 1, 1),
                ],
                Shortcut::Conv,
                false,
            ));
            repeats -= 1;
        }
        if repeats > 0 {
            layers.push(LayerSpec::residual(
                repeats,
                preactivation_block(width),
                Shortcut::Identity,
                false,
            ));
        }
        channels = width;
    }
    layers.extend([
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::GlobalAvgPool,
        LayerSpec::dense(classes, false),
    ]);
    layers
}

/// BN → ReLU → conv3×3 → BN → ReLU → conv3×3, keeping the width.
fn preactivation_block(width: usize) -> Vec<LayerSpec> {
    vec![
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::torch_conv(width, 3, 1, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::torch_conv(width, 3, 1, 1),
    ]
}
