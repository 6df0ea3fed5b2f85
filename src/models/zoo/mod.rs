//! Named models: the reference notebook's Keras models ([`keras`]) and the residual networks of
//! the distillation literature's CIFAR tables ([`resnet`], [`wrn`], [`mobilenet`]), each with 10
//! output logits; training sizes the classifier to the data's classes ([`super::sized_for`]).

pub mod keras;
pub mod mobilenet;
pub mod resnet;
pub mod wrn;

use super::spec::ModelSpec;

/// Names of the zoo models, in display order.
pub const NAMES: &[&str] = &[
    "teacher-v1",
    "teacher-v2",
    "teacher-v3",
    "teacher-small",
    "student",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8-proj",
    "resnet14-proj",
    "resnet20-proj",
    "resnet32-proj",
    "resnet44-proj",
    "resnet56-proj",
    "resnet110-proj",
    "resnet8x4",
    "resnet32x4",
    "wrn-16-2",
    "wrn-40-2",
    "mobilenetv2",
];

/// The classes every zoo model predicts.
pub const CLASSES: usize = 10;

/// The zoo model called `name`, or `None`.
pub fn get(name: &str) -> Option<ModelSpec> {
    let layers = keras::layers(name)
        .or_else(|| resnet::layers(name, CLASSES))
        .or_else(|| wrn::layers(name, CLASSES))
        .or_else(|| mobilenet::layers(name, CLASSES))?;
    Some(ModelSpec {
        name: name.to_string(),
        layers,
    })
}
