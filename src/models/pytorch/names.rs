//! Which PyTorch state-dict names a parameter of ours may have.
//!
//! Our names follow the spec's nesting (`layers.{i}` for the `i`-th layer, then
//! `blocks.{b}.body.{j}` or `blocks.{b}.shortcut.{k}` inside a residual stage). PyTorch models
//! name their modules instead. Two conventions cover the CIFAR ResNets:
//!
//! | our layer | CIFAR-ResNet style (`pytorch_resnet_cifar10`) | torchvision style (RepDistiller) |
//! |---|---|---|
//! | `n`-th top-level convolution / batch norm | `conv{n}` / `bn{n}` | `conv{n}` / `bn{n}` |
//! | stage `s` (1-based), block `b`, `k`-th body convolution / norm | `layer{s}.{b}.conv{k}` / `.bn{k}` | the same |
//! | a projection shortcut's convolution and norm | `layer{s}.{b}.shortcut.0` / `.1` | `layer{s}.{b}.downsample.0` / `.1` |
//! | the last dense layer | `linear` | `fc` (or `classifier`) |
//!
//! Our own names are always accepted too, so a state dict of a `distill export` loads as well.

use std::collections::HashMap;

use crate::models::spec::{LayerSpec, ModelSpec};

/// For each of our module paths that holds parameters, the PyTorch module names it may have
/// (ours last).
pub fn module_aliases(spec: &ModelSpec) -> HashMap<String, Vec<String>> {
    let mut aliases = HashMap::new();
    let (mut convs, mut norms, mut denses, mut stages) = (0, 0, 0, 0);
    let last = spec.layers.len().saturating_sub(1);
    for (i, layer) in spec.layers.iter().enumerate() {
        let ours = format!("layers.{i}");
        let theirs: Vec<String> = match layer {
            LayerSpec::Conv2d { .. } => {
                convs += 1;
                vec![format!("conv{convs}")]
            }
            LayerSpec::BatchNorm { .. } => {
                norms += 1;
                vec![format!("bn{norms}")]
            }
            LayerSpec::Dense { .. } if i == last => {
                vec!["fc".into(), "linear".into(), "classifier".into()]
            }
            LayerSpec::Dense { .. } => {
                denses += 1;
                vec![format!("fc{denses}")]
            }
            LayerSpec::Residual { repeat, body, .. } => {
                stages += 1;
                for block in 0..*repeat {
                    let theirs = format!("layer{stages}.{block}");
                    let ours = format!("{ours}.blocks.{block}");
                    block_aliases(&mut aliases, &ours, &theirs, body);
                }
                continue;
            }
            _ => continue,
        };
        add(&mut aliases, ours, theirs);
    }
    aliases
}

fn block_aliases(
    aliases: &mut HashMap<String, Vec<String>>,
    ours: &str,
    theirs: &str,
    body: &[LayerSpec],
) {
    let (mut convs, mut norms) = (0, 0);
    for (j, layer) in body.iter().enumerate() {
        let name = match layer {
            LayerSpec::Conv2d { .. } => {
                convs += 1;
                format!("{theirs}.conv{convs}")
            }
            LayerSpec::BatchNorm { .. } => {
                norms += 1;
                format!("{theirs}.bn{norms}")
            }
            _ => continue,
        };
        add(aliases, format!("{ours}.body.{j}"), vec![name]);
    }
    for k in 0..2 {
        add(
            aliases,
            format!("{ours}.shortcut.{k}"),
            vec![
                format!("{theirs}.shortcut.{k}"),
                format!("{theirs}.downsample.{k}"),
            ],
        );
    }
}

fn add(aliases: &mut HashMap<String, Vec<String>>, ours: String, mut theirs: Vec<String>) {
    theirs.push(ours.clone());
    aliases.insert(ours, theirs);
}

/// The state-dict names our tensor `key` may have, best first (ours last). A dense layer's
/// `linear.` level exists only in our names.
pub fn candidates(aliases: &HashMap<String, Vec<String>>, key: &str) -> Vec<String> {
    let module = (1..key.len())
        .rev()
        .filter(|&i| key.as_bytes()[i] == b'.')
        .map(|i| &key[..i])
        .find(|prefix| aliases.contains_key(*prefix));
    let Some(module) = module else {
        return vec![key.to_string()];
    };
    let leaf = &key[module.len() + 1..];
    let torch_leaf = leaf.strip_prefix("linear.").unwrap_or(leaf);
    aliases[module]
        .iter()
        .map(|name| {
            if name == module {
                key.to_string()
            } else {
                format!("{name}.{torch_leaf}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::zoo;

    #[test]
    fn resnet_names_follow_both_conventions() {
        let spec = zoo::get("resnet20-proj").unwrap();
        let aliases = module_aliases(&spec);
        assert_eq!(candidates(&aliases, "layers.0.weight")[0], "conv1.weight");
        assert_eq!(
            candidates(&aliases, "layers.1.running_var")[0],
            "bn1.running_var"
        );
        // stage 2 is layers.4, its block 1, body layer 3 is the second convolution
        assert_eq!(
            candidates(&aliases, "layers.4.blocks.1.body.3.weight")[0],
            "layer2.1.conv2.weight"
        );
        assert_eq!(
            candidates(&aliases, "layers.5.blocks.0.shortcut.1.bias"),
            [
                "layer3.0.shortcut.1.bias",
                "layer3.0.downsample.1.bias",
                "layers.5.blocks.0.shortcut.1.bias"
            ]
        );
        assert_eq!(
            candidates(&aliases, "layers.7.linear.weight"),
            [
                "fc.weight",
                "linear.weight",
                "classifier.weight",
                "layers.7.linear.weight"
            ]
        );
    }
}
