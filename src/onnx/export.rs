//! A trained [`Network`] as an ONNX model: opset 13, dynamic batch, NCHW `float32` input in
//! `[0, 1]`, logits out. Dropout is left out (inference graph). TensorFlow's 'same' padding is
//! written as explicit pads, so the asymmetric case (stride 2 on an even size pads only the
//! bottom/right) is reproduced exactly by every runtime.
//!
//! Residual stages are written block by block: the body's nodes, the shortcut (the block input
//! itself; option A's `Slice` with steps on H and W then a constant `Pad` of the channels; a 1x1
//! `Conv` without bias, with a `BatchNormalization` for a projection), an `Add` and the `Relu`
//! after it, all in opset-13 forms (Slice's and Pad's operands as `int64` initializers).

use anyhow::Context;
use prost::Message;

use super::proto::{
    attribute_type, data_type, AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TensorTypeProto, TypeProto, ValueInfoProto,
};
use super::{CLASSES_KEY, SPEC_KEY};
use crate::models::network::Layer;
use crate::models::residual::{ResidualBlock, ResidualStage};
use crate::models::spec::{block_body, sequence_info, LayerSpec, Padding, Shape};
use crate::models::{ModelSpec, Network};

/// The opset the exported graphs use.
pub const OPSET: i64 = 13;
/// ONNX IR version of opset 13 (ONNX 1.8).
const IR_VERSION: i64 = 7;
/// Name of the exported graph's input.
pub const INPUT_NAME: &str = "input";
/// Name of the exported graph's output.
pub const OUTPUT_NAME: &str = "logits";

/// Encodes `network` (built from `spec` for `input` = C×H×W images, predicting `classes`) as an
/// ONNX model file. The spec and the class names travel in the model's metadata, so `distill`
/// can read them back.
pub fn to_onnx_bytes(
    spec: &ModelSpec,
    network: &Network,
    input: [usize; 3],
    classes: &[String],
) -> anyhow::Result<Vec<u8>> {
    let infos = spec.infer(input)?;
    anyhow::ensure!(
        network.layers.len() == spec.layers.len(),
        "the network has {} layers but its spec {}",
        network.layers.len(),
        spec.layers.len()
    );
    let mut graph = GraphBuilder::default();
    let mut current = INPUT_NAME.to_string();
    let mut shape = Shape::Image(input);
    for (index, ((layer_spec, layer), info)) in spec
        .layers
        .iter()
        .zip(&network.layers)
        .zip(&infos)
        .enumerate()
    {
        let name = format!("layer{index}_{}", layer_spec.kind());
        current = match (layer_spec, layer) {
            (LayerSpec::Residual { body, .. }, Layer::Residual(stage)) => {
                residual_stage(&mut graph, &name, body, stage, shape, current)
                    .with_context(|| format!("layer {index} (residual)"))?
            }
            _ => emit_layer(&mut graph, &name, layer_spec, layer, shape, current)
                .with_context(|| format!("layer {index} (`{}`)", layer_spec.kind()))?,
        };
        shape = info.output;
    }
    let Shape::Flat(outputs) = shape else {
        anyhow::bail!("the model does not end with logits")
    };
    // the last node writes the graph output under its public name
    if current == INPUT_NAME {
        anyhow::bail!("the model has no operation to export");
    }
    graph.rename_output(&current, OUTPUT_NAME);

    let [c, h, w] = input;
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "distill".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{} exported by distill", spec.name),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: spec.name.clone(),
            initializer: graph.initializers,
            doc_string: String::new(),
            input: vec![value_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
            output: vec![value_info(OUTPUT_NAME, &[None, Some(outputs)])],
            value_info: vec![],
        }),
        metadata_props: vec![
            StringStringEntryProto {
                key: SPEC_KEY.into(),
                value: spec.to_toml_string(),
            },
            StringStringEntryProto {
                key: CLASSES_KEY.into(),
                value: serde_json::to_string(classes)?,
            },
        ],
    };
    Ok(model.encode_to_vec())
}

