//! Native import: an ONNX classifier whose nodes all map onto our layer vocabulary becomes a
//! [`Network`] (spec + weights), so it runs on our own kernels like a teacher `distill` trained.
//!
//! The graph must be a chain on one data path. Supported: Conv, Relu, LeakyRelu, MaxPool,
//! Flatten/Reshape to `[batch, features]`, Gemm, MatMul (+ Add of a bias), BatchNormalization,
//! GlobalAveragePool, Dropout, Identity, the Transposes of an NHWC (Keras/tf2onnx) export, and a
//! final Softmax/LogSoftmax (dropped: its input is the logits, and softmax(logits/T) is what the
//! distillation loss uses). Anything else is an error naming the op and the node.
//!
//! Keras flattens NHWC activations in H, W, C order while our Flatten is C, H, W: the rows of the
//! dense layer after such a flatten are permuted so the imported network computes the same
//! function.

use std::collections::HashMap;
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
use crate::models::spec::{layer_info, Activation, LayerSpec, Padding, Shape};
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
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let input_info = graph
        .input
        .iter()
        .find(|v| !initializers.contains_key(v.name.as_str()))
        .context("the graph has no image input")?;
    let output_info = graph.output.first().context("the graph has no output")?;
    let (input, layout) = (header.input, header.layout);
    let mut walk = Walk::new(input, layout, &initializers);
    if let Some(norm) = &options.normalize {
        walk.normalize(norm)?;
    }
    let mut current = input_info.name.clone();
    let mut output_kind = OutputKind::Logits;
    let shape_nodes = shape_subgraph(&graph.node);
    for (index, node) in graph.node.iter().enumerate() {
        if shape_nodes.contains(&index) {
            continue;
        }
        if node.input.first().is_none_or(|i| *i != current) {
            bail!(
                "node `{}` ({}) is off the model's single data path (it reads {:?}, the data is `{current}`): only chains of layers can be imported",
                node.name,
                node.op_type,
                node.input
            );
        }
        if output_kind == OutputKind::SoftmaxDropped {
            bail!(
                "node `{}` ({}) follows the softmax: the softmax must be the last operation",
                node.name,
                node.op_type
            );
        }
        if matches!(node.op_type.as_str(), "Softmax" | "LogSoftmax") {
            output_kind = OutputKind::SoftmaxDropped;
        } else {
            walk.node(node)
                .with_context(|| format!("node `{}` ({})", node.name, node.op_type))?;
        }
        let [out] = &node.output[..] else {
            bail!(
                "node `{}` ({}) has {} outputs; only single-output operations are supported",
                node.name,
                node.op_type,
                node.output.len()
            );
        };
        current = out.clone();
    }
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
    Conv {
        weight: Vec<f32>,
        bias: Vec<f32>,
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
            initializers,
        }
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
                "unsupported operator {other}: the native importer maps Conv, Relu, LeakyRelu, MaxPool, Flatten/Reshape, Gemm, MatMul+Add, BatchNormalization, GlobalAveragePool, Dropout, Identity, NHWC Transposes and a final Softmax"
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
        if group(node) != 1 {
            bail!(
                "grouped convolution (group {}) is not supported",
                group(node)
            );
        }
        if in_channels != c {
            bail!("weight expects {in_channels} input channels, the data has {c}");
        }
        if kh != kw {
            bail!("kernel {kh}x{kw} is not square");
        }
        check_dilations(node)?;
        let stride = square_stride(node)?;
        let padding = padding(node, [h, w], kh, stride)?;
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => self.initializer(node, 2, "bias")?.values,
            None => vec![0.0; filters],
        };
        self.push(
            LayerSpec::Conv2d {
                filters,
                kernel: kh,
                stride,
                padding,
                bias: true,
                groups: 1,
            },
            Weights::Conv {
                weight: weight.values,
                bias,
            },
        )
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
        let padding = padding(node, [h, w], size, stride)?;
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
        let weights = Weights::BatchNorm {
            gamma: take(1, "scale")?,
            beta: take(2, "bias")?,
            mean: take(3, "mean")?,
            var: take(4, "var")?,
            epsilon: f64::from(float_attr(node, "epsilon").unwrap_or(1e-5)),
        };
        // the file's epsilon is set on the built layer with the other weights
        self.push(
            LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            weights,
        )
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
            data_type::INT64 if !t.raw_data.is_empty() => Ok(t
                .raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()),
            data_type::INT64 => Ok(t.int64_data.clone()),
            other => bail!("target shape `{name}` has data type {other}, expected int64 (7)"),
        }
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

/// 'valid', or TensorFlow's 'same' (explicit pads or `auto_pad = SAME_UPPER`).
fn padding(
    node: &NodeProto,
    [h, w]: [usize; 2],
    kernel: usize,
    stride: usize,
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
    if pads == same {
        Ok(Padding::Same)
    } else if pads.len() == 4 && pads.iter().all(|&p| p == pads[0]) && (pads[0] as usize) < kernel {
        Ok(Padding::Explicit(pads[0] as usize))
    } else {
        bail!(
            "pads {pads:?} are neither 'valid', TensorFlow's 'same' ({same:?} for a {h}x{w} input) nor the same on every side"
        )
    }
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
        match (built, imported.weights) {
            (_, Weights::None) => {}
            (Layer::Conv2d(conv), Weights::Conv { weight, bias }) => {
                let dims = conv.weight.val().dims();
                conv.weight = Param::from_tensor(tensor(weight, dims, device));
                conv.bias = Some(Param::from_tensor(tensor(bias, [dims[0]], device)));
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
            _ => unreachable!("layers and weights are built together"),
        }
    }
    Ok(network)
}

fn tensor<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, dims), device)
}
