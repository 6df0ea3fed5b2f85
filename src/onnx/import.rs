//! Native import: an ONNX classifier whose nodes all map onto our layer vocabulary becomes a
//! [`Network`] (spec + weights), so it runs on our own kernels like a teacher `distill` trained.
//!
//! The graph must be a chain on one data path, except for residual blocks. Supported: Conv
//! (grouped too), Relu, LeakyRelu, MaxPool, Flatten/Reshape to `[batch, features]`, Gemm, MatMul
//! (+ Add of a bias), BatchNormalization, GlobalAveragePool (and an AveragePool over the whole
//! map), Dropout, Identity, the Transposes of an NHWC (Keras/tf2onnx) export, and a final
//! Softmax/LogSoftmax (dropped: its input is the logits, and softmax(logits/T) is what the
//! distillation loss uses). Anything else is an error naming the op and the node.
//!
//! Residual blocks: where the data forks into two branches that join again in an Add (maybe
//! followed by a Relu), one branch is the body (layers as above) and the other a shortcut we
//! have: nothing (identity), He et al.'s option A (`x[:, :, ::2, ::2]` as Slice nodes and the
//! zero channels of `F.pad` as a Pad), or a 1x1 Conv with or without a BatchNormalization (option
//! B; a bias, as an exporter that folds batch norms into convolutions writes it, becomes the batch
//! norm's shift). Each block becomes a [`LayerSpec::Residual`]; a block that repeats the previous
//! stage's body (strides set to 1) with an identity shortcut joins that stage. Constant nodes and
//! the small constant subgraphs exporters write for operands (PyTorch's pads of `F.pad`) are
//! folded first. Any other branching is an error saying it leaves the single data path.
//!
//! Keras flattens NHWC activations in H, W, C order while our Flatten is C, H, W: the rows of the
//! dense layer after such a flatten are permuted so the imported network computes the same
//! function.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context};
use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use prost::Message;
use sha2::Digest;

use super::proto::{
    data_type, AttributeProto, DimensionValue, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use super::{Layout, Normalization, CLASSES_KEY};
use crate::models::network::Layer;
use crate::models::spec::{
    block_body, body_stride, layer_info, sequence_info, Activation, LayerSpec, Padding, Shape,
    Shortcut,
};
use crate::models::{ModelSpec, Network};

/// What the model's last operation yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The graph ends with logits.
    Logits,
    /// The graph ends with a softmax (or log-softmax), dropped on import: its input is the logits.
    SoftmaxDropped,
    /// The graph ends with a softmax, run as it is (tract): its probabilities are turned into
    /// log-probabilities, which equal the logits up to a per-row constant.
    Probabilities,
}

/// An ONNX classifier rebuilt as a native network.
#[derive(Debug)]
pub struct ImportedModel {
    /// The equivalent spec (named after the file).
    pub spec: ModelSpec,
    /// The network with the file's weights.
    pub network: Network,
    /// Input C×H×W.
    pub input: [usize; 3],
    /// The input layout found (or given).
    pub layout: Layout,
    /// Class names, when the file carries them (a `distill` export does).
    pub classes: Option<Vec<String>>,
    /// Number of outputs.
    pub outputs: usize,
    /// Whether a final softmax was found and dropped.
    pub output_kind: OutputKind,
    /// Parameters: the sum of the initializers' sizes.
    pub params: usize,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
}

/// How to read the file: the data's C×H×W (to pick the layout), a forced layout, and an input
/// normalisation to prepend.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The images the model will see, C×H×W.
    pub expected_input: Option<[usize; 3]>,
    /// Force the input layout (needed when the declared shape fits both).
    pub layout: Option<Layout>,
    /// Per-channel `(x - mean) / std`, for models trained on normalised inputs.
    pub normalize: Option<Normalization>,
    /// For a `.safetensors` file without `distill export`'s metadata (weights trained elsewhere):
    /// the model spec (zoo name or spec file) its tensor names follow.
    pub spec: Option<String>,
    /// Which engine runs an ONNX file.
    pub engine: super::EngineChoice,
}

/// The bytes of the ONNX file at `path` and the name its imported spec gets (the file stem).
pub fn read_file(path: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read ONNX model {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "onnx".into());
    Ok((bytes, name))
}

/// Reads and imports the ONNX file at `path`.
pub fn import_file(
    path: &Path,
    options: &ImportOptions,
    device: &Device,
) -> anyhow::Result<ImportedModel> {
    let (bytes, name) = read_file(path)?;
    import_bytes(&bytes, &name, options, device)
        .with_context(|| format!("ONNX model {}", path.display()))
}

/// What a classifier graph declares, read the same way for both engines (the native importer
/// and tract): its image input, layout, fixed batch size if any, parameters and class names.
#[derive(Debug, Clone)]
pub struct GraphHeader {
    /// Input C×H×W.
    pub input: [usize; 3],
    /// The input layout found (or given).
    pub layout: Layout,
    /// The declared batch size, when the graph fixes it.
    pub batch: Option<usize>,
    /// Number of outputs (declared, or found by running the model).
    pub outputs: usize,
    /// What the last operation yields.
    pub output_kind: OutputKind,
    /// Parameters: the sum of the initializers' sizes.
    pub params: usize,
    /// Class names from a `distill` export's metadata (not yet checked against `outputs`).
    pub classes: Option<Vec<String>>,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Decodes the protobuf of an ONNX file.
pub fn decode(bytes: &[u8]) -> anyhow::Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|e| {
        anyhow::anyhow!("not an ONNX model (protobuf decoding failed: {e}); is the file truncated?")
    })
}

/// Reads what `model` declares: one image input whose shape fits the data, one output.
pub fn read_header(
    model: &ModelProto,
    bytes: &[u8],
    options: &ImportOptions,
) -> anyhow::Result<GraphHeader> {
    let Some(graph) = model.graph.as_ref() else {
        bail!("not an ONNX model: it has no graph");
    };
    let initializer_names: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let params = graph
        .initializer
        .iter()
        .map(|t| element_count(&t.dims).unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add);
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !initializer_names.contains(v.name.as_str()))
        .collect();
    let [input_info] = inputs[..] else {
        bail!(
            "the graph has {} inputs ({}); a classifier has one image input",
            inputs.len(),
            inputs
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let [output_info] = &graph.output[..] else {
        bail!(
            "the graph has {} outputs; a classifier has one, [batch, classes]",
            graph.output.len()
        );
    };
    let (input, layout, batch) = input_shape(input_info, options)?;
    let declared_outputs = declared_dims(output_info)
        .filter(|dims| dims.len() == 2)
        .and_then(|dims| dims[1]);
    let last_op = graph
        .node
        .iter()
        .rev()
        .find(|n| n.output.contains(&output_info.name))
        .map(|n| n.op_type.as_str());
    let classes = model
        .metadata_props
        .iter()
        .find(|p| p.key == CLASSES_KEY)
        .and_then(|p| serde_json::from_str::<Vec<String>>(&p.value).ok());
    Ok(GraphHeader {
        input,
        layout,
        batch,
        outputs: declared_outputs.unwrap_or(0),
        output_kind: match last_op {
            Some("Softmax") => OutputKind::Probabilities,
            _ => OutputKind::Logits,
        },
        params,
        classes,
        sha256: format!("{:x}", sha2::Sha256::digest(bytes)),
    })
}

/// The declared dimensions of a value (`None` for a symbolic one), if it declares a shape.
fn declared_dims(info: &ValueInfoProto) -> Option<Vec<Option<usize>>> {
    info.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(DimensionValue::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
}

/// Imports an ONNX model from its bytes; `name` names the resulting spec.
pub fn import_bytes(
    bytes: &[u8],
    name: &str,
    options: &ImportOptions,
    device: &Device,
) -> anyhow::Result<ImportedModel> {
    let model = decode(bytes)?;
    let header = read_header(&model, bytes, options)?;
    import_model(&model, &header, name, options, device)
}

/// Rebuilds a decoded model as a native network; fails (naming the node) when the graph is not
/// a chain of layers we have.
pub fn import_model(
    model: &ModelProto,
    header: &GraphHeader,
    name: &str,
    options: &ImportOptions,
    device: &Device,
) -> anyhow::Result<ImportedModel> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let stored: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let input_info = graph
        .input
        .iter()
        .find(|v| !stored.contains_key(v.name.as_str()))
        .context("the graph has no image input")?;
    let output_info = graph.output.first().context("the graph has no output")?;
    // Constant nodes, initializer aliases and the small constant subgraphs exporters write for
    // operands (PyTorch computes F.pad's pads that way) become initializers too.
    let folded = fold_constants(&graph.node, &stored);
    let mut initializers = stored;
    initializers.extend(folded.iter().map(|(name, t)| (name.as_str(), t)));
    let (input, layout) = (header.input, header.layout);
    let mut walk = Walk::new(input, layout, &initializers);
    if let Some(norm) = &options.normalize {
        walk.normalize(norm)?;
    }
    let mut flow = DataFlow::new(&graph.node, &initializers);
    let (current, output_kind) = flow.walk(&mut walk, &input_info.name)?;
    if current != output_info.name {
        bail!(
            "the graph output `{}` is not the end of its chain of nodes (`{current}`)",
            output_info.name
        );
    }
    let outputs = match walk.shape {
        Shape::Flat(outputs) => outputs,
        Shape::Image(chw) => bail!(
            "the output is not [batch, classes]: the graph ends with a {chw:?} (C, H, W) feature map"
        ),
    };
    let classes = header.classes.clone().filter(|c| c.len() == outputs);
    let spec = ModelSpec {
        name: name.to_string(),
        layers: walk.layers.iter().map(|l| l.spec.clone()).collect(),
    };
    let network = build(&spec, input, walk.layers, device)?;
    Ok(ImportedModel {
        spec,
        network,
        input,
        layout,
        classes,
        outputs,
        output_kind,
        params: header.params,
        sha256: header.sha256.clone(),
    })
}

/// The nodes that only compute the target shapes of `Reshape`s (tf2onnx computes a Keras
/// Flatten's `[batch, features]` with Shape→Gather→Cast→Slice→Concat): every output of such a
/// node feeds only Reshape shape inputs or other such nodes.
fn shape_subgraph(nodes: &[NodeProto]) -> std::collections::HashSet<usize> {
    let mut found = std::collections::HashSet::new();
    // reverse topological order: a node's consumers are decided before it
    for (index, node) in nodes.iter().enumerate().rev() {
        let only_shapes = !node.output.is_empty()
            && node.output.iter().all(|out| {
                let mut consumers = nodes.iter().enumerate().flat_map(|(j, consumer)| {
                    consumer
                        .input
                        .iter()
                        .enumerate()
                        .filter(move |(_, input)| *input == out)
                        .map(move |(slot, _)| (j, consumer, slot))
                });
                let mut any = false;
                let all = consumers.all(|(j, consumer, slot)| {
                    any = true;
                    (consumer.op_type == "Reshape" && slot == 1) || found.contains(&j)
                });
                any && all
            });
        if only_shapes {
            found.insert(index);
        }
    }
    found
}

/// The data path through a graph: which nodes carry data (not constants, not the shape
/// computations of Reshapes), who reads each value, and which nodes the walk has taken.
struct DataFlow<'g> {
    nodes: &'g [NodeProto],
    /// Nodes that compute constants or Reshape targets, not data.
    skipped: Vec<bool>,
    /// Outputs of the skipped nodes.
    skipped_outputs: HashSet<&'g str>,
    /// The data nodes reading each value, once per input that reads it.
    readers: HashMap<&'g str, Vec<usize>>,
    /// Nodes the walk has mapped.
    visited: Vec<bool>,
    /// Names of the constants (initializers and folded values).
    constants: HashSet<&'g str>,
}