/// Writes the nodes of one non-residual layer reading `current` (on `shape`); returns the name of
/// its output (`current` itself for a layer left out of the inference graph).
fn emit_layer(
    graph: &mut GraphBuilder,
    name: &str,
    layer_spec: &LayerSpec,
    layer: &Layer,
    shape: Shape,
    current: String,
) -> anyhow::Result<String> {
    let name = name.to_string();
    Ok(match (layer_spec, layer) {
        (
            &LayerSpec::Conv2d {
                kernel,
                stride,
                padding,
                groups,
                ..
            },
            Layer::Conv2d(conv),
        ) => {
            let weight = conv.weight.val();
            let dims = weight.dims().iter().map(|&d| d as i64).collect();
            let w = graph.initializer(&format!("{name}.weight"), dims, values(weight));
            let mut inputs = vec![current, w];
            if let Some(bias) = &conv.bias {
                let b = bias.val();
                inputs.push(graph.initializer(
                    &format!("{name}.bias"),
                    vec![b.dims()[0] as i64],
                    values(b),
                ));
            }
            let mut attributes = vec![
                ints("kernel_shape", &[kernel, kernel]),
                ints("strides", &[stride, stride]),
                ints("pads", &pads(shape, kernel, stride, padding)),
            ];
            if groups != 1 {
                attributes.push(int("group", groups as i64));
            }
            graph.node("Conv", &name, inputs, attributes)
        }
        (LayerSpec::LeakyRelu { slope }, _) => graph.node(
            "LeakyRelu",
            &name,
            vec![current],
            vec![float("alpha", *slope as f32)],
        ),
        (LayerSpec::Relu, _) => graph.node("Relu", &name, vec![current], vec![]),
        (
            &LayerSpec::MaxPool2d {
                size,
                stride,
                padding,
            },
            _,
        ) => {
            let stride = stride.unwrap_or(size);
            let attributes = vec![
                ints("kernel_shape", &[size, size]),
                ints("strides", &[stride, stride]),
                ints("pads", &pads(shape, size, stride, padding)),
            ];
            graph.node("MaxPool", &name, vec![current], attributes)
        }
        // inference graph: dropout is the identity
        (LayerSpec::Dropout { .. }, _) => current,
        (LayerSpec::Flatten, _) => {
            graph.node("Flatten", &name, vec![current], vec![int("axis", 1)])
        }
        (LayerSpec::GlobalAvgPool, _) => {
            // ONNX keeps [N, C, 1, 1]; the layer's output is [N, C]
            let pooled = graph.node("GlobalAveragePool", &name, vec![current], vec![]);
            graph.node(
                "Flatten",
                &format!("{name}_flatten"),
                vec![pooled],
                vec![int("axis", 1)],
            )
        }
        (LayerSpec::BatchNorm { .. }, Layer::BatchNorm(norm)) => {
            let features = norm.gamma.val().dims()[0] as i64;
            let mut inputs = vec![current];
            for (suffix, tensor) in [
                ("scale", norm.gamma.val()),
                ("bias", norm.beta.val()),
                ("mean", norm.running_mean.value()),
                ("var", norm.running_var.value()),
            ] {
                inputs.push(graph.initializer(
                    &format!("{name}.{suffix}"),
                    vec![features],
                    values(tensor),
                ));
            }
            graph.node(
                "BatchNormalization",
                &name,
                inputs,
                vec![float("epsilon", norm.epsilon as f32)],
            )
        }
        (LayerSpec::Dense { activation, .. }, Layer::Dense(dense)) => {
            // burn stores the weight as [inputs, units]: Gemm's B without transposition
            let weight = dense.linear.weight.val();
            let dims = weight.dims().iter().map(|&d| d as i64).collect();
            let mut inputs = vec![
                current,
                graph.initializer(&format!("{name}.weight"), dims, values(weight)),
            ];
            if let Some(bias) = &dense.linear.bias {
                let b = bias.val();
                inputs.push(graph.initializer(
                    &format!("{name}.bias"),
                    vec![b.dims()[0] as i64],
                    values(b),
                ));
            }
            let out = graph.node("Gemm", &name, inputs, vec![]);
            match activation {
                Some(_) => graph.node("Relu", &format!("{name}_relu"), vec![out], vec![]),
                None => out,
            }
        }
        (spec_layer, _) => {
            anyhow::bail!("`{}` does not match the network's layer", spec_layer.kind())
        }
    })
}

/// Writes a residual stage reading `current` (on `shape`): per block, the body's nodes, the
/// shortcut (the block input itself; option A's Slice and Pad; a 1x1 Conv, with a
/// BatchNormalization for a projection), their Add and the ReLU after it. A block without
/// shortcut is its body alone (no ReLU either, as [`ResidualBlock::forward`] computes it).
fn residual_stage(
    graph: &mut GraphBuilder,
    name: &str,
    body: &[LayerSpec],
    stage: &ResidualStage,
    shape: Shape,
    mut current: String,
) -> anyhow::Result<String> {
    let Shape::Image(mut input) = shape else {
        anyhow::bail!("a residual stage on flat features")
    };
    for (b, block) in stage.blocks.iter().enumerate() {
        let layers = block_body(body, b);
        anyhow::ensure!(
            layers.len() == block.body.len(),
            "block {b} has {} body layers but its spec {}",
            block.body.len(),
            layers.len()
        );
        let infos = sequence_info(&layers, Shape::Image(input))
            .map_err(|(j, e)| anyhow::anyhow!("block {b}, body layer {j}: {e}"))?;
        let block_name = format!("{name}_block{b}");
        let mut out = current.clone();
        let mut at = Shape::Image(input);
        for (j, ((spec, layer), info)) in layers.iter().zip(&block.body).zip(&infos).enumerate() {
            if let LayerSpec::Residual { .. } = spec {
                anyhow::bail!("block {b}, body layer {j}: residual stages inside residual blocks cannot be exported");
            }
            let layer_name = format!("{block_name}_body{j}_{}", spec.kind());
            out = emit_layer(graph, &layer_name, spec, layer, at, out)
                .with_context(|| format!("block {b}, body layer {j}"))?;
            at = info.output;
        }
        let Shape::Image(output) = at else {
            anyhow::bail!("block {b} ends with flat features")
        };
        if block.add_input {
            let carried = shortcut(graph, &block_name, block, input, current)
                .with_context(|| format!("block {b}, shortcut"))?;
            let sum = graph.node(
                "Add",
                &format!("{block_name}_add"),
                vec![out, carried],
                vec![],
            );
            current = match block.relu {
                true => graph.node("Relu", &format!("{block_name}_relu"), vec![sum], vec![]),
                false => sum,
            };
        } else {
            current = out;
        }
        input = output;
    }
    Ok(current)
}

