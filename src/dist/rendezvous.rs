//! How ranks started without MPI (torchrun, `--nproc-per-node` on GPUs)
//! learn the NCCL unique id rank 0 made: rank 0 listens at
//! `MASTER_ADDR:MASTER_PORT`, every other rank connects, says who it is,
//! and gets the id back. Nothing but those bytes goes over it: the
//! gradients go through NCCL.
//!
//! torchrun's own agent may hold `MASTER_PORT` already (it says so with
//! `TORCHELASTIC_USE_AGENT_STORE=True`); then the rendezvous uses the port
//! after it, which every rank derives the same way.
//!
//! The exchange, in bytes: a rank sends `MAGIC`, its rank and the world
//! size (u32 little-endian each); rank 0 answers `MAGIC` and the payload,
//! or `REFUSED` and a message when the two disagree on the world.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"NEMRDV01";
const REFUSED: &[u8; 8] = b"NEMRDVNO";
/// The bytes rank 0 hands out (NCCL's unique id).
pub const PAYLOAD: usize = 128;

fn err(msg: impl Into<String>) -> Error {
    Error::invalid("rendezvous", msg)
}

/// The port the rendezvous uses for a launcher's `MASTER_PORT`.
pub fn port_for(master_port: u16, agent_store: bool) -> Result<u16> {
    if !agent_store {
        return Ok(master_port);
    }
    master_port.checked_add(1).ok_or_else(|| {
        err("MASTER_PORT is 65535 and torchrun's agent holds it: the rendezvous needs the port after it")
    })
}

/// Rank 0: waits for the other `size − 1` ranks at `port` (on every
/// interface) and hands each `payload`. Gives up after `timeout`, naming
/// the ranks that never came.
pub fn serve(port: u16, size: usize, payload: &[u8; PAYLOAD], timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        err(format!(
            "rank 0 cannot listen on port {port} ({e}); another program holds it: choose another MASTER_PORT"
        ))
    })?;
    serve_on(listener, size, payload, timeout)
}

fn serve_on(listener: TcpListener, size: usize, payload: &[u8; PAYLOAD], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("listening: {e}")))?;
    let mut joined = vec![false; size];
    joined[0] = true;
    while joined.iter().any(|j| !j) {
        match listener.accept() {
            Ok((mut s, from)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut hello = [0u8; 16];
                if s.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
                    // Not one of ours (a port scanner, a stray client): ignored.
                    continue;
                }
                let rank = u32::from_le_bytes(hello[8..12].try_into().unwrap_or_default()) as usize;
                let theirs = u32::from_le_bytes(hello[12..16].try_into().unwrap_or_default()) as usize;
                let problem = if theirs != size {
                    Some(format!(
                        "rank {rank} (from {from}) says the world has {theirs} ranks, rank 0 says {size}"
                    ))
                } else if rank == 0 || rank >= size {
                    Some(format!("a process at {from} says it is rank {rank} of {size}"))
                } else if joined[rank] {
                    Some(format!(
                        "two processes say they are rank {rank} (the second from {from})"
                    ))
                } else {
                    None
                };
                if let Some(p) = problem {
                    let mut reply = REFUSED.to_vec();
                    reply.extend_from_slice(p.as_bytes());
                    let _ = s.write_all(&reply);
                    return Err(err(p));
                }
                let mut reply = MAGIC.to_vec();
                reply.extend_from_slice(payload);
                s.write_all(&reply)
                    .map_err(|e| err(format!("answering rank {rank}: {e}")))?;
                joined[rank] = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    let missing: Vec<String> = (0..size).filter(|&r| !joined[r]).map(|r| r.to_string()).collect();
                    return Err(err(format!(
                        "rank 0 waited {} s for rank(s) {} to join; did they start, with the same MASTER_ADDR and \
                         MASTER_PORT?",
                        timeout.as_secs(),
                        missing.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("accepting a rank: {e}"))),
        }
    }
    Ok(())
}

/// Any rank but 0: connects to rank 0 at `addr:port` (trying again while
/// it is not listening yet) and returns its payload.
pub fn join(addr: &str, port: u16, rank: usize, size: usize, timeout: Duration) -> Result<[u8; PAYLOAD]> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() <= timeout {
        let addrs = match (addr, port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                last = format!("cannot resolve MASTER_ADDR {addr:?}: {e}");
                Vec::new()
            }
        };
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(s) => return exchange(s, rank, size),
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(err(format!(
        "rank {rank} could not reach rank 0 at {addr}:{port} within {} s ({last}); is rank 0 running?",
        timeout.as_secs()
    )))
}

fn exchange(mut s: TcpStream, rank: usize, size: usize) -> Result<[u8; PAYLOAD]> {
    let io = |e: std::io::Error| err(format!("rank {rank} talking to rank 0: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(600))).map_err(io)?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(size as u32).to_le_bytes());
    s.write_all(&hello).map_err(io)?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head).map_err(io)?;
    if &head == REFUSED {
        let mut why = String::new();
        let _ = s.read_to_string(&mut why);
        return Err(err(format!("rank 0 refused rank {rank}: {why}")));
    }
    if &head != MAGIC {
        return Err(err(format!(
            "rank {rank}: what answers at MASTER_ADDR:MASTER_PORT is not rank 0 of this run"
        )));
    }
    let mut payload = [0u8; PAYLOAD];
    s.read_exact(&mut payload).map_err(io)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[test]
    fn every_rank_gets_rank_0s_bytes() {
        let (l, port) = listener();
        let payload = [7u8; PAYLOAD];
        let server = std::thread::spawn(move || serve_on(l, 4, &payload, Duration::from_secs(20)));
        let got: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || join("127.0.0.1", port, r, 4, Duration::from_secs(20))))
            .collect();
        for g in got {
            assert_eq!(g.join().unwrap().unwrap(), [7u8; PAYLOAD]);
        }
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_rank_that_never_comes_is_named() {
        let (l, port) = listener();
        let payload = [1u8; PAYLOAD];
        let server = std::thread::spawn(move || serve_on(l, 3, &payload, Duration::from_secs(2)));
        join("127.0.0.1", port, 2, 3, Duration::from_secs(5)).unwrap();
        let e = server.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank(s) 1 to join"), "{e}");
    }

    #[test]
    fn ranks_that_disagree_on_the_world_are_refused_on_both_sides() {
        let (l, port) = listener();
        let payload = [1u8; PAYLOAD];
        let server = std::thread::spawn(move || serve_on(l, 2, &payload, Duration::from_secs(10)));
        let e = join("127.0.0.1", port, 1, 3, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused") && e.contains("3 ranks"), "{e}");
        let e = server.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank 0 says 2"), "{e}");
    }

    #[test]
    fn no_rank_0_is_an_error_after_the_timeout() {
        let (l, port) = listener();
        drop(l);
        let e = join("127.0.0.1", port, 1, 2, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not reach rank 0"), "{e}");
    }

    #[test]
    fn torchruns_agent_port_is_left_to_it() {
        assert_eq!(port_for(29500, false).unwrap(), 29500);
        assert_eq!(port_for(29500, true).unwrap(), 29501);
        assert!(port_for(65535, true).is_err());
    }
}