impl<'g> DataFlow<'g> {
    fn new(nodes: &'g [NodeProto], initializers: &HashMap<&str, &TensorProto>) -> Self {
        let shape_nodes = shape_subgraph(nodes);
        let constants: HashSet<&'g str> = nodes
            .iter()
            .flat_map(|n| n.input.iter().chain(&n.output))
            .map(String::as_str)
            .filter(|name| initializers.contains_key(name))
            .collect();
        let skipped: Vec<bool> = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                shape_nodes.contains(&index)
                    || !node.output.is_empty()
                        && node.output.iter().all(|o| constants.contains(o.as_str()))
            })
            .collect();
        let skipped_outputs: HashSet<&'g str> = nodes
            .iter()
            .zip(&skipped)
            .filter(|(_, &skip)| skip)
            .flat_map(|(node, _)| node.output.iter().map(String::as_str))
            .collect();
        let mut flow = DataFlow {
            nodes,
            skipped,
            skipped_outputs,
            readers: HashMap::new(),
            visited: vec![false; nodes.len()],
            constants,
        };
        for (index, node) in nodes.iter().enumerate() {
            if flow.skipped[index] {
                continue;
            }
            for input in &node.input {
                if flow.is_data(input) {
                    flow.readers.entry(input.as_str()).or_default().push(index);
                }
            }
        }
        flow
    }

    /// Whether `name` is a data value (not a constant nor a computed shape).
    fn is_data(&self, name: &str) -> bool {
        !name.is_empty() && !self.constants.contains(name) && !self.skipped_outputs.contains(name)
    }

    /// The data inputs of node `index`.
    fn data_inputs(&self, index: usize) -> Vec<&'g str> {
        self.nodes[index]
            .input
            .iter()
            .map(String::as_str)
            .filter(|name| self.is_data(name))
            .collect()
    }

    fn readers(&self, value: &str) -> Vec<usize> {
        self.readers.get(value).cloned().unwrap_or_default()
    }

    /// Walks the data path from the graph input `input`, mapping its nodes onto `walk`'s layers;
    /// returns the value it ends with and what the last operation yields.
    fn walk(&mut self, walk: &mut Walk, input: &str) -> anyhow::Result<(String, OutputKind)> {
        let mut current = input.to_string();
        let mut output_kind = OutputKind::Logits;
        loop {
            let readers = self.readers(&current);
            if let (Some(&next), OutputKind::SoftmaxDropped) = (readers.first(), output_kind) {
                let node = &self.nodes[next];
                bail!(
                    "node `{}` ({}) follows the softmax: the softmax must be the last operation",
                    node.name,
                    node.op_type
                );
            }
            match readers[..] {
                [] => break,
                [index] => {
                    let node = &self.nodes[index];
                    self.check_chain_node(index, &current)?;
                    self.visited[index] = true;
                    if matches!(node.op_type.as_str(), "Softmax" | "LogSoftmax") {
                        output_kind = OutputKind::SoftmaxDropped;
                    } else {
                        walk.node(node)
                            .with_context(|| format!("node `{}` ({})", node.name, node.op_type))?;
                    }
                    current = node.output[0].clone();
                }
                [_, _] => current = self.block(walk, &current)?,
                _ => bail!(
                    "the data `{current}` feeds {} nodes ({}): a branching that leaves the model's single data path; only chains of layers and residual blocks (two branches joined by an Add) can be imported",
                    readers.len(),
                    self.describe(&readers)
                ),
            }
        }
        if let Some(index) = (0..self.nodes.len()).find(|&i| !self.skipped[i] && !self.visited[i]) {
            let node = &self.nodes[index];
            bail!(
                "node `{}` ({}) is off the model's single data path (it reads {:?}, the data ends at `{current}`): only chains of layers and residual blocks can be imported",
                node.name,
                node.op_type,
                node.input
            );
        }
        Ok((current, output_kind))
    }

    /// `name (op), name (op)` for error messages.
    fn describe(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&i| format!("`{}` ({})", self.nodes[i].name, self.nodes[i].op_type))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks that node `index` continues the chain at `current`: its data is its first and only
    /// data input, it has one output, and the walk has not been there before.
    fn check_chain_node(&self, index: usize, current: &str) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        if self.visited[index] {
            bail!(
                "node `{}` ({}) is reached twice: the graph has a cycle",
                node.name,
                node.op_type
            );
        }
        if node.input.first().is_none_or(|i| i != current) || self.data_inputs(index).len() != 1 {
            bail!(
                "node `{}` ({}) is off the model's single data path (it reads {:?}, the data is `{current}`): only chains of layers and residual blocks can be imported",
                node.name,
                node.op_type,
                node.input
            );
        }
        if node.output.len() != 1 {
            bail!(
                "node `{}` ({}) has {} outputs; only single-output operations are supported",
                node.name,
                node.op_type,
                node.output.len()
            );
        }
        Ok(())
    }

    /// The nodes from `start` (reading `from`) up to the first node with two data inputs (the
    /// join of a residual block): the branch's chain and that join.
    fn branch(&self, start: usize, from: &str) -> anyhow::Result<(Vec<usize>, usize)> {
        let mut chain = Vec::new();
        let (mut index, mut value) = (start, from.to_string());
        loop {
            if self.data_inputs(index).len() >= 2 {
                return Ok((chain, index));
            }
            if chain.contains(&index) || chain.len() > self.nodes.len() {
                bail!(
                    "the graph has a cycle through node `{}`",
                    self.nodes[index].name
                );
            }
            self.check_chain_node(index, &value)?;
            chain.push(index);
            let out = self.nodes[index].output[0].clone();
            match self.readers(&out)[..] {
                [next] => index = next,
                ref readers => bail!(
                    "the data `{out}` inside a branch from `{from}` feeds {} nodes{}: a branching that leaves the model's single data path; only residual blocks of two simple branches joined by an Add can be imported",
                    readers.len(),
                    if readers.is_empty() { String::new() } else { format!(" ({})", self.describe(readers)) }
                ),
            }
            value = out;
        }
    }

    /// A residual block forking at `fork`: two branches joined by an Add (then maybe a ReLU),
    /// one of them a shortcut we have. Maps it onto a residual layer of `walk` and returns the
    /// value after it.
    fn block(&mut self, walk: &mut Walk, fork: &str) -> anyhow::Result<String> {
        let readers = self.readers(fork);
        let (a, a_join) = self.branch(readers[0], fork)?;
        let (b, b_join) = self.branch(readers[1], fork)?;
        let join = &self.nodes[a_join];
        let refuse = |why: String| {
            anyhow::anyhow!(
                "the data `{fork}` branches into {} and {}, which {why}: a branching that leaves the model's single data path; only chains of layers and residual blocks (two branches joined by an Add) can be imported",
                self.describe(&readers[..1]),
                self.describe(&readers[1..])
            )
        };
        if a_join != b_join {
            return Err(refuse(format!(
                "end in different nodes ({} and {})",
                self.describe(&[a_join]),
                self.describe(&[b_join])
            )));
        }
        if !matches!(join.op_type.as_str(), "Add" | "Sum") {
            return Err(refuse(format!(
                "join in {}, not an Add",
                self.describe(&[a_join])
            )));
        }
        let end = |chain: &[usize]| match chain.last() {
            Some(&last) => self.nodes[last].output[0].as_str(),
            None => fork,
        };
        let mut joined = self.data_inputs(a_join);
        joined.sort_unstable();
        let mut ends = vec![end(&a), end(&b)];
        ends.sort_unstable();
        if joined != ends || join.input.len() != 2 || join.output.len() != 1 {
            return Err(refuse(format!(
                "join in {} with inputs {:?}, not the Add of the two branches",
                self.describe(&[a_join]),
                join.input
            )));
        }
        if self.visited[a_join] {
            bail!(
                "node `{}` ({}) is reached twice: the graph has a cycle",
                join.name,
                join.op_type
            );
        }
        // the body is the branch that is not a shortcut: try the longer one as the body first
        let nodes = |chain: &[usize]| chain.iter().map(|&i| &self.nodes[i]).collect::<Vec<_>>();
        let (first, second) = if a.len() >= b.len() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let mapped = walk
            .block_parts(&nodes(first), &nodes(second))
            .or_else(|e| {
                walk.block_parts(&nodes(second), &nodes(first))
                    .map_err(|_| e)
            })
            .with_context(|| {
                format!(
                    "the residual block from `{fork}` to {}",
                    self.describe(&[a_join])
                )
            })?;
        for &index in a.iter().chain(&b) {
            self.visited[index] = true;
        }
        self.visited[a_join] = true;
        let mut current = join.output[0].clone();
        // a ReLU after the addition belongs to the block
        let relu = match self.readers(&current)[..] {
            [next] if self.nodes[next].op_type == "Relu" && !self.visited[next] => {
                self.check_chain_node(next, &current)?;
                self.visited[next] = true;
                current = self.nodes[next].output[0].clone();
                true
            }
            _ => false,
        };
        walk.residual(mapped, relu)
            .with_context(|| format!("the residual block ending in `{}`", join.name))?;
        Ok(current)
    }
}

