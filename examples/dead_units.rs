//! Counts the units of each ReLU dense layer that never fire on a sample of training images
//! ("dead" units: their gradient is zero, so they never recover). A student with a 16-unit
//! bottleneck that has lost a few of them is a weaker model, which shows up as seed-to-seed
//! spread in a study.
//!
//!     cargo run --release --example dead_units -- DATA CHECKPOINT_DIR...
//!
//! e.g. `cifar10:~/.cache/cifar10-bin runs/cifar10-recipe/scratch/seed-42`.

use burn::tensor::Device;
use distill::data::{self, DataSpec};
use distill::models::checkpoint;
use distill::models::network::Layer;
use distill::models::Network;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data_spec: DataSpec = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: dead_units DATA CHECKPOINT_DIR..."))?
        .parse()?;
    let dataset = data::load(&data_spec)?;
    let device = Device::flex();
    let sample: Vec<usize> = (0..dataset.train.len().min(5000)).collect();
    for dir in args {
        let network = checkpoint::load(dir.as_ref(), &device)?.network;
        let mut report = Vec::new();
        for (index, layer) in network.layers.iter().enumerate() {
            let Layer::Dense(dense) = layer else { continue };
            if !dense.relu {
                continue;
            }
            let prefix = Network {
                layers: network.layers[..=index].to_vec(),
            };
            let mut ever_active: Option<Vec<bool>> = None;
            for chunk in sample.chunks(500) {
                let (images, _) = dataset.train.batch(chunk, &device, None);
                let out = prefix.forward(images);
                let units = out.dims()[1];
                let values = out.into_data().try_to_vec::<f32>().expect("f32");
                let active = ever_active.get_or_insert_with(|| vec![false; units]);
                for row in values.chunks_exact(units) {
                    for (a, &v) in active.iter_mut().zip(row) {
                        *a |= v > 0.0;
                    }
                }
            }
            let active = ever_active.unwrap_or_default();
            let dead = active.iter().filter(|a| !**a).count();
            report.push(format!("layer {index}: {dead}/{} dead", active.len()));
        }
        println!("{dir}: {}", report.join(", "));
    }
    Ok(())
}
