//! A matrix product for the convolutions' thin shapes, `dst (m×n) = lhs (m×k) · rhs (k×n)` with
//! `rhs` row-major and one of `m`, `k` small (a layer's filters): the forward product (filters ×
//! patch · patch × positions) and the input gradient's (patchᵀ · filters × positions).
//!
//! `gemm` packs both operands into panels before its micro-kernel runs. When one side has 16 to
//! 64 rows, each packed element of the wide operand feeds only that many multiply-adds, and the
//! packing was a quarter of a ResNet-20 training step. Here the wide operand is read in place: a
//! tile of 8 rows × 48 columns keeps 24 AVX-512 accumulators, each step loading three vectors
//! of `rhs` and broadcasting eight elements of `lhs`.
//!
//! Every element is what `gemm` computes, so the results are the same bits (the tests compare
//! them with `gemm`): `k` is cut into the depth blocks `gemm` uses, each block's sum one fused
//! multiply-add chain in order starting from zero, the blocks' sums added in order.

/// Whether [`product`] runs on this CPU (AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i * dst_row + j] = Σ_p lhs[i * lhs_row + p * lhs_col] · rhs[p * rhs_row + j]`, summed in
/// depth blocks of `block` (the last one shorter).
///
/// # Safety
/// [`available`] is true; `dst` is valid for writes of the `m × n` block at row stride
/// `dst_row ≥ n` and aliases neither operand; the operands' elements lie inside their slices.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    [m, n, k]: [usize; 3],
    block: usize,
    dst: *mut f32,
    dst_row: usize,
    lhs: &[f32],
    [lhs_row, lhs_col]: [usize; 2],
    rhs: &[f32],
    rhs_row: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        avx512::product(
            [m, n, k],
            block.max(1),
            dst,
            dst_row,
            lhs,
            [lhs_row, lhs_col],
            rhs,
            rhs_row,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            [m, n, k],
            block,
            dst,
            dst_row,
            lhs,
            lhs_row,
            lhs_col,
            rhs,
            rhs_row,
        );
        unreachable!("`available` is false off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows per tile.
    const ROWS: usize = 8;
    /// Lanes per vector.
    const LANES: usize = 16;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product(
        [m, n, k]: [usize; 3],
        block: usize,
        dst: *mut f32,
        dst_row: usize,
        lhs: &[f32],
        [lhs_row, lhs_col]: [usize; 2],
        rhs: &[f32],
        rhs_row: usize,
    ) {
        let mut col = 0;
        while col < n {
            // three vectors at a time while they are whole, then two, then one (the last one
            // masked to what remains)
            let left = n - col;
            let vectors = (left / LANES).clamp(1, 3);
            let last = if left < LANES { left } else { LANES };
            let mut row = 0;
            while row < m {
                let rows = ROWS.min(m - row);
                let at = [row, rows, col, last, block];
                let lhs_layout = [lhs_row, lhs_col];
                // SAFETY: the tile lies inside the block the caller vouched for.
                unsafe {
                    match vectors {
                        3 => tile::<3>(at, k, dst, dst_row, lhs, lhs_layout, rhs, rhs_row),
                        2 => tile::<2>(at, k, dst, dst_row, lhs, lhs_layout, rhs, rhs_row),
                        _ => tile::<1>(at, k, dst, dst_row, lhs, lhs_layout, rhs, rhs_row),
                    }
                }
                row += rows;
            }
            col += (vectors - 1) * LANES + last;
        }
    }

    /// Rows `row..row + rows` (at most 8) × `V` vectors of columns from `col`, the last vector
    /// holding `last` columns, summed over depth blocks of `block`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const V: usize>(
        [row, rows, col, last, block]: [usize; 5],
        k: usize,
        dst: *mut f32,
        dst_row: usize,
        lhs: &[f32],
        [lhs_row, lhs_col]: [usize; 2],
        rhs: &[f32],
        rhs_row: usize,
    ) {
        let last_mask: __mmask16 = if last == LANES {
            0xffff
        } else {
            (1u16 << last) - 1
        };
        let mask = |v: usize| if v + 1 == V { last_mask } else { 0xffff };
        // rows past the end repeat the last row's multipliers, and are not stored
        let lhs_rows: [usize; ROWS] = std::array::from_fn(|r| (row + r.min(rows - 1)) * lhs_row);
        let lhs = lhs.as_ptr();
        let rhs = rhs.as_ptr().add(col);
        let mut start = 0;
        while start < k {
            let end = (start + block).min(k);
            let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
            for p in start..end {
                let b: [__m512; V] = std::array::from_fn(|v| {
                    _mm512_maskz_loadu_ps(mask(v), rhs.add(p * rhs_row + v * LANES))
                });
                let column = p * lhs_col;
                for r in 0..ROWS {
                    let a = _mm512_set1_ps(*lhs.add(lhs_rows[r] + column));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let out = dst.add((row + r) * dst_row + col);
                for (v, &value) in acc.iter().enumerate() {
                    let at = out.add(v * LANES);
                    // later blocks add their sum to the earlier blocks' (gemm's alpha = 1)
                    let value = if start == 0 {
                        value
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask(v), at), value)
                    };
                    _mm512_mask_storeu_ps(at, mask(v), value);
                }
            }
            start = end;
        }
    }
}
