//! A `torchrun`-style launch (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`):
//! the environment read as torchrun sets it, the start-up exchange in which rank 0 hands the
//! other ranks NCCL's id over TCP, its errors, and a build without NCCL refusing such a launch.

mod common;

use chatforge::dist::rendezvous::LaunchEnv;
use std::collections::HashMap;
use std::time::Duration;

fn env(vars: &[(&str, &str)]) -> chatforge::Result<Option<LaunchEnv>> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LaunchEnv::from_vars(|k| m.get(k).cloned())
}

fn err(vars: &[(&str, &str)]) -> String {
    env(vars).unwrap_err().to_string()
}

#[test]
fn the_launch_environment_reads_as_torchrun_sets_it() {
    assert_eq!(env(&[]).unwrap(), None);
    assert_eq!(env(&[("RANK", "0")]).unwrap(), None);
    let e = env(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        e,
        LaunchEnv {
            rank: 3,
            world: 4,
            local_rank: 1,
            master_addr: "node0".into(),
            port: 29500
        }
    );
    // One host without LOCAL_RANK: the rank picks the GPU.
    let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1234")])
        .unwrap()
        .unwrap();
    assert_eq!((e.local_rank, e.master_addr.as_str()), (1, "127.0.0.1"));
    // Under torchrun its agent holds MASTER_PORT: the exchange takes the next port.
    let e = env(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(e.port, 29501);

    let e = err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]);
    assert!(
        e.contains("RANK=2") && e.contains("below the world size"),
        "{e}"
    );
    let e = err(&[("RANK", "one"), ("WORLD_SIZE", "2")]);
    assert!(e.contains("RANK='one'"), "{e}");
    let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
    assert!(e.contains("MASTER_PORT is not set"), "{e}");
    let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")]);
    assert!(e.contains("MASTER_PORT='99999'"), "{e}");
}

/// A port nothing uses right now, below Linux's ephemeral range (32768-60999) so that no
/// outgoing connection of a test running alongside takes it in the meantime.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() % 5000) as u16;
    loop {
        let p = 21000 + (seed + NEXT.fetch_add(7, std::sync::atomic::Ordering::Relaxed)) % 11000;
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
}

fn rank(rank: usize, world: usize, port: u16) -> LaunchEnv {
    LaunchEnv {
        rank,
        world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        port,
    }
}

#[test]
fn rank_zero_hands_its_bytes_to_every_other_rank() {
    let port = free_port();
    let id: Vec<u8> = (0..128u8).map(|b| b.wrapping_mul(7)).collect();
    // The other ranks start first and wait for rank 0 to listen.
    let others: Vec<_> = (1..4)
        .map(|r| {
            std::thread::spawn(move || rank(r, 4, port).exchange(None, Duration::from_secs(20)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let got0 = rank(0, 4, port)
        .exchange(Some(&id), Duration::from_secs(20))
        .unwrap();
    assert_eq!(got0, id);
    for h in others {
        assert_eq!(h.join().unwrap().unwrap(), id);
    }
}

#[test]
fn a_launch_that_does_not_add_up_fails_on_both_sides() {
    // A rank that counts a different world size.
    let port = free_port();
    let stray =
        std::thread::spawn(move || rank(1, 3, port).exchange(None, Duration::from_secs(20)));
    let e = rank(0, 2, port)
        .exchange(Some(&[1, 2, 3]), Duration::from_secs(20))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WORLD_SIZE=3") && e.contains("2 on rank 0"),
        "{e}"
    );
    let e = stray.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("refused") && e.contains("WORLD_SIZE=3"), "{e}");

    // A rank that never comes: rank 0 gives up and names it.
    let e = rank(0, 2, free_port())
        .exchange(Some(&[1]), Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("for ranks 1 of 2"), "{e}");
    // No rank 0: the others give up and say where they looked.
    let port = free_port();
    let e = rank(1, 2, port)
        .exchange(None, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("could not reach rank 0"),
        "{e}"
    );
}

#[cfg(not(feature = "nccl"))]
#[test]
fn a_build_without_nccl_refuses_a_torchrun_style_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::chatforge_command()
        .args(["pretrain", "--out"])
        .arg(tmp.path().join("run"))
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("built without NCCL") && stderr.contains("--features nccl"),
        "{stderr}"
    );
    assert!(!tmp.path().join("run").exists(), "nothing is written");
}
