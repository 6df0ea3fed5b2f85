//! A bidirectional LSTM text encoder (Tang et al. 2019's student): word embeddings, one LSTM
//! reading each text forwards and one reading it backwards, max over the real tokens.
//!
//! burn's `BiLstm` runs its backward direction from the end of the *padded* row, so a text's
//! features would change with the padding its batch adds. Here the backward LSTM reads each text
//! reversed within its own length (padding stays at the end), so both directions see only real
//! tokens before any real position, and the pooling ignores the padding.

use burn::module::Module;
use burn::nn::activation::Activation;
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
        let ahead = run_lstm(&self.forward, embedded);
        let behind = run_lstm(&self.backward, reversed);
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

/// All hidden states of `lstm` over `x` (`[batch, len, input]` to `[batch, len, hidden]`), from a
/// zero state.
fn run_lstm(lstm: &Lstm, x: Tensor<3>) -> Tensor<3> {
    let plain = lstm.forget_gate.is_some()
        && !lstm.input_forget
        && !lstm.reverse
        && lstm.batch_first
        && lstm.clip.is_none()
        && matches!(lstm.gate_activation, Activation::Sigmoid(_))
        && matches!(lstm.cell_activation, Activation::Tanh(_))
        && matches!(lstm.hidden_activation, Activation::Tanh(_));
    if plain && crate::kernels::active(&x.device()) {
        lstm_with_local_kernels(lstm, x)
    } else {
        lstm.forward(x, None).0
    }
}

/// burn's `Lstm::forward` (gates i, f, o, g; `c = f·c + i·g`, `h = o·tanh(c)`) restructured: the
/// input side of all four gates for all time steps is one matrix product before the loop, each
/// step multiplies the hidden state once by the four gates' weights side by side, sigmoid and
/// tanh run on the local vectorised kernels (burn's call libm per element: a third of a BiLSTM
/// training step), and the states are stacked once at the end instead of being written into
/// the output tensor step by step.
fn lstm_with_local_kernels(lstm: &Lstm, x: Tensor<3>) -> Tensor<3> {
    use crate::kernels::{sigmoid, tanh};
    let [batch, len, inputs] = x.dims();
    let hidden = lstm.d_hidden;
    let forget = lstm.forget_gate.as_ref().expect("checked by run_lstm");
    let gates = [&lstm.input_gate, forget, &lstm.output_gate, &lstm.cell_gate];
    let input_weight = Tensor::cat(
        gates
            .iter()
            .map(|g| g.input_transform.weight.val())
            .collect(),
        1,
    );
    let hidden_weight = Tensor::cat(
        gates
            .iter()
            .map(|g| g.hidden_transform.weight.val())
            .collect(),
        1,
    );
    // Both transforms' biases are added to every gate, as burn's gate product does.
    let bias = gates
        .iter()
        .map(|g| {
            let b = |l: &burn::nn::Linear| {
                l.bias
                    .as_ref()
                    .map(|b| b.val())
                    .unwrap_or_else(|| Tensor::zeros([hidden], &x.device()))
            };
            b(&g.input_transform) + b(&g.hidden_transform)
        })
        .collect();
    let bias = Tensor::cat(bias, 0).unsqueeze::<2>();
    let projected = (x.reshape([batch * len, inputs]).matmul(input_weight) + bias).reshape([
        batch,
        len,
        4 * hidden,
    ]);
    let mut cell = Tensor::<2>::zeros([batch, hidden], &projected.device());
    let mut state = cell.clone();
    let mut states = Vec::with_capacity(len);
    for t in 0..len {
        let step = projected
            .clone()
            .slice([0..batch, t..t + 1, 0..4 * hidden])
            .reshape([batch, 4 * hidden])
            + state.matmul(hidden_weight.clone());
        let gate = |k: usize| step.clone().slice([0..batch, k * hidden..(k + 1) * hidden]);
        let (input, forget, output) = (sigmoid(gate(0)), sigmoid(gate(1)), sigmoid(gate(2)));
        let candidate = tanh(gate(3));
        cell = forget * cell + input * candidate;
        state = output * tanh(cell.clone());
        states.push(state.clone());
    }
    Tensor::stack(states, 1)
}
