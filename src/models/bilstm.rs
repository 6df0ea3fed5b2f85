//! A bidirectional LSTM text encoder (Tang et al. 2019's student): word embeddings, one LSTM
//! reading each text forwards and one reading it backwards, max over the real tokens.
//!
//! burn's `BiLstm` runs its backward direction from the end of the *padded* row, so a text's
//! features would change with the padding its batch adds. Here the backward LSTM reads each text
//! reversed within its own length (padding stays at the end), so both directions see only real
//! tokens before any real position, and the pooling ignores the padding.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Lstm, LstmConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::tokenizer::TokenBatch;

/// A BiLSTM encoder, resolved against a vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BiLstmEncoderConfig {
    /// Token vocabulary size (the teacher's).
    pub vocab_size: usize,
    /// Embedding width.
    pub embedding: usize,
    /// Hidden width of each direction.
    pub hidden: usize,
}

impl BiLstmEncoderConfig {
    /// A randomly initialised encoder.
    pub fn init(&self, device: &Device) -> BiLstmEncoder {
        let lstm = || LstmConfig::new(self.embedding, self.hidden, true).init(device);
        BiLstmEncoder {
            embeddings: EmbeddingConfig::new(self.vocab_size, self.embedding).init(device),
            forward: lstm(),
            backward: lstm(),
        }
    }

    /// Width of the pooled features (both directions).
    pub fn features(&self) -> usize {
        2 * self.hidden
    }

    /// Parameters: the embedding table and two LSTMs (4 gates, each an input and a hidden
    /// transform with biases).
    pub fn num_params(&self) -> usize {
        let gate =
            self.embedding * self.hidden + self.hidden + self.hidden * self.hidden + self.hidden;
        self.vocab_size * self.embedding + 2 * 4 * gate
    }
}

/// Word embeddings, a forward and a backward LSTM, max over the real tokens of both outputs.
#[derive(Module, Debug)]
pub struct BiLstmEncoder {
    /// One vector per token id.
    pub embeddings: Embedding,
    /// Reads each text left to right.
    pub forward: Lstm,
    /// Reads each text right to left.
    pub backward: Lstm,
}

impl BiLstmEncoder {
    /// `[batch, 2 x hidden]` features of a batch.
    pub fn pooled(&self, batch: &TokenBatch) -> Tensor<2> {
        let [rows, len] = batch.dims();
        let embedded = self.embeddings.forward(batch.ids.clone());
        let width = embedded.dims()[2];
        let device = embedded.device();
        let lengths = batch
            .padding
            .clone()
            .bool_not()
            .int()
            .sum_dim(1)
            .expand([rows, len]);
        let position = Tensor::<1, Int>::arange(0..len as i64, &device)
            .unsqueeze::<2>()
            .expand([rows, len]);
        // Position t of the reversed row holds token length-1-t; padding stays where it is.
        let real = position.clone().lower(lengths.clone());
        let reversed_index = lengths
            .sub_scalar(1)
            .sub(position.clone())
            .mask_where(real.clone().bool_not(), position);
        let reversed = embedded.clone().gather(
            1,
            reversed_index
                .unsqueeze_dim::<3>(2)
                .expand([rows, len, width]),
        );
        let (ahead, _) = self.forward.forward(embedded, None);
        let (behind, _) = self.backward.forward(reversed, None);
        // Both outputs hold real tokens at positions < length, so one mask pools both.
        let outside = real.bool_not().unsqueeze_dim::<3>(2);
        let pool = |states: Tensor<3>| {
            let hidden = states.dims()[2];
            states
                .mask_fill(
                    outside.clone().expand([rows, len, hidden]),
                    f32::NEG_INFINITY,
                )
                .max_dim(1)
                .squeeze_dim::<2>(1)
        };
        Tensor::cat(vec![pool(ahead), pool(behind)], 1)
    }
}
