//! Direct convolution for inference, one image at a time, in a blocked channel layout.
//!
//! The training path turns every convolution into im2col and a matrix product, and leaves each
//! layer's output in `[channels, height, width]` planes that the next layer's im2col reads
//! again: on a ResNet-20 pass im2col was a fifth of the time, and the thin products (16 to 64
//! filters) ran at 60% of the core's peak. Here a feature map keeps its channels in groups of 16
//! (one AVX-512 vector per pixel, as ONNX Runtime's MLAS does), with a one-pixel zero border, so
//! a convolution reads the previous layer's output in place: each output pixel's 16 filters are
//! one accumulator, and a row of up to 16 output pixels keeps 16 accumulators while the weights
//! stream past (one vector load feeds 16 multiply-adds). The batch norm is folded into the
//! weights, and the bias, the residual add and the ReLU are applied to the accumulators before
//! they are stored.
//!
//! Each output element is `bias + Σ w·x` summed in one fixed order (input channel block, kernel
//! row, kernel column, channel) with fused multiply-adds, on every path: the AVX-512 kernel and
//! the portable [`reference()`] give the same bits, and an image gives the same bits alone or in
//! any batch, on any number of threads. The order differs from the im2col path's, so the two
//! paths agree to float rounding, not bit for bit.

/// Channels per block: one AVX-512 vector of `f32`.
pub const LANES: usize = 16;

/// Whether the direct kernels run on this CPU (AVX-512F).
pub fn available() -> bool {
    super::streaming::available()
}

/// Whether a feature map of `channels` fits the blocked layout: whole blocks of 16, or a single
/// block of fewer (an input image's 3 channels).
pub fn blockable(channels: usize) -> bool {
    channels > 0 && (channels <= LANES || channels.is_multiple_of(LANES))
}

/// One image's feature map in the blocked layout: channel blocks of `block` channels, each a
/// `(height + 2) × (width + 2)` grid of pixels (the outer ring zero) holding `block` consecutive
/// channels per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockedMap {
    /// Channels.
    pub channels: usize,
    /// Channels per block: 16, or `channels` when there are fewer.
    pub block: usize,
    /// Height without the border.
    pub height: usize,
    /// Width without the border.
    pub width: usize,
    /// The values, border included.
    pub data: Vec<f32>,
}

impl BlockedMap {
    /// An all-zero map (see [`blockable`]).
    ///
    /// # Panics
    /// If `channels` is not [`blockable`].
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        assert!(blockable(channels), "{channels} channels do not block");
        let block = channels.min(LANES);
        let len = channels * (height + 2) * (width + 2);
        BlockedMap {
            channels,
            block,
            height,
            width,
            data: vec![0.0; len],
        }
    }

    /// Channel blocks.
    pub fn blocks(&self) -> usize {
        self.channels / self.block
    }

    fn row_len(&self) -> usize {
        (self.width + 2) * self.block
    }

    fn plane_len(&self) -> usize {
        (self.height + 2) * self.row_len()
    }

    /// Position in `data` of channel `c` at pixel (`y`, `x`) (border excluded).
    pub fn index(&self, c: usize, y: usize, x: usize) -> usize {
        (c / self.block) * self.plane_len()
            + (y + 1) * self.row_len()
            + (x + 1) * self.block
            + c % self.block
    }

    /// Overwrites the interior with `image`, `[channels, height, width]` row-major.
    pub fn load_planes(&mut self, image: &[f32]) {
        assert_eq!(image.len(), self.channels * self.height * self.width);
        let plane = self.height * self.width;
        for c in 0..self.channels {
            for y in 0..self.height {
                let start = self.index(c, y, 0);
                let row = &image[c * plane + y * self.width..][..self.width];
                for (x, &v) in row.iter().enumerate() {
                    self.data[start + x * self.block] = v;
                }
            }
        }
    }

    /// `v · scale[c] + shift[c]` for every interior value `v` of channel `c` (an input
    /// normalisation; the border stays zero, as the padding of the layer it feeds).
    pub fn scale_shift(&mut self, scale: &[f32], shift: &[f32]) {
        assert!(scale.len() == self.channels && shift.len() == self.channels);
        for c in 0..self.channels {
            for y in 0..self.height {
                let start = self.index(c, y, 0);
                for x in 0..self.width {
                    let v = &mut self.data[start + x * self.block];
                    *v = v.mul_add(scale[c], shift[c]);
                }
            }
        }
    }

    /// The interior as `[channels, height, width]` row-major.
    pub fn to_planes(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.channels * self.height * self.width);
        for c in 0..self.channels {
            for y in 0..self.height {
                let start = self.index(c, y, 0);
                out.extend((0..self.width).map(|x| self.data[start + x * self.block]));
            }
        }
        out
    }

    /// Global average pooling: each channel's mean, summed row by row.
    pub fn channel_means(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.channels);
        let count = (self.height * self.width) as f32;
        for (c, mean) in out.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for y in 0..self.height {
                let start = self.index(c, y, 0);
                for x in 0..self.width {
                    sum += self.data[start + x * self.block];
                }
            }
            *mean = sum / count;
        }
    }
}

