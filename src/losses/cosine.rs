//! DistilBERT's cosine loss: turn the student's hidden states in the direction of the teacher's.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

/// Smallest norm a hidden state is divided by (PyTorch's `cosine_similarity` clamps the same way).
const NORM_FLOOR: f64 = 1e-8;

/// `1 - cos(student_t, teacher_t)` averaged over the real (non-padding) tokens `t` of the batch;
/// both states are `[batch, len, width]` and `padding` is `[batch, len]`, true on padding. The
/// teacher's states are detached: no gradient reaches the teacher through this loss.
///
/// # Panics
/// When the two states differ in shape (a student must share the teacher's width for this loss).
pub fn hidden_cosine(
    student: Tensor<3>,
    teacher: Tensor<3>,
    padding: Tensor<2, Bool>,
) -> Tensor<1> {
    assert_eq!(
        student.dims(),
        teacher.dims(),
        "the cosine loss compares hidden states of one shape (student and teacher widths must match)"
    );
    let teacher = teacher.detach();
    let dot = (student.clone() * teacher.clone()).sum_dim(2);
    let norm = |x: Tensor<3>| x.powi_scalar(2).sum_dim(2).sqrt().clamp_min(NORM_FLOOR);
    let cosine = dot / (norm(student) * norm(teacher));
    let [batch, len, _] = cosine.dims();
    let keep = padding.bool_not().float().reshape([batch, len, 1]);
    let distance = (cosine.neg() + 1.0) * keep.clone();
    distance.sum().div(keep.sum()).reshape([1])
}

/// The hidden-state term of a distillation objective: `weight` times the cosine distance between
/// the student's hidden states and the teacher's on mapped layers (see [`layer_map`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HiddenTerm {
    /// Weight of the cosine distance, added to the logit loss (DistilBERT uses the same weight
    /// for soft targets and cosine).
    pub weight: f64,
}

impl HiddenTerm {
    /// Rejects a weight that is negative or not finite, naming it.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(format!(
                "the hidden-state cosine weight must be a finite number >= 0, got {}",
                self.weight
            ));
        }
        Ok(())
    }
}

/// A model's hidden states for one batch (embeddings first, then one per layer, each
/// `[batch, len, width]`) and the batch's padding mask (`[batch, len]`, true on padding).
#[derive(Debug, Clone)]
pub struct HiddenStates {
    /// Embeddings, then each layer's output.
    pub states: Vec<Tensor<3>>,
    /// True on padding positions.
    pub padding: Tensor<2, Bool>,
}

/// Which teacher state each student layer is compared with: student layer `i` (1-based, of
/// `student_layers`) with teacher layer `round(i * teacher_layers / student_layers)`, so layers are
/// spread evenly and the last student layer always meets the teacher's last (DistilBERT's
/// comparison).
pub fn layer_map(student_layers: usize, teacher_layers: usize) -> Vec<usize> {
    (1..=student_layers)
        .map(|i| ((i * teacher_layers) as f64 / student_layers as f64).round() as usize)
        .collect()
}

/// [`hidden_cosine`] averaged over the student's layers, each against its teacher layer from
/// [`layer_map`]; both state lists start with the embeddings. Errors when the widths differ.
pub fn mapped_hidden_cosine(
    student: &HiddenStates,
    teacher: &[Tensor<3>],
) -> anyhow::Result<Tensor<1>> {
    let student_layers = student.states.len().saturating_sub(1);
    let teacher_layers = teacher.len().saturating_sub(1);
    if student_layers == 0 || teacher_layers == 0 {
        anyhow::bail!("the cosine term needs encoder layers on both sides");
    }
    let (s_width, t_width) = (student.states[1].dims()[2], teacher[1].dims()[2]);
    if s_width != t_width {
        anyhow::bail!(
            "the cosine term compares hidden states of one width; the student's are {s_width} wide, the teacher's {t_width}"
        );
    }
    let terms: Vec<Tensor<1>> = layer_map(student_layers, teacher_layers)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            hidden_cosine(
                student.states[i + 1].clone(),
                teacher[t].clone(),
                student.padding.clone(),
            )
        })
        .collect();
    Ok(Tensor::cat(terms, 0).mean())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn layers_are_spread_evenly_and_the_last_meets_the_last() {
        assert_eq!(layer_map(3, 6), vec![2, 4, 6]);
        assert_eq!(layer_map(2, 2), vec![1, 2]);
        assert_eq!(layer_map(1, 6), vec![6]);
        assert_eq!(layer_map(4, 6), vec![2, 3, 5, 6]);
    }

    #[test]
    fn mapped_layers_average_the_per_layer_distances() {
        let device = Device::default();
        let state =
            |v: [f32; 2]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [1, 1, 2]), &device);
        let padding = Tensor::<2, Bool>::from_data(TensorData::new(vec![false], [1, 1]), &device);
        // student: embeddings + 1 layer; teacher: embeddings + 2 layers -> layer 1 meets layer 2.
        let student = HiddenStates {
            states: vec![state([9.0, 9.0]), state([1.0, 0.0])],
            padding,
        };
        let teacher = [state([0.0, 1.0]), state([0.0, 1.0]), state([1.0, 1.0])];
        let d: f32 = mapped_hidden_cosine(&student, &teacher)
            .unwrap()
            .into_scalar();
        assert!(
            (d - (1.0 - std::f32::consts::FRAC_1_SQRT_2)).abs() < 1e-6,
            "{d}"
        );
        let wide = [state([0.0, 1.0]), Tensor::<3>::zeros([1, 1, 3], &device)];
        let err = mapped_hidden_cosine(&student, &wide).unwrap_err();
        assert!(err.to_string().contains("one width"), "{err}");
    }

    #[test]
    fn matches_a_hand_computation_and_ignores_padding() {
        let device = Device::default();
        let state =
            |v: [f32; 4]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [1, 2, 2]), &device);
        let student = state([1.0, 0.0, 0.0, 1.0]);
        let teacher = state([2.0, 0.0, 1.0, 1.0]);
        let mask = |v: [bool; 2]| {
            Tensor::<2, Bool>::from_data(TensorData::new(v.to_vec(), [1, 2]), &device)
        };
        // cos = 1 on token 0, 1/sqrt(2) on token 1: mean distance (0 + 1 - 0.70711) / 2.
        let both: f32 =
            hidden_cosine(student.clone(), teacher.clone(), mask([false, false])).into_scalar();
        assert!((both - 0.146_446_6).abs() < 1e-6, "{both}");
        let first: f32 = hidden_cosine(student, teacher, mask([false, true])).into_scalar();
        assert!(first.abs() < 1e-7, "{first}");
    }
}
