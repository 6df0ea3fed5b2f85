//! The text modality: [`TextClassifier`]s trained on tokenised texts, padded per batch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{Architecture, Modality, SoftTargets};
use crate::data::text::TextExample;
use crate::data::tokenizer::{TextTokenizer, TokenBatch};
use crate::data::transfer::{transfer_set, TransferConfig};
use crate::data::Augmentation;
use crate::distill::{cached_rows, load_or_compute_logits, CacheLocation, LogitKey, TeacherLogits};
use crate::losses::HiddenStates;
use crate::models::bert::{self, Bert, BertConfig, CONFIG_FILE, TOKENIZER_FILE};
use crate::models::checkpoint::{load_weights, write_atomic, write_manifest, write_weights};
use crate::models::text::{EncoderConfig, TextClassifier, TextModelSpec};

/// File holding the [`TextModelSpec`] in a text model directory.
pub const TEXT_SPEC_FILE: &str = "text_model.toml";
/// File holding the weights (burnpack) in a text model directory.
pub const TEXT_WEIGHTS_FILE: &str = "model.bpk";
/// File holding [`TextMeta`] in a text model directory.
pub const TEXT_META_FILE: &str = "text_meta.json";

/// A split of tokenised texts: token ids (special tokens included, not padded) and labels.
#[derive(Debug, Clone)]
pub struct TokenizedSplit {
    /// One id sequence per text.
    pub ids: Vec<Vec<u32>>,
    /// Class index per text.
    pub labels: Vec<usize>,
    /// The id batches are padded with.
    pub pad_id: u32,
}

impl TokenizedSplit {
    /// Tokenises `examples` with `tokenizer`.
    pub fn new(examples: &[TextExample], tokenizer: &TextTokenizer) -> anyhow::Result<Self> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        Ok(Self {
            ids: tokenizer.encode_all(&texts)?,
            labels: examples.iter().map(|e| e.label).collect(),
            pad_id: tokenizer.pad_id(),
        })
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the split holds no text.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// SHA-256 (hex) of the token ids, in order: keys caches of per-text teacher outputs (which
    /// do not depend on the labels).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"distill-tokens-v1");
        hasher.update((self.ids.len() as u64).to_le_bytes());
        for ids in &self.ids {
            hasher.update((ids.len() as u64).to_le_bytes());
            for id in ids {
                hasher.update(id.to_le_bytes());
            }
        }
        crate::data::hex(&hasher.finalize())
    }
}

/// Token batches read by a [`TextClassifier`].
#[derive(Debug, Clone, Copy)]
pub struct Text;

impl Modality for Text {
    type Split = TokenizedSplit;
    type Input = TokenBatch;
    type Model = TextClassifier;

    fn len(split: &TokenizedSplit) -> usize {
        split.len()
    }

    fn batch(
        split: &TokenizedSplit,
        indices: &[usize],
        device: &Device,
        _augment: Option<(&Augmentation, u64)>,
    ) -> (TokenBatch, Tensor<1, Int>) {
        let sequences: Vec<&[u32]> = indices.iter().map(|&i| split.ids[i].as_slice()).collect();
        let labels: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
        (
            TokenBatch::new(&sequences, split.pad_id, device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }

    fn logits(model: &TextClassifier, input: TokenBatch) -> Tensor<2> {
        model.forward(&input)
    }

    fn logits_and_states(
        model: &TextClassifier,
        input: TokenBatch,
    ) -> (Tensor<2>, Option<HiddenStates>) {
        match model.forward_all(&input) {
            Some(output) => (
                output.logits,
                Some(HiddenStates {
                    states: output.hidden_states,
                    padding: input.padding,
                }),
            ),
            None => (model.forward(&input), None),
        }
    }

    fn example_noun() -> &'static str {
        "text"
    }

    fn labels(split: &TokenizedSplit) -> Vec<usize> {
        split.labels.clone()
    }
}

/// What a text model directory records besides the spec and the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextMeta {
    /// Class names (index = logit).
    pub classes: Vec<String>,
    /// The encoder configuration the weights fit.
    pub encoder: EncoderConfig,
    /// Trainable parameters.
    pub params: usize,
    /// Most tokens per text the model was trained on (special tokens included), so evaluation
    /// truncates as training did; absent in directories written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

/// A text classifier spec for one class list; a student's vocabulary (and with
/// `teacher_layers`, its initial weights) come from `teacher`.
#[derive(Debug, Clone, Copy)]
pub struct TextArchitecture<'a> {
    /// The encoder.
    pub spec: &'a TextModelSpec,
    /// Class names.
    pub classes: &'a [String],
    /// The pretrained encoder a student is built from.
    pub teacher: Option<(&'a Bert, &'a BertConfig)>,
    /// The `tokenizer.json` the model reads; saved with it, so a model directory is complete.
    pub tokenizer: &'a Path,
    /// Keep the word embeddings fixed (most of a small BERT's parameters, and of its backward
    /// pass: MiniLM's 30,522 x 384 table is half the model).
    pub freeze_word_embeddings: bool,
    /// Most tokens per text (the tokenizer's truncation), recorded with the model.
    pub max_len: usize,
}

