//! A BERT-family text encoder (BERT, MiniLM, DistilBERT-style students) on burn's
//! `TransformerEncoder`, loadable from a Hugging Face directory.
//!
//! burn's encoder layer is BERT's layer: post-norm, GELU (erf), attention that masks padded keys.
//! The embeddings add word, absolute position and token-type (always type 0: one segment)
//! vectors, then a LayerNorm. [`Bert::hidden_states`] returns every hidden state (the embeddings'
//! output first), which DistilBERT's cosine loss and layer-wise initialisation need.
//!
//! A Hugging Face directory holds `config.json`, `model.safetensors` and `tokenizer.json`; the
//! tensors' PyTorch names are mapped onto this module tree (see [`HF_KEY_MAP`]); the pooler and
//! `position_ids` of a `BertModel` checkpoint are not used.

use std::path::Path;

use anyhow::{bail, Context};
use burn::module::Module;
use burn::nn::activation::ActivationConfig;
use burn::nn::transformer::TransformerEncoderLayer;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
use burn::nn::{
    Dropout, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear,
};
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::{quiet_softmax, softmax};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::tokenizer::TokenBatch;

/// File names of a Hugging Face model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights of a Hugging Face model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer of a Hugging Face model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Regex → replacement pairs from Hugging Face `BertModel` tensor names to this module's paths.
pub const HF_KEY_MAP: [(&str, &str); 7] = [
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (
        r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
        "encoder.layers.$1.mha.$2.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        "encoder.layers.$1.mha.output.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
        "encoder.layers.$1.norm_1.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
        "encoder.layers.$1.pwff.linear_inner.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.dense\.",
        "encoder.layers.$1.pwff.linear_outer.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
        "encoder.layers.$1.norm_2.",
    ),
];

/// The fields of a Hugging Face `config.json` that define a BERT encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Number of segment (token type) embeddings.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward block; only `gelu` (erf) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on hidden states during training (attention dropout uses the same rate).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the model config {}", path.display()))?;
        let config: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a BERT config.json (expected vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings)",
                path.display()
            )
        })?;
        config
            .check()
            .with_context(|| format!("model config {}", path.display()))?;
        Ok(config)
    }

    /// Rejects configurations this encoder cannot build.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.hidden_act != "gelu" {
            bail!(
                "hidden_act `{}` is not supported; expected `gelu`",
                self.hidden_act
            );
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} is 0; expected a positive size");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(0.0..1.0).contains(&self.hidden_dropout_prob) {
            bail!(
                "hidden_dropout_prob {} is outside [0, 1)",
                self.hidden_dropout_prob
            );
        }
        Ok(())
    }

    /// Builds an encoder with BERT's initialisation (normal, std 0.02).
    pub fn init(&self, device: &Device) -> Bert {
        let initializer = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let embedding = |n| {
            EmbeddingConfig::new(n, self.hidden_size)
                .with_initializer(initializer.clone())
                .init(device)
        };
        Bert {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                layer_norm: LayerNormConfig::new(self.hidden_size)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
            },
            encoder: TransformerEncoderConfig::new(
                self.hidden_size,
                self.intermediate_size,
                self.num_attention_heads,
                self.num_hidden_layers,
            )
            .with_dropout(self.hidden_dropout_prob)
            .with_norm_first(false)
            .with_activation(ActivationConfig::Gelu)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_initializer(initializer)
            .init(device),
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// Parameter count of the encoder this config builds.
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let f = self.intermediate_size;
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h;
        embeddings + self.num_hidden_layers * layer
    }
}

/// Word + position + token-type embeddings, then a LayerNorm.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// One vector per vocabulary entry.
    pub word_embeddings: Embedding,
    /// One vector per absolute position.
    pub position_embeddings: Embedding,
    /// One vector per segment; only segment 0 is used.
    pub token_type_embeddings: Embedding,
    /// Normalises the sum.
    pub layer_norm: LayerNorm,
}

