//! `distill train`, `distill distill` and `distill eval` on a text dataset (`--data
//! rotten-tomatoes` or `text:FILE`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::Device;

use super::train::{report_final, DistillArgs, TrainArgs};
use crate::backend::Backend;
use crate::bench::{run_text, text_table, TextBenchOptions, TextBenchResult};
use crate::data::text::{load_text, TextDataset, TextSpec};
use crate::data::tokenizer::TextTokenizer;
use crate::data::tokenizer::TokenBatch;
use crate::data::transfer::TransferConfig;
use crate::distill::{LogitSource, TeacherLogits};
use crate::losses::{DistillLoss, HiddenTerm};
use crate::modality::text::{
    load_text_model, prepare_text_teaching, BaseModel, Text, TextArchitecture, TokenizedSplit,
    TEXT_META_FILE, TEXT_WEIGHTS_FILE,
};
use crate::modality::SoftTargets;
use crate::models::bert::{self, CONFIG_FILE, TOKENIZER_FILE};
use crate::models::text::{TextClassifier, TextModelSpec};
use crate::train::{evaluate_model, fit_model, ModelJob, Objective, TrainConfig};

pub use crate::data::text::is_text_data;

/// The dataset, tokenised: (dataset, train, evaluation split, the evaluation split's name).
fn load_splits(
    args: &TrainArgs,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<(TextDataset, TokenizedSplit, TokenizedSplit, &'static str)> {
    let data_spec: TextSpec = args.data.parse()?;
    let mut dataset = load_text(&data_spec)?;
    let (eval_examples, eval_name) = match args.val_split {
        Some(fraction) => (
            dataset.split_off_validation(fraction, args.seed)?,
            "validation",
        ),
        None => (dataset.test.clone(), "test"),
    };
    let train = TokenizedSplit::new(&dataset.train, tokenizer)?;
    let eval = TokenizedSplit::new(&eval_examples, tokenizer)?;
    Ok((dataset, train, eval, eval_name))
}

fn reject_image_options(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if args.augment {
        bail!("--augment applies to images; text datasets have no augmentation (see --transfer-copies for distillation)");
    }
    if args.init_from.is_some() {
        bail!("--init-from applies to image models; a text model starts from its pretrained --model directory or from teacher_layers");
    }
    args.checked_config()
}

/// Trains `architecture` on `train` with `objective` and prints the final line.
fn fit_text<T: SoftTargets<TokenBatch>>(
    args: &TrainArgs,
    config: &TrainConfig,
    architecture: TextArchitecture<'_>,
    (train, eval): (&TokenizedSplit, &TokenizedSplit),
    objective: Objective<'_, T>,
    device: &Device,
) -> anyhow::Result<()> {
    let outcome = fit_model(
        ModelJob::<_, T> {
            architecture,
            train,
            eval,
            config,
            objective,
            out: &args.out,
            resume: args.resume,
            init_from: None,
            progress: !args.quiet,
            verbose: true,
        },
        device,
    )?;
    report_final(&args.out, outcome.history.last());
    Ok(())
}

/// `distill train --data <text dataset> --model <pretrained dir | student spec .toml>`:
/// fine-tunes a pretrained encoder with a classification head (a teacher), or trains a student
/// spec on labels over the tokenizer of `--base-model`.
pub fn train(model: &str, args: &TrainArgs) -> anyhow::Result<()> {
    let config = reject_image_options(args)?;
    let device = args.backend.device()?;
    let dir = PathBuf::from(model);
    let (spec, base) = if dir.join(CONFIG_FILE).is_file() {
        (TextModelSpec::Pretrained { dir: dir.clone() }, None)
    } else if model.ends_with(".toml") {
        let Some(base_dir) = &args.base_model else {
            bail!("--model {model}: a student spec reads the tokenizer of a pretrained or trained transformer; name it with --base-model DIR");
        };
        let spec = TextModelSpec::from_file(&dir)?;
        (
            spec,
            Some(BaseModel::load(base_dir, "--base-model", &device)?),
        )
    } else {
        bail!(
            "--model {model}: expected a pretrained text encoder directory holding {CONFIG_FILE}, {} and {TOKENIZER_FILE} (e.g. the all-MiniLM-L6-v2 directory from scripts/fetch-text-data.sh) or a text student spec (.toml)",
            bert::WEIGHTS_FILE
        );
    };
    let tokenizer_path = match &base {
        Some(base) => base.tokenizer.clone(),
        None => dir.join(TOKENIZER_FILE),
    };
    let tokenizer = TextTokenizer::from_file(&tokenizer_path, args.max_len)?;
    let (dataset, train, eval, eval_name) = load_splits(args, &tokenizer)?;
    println!(
        "{}: {} train / {} {eval_name} texts, {} classes; {model} (max {} tokens{})",
        dataset.name,
        train.len(),
        eval.len(),
        dataset.classes.len(),
        args.max_len,
        if args.freeze_word_embeddings {
            ", word embeddings frozen"
        } else {
            ""
        }
    );
    let architecture = TextArchitecture {
        spec: &spec,
        classes: &dataset.classes,
        teacher: base.as_ref().map(|b| (&b.bert, &b.config)),
        tokenizer: &tokenizer_path,
        freeze_word_embeddings: args.freeze_word_embeddings,
        max_len: args.max_len,
    };
    fit_text(
        args,
        &config,
        architecture,
        (&train, &eval),
        Objective::<TeacherLogits>::Labels,
        &device,
    )
}

/// `distill distill --data <text dataset> --teacher <trained text model> --student <spec.toml>`:
/// the student learns from the teacher's cached logits on the training texts and, with
/// `--transfer-copies`, on an augmented transfer set the teacher labels.
pub fn distill(args: &DistillArgs, loss: DistillLoss) -> anyhow::Result<()> {
    let train_args = &args.train;
    let config = reject_image_options(train_args)?;
    if args.train.base_model.is_some() {
        bail!("--base-model is for `distill train`; a distilled student is built on its --teacher");
    }
    let transfer = TransferConfig {
        copies: args.transfer_copies,
        seed: args.transfer_seed,
        ..TransferConfig::default()
    };
    transfer.validate().map_err(anyhow::Error::msg)?;
    let hidden = (args.cosine_weight != 0.0).then_some(HiddenTerm {
        weight: args.cosine_weight,
    });
    if let Some(term) = &hidden {
        term.validate()
            .map_err(|e| anyhow::anyhow!("--cosine-weight: {e}"))?;
    }
    let device = train_args.backend.device()?;
    let spec = TextModelSpec::from_file(Path::new(&args.student))?;
    let base = BaseModel::load(&args.teacher, "--teacher", &device)?;
    let Some((teacher, meta)) = &base.classifier else {
        bail!(
            "--teacher {}: a pretrained encoder without a trained head; fine-tune it first (`distill train --data {} --model {}`)",
            args.teacher.display(),
            train_args.data,
            args.teacher.display()
        );
    };
    let tokenizer = TextTokenizer::from_file(&base.tokenizer, train_args.max_len)?;
    let (dataset, train, eval, eval_name) = load_splits(train_args, &tokenizer)?;
    if dataset.classes != meta.classes {
        bail!(
            "--teacher {} was trained on classes [{}] but {} has [{}]",
            args.teacher.display(),
            meta.classes.join(", "),
            train_args.data,
            dataset.classes.join(", ")
        );
    }
    let mut cache_dir = PathBuf::new();
    let LogitSource::Cache(location) = args.logit_source(&mut cache_dir)? else {
        bail!("--no-logit-cache: a text teacher's logits are always computed once per run (in memory at least); leave the flag out");
    };
    let teacher_id = crate::models::checkpoint::weights_hash(&args.teacher)?;
    let teaching = prepare_text_teaching(
        teacher,
        &teacher_id,
        &tokenizer,
        train,
        &transfer,
        location,
        &device,
        !train_args.quiet,
    )?;
    let (train, labelled) = (&teaching.train, teaching.labelled);
    println!(
        "{}: {labelled} train{} / {} {eval_name} texts; teacher {} agrees with {:.1}% of the training labels; student {}",
        dataset.name,
        if train.len() > labelled {
            format!(
                " + {} transfer texts ({} copies per text, labelled by the teacher)",
                train.len() - labelled,
                transfer.copies
            )
        } else {
            String::new()
        },
        eval.len(),
        args.teacher.display(),
        100.0 * teaching.agreement,
        args.student
    );
    let architecture = TextArchitecture {
        spec: &spec,
        classes: &dataset.classes,
        teacher: Some((&base.bert, &base.config)),
        tokenizer: &base.tokenizer,
        freeze_word_embeddings: train_args.freeze_word_embeddings,
        max_len: train_args.max_len,
    };
    // Its hidden states are computed only when the cosine term asks for them.
    fit_text(
        train_args,
        &config,
        architecture,
        (train, &eval),
        Objective::Distill {
            loss,
            teacher: &teaching.teacher,
            hidden,
        },
        &device,
    )
}

/// `distill eval --model <text model dir> --data <text dataset>`: test accuracy and loss.
pub fn eval(
    model: &Path,
    data: &str,
    json: bool,
    speed: bool,
    device: &Device,
) -> anyhow::Result<()> {
    let (classifier, meta) = load_text_model(model, device)
        .with_context(|| format!("cannot load the text model in {}", model.display()))?;
    let dataset = load_text(&data.parse()?)?;
    if dataset.classes != meta.classes {
        bail!(
            "{} was trained on classes [{}] but {data} has [{}]",
            model.display(),
            meta.classes.join(", "),
            dataset.classes.join(", ")
        );
    }
    // Truncate as training did; a directory that predates the record falls back to the
    // encoder's own limit (a BiLSTM has none: BERT's usual 512).
    let max_len = meta
        .max_len
        .or_else(|| meta.encoder.max_len())
        .unwrap_or(512);
    let tokenizer = TextTokenizer::from_file(&model.join(TOKENIZER_FILE), max_len)?;
    let test = TokenizedSplit::new(&dataset.test, &tokenizer)?;
    let (loss, accuracy) = evaluate_model::<Text>(&classifier, &test, device, 64);
    let timing = speed.then(|| crate::bench::measure_text_speed(&classifier, &test, device));
    let weight_bytes = std::fs::metadata(model.join(TEXT_WEIGHTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    if json {
        let mut out = serde_json::json!({
            "accuracy": accuracy,
            "loss": loss,
            "samples": test.len(),
            "params": meta.params,
            "weight_bytes": weight_bytes,
        });
        if let Some(timing) = timing {
            out["latency_ms"] = timing.latency_ms.into();
            out["throughput_per_s"] = timing.throughput_ips.into();
        }
        println!("{out}");
    } else {
        println!(
            "{}: test accuracy {accuracy:.4}, loss {loss:.4} on {} texts of {data}; {} parameters, {:.1} MB",
            model.display(),
            test.len(),
            meta.params,
            weight_bytes as f64 / 1e6
        );
        if let Some(timing) = timing {
            println!(
                "inference: {:.2} ms per text (batch 1, median), {:.1} texts/s (batches of 64 over the test split)",
                timing.latency_ms, timing.throughput_ips
            );
        }
    }
    Ok(())
}

/// `distill bench --text MODEL_DIR`: inference speed of a trained text model, or of a pretrained
/// Hugging Face encoder with a fresh 2-class head (the same computation a fine-tuned one does).
pub fn bench(
    dir: &Path,
    options: &TextBenchOptions,
    json: bool,
    compare_burn: bool,
    backend: Backend,
) -> anyhow::Result<()> {
    if options.batch_size == 0
        || options.train_batch_size == 0
        || options.seq_len == 0
        || options.steps == 0
    {
        bail!(
            "--batch-size, --train-batch-size, --seq-len and --steps must be at least 1, got {}, {}, {} and {}",
            options.batch_size,
            options.train_batch_size,
            options.seq_len,
            options.steps
        );
    }
    let device = backend.device()?.autodiff();
    let (classifier, encoder) = if dir.join(TEXT_META_FILE).is_file() {
        let (classifier, meta) = load_text_model(dir, &device)?;
        (classifier, meta.encoder)
    } else if dir.join(CONFIG_FILE).is_file() {
        let spec = TextModelSpec::Pretrained {
            dir: dir.to_path_buf(),
        };
        TextClassifier::init(&spec, 2, None, 0, &device)?
    } else {
        bail!(
            "--text {}: expected a pretrained text encoder directory ({CONFIG_FILE}, {}) or a text model trained by distill ({TEXT_META_FILE}, {TEXT_WEIGHTS_FILE})",
            dir.display(),
            bert::WEIGHTS_FILE
        );
    };
    if let Some(max_len) = encoder.max_len() {
        if options.seq_len > max_len {
            bail!(
                "--seq-len {}: {} reads at most {max_len} tokens",
                options.seq_len,
                dir.display()
            );
        }
    }
    if !json {
        eprintln!(
            "benchmarking {} ({} timed batches per workload)...",
            dir.display(),
            options.steps
        );
    }
    let measure = || {
        Ok(run_text(
            &classifier,
            &dir.display().to_string(),
            encoder.vocab_size(),
            options,
            backend.name(),
        ))
    };
    let result = super::measure_against_burn(
        compare_burn,
        &device,
        backend,
        measure,
        TextBenchResult::compared_with,
    )?;
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", text_table(&result));
    }
    Ok(())
}
