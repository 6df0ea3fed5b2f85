//! The second ONNX engine: graphs the native importer cannot map onto our layers (residual
//! blocks, concatenations, other operators) run on tract, a pure-Rust ONNX runtime. A teacher only
//! needs inference, so nothing else of the engine has to know which one it got.
//!
//! tf2onnx exports with a symbolic batch do not always type-check in tract (their Flatten
//! computes its target shape from the batch), so each batch size gets its own optimised plan,
//! built on first use; a model whose batch dimension is fixed runs in chunks of that size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use burn::tensor::{Tensor, TensorData};
use tract_onnx::prelude::{
    tvec, DatumExt, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    IntoTValue, TypedRunnableModel,
};

use super::import::GraphHeader;
use super::{ImportOptions, Layout, OutputKind};

/// An ONNX classifier run by tract.
pub struct TractModel {
    graph: InferenceModel,
    header: GraphHeader,
    normalization: Option<(Vec<f32>, Vec<f32>)>,
    plans: Mutex<HashMap<usize, Arc<TypedRunnableModel>>>,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl TractModel {
    /// Parses `bytes` with tract and checks, on one probe image, that the model yields
    /// `[batch, classes]`.
    pub fn load(
        bytes: &[u8],
        header: GraphHeader,
        options: &ImportOptions,
    ) -> anyhow::Result<Self> {
        // tract runs single-threaded unless told otherwise; our rayon pool is sized by --threads
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::RayonGlobal,
        );
        let graph = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("tract cannot read the graph: {e:#}"))?;
        let normalization = options
            .normalize
            .as_ref()
            .map(|n| n.per_channel(header.input[0]))
            .transpose()?;
        let declared = header.outputs;
        let batch = header.batch.unwrap_or(1);
        let mut model = TractModel {
            graph,
            header,
            normalization,
            plans: Mutex::new(HashMap::new()),
        };
        let per_image = model.header.input.iter().product::<usize>();
        let probe = model.prepare(&vec![0.5f32; batch * per_image], batch);
        let found = model.run_chunk(probe, batch)?.len() / batch;
        if declared != 0 && found != declared {
            bail!("tract ran the model, but an image gives {found} outputs where the graph declares {declared}");
        }
        model.header.outputs = found;
        Ok(model)
    }

    /// What the graph declares (input, layout, outputs, parameters).
    pub fn header(&self) -> &GraphHeader {
        &self.header
    }

    /// Logits for a batch of `[batch, C, H, W]` images in `[0, 1]`.
    pub fn forward(&self, images: Tensor<4>) -> anyhow::Result<Tensor<2>> {
        let device = images.device();
        let [batch, ..] = images.dims();
        let pixels: Vec<f32> = images
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("images are not f32: {e:?}"))?;
        let logits = self.run(&pixels, batch)?;
        Ok(Tensor::<2>::from_data(
            TensorData::new(logits, [batch, self.header.outputs]),
            &device,
        ))
    }

    /// Runs `batch` NCHW images (row-major, in `[0, 1]`) and returns `[batch, classes]` logits.
    fn run(&self, pixels: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let per_image = self.header.input.iter().product::<usize>();
        let chunk = self.header.batch.unwrap_or(batch).max(1);
        let classes = self.header.outputs;
        let mut logits = Vec::with_capacity(batch * classes);
        let mut start = 0;
        while start < batch {
            let n = chunk.min(batch - start);
            let mut input = self.prepare(&pixels[start * per_image..(start + n) * per_image], n);
            // a fixed batch dimension: the last chunk is filled up with black images
            input.resize(chunk * per_image, 0.0);
            let out = self.run_chunk(input, chunk)?;
            logits.extend_from_slice(&out[..n * classes]);
            start += n;
        }
        if self.header.output_kind == OutputKind::Probabilities {
            // probabilities → log-probabilities: logits up to a per-row constant, so
            // softmax(·/T) of them is the teacher's own softened distribution
            for v in &mut logits {
                *v = v.max(f32::MIN_POSITIVE).ln();
            }
        }
        Ok(logits)
    }

    /// Normalises and lays out `n` NCHW images as the model expects.
    fn prepare(&self, pixels: &[f32], n: usize) -> Vec<f32> {
        let [c, h, w] = self.header.input;
        let mut values = pixels.to_vec();
        if let Some((mean, std)) = &self.normalization {
            for (i, v) in values.iter_mut().enumerate() {
                let channel = (i / (h * w)) % c;
                *v = (*v - mean[channel]) / std[channel];
            }
        }
        match self.header.layout {
            Layout::Nchw => values,
            Layout::Nhwc => {
                let mut nhwc = vec![0.0; values.len()];
                for b in 0..n {
                    for ch in 0..c {
                        for y in 0..h {
                            for x in 0..w {
                                nhwc[((b * h + y) * w + x) * c + ch] =
                                    values[((b * c + ch) * h + y) * w + x];
                            }
                        }
                    }
                }
                nhwc
            }
        }
    }

    /// Runs one prepared chunk of exactly `batch` images; its output rows in order.
    fn run_chunk(&self, input: Vec<f32>, batch: usize) -> anyhow::Result<Vec<f32>> {
        let plan = self.plan(batch)?;
        let shape = self.input_shape(batch);
        let tensor = tract_onnx::prelude::Tensor::from_shape(&shape, &input)
            .map_err(|e| anyhow::anyhow!("tract input tensor {shape:?}: {e:#}"))?;
        let outputs = plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| anyhow::anyhow!("tract failed to run a batch of {batch}: {e:#}"))?;
        let Some(output) = outputs.first() else {
            bail!("tract returned no output");
        };
        let view = output
            .to_plain_array_view::<f32>()
            .map_err(|e| anyhow::anyhow!("the model's output is not float32: {e:#}"))?;
        let flat = match view.shape() {
            [rows, classes] => {
                *rows == batch && (self.header.outputs == 0 || *classes == self.header.outputs)
            }
            _ => false,
        };
        if !flat {
            bail!(
                "the model's output is {:?} for a batch of {batch}, not [batch, classes]",
                view.shape()
            );
        }
        Ok(view.iter().copied().collect())
    }

    fn input_shape(&self, batch: usize) -> [usize; 4] {
        let [c, h, w] = self.header.input;
        match self.header.layout {
            Layout::Nchw => [batch, c, h, w],
            Layout::Nhwc => [batch, h, w, c],
        }
    }

    /// The optimised plan for `batch` images, built on first use.
    fn plan(&self, batch: usize) -> anyhow::Result<Arc<TypedRunnableModel>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&batch) {
            return Ok(plan.clone());
        }
        let shape = self.input_shape(batch);
        let fact: InferenceFact = f32::fact(shape).into();
        let plan = self
            .graph
            .clone()
            .with_input_fact(0, fact)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                anyhow::anyhow!("tract cannot prepare the graph for input {shape:?}: {e:#}")
            })
            .context("tract engine")?;
        plans.insert(batch, plan.clone());
        Ok(plan)
    }
}
