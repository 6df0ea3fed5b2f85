//! `distill run`: the whole experiment from a TOML config (default: `configs/quick.toml`, compiled in).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::backend::Backend;
use crate::experiment::{run as run_experiment, ExperimentConfig, RunOptions};

/// The default experiment, compiled in so `distill run` works from any directory.
const QUICK_CONFIG: &str = include_str!("../../configs/quick.toml");

/// Options of `distill run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment config (TOML). Default: the built-in `configs/quick.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the config's dataset.
    #[arg(long)]
    pub data: Option<String>,
    /// Output directory (default: the config's `out`, else `runs/<config name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seeds per student (mean ± std in the report).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Run the teacher on every distillation batch instead of replaying cached logits
    /// (`training.teacher_logits = "live"`).
    #[arg(long)]
    pub no_logit_cache: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::default_compiled())]
    pub backend: Backend,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `distill run`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let (mut config, name) = match &args.config {
        Some(path) => (ExperimentConfig::from_file(path)?, config_name(path)),
        None => (
            toml::from_str::<ExperimentConfig>(QUICK_CONFIG)
                .context("the built-in quick config is invalid")?,
            "quick".to_string(),
        ),
    };
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Some(seeds) = args.seeds {
        config.seeds = seeds;
    }
    if args.no_logit_cache {
        config.training.teacher_logits = crate::experiment::TeacherLogitsSource::Live;
    }
    config.validate()?;
    let out = args
        .out
        .clone()
        .or_else(|| config.out.clone())
        .unwrap_or_else(|| PathBuf::from("runs").join(name));
    let options = RunOptions {
        out: out.clone(),
        progress: !args.quiet,
        device: args.backend.device()?,
        backend: args.backend.name().to_string(),
    };
    let report = run_experiment(&config, &options)?;
    println!();
    print!(
        "{}",
        report
            .markdown()
            .split("\n## Plots")
            .next()
            .unwrap_or_default()
    );
    println!(
        "\nReport: {} (also report.json, learning_curves.png, accuracy_vs_alpha.png, accuracy_by_setting.png)",
        out.join("report.md").display()
    );
    Ok(())
}

fn config_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experiment".into())
}