/// Values up to this many elements are computed when folding constants.
const FOLD_LIMIT: usize = 1 << 16;

/// A small constant tensor being folded.
#[derive(Clone, Debug, PartialEq)]
struct Const {
    dims: Vec<usize>,
    data: ConstData,
}

#[derive(Clone, Debug, PartialEq)]
enum ConstData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

impl ConstData {
    fn len(&self) -> usize {
        match self {
            ConstData::Int(v) => v.len(),
            ConstData::Float(v) => v.len(),
        }
    }

    /// The elements at `indices` (all in range).
    fn gather(&self, indices: &[usize]) -> ConstData {
        match self {
            ConstData::Int(v) => ConstData::Int(indices.iter().map(|&i| v[i]).collect()),
            ConstData::Float(v) => ConstData::Float(indices.iter().map(|&i| v[i]).collect()),
        }
    }

    fn ints(&self) -> Option<&[i64]> {
        match self {
            ConstData::Int(v) => Some(v),
            ConstData::Float(_) => None,
        }
    }
}

impl Const {
    fn from_tensor(t: &TensorProto) -> Option<Const> {
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
        let n = element_count(&t.dims)?;
        if n > FOLD_LIMIT || t.data_location == 1 {
            return None;
        }
        let data = match t.data_type {
            data_type::INT64 | data_type::INT32 => ConstData::Int(tensor_ints(t).ok()?),
            data_type::FLOAT | data_type::DOUBLE => {
                ConstData::Float(tensor_values(t).ok()?.into_iter().map(f64::from).collect())
            }
            _ => return None,
        };
        (data.len() == n).then_some(Const { dims, data })
    }

    fn into_tensor(self, name: &str) -> TensorProto {
        let dims = self.dims.iter().map(|&d| d as i64).collect();
        match self.data {
            ConstData::Int(values) => TensorProto {
                dims,
                data_type: data_type::INT64,
                int64_data: values,
                name: name.into(),
                ..TensorProto::default()
            },
            ConstData::Float(values) => TensorProto {
                dims,
                data_type: data_type::FLOAT,
                float_data: values.into_iter().map(|v| v as f32).collect(),
                name: name.into(),
                ..TensorProto::default()
            },
        }
    }

    fn ints(&self) -> Option<&[i64]> {
        self.data.ints()
    }
}

/// The values of nodes computed from constants alone: Constant nodes, Identity aliases of
/// initializers, and the small integer subgraphs exporters write for operands (PyTorch turns
/// F.pad's pads into ONNX order with ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast).
/// Nodes that cannot be folded are left in the graph.
fn fold_constants(
    nodes: &[NodeProto],
    initializers: &HashMap<&str, &TensorProto>,
) -> HashMap<String, TensorProto> {
    let mut folded: HashMap<String, TensorProto> = HashMap::new();
    for node in nodes {
        let [out] = &node.output[..] else {
            continue;
        };
        if out.is_empty() || initializers.contains_key(out.as_str()) || folded.contains_key(out) {
            continue;
        }
        let tensor = {
            let lookup = |name: &str| -> Option<&TensorProto> {
                folded.get(name).or_else(|| initializers.get(name).copied())
            };
            if node
                .input
                .iter()
                .any(|name| !name.is_empty() && lookup(name).is_none())
            {
                continue;
            }
            match node.op_type.as_str() {
                "Identity" => node.input.first().and_then(|i| lookup(i)).cloned(),
                "Constant" => match attr(node, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => Some(t.clone()),
                    None => fold_node(node, &[]).map(|c| c.into_tensor(out)),
                },
                _ => {
                    let inputs: Vec<Option<Const>> = node
                        .input
                        .iter()
                        .map(|name| lookup(name).and_then(Const::from_tensor))
                        .collect();
                    fold_node(node, &inputs).map(|c| c.into_tensor(out))
                }
            }
        };
        if let Some(mut t) = tensor {
            t.name = out.clone();
            folded.insert(out.clone(), t);
        }
    }
    folded
}

/// The value of `node` on constant `inputs` (`None` for an absent optional input), for the
/// operators that shape operands; `None` when the node is not one of them or does not fit.
fn fold_node(node: &NodeProto, inputs: &[Option<Const>]) -> Option<Const> {
    let input = |i: usize| inputs.get(i).and_then(Option::as_ref);
    let ints_input = |i: usize| input(i).and_then(Const::ints).map(<[i64]>::to_vec);
    let rank_axis = |axis: i64, rank: usize| -> Option<usize> {
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        usize::try_from(axis).ok().filter(|&a| a < rank)
    };
    match node.op_type.as_str() {
        "Constant" => {
            let a = node.attribute.first()?;
            match a.name.as_str() {
                "value_int" => Some(Const {
                    dims: vec![],
                    data: ConstData::Int(vec![a.i]),
                }),
                "value_ints" => Some(Const {
                    dims: vec![a.ints.len()],
                    data: ConstData::Int(a.ints.clone()),
                }),
                "value_float" => Some(Const {
                    dims: vec![],
                    data: ConstData::Float(vec![f64::from(a.f)]),
                }),
                "value_floats" => Some(Const {
                    dims: vec![a.floats.len()],
                    data: ConstData::Float(a.floats.iter().map(|&v| f64::from(v)).collect()),
                }),
                _ => None,
            }
        }
        "Cast" => {
            let x = input(0)?.clone();
            let data = match (int_attr(node, "to")? as i32, x.data) {
                (data_type::INT64 | data_type::INT32, ConstData::Float(v)) => {
                    ConstData::Int(v.iter().map(|&f| f as i64).collect())
                }
                (data_type::INT64 | data_type::INT32, ints @ ConstData::Int(_)) => ints,
                (data_type::FLOAT | data_type::DOUBLE, ConstData::Int(v)) => {
                    ConstData::Float(v.iter().map(|&i| i as f64).collect())
                }
                (data_type::FLOAT | data_type::DOUBLE, floats @ ConstData::Float(_)) => floats,
                _ => return None,
            };
            Some(Const { dims: x.dims, data })
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> = ints_input(0)?
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<_>>()?;
            let n = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= FOLD_LIMIT)?;
            let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => Const::from_tensor(t)?.data,
                None => ConstData::Float(vec![0.0]),
            };
            if value.len() != 1 {
                return None;
            }
            Some(Const {
                dims,
                data: value.gather(&vec![0; n]),
            })
        }
        "Reshape" => {
            let x = input(0)?.clone();
            let target = ints_input(1)?;
            let allow_zero = int_attr(node, "allowzero").unwrap_or(0) != 0;
            let n = x.data.len();
            let mut dims = Vec::with_capacity(target.len());
            let mut infer = None;
            for (axis, &d) in target.iter().enumerate() {
                match d {
                    -1 if infer.is_none() => {
                        infer = Some(axis);
                        dims.push(1);
                    }
                    0 if !allow_zero => dims.push(*x.dims.get(axis)?),
                    d => dims.push(usize::try_from(d).ok()?),
                }
            }
            let known = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            if let Some(axis) = infer {
                if known == 0 || n % known != 0 {
                    return None;
                }
                dims[axis] = n / known;
            } else if known != n {
                return None;
            }
            Some(Const { dims, data: x.data })
        }
        "Unsqueeze" | "Squeeze" => {
            let x = input(0)?.clone();
            let axes = match input(1) {
                Some(c) => Some(c.ints()?.to_vec()),
                None => ints_attr(node, "axes"),
            };
            let dims = if node.op_type == "Unsqueeze" {
                let axes = axes?;
                let rank = x.dims.len() + axes.len();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| rank_axis(a, rank))
                    .collect::<Option<_>>()?;
                axes.sort_unstable();
                axes.dedup();
                if axes.len() + x.dims.len() != rank {
                    return None;
                }
                let mut rest = x.dims.iter();
                (0..rank)
                    .map(|a| {
                        if axes.contains(&a) {
                            Some(1)
                        } else {
                            rest.next().copied()
                        }
                    })
                    .collect::<Option<Vec<_>>>()?
            } else {
                let rank = x.dims.len();
                let axes: Vec<usize> = match axes {
                    Some(axes) => axes
                        .iter()
                        .map(|&a| rank_axis(a, rank))
                        .collect::<Option<_>>()?,
                    None => (0..rank).filter(|&a| x.dims[a] == 1).collect(),
                };
                if axes.iter().any(|&a| x.dims[a] != 1) {
                    return None;
                }
                (0..rank)
                    .filter(|a| !axes.contains(a))
                    .map(|a| x.dims[a])
                    .collect()
            };
            Some(Const { dims, data: x.data })
        }
        "Transpose" => {
            let x = input(0)?;
            let rank = x.dims.len();
            let perm: Vec<usize> = match ints_attr(node, "perm") {
                Some(p) => p
                    .iter()
                    .map(|&a| usize::try_from(a).ok().filter(|&a| a < rank))
                    .collect::<Option<_>>()?,
                None => (0..rank).rev().collect(),
            };
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..rank).collect::<Vec<_>>() {
                return None;
            }
            let dims: Vec<usize> = perm.iter().map(|&a| x.dims[a]).collect();
            let (source, target) = (strides(&x.dims), strides(&dims));
            let indices: Vec<usize> = (0..x.data.len())
                .map(|flat| {
                    let mut rest = flat;
                    let mut index = 0;
                    for (axis, step) in target.iter().enumerate() {
                        index += rest / step * source[perm[axis]];
                        rest %= step;
                    }
                    index
                })
                .collect();
            Some(Const {
                dims,
                data: x.data.gather(&indices),
            })
        }
        "Slice" => {
            let x = input(0)?;
            let rank = x.dims.len();
            let starts = ints_input(1)?;
            let ends = ints_input(2)?;
            let axes = match input(3) {
                Some(c) => c.ints()?.to_vec(),
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match input(4) {
                Some(c) => c.ints()?.to_vec(),
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return None;
            }
            // per axis, the source coordinates kept
            let mut kept: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..starts.len() {
                let axis = rank_axis(axes[k], rank)?;
                kept[axis] = slice_range(x.dims[axis], starts[k], ends[k], steps[k])?;
            }
            let dims: Vec<usize> = kept.iter().map(Vec::len).collect();
            let (source, target) = (strides(&x.dims), strides(&dims));
            let indices: Vec<usize> = (0..dims.iter().product::<usize>())
                .map(|flat| {
                    let mut rest = flat;
                    (0..rank)
                        .map(|axis| {
                            let coordinate = rest / target[axis];
                            rest %= target[axis];
                            kept[axis][coordinate] * source[axis]
                        })
                        .sum()
                })
                .collect();
            Some(Const {
                dims,
                data: x.data.gather(&indices),
            })
        }
        "Concat" => {
            let parts: Vec<&Const> = (0..inputs.len()).map(input).collect::<Option<_>>()?;
            let first = parts.first()?;
            let rank = first.dims.len();
            let axis = rank_axis(int_attr(node, "axis")?, rank)?;
            let outer: usize = first.dims[..axis].iter().product();
            let mut dims = first.dims.clone();
            dims[axis] = 0;
            for part in &parts {
                let same_kind =
                    std::mem::discriminant(&part.data) == std::mem::discriminant(&first.data);
                let fits = part.dims.len() == rank
                    && (0..rank).all(|a| a == axis || part.dims[a] == first.dims[a]);
                if !same_kind || !fits {
                    return None;
                }
                dims[axis] += part.dims[axis];
            }
            let mut data = match first.data {
                ConstData::Int(_) => ConstData::Int(Vec::new()),
                ConstData::Float(_) => ConstData::Float(Vec::new()),
            };
            for o in 0..outer {
                for part in &parts {
                    let block = part.data.len() / outer.max(1);
                    let chunk = part
                        .data
                        .gather(&(o * block..(o + 1) * block).collect::<Vec<_>>());
                    match (&mut data, chunk) {
                        (ConstData::Int(all), ConstData::Int(c)) => all.extend(c),
                        (ConstData::Float(all), ConstData::Float(c)) => all.extend(c),
                        _ => return None,
                    }
                }
            }
            Some(Const { dims, data })
        }
        _ => None,
    }
}

