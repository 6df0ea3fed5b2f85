//! The one place the kernels call the `gemm` crate: every product's shape and strides are
//! checked against its slices here, so the convolution and encoder kernels stay safe code.

use std::mem::MaybeUninit;

use gemm::{gemm, Parallelism};

/// Where a matrix's elements sit in its slice: element `(i, j)` at `i * row + j * col`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Elements between the starts of consecutive rows.
    pub row: usize,
    /// Elements between the starts of consecutive columns.
    pub col: usize,
}

impl Layout {
    /// Row-major, `row` elements between row starts.
    pub fn rows(row: usize) -> Self {
        Layout { row, col: 1 }
    }

    /// Column-major (a row-major matrix read transposed), `col` elements between column starts.
    pub fn columns(col: usize) -> Self {
        Layout { row: 1, col }
    }

    /// Whether a `rows × cols` matrix laid out this way fits in `len` elements.
    fn fits(self, rows: usize, cols: usize, len: usize) -> bool {
        rows == 0 || cols == 0 || len > (rows - 1) * self.row + (cols - 1) * self.col
    }
}

/// Sends every product to `gemm` (tests compare the two paths).
pub(crate) static STREAMING_OFF: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `f()` with every product on `gemm`. Tests that compare the paths take turns through here;
/// other code running meanwhile merely takes gemm, which gives the same bits.
#[cfg(test)]
pub(crate) fn on_gemm<R>(f: impl FnOnce() -> R) -> R {
    STREAMING_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = f();
    STREAMING_OFF.store(false, std::sync::atomic::Ordering::Relaxed);
    result
}

/// Held by the tests that switch [`STREAMING_OFF`], for their whole run.
#[cfg(test)]
pub(crate) static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `dst (m×n) = scale · lhs (m×k) · rhs (k×n)`, plus `dst` itself when accumulating.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    m: usize,
    n: usize,
    k: usize,
    lhs: Layout,
    rhs: Layout,
    scale: f32,
    accumulate: bool,
    threads: Parallelism,
}

impl Product {
    /// `[m, n, k]` with the operands laid out as given; scale 1, overwriting, one thread.
    pub fn new([m, n, k]: [usize; 3], lhs: Layout, rhs: Layout) -> Self {
        Product {
            m,
            n,
            k,
            lhs,
            rhs,
            scale: 1.0,
            accumulate: false,
            threads: Parallelism::None,
        }
    }

    /// Multiplies the product by `scale`.
    pub fn scaled(self, scale: f32) -> Self {
        Product { scale, ..self }
    }

    /// Adds the product to the destination's values instead of overwriting them.
    pub fn accumulating(self) -> Self {
        Product {
            accumulate: true,
            ..self
        }
    }

    /// Splits the product over rayon's pool (all of its threads).
    pub fn parallel(self) -> Self {
        let threads = match rayon::current_num_threads() {
            0 | 1 => Parallelism::None,
            n => Parallelism::Rayon(n),
        };
        Product { threads, ..self }
    }

    /// Writes the product into `dst`, row-major with `dst_row` elements between row starts.
    pub fn write_into(&self, dst: &mut [f32], dst_row: usize, lhs: &[f32], rhs: &[f32]) {
        self.check_destination(dst.len(), dst_row);
        self.check(lhs, rhs);
        // SAFETY: the destination's m×n elements at row stride `dst_row` (≥ n, so rows do not
        // overlap) lie inside `dst` (asserted above), the operands' inside theirs (`check`);
        // `dst` does not alias them (`&mut`).
        unsafe { self.run(dst.as_mut_ptr(), dst_row, lhs, rhs) }
    }

    /// Writes the product into `dst` like [`Product::write_into`] without reading it, so `dst`
    /// may be uninitialised (never accumulating); every element of the `m × n` block at row
    /// stride `dst_row` is initialised afterwards.
    pub fn write_into_uninit(
        &self,
        dst: &mut [MaybeUninit<f32>],
        dst_row: usize,
        lhs: &[f32],
        rhs: &[f32],
    ) {
        assert!(
            !self.accumulate,
            "matmul: an uninitialised destination has nothing to add to"
        );
        self.check_destination(dst.len(), dst_row);
        self.check(lhs, rhs);
        // SAFETY: as in `write_into`; not accumulating, gemm writes the elements without reading
        // them, so they may start uninitialised.
        unsafe { self.run(dst.as_mut_ptr().cast(), dst_row, lhs, rhs) }
    }

    /// The product as a new row-major `m × n` matrix (never accumulating).
    pub fn new_matrix(&self, lhs: &[f32], rhs: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        self.replace_contents(&mut out, lhs, rhs);
        out
    }

    /// Makes `dst` the row-major `m × n` product (never accumulating), reusing its allocation.
    pub fn replace_contents(&self, dst: &mut Vec<f32>, lhs: &[f32], rhs: &[f32]) {
        assert!(
            !self.accumulate,
            "matmul: a replaced matrix has nothing to add to"
        );
        self.check(lhs, rhs);
        let len = self.m * self.n;
        dst.clear();
        dst.reserve(len);
        // SAFETY: the operands fit their slices (`check`); the destination holds at least m×n
        // elements at row stride n. Not accumulating, gemm writes every element without reading
        // it, so the length is set after it (f32 has no invalid bit patterns).
        unsafe {
            self.run(dst.as_mut_ptr(), self.n, lhs, rhs);
            dst.set_len(len);
        }
    }

