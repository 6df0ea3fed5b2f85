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

    /// # Safety
    /// `dst` is valid for writes (and, when accumulating, reads) of the m×n elements at row
    /// stride `dst_row`, does not alias the operands, and the operands fit their slices.
    unsafe fn run(&self, dst: *mut f32, dst_row: usize, lhs: &[f32], rhs: &[f32]) {
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
