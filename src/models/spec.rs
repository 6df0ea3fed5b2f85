//! A declarative, Keras-`Sequential`-like description of a CNN, written in Rust or TOML.
//!
//! ```toml
//! name = "student"
//! [[layers]]
//! type = "conv2d"
//! filters = 32
//! kernel = 3
//! stride = 2
//! padding = "same"
//! [[layers]]
//! type = "leaky_relu"
//! slope = 0.2
//! ```
//!
//! The input shape is not part of the spec: it comes from the dataset, so one spec serves
//! 3x32x32 and 1x28x28. [`ModelSpec::infer`] walks the layers for a given input, checking every
//! layer and computing output shapes, parameter counts and FLOPs before any weight exists.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a convolution or pooling window treats the border: Keras/TensorFlow's `"same"` and
/// `"valid"`, or PyTorch's symmetric padding written as a number (`padding = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Output size `ceil(in / stride)`; the total padding is split with the extra pixel at the
    /// bottom/right, exactly as TensorFlow does.
    #[default]
    Same,
    /// No padding: output size `floor((in - kernel) / stride) + 1`.
    Valid,
    /// `n` zero pixels on every side, as PyTorch's `padding=n`: output size
    /// `floor((in + 2n - kernel) / stride) + 1`. Weights trained in PyTorch need it: with stride 2,
    /// TensorFlow's 'same' pads only the bottom/right, PyTorch pads both sides.
    Explicit(usize),
}

/// Padding as TOML writes it: a string (`"same"`, `"valid"`) or a number of pixels.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PaddingRepr {
    Pixels(usize),
    Named(String),
}

impl Serialize for Padding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Padding::Same => PaddingRepr::Named("same".into()),
            Padding::Valid => PaddingRepr::Named("valid".into()),
            Padding::Explicit(n) => PaddingRepr::Pixels(n),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match PaddingRepr::deserialize(deserializer)? {
            PaddingRepr::Pixels(n) => Ok(Padding::Explicit(n)),
            PaddingRepr::Named(name) => match name.as_str() {
                "same" => Ok(Padding::Same),
                "valid" => Ok(Padding::Valid),
                other => Err(serde::de::Error::custom(format!(
                    "unknown padding `{other}`: expected \"same\", \"valid\" or a number of pixels per side"
                ))),
            },
        }
    }
}

impl Padding {
    /// The padding (before, after) along an axis of `input` pixels.
    pub fn amounts(self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Same => same_padding(input, kernel, stride),
            Padding::Valid => (0, 0),
            Padding::Explicit(n) => (n, n),
        }
    }
}

/// Activation applied by a dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
}

