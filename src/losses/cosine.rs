//! DistilBERT's cosine loss: turn the student's hidden states in the direction of the teacher's.

use burn::tensor::{Bool, Tensor};

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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

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
