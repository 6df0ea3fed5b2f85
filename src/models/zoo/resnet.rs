//! The CIFAR ResNets of He et al. (2016): a 3×3 stem, three stages of basic blocks, global
//! average pooling and a linear classifier.
//!
//! - `resnetN` (N = 6n + 2): widths 16/32/64, option-A shortcuts (stride-2 subsampling with
//!   zero-padded channels), as in the paper and the pretrained `pytorch_resnet_cifar10` weights.
//! - `resnetN-proj`: the same with option-B shortcuts (1×1 convolution + batch norm).
//! - `resnet8x4`, `resnet32x4`: RepDistiller's wider variants (stem 32, stages 64/128/256,
//!   option B), the students and teachers of the CRD/mdistiller tables.

use crate::models::spec::{LayerSpec, Shortcut};

/// The layers of the ResNet called `name` with `classes` outputs, or `None`.
pub fn layers(name: &str, classes: usize) -> Option<Vec<LayerSpec>> {
    let (depth, widths, shortcut) = match name {
        "resnet8x4" => (8, [32, 64, 128, 256], Shortcut::Projection),
        "resnet32x4" => (32, [32, 64, 128, 256], Shortcut::Projection),
        _ => {
            let (depth, shortcut) = match name.strip_suffix("-proj") {
                Some(base) => (base, Shortcut::Projection),
                None => (name, Shortcut::ZeroPad),
            };
            let depth: usize = depth.strip_prefix("resnet")?.parse().ok()?;
            if ![8, 14, 20, 32, 44, 56, 110].contains(&depth) {
                return None;
            }
            (depth, [16, 16, 32, 64], shortcut)
        }
    };
    Some(cifar_resnet(depth, widths, shortcut, classes))
}

/// Stem of `widths[0]` filters, three stages of `(depth - 2) / 6` basic blocks of `widths[1..]`
/// (strides 1, 2, 2), `shortcut` wherever a block changes the shape.
pub fn cifar_resnet(
    depth: usize,
    widths: [usize; 4],
    shortcut: Shortcut,
    classes: usize,
) -> Vec<LayerSpec> {
    let blocks = (depth - 2) / 6;
    let mut layers = vec![
        LayerSpec::torch_conv(widths[0], 3, 1, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
    ];
    let mut channels = widths[0];
    for (stage, &width) in widths[1..].iter().enumerate() {
        let stride = if stage == 0 { 1 } else { 2 };
        let first = if stride != 1 || channels != width {
            shortcut
        } else {
            Shortcut::Identity
        };
        layers.push(LayerSpec::residual(
            blocks,
            basic_block(width, stride),
            first,
            true,
        ));
        channels = width;
    }
    layers.extend([LayerSpec::GlobalAvgPool, LayerSpec::dense(classes, false)]);
    layers
}

/// conv3×3(stride) → BN → ReLU → conv3×3 → BN.
pub fn basic_block(width: usize, stride: usize) -> Vec<LayerSpec> {
    vec![
        LayerSpec::torch_conv(width, 3, stride, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::torch_conv(width, 3, 1, 1),
        LayerSpec::torch_batch_norm(),
    ]
}
