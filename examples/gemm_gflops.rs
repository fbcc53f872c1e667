//! GFLOP/s of chatforge's GEMM (`model::fused::gemm::matmul`) on the matrix products of one training
//! step of bench/cpu.sh's reference model (B*T = 2048 rows, C = 384, V = 8192), including the
//! transposed operands of the backward pass. bench/cpu.sh prints it next to PyTorch's matmul.
//!
//!   cargo run --release --example gemm_gflops
use chatforge::model::fused::gemm::{matmul, View};
use std::time::Instant;

fn main() {
    // (m, n, k, what, A transposed)
    let shapes = [
        (2048, 1152, 384, "qkv forward", false),
        (2048, 1536, 384, "mlp fc forward", false),
        (2048, 8192, 384, "lm_head forward", false),
        (2048, 384, 8192, "lm_head dx", false),
        (8192, 384, 2048, "lm_head dw", true),
        (1536, 384, 2048, "mlp fc dw", true),
    ];
    for (m, n, k, name, ta) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let av = if ta {
            View::rows(&a, m).t()
        } else {
            View::rows(&a, k)
        };
        let mut times = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            matmul(m, n, k, &mut c, n, false, av, View::rows(&b, n), 1.0);
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let gflops = 2.0 * (m * n * k) as f64 / times[times.len() / 2] / 1e9;
        println!(
            "{{\"impl\": \"chatforge\", \"what\": \"{name}\", \"m\": {m}, \"n\": {n}, \"k\": {k}, \"gflops\": {gflops:.1}}}"
        );
    }
}
