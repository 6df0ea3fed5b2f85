//! Text classifiers: a BERT-family encoder, mean pooling over the tokens, a dense head.
//!
//! The architecture is a [`TextModelSpec`] (TOML, like the CNN specs): a pretrained encoder from a
//! Hugging Face directory (the teacher), or a BERT-style transformer of any size, from scratch or
//! with DistilBERT's initialisation (the teacher's embeddings and a chosen subset of its layers,
//! e.g. `teacher_layers = [0, 2, 4]`).
//!
//! ```toml
//! kind = "transformer"
//! layers = 3
//! width = 384
//! heads = 12
//! ffn = 1536
//! teacher_layers = [0, 2, 4]
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bert::{self, mean_pool, Bert, BertConfig};
use crate::data::tokenizer::TokenBatch;

/// Dropout before the classification head (BERT's classifier dropout).
pub const HEAD_DROPOUT: f64 = 0.1;

/// The architecture of a text classifier's encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextModelSpec {
    /// A pretrained encoder: a Hugging Face directory with `config.json`, `model.safetensors` and
    /// `tokenizer.json`.
    Pretrained {
        /// The directory.
        dir: PathBuf,
    },
    /// A BERT-style post-norm transformer over the teacher's vocabulary.
    Transformer {
        /// Encoder layers.
        layers: usize,
        /// Hidden width (must equal the teacher's with `teacher_layers`).
        width: usize,
        /// Attention heads (must divide `width`).
        heads: usize,
        /// Feed-forward width.
        ffn: usize,
        /// DistilBERT initialisation: student layer `i` starts as teacher layer
        /// `teacher_layers[i]`, and the embeddings as the teacher's. Needs a pretrained teacher of
        /// the same width, heads and feed-forward width.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        teacher_layers: Option<Vec<usize>>,
        /// Dropout on hidden states and attention while training.
        #[serde(default = "default_dropout")]
        dropout: f64,
    },
}

fn default_dropout() -> f64 {
    0.1
}

impl TextModelSpec {
    /// Reads a spec from a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read text model spec {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a text model spec (expected kind = \"pretrained\" with dir, or kind = \"transformer\" with layers, width, heads, ffn)",
                path.display()
            )
        })
    }

    /// The encoder configuration this spec builds, given the teacher's (for the vocabulary and
    /// positions a student shares with it).
    pub fn bert_config(&self, teacher: Option<&BertConfig>) -> anyhow::Result<BertConfig> {
        match self {
            TextModelSpec::Pretrained { dir } => {
                BertConfig::from_file(&dir.join(bert::CONFIG_FILE))
            }
            TextModelSpec::Transformer {
                layers,
                width,
                heads,
                ffn,
                teacher_layers,
                dropout,
            } => {
                let Some(teacher) = teacher else {
                    bail!("a transformer student takes its vocabulary from a pretrained teacher; none was given");
                };
                let config = BertConfig {
                    vocab_size: teacher.vocab_size,
                    hidden_size: *width,
                    num_hidden_layers: *layers,
                    num_attention_heads: *heads,
                    intermediate_size: *ffn,
                    max_position_embeddings: teacher.max_position_embeddings,
                    type_vocab_size: teacher.type_vocab_size,
                    layer_norm_eps: teacher.layer_norm_eps,
                    hidden_act: "gelu".into(),
                    hidden_dropout_prob: *dropout,
                };
                config.check()?;
                if *layers == 0 {
                    bail!("layers is 0; expected at least one encoder layer");
                }
                if let Some(map) = teacher_layers {
                    check_layer_map(map, *layers, &config, teacher)?;
                }
                Ok(config)
            }
        }
    }
}

fn check_layer_map(
    map: &[usize],
    layers: usize,
    student: &BertConfig,
    teacher: &BertConfig,
) -> anyhow::Result<()> {
    if map.len() != layers {
        bail!(
            "teacher_layers {map:?} names {} layers but the student has {layers}",
            map.len()
        );
    }
    if let Some(&bad) = map.iter().find(|&&i| i >= teacher.num_hidden_layers) {
        bail!(
            "teacher_layers {map:?}: layer {bad} does not exist; the teacher has layers 0..{}",
            teacher.num_hidden_layers
        );
    }
    if map.windows(2).any(|w| w[0] >= w[1]) {
        bail!("teacher_layers {map:?} must be strictly increasing");
    }
    let shape = |c: &BertConfig| (c.hidden_size, c.num_attention_heads, c.intermediate_size);
    if shape(student) != shape(teacher) {
        bail!(
            "teacher_layers needs the teacher's layer shape (width {}, heads {}, ffn {}); the student has width {}, heads {}, ffn {}",
            teacher.hidden_size,
            teacher.num_attention_heads,
            teacher.intermediate_size,
            student.hidden_size,
            student.num_attention_heads,
            student.intermediate_size
        );
    }
    Ok(())
}

