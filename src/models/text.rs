//! Text classifiers: a BERT-family encoder, mean pooling over the tokens, a dense head.
//!
//! The architecture is a [`TextModelSpec`] (TOML, like the CNN specs): a pretrained encoder from a
//! Hugging Face directory (the teacher), or a BERT-style transformer of any size, from scratch or
//! with DistilBERT's initialisation (the teacher's embeddings and a chosen subset of its layers,
//! e.g. `teacher_layers = [0, 2, 4]`), Kim's (2014) CNN over word embeddings, or Tang et al.'s
//! (2019) BiLSTM. Students read
//! the teacher's token ids, so they share its vocabulary.
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
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, PaddingConfig1d,
};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::bert::{self, mean_pool, Bert, BertConfig};
use super::bilstm::{BiLstmEncoder, BiLstmEncoderConfig};
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
    /// Kim (2014): word embeddings, 1-D convolutions of several widths, ReLU, max over time.
    Cnn {
        /// Embedding width.
        embedding: usize,
        /// Filters per kernel width.
        filters: usize,
        /// Kernel widths, in tokens.
        kernel_sizes: Vec<usize>,
    },
    /// Tang et al. (2019): word embeddings, a bidirectional LSTM, max over the real tokens.
    Bilstm {
        /// Embedding width.
        embedding: usize,
        /// Hidden width of each direction.
        hidden: usize,
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
                "{}: not a text model spec (expected kind = \"pretrained\" with dir, \"transformer\" with layers, width, heads, ffn, \"cnn\" with embedding, filters, kernel_sizes, or \"bilstm\" with embedding, hidden)",
                path.display()
            )
        })
    }

    /// The encoder configuration this spec builds, given the teacher's (for the vocabulary and
    /// positions a student shares with it).
    pub fn encoder_config(&self, teacher: Option<&BertConfig>) -> anyhow::Result<EncoderConfig> {
        match self {
            TextModelSpec::Cnn {
                embedding,
                filters,
                kernel_sizes,
            } => {
                let Some(teacher) = teacher else {
                    bail!("a CNN student takes its vocabulary from a pretrained teacher; none was given");
                };
                if *embedding == 0 || *filters == 0 {
                    bail!("embedding and filters must be positive, got {embedding} and {filters}");
                }
                if kernel_sizes.is_empty() || kernel_sizes.contains(&0) {
                    bail!("kernel_sizes {kernel_sizes:?}: expected one or more positive widths");
                }
                Ok(EncoderConfig::Cnn(CnnConfig {
                    vocab_size: teacher.vocab_size,
                    embedding: *embedding,
                    filters: *filters,
                    kernel_sizes: kernel_sizes.clone(),
                }))
            }
            TextModelSpec::Bilstm { embedding, hidden } => {
                let Some(teacher) = teacher else {
                    bail!("a BiLSTM student takes its vocabulary from a pretrained teacher; none was given");
                };
                if *embedding == 0 || *hidden == 0 {
                    bail!("embedding and hidden must be positive, got {embedding} and {hidden}");
                }
                Ok(EncoderConfig::Bilstm(BiLstmEncoderConfig {
                    vocab_size: teacher.vocab_size,
                    embedding: *embedding,
                    hidden: *hidden,
                }))
            }
            _ => self.bert_config(teacher).map(EncoderConfig::Transformer),
        }
    }

    /// The transformer configuration of a pretrained or transformer spec.
    pub fn bert_config(&self, teacher: Option<&BertConfig>) -> anyhow::Result<BertConfig> {
        match self {
            TextModelSpec::Cnn { .. } | TextModelSpec::Bilstm { .. } => {
                bail!("only pretrained and transformer specs have a transformer configuration")
            }
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

/// The resolved configuration of a text encoder (what a saved model records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderConfig {
    /// A BERT-family transformer.
    Transformer(BertConfig),
    /// Kim's CNN.
    Cnn(CnnConfig),
    /// A bidirectional LSTM.
    Bilstm(BiLstmEncoderConfig),
}

impl EncoderConfig {
    /// A randomly initialised encoder (draws from the device's generator).
    pub fn init(&self, device: &Device) -> TextEncoder {
        match self {
            EncoderConfig::Transformer(config) => TextEncoder::Transformer(config.init(device)),
            EncoderConfig::Cnn(config) => TextEncoder::Cnn(config.init(device)),
            EncoderConfig::Bilstm(config) => TextEncoder::Bilstm(config.init(device)),
        }
    }

    /// Width of the pooled vector the head reads.
    pub fn features(&self) -> usize {
        match self {
            EncoderConfig::Transformer(config) => config.hidden_size,
            EncoderConfig::Cnn(config) => config.filters * config.kernel_sizes.len(),
            EncoderConfig::Bilstm(config) => config.features(),
        }
    }

    /// Parameters of the encoder.
    pub fn num_params(&self) -> usize {
        match self {
            EncoderConfig::Transformer(config) => config.num_params(),
            EncoderConfig::Cnn(c) => {
                c.vocab_size * c.embedding
                    + c.kernel_sizes
                        .iter()
                        .map(|k| k * c.embedding * c.filters + c.filters)
                        .sum::<usize>()
            }
            EncoderConfig::Bilstm(config) => config.num_params(),
        }
    }

    /// Size of the vocabulary the encoder embeds.
    pub fn vocab_size(&self) -> usize {
        match self {
            EncoderConfig::Transformer(config) => config.vocab_size,
            EncoderConfig::Cnn(config) => config.vocab_size,
            EncoderConfig::Bilstm(config) => config.vocab_size,
        }
    }

    /// Longest text (in tokens) the encoder reads, if it has a limit.
    pub fn max_len(&self) -> Option<usize> {
        match self {
            EncoderConfig::Transformer(config) => Some(config.max_position_embeddings),
            EncoderConfig::Cnn(_) | EncoderConfig::Bilstm(_) => None,
        }
    }
}

/// Kim's CNN, resolved against a vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    /// Token vocabulary size (the teacher's).
    pub vocab_size: usize,
    /// Embedding width.
    pub embedding: usize,
    /// Filters per kernel width.
    pub filters: usize,
    /// Kernel widths.
    pub kernel_sizes: Vec<usize>,
}