/// One layer of a [`ModelSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// 2-D convolution with bias.
    Conv2d {
        /// Output channels.
        filters: usize,
        /// Square kernel side.
        kernel: usize,
        /// Stride in both directions.
        #[serde(default = "one")]
        stride: usize,
        /// Border handling.
        #[serde(default)]
        padding: Padding,
        /// Whether the convolution adds a bias (PyTorch's ResNets have none: a batch norm follows).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        /// Channel groups: input and output channels split into `groups` independent
        /// convolutions (`groups` = input channels = filters is a depthwise convolution).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// `x` if positive, else `slope * x`.
    LeakyRelu {
        /// Negative slope (Keras' `negative_slope`; the reference uses 0.2).
        slope: f64,
    },
    /// `max(x, 0)`.
    Relu,
    /// 2-D max pooling.
    MaxPool2d {
        /// Square window side.
        size: usize,
        /// Stride; Keras defaults it to the window size.
        #[serde(default)]
        stride: Option<usize>,
        /// Border handling.
        #[serde(default)]
        padding: Padding,
    },
    /// Randomly zeroes inputs with probability `rate` while training (inverted dropout).
    Dropout {
        /// Drop probability in `[0, 1)`.
        rate: f64,
    },
    /// Channels x height x width → one feature vector.
    Flatten,
    /// Fully connected layer with bias.
    Dense {
        /// Output features.
        units: usize,
        /// Optional activation after the affine map.
        #[serde(default)]
        activation: Option<Activation>,
    },
    /// Batch normalisation over channels (4-D) or features (2-D).
    BatchNorm {
        /// Added to the variance before the square root: Keras' 1e-3 when absent; PyTorch's
        /// default is 1e-5 (set it for weights trained there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epsilon: Option<f64>,
        /// Weight of a batch's statistics in the running averages, PyTorch's convention: Keras'
        /// 0.01 (its `momentum = 0.99`) when absent; PyTorch's default is 0.1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        momentum: Option<f64>,
    },
    /// Mean over height and width: channels x height x width → channels.
    GlobalAvgPool,
    /// A residual block: `body(x) + shortcut(x)`, optionally followed by ReLU, repeated as a
    /// stage. See [`Shortcut`] for the shortcuts and [`LayerSpec::residual`] for `repeat`.
    Residual {
        /// Blocks in the stage. The first is as written; each further block runs the same body
        /// with every stride set to 1 on the previous block's output, with an identity shortcut.
        #[serde(default = "one")]
        repeat: usize,
        /// The block's layers (convolutions, norms, activations, pools).
        body: Vec<LayerSpec>,
        /// What is added to the body's output.
        #[serde(default)]
        shortcut: Shortcut,
        /// Whether ReLU follows the addition (the original ResNet's basic block).
        #[serde(default)]
        relu: bool,
    },
}

/// The shortcut of a residual block: what carries the block's input to the addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// The input itself: the body must keep its shape (no stride, same channels).
    #[default]
    Identity,
    /// He et al.'s option A: every `stride`-th pixel of the input, with the new channels
    /// zero-filled, half before and half after (the odd one after). No parameters.
    ZeroPad,
    /// Option B: a 1×1 convolution without bias at the body's stride, then batch norm
    /// (epsilon 1e-5, momentum 0.1: PyTorch's defaults, as the block comes from there).
    Projection,
    /// A 1×1 convolution without bias at the body's stride, alone (Wide ResNet's `convShortcut`).
    Conv,
    /// No shortcut: the block is its body alone (MobileNetV2's blocks that change the shape).
    None,
}

impl Shortcut {
    /// The name as written in TOML.
    pub fn name(self) -> &'static str {
        match self {
            Shortcut::Identity => "identity",
            Shortcut::ZeroPad => "zero_pad",
            Shortcut::Projection => "projection",
            Shortcut::Conv => "conv",
            Shortcut::None => "none",
        }
    }
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl LayerSpec {
    /// The layer's `type` name as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::LeakyRelu { .. } => "leaky_relu",
            LayerSpec::Relu => "relu",
            LayerSpec::MaxPool2d { .. } => "max_pool2d",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dense { .. } => "dense",
            LayerSpec::BatchNorm { .. } => "batch_norm",
            LayerSpec::GlobalAvgPool => "global_avg_pool",
            LayerSpec::Residual { .. } => "residual",
        }
    }

    /// Convenience constructor: `conv2d` with 'same' padding.
    pub fn conv(filters: usize, kernel: usize, stride: usize) -> Self {
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding: Padding::Same,
            bias: true,
            groups: 1,
        }
    }

    /// Convenience constructor: PyTorch's `Conv2d(..., padding=kernel // 2, bias=False)`, the
    /// convolution of residual networks.
    pub fn torch_conv(filters: usize, kernel: usize, stride: usize, groups: usize) -> Self {
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding: Padding::Explicit(kernel / 2),
            bias: false,
            groups,
        }
    }

    /// Convenience constructor: PyTorch's `BatchNorm2d` defaults (epsilon 1e-5, momentum 0.1).
    pub fn torch_batch_norm() -> Self {
        LayerSpec::BatchNorm {
            epsilon: Some(1e-5),
            momentum: Some(0.1),
        }
    }

    /// Convenience constructor: a stage of `repeat` residual blocks (see
    /// [`LayerSpec::Residual`]).
    pub fn residual(repeat: usize, body: Vec<LayerSpec>, shortcut: Shortcut, relu: bool) -> Self {
        LayerSpec::Residual {
            repeat,
            body,
            shortcut,
            relu,
        }
    }

    /// Convenience constructor: `max_pool2d` with 'same' padding.
    pub fn max_pool(size: usize, stride: usize) -> Self {
        LayerSpec::MaxPool2d {
            size,
            stride: Some(stride),
            padding: Padding::Same,
        }
    }

    /// Convenience constructor: `dense`, optionally followed by ReLU.
    pub fn dense(units: usize, relu: bool) -> Self {
        LayerSpec::Dense {
            units,
            activation: relu.then_some(Activation::Relu),
        }
    }
}

