//! `distill export` (a trained model as ONNX for any runtime) and `distill predict` (classify
//! image files with a checkpoint or an ONNX model).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use clap::{Args, ValueEnum};

use super::train::TeacherImportArgs;
use crate::backend::Backend;
use crate::models::checkpoint::{self, write_atomic};
use crate::onnx;

/// Formats `distill export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// ONNX, opset 13: dynamic batch, NCHW float32 input in [0, 1], logits out.
    Onnx,
    /// safetensors: the weights under PyTorch-style names, the spec and classes in the metadata.
    Safetensors,
}

/// Options of `distill export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Checkpoint directory (the --out of a train or distill run), or a PyTorch checkpoint
    /// (`.pth`/`.pt`/`.th`) with --spec.
    #[arg(long)]
    pub model: PathBuf,
    /// Architecture of a PyTorch checkpoint: a zoo name (`resnet56`) or a spec .toml.
    #[arg(long)]
    pub spec: Option<String>,
    /// Input shape CxHxW of a PyTorch checkpoint (a checkpoint directory records its own).
    #[arg(long, default_value = "3x32x32", value_parser = super::parse_shape)]
    pub input: [usize; 3],
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
    pub format: ExportFormat,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `distill export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let device = Backend::default_compiled().device()?.without_autodiff();
    let loaded = if crate::models::pytorch::is_pytorch(&args.model) {
        let Some(spec) = &args.spec else {
            anyhow::bail!(
                "{} is a PyTorch checkpoint: give its architecture with --spec (a zoo name such as resnet56, or a spec .toml)",
                args.model.display()
            );
        };
        let spec = crate::models::resolve_spec(spec).context("--spec")?;
        let torch = crate::models::pytorch::load(&args.model, &spec, args.input, None, &device)?;
        checkpoint::LoadedModel {
            meta: checkpoint::ModelMeta {
                format: 1,
                input: args.input,
                classes: (0..torch.classes).map(|c| c.to_string()).collect(),
                params: torch.spec.stats(args.input)?.params,
            },
            spec: torch.spec,
            network: torch.network,
        }
    } else {
        checkpoint::load(&args.model, &device)?
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let network = loaded.network.valid();
    let [c, h, w] = loaded.meta.input;
    match args.format {
        ExportFormat::Onnx => {
            let bytes = onnx::to_onnx_bytes(
                &loaded.spec,
                &network,
                loaded.meta.input,
                &loaded.meta.classes,
            )
            .with_context(|| format!("cannot export {} to ONNX", args.model.display()))?;
            write_atomic(&args.out, &bytes)?;
            println!(
                "{}: ONNX opset {}, input `{}` [batch, {c}, {h}, {w}] float32 in [0, 1] (NCHW), output `{}` [batch, {}] logits; {} bytes",
                args.out.display(),
                onnx::export::OPSET,
                onnx::export::INPUT_NAME,
                onnx::export::OUTPUT_NAME,
                loaded.meta.classes.len(),
                bytes.len()
            );
        }
        ExportFormat::Safetensors => {
            crate::models::safetensors::save(
                &args.out,
                &loaded.spec,
                &network,
                loaded.meta.input,
                &loaded.meta.classes,
            )?;
            println!(
                "{}: safetensors, PyTorch-style names (layers.<i>.weight, layers.<i>.linear.weight [out, in], ...), spec and classes in the metadata",
                args.out.display()
            );
        }
    }
    Ok(())
}

/// Options of `distill predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint directory or ONNX classifier (`.onnx`).
    #[arg(long)]
    pub model: PathBuf,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Print one JSON object per image: {"file", "predictions": [{"class", "probability"}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub import: TeacherImportArgs,
    /// PNG or JPEG files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `distill predict`.
pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    if args.top == 0 {
        anyhow::bail!("--top must be at least 1");
    }
    let device = Backend::default_compiled().device()?.without_autodiff();
    let options = args.import.options(None)?;
    let model = crate::classifier::load_classifier(&args.model, &options, &device)?;
    let engine = model.engine.valid();
    let names: Vec<String> = match &model.classes {
        Some(names) => names.clone(),
        None => (0..model.outputs).map(|i| format!("class {i}")).collect(),
    };
    for file in &args.images {
        let pixels = load_image(file, model.input)?;
        let [c, h, w] = model.input;
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [1, c, h, w]), &device);
        let probabilities: Vec<f32> = softmax(engine.forward(images)?, 1)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 probabilities");
        let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(args.top);
        if args.json {
            let predictions: Vec<serde_json::Value> = ranked
                .iter()
                .map(|&(i, p)| serde_json::json!({"class": names[i], "probability": p}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"file": file.display().to_string(), "predictions": predictions})
            );
        } else {
            let shown: Vec<String> = ranked
                .iter()
                .map(|&(i, p)| format!("{} {:.1}%", names[i], 100.0 * p))
                .collect();
            println!("{}: {}", file.display(), shown.join(", "));
        }
    }
    Ok(())
}

/// The image at `path` as C×H×W floats in [0, 1] for a model taking `input` images: converted
/// to grayscale or RGB, and resized (with a note on stderr) when its size differs.
fn load_image(path: &Path, input: [usize; 3]) -> anyhow::Result<Vec<f32>> {
    let [c, h, w] = input;
    let image = image::open(path).with_context(|| {
        format!(
            "cannot decode image {} (PNG or JPEG expected)",
            path.display()
        )
    })?;
    let image = if (image.width() as usize, image.height() as usize) != (w, h) {
        eprintln!(
            "note: {} is {}x{}; resized to the model's {w}x{h}",
            path.display(),
            image.width(),
            image.height()
        );
        image.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        image
    };
    let (bytes, channels): (Vec<u8>, usize) = match c {
        1 => (image.to_luma8().into_raw(), 1),
        3 => (image.to_rgb8().into_raw(), 3),
        other => anyhow::bail!("the model takes {other}-channel images; only 1 (grayscale) or 3 (RGB) can be read from image files"),
    };
    // interleaved H×W×C bytes → planar C×H×W floats
    let mut pixels = vec![0.0f32; c * h * w];
    for (i, px) in bytes.chunks_exact(channels).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            pixels[ch * h * w + i] = f32::from(v) / 255.0;
        }
    }
    Ok(pixels)
}