impl CnnConfig {
    /// A randomly initialised CNN encoder.
    pub fn init(&self, device: &Device) -> KimCnn {
        KimCnn {
            embeddings: EmbeddingConfig::new(self.vocab_size, self.embedding).init(device),
            convs: self
                .kernel_sizes
                .iter()
                .map(|&k| {
                    // "Full" padding: every window that touches a real token exists, so a text's
                    // features do not depend on how much padding its batch adds.
                    Conv1dConfig::new(self.embedding, self.filters, k)
                        .with_padding(PaddingConfig1d::Explicit(k - 1, k - 1))
                        .init(device)
                })
                .collect(),
        }
    }
}

/// Word embeddings, one 1-D convolution per kernel width, ReLU, max over the windows that touch
/// a real token; the pooled features of all widths are concatenated.
#[derive(Module, Debug)]
pub struct KimCnn {
    /// One vector per token id.
    pub embeddings: Embedding,
    /// One convolution per kernel width.
    pub convs: Vec<Conv1d>,
}

impl KimCnn {
    /// `[batch, filters x widths]` features of a batch.
    pub fn pooled(&self, batch: &TokenBatch) -> Tensor<2> {
        let [rows, len] = batch.dims();
        let keep = batch.padding.clone().bool_not();
        // Padding positions embed to zero, exactly like the convolution's own zero padding.
        let embedded =
            self.embeddings.forward(batch.ids.clone()) * keep.clone().float().unsqueeze_dim::<3>(2);
        let embedded = embedded.swap_dims(1, 2);
        let lengths = keep.int().sum_dim(1);
        let device = embedded.device();
        let features = self
            .convs
            .iter()
            .map(|conv| {
                let k = conv.weight.dims()[2];
                let out = burn::tensor::activation::relu(conv.forward(embedded.clone()));
                let windows = len + k - 1;
                // Window p covers tokens p-k+1..=p: it touches a real token when p < length + k - 1.
                let position = Tensor::<1, Int>::arange(0..windows as i64, &device)
                    .unsqueeze::<2>()
                    .expand([rows, windows]);
                let limit = lengths
                    .clone()
                    .add_scalar(k as i64 - 1)
                    .expand([rows, windows]);
                let outside = position.greater_equal(limit);
                out.mask_fill(outside.unsqueeze_dim::<3>(1), f32::NEG_INFINITY)
                    .max_dim(2)
                    .squeeze_dim::<2>(2)
            })
            .collect();
        Tensor::cat(features, 1)
    }
}

/// The encoder of a text classifier.
// One encoder per model and never in a collection, so the variants' size difference costs nothing
// (and burn's Module derive does not see through a Box).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TextEncoder {
    /// A BERT-family transformer (pooled by the mean over the real tokens).
    Transformer(Bert),
    /// Kim's CNN (pooled by max over time).
    Cnn(KimCnn),
    /// A bidirectional LSTM (pooled by max over time).
    Bilstm(BiLstmEncoder),
}

