//! A module's parameters and gradients as one flat buffer, the unit every collective moves:
//! the starting weights broadcast from rank 0, and each step's gradients averaged over the ranks.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// Every float tensor of a module (trainable or not, e.g. batch norm's running statistics), in
/// the module's visiting order, which is the same on every rank.
#[derive(Default)]
struct Flatten {
    values: Vec<f32>,
    trainable_only: bool,
    layout: Vec<(ParamId, Vec<usize>)>,
}

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.trainable_only && !param.is_require_grad() {
            return;
        }
        let value = param.val();
        self.layout.push((param.id, value.dims().to_vec()));
        self.values.extend(value.into_data().iter::<f32>());
    }
}

/// Writes a flat buffer back into the module's float tensors, in [`Flatten`]'s order.
struct Unflatten<'a> {
    values: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Unflatten<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| {
            let dims = tensor.dims();
            let count: usize = dims.iter().product();
            let slice = &self.values[self.offset..self.offset + count];
            self.offset += count;
            let device = tensor.device();
            let is_tracked = tensor.is_require_grad();
            let fresh = Tensor::<D>::from_data(TensorData::new(slice.to_vec(), dims), &device);
            if is_tracked {
                fresh.require_grad()
            } else {
                fresh
            }
        })
    }
}

/// `module` with rank 0's values in every float tensor (weights and running statistics), so
/// that every rank starts from the same point.
pub fn broadcast_module<M: Module>(module: M, what: &str) -> M {
    if !super::is_parallel() {
        return module;
    }
    let mut flat = Flatten::default();
    module.visit(&mut flat);
    let mut values = flat.values;
    super::broadcast(&mut values, what);
    module.map(&mut Unflatten {
        values: &values,
        offset: 0,
    })
}

/// A hash of the bits of every trainable tensor, to check that the ranks still hold the same
/// weights.
pub fn trainable_fingerprint<M: Module>(module: &M) -> u64 {
    let mut flat = Flatten {
        trainable_only: true,
        ..Flatten::default()
    };
    module.visit(&mut flat);
    let bytes: Vec<u8> = flat.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    super::fnv1a(&bytes)
}

/// Averages one step's gradients over the ranks: each rank's gradient of its mean loss is
/// weighted by its share of the global batch, so the sum is the gradient of the global batch's
/// mean loss, as one process would compute it (up to the order of the sums). The step's loss and
/// correct count travel in the same buffer, so every rank sees the global ones.
pub struct GradientAverage {
    layout: Vec<(ParamId, Vec<usize>)>,
    /// The flat send and receive buffers, kept between steps (a fresh multi-megabyte buffer
    /// every step costs its page faults again).
    buffers: RefCell<(Vec<f32>, Vec<f32>)>,
    last_sync: Cell<Duration>,
}

/// The global batch's loss (mean) and correct predictions, from one [`GradientAverage`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTotals {
    /// Mean loss over the global batch.
    pub loss: f32,
    /// Correct predictions in the global batch.
    pub correct: i64,
}

impl GradientAverage {
    /// The trainable parameters of `module`, in the order every rank flattens them.
    pub fn new<M: Module>(module: &M) -> Self {
        let mut flat = Flatten {
            trainable_only: true,
            ..Flatten::default()
        };
        module.visit(&mut flat);
        Self {
            layout: flat.layout,
            buffers: RefCell::default(),
            last_sync: Cell::default(),
        }
    }

    /// How long the last [`apply`](Self::apply) took: flattening, the all-reduce (waiting for
    /// the slowest rank included) and the new gradient tensors.
    pub fn last_sync(&self) -> Duration {
        self.last_sync.get()
    }