/// Writes the shortcut of `block` on its input `current` (of `input` C×H×W); returns what is
/// added to the body's output.
fn shortcut(
    graph: &mut GraphBuilder,
    block_name: &str,
    block: &ResidualBlock,
    input: [usize; 3],
    current: String,
) -> anyhow::Result<String> {
    let mut x = current;
    if block.shortcut.is_empty() {
        // identity, or option A: x[:, :, ::s, ::s], then zero channels before and after
        if block.subsample > 1 {
            let slice = format!("{block_name}_shortcut_slice");
            let step = block.subsample as i64;
            let inputs = vec![
                x,
                graph.int_initializer(&format!("{slice}.starts"), vec![0, 0]),
                graph.int_initializer(&format!("{slice}.ends"), vec![i64::MAX, i64::MAX]),
                graph.int_initializer(&format!("{slice}.axes"), vec![2, 3]),
                graph.int_initializer(&format!("{slice}.steps"), vec![step, step]),
            ];
            x = graph.node("Slice", &slice, inputs, vec![]);
        }
        if block.pad_before + block.pad_after > 0 {
            let pad = format!("{block_name}_shortcut_pad");
            let (before, after) = (block.pad_before as i64, block.pad_after as i64);
            // [N, C, H, W] begins, then ends: channels only
            let pads = graph.int_initializer(
                &format!("{pad}.pads"),
                vec![0, before, 0, 0, 0, after, 0, 0],
            );
            x = graph.node("Pad", &pad, vec![x, pads], vec![string("mode", "constant")]);
        }
        return Ok(x);
    }
    // a 1x1 convolution without bias at the body's stride, then a projection's batch norm
    let shape = Shape::Image(input);
    for (k, layer) in block.shortcut.iter().enumerate() {
        let spec = match layer {
            Layer::Conv2d(conv) => LayerSpec::Conv2d {
                filters: conv.weight.val().dims()[0],
                kernel: 1,
                stride: conv.stride[0],
                padding: Padding::Valid,
                bias: conv.bias.is_some(),
                groups: conv.groups,
            },
            Layer::BatchNorm(_) => LayerSpec::BatchNorm {
                epsilon: None,
                momentum: None,
            },
            _ => {
                anyhow::bail!("layer {k} of the shortcut is neither a convolution nor a batch norm")
            }
        };
        let name = format!("{block_name}_shortcut{k}_{}", spec.kind());
        x = emit_layer(graph, &name, &spec, layer, shape, x)?;
    }
    Ok(x)
}

/// Explicit `[top, left, bottom, right]` pads of a square window on `shape`.
fn pads(shape: Shape, kernel: usize, stride: usize, padding: Padding) -> [usize; 4] {
    let Shape::Image([_, h, w]) = shape else {
        unreachable!("spec inference puts windows on images only")
    };
    let (top, bottom) = padding.amounts(h, kernel, stride);
    let (left, right) = padding.amounts(w, kernel, stride);
    [top, left, bottom, right]
}

fn values<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 weights")
}

/// Nodes and initializers in the order they are added.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    /// A one-dimensional `int64` constant (Slice's and Pad's operands).
    fn int_initializer(&mut self, name: &str, values: Vec<i64>) -> String {
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        });
        name.into()
    }

    fn initializer(&mut self, name: &str, dims: Vec<i64>, values: Vec<f32>) -> String {
        self.initializers.push(TensorProto {
            dims,
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        });
        name.into()
    }

    /// Adds a node with one output named after it; returns that output's name.
    fn node(
        &mut self,
        op_type: &str,
        name: &str,
        input: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        let output = format!("{name}_out");
        self.nodes.push(NodeProto {
            input,
            output: vec![output.clone()],
            name: name.into(),
            op_type: op_type.into(),
            domain: String::new(),
            attribute,
        });
        output
    }

    fn rename_output(&mut self, from: &str, to: &str) {
        for node in &mut self.nodes {
            for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                if name == from {
                    *name = to.into();
                }
            }
        }
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..AttributeProto::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: value,
        ..AttributeProto::default()
    }
}

fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: value.as_bytes().to_vec(),
        ..AttributeProto::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: value,
        ..AttributeProto::default()
    }
}

/// A float tensor value; `None` axes are the symbolic batch.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(size) => DimensionValue::DimValue(*size as i64),
                                None => DimensionValue::DimParam("batch".into()),
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}