/// A whole model: a name and its layers, applied in order. The last layer must produce 2-D logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Human-readable name (a zoo name, or the file stem).
    pub name: String,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
}

/// A spec that cannot work, located by layer index (0-based) and field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A layer is inconsistent with its input or has an impossible value.
    #[error("layer {index} ({kind}), field `{field}`: {message}")]
    Layer {
        /// 0-based layer index.
        index: usize,
        /// The layer's `type`.
        kind: String,
        /// The offending field (or `input` when the incoming shape is the problem).
        field: &'static str,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The TOML itself could not be parsed.
    #[error("{0}")]
    Parse(String),
    /// A problem with the model as a whole (empty, does not end in logits, ...).
    #[error("{0}")]
    Model(String),
}

/// The shape flowing between layers (batch dimension omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Shape {
    /// Channels, height, width.
    Image([usize; 3]),
    /// Features.
    Flat(usize),
}

impl Shape {
    /// Number of values per example.
    pub fn numel(self) -> usize {
        match self {
            Shape::Image([c, h, w]) => c * h * w,
            Shape::Flat(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Image([c, h, w]) => write!(f, "({c}, {h}, {w})"),
            Shape::Flat(n) => write!(f, "({n})"),
        }
    }
}

/// What [`ModelSpec::infer`] learns about one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerInfo {
    /// The layer's `type`.
    pub kind: &'static str,
    /// Shape of one example after this layer.
    pub output: Shape,
    /// Parameters, batch norm's running mean and variance included (Keras' "Total params").
    pub params: usize,
    /// Trainable parameters only (PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub trainable: usize,
    /// Forward floating-point operations per example (a multiply-add counts 2; only conv and dense).
    pub flops: u64,
}

/// Output size of a window op along one axis, with Keras semantics.
pub fn output_size(input: usize, kernel: usize, stride: usize, padding: Padding) -> Option<usize> {
    match padding {
        Padding::Same => Some(input.div_ceil(stride)),
        Padding::Valid => (input >= kernel).then(|| (input - kernel) / stride + 1),
        Padding::Explicit(n) => {
            let padded = input.checked_add(n.checked_mul(2)?)?;
            (padded >= kernel).then(|| (padded - kernel) / stride + 1)
        }
    }
}

/// `a·b·…`, or `None` when the product does not fit in a `usize`: absurd sizes in a spec must give
/// an error, not an overflow (a panic in a debug build, a wrong count in a release build).
fn checked_product(factors: &[usize]) -> Option<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
}

/// How a window too large for its input was padded, for the error message.
fn padding_note(padding: Padding) -> String {
    match padding {
        Padding::Explicit(n) => format!(" padded by {n} on each side"),
        _ => " with 'valid' padding".into(),
    }
}

/// The message for a count that does not fit in a `usize`.
fn too_large(what: &str) -> String {
    format!(
        "{what} does not fit in a {}-bit count; expected a model small enough to hold in memory",
        usize::BITS
    )
}

