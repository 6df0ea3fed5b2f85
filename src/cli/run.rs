//! `distill run`: the whole experiment from a TOML config (default: `configs/quick.toml`, compiled in).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::backend::Backend;
use crate::experiment::{run as run_experiment, train_shard, ExperimentConfig, RunOptions, Shard};

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
    /// Train the students in N worker processes at once, each with its share of the cores,
    /// once the teacher and its logit cache are ready. Every run is bit for bit
    /// what `--jobs 1` gives; on 2 cores two 1-thread jobs trained 1.3x as many students per
    /// hour as one 2-thread process.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Under mpirun: `batches` trains every run data-parallel over all the ranks (each rank
    /// takes its part of every batch); `runs` spreads the study's runs over the ranks, each
    /// trained whole by one rank (no communication; best when the runs are many and small).
    #[arg(long, value_enum, default_value_t = Distribute::Batches)]
    pub distribute: Distribute,
    /// A worker of `--jobs`: train shard I of N of the student runs, then stop.
    #[arg(long, hide = true, value_name = "I/N")]
    pub shard: Option<Shard>,
}

/// How the ranks of an MPI job share a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribute {
    /// Every run data-parallel over all the ranks.
    Batches,
    /// Each run whole on one rank.
    Runs,
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
    if args.jobs == 0 {
        anyhow::bail!("--jobs must be at least 1");
    }
    let out = args
        .out
        .clone()
        .or_else(|| config.out.clone())
        .unwrap_or_else(|| PathBuf::from("runs").join(name));
    let mut options = RunOptions {
        out: out.clone(),
        progress: !args.quiet,
        device: args.backend.device()?,
        backend: args.backend.name().to_string(),
        before_students: None,
    };
    if let Some(shard) = args.shard {
        return train_shard(&config, &options, shard);
    }
    if crate::distributed::world().size > 1 {
        if args.jobs > 1 {
            anyhow::bail!(
                "under mpirun the ranks are the jobs: drop --jobs {}",
                args.jobs
            );
        }
        match args.distribute {
            Distribute::Runs => {
                if !spread_over_ranks(&config, &mut options)? {
                    return Ok(());
                }
            }
            Distribute::Batches => prepare_data_parallel(&config)?,
        }
    }
    if args.jobs > 1 {
        options.before_students = Some(workers(args.jobs, &out));
    }
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
        "\nReport: {} (also report.html, report.json, learning_curves.png, accuracy_vs_alpha.png, accuracy_by_setting.png)",
        out.join("report.md").display()
    );
    Ok(())
}

/// Under mpirun with `--distribute batches`: every rank runs the whole study in step, training
/// each run data-parallel (see `train::fit_model`), and rank 0 writes. CRD is refused here, before
/// any teacher trains: its memory bank is not shared across ranks. The other ranks' standard
/// output is dropped (it repeats rank 0's); their errors still show.
fn prepare_data_parallel(config: &ExperimentConfig) -> anyhow::Result<()> {
    if let Some(method) = config
        .methods
        .iter()
        .filter_map(|m| m.features.as_ref())
        .find(|method| !method.trains_data_parallel())
    {
        anyhow::bail!(
            "this study has a {} arm, whose memory bank is not shared across ranks: run it with `--distribute runs` (each run on one rank), or without that arm",
            method.name()
        );
    }
    if !crate::distributed::is_root() {
        silence_stdout();
    }
    Ok(())
}

#[cfg(unix)]
fn silence_stdout() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 on two open descriptors; stdout is replaced, nothing else changes
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

#[cfg(not(unix))]
fn silence_stdout() {}

/// Under mpirun, a study's runs are spread over the ranks (each trains whole runs alone, as a
/// `--jobs` worker does): rank 0 prepares the teacher and its caches while the others wait, every
/// rank then trains its shard of the student runs, and rank 0 renders the report once all are
/// done. Returns whether this rank goes on to the report (rank 0).
fn spread_over_ranks(config: &ExperimentConfig, options: &mut RunOptions) -> anyhow::Result<bool> {
    use crate::distributed;
    let world = distributed::world();
    distributed::agree_on_settings(&toml::to_string(config)?, "the study's config")?;
    distributed::train_runs_independently();
    let shard = Shard {
        index: world.rank,
        count: world.size,
    };
    let ready = "rank 0 preparing the teacher and its logit caches";
    let done = "the other ranks' student runs";
    if world.rank > 0 {
        distributed::barrier(ready, true);
        train_shard(config, options, shard)?;
        distributed::barrier(done, true);
        return Ok(false);
    }
    let config = config.clone();
    let shard_options = RunOptions {
        out: options.out.clone(),
        progress: options.progress,
        device: options.device.clone(),
        backend: options.backend.clone(),
        before_students: None,
    };
    options.before_students = Some(Box::new(move || {
        println!(
            "== training the students on {} MPI ranks, one run per rank at a time",
            world.size
        );
        distributed::barrier(ready, true);
        train_shard(&config, &shard_options, shard)?;
        distributed::barrier(done, true);
        Ok(())
    }));
    Ok(true)
}

/// Starts `jobs` copies of this command as workers (`--shard I/N`), each on `cores / jobs`
/// threads (`RAYON_NUM_THREADS`) and told the number of jobs (`DISTILL_JOBS`, recorded with each
/// epoch) with its output in `out/logs/job-K.log`, and waits for all of them.
fn workers(jobs: usize, out: &Path) -> Box<dyn Fn() -> anyhow::Result<()>> {
    let out = out.to_path_buf();
    Box::new(move || {
        let program = std::env::current_exe().context("cannot find this program to start jobs")?;
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        if !args.iter().any(|a| a == "--quiet") {
            args.push("--quiet".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / jobs).max(1);
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        println!(
            "== training the students in {jobs} parallel jobs, {threads} thread(s) each (logs: {})",
            logs.join("job-*.log").display()
        );
        let started = std::time::Instant::now();
        let mut children = Vec::new();
        for index in 0..jobs {
            let log_path = logs.join(format!("job-{}.log", index + 1));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let child = std::process::Command::new(&program)
                .args(&args)
                .arg("--shard")
                .arg(format!("{index}/{jobs}"))
                .env("RAYON_NUM_THREADS", threads.to_string())
                // recorded with every epoch: times under other settings are not compared
                .env(crate::train::JOBS_ENV, jobs.to_string())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start job {}", index + 1))?;
            children.push((child, log_path));
        }
        let mut failed = Vec::new();
        for (mut child, log_path) in children {
            if !child.wait()?.success() {
                failed.push(log_path.display().to_string());
            }
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "{} of {jobs} jobs failed; their finished runs are kept and the same command resumes the rest. See {}",
                failed.len(),
                failed.join(", ")
            );
        }
        println!(
            "== the {jobs} jobs finished in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

fn config_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experiment".into())
}
