//! Row sums and the expansion of per-row and per-column vectors as matrix products with ones: the
//! portable formulation's way around candle's index-bound broadcast and reduction kernels on a GPU
//! (see the `ops` module documentation).

use candle_core::Tensor;

type CResult<T> = candle_core::Result<T>;

/// Row sums of x (N, C) as (N, 1): x @ ones(C, 1), a matrix-vector product.
pub fn row_sums(x: &Tensor) -> CResult<Tensor> {
    x.matmul(&ones((x.dim(1)?, 1), x)?)
}

/// x (N, C) with row i multiplied by s[i] for s (N, 1): x * (s @ ones(1, C)), the expansion an
/// outer product.
pub fn scale_rows(x: &Tensor, s: &Tensor) -> CResult<Tensor> {
    x * s.matmul(&ones((1, x.dim(1)?), x)?)?
}

/// Ones of shape (rows, 1) or (1, cols) for expanding per-row or per-column vectors by a product.
pub fn ones(shape: (usize, usize), like: &Tensor) -> CResult<Tensor> {
    Tensor::ones(shape, like.dtype(), like.device())
}

/// v (C,) repeated as every row of an (n, C) matrix: ones(n, 1) @ v(1, C). Its gradient is the
/// column sums of the incoming one, the product's own backward (a matrix product too).
pub fn rows_of(v: &Tensor, n: usize) -> CResult<Tensor> {
    ones((n, 1), v)?.matmul(&v.reshape((1, ()))?)
}