/// TensorFlow's 'same' padding along one axis as (before, after): the total is split with the odd
/// pixel after, so stride 2 on an even size pads only the bottom/right.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

impl ModelSpec {
    /// Parses a spec from TOML text. Errors name the layer index for per-layer problems.
    pub fn from_toml_str(text: &str) -> Result<Self, SpecError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: Option<String>,
            layers: Vec<toml::Value>,
        }
        let raw: Raw = toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        let layers = raw
            .layers
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                let kind = value
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("?")
                    .to_string();
                value.try_into::<LayerSpec>().map_err(|e| SpecError::Layer {
                    index,
                    kind,
                    field: "type",
                    message: e.to_string().trim().to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelSpec {
            name: raw.name.unwrap_or_else(|| "model".into()),
            layers,
        })
    }

    /// Reads a spec file; the name defaults to the file stem.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read model spec {}: {e}", path.display()))?;
        let mut spec = Self::from_toml_str(&text)
            .map_err(|e| anyhow::anyhow!("model spec {}: {e}", path.display()))?;
        if spec.name == "model" {
            if let Some(stem) = path.file_stem() {
                spec.name = stem.to_string_lossy().into_owned();
            }
        }
        Ok(spec)
    }

    /// The rates of the spec's dropout layers, in order.
    pub fn dropout_rates(&self) -> Vec<f64> {
        self.layers
            .iter()
            .filter_map(|l| match l {
                LayerSpec::Dropout { rate } => Some(*rate),
                _ => None,
            })
            .collect()
    }

    /// The same architecture with its dropout layers set to `rates` (one per dropout layer, in
    /// order; 0 turns a layer off). Dropout has no weights, so the parameter count and the
    /// checkpoints' shapes are unchanged: a study can tune it per arm.
    pub fn with_dropout_rates(&self, rates: &[f64]) -> Result<ModelSpec, SpecError> {
        let current = self.dropout_rates();
        if rates.len() != current.len() {
            return Err(SpecError::Model(format!(
                "model `{}` has {} dropout layer(s) (rates {:?}), but {} dropout rate(s) were given ({rates:?}); give one rate per dropout layer",
                self.name,
                current.len(),
                current,
                rates.len()
            )));
        }
        let mut given = rates.iter();
        let mut spec = self.clone();
        for (index, layer) in spec.layers.iter_mut().enumerate() {
            if let LayerSpec::Dropout { rate } = layer {
                let new = *given.next().expect("counted above");
                if !(0.0..1.0).contains(&new) {
                    return Err(SpecError::Layer {
                        index,
                        kind: "dropout".into(),
                        field: "rate",
                        message: format!("dropout rate must be in [0, 1), got {new}"),
                    });
                }
                *rate = new;
            }
        }
        Ok(spec)
    }

    /// The first difference between the layers of `self` and `other` that changes weights or
    /// shapes (dropout rates are ignored), described with both values; `None` when compatible.
    pub fn first_weight_difference(&self, other: &ModelSpec) -> Option<String> {
        let strip = |spec: &ModelSpec| -> Vec<LayerSpec> {
            spec.layers
                .iter()
                .map(|l| match l {
                    LayerSpec::Dropout { .. } => LayerSpec::Dropout { rate: 0.0 },
                    other => other.clone(),
                })
                .collect()
        };
        let (a, b) = (strip(self), strip(other));
        for (index, (x, y)) in a.iter().zip(&b).enumerate() {
            if x != y {
                return Some(format!(
                    "layer {index} differs: {} here, {} there",
                    toml_inline(x),
                    toml_inline(y)
                ));
            }
        }
        (a.len() != b.len()).then(|| format!("{} layers here, {} there", a.len(), b.len()))
    }

    /// The spec as TOML text (round-trips through [`ModelSpec::from_toml_str`]).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a model spec always serialises to TOML")
    }

    /// Checks every layer against the shape flowing into it and returns, per layer, the output
    /// shape, parameter count and FLOPs. The model must end with 2-D logits.
    pub fn infer(&self, input: [usize; 3]) -> Result<Vec<LayerInfo>, SpecError> {
        if self.layers.is_empty() {
            return Err(SpecError::Model(format!(
                "model `{}` has no layers",
                self.name
            )));
        }
        if input.contains(&0) {
            return Err(SpecError::Model(format!(
                "input shape {input:?} has a zero dimension"
            )));
        }
        let mut shape = Shape::Image(input);
        let mut infos = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let info = layer_info(index, layer, shape)?;
            shape = info.output;
            infos.push(info);
        }
        if let Shape::Image(chw) = shape {
            return Err(SpecError::Model(format!(
                "model `{}` ends with a {chw:?} feature map; it must end with flat logits (add `flatten` and a `dense` layer)",
                self.name
            )));
        }
        Ok(infos)
    }

    /// The same model with its last layer predicting `outputs` classes (a zoo model for CIFAR-100,
    /// say); `None` when the model does not end in a dense layer.
    pub fn with_outputs(&self, outputs: usize) -> Option<ModelSpec> {
        let mut spec = self.clone();
        match spec.layers.last_mut()? {
            LayerSpec::Dense { units, .. } => *units = outputs,
            _ => return None,
        }
        Some(spec)
    }

    /// Number of output logits (classes) for an input shape.
    pub fn num_outputs(&self, input: [usize; 3]) -> Result<usize, SpecError> {
        let infos = self.infer(input)?;
        Ok(infos.last().map(|i| i.output.numel()).unwrap_or(0))
    }
}

