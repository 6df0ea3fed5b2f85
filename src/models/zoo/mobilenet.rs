//! MobileNetV2 (Sandler et al., 2018) for 32×32 CIFAR images as RepDistiller's `mobile_half`
//! defines it: width multiplier 0.5, expansion 6, a stride-2 stem, inverted residual blocks that
//! always have their 1×1 expansion (even at expansion 1), a 1×1 convolution to 1,280 channels,
//! global average pooling and a linear classifier. ReLU, not ReLU6, as in that code.

use crate::models::spec::{LayerSpec, Shortcut};

/// The layers of `mobilenetv2` with `classes` outputs.
pub fn layers(name: &str, classes: usize) -> Option<Vec<LayerSpec>> {
    (name == "mobilenetv2").then(|| mobilenet_v2(6, 0.5, classes))
}

/// (expansion, channels, blocks, first stride) per stage; `t` marks the model's expansion.
const STAGES: [(Option<usize>, usize, usize, usize); 7] = [
    (Some(1), 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
];

/// MobileNetV2 with expansion `t` and width multiplier `width`.
pub fn mobilenet_v2(t: usize, width: f64, classes: usize) -> Vec<LayerSpec> {
    let scaled = |c: usize| (c as f64 * width) as usize;
    let mut channels = scaled(32);
    let mut layers = vec![
        LayerSpec::torch_conv(channels, 3, 2, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
    ];
    for (expansion, c, blocks, stride) in STAGES {
        let expansion = expansion.unwrap_or(t);
        let out = scaled(c);
        let first = if stride == 1 && channels == out {
            Shortcut::Identity
        } else {
            Shortcut::None
        };
        layers.push(LayerSpec::residual(
            1,
            inverted_residual(channels, out, stride, expansion),
            first,
            false,
        ));
        if blocks > 1 {
            layers.push(LayerSpec::residual(
                blocks - 1,
                inverted_residual(out, out, 1, expansion),
                Shortcut::Identity,
                false,
            ));
        }
        channels = out;
    }
    layers.extend([
        LayerSpec::torch_conv(1280, 1, 1, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::GlobalAvgPool,
        LayerSpec::dense(classes, false),
    ]);
    layers
}

/// 1×1 expansion → BN → ReLU → depthwise 3×3(stride) → BN → ReLU → 1×1 projection → BN.
fn inverted_residual(input: usize, out: usize, stride: usize, expansion: usize) -> Vec<LayerSpec> {
    let hidden = input * expansion;
    vec![
        LayerSpec::torch_conv(hidden, 1, 1, 1),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::torch_conv(hidden, 3, stride, hidden),
        LayerSpec::torch_batch_norm(),
        LayerSpec::Relu,
        LayerSpec::torch_conv(out, 1, 1, 1),
        LayerSpec::torch_batch_norm(),
    ]
}
