//! What the one training loop ([`crate::train`]) needs from a kind of data: the modality traits.
//!
//! - [`Modality`]: a split of labelled examples, the batch a model reads, and the model's logits.
//! - [`Architecture`]: builds a model, sizes it, and stores it in (and reloads it from) a run
//!   directory, so checkpoints and `--resume` work the same for every modality.
//! - [`SoftTargets`]: a teacher's logits for a batch (cached by example index, or computed live).
//!
//! [`image`] implements them for image CNNs ([`crate::models::Network`] on [`crate::data::Split`]),
//! [`text`] for text classifiers ([`crate::models::text::TextClassifier`] on token batches).

pub mod image;
pub mod text;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::data::{Augmentation, LabelMix};
use crate::losses::HiddenStates;
use crate::models::taps::Tap;
use crate::models::Feature;

/// A kind of labelled data and the models that read it.
pub trait Modality {
    /// The examples of one split, in memory.
    type Split: Sync;
    /// A batch of model inputs on a device.
    type Input: Clone;
    /// The classifier being trained.
    type Model: Module;

    /// Number of examples in `split`.
    fn len(split: &Self::Split) -> usize;

    /// The inputs and labels of the examples at `indices`; `augment` (transform, seed) applies
    /// random augmentation where the modality has one.
    fn batch(
        split: &Self::Split,
        indices: &[usize],
        device: &Device,
        augment: Option<(&Augmentation, u64)>,
    ) -> (Self::Input, Tensor<1, Int>);

    /// The second label and weight of each example of [`Modality::batch`], which shows the fixed
    /// `views` under `aug`, when `aug` blends examples (mixup views); `None` otherwise, and for
    /// modalities without blending.
    fn label_mix(
        _split: &Self::Split,
        _indices: &[usize],
        _views: &[usize],
        _aug: &Augmentation,
    ) -> Option<LabelMix> {
        None
    }

    /// Class logits of a batch, `[batch, classes]`.
    fn logits(model: &Self::Model, input: Self::Input) -> Tensor<2>;

    /// Class logits and the hidden states a hidden-state loss compares; `None` for a model
    /// without per-token states (an image CNN, a text CNN).
    fn logits_and_states(
        model: &Self::Model,
        input: Self::Input,
    ) -> (Tensor<2>, Option<HiddenStates>) {
        (Self::logits(model, input), None)
    }

    /// What one example is called in messages ("image", "text").
    fn example_noun() -> &'static str;

    /// The class of every example of `split`, in index order.
    fn labels(split: &Self::Split) -> Vec<usize>;

    /// Class logits and the outputs of the top-level layers at `layers` (a feature method's
    /// taps); only image CNNs have taps.
    fn logits_and_features(
        model: &Self::Model,
        input: Self::Input,
        layers: &[usize],
    ) -> anyhow::Result<(Tensor<2>, Vec<Feature>)> {
        let _ = (model, input, layers);
        anyhow::bail!(
            "feature methods (fitnets, at, rkd, crd) read a CNN's hidden layers; a {} model has no feature taps",
            Self::example_noun()
        )
    }

    /// The batch as images, for a teacher that reads them (feature methods); `None` for other
    /// inputs.
    fn images(input: &Self::Input) -> Option<Tensor<4>> {
        let _ = input;
        None
    }
}

/// How a training job builds its model and keeps it in a run directory.
pub trait Architecture {
    /// The modality the model reads.
    type Modality: Modality;

    /// Text identifying the architecture; a resumed run must find the same.
    fn identity(&self) -> String;

    /// Number of trainable parameters.
    fn params(&self) -> anyhow::Result<usize>;

    /// The feature taps of the model ([`crate::models::taps`]); none for models without them.
    fn taps(&self) -> anyhow::Result<Vec<Tap>> {
        Ok(Vec::new())
    }

    /// Rejects an architecture that cannot serve its data (e.g. more or fewer outputs than
    /// classes), naming what is wrong.
    fn check(&self) -> anyhow::Result<()>;

    /// A freshly initialised model (weights drawn from `seed`) on `device`.
    fn init(&self, seed: u64, device: &Device) -> anyhow::Result<ModelOf<Self>>;

    /// Writes the model files (architecture, weights, metadata) into `dir`.
    fn save(&self, dir: &Path, model: &ModelOf<Self>) -> anyhow::Result<()>;

    /// The names of the files [`Architecture::save`] writes.
    fn model_files(&self) -> Vec<&'static str>;

    /// Replaces `model`'s weights by those saved in `dir` by [`Architecture::save`].
    fn load_weights(&self, dir: &Path, model: ModelOf<Self>) -> anyhow::Result<ModelOf<Self>>;

    /// Starts from the weights of another run's model in `dir` (a warm start); the default
    /// requires the same architecture.
    fn warm_start(&self, dir: &Path, model: ModelOf<Self>) -> anyhow::Result<ModelOf<Self>> {
        self.load_weights(dir, model)
    }
}

/// The model type of an architecture.
pub type ModelOf<A> = <<A as Architecture>::Modality as Modality>::Model;

/// A teacher's logits for the batches of one training split.
pub trait SoftTargets<I> {
    /// Identifies the teacher (a resumed run must be taught by the same one).
    fn teacher_id(&self) -> &str;

    /// The teacher's logits for the examples at `indices`, which the batch `input` shows
    /// (`views[j]`: the fixed augmented view of example `indices[j]`, when views are in use). A
    /// plain (non-autodiff) tensor on `device`.
    fn logits_at(
        &self,
        indices: &[usize],
        views: Option<&[usize]>,
        input: &I,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>>;

    /// The teacher's hidden states for the batch `input` (embeddings first), plain tensors on
    /// `device`; `None` when this teacher offers none (cached logits only).
    fn states_at(&self, input: &I, device: &Device) -> anyhow::Result<Option<Vec<Tensor<3>>>> {
        let _ = (input, device);
        Ok(None)
    }
}
