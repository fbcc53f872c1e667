//! How many threads the CPU kernels run on: `--threads N` (every command), else
//! `CHATFORGE_THREADS`, else `RAYON_NUM_THREADS`, else the physical cores this process may use.
//! One number for every pool (candle's workers, rayon's, the GEMM and the decoding kernels), set
//! once at start, before any of them exists.

use crate::error::{Error, Result};

/// The variable that sets the threads when `--threads` is not given.
pub const ENV: &str = "CHATFORGE_THREADS";

/// How long candle's idle workers spin before they sleep.
const CANDLE_SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Resolves the thread count and hands it to every pool; returns it. Call before any kernel runs
/// (the pools read it when they start).
pub fn configure(flag: Option<usize>) -> Result<usize> {
    let n = match flag {
        Some(n) => n,
        None => match std::env::var(ENV) {
            Ok(v) => parse(&v).ok_or_else(|| {
                Error::Config(format!(
                    "{ENV}='{v}': expected a number of threads, 1 or more"
                ))
            })?,
            Err(_) => candle_core::utils::get_num_threads(),
        },
    };
    if n == 0 {
        return Err(Error::Config("--threads must be 1 or more".into()));
    }
    // Read by candle (its worker pool and `get_num_threads`) and by rayon's global pool.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    // candle's own idle workers spin 25,000 times after each of its ops before they sleep, on the
    // cores the kernels' pool (`kernels::cpu::pool`) needs next: short spins leave them free.
    // Measured on 2 cores of a Zen 3: SmolLM2 prompt processing 240 -> 262 tokens/s.
    if std::env::var_os(CANDLE_SPIN).is_none() {
        std::env::set_var(CANDLE_SPIN, "200");
    }
    Ok(n)
}

fn parse(v: &str) -> Option<usize> {
    v.trim().parse::<usize>().ok().filter(|&n| n > 0)
}