/// Row-major strides of a tensor of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for axis in (0..dims.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * dims[axis + 1].max(1);
    }
    strides
}

/// The coordinates ONNX's Slice keeps on an axis of `dim` elements (with its clamping of
/// `start` and `end` and negative steps).
fn slice_range(dim: usize, start: i64, end: i64, step: i64) -> Option<Vec<usize>> {
    if step == 0 {
        return None;
    }
    let dim = dim as i64;
    let resolve = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
    let (start, end) = (resolve(start), resolve(end));
    let kept: Vec<usize> = if step > 0 {
        let (start, end) = (start.clamp(0, dim), end.clamp(0, dim));
        (start..end)
            .step_by(step as usize)
            .map(|i| i as usize)
            .collect()
    } else {
        let (start, end) = (start.clamp(-1, dim - 1), end.clamp(-1, dim - 1));
        let mut kept = Vec::new();
        let mut i = start;
        while i > end {
            kept.push(i as usize);
            i += step;
        }
        kept
    };
    Some(kept)
}

/// An integer initializer's values (`int64` or `int32`).
fn tensor_ints(t: &TensorProto) -> anyhow::Result<Vec<i64>> {
    if t.data_location == 1 {
        bail!("its data is stored in an external file, which is not supported");
    }
    Ok(match t.data_type {
        data_type::INT64 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        data_type::INT64 => t.int64_data.clone(),
        data_type::INT32 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        data_type::INT32 => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        other => bail!("data type {other} is not an integer type (int64 or int32)"),
    })
}

/// The image shape C×H×W, layout and fixed batch size (if any) from the graph input's declared
/// shape.
fn input_shape(
    info: &ValueInfoProto,
    options: &ImportOptions,
) -> anyhow::Result<([usize; 3], Layout, Option<usize>)> {
    let dims: Vec<Option<usize>> = declared_dims(info).unwrap_or_default();
    if dims.len() != 4 {
        bail!(
            "input `{}` has {} dimensions; an image classifier takes [batch, C, H, W] or [batch, H, W, C]",
            info.name,
            dims.len()
        );
    }
    let shown = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let as_layout = |layout: Layout| -> [Option<usize>; 3] {
        match layout {
            Layout::Nchw => [dims[1], dims[2], dims[3]],
            Layout::Nhwc => [dims[3], dims[1], dims[2]],
        }
    };
    let fits = |layout: Layout, chw: [usize; 3]| {
        as_layout(layout)
            .iter()
            .zip(chw)
            .all(|(d, e)| d.is_none_or(|d| d == e))
    };
    let layout = match (options.layout, options.expected_input) {
        (Some(layout), Some(chw)) => {
            if !fits(layout, chw) {
                bail!(
                    "input `{}` is [{shown}], which as {} does not fit the data's {chw:?} (C, H, W)",
                    info.name,
                    layout.name()
                );
            }
            layout
        }
        (Some(layout), None) => layout,
        (None, Some(chw)) => match (fits(Layout::Nchw, chw), fits(Layout::Nhwc, chw)) {
            (true, false) => Layout::Nchw,
            (false, true) => Layout::Nhwc,
            (true, true) => bail!(
                "input `{}` is [{shown}], which fits the data's {chw:?} both as NCHW and as NHWC: say which with --teacher-layout nchw|nhwc",
                info.name
            ),
            (false, false) => bail!(
                "input `{}` is [{shown}], which fits the data's {chw:?} (C, H, W) neither as NCHW nor as NHWC",
                info.name
            ),
        },
        (None, None) => {
            let channels = |d: Option<usize>| d.is_some_and(|d| d <= 4);
            match (channels(dims[1]), channels(dims[3])) {
                (true, false) => Layout::Nchw,
                (false, true) => Layout::Nhwc,
                _ => bail!(
                    "input `{}` is [{shown}]: cannot tell NCHW from NHWC; say which with --teacher-layout nchw|nhwc",
                    info.name
                ),
            }
        }
    };
    let chw = match (as_layout(layout), options.expected_input) {
        ([Some(c), Some(h), Some(w)], _) => [c, h, w],
        (_, Some(chw)) => chw,
        _ => bail!(
            "input `{}` is [{shown}]: its image size is not fixed; give the data so the size is known",
            info.name
        ),
    };
    Ok((chw, layout, dims[0]))
}

/// One imported layer: its spec and its weights.
struct ImportedLayer {
    spec: LayerSpec,
    weights: Weights,
}

