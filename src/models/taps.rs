//! Feature taps: the named points of a network whose outputs a feature-distillation method reads.
//!
//! Names come from the spec's top-level layers, so every model has them without annotation:
//! - `stageK`: the output of the K-th residual stage (1-based). The stage's ReLU after the
//!   addition is included, so the tap is post-activation, as mdistiller's `feats` (what its
//!   FitNets and AT read).
//! - `blockK`: the output of the K-th max-pooling layer of a plain CNN (the teacher-v* and
//!   student blocks). When a dropout follows the pool the tap is taken after it: the pool and the
//!   dropout run in one kernel during training.
//! - `embedding`: the input of the last dense layer (after global pooling or flattening and any
//!   hidden dense layers): mdistiller's `pooled_feat`, what RKD and CRD read.

use std::fmt;

use crate::models::spec::{LayerSpec, ModelSpec, Shape};

/// One tap of a model for a given input shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Its name (`stage2`, `block1`, `embedding`).
    pub name: String,
    /// Index of the top-level layer whose output it is.
    pub layer: usize,
    /// Shape of one example's output there.
    pub shape: Shape,
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.shape)
    }
}

/// The taps of `spec` on inputs of shape `input`, in forward order.
pub fn taps(spec: &ModelSpec, input: [usize; 3]) -> anyhow::Result<Vec<Tap>> {
    let infos = spec
        .infer(input)
        .map_err(|e| anyhow::anyhow!("model `{}`: {e}", spec.name))?;
    let mut found = Vec::new();
    let (mut stages, mut blocks) = (0, 0);
    for (index, layer) in spec.layers.iter().enumerate() {
        let name = match layer {
            LayerSpec::Residual { .. } => {
                stages += 1;
                format!("stage{stages}")
            }
            LayerSpec::MaxPool2d { .. } => {
                blocks += 1;
                format!("block{blocks}")
            }
            _ => continue,
        };
        // A dropout right after a pool belongs to the same tap.
        let layer = match spec.layers.get(index + 1) {
            Some(LayerSpec::Dropout { .. }) if name.starts_with("block") => index + 1,
            _ => index,
        };
        found.push(Tap {
            name,
            layer,
            shape: infos[layer].output,
        });
    }
    if let Some(last_dense) = spec
        .layers
        .iter()
        .rposition(|l| matches!(l, LayerSpec::Dense { .. }))
        .filter(|&i| i > 0)
    {
        found.push(Tap {
            name: "embedding".to_string(),
            layer: last_dense - 1,
            shape: infos[last_dense - 1].output,
        });
    }
    Ok(found)
}

/// The tap called `name`; the error lists the taps that exist.
pub fn find_tap(spec: &ModelSpec, input: [usize; 3], name: &str) -> anyhow::Result<Tap> {
    pick_tap(&taps(spec, input)?, &format!("model `{}`", spec.name), name)
}

/// The tap called `name` among `all` (the taps of `owner`, "the student", say); the error lists
/// them.
pub fn pick_tap(all: &[Tap], owner: &str, name: &str) -> anyhow::Result<Tap> {
    if let Some(tap) = all.iter().find(|t| t.name == name) {
        return Ok(tap.clone());
    }
    let listed: Vec<String> = all.iter().map(|t| t.to_string()).collect();
    anyhow::bail!(
        "{owner} has no feature tap `{name}`; its taps are: {}",
        if listed.is_empty() {
            "none".to_string()
        } else {
            listed.join(", ")
        }
    )
}