    fn check_destination(&self, len: usize, dst_row: usize) {
        assert!(
            dst_row >= self.n && Layout::rows(dst_row).fits(self.m, self.n, len),
            "matmul: a {}×{} destination with row stride {dst_row} does not fit in {len} elements",
            self.m,
            self.n,
        );
    }

    fn check(&self, lhs: &[f32], rhs: &[f32]) {
        assert!(
            self.lhs.fits(self.m, self.k, lhs.len()),
            "matmul: a {}×{} left operand laid out {:?} does not fit in {} elements",
            self.m,
            self.k,
            self.lhs,
            lhs.len()
        );
        assert!(
            self.rhs.fits(self.k, self.n, rhs.len()),
            "matmul: a {}×{} right operand laid out {:?} does not fit in {} elements",
            self.k,
            self.n,
            self.rhs,
            rhs.len()
        );
    }

    /// Whether [`super::streaming`] computes this product, the same bits as `gemm` faster: a plain
    /// product (no scale, no accumulation, one thread) with a row-major right operand at least a
    /// vector wide, one side thin (a convolution's filters) and a depth `gemm` does in one block.
    pub fn streams(&self) -> bool {
        !self.accumulate
            && self.scale == 1.0
            && matches!(self.threads, Parallelism::None)
            && self.rhs.col == 1
            && self.n >= 16
            && (self.m <= 64 || self.n <= 64 || self.k <= 64)
            && self.gemm_depth_block().is_some()
            && !STREAMING_OFF.load(std::sync::atomic::Ordering::Relaxed)
            && super::streaming::available()
    }

    /// The depth blocks `gemm` sums this product in, or `None` where it takes a path that sums
    /// in another order (dot products for tiny outputs, matrix-vector products, depth ≤ 2).
    /// `gemm` transposes our row-major destination; the rule is symmetric in `m` and `n`. Its
    /// blocks: up to 512 deep for outputs of at most 64 × 64, else the `kc` of its cache-blocking
    /// parameters for the AVX-512 micro-kernel (64 × 6), which depends on the depth and the L1
    /// cache only (512-deep or balanced blocks on the CPUs seen here).
    fn gemm_depth_block(&self) -> Option<usize> {
        let [m, n, k] = [self.m, self.n, self.k];
        if k <= 2 || m <= 1 || n <= 1 || m * n <= 256 {
            return None;
        }
        Some(if m <= 64 && n <= 64 {
            k.min(512)
        } else {
            gemm_common::cache::kernel_params(m, n, k, 64, 6, std::mem::size_of::<f32>()).kc
        })
    }

    /// # Safety
    /// `dst` is valid for writes (and, when accumulating, reads) of the m×n elements at row
    /// stride `dst_row`, does not alias the operands, and the operands fit their slices.
    unsafe fn run(&self, dst: *mut f32, dst_row: usize, lhs: &[f32], rhs: &[f32]) {
        if self.streams() {
            // SAFETY: `streams` checked the CPU; the rest is this function's own contract.
            unsafe {
                super::streaming::product(
                    [self.m, self.n, self.k],
                    self.gemm_depth_block().expect("checked by `streams`"),
                    dst,
                    dst_row,
                    lhs,
                    [self.lhs.row, self.lhs.col],
                    rhs,
                    self.rhs.row,
                )
            };
            return;
        }
        gemm(
            self.m,
            self.n,
            self.k,
            dst,
            1,
            dst_row as isize,
            self.accumulate,
            lhs.as_ptr(),
            self.lhs.col as isize,
            self.lhs.row as isize,
            rhs.as_ptr(),
            self.rhs.col as isize,
            self.rhs.row as isize,
            if self.accumulate { 1.0 } else { 0.0 },
            self.scale,
            false,
            false,
            false,
            self.threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_streaming_product_gives_gemms_bits() {
        let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        if !super::super::streaming::available() {
            eprintln!("note: no AVX-512 on this CPU; the streaming product is never used");
            return;
        }
        // the convolutions' forward and input-gradient shapes, with row and column tails
        let shapes = [
            [16, 1024, 144],
            [16, 1024, 27],
            [32, 256, 288],
            [64, 256, 512],
            [144, 1024, 16],
            [288, 256, 32],
            [27, 100, 32],
            [7, 40, 3],
            [13, 50, 64],
            // deeper than one of gemm's blocks: 512 + 64, balanced blocks, two blocks of 512
            [64, 256, 576],
            [16, 784, 1024],
            [144, 16, 1024],
            [32, 100, 1500],
            // the weight gradient, transposed: patch × filters over a group's positions
            [144, 16, 256],
            [288, 32, 256],
            [576, 64, 256],
            [27, 32, 512],
            [9, 40, 100],
        ];
        for [m, n, k] in shapes {
            for (lhs_layout, name) in [(Layout::rows(k), "rows"), (Layout::columns(m), "columns")] {
                let lhs = values(m * k, (m * n + k) as u32);
                let rhs = values(k * n + 3, (m + n * k) as u32);
                let product = Product::new([m, n, k], lhs_layout, Layout::rows(n));
                assert!(product.streams(), "{m}x{n}x{k}");
                let ours = product.new_matrix(&lhs, &rhs);
                let theirs = on_gemm(|| product.new_matrix(&lhs, &rhs));
                let differ = ours
                    .iter()
                    .zip(&theirs)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{m}x{n}x{k}, lhs {name}: {differ} elements differ"
                );
            }
        }
    }
}