enum Weights {
    None,
    /// `bias` is `None` for a convolution without one.
    Conv {
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    /// `[inputs, units]` row-major.
    Dense {
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
    BatchNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        epsilon: f64,
    },
    /// A residual stage: each block's weights.
    Residual(Vec<BlockWeights>),
}

/// The weights of one residual block: its body's layers, then its shortcut's (a convolution
/// and, for a projection, its batch norm).
struct BlockWeights {
    body: Vec<Weights>,
    shortcut: Vec<Weights>,
}

/// What a residual block's shortcut branch computes.
enum Carried {
    /// The block input itself.
    Identity,
    /// Option A: every `stride`-th pixel, `before` and `after` zero channels around the input's.
    ZeroPad {
        stride: usize,
        before: usize,
        after: usize,
    },
    /// A 1x1 convolution at `stride` (`weight` is `[filters, C, 1, 1]`), then a batch norm
    /// (`Weights::BatchNorm`) for a projection.
    Conv {
        stride: usize,
        weight: Vec<f32>,
        norm: Option<Weights>,
    },
}

/// A residual block read from the graph: its body's layers and its shortcut.
struct BlockParts {
    body: Vec<ImportedLayer>,
    carried: Carried,
}

/// The walk along the data path: the layers so far, the shape in our NCHW terms, and the
/// layout the ONNX activations are in.
struct Walk<'a> {
    layers: Vec<ImportedLayer>,
    shape: Shape,
    layout: Layout,
    /// Set by a flatten of NHWC activations: the H, W, C shape whose order the next dense
    /// layer's rows follow.
    hwc_flatten: Option<[usize; 3]>,
    /// The previous node was a MatMul: an `Add` is its bias.
    after_matmul: bool,
    /// Inside a residual block: symmetric pads are PyTorch's `padding=n` (`Padding::Explicit`)
    /// even where TensorFlow's 'same' gives the same pixels.
    in_block: bool,
    initializers: &'a HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Walk<'a> {
    fn new(
        input: [usize; 3],
        layout: Layout,
        initializers: &'a HashMap<&'a str, &'a TensorProto>,
    ) -> Self {
        Walk {
            layers: Vec::new(),
            shape: Shape::Image(input),
            layout,
            hwc_flatten: None,
            after_matmul: false,
            in_block: false,
            initializers,
        }
    }

    /// Maps a residual block's branches: `body`'s nodes onto layers from the current feature
    /// map, `shortcut`'s onto a shortcut we have. Changes nothing in `self`.
    fn block_parts(
        &self,
        body: &[&NodeProto],
        shortcut: &[&NodeProto],
    ) -> anyhow::Result<BlockParts> {
        let input = self.image("a residual block")?;
        let carried = self.carried(shortcut, input)?;
        let mut inner = Walk {
            layers: Vec::new(),
            shape: self.shape,
            layout: self.layout,
            hwc_flatten: None,
            after_matmul: false,
            in_block: true,
            initializers: self.initializers,
        };
        if body.is_empty() {
            bail!("both branches are empty");
        }
        for node in body {
            if matches!(node.op_type.as_str(), "Softmax" | "LogSoftmax") {
                bail!(
                    "node `{}` ({}) is inside a residual block",
                    node.name,
                    node.op_type
                );
            }
            inner
                .node(node)
                .with_context(|| format!("node `{}` ({})", node.name, node.op_type))?;
        }
        if !matches!(inner.shape, Shape::Image(_)) {
            bail!("the block's body flattens its feature map");
        }
        Ok(BlockParts {
            body: inner.layers,
            carried,
        })
    }

    /// The shortcut the nodes of a branch compute on an input of `input` (C×H×W): nothing (the
    /// identity), Slices on H and W with a Pad of the channels (option A), or a 1x1 Conv with an
    /// optional BatchNormalization (a projection, or a plain convolution).
    fn carried(&self, nodes: &[&NodeProto], input: [usize; 3]) -> anyhow::Result<Carried> {
        let nodes: Vec<&NodeProto> = nodes
            .iter()
            .copied()
            .filter(|n| !matches!(n.op_type.as_str(), "Identity" | "Dropout"))
            .collect();
        let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
        match ops[..] {
            [] => Ok(Carried::Identity),
            ["Conv"] | ["Conv", "BatchNormalization"] => self.conv_shortcut(&nodes, input),
            _ if ops.iter().all(|op| matches!(*op, "Slice" | "Pad")) => {
                self.zero_pad_shortcut(&nodes, input)
            }
            _ => bail!(
                "a shortcut of {ops:?}: the shortcuts mapped are the identity, option A's Slice and Pad, and a 1x1 Conv (with a BatchNormalization)"
            ),
        }
    }

    /// Option A: `x[:, :, ::s, ::s]` as Slice nodes (one per axis or one for both), and zero
    /// channels as a constant Pad.
    fn zero_pad_shortcut(
        &self,
        nodes: &[&NodeProto],
        [c, h, w]: [usize; 3],
    ) -> anyhow::Result<Carried> {
        let mut size = [c, h, w];
        let mut steps = [1usize; 2];
        let (mut before, mut after) = (0usize, 0usize);
        for node in nodes {
            let context = || format!("node `{}` ({})", node.name, node.op_type);
            if node.op_type == "Slice" {
                let operands = if node.input.len() > 1 {
                    let optional = |i: usize| -> anyhow::Result<Option<Vec<i64>>> {
                        match node.input.get(i).filter(|n| !n.is_empty()) {
                            Some(_) => self.constant_ints(node, i).map(Some),
                            None => Ok(None),
                        }
                    };
                    (
                        self.constant_ints(node, 1),
                        self.constant_ints(node, 2),
                        optional(3),
                        optional(4),
                    )
                } else {
                    // opset 1-9: attributes, no steps
                    let need =
                        |name: &str| ints_attr(node, name).with_context(|| format!("no `{name}`"));
                    (
                        need("starts"),
                        need("ends"),
                        Ok(ints_attr(node, "axes")),
                        Ok(None),
                    )
                };
                let (starts, ends, axes, slice_steps) = match operands {
                    (Ok(s), Ok(e), Ok(a), Ok(st)) => (s, e, a, st),
                    (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                        return Err(e.context(context()))
                    }
                };
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let slice_steps = slice_steps.unwrap_or_else(|| vec![1; starts.len()]);
                if ends.len() != starts.len()
                    || axes.len() != starts.len()
                    || slice_steps.len() != starts.len()
                {
                    bail!(
                        "{}: starts, ends, axes and steps differ in length",
                        context()
                    );
                }
                for k in 0..starts.len() {
                    let axis = if axes[k] < 0 { axes[k] + 4 } else { axes[k] };
                    let (start, end, step) = (starts[k], ends[k], slice_steps[k]);
                    let whole = |dim: usize| start == 0 && end >= dim as i64;
                    match axis {
                        0 if start == 0 && step == 1 && end >= i64::from(i32::MAX) => {}
                        1 if whole(size[0]) && step == 1 => {}
                        2 | 3 if whole(size[axis as usize - 1]) && step > 0 => {
                            let a = axis as usize - 1;
                            size[a] = size[a].div_ceil(step as usize);
                            steps[a - 1] = steps[a - 1].saturating_mul(step as usize);
                        }
                        _ => bail!(
                            "{}: a slice of axis {} from {start} to {end} by {step}; option A's shortcut keeps every s-th pixel of H and W (x[:, :, ::s, ::s])",
                            context(),
                            axes[k]
                        ),
                    }
                }
            } else {
                let mode = attr(node, "mode")
                    .map(|a| String::from_utf8_lossy(&a.s).into_owned())
                    .unwrap_or_else(|| "constant".into());
                if mode != "constant" {
                    bail!("{}: mode {mode}; option A pads with zeros", context());
                }
                let pads = match node.input.get(1).filter(|n| !n.is_empty()) {
                    Some(_) => self.constant_ints(node, 1).with_context(context)?,
                    None => ints_attr(node, "pads").unwrap_or_default(),
                };
                let value = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(_) => {
                        let v = self
                            .initializer(node, 2, "constant value")
                            .with_context(context)?;
                        v.values.first().copied().unwrap_or(0.0)
                    }
                    None => float_attr(node, "value").unwrap_or(0.0),
                };
                if node.input.get(3).is_some_and(|n| !n.is_empty()) {
                    bail!("{}: Pad with axes is not supported", context());
                }
                let channels_only = pads.len() == 8
                    && pads
                        .iter()
                        .enumerate()
                        .all(|(i, &p)| if i % 4 == 1 { p >= 0 } else { p == 0 });
                if value != 0.0 || !channels_only {
                    bail!(
                        "{}: pads {pads:?} with value {value}; option A's shortcut pads only the channels, with zeros",
                        context()
                    );
                }
                let (b, a) = (pads[1] as usize, pads[5] as usize);
                before = before.saturating_add(b);
                after = after.saturating_add(a);
                size[0] = size[0].saturating_add(b).saturating_add(a);
            }
        }
        let [sh, sw] = steps;
        if sh != sw {
            bail!("the shortcut keeps every {sh}th row but every {sw}th column");
        }
        Ok(if sh == 1 && before == 0 && after == 0 {
            Carried::Identity
        } else {
            Carried::ZeroPad {
                stride: sh,
                before,
                after,
            }
        })
    }

