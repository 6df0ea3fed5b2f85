//! `distill models` and `distill summary`.

use anyhow::Context;

use crate::models::{resolve_spec, summary};

pub fn list(input: [usize; 3], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&summary::zoo_entries(input)?)?);
    } else {
        print!("{}", summary::zoo_table(input)?);
    }
    Ok(())
}

pub fn summary(model: &str, input: [usize; 3]) -> anyhow::Result<()> {
    let path = std::path::Path::new(model);
    let spec = if crate::classifier::is_onnx(path) {
        // an ONNX file: the spec the native importer finds, or what tract runs
        let options = crate::onnx::ImportOptions {
            expected_input: Some(input),
            ..Default::default()
        };
        let device = crate::backend::Backend::default_compiled().device()?;
        let loaded = crate::classifier::load_classifier(path, &options, &device)?;
        if let Some(note) = loaded.onnx_note(path) {
            println!("{note}");
        }
        match loaded.spec {
            Some(spec) => spec,
            None => return Ok(()),
        }
    } else {
        resolve_spec(model)?
    };
    let [c, h, w] = input;
    let table = summary::layer_table(&spec, input)
        .with_context(|| format!("model `{model}` on {c}x{h}x{w} input"))?;
    print!("{table}");
    Ok(())
}
