//! `chatforge dashboard RUN_DIR...`: the live page of one or more runs, until Ctrl-C.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct DashboardArgs {
    /// Run directories (the --out of pretrain or sft); several are overlaid to compare them.
    #[arg(required = true, num_args = 1..)]
    runs: Vec<PathBuf>,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 6007)]
    port: u16,
}

pub fn run(a: DashboardArgs) -> Result<()> {
    chatforge::dashboard::check_run_dirs(&a.runs)?;
    let d = chatforge::dashboard::spawn(a.runs, a.port)?;
    eprintln!("dashboard at {} (Ctrl-C to stop)", d.url);
    loop {
        std::thread::park();
    }
}