/// Checks layer `index` against the shape flowing into it and returns its output shape,
/// parameter count and FLOPs.
pub fn layer_info(index: usize, layer: &LayerSpec, shape: Shape) -> Result<LayerInfo, SpecError> {
    let err = |field: &'static str, message: String| SpecError::Layer {
        index,
        kind: layer.kind().to_string(),
        field,
        message,
    };
    let need_image = |shape: Shape| match shape {
        Shape::Image(chw) => Ok(chw),
        Shape::Flat(n) => Err(err(
            "input",
            format!("needs a 3-D (channels, height, width) input but gets ({n}) after a flatten"),
        )),
    };
    let (output, params, flops) = match *layer {
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            bias,
            groups,
        } => {
            let [c, h, w] = need_image(shape)?;
            if filters == 0 {
                return Err(err("filters", "must be at least 1".into()));
            }
            if kernel == 0 {
                return Err(err("kernel", "must be at least 1".into()));
            }
            if stride == 0 {
                return Err(err("stride", "must be at least 1".into()));
            }
            if groups == 0 || c % groups != 0 || filters % groups != 0 {
                return Err(err(
                    "groups",
                    format!("{groups} group(s) must divide both the {c} input channels and the {filters} filters"),
                ));
            }
            if let Padding::Explicit(n) = padding {
                if n >= kernel {
                    return Err(err(
                        "padding",
                        format!("{n} pixels per side is not less than the {kernel}x{kernel} kernel; expected at most {}", kernel - 1),
                    ));
                }
            }
            let (Some(oh), Some(ow)) = (
                output_size(h, kernel, stride, padding),
                output_size(w, kernel, stride, padding),
            ) else {
                return Err(err(
                    "kernel",
                    format!(
                        "{kernel}x{kernel} is larger than its {h}x{w} input{}",
                        padding_note(padding)
                    ),
                ));
            };
            let weights = checked_product(&[kernel, kernel, c / groups, filters]);
            let params = weights.and_then(|w| w.checked_add(if bias { filters } else { 0 }));
            let flops = weights.and_then(|w| checked_product(&[2, w, oh, ow]));
            let (Some(params), Some(flops)) = (params, flops) else {
                return Err(err(
                        "filters",
                        too_large(&format!(
                            "{filters} filters of {kernel}x{kernel}x{c} on a {oh}x{ow} output: the parameter or FLOP count"
                        )),
                    ));
            };
            (Shape::Image([filters, oh, ow]), params, flops as u64)
        }
        LayerSpec::MaxPool2d {
            size,
            stride,
            padding,
        } => {
            let [c, h, w] = need_image(shape)?;
            if size == 0 {
                return Err(err("size", "must be at least 1".into()));
            }
            let stride = stride.unwrap_or(size);
            if stride == 0 {
                return Err(err("stride", "must be at least 1".into()));
            }
            let (Some(oh), Some(ow)) = (
                output_size(h, size, stride, padding),
                output_size(w, size, stride, padding),
            ) else {
                return Err(err(
                    "size",
                    format!(
                        "{size}x{size} window is larger than its {h}x{w} input{}",
                        padding_note(padding)
                    ),
                ));
            };
            (Shape::Image([c, oh, ow]), 0, 0)
        }
        LayerSpec::LeakyRelu { slope } => {
            if !slope.is_finite() {
                return Err(err("slope", format!("must be finite, got {slope}")));
            }
            (shape, 0, 0)
        }
        LayerSpec::Relu => (shape, 0, 0),
        LayerSpec::Dropout { rate } => {
            if !(0.0..1.0).contains(&rate) {
                return Err(err("rate", format!("must be in [0, 1), got {rate}")));
            }
            (shape, 0, 0)
        }
        LayerSpec::Flatten => {
            let [c, h, w] = need_image(shape)?;
            let Some(n) = checked_product(&[c, h, w]) else {
                return Err(err(
                    "input",
                    too_large(&format!("the flattened size of its {shape} input")),
                ));
            };
            (Shape::Flat(n), 0, 0)
        }
        LayerSpec::GlobalAvgPool => {
            let [c, _, _] = need_image(shape)?;
            (Shape::Flat(c), 0, 0)
        }
        LayerSpec::BatchNorm { .. } => {
            let channels = match shape {
                Shape::Image([c, _, _]) => c,
                Shape::Flat(n) => n,
            };
            let Some(params) = channels.checked_mul(4) else {
                return Err(err(
                    "input",
                    too_large(&format!(
                        "the parameter count (4 per channel) of its {shape} input"
                    )),
                ));
            };
            (shape, params, 0)
        }
        LayerSpec::Dense { units, .. } => {
            let Shape::Flat(n) = shape else {
                return Err(err(
                        "input",
                        format!("needs a flat input but gets {shape}; add a `flatten` or `global_avg_pool` before it"),
                    ));
            };
            if units == 0 {
                return Err(err("units", "must be at least 1".into()));
            }
            let weights = n.checked_mul(units);
            let params = weights.and_then(|w| w.checked_add(units));
            let flops = weights.and_then(|w| w.checked_mul(2));
            let (Some(params), Some(flops)) = (params, flops) else {
                return Err(err(
                    "units",
                    too_large(&format!(
                        "{units} units on {n} input features: the parameter or FLOP count"
                    )),
                ));
            };
            (Shape::Flat(units), params, flops as u64)
        }
        LayerSpec::Residual {
            repeat,
            ref body,
            shortcut,
            ..
        } => return residual_info(index, repeat, body, shortcut, shape),
    };
    let trainable = match layer {
        // gamma and beta; the running mean and variance are statistics, not parameters
        LayerSpec::BatchNorm { .. } => params / 2,
        _ => params,
    };
    Ok(LayerInfo {
        kind: layer.kind(),
        output,
        params,
        trainable,
        flops,
    })
}

