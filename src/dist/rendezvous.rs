//! How the processes of a `torchrun`-style launch find each other: the launch environment
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) and one exchange over TCP
//! in which rank 0 hands every other rank the bytes they need to join (NCCL's unique id).
//!
//! Only this bootstrap goes over the socket; the collectives themselves run on NCCL. Rank 0
//! listens on `MASTER_PORT`, or on `MASTER_PORT + 1` under `torchrun`, whose agent holds
//! `MASTER_PORT` for its own store (it says so with `TORCHELASTIC_USE_AGENT_STORE=True`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What every rank sends first: who it is, so that rank 0 can refuse a process of another job.
const MAGIC: &[u8; 8] = b"cfrdzv01";

/// The launch environment of one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world: usize,
    /// The rank's index on its host, which picks its GPU (cuda:LOCAL_RANK).
    pub local_rank: usize,
    pub master_addr: String,
    /// The port of the exchange (see the module's notes on torchrun).
    pub port: u16,
}

impl LaunchEnv {
    /// The `torchrun`-style environment, if `RANK` and `WORLD_SIZE` are set; `var` reads a
    /// variable (the process environment in [`LaunchEnv::from_env`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>> {
        let (Some(rank), Some(world)) = (var("RANK"), var("WORLD_SIZE")) else {
            return Ok(None);
        };
        let number = |name: &str, v: &str| -> Result<usize> {
            v.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "{name}='{v}': expected a whole number (torchrun-style launch)"
                ))
            })
        };
        let (rank, world) = (number("RANK", &rank)?, number("WORLD_SIZE", &world)?);
        if world == 0 || rank >= world {
            return Err(Error::Config(format!(
                "RANK={rank} with WORLD_SIZE={world}: the rank must be below the world size"
            )));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port =
            match var("MASTER_PORT") {
                Some(v) => v.trim().parse::<u16>().map_err(|_| {
                    Error::Config(format!("MASTER_PORT='{v}': expected a TCP port (1-65535)"))
                })?,
                None if world == 1 => 29500,
                None => return Err(Error::Config(
                    "MASTER_PORT is not set: every rank needs MASTER_ADDR and MASTER_PORT, where \
                     rank 0 listens"
                        .into(),
                )),
            };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let port = if agent_store {
            port.checked_add(1).ok_or_else(|| {
                Error::Config("MASTER_PORT=65535 under torchrun leaves no port after it".into())
            })?
        } else {
            port
        };
        Ok(Some(LaunchEnv {
            rank,
            world,
            local_rank,
            master_addr,
            port,
        }))
    }

    pub fn from_env() -> Result<Option<LaunchEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Rank 0 passes `payload` (its bytes for the others) and gets it back; every other rank
    /// passes None and gets rank 0's. Returns once every rank has it; fails after `timeout`.
    pub fn exchange(&self, payload: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>> {
        match (self.rank, payload) {
            (0, Some(p)) if self.world == 1 => Ok(p.to_vec()),
            (0, Some(p)) => {
                self.serve(p, timeout)?;
                Ok(p.to_vec())
            }
            (0, None) => Err(Error::Config("rank 0 has nothing to hand out".into())),
            (_, _) => self.fetch(timeout),
        }
    }

    fn serve(&self, payload: &[u8], timeout: Duration) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            Error::Config(format!(
                "rank 0 {what} on port {} (MASTER_PORT): {e}",
                self.port
            ))
        };
        let listener = bind_retrying(self.port, timeout).map_err(|e| io("could not listen", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("could not listen", e))?;
        let deadline = Instant::now() + timeout;
        let mut joined = vec![false; self.world];
        joined[0] = true;
        while joined.iter().any(|j| !j) {
            let (mut s, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (0..self.world)
                            .filter(|&r| !joined[r])
                            .map(|r| r.to_string())
                            .collect();
                        return Err(Error::Config(format!(
                            "rank 0 waited {}s on port {} for ranks {} of {}; start every rank \
                             with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE",
                            timeout.as_secs(),
                            self.port,
                            missing.join(", "),
                            self.world
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(io("could not accept a rank", e)),
            };
            s.set_nonblocking(false)
                .and_then(|_| s.set_read_timeout(Some(Duration::from_secs(30))))
                .map_err(|e| io("lost a rank", e))?;
            let hello = read_hello(&mut s);
            let verdict = match hello {
                Ok((_, w)) if w != self.world => Err(format!(
                    "WORLD_SIZE={w} on that rank but {} on rank 0",
                    self.world
                )),
                Ok((r, _)) if r == 0 || r >= self.world || joined[r] => {
                    Err(format!("a second process says it is rank {r}"))
                }
                Ok((r, _)) => Ok(r),
                // Not one of ours (a port scanner, another program): ignore it.
                Err(_) => continue,
            };
            match verdict {
                Ok(r) => {
                    reply(&mut s, 0, payload).map_err(|e| io("lost a rank", e))?;
                    joined[r] = true;
                }
                Err(why) => {
                    let _ = reply(&mut s, 1, why.as_bytes());
                    return Err(Error::Config(format!(
                        "the launch does not add up ({peer}): {why}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn fetch(&self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let addr = format!("{}:{}", self.master_addr, self.port);
        let sock = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                Error::Config(format!(
                    "rank {}: MASTER_ADDR '{}' does not resolve to an address",
                    self.rank, self.master_addr
                ))
            })?;
        loop {
            let attempt = (|| -> std::io::Result<Option<Vec<u8>>> {
                let mut s = match TcpStream::connect_timeout(&sock, Duration::from_secs(2)) {
                    Ok(s) => s,
                    // Rank 0 is not listening yet.
                    Err(_) => return Ok(None),
                };
                // On one host, a connect to a port in the ephemeral range that nothing listens
                // on can be given that very port as its source and connect to itself (TCP
                // simultaneous open); it would read its own hello and hold rank 0's port.
                if s.local_addr().ok() == s.peer_addr().ok() {
                    return Ok(None);
                }
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut hello = MAGIC.to_vec();
                hello.extend((self.rank as u32).to_le_bytes());
                hello.extend((self.world as u32).to_le_bytes());
                s.write_all(&hello)?;
                let mut head = [0u8; 5];
                s.read_exact(&mut head)?;
                let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
                let mut body = vec![0u8; len.min(1 << 20)];
                s.read_exact(&mut body)?;
                match head[0] {
                    0 => Ok(Some(body)),
                    _ => Err(std::io::Error::other(
                        String::from_utf8_lossy(&body).into_owned(),
                    )),
                }
            })();
            match attempt {
                Ok(Some(b)) => return Ok(b),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(None) => {
                    return Err(Error::Config(format!(
                        "rank {} could not reach rank 0 at {addr} (MASTER_ADDR:MASTER_PORT) within \
                         {}s",
                        self.rank,
                        timeout.as_secs()
                    )))
                }
                Err(e) => {
                    return Err(Error::Config(format!(
                        "rank {}: rank 0 at {addr} refused it: {e}",
                        self.rank
                    )))
                }
            }
        }
    }
}

/// Rank 0's listener. A port that is busy for a moment (a rank's connect that met itself, see
/// `fetch`) is tried again for up to a tenth of the timeout, at most 2 s.
fn bind_retrying(port: u16, timeout: Duration) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + (timeout / 10).min(Duration::from_secs(2));
    loop {
        match TcpListener::bind(("0.0.0.0", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

/// (rank, world) of a joining process.
fn read_hello(s: &mut TcpStream) -> std::io::Result<(usize, usize)> {
    let mut b = [0u8; 16];
    s.read_exact(&mut b)?;
    if &b[..8] != MAGIC {
        return Err(std::io::Error::other("not a chatforge rank"));
    }
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes")) as usize;
    Ok((word(8), word(12)))
}

/// A status byte (0 = joined), the body's length and the body.
fn reply(s: &mut TcpStream, status: u8, body: &[u8]) -> std::io::Result<()> {
    let mut m = vec![status];
    m.extend((body.len() as u32).to_le_bytes());
    m.extend(body);
    s.write_all(&m)
}
