//! 2-D convolution with bias and an optional leaky ReLU, forward and backward, on NCHW `f32`
//! slices: im2col over a group of images, one `gemm` per group, and an epilogue that adds the
//! bias and applies the activation while writing NCHW.
//!
//! Burn computes the same layer as conv (through Flex's 3-D path, after copying the input into an
//! asymmetrically padded tensor), a bias pass, an activation pass, and in the backward pass a
//! transposed convolution for the input gradient and a weight gradient computed as another
//! convolution over swapped batch and channel axes. Here the backward pass is two `gemm`s per group
//! on the same im2col matrix the forward pass built.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::dropout::{self, DropoutMask};
use super::matmul::{Layout, Product};
use super::pool::Same2x2;
use super::{valid_outputs, Window2d};

/// Shapes of one convolution: input `[batch, channels, h, w]`, weight `[filters, channels, kh, kw]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output channels.
    pub filters: usize,
    /// Kernel size, stride and padding.
    pub window: Window2d,
}

impl ConvShape {
    fn output(&self) -> [usize; 2] {
        self.window.output_size(self.input)
    }

    /// Rows of the im2col matrix: one per weight of a filter.
    fn patch(&self) -> usize {
        self.channels * self.window.kernel[0] * self.window.kernel[1]
    }

    /// The forward product of a group of `images`: weight (filters × patch) times the group's
    /// im2col matrix (patch × images · oh · ow), both row-major.
    fn group_product(&self, images: usize) -> Product {
        let [oh, ow] = self.output();
        let columns = images * oh * ow;
        Product::new(
            [self.filters, columns, self.patch()],
            Layout::rows(self.patch()),
            Layout::rows(columns),
        )
    }

    /// Images per group. Fixed by the layer's shape alone (never by the thread count), so the
    /// summation order, and with it every bit of the result, is the same on any number of threads.
    fn group(&self) -> usize {
        let [oh, ow] = self.output();
        (256 / (oh * ow).max(1)).clamp(1, self.batch.max(1))
    }
}

super::multiversioned!(
    /// The input patches of `images` consecutive images starting at `x`: `patch` rows × `images *
    /// oh * ow` columns, row-major; padding reads as zero. Every element is written exactly once,
    /// straight into the matrix's uninitialised memory (no zero-fill first).
    ///
    /// A strided convolution reads every `sh`-th input row and `sw`-th column, so its images are
    /// first split into their `sh × sw` phases ([`Phases`]): each output row's inputs are then one
    /// contiguous run, copied with vector moves. Gathering them one element at a time, with the
    /// bookkeeping of each short output row (8 and 4 elements in the reference models), was a fifth
    /// of a teacher's inference pass.
    fn im2col(x: &[f32], shape: &ConvShape, images: usize) -> Vec<f32> {
        let [h, w] = shape.input;
        let [oh, ow] = shape.output();
        let [kh, kw] = shape.window.kernel;
        let [sh, sw] = shape.window.stride;
        let [ph, pw] = shape.window.pad_begin;
        let spatial = oh * ow;
        let columns = images * spatial;
        let len = shape.patch() * columns;
        let phases = Phases::split(x, shape, images);
        // Per kernel offset: the outputs that see the input, and the input index of the first.
        let rows: Vec<_> = (0..kh).map(|i| valid_outputs(i, sh, ph, h, oh)).collect();
        let cols: Vec<_> = (0..kw).map(|j| valid_outputs(j, sw, pw, w, ow)).collect();
        let mut col = Vec::with_capacity(len);
        for (index, dst_row) in col.spare_capacity_mut()[..len]
            .chunks_exact_mut(columns.max(1))
            .enumerate()
        {
            let (c, i, j) = (index / (kh * kw), index / kw % kh, index % kw);
            let (Some((r_lo, r_hi, first_row)), Some((lo, hi, first))) = (rows[i], cols[j]) else {
                fill_zero(dst_row);
                continue;
            };
            let n = hi - lo;
            for (g, dst) in dst_row.chunks_exact_mut(spatial).enumerate() {
                fill_zero(&mut dst[..r_lo * ow]);
                fill_zero(&mut dst[r_hi * ow..]);
                // Consecutive output rows read consecutive rows of one phase.
                let first_run = phases.layout.start(g, c, first_row, first);
                let last_end = first_run + (r_hi - r_lo - 1) * phases.layout.size[1] + n;
                assert!(
                    last_end <= phases.values.len(),
                    "im2col: runs past the input"
                );
                let src = &phases.values[first_run..last_end];
                let block = &mut dst[r_lo * ow..r_hi * ow];
                if lo == 0 && phases.layout.size[1] == ow {
                    // Phase rows as long as output rows: the block is one contiguous copy, after
                    // which the columns past the input (a 'same' window's last) are zeroed again.
                    for (d, &v) in block.iter_mut().zip(src) {
                        d.write(v);
                    }
                    for out_row in block.chunks_exact_mut(ow) {
                        fill_zero(&mut out_row[hi..]);
                    }
                    continue;
                }
                for (out_row, run) in block
                    .chunks_exact_mut(ow)
                    .zip(src.chunks(phases.layout.size[1]))
                {
                    fill_zero(&mut out_row[..lo]);
                    fill_zero(&mut out_row[hi..]);
                    for (d, &v) in out_row[lo..hi].iter_mut().zip(&run[..n]) {
                        d.write(v);
                    }
                }
            }
        }
        // SAFETY: the rows cover the first `len` elements; in each, every image's block is zeroed
        // outside the valid output rows, and every valid output row is zeroed outside its valid
        // columns and copied inside them from a run of exactly `hi - lo` elements (the runs end
        // with the last row's `n` elements, asserted inside the input, so there is one per valid
        // output row and `&run[..n]` panics rather than run short).
        unsafe { col.set_len(len) };
        col
    }
);

/// Zeroes `dst`; most of the ranges the patches pad are empty, so they are skipped outright
/// rather than handed to `memset`.
#[inline]
fn fill_zero(dst: &mut [MaybeUninit<f32>]) {
    if !dst.is_empty() {
        dst.fill(MaybeUninit::new(0.0));
    }
}

/// Where a group of images' planes sit once split by row and column phase for a strided window:
/// phase `(a, b)` of a plane holds its rows `a, a + sh, ...` and, of those, columns `b, b + sw,
/// ...`, so the elements a strided window visits along a row sit side by side. Stride 1 is the
/// planes as they are.
#[derive(Clone, Copy)]
struct PhaseLayout {
    channels: usize,
    stride: [usize; 2],
    /// Rows and columns of one phase.
    size: [usize; 2],
}

