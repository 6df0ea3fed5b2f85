//! The reference experiment's models, layer for layer as in the Keras notebook
//! (output: 10 logits, no softmax), plus `teacher-small` for quick runs.

use crate::models::spec::LayerSpec;

/// Names of these models, in display order.
pub const NAMES: [&str; 5] = [
    "teacher-v1",
    "teacher-v2",
    "teacher-v3",
    "teacher-small",
    "student",
];

/// The layers of the model called `name`, or `None`.
pub fn layers(name: &str) -> Option<Vec<LayerSpec>> {
    Some(match name {
        "teacher-v1" => teacher_v1(),
        "teacher-v2" => teacher_v2(false),
        "teacher-v3" => teacher_v2(true),
        "teacher-small" => teacher_small(),
        "student" => student(),
        _ => return None,
    })
}

fn leaky() -> LayerSpec {
    LayerSpec::LeakyRelu { slope: 0.2 }
}

fn dropout(rate: f64) -> LayerSpec {
    LayerSpec::Dropout { rate }
}

/// Conv(256,3x3,s2) → LeakyReLU(0.2) → MaxPool(2,s1) → Conv(512,3x3,s2) → Flatten → Dense(10).
fn teacher_v1() -> Vec<LayerSpec> {
    vec![
        LayerSpec::conv(256, 3, 2),
        leaky(),
        LayerSpec::max_pool(2, 1),
        LayerSpec::conv(512, 3, 2),
        LayerSpec::Flatten,
        LayerSpec::dense(10, false),
    ]
}

/// Three Conv(s2) → LeakyReLU → MaxPool(2,s1) blocks (256, 256, 512 filters), then
/// Dense(128, relu) → Dense(10); `with_dropout` adds 0.2/0.3/0.4 after each pool and 0.5 after
/// Dense(128) (teacher-v3).
fn teacher_v2(with_dropout: bool) -> Vec<LayerSpec> {
    let mut layers = Vec::new();
    for (filters, rate) in [(256, 0.2), (256, 0.3), (512, 0.4)] {
        layers.extend([
            LayerSpec::conv(filters, 3, 2),
            leaky(),
            LayerSpec::max_pool(2, 1),
        ]);
        if with_dropout {
            layers.push(dropout(rate));
        }
    }
    layers.extend([LayerSpec::Flatten, LayerSpec::dense(128, true)]);
    if with_dropout {
        layers.push(dropout(0.5));
    }
    layers.push(LayerSpec::dense(10, false));
    layers
}

/// Conv(32,s2) → LReLU → Pool → Conv(32,s2) → LReLU → Pool → Dropout(0.2) → Flatten →
/// Dense(16, relu) → Dropout(0.5) → Dense(10).
fn student() -> Vec<LayerSpec> {
    vec![
        LayerSpec::conv(32, 3, 2),
        leaky(),
        LayerSpec::max_pool(2, 1),
        LayerSpec::conv(32, 3, 2),
        leaky(),
        LayerSpec::max_pool(2, 1),
        dropout(0.2),
        LayerSpec::Flatten,
        LayerSpec::dense(16, true),
        dropout(0.5),
        LayerSpec::dense(10, false),
    ]
}

/// Not in the notebook: a compact teacher (about 0.4M parameters on 28x28) that trains in seconds
/// per epoch on two CPU cores, for the quick default experiment on the embedded dataset.
/// Conv(32) → ReLU → MaxPool(2) → Conv(64) → ReLU → MaxPool(2) → Flatten → Dense(128, relu) →
/// Dropout(0.5) → Dense(10).
fn teacher_small() -> Vec<LayerSpec> {
    vec![
        LayerSpec::conv(32, 3, 1),
        LayerSpec::Relu,
        LayerSpec::max_pool(2, 2),
        LayerSpec::conv(64, 3, 1),
        LayerSpec::Relu,
        LayerSpec::max_pool(2, 2),
        LayerSpec::Flatten,
        LayerSpec::dense(128, true),
        dropout(0.5),
        LayerSpec::dense(10, false),
    ]
}
