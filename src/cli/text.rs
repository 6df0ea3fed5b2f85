//! `distill train` and `distill eval` on a text dataset (`--data rotten-tomatoes` or `text:FILE`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::train::{report_final, TrainArgs};
use crate::data::text::{load_text, TextSpec};
use crate::data::tokenizer::TextTokenizer;
use crate::modality::text::{load_text_model, Text, TextArchitecture, TokenizedSplit};
use crate::models::bert::{self, CONFIG_FILE, TOKENIZER_FILE};
use crate::models::text::TextModelSpec;
use crate::train::{evaluate_model, fit_model, ModelJob, Objective};

/// True when `data` names a text dataset rather than an image one.
pub fn is_text_data(data: &str) -> bool {
    data.parse::<TextSpec>().is_ok()
}

/// `distill train --data <text dataset> --model <pretrained dir>`: fine-tunes a pretrained
/// encoder with a classification head (a text teacher).
pub fn train(model: &str, args: &TrainArgs) -> anyhow::Result<()> {
    if args.augment {
        bail!("--augment applies to images; text datasets have no augmentation");
    }
    if args.init_from.is_some() {
        bail!("--init-from applies to image models; a text model starts from its pretrained --model directory");
    }
    let config = args.checked_config()?;
    let dir = PathBuf::from(model);
    if !dir.join(CONFIG_FILE).is_file() {
        bail!(
            "--model {model}: expected a pretrained text encoder directory holding {CONFIG_FILE}, {} and {TOKENIZER_FILE} (e.g. the all-MiniLM-L6-v2 directory from scripts/fetch-text-data.sh)",
            bert::WEIGHTS_FILE
        );
    }
    let spec = TextModelSpec::Pretrained { dir: dir.clone() };
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = TextTokenizer::from_file(&tokenizer_path, args.max_len)?;
    let data_spec: TextSpec = args.data.parse()?;
    let mut dataset = load_text(&data_spec)?;
    let eval_examples = match args.val_split {
        Some(fraction) => dataset.split_off_validation(fraction, args.seed)?,
        None => dataset.test.clone(),
    };
    let train = TokenizedSplit::new(&dataset.train, &tokenizer)?;
    let eval = TokenizedSplit::new(&eval_examples, &tokenizer)?;
    println!(
        "{}: {} train / {} {} texts, {} classes; {} (max {} tokens{})",
        dataset.name,
        train.len(),
        eval.len(),
        if args.val_split.is_some() {
            "validation"
        } else {
            "test"
        },
        dataset.classes.len(),
        dir.display(),
        args.max_len,
        if args.freeze_word_embeddings {
            ", word embeddings frozen"
        } else {
            ""
        }
    );
    let device = args.backend.device()?;
    let outcome = fit_model(
        ModelJob::<_> {
            architecture: TextArchitecture {
                spec: &spec,
                classes: &dataset.classes,
                teacher: None,
                tokenizer: &tokenizer_path,
                freeze_word_embeddings: args.freeze_word_embeddings,
            },
            train: &train,
            eval: &eval,
            config: &config,
            objective: Objective::<crate::distill::TeacherLogits>::Labels,
            out: &args.out,
            resume: args.resume,
            init_from: None,
            progress: !args.quiet,
            verbose: true,
        },
        &device,
    )?;
    report_final(&args.out, outcome.history.last());
    Ok(())
}

/// `distill eval --model <text model dir> --data <text dataset>`: test accuracy and loss.
pub fn eval(
    model: &Path,
    data: &str,
    json: bool,
    device: &burn::tensor::Device,
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
    // The encoder's own limit (a CNN has none: BERT's usual 512).
    let max_len = meta.encoder.max_len().unwrap_or(512);
    let tokenizer = TextTokenizer::from_file(&model.join(TOKENIZER_FILE), max_len)?;
    let test = TokenizedSplit::new(&dataset.test, &tokenizer)?;
    let (loss, accuracy) = evaluate_model::<Text>(&classifier, &test, device, 64);
    if json {
        let out = serde_json::json!({"accuracy": accuracy, "loss": loss, "samples": test.len()});
        println!("{out}");
    } else {
        println!(
            "{}: test accuracy {accuracy:.4}, loss {loss:.4} on {} texts of {data}",
            model.display(),
            test.len()
        );
    }
    Ok(())
}
