//! How many threads the CPU kernels run on: `--threads N` (every command), else
//! `CHATFORGE_THREADS`, else `RAYON_NUM_THREADS`, else the physical cores this process may use.
//! One number for every pool (candle's workers, rayon's, the GEMM and the decoding kernels), set
//! once at start, before any of them exists.

use crate::error::{Error, Result};

/// The variable that sets the threads when `--threads` is not given.
pub const ENV: &str = "CHATFORGE_THREADS";

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
    Ok(n)
}

fn parse(v: &str) -> Option<usize> {
    v.trim().parse::<usize>().ok().filter(|&n| n > 0)
}