impl TextArchitecture<'_> {
    fn encoder_config(&self) -> anyhow::Result<EncoderConfig> {
        self.spec.encoder_config(self.teacher.map(|(_, c)| c))
    }

    fn apply_freeze(&self, mut model: TextClassifier) -> TextClassifier {
        if self.freeze_word_embeddings {
            let words = model.encoder.word_embeddings_mut();
            words.weight = words.weight.clone().set_require_grad(false);
        }
        model
    }
}

impl Architecture for TextArchitecture<'_> {
    type Modality = Text;

    fn identity(&self) -> String {
        format!(
            "{}classes = {}\nfreeze_word_embeddings = {}\n",
            toml::to_string(self.spec).unwrap_or_default(),
            self.classes.len(),
            self.freeze_word_embeddings
        )
    }

    fn params(&self) -> anyhow::Result<usize> {
        let config = self.encoder_config()?;
        Ok(config.num_params() + (config.features() + 1) * self.classes.len())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.classes.len() < 2 {
            bail!(
                "a text classifier needs at least 2 classes, got {}",
                self.classes.len()
            );
        }
        self.encoder_config().map(|_| ())
    }

    fn init(&self, seed: u64, device: &Device) -> anyhow::Result<TextClassifier> {
        let (model, _) =
            TextClassifier::init(self.spec, self.classes.len(), self.teacher, seed, device)?;
        Ok(self.apply_freeze(model))
    }

    fn save(&self, dir: &Path, model: &TextClassifier) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create model directory {}", dir.display()))?;
        write_weights(&dir.join(TEXT_WEIGHTS_FILE), model)?;
        write_atomic(
            &dir.join(TEXT_SPEC_FILE),
            toml::to_string(self.spec)?.as_bytes(),
        )?;
        let meta = TextMeta {
            classes: self.classes.to_vec(),
            encoder: self.encoder_config()?,
            params: self.params()?,
            max_len: Some(self.max_len),
        };
        write_atomic(
            &dir.join(TEXT_META_FILE),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        let tokenizer = std::fs::read(self.tokenizer)
            .with_context(|| format!("cannot read the tokenizer {}", self.tokenizer.display()))?;
        write_atomic(&dir.join(crate::models::bert::TOKENIZER_FILE), &tokenizer)?;
        write_manifest(dir, &self.model_files())
    }

    fn model_files(&self) -> Vec<&'static str> {
        vec![
            TEXT_SPEC_FILE,
            TEXT_WEIGHTS_FILE,
            TEXT_META_FILE,
            crate::models::bert::TOKENIZER_FILE,
        ]
    }

    fn load_weights(&self, dir: &Path, model: TextClassifier) -> anyhow::Result<TextClassifier> {
        let model = load_weights(&dir.join(TEXT_WEIGHTS_FILE), model)?;
        Ok(self.apply_freeze(model))
    }
}

impl SoftTargets<TokenBatch> for TeacherLogits {
    fn teacher_id(&self) -> &str {
        TeacherLogits::teacher_id(self)
    }

    fn logits_at(
        &self,
        indices: &[usize],
        _views: Option<&[usize]>,
        _input: &TokenBatch,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        match self {
            TeacherLogits::Cached {
                classes, values, ..
            } => Ok(cached_rows(values, *classes, indices, device)),
            _ => bail!("a text student is taught from cached teacher logits; an image teacher cannot teach it"),
        }
    }
}

/// A text teacher: its logits from a cache, its hidden states (for the cosine term, only when
/// asked) computed live for each batch in inference mode, never trained.
pub struct LiveTextTeacher {
    logits: TeacherLogits,
    model: TextClassifier,
}

