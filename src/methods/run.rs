//! A feature method during training: its heads, their optimizer, its state, and how they are
//! kept in a checkpoint so that `--resume` continues bit for bit.

use std::fs;
use std::path::Path;

use anyhow::Context;
use burn::optim::ModuleOptimizer;

use super::crd::Memory;
use super::{MethodHeads, MethodState};
use crate::models::checkpoint::{self, write_atomic};

/// The heads' weights in a checkpoint directory.
pub const HEADS_FILE: &str = "method-heads.bpk";
/// Their optimizer state.
pub const HEADS_OPTIMIZER_FILE: &str = "method-optimizer.bpk";
/// CRD's memory banks: a JSON header line, then the two banks as little-endian f32.
pub const MEMORY_FILE: &str = "method-memory.bin";

/// What a feature method carries through training.
pub struct MethodRun {
    /// The trainable heads (on the training device).
    pub heads: MethodHeads,
    /// Their optimizer (the student's settings, its own state).
    pub optimizer: ModuleOptimizer,
    /// The state that is not trained by gradient.
    pub state: MethodState,
    /// The top-level layers of the student the method reads.
    pub student_layers: Vec<usize>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MemoryHeader {
    examples: usize,
    feat_dim: usize,
    z_student: Option<f64>,
    z_teacher: Option<f64>,
}

impl MethodRun {
    /// Writes the heads, their optimizer and the memory into `dir`; returns the files written.
    pub fn save(&self, dir: &Path) -> anyhow::Result<Vec<&'static str>> {
        checkpoint::write_weights(&dir.join(HEADS_FILE), &self.heads)?;
        let optimizer = self
            .optimizer
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("cannot serialise the method heads' optimizer: {e}"))?;
        write_atomic(&dir.join(HEADS_OPTIMIZER_FILE), &optimizer)?;
        let mut files = vec![HEADS_FILE, HEADS_OPTIMIZER_FILE];
        if let Some(memory) = &self.state.memory {
            let header = MemoryHeader {
                examples: memory.examples,
                feat_dim: memory.feat_dim,
                z_student: memory.z_student,
                z_teacher: memory.z_teacher,
            };
            let mut bytes = serde_json::to_vec(&header)?;
            bytes.push(b'\n');
            for v in memory.student.iter().chain(&memory.teacher) {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            write_atomic(&dir.join(MEMORY_FILE), &bytes)?;
            files.push(MEMORY_FILE);
        }
        Ok(files)
    }

    /// Restores what [`MethodRun::save`] wrote in `dir`.
    pub fn load(mut self, dir: &Path) -> anyhow::Result<Self> {
        self.heads = checkpoint::load_weights(&dir.join(HEADS_FILE), self.heads)?;
        let path = dir.join(HEADS_OPTIMIZER_FILE);
        self.optimizer = self
            .optimizer
            .load(&path)
            .map_err(|e| anyhow::anyhow!("cannot load optimizer state {}: {e}", path.display()))?;
        if let Some(memory) = &mut self.state.memory {
            let path = dir.join(MEMORY_FILE);
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            *memory = decode_memory(&bytes)
                .with_context(|| format!("{} is not a CRD memory file", path.display()))?;
        }
        Ok(self)
    }
}

fn decode_memory(bytes: &[u8]) -> anyhow::Result<Memory> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .context("no header line")?;
    let header: MemoryHeader = serde_json::from_slice(&bytes[..end])?;
    let values: Vec<f32> = bytes[end + 1..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let bank = header.examples * header.feat_dim;
    anyhow::ensure!(
        values.len() == 2 * bank && bytes.len() - end - 1 == 8 * bank,
        "expected two banks of {} x {} values, found {} values",
        header.examples,
        header.feat_dim,
        values.len()
    );
    let teacher = values[bank..].to_vec();
    let mut student = values;
    student.truncate(bank);
    Ok(Memory {
        examples: header.examples,
        feat_dim: header.feat_dim,
        student,
        teacher,
        z_student: header.z_student,
        z_teacher: header.z_teacher,
    })
}