impl BertEmbeddings {
    /// `[batch, len]` ids to `[batch, len, hidden]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, len] = ids.dims();
        let device = ids.device();
        let words = self.word_embeddings.forward(ids);
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).unsqueeze::<2>();
        let positions = self.position_embeddings.forward(positions);
        let segment = self
            .token_type_embeddings
            .weight
            .val()
            .slice(0..1)
            .unsqueeze::<3>();
        self.layer_norm.forward(words + positions + segment)
    }
}

/// A BERT encoder: embeddings, then `num_hidden_layers` post-norm transformer layers.
#[derive(Module, Debug)]
pub struct Bert {
    /// Token, position and segment embeddings.
    pub embeddings: BertEmbeddings,
    /// The transformer layers (`encoder.layers[i]` is Hugging Face's `encoder.layer.i`).
    pub encoder: TransformerEncoder,
    /// The layer norms' epsilon (burn's `LayerNorm` keeps its own private), for the inference
    /// kernel.
    #[module(skip)]
    pub layer_norm_eps: f64,
}

impl Bert {
    /// Every hidden state: the embeddings' output, then each layer's, `[batch, len, hidden]`.
    pub fn hidden_states(&self, batch: &TokenBatch) -> Vec<Tensor<3>> {
        let [_, len] = batch.dims();
        let max_len = self.embeddings.position_embeddings.weight.dims()[0];
        assert!(
            len <= max_len,
            "a batch of {len} tokens is longer than the {max_len} positions the model has; cap the tokenizer's max_len"
        );
        let mut x = self.embeddings.forward(batch.ids.clone());
        let mut states = Vec::with_capacity(self.encoder.layers.len() + 1);
        states.push(x.clone());
        let padding = PaddingMask::new(&batch.padding);
        for index in 0..self.encoder.layers.len() {
            x = self.layer(index, x, &padding);
            states.push(x.clone());
        }
        states
    }

    /// The last hidden state, `[batch, len, hidden]`.
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<3> {
        let x = self.embeddings.forward(batch.ids.clone());
        let padding = PaddingMask::new(&batch.padding);
        (0..self.encoder.layers.len()).fold(x, |x, index| self.layer(index, x, &padding))
    }

    /// Encoder layer `index` on `x` (`[batch, len, hidden]`; `padding` true on padding): the
    /// local inference kernel when gradients are not tracked on Flex, burn's layer otherwise.
    pub fn layer_forward(
        &self,
        index: usize,
        x: Tensor<3>,
        padding: &Tensor<2, Bool>,
    ) -> Tensor<3> {
        self.layer(index, x, &PaddingMask::new(padding))
    }

    fn layer(&self, index: usize, x: Tensor<3>, padding: &PaddingMask) -> Tensor<3> {
        let layer = &self.encoder.layers[index];
        let device = x.device();
        if crate::kernels::inference_active(&device) {
            crate::kernels::encoder_layer(layer, x, padding.host(), self.layer_norm_eps)
        } else if crate::kernels::active(&device) {
            layer_with_local_kernels(layer, x, padding.tensor)
        } else {
            layer.forward(x, Some(padding.tensor.clone()), None)
        }
    }
}

/// A batch's padding mask, with the host copy the inference kernel reads made once for all
/// layers.
struct PaddingMask<'a> {
    tensor: &'a Tensor<2, Bool>,
    host: std::cell::OnceCell<Vec<bool>>,
}

impl<'a> PaddingMask<'a> {
    fn new(tensor: &'a Tensor<2, Bool>) -> Self {
        PaddingMask {
            tensor,
            host: std::cell::OnceCell::new(),
        }
    }

    fn host(&self) -> &[bool] {
        self.host.get_or_init(|| {
            self.tensor
                .clone()
                .into_data()
                .try_to_vec::<bool>()
                .expect("a bool mask")
        })
    }
}