/// A convolution (its batch norm folded in) with its weights laid out for [`conv`]:
/// `[out block][in block][kernel row][kernel column][in channel][16 filters]`.
#[derive(Clone, Debug)]
pub struct BlockedConv {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (a multiple of 16).
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Zero padding before (top, left), at most 1.
    pub pad_begin: [usize; 2],
    /// Zero padding after (bottom, right), at most 1.
    pub pad_end: [usize; 2],
    /// Whether ReLU follows (after the residual add, if any).
    pub relu: bool,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl BlockedConv {
    /// The convolution with `weight` `[out, in, kh, kw]` (row-major) and `bias` `[out]`, or
    /// `None` where the layout cannot take it: output channels not a multiple of 16, input
    /// channels not [`blockable`], padding beyond one pixel, a zero stride.
    pub fn new(
        weight: &[f32],
        [filters, channels, kh, kw]: [usize; 4],
        bias: &[f32],
        stride: [usize; 2],
        pad_begin: [usize; 2],
        pad_end: [usize; 2],
    ) -> Option<Self> {
        let fits = filters.is_multiple_of(LANES)
            && filters > 0
            && blockable(channels)
            && kh > 0
            && kw > 0
            && stride.iter().all(|&s| s > 0)
            && pad_begin.iter().chain(&pad_end).all(|&p| p <= 1);
        if !fits || weight.len() != filters * channels * kh * kw || bias.len() != filters {
            return None;
        }
        let block = channels.min(LANES);
        let mut weights = vec![0.0; weight.len()];
        let mut at = 0;
        for ob in 0..filters / LANES {
            for ib in 0..channels / block {
                for y in 0..kh {
                    for x in 0..kw {
                        for c in 0..block {
                            for lane in 0..LANES {
                                let o = ob * LANES + lane;
                                let i = ib * block + c;
                                weights[at] = weight[((o * channels + i) * kh + y) * kw + x];
                                at += 1;
                            }
                        }
                    }
                }
            }
        }
        Some(BlockedConv {
            in_channels: channels,
            out_channels: filters,
            kernel: [kh, kw],
            stride,
            pad_begin,
            pad_end,
            relu: false,
            weights,
            bias: bias.to_vec(),
        })
    }

    /// Output height and width for an input of `[height, width]` (`None` if the kernel does not
    /// fit).
    pub fn output_size(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let size = |a: usize| {
            let span = input[a] + self.pad_begin[a] + self.pad_end[a];
            (span >= self.kernel[a]).then(|| (span - self.kernel[a]) / self.stride[a] + 1)
        };
        Some([size(0)?, size(1)?])
    }
}

/// Whether the AVX-512 kernel has an instance for inputs of `block` channels per block and
/// a column stride of `stride` (the others run on [`reference()`]).
pub fn fast(block: usize, stride: usize) -> bool {
    matches!(block, 1 | 3 | LANES) && matches!(stride, 1 | 2)
}

/// `out = relu?(conv(input) + residual)`, over `out`'s interior (its border is left as it is:
/// zero in a map from [`BlockedMap::zeros`]).
///
/// # Panics
/// If the shapes disagree: `input` must have the convolution's input channels, `out` its output
/// channels and [`BlockedConv::output_size`], `residual` `out`'s shape.
pub fn conv(
    input: &BlockedMap,
    conv: &BlockedConv,
    residual: Option<&BlockedMap>,
    out: &mut BlockedMap,
) {
    let size = conv.output_size([input.height, input.width]);
    assert_eq!(input.channels, conv.in_channels, "input channels");
    assert_eq!(out.channels, conv.out_channels, "output channels");
    assert_eq!(size, Some([out.height, out.width]), "output size");
    if let Some(r) = residual {
        assert!(
            r.channels == out.channels && r.height == out.height && r.width == out.width,
            "residual shape"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if available() && fast(input.block, conv.stride[1]) {
        // SAFETY: AVX-512F is available; the shapes were checked above, and every index the
        // kernel forms lies inside the maps (see `avx512::conv`).
        unsafe { avx512::conv(input, conv, residual, out) };
        return;
    }
    reference(input, conv, residual, out);
}

/// [`conv`] one multiply-add at a time, in the same order and with the same roundings.
pub fn reference(
    input: &BlockedMap,
    conv: &BlockedConv,
    residual: Option<&BlockedMap>,
    out: &mut BlockedMap,
) {
    let [kh, kw] = conv.kernel;
    let block = input.block;
    let in_blocks = input.blocks();
    for ob in 0..out.blocks() {
        for oy in 0..out.height {
            for ox in 0..out.width {
                let mut acc: [f32; LANES] = std::array::from_fn(|l| conv.bias[ob * LANES + l]);
                for ib in 0..in_blocks {
                    for y in 0..kh {
                        // the border's offset cancels the padding: ≥ 0 since the padding is ≤ 1
                        let iy = oy * conv.stride[0] + y + 1 - conv.pad_begin[0];
                        for x in 0..kw {
                            let ix = ox * conv.stride[1] + x + 1 - conv.pad_begin[1];
                            let pixel = ib * input.plane_len() + iy * input.row_len() + ix * block;
                            let w = ((((ob * in_blocks + ib) * kh + y) * kw + x) * block) * LANES;
                            for c in 0..block {
                                let v = input.data[pixel + c];
                                for (l, a) in acc.iter_mut().enumerate() {
                                    *a = v.mul_add(conv.weights[w + c * LANES + l], *a);
                                }
                            }
                        }
                    }
                }
                let at = out.index(ob * LANES, oy, ox);
                for (l, a) in acc.iter().enumerate() {
                    let mut v = *a;
                    if let Some(r) = residual {
                        v += r.data[at + l];
                    }
                    if conv.relu {
                        v = v.max(0.0);
                    }
                    out.data[at + l] = v;
                }
            }
        }
    }
}

/// Option A's shortcut: `input` subsampled by `stride` with `pad_before` zero channels before
/// its own (and zeros after, up to `out`'s channels), written over `out`'s interior.
///
/// # Panics
/// If `out` is not the subsampled size or the channels do not fit.
pub fn subsample_pad(input: &BlockedMap, stride: usize, pad_before: usize, out: &mut BlockedMap) {
    assert_eq!(out.height, input.height.div_ceil(stride), "shortcut height");
    assert_eq!(out.width, input.width.div_ceil(stride), "shortcut width");
    assert!(
        pad_before + input.channels <= out.channels,
        "shortcut channels"
    );
    for c in 0..out.channels {
        let source = c.checked_sub(pad_before).filter(|&s| s < input.channels);
        for y in 0..out.height {
            let start = out.index(c, y, 0);
            for x in 0..out.width {
                out.data[start + x * out.block] = match source {
                    Some(s) => input.data[input.index(s, y * stride, x * stride)],
                    None => 0.0,
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockedConv, BlockedMap, LANES};
    use std::arch::x86_64::*;

    /// Geometry of one convolution shared by its tiles (strides in elements).
    struct Geometry {
        in_blocks: usize,
        in_row: usize,
        in_plane: usize,
        kernel: [usize; 2],
        relu: bool,
    }

    /// See [`super::conv`]; `input.block` and `conv.stride[1]` are one of the pairs
    /// [`super::fast`] accepts.
    ///
    /// # Safety
    /// AVX-512F is available and the shapes agree as `super::conv` checks. Input pixel
    /// (`oy·s + y + 1 − pad`, `ox·s + x + 1 − pad`) lies inside the bordered grid because the
    /// padding is at most one pixel and the output size follows from it.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv(
        input: &BlockedMap,
        conv: &BlockedConv,
        residual: Option<&BlockedMap>,
        out: &mut BlockedMap,
    ) {
        // The channels per block and the column stride are constants in each instance, so the
        // 16 broadcasts of a tile address one base register with immediate offsets (a runtime
        // step kept 16 pointers live and spilled them).
        // SAFETY: forwarded.
        unsafe {
            match (input.block, conv.stride[1]) {
                (16, 1) => rows::<16, 1>(input, conv, residual, out),
                (16, 2) => rows::<16, 2>(input, conv, residual, out),
                (3, 1) => rows::<3, 1>(input, conv, residual, out),
                (3, 2) => rows::<3, 2>(input, conv, residual, out),
                (1, 1) => rows::<1, 1>(input, conv, residual, out),
                (1, 2) => rows::<1, 2>(input, conv, residual, out),
                _ => unreachable!("checked by `fast`"),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const BLOCK: usize, const STRIDE: usize>(
        input: &BlockedMap,
        conv: &BlockedConv,
        residual: Option<&BlockedMap>,
        out: &mut BlockedMap,
    ) {
        let g = Geometry {
            in_blocks: input.blocks(),
            in_row: input.row_len(),
            in_plane: input.plane_len(),
            kernel: conv.kernel,
            relu: conv.relu,
        };
        let weights_per_block = g.in_blocks * conv.kernel[0] * conv.kernel[1] * BLOCK * LANES;
        let (out_row, out_plane) = (out.row_len(), out.plane_len());
        for ob in 0..out.blocks() {
            // SAFETY (all pointer arithmetic below): see `conv`'s contract.
            let bias = unsafe { _mm512_loadu_ps(conv.bias.as_ptr().add(ob * LANES)) };
            let weights = unsafe { conv.weights.as_ptr().add(ob * weights_per_block) };
            for oy in 0..out.height {
                let iy = oy * conv.stride[0] + 1 - conv.pad_begin[0];
                let row_start = ob * out_plane + (oy + 1) * out_row + LANES;
                let mut ox = 0;
                while ox < out.width {
                    let ix = ox * STRIDE + 1 - conv.pad_begin[1];
                    let src = unsafe { input.data.as_ptr().add(iy * g.in_row + ix * BLOCK) };
                    let at = row_start + ox * LANES;
                    let dst = unsafe { out.data.as_mut_ptr().add(at) };
                    let res = residual.map(|r| unsafe { r.data.as_ptr().add(at) });
                    ox += unsafe {
                        match out.width - ox {
                            16.. => tile::<16, BLOCK, STRIDE>(&g, src, weights, bias, res, dst),
                            8.. => tile::<8, BLOCK, STRIDE>(&g, src, weights, bias, res, dst),
                            4.. => tile::<4, BLOCK, STRIDE>(&g, src, weights, bias, res, dst),
                            2.. => tile::<2, BLOCK, STRIDE>(&g, src, weights, bias, res, dst),
                            _ => tile::<1, BLOCK, STRIDE>(&g, src, weights, bias, res, dst),
                        }
                    };
                }
            }
        }
    }

    /// `T` output pixels of one row and one block of 16 filters; returns `T`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const T: usize, const BLOCK: usize, const STRIDE: usize>(
        g: &Geometry,
        src: *const f32,
        weights: *const f32,
        bias: __m512,
        residual: Option<*const f32>,
        dst: *mut f32,
    ) -> usize {
        let mut acc = [bias; T];
        let [kh, kw] = g.kernel;
        let mut w = weights;
        for ib in 0..g.in_blocks {
            for y in 0..kh {
                // SAFETY (pointer arithmetic and loads): see `conv`'s contract.
                let row = unsafe { src.add(ib * g.in_plane + y * g.in_row) };
                for x in 0..kw {
                    let pixel = unsafe { row.add(x * BLOCK) };
                    for c in 0..BLOCK {
                        let wv = unsafe { _mm512_loadu_ps(w) };
                        w = unsafe { w.add(LANES) };
                        for (t, a) in acc.iter_mut().enumerate() {
                            let v = unsafe { _mm512_set1_ps(*pixel.add(t * STRIDE * BLOCK + c)) };
                            *a = _mm512_fmadd_ps(v, wv, *a);
                        }
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let mut v = *a;
            if let Some(r) = residual {
                v = _mm512_add_ps(v, unsafe { _mm512_loadu_ps(r.add(t * LANES)) });
            }
            if g.relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            unsafe { _mm512_storeu_ps(dst.add(t * LANES), v) };
        }
        T
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A direct convolution computed from its definition on `[C, H, W]` planes, in f64.
    #[allow(clippy::too_many_arguments)]
    fn by_definition(
        image: &[f32],
        [c, h, w]: [usize; 3],
        weight: &[f32],
        [o, kh, kw]: [usize; 3],
        bias: &[f32],
        stride: [usize; 2],
        pad: [usize; 2],
        [oh, ow]: [usize; 2],
    ) -> Vec<f64> {
        let mut out = vec![0.0; o * oh * ow];
        for f in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = bias[f] as f64;
                    for i in 0..c {
                        for y in 0..kh {
                            for x in 0..kw {
                                let iy = (oy * stride[0] + y) as isize - pad[0] as isize;
                                let ix = (ox * stride[1] + x) as isize - pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = image[(i * h + iy as usize) * w + ix as usize] as f64;
                                sum += v * weight[((f * c + i) * kh + y) * kw + x] as f64;
                            }
                        }
                    }
                    out[(f * oh + oy) * ow + ox] = sum;
                }
            }
        }
        out
    }

    #[test]
    fn convolutions_match_their_definition_and_the_reference_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // (channels, height, width, filters, kernel, stride, pad begin, pad end): the stem,
        // both ResNet blocks, a projection, and widths that leave every tile size a remainder
        let cases = [
            (3, 32, 32, 16, 3, 1, 1, 1),
            (16, 32, 32, 16, 3, 1, 1, 1),
            (16, 32, 32, 32, 3, 2, 1, 1),
            (32, 16, 16, 64, 1, 2, 0, 0),
            (32, 15, 31, 32, 3, 1, 1, 1),
            (16, 9, 9, 16, 3, 2, 0, 1),
            (3, 7, 5, 48, 3, 1, 0, 0),
            (64, 8, 8, 64, 3, 1, 1, 1),
            (32, 5, 7, 32, 3, 1, 1, 1),
            (1, 6, 6, 16, 3, 2, 1, 1),
        ];
        for (c, h, w, o, k, s, pb, pe) in cases {
            let image = random(&mut rng, c * h * w);
            let weight = random(&mut rng, o * c * k * k);
            let bias = random(&mut rng, o);
            let blocked =
                BlockedConv::new(&weight, [o, c, k, k], &bias, [s, s], [pb, pb], [pe, pe])
                    .expect("fits the layout");
            let [oh, ow] = blocked.output_size([h, w]).expect("kernel fits");
            let mut input = BlockedMap::zeros(c, h, w);
            input.load_planes(&image);
            let residual_planes = random(&mut rng, o * oh * ow);
            let mut residual = BlockedMap::zeros(o, oh, ow);
            residual.load_planes(&residual_planes);
            for (relu, with_residual) in [(false, false), (true, true)] {
                let mut layer = blocked.clone();
                layer.relu = relu;
                let res = with_residual.then_some(&residual);
                let mut fast = BlockedMap::zeros(o, oh, ow);
                let mut slow = BlockedMap::zeros(o, oh, ow);
                conv(&input, &layer, res, &mut fast);
                reference(&input, &layer, res, &mut slow);
                assert_eq!(
                    fast, slow,
                    "case {c}x{h}x{w} -> {o}, k{k} s{s}: paths differ"
                );
                let expected = by_definition(
                    &image,
                    [c, h, w],
                    &weight,
                    [o, k, k],
                    &bias,
                    [s, s],
                    [pb, pb],
                    [oh, ow],
                );
                for (i, (got, want)) in fast.to_planes().iter().zip(expected).enumerate() {
                    let want = want
                        + if with_residual {
                            residual_planes[i] as f64
                        } else {
                            0.0
                        };
                    let want = if relu { want.max(0.0) } else { want };
                    assert!(
                        (*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "case {c}x{h}x{w} -> {o}, k{k} s{s}, element {i}: {got} vs {want}"
                    );
                }
                // the border stays zero: the next layer reads it as padding
                let mut border = fast.data.clone();
                for ch in 0..o {
                    for y in 0..oh {
                        for x in 0..ow {
                            border[fast.index(ch, y, x)] = 0.0;
                        }
                    }
                }
                assert!(border.iter().all(|&v| v == 0.0), "border written");
            }
        }
    }

    #[test]
    fn option_a_shortcut_subsamples_and_pads_channels() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (c, h, w) = (16, 6, 5);
        let image = random(&mut rng, c * h * w);
        let mut input = BlockedMap::zeros(c, h, w);
        input.load_planes(&image);
        let mut out = BlockedMap::zeros(32, 3, 3);
        out.data.fill(9.0); // a reused buffer: every interior value is overwritten
        subsample_pad(&input, 2, 8, &mut out);
        let planes = out.to_planes();
        for o in 0..32 {
            for y in 0..3 {
                for x in 0..3 {
                    let want = if (8..24).contains(&o) {
                        image[((o - 8) * h + 2 * y) * w + 2 * x]
                    } else {
                        0.0
                    };
                    assert_eq!(planes[(o * 3 + y) * 3 + x], want, "channel {o} ({y}, {x})");
                }
            }
        }
    }

    #[test]
    fn planes_round_trip_and_means_are_per_channel() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for c in [3, 16, 48] {
            let image = random(&mut rng, c * 4 * 3);
            let mut map = BlockedMap::zeros(c, 4, 3);
            map.load_planes(&image);
            assert_eq!(map.to_planes(), image);
            let mut means = vec![0.0; c];
            map.channel_means(&mut means);
            for (ch, mean) in means.iter().enumerate() {
                let want = image[ch * 12..][..12]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / 12.0;
                assert!((*mean as f64 - want).abs() < 1e-6, "channel {ch}");
            }
        }
        assert!(!blockable(24) && blockable(3) && blockable(64) && !blockable(0));
        assert!(BlockedConv::new(
            &[0.0; 24 * 16],
            [24, 16, 1, 1],
            &[0.0; 24],
            [1, 1],
            [0, 0],
            [0, 0]
        )
        .is_none());
        assert!(BlockedConv::new(
            &[0.0; 16 * 16 * 25],
            [16, 16, 5, 5],
            &[0.0; 16],
            [1, 1],
            [2, 2],
            [2, 2]
        )
        .is_none());
    }
}