impl LiveTextTeacher {
    /// `model` (kept in inference mode: no dropout, no gradients) with its cached `logits` for the
    /// training texts.
    pub fn new(logits: TeacherLogits, model: &TextClassifier) -> Self {
        Self {
            logits,
            model: model.valid(),
        }
    }
}

impl SoftTargets<TokenBatch> for LiveTextTeacher {
    fn teacher_id(&self) -> &str {
        self.logits.teacher_id()
    }

    fn logits_at(
        &self,
        indices: &[usize],
        views: Option<&[usize]>,
        input: &TokenBatch,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        SoftTargets::logits_at(&self.logits, indices, views, input, device)
    }

    fn states_at(
        &self,
        input: &TokenBatch,
        _device: &Device,
    ) -> anyhow::Result<Option<Vec<Tensor<3>>>> {
        let Some(bert) = self.model.encoder.bert() else {
            bail!("the cosine term needs a transformer teacher");
        };
        let plain = TokenBatch {
            ids: input.ids.clone().without_autodiff(),
            padding: input.padding.clone().without_autodiff(),
        };
        Ok(Some(bert.hidden_states(&plain)))
    }
}

/// The logits of `model` for the texts of `split` at `indices`, `[indices.len(), classes]`
/// row-major in that order. Texts are batched by length, so a batch pads little.
pub fn text_logits(
    model: &TextClassifier,
    split: &TokenizedSplit,
    indices: &[usize],
    device: &Device,
    progress: bool,
) -> Vec<f32> {
    let model = model.valid();
    let plain = device.clone().without_autodiff();
    let mut by_length: Vec<usize> = (0..indices.len()).collect();
    by_length.sort_by_key(|&j| std::cmp::Reverse(split.ids[indices[j]].len()));
    let batches: Vec<&[usize]> = by_length.chunks(64).collect();
    let bar = crate::progress::bar(batches.len() as u64, "Teacher logits", progress);
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); indices.len()];
    for positions in batches {
        let batch: Vec<usize> = positions.iter().map(|&j| indices[j]).collect();
        let (input, _) = Text::batch(split, &batch, &plain, None);
        let logits = model.forward(&input);
        let classes = logits.dims()[1];
        let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
        for (&j, row) in positions.iter().zip(values.chunks_exact(classes)) {
            rows[j] = row.to_vec();
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    rows.concat()
}

/// The logits of `teacher` for every text of `split`, in order, as cached [`TeacherLogits`]:
/// read from `location` when a file made by this teacher (`teacher_id`, e.g. the SHA-256 of its
/// weights) for these token ids is there, else computed and stored there.
pub fn text_teacher_logits(
    teacher: &TextClassifier,
    teacher_id: &str,
    split: &TokenizedSplit,
    location: CacheLocation<'_>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let classes = teacher.head.weight.dims()[1];
    let all: Vec<usize> = (0..split.len()).collect();
    let values = load_or_compute_logits(
        LogitKey {
            teacher_hash: teacher_id,
            data_fingerprint: &split.fingerprint(),
            rows: split.len(),
            classes,
        },
        location,
        |sample| Ok(text_logits(teacher, split, sample, device, false)),
        || Ok(text_logits(teacher, split, &all, device, progress)),
    )?;
    Ok(TeacherLogits::Cached {
        teacher_hash: teacher_id.to_string(),
        classes,
        values,
    })
}

/// A text classifier saved by [`TextArchitecture::save`] (a run directory or its checkpoint),
/// rebuilt from its recorded encoder configuration: no pretrained directory is needed.
pub fn load_text_model(dir: &Path, device: &Device) -> anyhow::Result<(TextClassifier, TextMeta)> {
    let meta_path = dir.join(TEXT_META_FILE);
    let meta: TextMeta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "cannot read {}: not a text model directory (expected {TEXT_SPEC_FILE}, {TEXT_WEIGHTS_FILE}, {TEXT_META_FILE})",
                meta_path.display()
            )
        })?,
    )
    .with_context(|| format!("{} is not a text model's metadata", meta_path.display()))?;
    let model = TextClassifier::from_config(&meta.encoder, meta.classes.len(), device);
    let model = load_weights(&dir.join(TEXT_WEIGHTS_FILE), model)
        .with_context(|| format!("the model described by {}", meta_path.display()))?;
    Ok((model, meta))
}