/// burn's post-norm `TransformerEncoderLayer::forward` op for op, except that GELU and dropout run
/// on the local kernels: burn's dropout draws its masks one ChaCha sample at a time (a third of a
/// fine-tuning step on Flex) and its GELU calls libm's scalar `erf` (a tenth).
fn layer_with_local_kernels(
    layer: &TransformerEncoderLayer,
    x: Tensor<3>,
    padding: &Tensor<2, Bool>,
) -> Tensor<3> {
    let [batch, len, width] = x.dims();
    let mha = &layer.mha;
    let heads = |linear: &Linear, x: Tensor<3>| {
        dense(linear, x)
            .reshape([batch, len, mha.n_heads, mha.d_k])
            .swap_dims(1, 2)
    };
    let query = heads(&mha.query, x.clone());
    let key = heads(&mha.key, x.clone());
    let value = heads(&mha.value, x.clone());
    let scores = query
        .matmul(key.transpose())
        .div_scalar((mha.d_k as f32).sqrt())
        .mask_fill(padding.clone().reshape([batch, 1, 1, len]), mha.min_float);
    let weights = if mha.quiet_softmax {
        quiet_softmax(scores, 3)
    } else {
        softmax(scores, 3)
    };
    let context = dropout(&mha.dropout, weights)
        .matmul(value)
        .swap_dims(1, 2)
        .reshape([batch, len, width]);
    let attended = dense(&mha.output, context);
    let x = layer.norm_1.forward(x + dropout(&layer.dropout, attended));
    let inner = crate::kernels::gelu(dense(&layer.pwff.linear_inner, x.clone()));
    let outer = dense(
        &layer.pwff.linear_outer,
        dropout(&layer.pwff.dropout, inner),
    );
    layer.norm_2.forward(x + dropout(&layer.dropout, outer))
}

/// `linear` on `[batch, len, in]` as one `[batch·len, in]` product. burn's `Linear` multiplies a
/// rank-3 input by the weight broadcast over the batch, so its backward pass builds one weight
/// gradient per text (`[batch, in, out]`, 75 MB for MiniLM's feed-forward at batch 32) and sums
/// them: page faults and copies that cost more than the product itself.
fn dense(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, len, inputs] = x.dims();
    let y = linear.forward(x.reshape([batch * len, inputs]));
    let outputs = y.dims()[1];
    y.reshape([batch, len, outputs])
}

/// `drop` applied as burn applies it (only while training, on an autodiff device), with the
/// local kernel's mask.
fn dropout<const D: usize>(drop: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if drop.prob > 0.0 && drop.training.is_enabled() && x.is_autodiff() {
        crate::kernels::dropout(x, drop.prob)
    } else {
        drop.forward(x)
    }
}

impl Bert {
    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }
}

/// Mean of the hidden states over the non-padding tokens: `[batch, len, hidden]` to `[batch, hidden]`.
pub fn mean_pool(hidden: Tensor<3>, padding: Tensor<2, Bool>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    let keep = padding.bool_not().float().unsqueeze_dim::<3>(2);
    let sum = (hidden * keep.clone()).sum_dim(1);
    let count = keep.sum_dim(1);
    (sum / count).reshape([batch, width])
}

/// Loads a Hugging Face BERT directory (`config.json` + `model.safetensors`).
pub fn load_pretrained(dir: &Path, device: &Device) -> anyhow::Result<(Bert, BertConfig)> {
    let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    let mut model = config.init(device);
    load_weights(&mut model, &dir.join(WEIGHTS_FILE))?;
    Ok((model, config))
}

/// Loads PyTorch-named BERT tensors from `path` into `model`; every encoder tensor must be there.
pub fn load_weights(model: &mut Bert, path: &Path) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!(
            "{}: not found; expected the model's weights (model.safetensors)",
            path.display()
        );
    }
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true);
    for (from, to) in HF_KEY_MAP {
        store = store.with_key_remapping(from, to);
    }
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot load BERT weights from {}: {e}", path.display()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        bail!(
            "the weights in {} do not fit its config.json: {result}",
            path.display()
        );
    }
    Ok(())
}