/// Runs [`layer_info`] over `layers` from `shape`: every layer's info, or the index and error of
/// the first that does not fit.
pub fn sequence_info(
    layers: &[LayerSpec],
    mut shape: Shape,
) -> Result<Vec<LayerInfo>, (usize, SpecError)> {
    let mut infos = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().enumerate() {
        let info = layer_info(index, layer, shape).map_err(|e| (index, e))?;
        shape = info.output;
        infos.push(info);
    }
    Ok(infos)
}

/// The layers of a residual stage's `block`-th block: the body as written for the first, with
/// every stride set to 1 for the others.
pub fn block_body(body: &[LayerSpec], block: usize) -> Vec<LayerSpec> {
    let mut layers = body.to_vec();
    if block > 0 {
        for layer in &mut layers {
            match layer {
                LayerSpec::Conv2d { stride, .. } => *stride = 1,
                LayerSpec::MaxPool2d { stride, .. } => *stride = Some(1),
                _ => {}
            }
        }
    }
    layers
}

/// The stride a block's body applies (the product of its convolutions' and pools' strides).
pub fn body_stride(body: &[LayerSpec]) -> usize {
    body.iter()
        .map(|layer| match *layer {
            LayerSpec::Conv2d { stride, .. } => stride,
            LayerSpec::MaxPool2d { size, stride, .. } => stride.unwrap_or(size),
            _ => 1,
        })
        .product()
}

