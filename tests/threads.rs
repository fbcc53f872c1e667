//! `--threads N` (on every command) and `CHATFORGE_THREADS` size the CPU kernels' pools; a bad
//! value is a clear error naming the flag or the variable.

mod common;

use common::*;

/// `chatforge bench` on the tiny fixture with `args` and `env`: (exit code, stdout, stderr).
fn bench(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let model = fixtures().join("gpt2-tiny-eval");
    let out = chatforge_command()
        .args(args)
        .args(["bench", "--model", model.to_str().unwrap()])
        .args(["--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1"])
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("CHATFORGE_THREADS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn the_flag_and_the_variable_set_the_threads() {
    for (args, env, want) in [
        (vec!["--threads", "1"], vec![], "1 threads"),
        (
            vec!["--threads=3"],
            vec![("CHATFORGE_THREADS", "2")],
            "3 threads",
        ),
        (vec![], vec![("CHATFORGE_THREADS", "2")], "2 threads"),
        (vec![], vec![("RAYON_NUM_THREADS", "1")], "1 threads"),
    ] {
        let (code, out, err) = bench(&args, &env);
        assert_eq!(code, 0, "{args:?} {env:?}: {err}");
        assert!(out.contains(want), "{args:?} {env:?}: {out}");
    }
}

#[test]
fn bad_thread_counts_are_named() {
    let (code, _, err) = bench(&["--threads", "0"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--threads"), "{err}");
    for bad in ["0", "many", "-2"] {
        let (code, _, err) = bench(&[], &[("CHATFORGE_THREADS", bad)]);
        assert_ne!(code, 0, "CHATFORGE_THREADS={bad} was accepted");
        assert!(err.contains("CHATFORGE_THREADS"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
