//! Adam and AdamW as burn optimizers whose update is one pass per parameter tensor on Flex
//! ([`crate::kernels::adam`]) and burn's own optimizer everywhere else.
//!
//! The update is bit for bit burn's (`tests/kernels.rs` checks it over several steps), and the
//! state is burn's `AdamState`/`AdamWState`, so checkpoints, resumes and every recorded result
//! are the same whichever path ran.

use burn::optim::{
    Adam, AdamConfig, AdamState, AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState,
    LearningRate, Optimizer,
};
use burn::tensor::{Device, Tensor};

use crate::kernels::adam::{AdamStep, Variant};

/// Adam (no weight decay) with the one-pass update on Flex.
#[derive(Clone)]
pub struct LocalAdam {
    burn: Adam,
    betas: Betas,
}

/// AdamW (decoupled weight decay) with the one-pass update on Flex.
#[derive(Clone)]
pub struct LocalAdamW {
    burn: AdamW,
    betas: Betas,
    weight_decay: f32,
}

/// The coefficients both optimizers share.
#[derive(Clone, Copy, Debug)]
pub struct Betas {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the second moment's square root.
    pub epsilon: f32,
}

impl LocalAdam {
    /// Adam with these coefficients.
    pub fn new(betas: Betas) -> Self {
        let burn = AdamConfig::new()
            .with_beta_1(betas.beta_1)
            .with_beta_2(betas.beta_2)
            .with_epsilon(betas.epsilon)
            .build();
        LocalAdam { burn, betas }
    }
}

impl LocalAdamW {
    /// AdamW with these coefficients and decoupled weight decay.
    pub fn new(betas: Betas, weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(betas.beta_1)
            .with_beta_2(betas.beta_2)
            .with_epsilon(betas.epsilon)
            .with_weight_decay(weight_decay)
            .build();
        LocalAdamW {
            burn,
            betas,
            weight_decay,
        }
    }
}

impl Optimizer for LocalAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if !crate::kernels::active(&tensor.device()) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let momentum = state.map(|state| state.momentum);
        let (tensor, momentum) = one_pass(self.betas, Variant::Adam, lr, tensor, grad, momentum);
        (tensor, Some(AdamState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        Adam::to_device(state, device)
    }
}

impl Optimizer for LocalAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if !crate::kernels::active(&tensor.device()) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let momentum = state.map(|state| state.momentum);
        let variant = Variant::AdamW {
            weight_decay: self.weight_decay,
        };
        let (tensor, momentum) = one_pass(self.betas, variant, lr, tensor, grad, momentum);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// The update through the local kernel; on the first step the moments start as zeros that the
/// kernel overwrites without reading.
fn one_pass<const D: usize>(
    betas: Betas,
    variant: Variant,
    learning_rate: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    momentum: Option<AdaptiveMomentumState<D>>,
) -> (Tensor<D>, AdaptiveMomentumState<D>) {
    let (time, moment_1, moment_2) = match momentum {
        Some(state) => {
            assert!(
                state.max_moment_2.is_none(),
                "AMSGrad state in a plain Adam optimizer"
            );
            (state.time + 1, state.moment_1, state.moment_2)
        }
        None => (1, grad.zeros_like(), grad.zeros_like()),
    };
    let step = AdamStep {
        beta_1: betas.beta_1,
        beta_2: betas.beta_2,
        epsilon: betas.epsilon,
        learning_rate,
        time,
        variant,
    };
    let (tensor, moment_1, moment_2) =
        crate::kernels::adam_update(tensor, grad, moment_1, moment_2, step);
    (tensor, AdaptiveMomentumState::new(time, moment_1, moment_2))
}