    /// Option B and Wide ResNet's shortcut: a 1x1 convolution, then maybe a batch norm. A bias
    /// (an exporter's folded batch norm) becomes a batch norm's shift.
    fn conv_shortcut(
        &self,
        nodes: &[&NodeProto],
        [c, _, _]: [usize; 3],
    ) -> anyhow::Result<Carried> {
        let conv = nodes[0];
        let context = || format!("node `{}` (Conv)", conv.name);
        let weight = self.initializer(conv, 1, "weight").with_context(context)?;
        let [filters, in_channels, 1, 1] = weight.dims[..] else {
            bail!(
                "{}: weight of shape {:?}; a shortcut convolution is 1x1",
                context(),
                weight.dims
            );
        };
        if group(conv) != 1 || in_channels != c {
            bail!(
                "{}: {in_channels} input channels in {} group(s) for {c} channels",
                context(),
                group(conv)
            );
        }
        check_dilations(conv).with_context(context)?;
        let stride = square_stride(conv).with_context(context)?;
        let auto_pad = attr(conv, "auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_default();
        let pads = ints_attr(conv, "pads").unwrap_or_default();
        if !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID") || pads.iter().any(|&p| p != 0) {
            bail!(
                "{}: a padded 1x1 convolution is not a shortcut we have",
                context()
            );
        }
        let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => Some(
                self.initializer(conv, 2, "bias")
                    .with_context(context)?
                    .values,
            ),
            None => None,
        };
        if bias.as_ref().is_some_and(|b| b.len() != filters) {
            bail!("{}: the bias does not have {filters} values", context());
        }
        let norm = match (nodes.get(1), bias) {
            (Some(node), bias) => {
                let Weights::BatchNorm {
                    gamma,
                    beta,
                    mut mean,
                    var,
                    epsilon,
                } = self.batch_norm_weights(node, filters)?
                else {
                    unreachable!("batch norm weights")
                };
                // norm(x + b) = norm with its mean shifted by b
                for (m, b) in mean.iter_mut().zip(bias.unwrap_or_default()) {
                    *m -= b;
                }
                Some(Weights::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    epsilon,
                })
            }
            (None, Some(bias)) => Some(Weights::BatchNorm {
                gamma: vec![1.0; filters],
                beta: bias,
                mean: vec![0.0; filters],
                var: vec![1.0; filters],
                epsilon: 0.0,
            }),
            (None, None) => None,
        };
        Ok(Carried::Conv {
            stride,
            weight: weight.values,
            norm,
        })
    }

    /// Adds a residual block: a stage of its own, or one more block of the stage before when it
    /// repeats that stage's body with an identity shortcut.
    fn residual(&mut self, parts: BlockParts, relu: bool) -> anyhow::Result<()> {
        let input = self.image("a residual block")?;
        let body: Vec<LayerSpec> = parts.body.iter().map(|l| l.spec.clone()).collect();
        let stride = body_stride(&body);
        let filters = match sequence_info(&body, Shape::Image(input))
            .map_err(|(j, e)| anyhow::anyhow!("body layer {j}: {e}"))?
            .last()
            .map(|info| info.output)
        {
            Some(Shape::Image([filters, _, _])) => filters,
            _ => bail!("the block's body does not end with a feature map"),
        };
        let (shortcut, shortcut_weights) = match parts.carried {
            Carried::Identity => (Shortcut::Identity, Vec::new()),
            Carried::ZeroPad {
                stride: step,
                before,
                after,
            } => {
                let extra = filters.saturating_sub(input[0]);
                if step != stride {
                    bail!(
                        "the shortcut keeps every {step}th pixel but the body's stride is {stride}"
                    );
                }
                if (before, after) != (extra / 2, extra - extra / 2) {
                    bail!(
                        "the shortcut pads {before} zero channels before the input's {} and {after} after, to the body's {filters}; the zero_pad shortcut puts {} before and {} after",
                        input[0],
                        extra / 2,
                        extra - extra / 2
                    );
                }
                (Shortcut::ZeroPad, Vec::new())
            }
            Carried::Conv {
                stride: step,
                weight,
                norm,
            } => {
                if step != stride {
                    bail!("the shortcut convolution's stride is {step} but the body's {stride}");
                }
                let conv = Weights::Conv { weight, bias: None };
                match norm {
                    Some(norm) => (Shortcut::Projection, vec![conv, norm]),
                    None => (Shortcut::Conv, vec![conv]),
                }
            }
        };
        let spec = LayerSpec::Residual {
            repeat: 1,
            body,
            shortcut,
            relu,
        };
        let info =
            layer_info(self.layers.len(), &spec, self.shape).map_err(|e| anyhow::anyhow!("{e}"))?;
        let LayerSpec::Residual { body, .. } = spec.clone() else {
            unreachable!("built above")
        };
        let block = BlockWeights {
            body: parts.body.into_iter().map(|l| l.weights).collect(),
            shortcut: shortcut_weights,
        };
        if let Some(ImportedLayer {
            spec:
                LayerSpec::Residual {
                    repeat,
                    body: stage_body,
                    relu: stage_relu,
                    ..
                },
            weights: Weights::Residual(blocks),
        }) = self.layers.last_mut()
        {
            let repeats = shortcut == Shortcut::Identity
                && *stage_relu == relu
                && same_computation(&block_body(stage_body, 1), &body, input);
            if repeats {
                *repeat += 1;
                blocks.push(block);
                self.shape = info.output;
                return Ok(());
            }
        }
        self.shape = info.output;
        self.layers.push(ImportedLayer {
            spec,
            weights: Weights::Residual(vec![block]),
        });
        Ok(())
    }

    /// `(x - mean) / std` per channel, as an inference-mode batch norm in front.
    fn normalize(&mut self, norm: &Normalization) -> anyhow::Result<()> {
        let Shape::Image([c, _, _]) = self.shape else {
            unreachable!()
        };
        let (mean, std) = norm.per_channel(c)?;
        self.layers.push(ImportedLayer {
            spec: LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            weights: Weights::BatchNorm {
                gamma: vec![1.0; c],
                beta: vec![0.0; c],
                mean,
                var: std.iter().map(|s| s * s).collect(),
                epsilon: 0.0,
            },
        });
        Ok(())
    }

    fn push(&mut self, spec: LayerSpec, weights: Weights) -> anyhow::Result<()> {
        let info =
            layer_info(self.layers.len(), &spec, self.shape).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.shape = info.output;
        self.layers.push(ImportedLayer { spec, weights });
        Ok(())
    }

    fn image(&self, op: &str) -> anyhow::Result<[usize; 3]> {
        match (self.shape, self.layout) {
            (Shape::Image(chw), Layout::Nchw) => Ok(chw),
            (Shape::Image(_), Layout::Nhwc) => bail!(
                "{op} on NHWC activations: ONNX's {op} is NCHW (a Transpose should come first)"
            ),
            (Shape::Flat(_), _) => bail!("{op} after the features were flattened"),
        }
    }

    fn node(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let result = self.apply(node);
        self.after_matmul = node.op_type == "MatMul";
        result
    }

    fn apply(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        match node.op_type.as_str() {
            "Identity" | "Dropout" => Ok(()),
            "Transpose" => {
                let perm = ints_attr(node, "perm").unwrap_or_default();
                match (self.shape, self.layout, perm.as_slice()) {
                    (Shape::Image(_), Layout::Nhwc, [0, 3, 1, 2]) => self.layout = Layout::Nchw,
                    (Shape::Image(_), Layout::Nchw, [0, 2, 3, 1]) => self.layout = Layout::Nhwc,
                    _ => bail!(
                        "Transpose with perm {perm:?} on {} activations: only NHWC↔NCHW transposes are supported",
                        self.layout.name()
                    ),
                }
                Ok(())
            }
            "Conv" => self.conv(node),
            "Relu" => self.relu(),
            "LeakyRelu" => {
                let slope = float_attr(node, "alpha").unwrap_or(0.01);
                self.push(
                    LayerSpec::LeakyRelu {
                        slope: f64::from(slope),
                    },
                    Weights::None,
                )
            }
            "MaxPool" => self.max_pool(node),
            "GlobalAveragePool" => {
                self.image("GlobalAveragePool")?;
                self.push(LayerSpec::GlobalAvgPool, Weights::None)?;
                Ok(())
            }
            "AveragePool" => self.average_pool(node),
            "Flatten" | "Reshape" | "Squeeze" => self.flatten(node),
            "BatchNormalization" => self.batch_norm(node),
            "Gemm" => self.gemm(node),
            "MatMul" => {
                let (k, n, weight) = self.matrix(node, 1, false)?;
                self.dense(k, n, weight, vec![0.0; n])
            }
            "Add" if self.after_matmul => self.bias_add(node),
            "Add" | "Mul" => self.affine(node),
            other => bail!(
                "unsupported operator {other}: the native importer maps Conv, Relu, LeakyRelu, MaxPool, Flatten/Reshape, Gemm, MatMul+Add, BatchNormalization, GlobalAveragePool (and a global AveragePool), Dropout, Identity, NHWC Transposes, residual blocks (Add of two branches; Slice/Pad option-A shortcuts) and a final Softmax"
            ),
        }
    }

    fn relu(&mut self) -> anyhow::Result<()> {
        // a ReLU right after a dense layer is that layer's activation
        if let Some(ImportedLayer {
            spec: LayerSpec::Dense { activation, .. },
            ..
        }) = self.layers.last_mut()
        {
            if activation.is_none() {
                *activation = Some(Activation::Relu);
                return Ok(());
            }
        }
        self.push(LayerSpec::Relu, Weights::None)
    }

    fn conv(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let [c, h, w] = self.image("Conv")?;
        let weight = self.initializer(node, 1, "weight")?;
        let [filters, in_channels, kh, kw] = weight.dims[..] else {
            bail!(
                "weight has shape {:?}, expected [out, in, kH, kW]",
                weight.dims
            );
        };
        let groups = usize::try_from(group(node))
            .ok()
            .filter(|&g| g > 0 && c % g == 0 && filters % g == 0)
            .with_context(|| {
                format!(
                    "group {} does not divide the {c} input channels and the {filters} filters",
                    group(node)
                )
            })?;
        if in_channels.checked_mul(groups) != Some(c) {
            bail!(
                "weight expects {in_channels} input channels per group ({groups} group(s)), the data has {c}"
            );
        }
        if kh != kw {
            bail!("kernel {kh}x{kw} is not square");
        }
        check_dilations(node)?;
        let stride = square_stride(node)?;
        let padding = padding(node, [h, w], kh, stride, self.in_block)?;
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => {
                let bias = self.initializer(node, 2, "bias")?.values;
                if bias.len() != filters {
                    bail!("bias has {} values for {filters} filters", bias.len());
                }
                Some(bias)
            }
            None => None,
        };
        self.push(
            LayerSpec::Conv2d {
                filters,
                kernel: kh,
                stride,
                padding,
                bias: bias.is_some(),
                groups,
            },
            Weights::Conv {
                weight: weight.values,
                bias,
            },
        )
    }

    /// An average pool whose window is the whole feature map (PyTorch's
    /// `F.avg_pool2d(x, x.size()[3])`): a global average pool.
    fn average_pool(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let [_, h, w] = self.image("AveragePool")?;
        let kernel = ints_attr(node, "kernel_shape").unwrap_or_default();
        let pads = ints_attr(node, "pads").unwrap_or_default();
        let auto_pad = attr(node, "auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_default();
        let global = kernel == [h as i64, w as i64]
            && pads.iter().all(|&p| p == 0)
            && matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID");
        if !global {
            bail!(
                "kernel {kernel:?} with pads {pads:?} on a {h}x{w} feature map: only an average over the whole map (a global average pool) is supported"
            );
        }
        check_dilations(node)?;
        self.push(LayerSpec::GlobalAvgPool, Weights::None)
    }

    fn max_pool(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let [_, h, w] = self.image("MaxPool")?;
        let kernel = ints_attr(node, "kernel_shape").unwrap_or_default();
        let [kh, kw] = kernel[..] else {
            bail!("kernel_shape {kernel:?} is not 2-D");
        };
        if kh != kw || kh <= 0 {
            bail!("kernel {kh}x{kw} is not square");
        }
        if int_attr(node, "ceil_mode").unwrap_or(0) != 0 {
            bail!("ceil_mode 1 is not supported");
        }
        check_dilations(node)?;
        let size = kh as usize;
        let stride = square_stride(node)?;
        let padding = padding(node, [h, w], size, stride, self.in_block)?;
        self.push(
            LayerSpec::MaxPool2d {
                size,
                stride: Some(stride),
                padding,
            },
            Weights::None,
        )
    }

    fn flatten(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let numel = self.shape.numel();
        if node.op_type == "Flatten" && int_attr(node, "axis").unwrap_or(1) != 1 {
            bail!("only axis 1 (keep the batch) is supported");
        }
        if node.op_type == "Reshape" {
            let shape_input = node.input.get(1).map(String::as_str).unwrap_or("");
            // a target computed in the graph (tf2onnx's Shape→Gather→…→Concat for a Keras
            // Flatten) is taken as a flatten; the next dense layer's input size checks it
            if self.initializers.contains_key(shape_input) {
                let target = self.initializer_ints(node, 1)?;
                if target.len() == 4 {
                    return self.reshape_image(&target);
                }
                let fits = match target[..] {
                    [b, f] => {
                        (b == -1 || b == 0) && (f == -1 || f as usize == numel)
                            || (f as usize == numel && b > 0)
                    }
                    _ => false,
                };
                if !fits {
                    bail!("reshape to {target:?}: only a flatten to [batch, {numel}] is supported");
                }
            }
        }
        match (self.shape, self.layout) {
            // GlobalAveragePool's [N, C, 1, 1] squeezed: already flat for us
            (Shape::Flat(_), _) => Ok(()),
            (Shape::Image([c, h, w]), Layout::Nhwc) => {
                self.hwc_flatten = Some([h, w, c]);
                self.push(LayerSpec::Flatten, Weights::None)
            }
            (Shape::Image(_), Layout::Nchw) => self.push(LayerSpec::Flatten, Weights::None),
        }
    }

    /// A reshape to `[batch, C, H, W]`: nothing in NCHW; in NHWC with one channel, the same as
    /// the NHWC→NCHW transpose (tf2onnx writes it that way for grayscale inputs).
    fn reshape_image(&mut self, target: &[i64]) -> anyhow::Result<()> {
        let Shape::Image([c, h, w]) = self.shape else {
            bail!("reshape of flat features to {target:?} is not supported");
        };
        let nchw = [c, h, w].map(|d| d as i64);
        if target[1..] != nchw {
            bail!("reshape of a {c}x{h}x{w} feature map to {target:?} is not supported");
        }
        match self.layout {
            Layout::Nchw => Ok(()),
            Layout::Nhwc if c == 1 => {
                self.layout = Layout::Nchw;
                Ok(())
            }
            Layout::Nhwc => bail!(
                "reshape of NHWC activations to {target:?} mixes channels and pixels; only a Transpose can change the layout"
            ),
        }
    }

    /// `Mul` or `Add` by a per-channel (or per-feature) constant, as tf2onnx writes a folded
    /// batch norm: an inference-mode batch norm with unit variance and zero mean.
    fn affine(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let features = match (self.shape, self.layout) {
            (Shape::Image([c, _, _]), Layout::Nchw) => c,
            (Shape::Flat(n), _) => n,
            (Shape::Image(_), Layout::Nhwc) => {
                bail!("{} on NHWC activations is not supported", node.op_type)
            }
        };
        let Floats { dims, values } = self.initializer(node, 1, "per-channel constant")?;
        let per_channel = dims.iter().filter(|&&d| d != 1).count() <= 1
            && (values.len() == features || values.len() == 1)
            && match self.shape {
                // broadcast over [N, C, H, W]: [C, 1, 1] or [1, C, 1, 1] (or a scalar)
                Shape::Image(_) => {
                    values.len() == 1 || dims.len() >= 3 && dims[dims.len() - 3] == features
                }
                Shape::Flat(_) => true,
            };
        if !per_channel {
            bail!(
                "{} by a constant of shape {dims:?}: only per-channel constants are supported",
                node.op_type
            );
        }
        let values = if values.len() == 1 {
            vec![values[0]; features]
        } else {
            values
        };
        let scale_only = node.op_type == "Mul";
        // an Add right after a Mul-made (or any) batch norm shifts its output
        if let Some(ImportedLayer {
            weights: Weights::BatchNorm { gamma, beta, .. },
            ..
        }) = self.layers.last_mut()
        {
            for ((g, b), v) in gamma.iter_mut().zip(beta.iter_mut()).zip(&values) {
                if scale_only {
                    *g *= v;
                    *b *= v;
                } else {
                    *b += v;
                }
            }
            return Ok(());
        }
        let (gamma, beta) = if scale_only {
            (values, vec![0.0; features])
        } else {
            (vec![1.0; features], values)
        };
        self.push(
            LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            Weights::BatchNorm {
                gamma,
                beta,
                mean: vec![0.0; features],
                var: vec![1.0; features],
                epsilon: 0.0,
            },
        )
    }

    fn batch_norm(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let features = match (self.shape, self.layout) {
            (Shape::Image([c, _, _]), Layout::Nchw) => c,
            (Shape::Flat(n), _) => n,
            (Shape::Image(_), Layout::Nhwc) => {
                bail!("BatchNormalization on NHWC activations normalises the wrong axis")
            }
        };
        let weights = self.batch_norm_weights(node, features)?;
        // the file's epsilon is set on the built layer with the other weights
        self.push(
            LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            weights,
        )
    }

    /// A BatchNormalization node's scale, bias, mean, variance and epsilon for `features`.
    fn batch_norm_weights(&self, node: &NodeProto, features: usize) -> anyhow::Result<Weights> {
        let take = |index: usize, what: &str| -> anyhow::Result<Vec<f32>> {
            let t = self.initializer(node, index, what)?;
            if t.values.len() != features {
                bail!(
                    "{what} has {} values for {features} features",
                    t.values.len()
                );
            }
            Ok(t.values)
        };
        Ok(Weights::BatchNorm {
            gamma: take(1, "scale")?,
            beta: take(2, "bias")?,
            mean: take(3, "mean")?,
            var: take(4, "var")?,
            epsilon: f64::from(float_attr(node, "epsilon").unwrap_or(1e-5)),
        })
    }

    fn gemm(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        if int_attr(node, "transA").unwrap_or(0) != 0 {
            bail!("transA 1 is not supported");
        }
        let trans_b = int_attr(node, "transB").unwrap_or(0) != 0;
        let (_, n, mut weight) = self.matrix(node, 1, trans_b)?;
        let alpha = float_attr(node, "alpha").unwrap_or(1.0);
        let beta = float_attr(node, "beta").unwrap_or(1.0);
        weight.iter_mut().for_each(|v| *v *= alpha);
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => {
                let bias = self.initializer(node, 2, "bias")?.values;
                if bias.len() != n {
                    bail!(
                        "bias has {} values for {n} units (broadcast biases are not supported)",
                        bias.len()
                    );
                }
                bias.into_iter().map(|v| v * beta).collect()
            }
            None => vec![0.0; n],
        };
        let k = weight.len() / n;
        self.dense(k, n, weight, bias)
    }

    /// The `[k, n]` weight at `index`, transposed from `[n, k]` with `transposed`.
    fn matrix(
        &self,
        node: &NodeProto,
        index: usize,
        transposed: bool,
    ) -> anyhow::Result<(usize, usize, Vec<f32>)> {
        let Shape::Flat(features) = self.shape else {
            bail!("a matrix product on a feature map: flatten first");
        };
        let t = self.initializer(node, index, "weight")?;
        let [rows, cols] = t.dims[..] else {
            bail!("weight has shape {:?}, expected a matrix", t.dims);
        };
        let (k, n, values) = if transposed {
            let mut out = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = t.values[r * cols + c];
                }
            }
            (cols, rows, out)
        } else {
            (rows, cols, t.values)
        };
        if k != features {
            bail!("weight expects {k} input features, the data has {features}");
        }
        Ok((k, n, values))
    }

    fn dense(
        &mut self,
        k: usize,
        n: usize,
        mut weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> anyhow::Result<()> {
        if let Some([h, w, c]) = self.hwc_flatten.take() {
            // ONNX row (y·W + x)·C + ch holds what our C, H, W flatten puts at ch·H·W + y·W + x
            let mut ours = vec![0.0; weight.len()];
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let from = ((y * w + x) * c + ch) * n;
                        let to = (ch * h * w + y * w + x) * n;
                        ours[to..to + n].copy_from_slice(&weight[from..from + n]);
                    }
                }
            }
            weight = ours;
        }
        debug_assert_eq!(weight.len(), k * n);
        self.push(
            LayerSpec::Dense {
                units: n,
                activation: None,
            },
            Weights::Dense { weight, bias },
        )
    }

    /// `Add` of a constant bias right after a MatMul.
    fn bias_add(&mut self, node: &NodeProto) -> anyhow::Result<()> {
        let values = self.initializer(node, 1, "bias")?.values;
        let Some(ImportedLayer {
            spec:
                LayerSpec::Dense {
                    units,
                    activation: None,
                },
            weights: Weights::Dense { bias, .. },
        }) = self.layers.last_mut()
        else {
            bail!("Add is only supported as the bias of a MatMul");
        };
        if values.len() != *units {
            bail!("bias has {} values for {units} units", values.len());
        }
        for (b, v) in bias.iter_mut().zip(values) {
            *b += v;
        }
        Ok(())
    }

    fn initializer(&self, node: &NodeProto, index: usize, what: &str) -> anyhow::Result<Floats> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        let Some(t) = self.initializers.get(name) else {
            bail!("its {what} (`{name}`) is not a constant initializer");
        };
        Ok(Floats {
            dims: t.dims.iter().map(|&d| d.max(0) as usize).collect(),
            values: tensor_values(t).with_context(|| format!("initializer `{name}`"))?,
        })
    }

    fn initializer_ints(&self, node: &NodeProto, index: usize) -> anyhow::Result<Vec<i64>> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        let Some(t) = self.initializers.get(name) else {
            bail!("its target shape (`{name}`) is computed in the graph, not a constant; only constant flattening reshapes are supported");
        };
        match t.data_type {
            data_type::INT64 => tensor_ints(t),
            other => bail!("target shape `{name}` has data type {other}, expected int64 (7)"),
        }
    }

    /// The integer constant (an initializer or a folded value) at input `index` of `node`.
    fn constant_ints(&self, node: &NodeProto, index: usize) -> anyhow::Result<Vec<i64>> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        let Some(t) = self.initializers.get(name) else {
            bail!("its operand `{name}` is computed from the data, not a constant");
        };
        tensor_ints(t).with_context(|| format!("operand `{name}`"))
    }
}

