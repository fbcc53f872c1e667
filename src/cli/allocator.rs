//! How the allocator (mimalloc) treats memory, chosen by the subcommand and set before the first
//! allocation: mimalloc decides how an arena is committed when it reserves it, and the first one is
//! reserved by the first allocation, before `main` has parsed anything. A `MIMALLOC_*` variable
//! the user set wins.
//!
//! - Training reuses the same large buffers every step: freed memory is kept (never purged), in
//!   arenas committed up front, which Linux backs with transparent huge pages, instead of being
//!   faulted in afresh each step.
//! - `eval` commits memory as it is used and returns it as soon as it is freed: its items differ
//!   in length, and in huge-page arenas each left freed memory resident (HellaSwag on a 98 MB
//!   GGUF peaked at 1.8x the file after 60 items, 1.36x this way, in the same time; `bench/rss.sh`).
//! - Decoding (generate, chat, serve, bench) keeps mimalloc's defaults, huge-page arenas whose
//!   freed memory is returned after a delay: committing as used instead cut `generate`'s peak from
//!   1.54x to 1.34x the file but decoded about 8% slower (the weights, read once a token, on 4 KB
//!   pages), and both peaks are within 1.5x the file plus the KV cache.

use std::ffi::{c_char, c_int, c_long, CStr};

extern "C" {
    // mimalloc's C API (bundled v2 header, `mi_option_e`).
    fn mi_option_set(option: c_int, value: c_long);
}
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The subcommand among the program's arguments (without the program name): the first one that
/// is not an option, `--threads N` being the one option that may come before it.
pub fn subcommand<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        if a == b"--threads" {
            args.next();
        } else if !a.starts_with(b"-") {
            return Some(a);
        }
    }
    None
}

/// (arena eager commit, purge delay in ms) for a subcommand; None keeps mimalloc's default.
pub fn policy(subcommand: Option<&[u8]>) -> (Option<c_long>, Option<c_long>) {
    match subcommand {
        Some(b"pretrain" | b"sft" | b"dpo" | b"rl" | b"speedrun") => (Some(1), Some(-1)),
        Some(b"eval") => (Some(0), Some(0)),
        _ => (None, None),
    }
}

/// Sets the options of `policy(subcommand)` that `user_set` (an environment variable's name) does
/// not name.
fn apply(subcommand: Option<&[u8]>, user_set: impl Fn(&[u8]) -> bool) {
    let (eager_commit, purge_delay) = policy(subcommand);
    let set = |option, var: &[u8], value| {
        if !user_set(var) {
            // SAFETY: a plain setter of a mimalloc option, called before any threads exist.
            unsafe { mi_option_set(option, value) }
        }
    };
    if let Some(e) = eager_commit {
        set(
            MI_OPTION_ARENA_EAGER_COMMIT,
            b"MIMALLOC_ARENA_EAGER_COMMIT",
            e,
        );
    }
    if let Some(d) = purge_delay {
        set(MI_OPTION_PURGE_DELAY, b"MIMALLOC_PURGE_DELAY", d);
    }
}

/// The C strings of a null-terminated array (argv, envp), from index `from`.
///
/// # Safety
/// `list` is a null-terminated array of valid C strings that outlive the returned ones.
unsafe fn c_strings<'a>(list: *const *const c_char, from: usize) -> impl Iterator<Item = &'a [u8]> {
    (from..)
        .map(move |i| unsafe { *list.add(i) })
        .take_while(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Run by glibc before `main` (and before Rust's runtime allocates), with the program's argv and
/// environment: nothing here allocates.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn before_main(_argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    if argv.is_null() || envp.is_null() {
        return;
    }
    // SAFETY: glibc passes .init_array functions the process's argv and envp, null-terminated
    // arrays of C strings that live as long as the process.
    let args = unsafe { c_strings(argv, 1) };
    apply(subcommand(args), |var| {
        // SAFETY: as above.
        unsafe { c_strings(envp, 0) }.any(|e| e.starts_with(var) && e.get(var.len()) == Some(&b'='))
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array"]
static BEFORE_MAIN: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = before_main;

/// Where no function runs before `main`: the same policy, set from `main` (after the first
/// allocations, so the first arena keeps mimalloc's defaults).
pub fn configure_in_main() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_encoded_bytes()).collect();
    apply(subcommand(bytes.iter().copied()), |var| {
        std::str::from_utf8(var).is_ok_and(|v| std::env::var_os(v).is_some())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub<'a>(args: &[&'a str]) -> Option<&'a [u8]> {
        subcommand(args.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn finds_the_subcommand_after_global_options() {
        assert_eq!(sub(&["generate", "--model", "m"]), Some(&b"generate"[..]));
        assert_eq!(sub(&["--threads", "2", "pretrain"]), Some(&b"pretrain"[..]));
        assert_eq!(sub(&["--threads=2", "eval", "--task"]), Some(&b"eval"[..]));
        assert_eq!(sub(&["--help"]), None);
        assert_eq!(sub(&[]), None);
    }

    #[test]
    fn training_keeps_memory_and_eval_returns_it() {
        assert_eq!(policy(Some(b"sft")), (Some(1), Some(-1)));
        assert_eq!(policy(Some(b"speedrun")), (Some(1), Some(-1)));
        assert_eq!(policy(Some(b"eval")), (Some(0), Some(0)));
        assert_eq!(policy(Some(b"serve")), (None, None));
        assert_eq!(policy(None), (None, None));
    }
}
