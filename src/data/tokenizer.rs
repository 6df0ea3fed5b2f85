//! Tokenisation for text models, with the teacher's own `tokenizer.json` (Hugging Face format),
//! and padded token batches.
//!
//! Pretrained tokenizer files usually pad every sequence to a fixed length (MiniLM's pads to 128);
//! here padding is turned off and each batch is padded to its own longest sequence, which for
//! review snippets of ~20 words is several times less work. Truncation keeps `max_len` tokens,
//! special tokens included.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

use super::DataError;

/// A tokenizer loaded from a `tokenizer.json`, with padding off and a length cap.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_len: usize,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `path` (a Hugging Face `tokenizer.json`), keeping at most `max_len` tokens per text.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, DataError> {
        let record = |message: String| DataError::TextRecord {
            path: path.to_path_buf(),
            line: 0,
            message,
        };
        if max_len < 3 {
            return Err(record(format!(
                "max_len {max_len} leaves no room for a token between [CLS] and [SEP]; expected at least 3"
            )));
        }
        if !path.is_file() {
            return Err(DataError::Missing {
                path: path.to_path_buf(),
                expected: "a Hugging Face tokenizer.json".into(),
            });
        }
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| record(format!("not a Hugging Face tokenizer.json: {e}")))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| record(format!("cannot truncate to {max_len} tokens: {e}")))?;
        Ok(Self {
            inner,
            pad_id,
            max_len,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of one text, with the special tokens the tokenizer adds ([CLS] … [SEP]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::TextRecord {
                path: self.path.clone(),
                line: 0,
                message: format!("cannot tokenise {text:?}: {e}"),
            })
    }

    /// Token ids of many texts (in parallel).
    pub fn encode_all<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Vec<u32>>, DataError> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id that pads a batch.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Most tokens kept per text.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Token ids padded to the longest sequence of the batch, with the padding positions marked.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, len]` token ids.
    pub ids: Tensor<2, Int>,
    /// `[batch, len]`, true on padding (the convention of burn's attention masks).
    pub padding: Tensor<2, Bool>,
}

impl TokenBatch {
    /// Pads `sequences` with `pad_id` to the longest one.
    ///
    /// # Panics
    /// On an empty batch or an empty sequence: every tokenised text has at least its special tokens.
    pub fn new(sequences: &[&[u32]], pad_id: u32, device: &Device) -> Self {
        assert!(
            !sequences.is_empty(),
            "a token batch needs at least one sequence"
        );
        let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(len > 0, "a token batch needs a non-empty sequence");
        let mut ids = vec![pad_id as i64; sequences.len() * len];
        let mut padding = vec![true; sequences.len() * len];
        for (row, seq) in sequences.iter().enumerate() {
            for (col, &id) in seq.iter().enumerate() {
                ids[row * len + col] = id as i64;
                padding[row * len + col] = false;
            }
        }
        let shape = [sequences.len(), len];
        Self {
            ids: Tensor::from_data(TensorData::new(ids, shape), device),
            padding: Tensor::from_data(TensorData::new(padding, shape), device),
        }
    }

    /// `[batch, len]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }
}