impl TextEncoder {
    /// The transformer, if this encoder is one.
    pub fn bert(&self) -> Option<&Bert> {
        match self {
            TextEncoder::Transformer(bert) => Some(bert),
            TextEncoder::Cnn(_) | TextEncoder::Bilstm(_) => None,
        }
    }

    /// The word embedding table.
    pub fn word_embeddings_mut(&mut self) -> &mut Embedding {
        match self {
            TextEncoder::Transformer(bert) => &mut bert.embeddings.word_embeddings,
            TextEncoder::Cnn(cnn) => &mut cnn.embeddings,
            TextEncoder::Bilstm(lstm) => &mut lstm.embeddings,
        }
    }
}

/// Encoder, pooling over the tokens, dropout, dense head.
#[derive(Module, Debug)]
pub struct TextClassifier {
    /// The encoder.
    pub encoder: TextEncoder,
    /// Dropout on the pooled vector while training.
    pub dropout: Dropout,
    /// Pooled vector to class logits.
    pub head: Linear,
}

/// Hidden states and logits of one forward pass of a transformer classifier.
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
    ) -> anyhow::Result<(Self, EncoderConfig)> {
        if classes < 2 {
            bail!("a classifier needs at least 2 classes, got {classes}");
        }
        let config = spec.encoder_config(teacher.map(|(_, c)| c))?;
        device.seed(seed);
        let mut encoder = config.init(device);
        match (spec, &mut encoder) {
            (TextModelSpec::Pretrained { dir }, TextEncoder::Transformer(bert)) => {
                bert::load_weights(bert, &dir.join(bert::WEIGHTS_FILE))?;
            }
            (
                TextModelSpec::Transformer {
                    teacher_layers: Some(map),
                    ..
                },
                TextEncoder::Transformer(bert),
            ) => {
                let (teacher, _) = teacher.expect("checked by encoder_config");
                // The teacher may live on a device without autodiff (it is loaded for inference):
                // the copy is forked onto the student's device, or its tensors would stay
                // untracked and only the head would ever train.
                *bert = teacher.with_layers(map).fork(device).train();
                // The copied layers carry the teacher's dropout; the spec sets the student's.
                if let EncoderConfig::Transformer(student) = &config {
                    bert.set_dropout(student.hidden_dropout_prob);
                }
            }
            _ => {}
        }
        let head = LinearConfig::new(config.features(), classes).init(device);
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

    /// A randomly initialised classifier with the encoder `config` describes (the scaffold a
    /// saved model's weights are loaded into).
    pub fn from_config(config: &EncoderConfig, classes: usize, device: &Device) -> Self {
        TextClassifier {
            encoder: config.init(device),
            dropout: DropoutConfig::new(HEAD_DROPOUT).init(),
            head: LinearConfig::new(config.features(), classes).init(device),
        }
    }

    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<2> {
        let pooled = match &self.encoder {
            TextEncoder::Transformer(bert) => mean_pool(bert.forward(batch), batch.padding.clone()),
            TextEncoder::Cnn(cnn) => cnn.pooled(batch),
            TextEncoder::Bilstm(lstm) => lstm.pooled(batch),
        };
        self.classify(pooled)
    }

    /// Every hidden state and the logits (for losses on hidden states); `None` for an encoder
    /// without hidden states per token (the CNN).
    pub fn forward_all(&self, batch: &TokenBatch) -> Option<TextOutput> {
        let bert = self.encoder.bert()?;
        let hidden_states = bert.hidden_states(batch);
        let last = hidden_states
            .last()
            .expect("embeddings are always a state")
            .clone();
        Some(TextOutput {
            logits: self.classify(mean_pool(last, batch.padding.clone())),
            hidden_states,
        })
    }

    fn classify(&self, pooled: Tensor<2>) -> Tensor<2> {
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
            layer_norm_eps: self.layer_norm_eps,
        })
    }
}

impl Bert {
    /// Sets every dropout rate of the encoder layers (residual, attention, feed-forward) to
    /// `prob`.
    pub fn set_dropout(&mut self, prob: f64) {
        for layer in &mut self.encoder.layers {
            for dropout in [
                &mut layer.dropout,
                &mut layer.mha.dropout,
                &mut layer.pwff.dropout,
            ] {
                dropout.prob = prob;
            }
        }
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