impl PhaseLayout {
    fn new(shape: &ConvShape) -> Self {
        let [h, w] = shape.input;
        let [sh, sw] = shape.window.stride;
        PhaseLayout {
            channels: shape.channels,
            stride: [sh, sw],
            size: [h.div_ceil(sh), w.div_ceil(sw)],
        }
    }

    fn is_identity(&self) -> bool {
        self.stride == [1, 1]
    }

    /// Elements of `images` images' phases (past a plane's last row or column included).
    fn len(&self, images: usize) -> usize {
        let [sh, sw] = self.stride;
        images * self.channels * sh * sw * self.size[0] * self.size[1]
    }

    /// Where image `g`, channel `c`, input row `row`, column `col` sits among the phases: the
    /// input columns `col + sw`, `col + 2·sw`, ... follow it, and input row `row + sh` starts one
    /// phase row (`size[1]` elements) later.
    fn start(&self, g: usize, c: usize, row: usize, col: usize) -> usize {
        let [sh, sw] = self.stride;
        let [rows, cols] = self.size;
        let phase = (row % sh) * sw + col % sw;
        let plane = (g * self.channels + c) * sh * sw + phase;
        (plane * rows + row / sh) * cols + col / sw
    }

    /// Where input row `r`'s column phase `b` starts within its plane's phases, as a function of
    /// `b`.
    fn phase_row(&self, r: usize) -> impl Fn(usize) -> usize {
        let ([sh, sw], size) = (self.stride, self.size);
        let (a, y) = (r % sh, r / sh);
        move |b| (((a * sw + b) * size[0]) + y) * size[1]
    }
}

/// A group of images' input planes split by phase ([`PhaseLayout`]); stride 1 borrows the
/// planes as they are.
struct Phases<'a> {
    values: std::borrow::Cow<'a, [f32]>,
    layout: PhaseLayout,
}

impl<'a> Phases<'a> {
    fn split(x: &'a [f32], shape: &ConvShape, images: usize) -> Self {
        let layout = PhaseLayout::new(shape);
        let [h, w] = shape.input;
        let planes = &x[..images * shape.channels * h * w];
        if layout.is_identity() {
            return Phases {
                values: std::borrow::Cow::Borrowed(planes),
                layout,
            };
        }
        let [sh, sw] = layout.stride;
        let len = layout.len(images);
        let mut values = Vec::with_capacity(len);
        let split = &mut values.spare_capacity_mut()[..len];
        // Where a plane's size is no multiple of the stride, some phases run past its last row
        // or column: zeroed (never read). Otherwise every element is written below.
        if h % sh != 0 || w % sw != 0 {
            fill_zero(split);
        }
        split_planes(planes, [h, w], layout, split);
        // SAFETY: with slack, every element was zeroed first; without, the phases of a plane
        // hold exactly its `h · w` elements (`size = [h / sh, w / sw]`), one per input element,
        // each written by `split_planes`, and the planes' phases cover the first `len` elements.
        unsafe { values.set_len(len) };
        Phases {
            values: std::borrow::Cow::Owned(values),
            layout,
        }
    }
}

super::multiversioned!(
    /// Writes the phases ([`PhaseLayout`]) of `planes` (each `h × w`) into `phases`: every
    /// element that holds an input element (the rest is left as it was).
    fn split_planes(
        planes: &[f32],
        input: [usize; 2],
        layout: PhaseLayout,
        phases: &mut [MaybeUninit<f32>],
    ) {
        let [h, w] = input;
        let [sh, sw] = layout.stride;
        let phase_len = layout.size[0] * layout.size[1];
        for (plane, out) in planes
            .chunks_exact(h * w)
            .zip(phases.chunks_exact_mut(sh * sw * phase_len))
        {
            for (r, row) in plane.chunks_exact(w).enumerate() {
                let phase_row = layout.phase_row(r);
                if sw == 2 {
                    // The common case, split with paired moves the compiler vectorises.
                    let (even, odd) = out.split_at_mut(phase_row(1));
                    let even = &mut even[phase_row(0)..][..layout.size[1]];
                    let odd = &mut odd[..layout.size[1]];
                    for ((e, o), pair) in
                        even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2))
                    {
                        e.write(pair[0]);
                        o.write(pair[1]);
                    }
                    if w % 2 == 1 {
                        even[w / 2].write(row[w - 1]);
                    }
                } else {
                    for (col, &v) in row.iter().enumerate() {
                        out[phase_row(col % sw) + col / sw].write(v);
                    }
                }
            }
        }
    }
);

