//! Traffic that stays inside test namespaces: a TCP echo server that answers each line with the
//! peer address it saw (so tests can check NAT and client-IP preservation), and a client.
//!
//! Sockets are created on a thread inside the namespace and keep that namespace afterwards, so
//! the server's accept loop and the client's I/O run on ordinary threads.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use windlass_cni::netns::NetNs;

use crate::{HarnessError, io_err};

/// A TCP server inside a namespace; each line received is answered with `<peer ip>:<peer port>
/// <line>`. Stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` (port 0 picks one) inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Result<Self, HarnessError> {
        let listener = ns
            .run(|| TcpListener::bind(addr))?
            .map_err(io_err("listen on", addr))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("read address of", addr))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("set non-blocking", addr))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("echo-{addr}"))
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            std::thread::spawn(move || serve(stream, peer));
                        }
                        // Non-blocking accept: check the stop flag every 10 ms.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .map_err(io_err("spawn echo server for", addr))?;
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if writer
            .write_all(format!("{peer} {}\n", line.trim_end()).as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The echo server's answer to one request: the peer address it saw and the echoed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// The line sent back.
    pub line: String,
}

/// Connects from inside `ns` to `server` (giving up after `timeout`), sends each of `lines`, and
/// returns the answers.
pub fn tcp_echo(
    ns: &NetNs,
    server: SocketAddr,
    lines: &[&str],
    timeout: Duration,
) -> std::io::Result<Vec<Echo>> {
    let stream = ns
        .run(|| TcpStream::connect_timeout(&server, timeout))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::with_capacity(lines.len());
    for line in lines {
        writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        let (peer, echoed) = answer
            .trim_end()
            .split_once(' ')
            .ok_or_else(|| std::io::Error::other(format!("malformed answer {answer:?}")))?;
        answers.push(Echo {
            peer: peer.parse().map_err(std::io::Error::other)?,
            line: echoed.to_string(),
        });
    }
    Ok(answers)
}