struct Floats {
    dims: Vec<usize>,
    values: Vec<f32>,
}

/// A float initializer's values, from raw little-endian bytes or the typed field.
fn tensor_values(t: &TensorProto) -> anyhow::Result<Vec<f32>> {
    if t.data_location == 1 {
        bail!("its data is stored in an external file, which is not supported");
    }
    let Some(expected) = element_count(&t.dims) else {
        bail!(
            "its shape {:?} has more elements than memory can hold",
            t.dims
        );
    };
    let values: Vec<f32> = match t.data_type {
        data_type::FLOAT if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
        data_type::FLOAT => t.float_data.clone(),
        data_type::DOUBLE if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        data_type::DOUBLE => t.double_data.iter().map(|&v| v as f32).collect(),
        other => bail!("data type {other} is not supported (float32 or float64 weights only)"),
    };
    if values.len() != expected {
        bail!(
            "it holds {} values but its shape {:?} needs {expected}",
            values.len(),
            t.dims
        );
    }
    Ok(values)
}

/// Elements of a tensor of shape `dims` (negative dimensions count as 0); `None` when the count
/// overflows.
fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| {
        n.checked_mul(usize::try_from(d.max(0)).ok()?)
    })
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

fn float_attr(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

fn group(node: &NodeProto) -> i64 {
    int_attr(node, "group").unwrap_or(1)
}

fn check_dilations(node: &NodeProto) -> anyhow::Result<()> {
    match ints_attr(node, "dilations") {
        Some(d) if d.iter().any(|&v| v != 1) => bail!("dilations {d:?} are not supported"),
        _ => Ok(()),
    }
}

fn square_stride(node: &NodeProto) -> anyhow::Result<usize> {
    match ints_attr(node, "strides").as_deref() {
        None | Some([]) => Ok(1),
        Some(&[a, b]) if a == b && a > 0 => Ok(a as usize),
        Some(s) => bail!("strides {s:?} are not equal and positive"),
    }
}

/// 'valid', TensorFlow's 'same' (explicit pads or `auto_pad = SAME_UPPER`), or PyTorch's
/// `padding=n` (the same pads on every side). Pads that are both 'same' and symmetric (a 3x3
/// stride-1 window padded by 1) are 'same', or `Explicit` with `prefer_explicit` (inside residual
/// blocks, which come from PyTorch).
fn padding(
    node: &NodeProto,
    [h, w]: [usize; 2],
    kernel: usize,
    stride: usize,
    prefer_explicit: bool,
) -> anyhow::Result<Padding> {
    let auto_pad = attr(node, "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_default();
    match auto_pad.as_str() {
        "" | "NOTSET" => {}
        "VALID" => return Ok(Padding::Valid),
        "SAME_UPPER" => return Ok(Padding::Same),
        other => bail!("auto_pad {other} is not supported (NOTSET, VALID or SAME_UPPER)"),
    }
    let pads = ints_attr(node, "pads").unwrap_or_default();
    if pads.is_empty() || pads.iter().all(|&p| p == 0) {
        return Ok(Padding::Valid);
    }
    let (top, bottom) = Padding::Same.amounts(h, kernel, stride);
    let (left, right) = Padding::Same.amounts(w, kernel, stride);
    let same = [top, left, bottom, right].map(|p| p as i64);
    let symmetric =
        pads.len() == 4 && pads.iter().all(|&p| p == pads[0]) && (pads[0] as usize) < kernel;
    if pads == same && !(prefer_explicit && symmetric) {
        Ok(Padding::Same)
    } else if symmetric {
        Ok(Padding::Explicit(pads[0] as usize))
    } else {
        bail!(
            "pads {pads:?} are neither 'valid', TensorFlow's 'same' ({same:?} for a {h}x{w} input) nor the same on every side"
        )
    }
}

/// Whether two block bodies compute the same function on an input of `input` (C×H×W): equal
/// layer for layer once every window's padding is written as the pixels it adds (TensorFlow's
/// 'same' and PyTorch's symmetric padding often agree).
fn same_computation(a: &[LayerSpec], b: &[LayerSpec], input: [usize; 3]) -> bool {
    let canonical = |layers: &[LayerSpec]| -> Option<Vec<LayerSpec>> {
        let infos = sequence_info(layers, Shape::Image(input)).ok()?;
        let shapes = std::iter::once(Shape::Image(input)).chain(infos.iter().map(|i| i.output));
        Some(
            layers
                .iter()
                .zip(shapes)
                .map(|(layer, shape)| {
                    let mut layer = layer.clone();
                    let explicit = |padding: &mut Padding, kernel: usize, stride: usize| {
                        if let Shape::Image([_, h, w]) = shape {
                            let (top, bottom) = padding.amounts(h, kernel, stride);
                            let (left, right) = padding.amounts(w, kernel, stride);
                            if top == bottom && left == right && top == left {
                                *padding = Padding::Explicit(top);
                            }
                        }
                    };
                    match &mut layer {
                        LayerSpec::Conv2d {
                            kernel,
                            stride,
                            padding,
                            ..
                        } => explicit(padding, *kernel, *stride),
                        LayerSpec::MaxPool2d {
                            size,
                            stride,
                            padding,
                        } => {
                            let step = stride.unwrap_or(*size);
                            *stride = Some(step);
                            explicit(padding, *size, step);
                        }
                        _ => {}
                    }
                    layer
                })
                .collect(),
        )
    };
    a.len() == b.len() && canonical(a).is_some_and(|a| Some(a) == canonical(b))
}

/// The network for `spec`, with every layer's imported weights.
fn build(
    spec: &ModelSpec,
    input: [usize; 3],
    layers: Vec<ImportedLayer>,
    device: &Device,
) -> anyhow::Result<Network> {
    let mut network = Network::init(spec, input, 0, device)
        .map_err(|e| anyhow::anyhow!("the imported layers do not form a valid model: {e}"))?;
    for (built, imported) in network.layers.iter_mut().zip(layers) {
        assign(built, imported.weights, device)?;
    }
    Ok(network)
}

/// Sets the imported `weights` on the `built` layer (and, for a residual stage, on every block's
/// body and shortcut layers).
fn assign(built: &mut Layer, weights: Weights, device: &Device) -> anyhow::Result<()> {
    match (built, weights) {
        (_, Weights::None) => {}
        (Layer::Conv2d(conv), Weights::Conv { weight, bias }) => {
            let dims = conv.weight.val().dims();
            conv.weight = Param::from_tensor(tensor(weight, dims, device));
            conv.bias = bias.map(|bias| Param::from_tensor(tensor(bias, [dims[0]], device)));
        }
        (Layer::Dense(dense), Weights::Dense { weight, bias }) => {
            let dims = dense.linear.weight.val().dims();
            dense.linear.weight = Param::from_tensor(tensor(weight, dims, device));
            dense.linear.bias = Some(Param::from_tensor(tensor(bias, [dims[1]], device)));
        }
        (
            Layer::BatchNorm(norm),
            Weights::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                epsilon,
            },
        ) => {
            let n = [gamma.len()];
            norm.gamma = Param::from_tensor(tensor(gamma, n, device));
            norm.beta = Param::from_tensor(tensor(beta, n, device));
            norm.running_mean = RunningState::new(tensor(mean, n, device));
            norm.running_var = RunningState::new(tensor(var, n, device));
            norm.epsilon = epsilon;
        }
        (Layer::Residual(stage), Weights::Residual(blocks)) => {
            anyhow::ensure!(
                stage.blocks.len() == blocks.len(),
                "a residual stage of {} blocks got the weights of {}",
                stage.blocks.len(),
                blocks.len()
            );
            for (block, weights) in stage.blocks.iter_mut().zip(blocks) {
                anyhow::ensure!(
                    block.body.len() == weights.body.len()
                        && block.shortcut.len() == weights.shortcut.len(),
                    "a residual block's layers and imported weights differ in number"
                );
                for (layer, w) in block.body.iter_mut().zip(weights.body) {
                    assign(layer, w, device)?;
                }
                for (layer, w) in block.shortcut.iter_mut().zip(weights.shortcut) {
                    assign(layer, w, device)?;
                }
            }
        }
        _ => bail!("an imported layer's weights do not fit the layer built for it"),
    }
    Ok(())
}

fn tensor<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, dims), device)
}
