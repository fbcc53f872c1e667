//! GFLOP/s of chatforge's GEMM (`kernels::cpu::gemm::matmul`) on the matrix products of one training
//! step of bench/cpu.sh's reference model (B*T = 2048 rows, C = 384, V = 8192), including the
//! transposed operands of the backward pass. bench/cpu.sh prints it next to PyTorch's matmul.
//!
//!   cargo run --release --example gemm_gflops
use chatforge::kernels::cpu::gemm::{matmul, View};
use std::time::Instant;

fn main() {
    // (m, n, k, what, A transposed, B transposed), the layouts the model's products have: forward
    // is x @ w^T (w stored (n, k)), dx = g @ w, dw = g^T @ x.
    let shapes = [
        (2048, 1152, 384, "qkv forward", false, true),
        (2048, 1536, 384, "mlp fc forward", false, true),
        (2048, 8192, 384, "lm_head forward", false, true),
        (2048, 384, 8192, "lm_head dx", false, false),
        (8192, 384, 2048, "lm_head dw", true, false),
        (1536, 384, 2048, "mlp fc dw", true, false),
    ];
    for (m, n, k, name, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let av = if ta {
            View::rows(&a, m).t()
        } else {
            View::rows(&a, k)
        };
        let bv = if tb {
            View::rows(&b, k).t()
        } else {
            View::rows(&b, n)
        };
        let mut times = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            matmul(m, n, k, &mut c, n, false, av, bv, 1.0);
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let gflops = 2.0 * (m * n * k) as f64 / times[times.len() / 2] / 1e9;
        println!(
            "{{\"impl\": \"chatforge\", \"what\": \"{name}\", \"m\": {m}, \"n\": {n}, \"k\": {k}, \"gflops\": {gflops:.1}}}"
        );
    }
}