    /// The averaged gradients and the global totals. `grads` is `None` on a rank whose share of
    /// a short last batch is empty; it still takes part, with nothing to add. A parameter no rank
    /// has a gradient for stays without one, as in one process.
    pub fn apply(
        &self,
        grads: Option<GradientsParams>,
        loss: f32,
        correct: i64,
        share: f32,
        device: &Device,
    ) -> (GradientsParams, StepTotals) {
        let started = Instant::now();
        let params = self.layout.len();
        let total: usize = self
            .layout
            .iter()
            .map(|(_, dims)| dims.iter().product::<usize>())
            .sum();
        let mut buffers = self.buffers.borrow_mut();
        let (send, received) = &mut *buffers;
        send.resize(total + params + 2, 0.0);
        received.resize(total + params + 2, 0.0);
        let (values, tail) = send.split_at_mut(total);
        let mut grads = grads;
        let mut offset = 0;
        let mut storages = Vec::with_capacity(params);
        for (k, (id, dims)) in self.layout.iter().enumerate() {
            let count: usize = dims.iter().product();
            let slot = &mut values[offset..offset + count];
            let storage = grads
                .as_mut()
                .and_then(|g| take_scaled(g, *id, dims.len(), share, slot));
            if storage.is_none() {
                slot.fill(0.0);
            }
            tail[k] = if storage.is_some() { 1.0 } else { 0.0 };
            storages.push(storage);
            offset += count;
        }
        tail[params] = if share > 0.0 { loss * share } else { 0.0 };
        tail[params + 1] = correct as f32;
        super::all_reduce_sum_into(send, received, "the gradient all-reduce");

        let mut averaged = GradientsParams::new();
        let mut offset = 0;
        let flags = &received[total..total + params];
        for (((id, dims), flag), storage) in self.layout.iter().zip(flags).zip(storages) {
            let count: usize = dims.iter().product();
            if *flag > 0.0 {
                register(
                    &mut averaged,
                    *id,
                    &received[offset..offset + count],
                    dims,
                    storage,
                    device,
                );
            }
            offset += count;
        }
        let totals = StepTotals {
            loss: received[total + params],
            correct: received[total + params + 1].round() as i64,
        };
        self.last_sync.set(started.elapsed());
        (averaged, totals)
    }
}

/// Moves `id`'s gradient (of tensor rank `rank`) out of `grads` into `slot`, times `share`, and
/// returns its storage for [`register`] to refill; `None` when it has none.
fn take_scaled(
    grads: &mut GradientsParams,
    id: ParamId,
    rank: usize,
    share: f32,
    slot: &mut [f32],
) -> Option<TensorData> {
    fn take<const D: usize>(
        grads: &mut GradientsParams,
        id: ParamId,
        share: f32,
        slot: &mut [f32],
    ) -> Option<TensorData> {
        let data = grads.remove::<D>(id)?.into_data();
        match data.as_slice::<f32>() {
            Ok(values) => {
                for (out, v) in slot.iter_mut().zip(values) {
                    *out = v * share;
                }
            }
            Err(_) => {
                for (out, v) in slot.iter_mut().zip(data.iter::<f32>()) {
                    *out = v * share;
                }
            }
        }
        Some(data)
    }
    match rank {
        1 => take::<1>(grads, id, share, slot),
        2 => take::<2>(grads, id, share, slot),
        3 => take::<3>(grads, id, share, slot),
        4 => take::<4>(grads, id, share, slot),
        5 => take::<5>(grads, id, share, slot),
        _ => panic!("a parameter of rank {rank}: gradients of rank 1 to 5 are supported"),
    }
}

/// Registers `values` as `id`'s gradient, written into `storage` (the backward's own gradient,
/// whose buffer the backend allocated) when this rank had one.
fn register(
    grads: &mut GradientsParams,
    id: ParamId,
    values: &[f32],
    dims: &[usize],
    storage: Option<TensorData>,
    device: &Device,
) {
    fn put<const D: usize>(
        grads: &mut GradientsParams,
        id: ParamId,
        values: &[f32],
        dims: &[usize],
        storage: Option<TensorData>,
        device: &Device,
    ) {
        let refilled = storage.and_then(|mut data| {
            data.as_mut_slice::<f32>().ok()?.copy_from_slice(values);
            Some(data)
        });
        let tensor = match refilled {
            Some(data) => Tensor::<D>::from_data(data, device),
            // Added to a zero tensor so that the gradient lives in storage the backend
            // allocated: Adam's update on tensors made straight from a Vec ran far slower (one
            // process, resnet20, batch 32: 220–250 ms a step against 183–187 ms this way).
            None => {
                let data = TensorData::new(values.to_vec(), dims.to_vec());
                Tensor::<D>::zeros(dims.to_vec(), device) + Tensor::<D>::from_data(data, device)
            }
        };
        grads.register::<D>(id, tensor);
    }
    match dims.len() {
        1 => put::<1>(grads, id, values, dims, storage, device),
        2 => put::<2>(grads, id, values, dims, storage, device),
        3 => put::<3>(grads, id, values, dims, storage, device),
        4 => put::<4>(grads, id, values, dims, storage, device),
        5 => put::<5>(grads, id, values, dims, storage, device),
        rank => panic!("a parameter of rank {rank}: gradients of rank 1 to 5 are supported"),
    }
}