super::multiversioned!(
    /// Writes the input gradient of channels `channels` of `images` consecutive images into their
    /// planes of `grad_x` (the group's whole input gradient, every channel) from `col`, the rows of
    /// the layout [`im2col`] writes that belong to those channels: each input element is the sum of
    /// the patch elements read from it. Every element of those planes is written, so they may start
    /// uninitialised.
    ///
    /// The reverse of [`im2col`]'s phase split: each output row's contributions are added into one
    /// contiguous run of the phases (vector adds instead of a scatter every `sw`-th element), and the
    /// phases are interleaved into `grad_x` once at the end. Each element still receives its terms in
    /// the same order, starting from zero, so the sums are bit for bit those of adding straight into
    /// a zeroed `grad_x` (which stride 1 does).
    fn col2im(
        col: &[f32],
        shape: &ConvShape,
        images: usize,
        channels: Range<usize>,
        grad_x: &mut [MaybeUninit<f32>],
    ) {
        let [h, w] = shape.input;
        let [oh, ow] = shape.output();
        let [kh, kw] = shape.window.kernel;
        let [sh, sw] = shape.window.stride;
        let [ph, pw] = shape.window.pad_begin;
        let (spatial, plane) = (oh * ow, h * w);
        let columns = images * spatial;
        let block = channels.len();
        let grad_x = &mut grad_x[..images * shape.channels * plane];
        // The planes of `channels`, image by image.
        fn planes(
            grad_x: &mut [MaybeUninit<f32>],
            per_image: usize,
            ours: Range<usize>,
            plane: usize,
        ) -> impl Iterator<Item = &mut [MaybeUninit<f32>]> {
            grad_x
                .chunks_exact_mut(per_image)
                .flat_map(move |image| image[ours.clone()].chunks_exact_mut(plane))
        }
        let (per_image, ours) = (
            shape.channels * plane,
            channels.start * plane..channels.end * plane,
        );
        // Stride 1 adds straight into the zeroed planes, laid out as in `grad_x`; other strides into
        // the block's phases.
        let identity = shape.window.stride == [1, 1];
        let layout = PhaseLayout::new(&ConvShape {
            channels: if identity { shape.channels } else { block },
            ..*shape
        });
        let first_channel = if identity { channels.start } else { 0 };
        let mut split = if identity {
            for plane in planes(grad_x, per_image, ours.clone(), plane) {
                fill_zero(plane);
            }
            Vec::new()
        } else {
            vec![0.0f32; layout.len(images)]
        };
        let acc: &mut [f32] = if identity {
            // SAFETY: the planes this call writes were zeroed just above, and only they are added to;
            // `MaybeUninit<f32>` has the layout of `f32`.
            unsafe { &mut *(grad_x as *mut [MaybeUninit<f32>] as *mut [f32]) }
        } else {
            &mut split
        };
        let rows: Vec<_> = (0..kh).map(|i| valid_outputs(i, sh, ph, h, oh)).collect();
        let cols: Vec<_> = (0..kw).map(|j| valid_outputs(j, sw, pw, w, ow)).collect();
        // Per kernel column offset: all ones for the output columns that read the input, zero
        // for the rest, over every output position (see the masked add below; only short rows
        // take it, so longer ones skip building the masks).
        let keep: Vec<Vec<u32>> = if ow < SHORT_ROW {
            cols.iter()
                .map(|valid| {
                    let (lo, hi) = valid.map_or((0, 0), |(lo, hi, _)| (lo, hi));
                    (0..spatial)
                        .map(|k| if (lo..hi).contains(&(k % ow)) { !0 } else { 0 })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let phase_len = layout.size[0] * layout.size[1];
        for (index, src_row) in col
            .chunks_exact(columns.max(1))
            .take(block * kh * kw)
            .enumerate()
        {
            let (c, i, j) = (index / (kh * kw), index / kw % kh, index % kw);
            let c = first_channel + c;
            let (Some((r_lo, r_hi, first_row)), Some((lo, hi, first))) = (rows[i], cols[j]) else {
                continue;
            };
            let n = hi - lo;
            for (g, src) in src_row.chunks_exact(spatial).enumerate() {
                let first_run = layout.start(g, c, first_row, first);
                let block = &src[r_lo * ow..r_hi * ow];
                if lo == 0 && n == ow && layout.size[1] == ow {
                    // Output rows as long as phase rows, all valid: one contiguous run.
                    let dst = &mut acc[first_run..][..block.len()];
                    dst.iter_mut().zip(block).for_each(|(d, &v)| *d += v);
                    continue;
                }
                if layout.size[1] == ow && ow < SHORT_ROW && first_run % phase_len >= lo {
                    // Short output rows as long as phase rows (the student's 8): the block is one
                    // contiguous run of both, from the first row's column 0 to the last row's
                    // last valid column, all in this image and channel's phase (so in planes
                    // this call zeroed), added in one vector loop instead of a scalar tail per
                    // row. The columns outside the input add +0.0 (their gradient masked off),
                    // which leaves every sum's bits as they are: a sum that starts at +0.0 never
                    // becomes -0.0 (x + y is -0.0 only when both are), and x + 0.0 is x for
                    // every other x, NaN payloads included.
                    let len = (r_hi - r_lo - 1) * ow + hi;
                    let dst = &mut acc[first_run - lo..][..len];
                    for ((d, &v), &m) in dst.iter_mut().zip(&block[..len]).zip(&keep[j]) {
                        *d += f32::from_bits(v.to_bits() & m);
                    }
                    continue;
                }
                for (r, run) in block.chunks_exact(ow).enumerate() {
                    let dst = &mut acc[first_run + r * layout.size[1]..][..n];
                    dst.iter_mut().zip(&run[lo..hi]).for_each(|(d, &v)| *d += v);
                }
            }
        }
        if identity {
            return;
        }
        // Interleave the phases back into the planes (every element of `grad_x` lies in one phase).
        for (plane, phases) in
            planes(grad_x, per_image, ours, plane).zip(split.chunks_exact(sh * sw * phase_len))
        {
            for (r, row) in plane.chunks_exact_mut(w).enumerate() {
                let phase_row = layout.phase_row(r);
                if sw == 2 {
                    let even = &phases[phase_row(0)..][..layout.size[1]];
                    let odd = &phases[phase_row(1)..][..layout.size[1]];
                    for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(even).zip(odd) {
                        pair[0].write(e);
                        pair[1].write(o);
                    }
                    if w % 2 == 1 {
                        row[w - 1].write(even[w / 2]);
                    }
                } else {
                    for (col, x) in row.iter_mut().enumerate() {
                        x.write(phases[phase_row(col % sw) + col / sw]);
                    }
                }
            }
        }
    }
);

/// Output rows shorter than this (one AVX-512 vector of `f32`) are added to the input gradient
/// as whole masked blocks in [`col2im`]; longer rows vectorise well one by one.
const SHORT_ROW: usize = 16;

/// Elements of the input-gradient patches computed and folded back at a time (about 400 KB, a
/// third of this machine's 2 MB L2 cache).
const COL2IM_BLOCK: usize = 96 << 10;

/// The im2col matrices of a forward pass, one per group of images, kept for the backward pass so
/// it does not gather the patches again (the teacher's largest costs about 38 MB per batch of 64).
#[derive(Debug, Clone)]
pub struct Patches(Vec<Vec<f32>>);

/// `y = act(conv(x, weight) + bias)` in NCHW, where `act` is the identity or, with `slope`, a
/// leaky ReLU with that negative slope.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> Vec<f32> {
    forward_impl(x, weight, bias, shape, slope, false, None).0
}

/// [`forward`], also returning the patches for [`backward`].
pub fn forward_keeping_patches(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> (Vec<f32>, Patches) {
    let (y, _, patches) = forward_impl(x, weight, bias, shape, slope, true, None);
    (y, patches)
}

/// What a training pass of convolution, activation and the 2×2 stride-1 'same' max pool keeps:
/// the convolution's (activated) output, the pooled output and the patches for
/// [`backward_max_pooled`].
pub struct PooledForward {
    /// `act(conv(x) + bias)`, NCHW: the pool's input, read back by the backward pass.
    pub y: Vec<f32>,
    /// The pooled output, the shape of `y` (after dropout, when given).
    pub pooled: Vec<f32>,
    /// The im2col matrices.
    pub patches: Patches,
}

/// [`forward_keeping_patches`] followed by the 2×2 stride-1 'same' max pool
/// ([`super::pool::forward`]) and, when given, dropout ([`dropout::apply`]), bit for bit, with
/// each group's planes pooled (and dropped out) right after the group's product, while they are
/// still in cache.
pub fn forward_max_pooled_keeping_patches(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    dropout: Option<DropoutMask>,
) -> PooledForward {
    let (y, pooled, patches) = forward_impl(x, weight, bias, shape, slope, true, Some(dropout));
    PooledForward { y, pooled, patches }
}

/// The convolution's output, when `pool` is given the pooled output (dropped out with the mask it
/// holds, if any; else empty) and, when `keep`, the patches.
fn forward_impl(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    keep: bool,
    pool: Option<Option<DropoutMask>>,
) -> (Vec<f32>, Vec<f32>, Patches) {
    let (pool, dropout) = (pool.is_some(), pool.flatten());
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, group) = (shape.filters, shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let len = shape.batch * filters * spatial;
    let chunk = group * filters * spatial;
    let same = Same2x2::new(oh, ow);
    let mut y = super::reserved(len);
    let mut pooled = super::reserved(if pool { len } else { 0 });
    // One destination per group: its share of the pooled output, or nothing.
    let pooled_chunks: Vec<&mut [MaybeUninit<f32>]> = if pool {
        pooled.spare_capacity_mut()[..len]
            .chunks_mut(chunk)
            .collect()
    } else {
        (0..shape.batch.div_ceil(group))
            .map(|_| &mut [][..])
            .collect()
    };
    let patches = y.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(group * image_in))
        .zip(pooled_chunks)
        .enumerate()
        .map(|(task, ((y, x), pooled))| {
            let images = y.len() / (filters * spatial);
            let columns = images * spatial;
            let col = im2col(x, shape, images);
            let product = shape.group_product(images);
            // One image: the product's layout (filters × spatial) is the output's, so it is
            // computed in place; a group of several is reordered image-major afterwards.
            if images == 1 {
                product.write_into_uninit(y, columns, weight, &col);
            } else {
                let product = product.new_matrix(weight, &col);
                for g in 0..images {
                    for f in 0..filters {
                        let dst = &mut y[(g * filters + f) * spatial..][..spatial];
                        let src = &product[f * columns + g * spatial..][..spatial];
                        for (d, &v) in dst.iter_mut().zip(src) {
                            d.write(v);
                        }
                    }
                }
            }
            // SAFETY: the product (one image) or the copy (several) initialised every element of
            // this chunk; `MaybeUninit<f32>` has the layout of `f32`.
            let y = unsafe { &mut *(y as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (row, f) in y.chunks_exact_mut(spatial).zip((0..filters).cycle()) {
                add_bias_activate(row, bias[f], slope);
            }
            if pool {
                same.pool(y, pooled);
            }
            if let Some(mask) = dropout {
                // SAFETY: `Same2x2::pool` wrote every element of the chunk.
                let pooled = unsafe { &mut *(pooled as *mut [MaybeUninit<f32>] as *mut [f32]) };
                dropout::apply_in_place(mask, (task * chunk) as u64, pooled);
            }
            keep.then_some(col)
        })
        .collect::<Vec<_>>();
    // SAFETY: the chunks cover the first `len` elements, each initialised above; when pooling,
    // `Same2x2::pool` wrote every element of every pooled chunk, which cover as many.
    unsafe {
        y.set_len(len);
        if pool {
            pooled.set_len(len);
        }
    }
    (y, pooled, Patches(patches.into_iter().flatten().collect()))
}

/// `maxpool(act(conv(x, weight) + bias))` for inference, where the pool is Keras'
/// `MaxPooling2D(2, strides=1, padding="same")` (the reference models' pool, so the output has the
/// convolution's size). Each group's product is activated and pooled while it is still in cache:
/// the convolution's output is never written to memory, nor read back by a separate pooling pass.
/// Bit for bit [`forward`] followed by [`super::pool::forward`].
pub fn forward_max_pooled(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
) -> Vec<f32> {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, group) = (shape.filters, shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let len = shape.batch * filters * spatial;
    let same = Same2x2::new(oh, ow);
    let mut y = super::reserved(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(group * filters * spatial)
        .zip(x.par_chunks(group * image_in))
        .for_each(|(y, x)| {
            let images = y.len() / (filters * spatial);
            let columns = images * spatial;
            let col = im2col(x, shape, images);
            let mut product = shape.group_product(images).new_matrix(weight, &col);
            for (f, row) in product.chunks_exact_mut(columns).enumerate() {
                add_bias_activate(row, bias[f], slope);
            }
            // The product's planes run filter-major (filters × images), the output's image-major.
            if images == 1 {
                same.pool(&product, y);
            } else {
                let mut pooled = vec![MaybeUninit::uninit(); product.len()];
                same.pool(&product, &mut pooled);
                for (f, row) in pooled.chunks_exact(columns).enumerate() {
                    for (g, plane) in row.chunks_exact(spatial).enumerate() {
                        y[(g * filters + f) * spatial..][..spatial].copy_from_slice(plane);
                    }
                }
            }
        });
    // SAFETY: `Same2x2::pool` wrote every element of `pooled` (or of `y`), whose planes cover
    // every image's every filter plane; the chunks cover the first `len` elements.
    unsafe { y.set_len(len) };
    y
}

/// `values + bias`, through a leaky ReLU when `slope` is given.
fn add_bias_activate(values: &mut [f32], bias: f32, slope: Option<f32>) {
    match slope {
        Some(slope) => {
            for v in values {
                let z = *v + bias;
                *v = if z < 0.0 { z * slope } else { z };
            }
        }
        None => {
            for v in values {
                *v += bias;
            }
        }
    }
}

/// Gradients of [`forward`]: `(x, weight, bias)`; the input gradient only when `want_x`.
/// `y` is forward's output (the activation's derivative is read off its sign, which is the sign
/// of its input for a positive slope).
pub struct ConvGrads {
    /// d loss / d x, `[batch, channels, h, w]`, when asked for.
    pub x: Option<Vec<f32>>,
    /// d loss / d weight, `[filters, channels, kh, kw]`.
    pub weight: Vec<f32>,
    /// d loss / d bias, `[filters]`.
    pub bias: Vec<f32>,
}

/// See [`ConvGrads`].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    grad_y: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    want_x: bool,
    patches: Option<&Patches>,
) -> ConvGrads {
    let grad = OutputGradient::Direct(grad_y);
    backward_impl(x, weight, y, grad, shape, slope, want_x, patches)
}

/// Gradients of [`forward_max_pooled_keeping_patches`] from the (dropped-out) pooled output's
/// gradient `grad_pooled`: bit for bit dropout's backward pass ([`dropout::apply`] with the
/// forward pass's mask), [`super::pool::backward`] and [`backward`], with each group's pool
/// gradient formed plane by plane where the convolution's backward pass reads it (neither the
/// dropout's nor the pool's input gradient is ever written out whole).
#[allow(clippy::too_many_arguments)]
pub fn backward_max_pooled(
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    grad_pooled: &[f32],
    shape: &ConvShape,
    slope: Option<f32>,
    dropout: Option<DropoutMask>,
    want_x: bool,
    patches: Option<&Patches>,
) -> ConvGrads {
    let grad = OutputGradient::ThroughSame2x2Pool(grad_pooled, dropout);
    backward_impl(x, weight, y, grad, shape, slope, want_x, patches)
}

/// The gradient reaching the convolution's (activated) output.
#[derive(Clone, Copy)]
enum OutputGradient<'a> {
    /// Given, `[batch, filters, oh, ow]`.
    Direct(&'a [f32]),
    /// The gradient of a 2×2 stride-1 'same' max pool of the output (then dropout with the mask,
    /// when given), the output's shape.
    ThroughSame2x2Pool(&'a [f32], Option<DropoutMask>),
}

#[allow(clippy::too_many_arguments)]
fn backward_impl(
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    grad_y: OutputGradient<'_>,
    shape: &ConvShape,
    slope: Option<f32>,
    want_x: bool,
    patches: Option<&Patches>,
) -> ConvGrads {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, patch, group) = (shape.filters, shape.patch(), shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let image_out = filters * spatial;
    let grad_x_len = if want_x { shape.batch * image_in } else { 0 };
    let mut grad_x = super::reserved(grad_x_len);
    let tasks: Vec<(Vec<f32>, Vec<f32>)> = if want_x {
        grad_x.spare_capacity_mut()[..grad_x_len]
            .par_chunks_mut(group * image_in)
            .enumerate()
            .map(|(t, gx)| {
                let col = patches.map(|p| p.0[t].as_slice());
                group_backward(t, Some(gx), x, col, weight, y, grad_y, shape, slope)
            })
            .collect()
    } else {
        (0..shape.batch.div_ceil(group))
            .into_par_iter()
            .map(|t| {
                let col = patches.map(|p| p.0[t].as_slice());
                group_backward(t, None, x, col, weight, y, grad_y, shape, slope)
            })
            .collect()
    };
    // SAFETY: with `want_x`, the groups' chunks cover the first `grad_x_len` elements and
    // `col2im` wrote every element of each; otherwise the length is 0.
    unsafe { grad_x.set_len(grad_x_len) };
    // Summed in group order (deterministic whatever the thread count), in parallel over slices of
    // the weight gradient: for the teacher this is ~15 M additions per step.
    let mut grad_w = vec![0.0f32; filters * patch];
    const SLICE: usize = 1 << 13;
    grad_w
        .par_chunks_mut(SLICE)
        .enumerate()
        .for_each(|(slice, out)| {
            for (gw, _) in &tasks {
                add_assign(out, &gw[slice * SLICE..slice * SLICE + out.len()]);
            }
        });
    let mut grad_b = vec![0.0f32; filters];
    for (_, gb) in &tasks {
        grad_b.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
    }
    let (OutputGradient::Direct(g) | OutputGradient::ThroughSame2x2Pool(g, _)) = grad_y;
    debug_assert_eq!(g.len(), shape.batch * image_out);
    ConvGrads {
        x: want_x.then_some(grad_x),
        weight: grad_w,
        bias: grad_b,
    }
}

/// One group's share of [`backward`]: writes its input gradient into `grad_x` (the group's slice)
/// and returns its weight and bias gradients.
#[allow(clippy::too_many_arguments)]
fn group_backward(
    task: usize,
    grad_x: Option<&mut [MaybeUninit<f32>]>,
    x: &[f32],
    patches: Option<&[f32]>,
    weight: &[f32],
    y: &[f32],
    grad_y: OutputGradient<'_>,
    shape: &ConvShape,
    slope: Option<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let [oh, ow] = shape.output();
    let spatial = oh * ow;
    let (filters, patch, group) = (shape.filters, shape.patch(), shape.group());
    let [h, w] = shape.input;
    let image_in = shape.channels * h * w;
    let image_out = filters * spatial;
    let first = task * group;
    let images = group.min(shape.batch - first);
    let columns = images * spatial;

    // d loss / d (conv + bias), laid out filters × (image, position) like the forward product.
    let mut grad_z = Vec::with_capacity(filters * columns);
    // The group's planes (image-major) in the output and its gradient.
    let run = first * image_out..(first + images) * image_out;
    let grad_y = match grad_y {
        OutputGradient::Direct(grad_y) => Cow::Borrowed(&grad_y[run.clone()]),
        OutputGradient::ThroughSame2x2Pool(grad_pooled, mask) => {
            let mut dropped = Vec::new();
            let grad_pooled = match mask {
                Some(mask) => {
                    dropped.extend_from_slice(&grad_pooled[run.clone()]);
                    dropout::apply_in_place(mask, run.start as u64, &mut dropped);
                    &dropped[..]
                }
                None => &grad_pooled[run.clone()],
            };
            let winner = Same2x2::new(oh, ow).winners(&y[run.clone()]);
            let mut routed = Vec::with_capacity(run.len());
            super::pool::gather_same_2x2(
                &winner,
                grad_pooled,
                ow,
                &mut routed.spare_capacity_mut()[..run.len()],
            );
            // SAFETY: the gather wrote each of the run's elements.
            unsafe { routed.set_len(run.len()) };
            Cow::Owned(routed)
        }
    };
    let y = &y[run];
    let gz = &mut grad_z.spare_capacity_mut()[..filters * columns];
    for g in 0..images {
        for f in 0..filters {
            let dst = &mut gz[f * columns + g * spatial..][..spatial];
            let plane = (g * filters + f) * spatial..(g * filters + f + 1) * spatial;
            activation_gradient(&grad_y[plane.clone()], &y[plane], slope, dst);
        }
    }
    // SAFETY: every image's every filter plane was written above, and they cover the matrix.
    unsafe { grad_z.set_len(filters * columns) };
    let grad_b = row_sums(&grad_z, columns);

    let gathered;
    let col = match patches {
        Some(col) => col,
        None => {
            gathered = im2col(&x[first * image_in..], shape, images);
            &gathered
        }
    };
    let grad_w = weight_gradient(&grad_z, col, [filters, patch, columns]);
    if let Some(grad_x) = grad_x {
        // grad_col (patch × columns) = weightᵀ (patch × filters) · grad_z (filters × columns),
        // a block of input channels' rows at a time, each folded into the input gradient while
        // it is still in cache: the whole matrix (2.4 MB for the teacher's second and third
        // convolutions) came back from memory for col2im, and gemm wrote it at two thirds of the
        // rate it writes a block. A row's sum does not depend on how many rows are computed with
        // it (the reduction over filters is split the same way), so the bits are the same.
        let window = shape.window.kernel[0] * shape.window.kernel[1];
        let block = (COL2IM_BLOCK / (window * columns)).max(1);
        let mut grad_col = Vec::new();
        for first in (0..shape.channels).step_by(block) {
            let channels = first..(first + block).min(shape.channels);
            Product::new(
                [channels.len() * window, columns, filters],
                Layout::columns(patch),
                Layout::rows(columns),
            )
            .replace_contents(&mut grad_col, &weight[first * window..], &grad_z);
            col2im(&grad_col, shape, images, channels, grad_x);
        }
    }
    (grad_w, grad_b)
}

/// grad_w (filters × patch) = grad_z (filters × columns) · colᵀ (columns × patch).
///
/// Where the streaming product applies, it computes the transpose, colᵀ's rows being the
/// positions: `grad_wᵀ (patch × filters) = col (patch × columns) · grad_zᵀ (columns × filters)`,
/// reading `col` in place (gemm packed both operands, and this product ran at a quarter of the
/// rate of the forward one). Each element is the same chains of multiply-adds over the positions
/// in gemm's depth blocks, whose rule is the same for the transpose, so the same bits.
fn weight_gradient(grad_z: &[f32], col: &[f32], [filters, patch, columns]: [usize; 3]) -> Vec<f32> {
    let transposed = Product::new(
        [patch, filters, columns],
        Layout::rows(columns),
        Layout::rows(filters),
    );
    if !transposed.streams() {
        return Product::new(
            [filters, patch, columns],
            Layout::rows(columns),
            Layout::columns(columns),
        )
        .new_matrix(grad_z, col);
    }
    let mut grad_z_t = vec![0.0; columns * filters];
    for (f, row) in grad_z.chunks_exact(columns).enumerate() {
        for (n, &v) in row.iter().enumerate() {
            grad_z_t[n * filters + f] = v;
        }
    }
    let grad_w_t = transposed.new_matrix(col, &grad_z_t);
    let mut grad_w = vec![0.0; filters * patch];
    for (p, row) in grad_w_t.chunks_exact(filters).enumerate() {
        for (f, &v) in row.iter().enumerate() {
            grad_w[f * patch + p] = v;
        }
    }
    grad_w
}

super::multiversioned!(
    /// The gradient through the activation, from the activated output `y`: `grad · slope` where
    /// `y` is negative when a leaky ReLU's `slope` is given, else `grad` itself.
    fn activation_gradient(
        grad: &[f32],
        y: &[f32],
        slope: Option<f32>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        match slope {
            Some(slope) => {
                for ((d, &g), &y) in dst.iter_mut().zip(grad).zip(y) {
                    d.write(if y < 0.0 { g * slope } else { g });
                }
            }
            None => {
                for (d, &g) in dst.iter_mut().zip(grad) {
                    d.write(g);
                }
            }
        }
    }
);

super::multiversioned!(
    /// `sum[i] += part[i]`.
    fn add_assign(sum: &mut [f32], part: &[f32]) {
        sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
);

/// The sum of each `columns`-long row of `matrix`, each added left to right exactly as
/// `row.iter().sum::<f32>()` adds it (same start, same order, so the same bits), but eight rows
/// at a time: one row's sum is a chain of dependent additions, each waiting for the last (about
/// 4 cycles an element, 4% of a student step); eight chains side by side keep the adder busy.
fn row_sums(matrix: &[f32], columns: usize) -> Vec<f32> {
    const ROWS: usize = 8;
    assert!(columns > 0, "row_sums: rows of no columns");
    let start = std::iter::empty::<f32>().sum::<f32>();
    let mut sums = Vec::with_capacity(matrix.len() / columns);
    let mut blocks = matrix.chunks_exact(ROWS * columns);
    for block in &mut blocks {
        let rows: [&[f32]; ROWS] = std::array::from_fn(|r| &block[r * columns..][..columns]);
        let mut acc = [start; ROWS];
        for k in 0..columns {
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a += row[k];
            }
        }
        sums.extend_from_slice(&acc);
    }
    sums.extend(
        blocks
            .remainder()
            .chunks(columns)
            .map(|row| row.iter().sum::<f32>()),
    );
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        batch: usize,
        channels: usize,
        input: [usize; 2],
        filters: usize,
        k: usize,
        s: usize,
        pad: [usize; 2],
    ) -> ConvShape {
        ConvShape {
            batch,
            channels,
            input,
            filters,
            window: Window2d {
                kernel: [k, k],
                stride: [s, s],
                pad_begin: [pad[0], pad[0]],
                pad_end: [pad[1], pad[1]],
            },
        }
    }

    /// The textbook definition, one output at a time.
    fn direct(x: &[f32], wt: &[f32], b: &[f32], s: &ConvShape) -> Vec<f32> {
        let [h, w] = s.input;
        let [oh, ow] = s.output();
        let [kh, kw] = s.window.kernel;
        let mut y = vec![0.0; s.batch * s.filters * oh * ow];
        for n in 0..s.batch {
            for f in 0..s.filters {
                for r in 0..oh {
                    for q in 0..ow {
                        let mut acc = b[f] as f64;
                        for c in 0..s.channels {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let ir = (r * s.window.stride[0] + i) as isize
                                        - s.window.pad_begin[0] as isize;
                                    let ic = (q * s.window.stride[1] + j) as isize
                                        - s.window.pad_begin[1] as isize;
                                    if ir < 0 || ic < 0 || ir >= h as isize || ic >= w as isize {
                                        continue;
                                    }
                                    acc += (x[((n * s.channels + c) * h + ir as usize) * w
                                        + ic as usize]
                                        * wt[((f * s.channels + c) * kh + i) * kw + j])
                                        as f64;
                                }
                            }
                        }
                        y[((n * s.filters + f) * oh + r) * ow + q] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    /// Windows with odd shapes and padding, `filters` filters each.
    fn awkward_shapes(filters: usize) -> [ConvShape; 6] {
        [
            shape(3, 2, [7, 6], filters, 3, 2, [0, 1]),
            // odd widths and a stride of 3: the phase split's odd last column and general path
            shape(2, 3, [6, 7], filters, 3, 2, [1, 1]),
            shape(2, 2, [8, 7], filters, 3, 3, [1, 1]),
            shape(2, 3, [5, 5], filters, 3, 1, [1, 1]),
            shape(1, 1, [4, 4], filters, 2, 2, [0, 0]),
            // kernel offsets with no valid input column at all
            shape(2, 2, [1, 2], filters, 3, 1, [2, 0]),
        ]
    }

    #[test]
    fn forward_matches_the_definition_with_odd_shapes_and_padding() {
        for s in awkward_shapes(3) {
            let [h, w] = s.input;
            let x = values(s.batch * s.channels * h * w, 1);
            let wt = values(s.filters * s.patch(), 2);
            let b = values(s.filters, 3);
            let got = forward(&x, &wt, &b, &s, None);
            let want = direct(&x, &wt, &b, &s);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w} for {s:?}");
            }
            let leaky = forward(&x, &wt, &b, &s, Some(0.2));
            for (g, w) in leaky.iter().zip(&want) {
                let w = if *w < 0.0 { w * 0.2 } else { *w };
                assert!((g - w).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn the_streamed_weight_gradient_is_gemms_bit_for_bit() {
        use crate::kernels::matmul::{on_gemm, SWITCH};
        let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::kernels::streaming::available() {
            eprintln!("note: no AVX-512 on this CPU; the weight gradient stays on gemm");
            return;
        }
        for [filters, patch, columns] in [
            [16, 144, 256],
            [32, 288, 256],
            [64, 576, 256],
            [32, 27, 512],
            [24, 50, 100],
        ] {
            let grad_z = values(filters * columns, 3);
            let col = values(patch * columns, 4);
            let shape = [filters, patch, columns];
            assert!(
                Product::new(
                    [patch, filters, columns],
                    Layout::rows(columns),
                    Layout::rows(filters)
                )
                .streams(),
                "{shape:?} streams"
            );
            let streamed = weight_gradient(&grad_z, &col, shape);
            let gemm = on_gemm(|| weight_gradient(&grad_z, &col, shape));
            assert!(
                streamed
                    .iter()
                    .zip(&gemm)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{filters}x{patch} over {columns} positions"
            );
        }
    }

    #[test]
    fn row_sums_are_the_sequential_sums_bit_for_bit() {
        for (rows, columns) in [(32, 256), (19, 7), (8, 1), (3, 5), (16, 4096)] {
            // Magnitudes far apart, so any other order rounds differently; signed zeros too.
            let mut m: Vec<f32> = (0..rows * columns)
                .map(|i| ((i as f32) * 0.917).sin() * 10f32.powi((i % 9) as i32 - 4))
                .collect();
            m[..columns].fill(-0.0);
            let want: Vec<u32> = m
                .chunks(columns)
                .map(|r| r.iter().sum::<f32>().to_bits())
                .collect();
            let got: Vec<u32> = row_sums(&m, columns).iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "{rows} x {columns}");
        }
    }

    /// col2im as a scatter: every patch element added straight to the input position it was
    /// read from, in im2col's row order (the kernel before the phase split).
    fn scatter_col2im(col: &[f32], s: &ConvShape, images: usize) -> Vec<f32> {
        let [h, w] = s.input;
        let [oh, ow] = s.output();
        let [kh, kw] = s.window.kernel;
        let [sh, sw] = s.window.stride;
        let [ph, pw] = s.window.pad_begin;
        let columns = images * oh * ow;
        let mut grad_x = vec![0.0f32; images * s.channels * h * w];
        for c in 0..s.channels {
            for i in 0..kh {
                for j in 0..kw {
                    let row = &col[((c * kh + i) * kw + j) * columns..][..columns];
                    for g in 0..images {
                        for r in 0..oh {
                            for q in 0..ow {
                                let (ir, ic) = (r * sh + i, q * sw + j);
                                if ir < ph || ic < pw || ir - ph >= h || ic - pw >= w {
                                    continue;
                                }
                                grad_x[((g * s.channels + c) * h + ir - ph) * w + ic - pw] +=
                                    row[(g * oh + r) * ow + q];
                            }
                        }
                    }
                }
            }
        }
        grad_x
    }

    #[test]
    fn col2im_through_phases_is_the_scatter_bit_for_bit() {
        // the reference models' 3x3 stride-2 'same' window on an even input, then odd ones
        let reference = shape(3, 2, [16, 16], 1, 3, 2, [0, 1]);
        for s in std::iter::once(reference).chain(awkward_shapes(1)) {
            let [oh, ow] = s.output();
            let col = values(s.patch() * s.batch * oh * ow, 5);
            let [h, w] = s.input;
            let want = scatter_col2im(&col, &s, s.batch);
            // All channels at once, then blocks of one channel (each block's rows of `col`).
            for block in [s.channels, 1] {
                // Filled with NaN: col2im must write every element.
                let mut got = vec![MaybeUninit::new(f32::NAN); s.batch * s.channels * h * w];
                let rows = block * s.window.kernel[0] * s.window.kernel[1] * s.batch * oh * ow;
                for (b, col) in col.chunks(rows).enumerate() {
                    let channels = b * block..((b + 1) * block).min(s.channels);
                    col2im(col, &s, s.batch, channels, &mut got);
                }
                // SAFETY: initialised (NaN) from the start.
                let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{s:?}, blocks of {block} channel(s)"
                );
            }
        }
    }

    /// Central differences of `sum(dy ⊙ y)` against the analytic gradients, in f64 arithmetic
    /// through the f32 kernel (step 1e-2 on values of order 1, so rounding stays far below 1e-2).
    #[test]
    fn backward_matches_finite_differences() {
        let s = shape(2, 2, [5, 4], 3, 3, 2, [0, 1]);
        let [h, w] = s.input;
        let x = values(s.batch * s.channels * h * w, 7);
        let wt = values(s.filters * s.patch(), 8);
        let b = values(s.filters, 9);
        let y = forward(&x, &wt, &b, &s, None);
        let dy = values(y.len(), 10);
        let grads = backward(&x, &wt, &y, &dy, &s, None, true, None);
        // The patches kept by the forward pass give exactly the same gradients.
        let (y_kept, patches) = forward_keeping_patches(&x, &wt, &b, &s, None);
        assert_eq!(y_kept, y);
        let with_patches = backward(&x, &wt, &y, &dy, &s, None, true, Some(&patches));
        assert_eq!(with_patches.x, grads.x);
        assert_eq!(with_patches.weight, grads.weight);
        assert_eq!(with_patches.bias, grads.bias);
        let objective = |x: &[f32], wt: &[f32], b: &[f32]| -> f64 {
            forward(x, wt, b, &s, None)
                .iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let eps = 1e-2f32;
        let check = |analytic: &[f32], base: &[f32], which: usize| {
            for i in 0..base.len() {
                let mut plus = base.to_vec();
                let mut minus = base.to_vec();
                plus[i] += eps;
                minus[i] -= eps;
                let (fp, fm) = match which {
                    0 => (objective(&plus, &wt, &b), objective(&minus, &wt, &b)),
                    1 => (objective(&x, &plus, &b), objective(&x, &minus, &b)),
                    _ => (objective(&x, &wt, &plus), objective(&x, &wt, &minus)),
                };
                let numeric = (fp - fm) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-3,
                    "input {which} index {i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        };
        check(grads.x.as_ref().expect("asked for"), &x, 0);
        check(&grads.weight, &wt, 1);
        check(&grads.bias, &b, 2);
    }

    /// The fused inference pass is the convolution followed by the pool, bit for bit: groups of
    /// several images with a short last group (8×8 outputs: 4 images a group, 7 images), one
    /// image a group (16×16), planes of one row and of one column.
    #[test]
    fn max_pooled_forward_is_the_convolution_then_the_pool_exactly() {
        let pool = Window2d {
            kernel: [2, 2],
            stride: [1, 1],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        };
        for s in [
            shape(7, 3, [16, 16], 5, 3, 2, [0, 1]),
            shape(2, 2, [16, 16], 3, 3, 1, [1, 1]),
            shape(3, 2, [1, 6], 4, 1, 1, [0, 0]),
            shape(3, 2, [5, 1], 4, 1, 1, [0, 0]),
        ] {
            let [h, w] = s.input;
            let [oh, ow] = s.output();
            let x = values(s.batch * s.channels * h * w, 11);
            let wt = values(s.filters * s.patch(), 12);
            let b = values(s.filters, 13);
            for slope in [None, Some(0.2)] {
                let conv = forward(&x, &wt, &b, &s, slope);
                let want = crate::kernels::pool::forward(&conv, s.batch * s.filters, oh, ow, &pool);
                let got = forward_max_pooled(&x, &wt, &b, &s, slope);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{s:?} slope {slope:?}"
                );
            }
        }
    }

    /// The fused training pass and its backward pass are the convolution, then the pool, and
    /// their backward passes in turn, bit for bit, with and without the kept patches.
    #[test]
    fn max_pooled_training_pass_and_gradients_are_the_unfused_ones_exactly() {
        let pool = Window2d {
            kernel: [2, 2],
            stride: [1, 1],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        };
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for s in [
            shape(7, 3, [16, 16], 5, 3, 2, [0, 1]),
            shape(2, 2, [16, 16], 3, 3, 1, [1, 1]),
            shape(3, 2, [5, 1], 4, 1, 1, [0, 0]),
        ] {
            let [h, w] = s.input;
            let [oh, ow] = s.output();
            let planes = s.batch * s.filters;
            let x = values(s.batch * s.channels * h * w, 21);
            let wt = values(s.filters * s.patch(), 22);
            let b = values(s.filters, 23);
            let grad_pooled = values(planes * oh * ow, 24);
            let masks = [None, Some(DropoutMask { keep: 0.7, seed: 5 })];
            for (slope, mask) in [None, Some(0.2)]
                .into_iter()
                .flat_map(|sl| masks.map(|m| (sl, m)))
            {
                let fused = forward_max_pooled_keeping_patches(&x, &wt, &b, &s, slope, mask);
                let (y, patches) = forward_keeping_patches(&x, &wt, &b, &s, slope);
                let mut pooled = crate::kernels::pool::forward(&y, planes, oh, ow, &pool);
                // Dropout's backward pass is its forward pass on the gradient.
                let mut grad_dropped = grad_pooled.clone();
                if let Some(m) = mask {
                    pooled = dropout::apply(&pooled, m.keep, m.seed);
                    grad_dropped = dropout::apply(&grad_pooled, m.keep, m.seed);
                    assert!(
                        pooled.iter().filter(|&&v| v == 0.0).count() > planes,
                        "dropped some"
                    );
                }
                assert_eq!(bits(&fused.y), bits(&y), "{s:?}");
                assert_eq!(bits(&fused.pooled), bits(&pooled), "{s:?} {mask:?}");
                assert_eq!(fused.patches.0, patches.0);
                let grad_y =
                    crate::kernels::pool::backward(&y, &grad_dropped, planes, oh, ow, &pool);
                let want = backward(&x, &wt, &y, &grad_y, &s, slope, true, Some(&patches));
                for kept in [Some(&fused.patches), None] {
                    let got =
                        backward_max_pooled(&x, &wt, &y, &grad_pooled, &s, slope, mask, true, kept);
                    assert_eq!(
                        bits(got.x.as_ref().unwrap()),
                        bits(want.x.as_ref().unwrap())
                    );
                    assert_eq!(bits(&got.weight), bits(&want.weight), "{s:?} {slope:?}");
                    assert_eq!(bits(&got.bias), bits(&want.bias));
                }
            }
        }
    }

    #[test]
    fn leaky_backward_scales_negative_outputs_by_the_slope() {
        let s = shape(1, 1, [3, 3], 1, 1, 1, [0, 0]);
        let x = vec![-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, -3.0, 4.0, -4.0];
        let y = forward(&x, &[1.0], &[0.0], &s, Some(0.5));
        assert_eq!(y, vec![-1.0, -0.5, 0.0, 1.0, 2.0, 3.0, -1.5, 4.0, -2.0]);
        let grads = backward(&x, &[1.0], &y, &[1.0; 9], &s, Some(0.5), true, None);
        assert_eq!(
            grads.x.unwrap(),
            vec![0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 0.5]
        );
        // d/dw sum(y) = sum over x of x * act'(x)
        assert_eq!(
            grads.weight,
            vec![-1.0 - 0.5 + 0.0 + 1.0 + 2.0 + 3.0 - 1.5 + 4.0 - 2.0]
        );
        assert_eq!(grads.bias, vec![7.0]);
    }
}