/// The shape a shortcut gives to an input of `[c, h, w]` for a body with `stride` and `filters`
/// output channels (`None` for a block without shortcut).
pub fn shortcut_output(
    shortcut: Shortcut,
    [c, h, w]: [usize; 3],
    stride: usize,
    filters: usize,
) -> Option<[usize; 3]> {
    match shortcut {
        Shortcut::Identity => Some([c, h, w]),
        Shortcut::ZeroPad => Some([filters.max(c), h.div_ceil(stride), w.div_ceil(stride)]),
        Shortcut::Projection | Shortcut::Conv => {
            Some([filters, h.div_ceil(stride), w.div_ceil(stride)])
        }
        Shortcut::None => None,
    }
}

/// [`layer_info`] of a residual stage: the body checked block by block, then its shortcut.
fn residual_info(
    index: usize,
    repeat: usize,
    body: &[LayerSpec],
    shortcut: Shortcut,
    input: Shape,
) -> Result<LayerInfo, SpecError> {
    let err = |field: &'static str, message: String| SpecError::Layer {
        index,
        kind: "residual".into(),
        field,
        message,
    };
    let Shape::Image(chw) = input else {
        return Err(err(
            "input",
            format!("needs a 3-D (channels, height, width) input but gets {input} after a flatten"),
        ));
    };
    if repeat == 0 {
        return Err(err("repeat", "must be at least 1".into()));
    }
    if body.is_empty() {
        return Err(err(
            "body",
            "is empty; a block needs at least one layer".into(),
        ));
    }
    let (mut shape, mut params, mut trainable, mut flops) = (chw, 0usize, 0usize, 0u64);
    for block in 0..repeat {
        let layers = block_body(body, block);
        let kind = if block == 0 {
            shortcut
        } else {
            Shortcut::Identity
        };
        let infos = sequence_info(&layers, Shape::Image(shape)).map_err(|(j, e)| {
            err(
                "body",
                format!("block {block}, body layer {j} {}", inner_message(&e)),
            )
        })?;
        let Some(Shape::Image(out)) = infos.last().map(|i| i.output) else {
            return Err(err(
                "body",
                "must end with a feature map (no flatten, dense or global pool in a block)".into(),
            ));
        };
        let stride = body_stride(&layers);
        let joined = shortcut_output(kind, shape, stride, out[0]);
        if let Some(joined) = joined {
            if joined != out {
                return Err(err(
                    "shortcut",
                    shortcut_mismatch(kind, block, shape, stride, out, joined),
                ));
            }
        }
        let (extra, extra_flops) = shortcut_params(kind, shape[0], out);
        for info in &infos {
            params += info.params;
            trainable += info.trainable;
            flops += info.flops;
        }
        params += extra;
        trainable += if kind == Shortcut::Projection {
            extra - 2 * out[0]
        } else {
            extra
        };
        flops += extra_flops;
        shape = out;
    }
    Ok(LayerInfo {
        kind: "residual",
        output: Shape::Image(shape),
        params,
        trainable,
        flops,
    })
}