/// The transformer a text student is built on: its tokenizer and vocabulary, and with
/// `teacher_layers`, its initial layers. A trained text classifier also keeps its head (a
/// teacher).
pub struct BaseModel {
    /// The encoder.
    pub bert: Bert,
    /// Its configuration.
    pub config: BertConfig,
    /// Its `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The whole classifier, when the directory holds a text model trained here.
    pub classifier: Option<(TextClassifier, TextMeta)>,
}

impl BaseModel {
    /// A pretrained Hugging Face directory or a text model trained here; `what` names the
    /// setting that pointed at `dir` in errors (`--teacher`, `` `teacher` ``).
    pub fn load(dir: &Path, what: &str, device: &Device) -> anyhow::Result<Self> {
        let tokenizer = dir.join(TOKENIZER_FILE);
        if dir.join(TEXT_META_FILE).is_file() {
            let (classifier, meta) = load_text_model(dir, device)?;
            let EncoderConfig::Transformer(config) = meta.encoder.clone() else {
                bail!(
                    "{what} {}: a text model without a transformer encoder; a student's tokenizer and vocabulary come from a transformer",
                    dir.display()
                );
            };
            let bert = classifier
                .encoder
                .bert()
                .expect("a transformer config")
                .clone();
            return Ok(Self {
                bert,
                config,
                tokenizer,
                classifier: Some((classifier, meta)),
            });
        }
        if dir.join(CONFIG_FILE).is_file() {
            let (bert, config) = bert::load_pretrained(dir, device)?;
            return Ok(Self {
                bert,
                config,
                tokenizer,
                classifier: None,
            });
        }
        bail!(
            "{what} {}: expected a pretrained text encoder directory ({CONFIG_FILE}, {}, {TOKENIZER_FILE}) or a text model trained by distill ({TEXT_META_FILE}, {TEXT_WEIGHTS_FILE}, {TOKENIZER_FILE})",
            dir.display(),
            bert::WEIGHTS_FILE
        )
    }
}

/// What a distilled text student learns from: the labelled training texts, plus (with a
/// transfer set) their augmented copies, whose labels are the teacher's predictions; and the
/// teacher, its logits cached for every one of those texts.
pub struct TextTeaching {
    /// The training texts, the transfer set appended.
    pub train: TokenizedSplit,
    /// How many of `train` are labelled texts (the rest is the transfer set).
    pub labelled: usize,
    /// Fraction of the labelled texts on which the teacher predicts the label.
    pub agreement: f64,
    /// The teacher: cached logits, live hidden states.
    pub teacher: LiveTextTeacher,
}

/// Appends `transfer.copies` augmented copies of each text of `train` (none with 0 copies), has
/// `teacher` label all of them once (its logits cached under `teacher_id` at `location`) and
/// returns the split and the teacher the students learn from.
#[allow(clippy::too_many_arguments)]
pub fn prepare_text_teaching(
    teacher: &TextClassifier,
    teacher_id: &str,
    tokenizer: &TextTokenizer,
    mut train: TokenizedSplit,
    transfer: &TransferConfig,
    location: CacheLocation<'_>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TextTeaching> {
    let labelled = train.len();
    if transfer.copies > 0 {
        let mask = tokenizer
            .token_id("[MASK]")
            .context("the teacher's tokenizer has no [MASK] token, which the transfer set needs")?;
        let special: Vec<u32> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .collect();
        let copies = transfer_set(&train.ids, transfer, mask, &special);
        train.ids.extend(copies);
        // placeholders until the teacher has labelled the transfer set
        train.labels.resize(train.ids.len(), 0);
    }
    let logits = text_teacher_logits(teacher, teacher_id, &train, location, device, progress)?;
    let TeacherLogits::Cached {
        values, classes, ..
    } = &logits
    else {
        unreachable!("text teacher logits are cached")
    };
    // The transfer set has no labels: the teacher's predictions stand in for them.
    let predictions: Vec<usize> = values.chunks_exact(*classes).map(argmax).collect();
    let agreeing = predictions[..labelled]
        .iter()
        .zip(&train.labels)
        .filter(|(p, l)| p == l)
        .count();
    train.labels[labelled..].copy_from_slice(&predictions[labelled..]);
    Ok(TextTeaching {
        train,
        labelled,
        agreement: agreeing as f64 / labelled.max(1) as f64,
        teacher: LiveTextTeacher::new(logits, teacher),
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}
