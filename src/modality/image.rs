//! The image modality: CNNs built from a [`ModelSpec`], trained on an image [`Split`].

use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::{Device, Int, Tensor};

use super::{Architecture, Modality, SoftTargets};
use crate::data::{Augmentation, LabelMix, Split};
use crate::distill::TeacherLogits;
use crate::models::checkpoint::{self, ModelMeta};
use crate::models::taps::{taps, Tap};
use crate::models::{Feature, ModelSpec, Network};

/// Images `[N, C, H, W]` in `[0, 1]`, read by a [`Network`].
#[derive(Debug, Clone, Copy)]
pub struct Images;

impl Modality for Images {
    type Split = Split;
    type Input = Tensor<4>;
    type Model = Network;

    fn len(split: &Split) -> usize {
        split.len()
    }

    fn batch(
        split: &Split,
        indices: &[usize],
        device: &Device,
        augment: Option<(&Augmentation, u64)>,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        split.batch(indices, device, augment)
    }

    fn label_mix(
        split: &Split,
        indices: &[usize],
        views: &[usize],
        aug: &Augmentation,
    ) -> Option<LabelMix> {
        split.label_mix(indices, views, aug)
    }

    fn logits(model: &Network, input: Tensor<4>) -> Tensor<2> {
        model.forward(input)
    }

    fn example_noun() -> &'static str {
        "image"
    }

    fn labels(split: &Split) -> Vec<usize> {
        split.labels.iter().map(|&l| l as usize).collect()
    }

    fn logits_and_features(
        model: &Network,
        input: Tensor<4>,
        layers: &[usize],
    ) -> anyhow::Result<(Tensor<2>, Vec<Feature>)> {
        Ok(model.forward_tapped(input, layers))
    }

    fn images(input: &Tensor<4>) -> Option<Tensor<4>> {
        Some(input.clone())
    }
}

/// A CNN spec for one input shape and class list; stored as a checkpoint directory
/// ([`checkpoint`]: `spec.toml`, `model.bpk`, `meta.json`).
#[derive(Debug, Clone, Copy)]
pub struct ImageArchitecture<'a> {
    /// The layers.
    pub spec: &'a ModelSpec,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
    /// Class names (index = logit).
    pub classes: &'a [String],
}

impl Architecture for ImageArchitecture<'_> {
    type Modality = Images;

    fn identity(&self) -> String {
        self.spec.to_toml_string()
    }

    fn params(&self) -> anyhow::Result<usize> {
        Ok(self.spec.stats(self.input)?.params)
    }

    fn taps(&self) -> anyhow::Result<Vec<Tap>> {
        taps(self.spec, self.input)
    }

    fn check(&self) -> anyhow::Result<()> {
        let outputs = self
            .spec
            .num_outputs(self.input)
            .with_context(|| format!("model `{}`", self.spec.name))?;
        if outputs != self.classes.len() {
            bail!(
                "model `{}` has {outputs} outputs but the dataset has {} classes; its last dense layer must have {} units",
                self.spec.name,
                self.classes.len(),
                self.classes.len()
            );
        }
        Ok(())
    }

    fn init(&self, seed: u64, device: &Device) -> anyhow::Result<Network> {
        Ok(Network::init(self.spec, self.input, seed, device)?)
    }

    fn save(&self, dir: &Path, model: &Network) -> anyhow::Result<()> {
        let meta = ModelMeta {
            format: 1,
            input: self.input,
            classes: self.classes.to_vec(),
            params: self.params()?,
        };
        checkpoint::save(dir, self.spec, &meta, model)
    }

    fn model_files(&self) -> Vec<&'static str> {
        checkpoint::MODEL_FILES.to_vec()
    }

    fn load_weights(&self, dir: &Path, model: Network) -> anyhow::Result<Network> {
        checkpoint::load_weights(&dir.join(checkpoint::WEIGHTS_FILE), model)
    }

    fn warm_start(&self, dir: &Path, model: Network) -> anyhow::Result<Network> {
        checkpoint::load_for_warm_start(dir, self.spec, self.input, self.classes.len(), model)
    }
}

impl SoftTargets<Tensor<4>> for TeacherLogits {
    fn teacher_id(&self) -> &str {
        TeacherLogits::teacher_id(self)
    }

    fn logits_at(
        &self,
        indices: &[usize],
        views: Option<&[usize]>,
        input: &Tensor<4>,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        TeacherLogits::logits_at(self, indices, views, input.clone(), device)
    }
}