/// Encoder, mean pooling over the tokens, dropout, dense head.
#[derive(Module, Debug)]
pub struct TextClassifier {
    /// The BERT-family encoder.
    pub encoder: Bert,
    /// Dropout on the pooled vector while training.
    pub dropout: Dropout,
    /// Pooled vector to class logits.
    pub head: Linear,
}

/// Hidden states and logits of one forward pass.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// Every hidden state (embeddings first), `[batch, len, width]`.
    pub hidden_states: Vec<Tensor<3>>,
    /// `[batch, classes]`.
    pub logits: Tensor<2>,
}

impl TextClassifier {
    /// Builds the classifier `spec` describes with a fresh head of `classes` outputs; the
    /// encoder's random initialisation and the head's are drawn from `seed`. `teacher` is the
    /// pretrained encoder a student takes its vocabulary (and with `teacher_layers`, its
    /// weights) from.
    pub fn init(
        spec: &TextModelSpec,
        classes: usize,
        teacher: Option<(&Bert, &BertConfig)>,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<(Self, BertConfig)> {
        if classes < 2 {
            bail!("a classifier needs at least 2 classes, got {classes}");
        }
        let config = spec.bert_config(teacher.map(|(_, c)| c))?;
        device.seed(seed);
        let mut encoder = config.init(device);
        match spec {
            TextModelSpec::Pretrained { dir } => {
                bert::load_weights(&mut encoder, &dir.join(bert::WEIGHTS_FILE))?;
            }
            TextModelSpec::Transformer {
                teacher_layers: Some(map),
                ..
            } => {
                let (teacher, _) = teacher.expect("checked by bert_config");
                encoder = teacher.with_layers(map);
            }
            TextModelSpec::Transformer { .. } => {}
        }
        let head = LinearConfig::new(config.hidden_size, classes).init(device);
        let dropout = DropoutConfig::new(HEAD_DROPOUT).init();
        Ok((
            TextClassifier {
                encoder,
                dropout,
                head,
            },
            config,
        ))
    }

    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<2> {
        let hidden = self.encoder.forward(batch);
        self.classify(hidden, batch)
    }

    /// Every hidden state and the logits (for losses on hidden states).
    pub fn forward_all(&self, batch: &TokenBatch) -> TextOutput {
        let hidden_states = self.encoder.hidden_states(batch);
        let last = hidden_states
            .last()
            .expect("embeddings are always a state")
            .clone();
        TextOutput {
            logits: self.classify(last, batch),
            hidden_states,
        }
    }

    fn classify(&self, hidden: Tensor<3>, batch: &TokenBatch) -> Tensor<2> {
        let pooled = mean_pool(hidden, batch.padding.clone());
        self.head.forward(self.dropout.forward(pooled))
    }
}

impl Bert {
    /// A shallower encoder made of this one's embeddings and the layers `layers` (in that order),
    /// copied: DistilBERT's initialisation of a student from its teacher.
    ///
    /// # Panics
    /// When an index is out of range (the spec check rejects that first).
    pub fn with_layers(&self, layers: &[usize]) -> Bert {
        let mut encoder = self.encoder.clone();
        encoder.layers = layers
            .iter()
            .map(|&i| self.encoder.layers[i].clone())
            .collect();
        encoder.n_layers = layers.len();
        // Fresh parameter ids: the copy is trained on its own, never as a view of the teacher.
        with_fresh_params(Bert {
            embeddings: self.embeddings.clone(),
            encoder,
        })
    }
}

/// The same module and weights under new parameter ids, so that an optimiser (or a gradient
/// lookup) never confuses the copy with the original.
pub fn with_fresh_params<M: Module>(module: M) -> M {
    use burn::module::{ModuleMapper, Param};
    struct Refresh;
    impl ModuleMapper for Refresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // Detached, so the copy is a new leaf of the autodiff graph, not the original's.
            Param::from_tensor(param.val().detach())
        }
    }
    module.map(&mut Refresh)
}
