//! The `distill` command line: argument parsing (clap) and dispatch to the library.
//! Every subcommand returns `anyhow::Result`; errors are printed as one paragraph, never a panic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod compare;
mod data;
mod deploy;
mod models;
mod run;
mod text;
mod train;

/// Knowledge distillation of image classifiers.
#[derive(Debug, Parser)]
#[command(name = "distill", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole study: teacher, student from scratch, distillation sweep, report.
    Run(run::RunArgs),
    /// Time the reference workloads (training steps, distillation steps, inference, data loading).
    Bench {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Worker threads for the compute pool (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed steps per workload.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = crate::backend::Backend::default_compiled())]
        backend: crate::backend::Backend,
        /// Also time burn's own layers in place of the local kernels (Flex), in the same
        /// process, and print the speed-up of each workload (conv/pool/dropout for the image
        /// workloads; the encoder layers, GELU and dropout with --text).
        #[arg(long)]
        compare_burn: bool,
        /// Time a text classifier instead: a Hugging Face encoder directory (with a fresh
        /// 2-class head) or a text model trained by distill, on batches of random token ids.
        #[arg(long, value_name = "MODEL_DIR")]
        text: Option<std::path::PathBuf>,
        /// Time one image architecture instead (a zoo name or a spec .toml): its training step
        /// at batch 64 and its inference at batch 256 on random 3x32x32 images.
        #[arg(long, value_name = "MODEL", conflicts_with = "text")]
        model: Option<String>,
        /// Time data-parallel training instead: the training step of teacher-v3 and resnet20
        /// (or --model) with the global batch split over the MPI ranks (run it under `mpirun`
        /// and alone, and compare), and every zoo model's gradient all-reduce.
        #[arg(long, conflicts_with_all = ["text", "compare_burn"])]
        data_parallel: bool,
        /// With --data-parallel: the global batch, split evenly over the ranks.
        #[arg(long, default_value_t = 64, requires = "data_parallel")]
        global_batch: usize,
        /// With --text: texts per batch of the throughput workload.
        #[arg(long, default_value_t = 64, requires = "text")]
        batch_size: usize,
        /// With --text: tokens per text.
        #[arg(long, default_value_t = 32, requires = "text")]
        seq_len: usize,
        /// With --text: texts per training step.
        #[arg(long, default_value_t = 32, requires = "text")]
        train_batch_size: usize,
    },
    /// Inspect datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// List the model zoo: parameters, forward FLOPs per image, weight size.
    Models {
        /// Input shape CxHxW (default: CIFAR-10's 3x32x32).
        #[arg(long, default_value = "3x32x32", value_parser = parse_shape)]
        input: [usize; 3],
        /// Print one JSON array of {"name", "params", "flops", "bytes"}.
        #[arg(long)]
        json: bool,
    },
    /// Train a model on labels (a teacher, or a student from scratch).
    Train {
        /// A zoo name (teacher-v1/v2/v3, student) or a spec .toml file.
        #[arg(long)]
        model: String,
        #[command(flatten)]
        args: train::TrainArgs,
    },
    /// Train a student from a trained teacher (knowledge distillation).
    Distill(Box<train::DistillArgs>),
    /// Test accuracy and cross-entropy of a trained model.
    Eval {
        /// Model directory (the --out of a train or distill run), an ONNX classifier (`.onnx`),
        /// a `.safetensors` file or a PyTorch checkpoint (`.pth`/`.pt`/`.th`, with --spec).
        #[arg(long)]
        model: std::path::PathBuf,
        #[command(flatten)]
        import: train::TeacherImportArgs,
        /// Dataset to evaluate on (its test split).
        #[arg(long, default_value = "embedded")]
        data: String,
        /// Print one JSON object {"accuracy", "loss", "samples"}.
        #[arg(long)]
        json: bool,
        /// Also time inference. Image models (any engine, e.g. an ONNX file with
        /// --onnx-engine native|tract): median latency of one image and median throughput at
        /// batch 256; text models: latency of one text, throughput over the test split in
        /// batches of 64.
        #[arg(long)]
        speed: bool,
        /// Worker threads for the compute pool (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = crate::backend::Backend::default_compiled())]
        backend: crate::backend::Backend,
    },
    /// Paired comparison of two arms of finished runs (one run directory per seed): mean ± std,
    /// the per-seed difference and its 95% interval.
    Compare(compare::CompareArgs),
    /// Export a trained model for other runtimes (ONNX).
    Export(deploy::ExportArgs),
    /// Classify PNG/JPEG files with a checkpoint or an ONNX model.
    Predict(deploy::PredictArgs),
    /// Per-layer summary of a model (like Keras' `model.summary()`).
    Summary {
        /// A zoo name, a spec .toml file, a checkpoint directory or an ONNX file.
        model: String,
        /// Input shape CxHxW.
        #[arg(long, default_value = "3x32x32", value_parser = parse_shape)]
        input: [usize; 3],
    },
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Print the number of images per split, the classes and the image shape.
    Info {
        /// Dataset: `embedded`, `cifar10[:DIR]`, `cifar100[:DIR]`, `cifar100-coarse[:DIR]`, `mnist[:DIR]`, `fashion-mnist[:DIR]`, `folder:DIR`, or text: `rotten-tomatoes[:DIR]`, `text:TRAIN[,TEST]`.
        spec: String,
        /// Print exactly one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the process arguments, runs the command and turns any error into a message and exit code 1.
pub fn main() -> ExitCode {
    // Before anything else: a rank that fails must take the others down with it (see
    // `distributed::fail`), and a build without MPI must not train N copies of one run.
    let _mpi = crate::distributed::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if crate::distributed::world().size > 1 => {
            crate::distributed::fail(&error_paragraph(&err), 1)
        }
        Err(err) => {
            eprintln!("error: {}", error_paragraph(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Export(args) => deploy::export(&args),
        Command::Predict(args) => deploy::predict(&args),
        Command::Bench {
            json,
            threads,
            steps,
            backend,
            compare_burn,
            text,
            model,
            batch_size,
            seq_len,
            train_batch_size,
            data_parallel,
            global_batch,
        } => match (text, model) {
            (None, model) if data_parallel => {
                set_threads(threads)?;
                bench_data_parallel(model.as_deref(), global_batch, steps, json, backend)
            }
            (Some(model), _) => {
                set_threads(threads)?;
                let options = crate::bench::TextBenchOptions {
                    batch_size,
                    seq_len,
                    train_batch_size,
                    steps,
                    warmup: 3,
                };
                text::bench(&model, &options, json, compare_burn, backend)
            }
            (None, model) => bench(
                model.as_deref(),
                json,
                threads,
                steps,
                backend,
                compare_burn,
            ),
        },
        Command::Data(DataCommand::Info { spec, json }) => data::info(&spec, json),
        Command::Models { input, json } => models::list(input, json),
        Command::Summary { model, input } => models::summary(&model, input),
        Command::Train { model, args } => train::train(&model, &args),
        Command::Distill(args) => train::distill(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::Eval {
            model,
            data,
            import,
            json,
            speed,
            threads,
            backend,
        } => {
            set_threads(threads)?;
            train::eval(&model, &data, &import, json, speed, backend)
        }
    }
}

/// Bounds the compute pool to `threads` workers (Flex runs its kernels on rayon's global pool).
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(threads) = threads {
        if threads == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot size the thread pool: {e}"))?;
    }
    Ok(())
}

/// `distill bench --data-parallel`: rank 0 prints the tables.
fn bench_data_parallel(
    model: Option<&str>,
    global_batch: usize,
    steps: usize,
    json: bool,
    backend: crate::backend::Backend,
) -> anyhow::Result<()> {
    if steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let names: Vec<&str> = match model {
        Some(name) => vec![name],
        None => vec!["teacher-v3", "resnet20"],
    };
    let specs = names
        .iter()
        .map(|name| crate::models::resolve_spec(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = backend.device()?;
    let result = crate::bench::run_parallel(&specs, global_batch, steps, &device)?;
    if crate::distributed::is_root() {
        if json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            print!("{}", crate::bench::parallel_table(&result));
        }
    }
    Ok(())
}

/// `distill bench`: the reference workloads, or with `model` one architecture's training step and
/// inference.
fn bench(
    model: Option<&str>,
    json: bool,
    threads: Option<usize>,
    steps: usize,
    backend: crate::backend::Backend,
    compare_burn: bool,
) -> anyhow::Result<()> {
    if steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let spec = model.map(crate::models::resolve_spec).transpose()?;
    set_threads(threads)?;
    let device = backend.device()?;
    let options = crate::bench::BenchOptions { steps, warmup: 3 };
    let output = match &spec {
        Some(spec) => {
            let result = measure_against_burn(
                compare_burn,
                &device,
                backend,
                || crate::bench::run_model(spec, &options, &device, backend.name()),
                crate::bench::ModelBenchResult::compared_with,
            )?;
            if json {
                serde_json::to_string(&result)?
            } else {
                crate::bench::model_table(&result)
            }
        }
        None => {
            if !json {
                eprintln!(
                    "benchmarking ({steps} timed steps per workload; the teacher steps take a while)..."
                );
            }
            let result = measure_against_burn(
                compare_burn,
                &device,
                backend,
                || crate::bench::run(&options, &device, backend.name()),
                crate::bench::BenchResult::compared_with,
            )?;
            if json {
                serde_json::to_string(&result)?
            } else {
                crate::bench::table(&result)
            }
        }
    };
    println!("{}", output.trim_end());
    Ok(())
}

/// `measure()` with the local kernels; with `compare_burn`, first with burn's layers in the same
/// process, the two joined by `compare(result, baseline)`. The comparison needs a backend that
/// uses the kernels.
fn measure_against_burn<R>(
    compare_burn: bool,
    device: &burn::tensor::Device,
    backend: crate::backend::Backend,
    measure: impl Fn() -> anyhow::Result<R>,
    compare: impl FnOnce(R, R) -> R,
) -> anyhow::Result<R> {
    let baseline = if compare_burn {
        if !crate::kernels::active(device) {
            anyhow::bail!(
                "--compare-burn compares the local Flex kernels with burn's layers; backend `{}` does not use them",
                backend.name()
            );
        }
        crate::kernels::set_enabled(false);
        let baseline = measure();
        crate::kernels::set_enabled(true);
        Some(baseline?)
    } else {
        None
    };
    let result = measure()?;
    Ok(match baseline {
        Some(baseline) => compare(result, baseline),
        None => result,
    })
}

/// The error and its causes as one paragraph: "outer: cause: root cause".
/// Trailing blank lines (TOML and image decoders end their messages with one) are dropped, and a
/// cause that its parent already quotes at its end is not repeated.
fn error_paragraph(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().trim_end().to_string();
        if parts.last().is_some_and(|prev| prev.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Parses an input shape written `CxHxW` (e.g. `3x32x32`).
pub fn parse_shape(text: &str) -> Result<[usize; 3], String> {
    let dims: Vec<usize> = text
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}` is not a shape like 3x32x32"))?;
    match dims.as_slice() {
        [c, h, w] if *c > 0 && *h > 0 && *w > 0 => Ok([*c, *h, *w]),
        _ => Err(format!(
            "`{text}` is not a shape like 3x32x32 (three positive numbers)"
        )),
    }
}