/// Parameters (running statistics included) and FLOPs of a shortcut from `in_channels` to `out`.
fn shortcut_params(shortcut: Shortcut, in_channels: usize, out: [usize; 3]) -> (usize, u64) {
    let [filters, h, w] = out;
    let conv = in_channels * filters;
    let flops = (2 * conv * h * w) as u64;
    match shortcut {
        Shortcut::Projection => (conv + 4 * filters, flops),
        Shortcut::Conv => (conv, flops),
        Shortcut::Identity | Shortcut::ZeroPad | Shortcut::None => (0, 0),
    }
}

/// Why a block's shortcut cannot be added to its body's output, and what would fit.
fn shortcut_mismatch(
    shortcut: Shortcut,
    block: usize,
    input: [usize; 3],
    stride: usize,
    body: [usize; 3],
    joined: [usize; 3],
) -> String {
    let shape = |s: [usize; 3]| Shape::Image(s).to_string();
    let advice = match shortcut {
        Shortcut::Identity if block > 0 => {
            "repeated blocks keep their shape: the body must map its own output shape to itself (same filters in and out)".to_string()
        }
        Shortcut::Identity => format!(
            "an identity shortcut needs a body that keeps the shape{}; use `zero_pad`, `projection` or `conv` for a block that changes it",
            if stride > 1 { format!(" (this body has stride {stride})") } else { String::new() }
        ),
        Shortcut::ZeroPad if body[0] < input[0] => {
            "`zero_pad` can only add channels; use `projection` or `conv` to reduce them".to_string()
        }
        _ => "the body's padding must keep ceil(size / stride), as a 1x1 stride-s shortcut does".to_string(),
    };
    format!(
        "block {block}: the body maps {} to {}, but the `{}` shortcut gives {}; {advice}",
        shape(input),
        shape(body),
        shortcut.name(),
        shape(joined)
    )
}

/// The message of a nested layer's error, with its layer kind and field.
fn inner_message(error: &SpecError) -> String {
    match error {
        SpecError::Layer {
            kind,
            field,
            message,
            ..
        } => format!("({kind}), field `{field}`: {message}"),
        other => other.to_string(),
    }
}

/// Totals over a model for one input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    /// Parameters (all weights, including batch-norm statistics).
    pub params: usize,
    /// Trainable parameters (batch-norm statistics excluded), PyTorch's count.
    pub trainable: usize,
    /// Forward FLOPs per example.
    pub flops: u64,
    /// Bytes of the weights as f32.
    pub bytes: usize,
}

impl ModelSpec {
    /// Parameter, FLOP and weight-size totals for an input shape.
    pub fn stats(&self, input: [usize; 3]) -> Result<ModelStats, SpecError> {
        let infos = self.infer(input)?;
        let params = infos
            .iter()
            .try_fold(0usize, |acc, i| acc.checked_add(i.params));
        let trainable: usize = infos.iter().map(|i| i.trainable).sum();
        let flops = infos
            .iter()
            .try_fold(0u64, |acc, i| acc.checked_add(i.flops));
        let bytes = params.and_then(|p| p.checked_mul(4));
        let (Some(params), Some(flops), Some(bytes)) = (params, flops, bytes) else {
            return Err(SpecError::Model(format!(
                "model `{}`: {}",
                self.name,
                too_large("the total parameter count, FLOP count or weight size in bytes")
            )));
        };
        Ok(ModelStats {
            params,
            trainable,
            flops,
            bytes,
        })
    }
}

/// One layer as compact text for error messages, e.g. `conv2d {filters = 32, ...}`.
fn toml_inline(layer: &LayerSpec) -> String {
    serde_json::to_string(layer).unwrap_or_else(|_| layer.kind().to_string())
}
