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
    let spec = resolve_spec(model)?;
    let [c, h, w] = input;
    let table = summary::layer_table(&spec, input)
        .with_context(|| format!("model `{model}` on {c}x{h}x{w} input"))?;
    print!("{table}");
    Ok(())
}
