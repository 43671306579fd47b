//! `wl-probe`: the small network client (and UDP responder) the proxy tests run from a node or a
//! pod, so that what they check is what an application's sockets see.
//!
//! Every subcommand prints one line per result on stdout, flushed at once, and never waits
//! forever (each socket operation has a timeout):
//! - `tcp-get ADDR:PORT [COUNT]`: COUNT (default 1) connections, each printing
//!   `<peer address> <first line the server sent>`; the peer address is what `getpeername(2)`
//!   returns, so a service address shows the socket hooks' reverse translation.
//! - `tcp-session ADDR:PORT`: one connection held open; prints `<peer> <first line>`, then for
//!   every line read on stdin sends it and prints the line that comes back (an echo server).
//! - `udp-query ADDR:PORT MSG [COUNT]`: COUNT (default 1) queries, each from a new unconnected
//!   socket with `sendto(2)`, printing `<source address of the reply> <reply>` from
//!   `recvfrom(2)` (DNS-shaped: one datagram out, one back).
//! - `udp-serve PORT NAME`: answers every datagram with `NAME <the datagram>`, forever.
//! - `connect ADDR:PORT`: one TCP connect; prints `ok <ms>` or `error <ERRNO NAME> <ms>`.
//! - `peer-serve PORT`: answers every TCP connection with the client's address as it arrived
//!   (`<ip>`, one line) and closes it, forever: shows whether a connection was masqueraded.
//!
//! - `dns-serve ADDR:PORT IP`: a stand-in upstream DNS server on UDP: every A question gets `IP`
//!   (TTL 60), a name starting with `nx` NXDOMAIN, other types an empty NOERROR; prints
//!   `<name>` for every question it answers.
//!
//! Failures to parse arguments or to reach the server exit with status 2 and a message on
//! stderr.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long any single socket operation may take.
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wl-probe: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize, what: &str| {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing {what}; usage: see the module docs"))
    };
    let count = |i: usize| -> Result<usize, String> {
        args.get(i)
            .map(|c| c.parse().map_err(|e| format!("bad count {c:?}: {e}")))
            .unwrap_or(Ok(1))
    };
    match arg(0, "a subcommand")? {
        "tcp-get" => {
            let addr = parse_addr(arg(1, "ADDR:PORT")?)?;
            for _ in 0..count(2)? {
                let (stream, peer) = tcp_connect(addr)?;
                let mut reader = BufReader::new(stream);
                let line = read_line(&mut reader)?;
                say(&format!("{peer} {line}"));
            }
            Ok(())
        }
        "tcp-session" => {
            let addr = parse_addr(arg(1, "ADDR:PORT")?)?;
            let (stream, peer) = tcp_connect(addr)?;
            let mut writer = stream
                .try_clone()
                .map_err(|e| format!("clone the socket: {e}"))?;
            // The session may sit idle for as long as the test likes between lines.
            stream
                .set_read_timeout(None)
                .map_err(|e| format!("set a timeout: {e}"))?;
            let mut reader = BufReader::new(stream);
            let first = read_line(&mut reader)?;
            say(&format!("{peer} {first}"));
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| format!("read stdin: {e}"))?;
                writer
                    .write_all(format!("{line}\n").as_bytes())
                    .map_err(|e| format!("send on the session: {e}"))?;
                let back = read_line(&mut reader)?;
                say(&back);
            }
            Ok(())
        }
        "udp-query" => {
            let addr = parse_addr(arg(1, "ADDR:PORT")?)?;
            let message = arg(2, "MSG")?;
            for _ in 0..count(3)? {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                    .map_err(|e| format!("bind a UDP socket: {e}"))?;
                socket
                    .set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| format!("set a timeout: {e}"))?;
                socket
                    .send_to(message.as_bytes(), addr)
                    .map_err(|e| format!("sendto {addr}: {e}"))?;
                let mut buf = [0u8; 2048];
                let (n, from) = socket
                    .recv_from(&mut buf)
                    .map_err(|e| format!("recvfrom after a query to {addr}: {e}"))?;
                let reply = String::from_utf8_lossy(&buf[..n]);
                say(&format!("{from} {}", reply.trim_end()));
            }
            Ok(())
        }
        "udp-serve" => {
            let port: u16 = arg(1, "PORT")?
                .parse()
                .map_err(|e| format!("bad port: {e}"))?;
            let name = arg(2, "NAME")?;
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .map_err(|e| format!("bind UDP port {port}: {e}"))?;
            say(&format!("serving UDP on port {port} as {name}"));
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = socket
                    .recv_from(&mut buf)
                    .map_err(|e| format!("recvfrom: {e}"))?;
                let query = String::from_utf8_lossy(&buf[..n]);
                let reply = format!("{name} {}", query.trim_end());
                if let Err(e) = socket.send_to(reply.as_bytes(), from) {
                    eprintln!("wl-probe: reply to {from}: {e}");
                }
            }
        }
        "peer-serve" => {
            let port: u16 = arg(1, "PORT")?
                .parse()
                .map_err(|e| format!("bad port: {e}"))?;
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .map_err(|e| format!("bind TCP port {port}: {e}"))?;
            say(&format!("serving peer addresses on port {port}"));
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Ok(peer) = stream.peer_addr() {
                    let _ = writeln!(stream, "{}", peer.ip());
                }
            }
            Ok(())
        }
        "connect" => {
            let addr = parse_addr(arg(1, "ADDR:PORT")?)?;
            let started = Instant::now();
            let result = TcpStream::connect_timeout(&addr, TIMEOUT);
            let ms = started.elapsed().as_millis();
            match result {
                Ok(_) => say(&format!("ok {ms}")),
                Err(e) => {
                    let name = e
                        .raw_os_error()
                        .map(|code| format!("{:?}", nix::errno::Errno::from_raw(code)))
                        .unwrap_or_else(|| format!("{:?}", e.kind()));
                    say(&format!("error {name} {ms}"));
                }
            }
            Ok(())
        }
        "dns-serve" => {
            let addr = parse_addr(arg(1, "ADDR:PORT")?)?;
            let answer: Ipv4Addr = arg(2, "IP")?.parse().map_err(|e| format!("bad IP: {e}"))?;
            dns_serve(addr, answer)
        }
        other => Err(format!("unknown subcommand {other:?}")),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("bad address {text:?} (want IP:PORT): {e}"))
}

/// Connects with a timeout; returns the stream and its `getpeername(2)` address.
fn tcp_connect(addr: SocketAddr) -> Result<(TcpStream, SocketAddr), String> {
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("set a timeout: {e}"))?;
    let peer = stream
        .peer_addr()
        .map_err(|e| format!("getpeername after connecting to {addr}: {e}"))?;
    Ok((stream, peer))
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|e| format!("read from the server: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection without a line".into());
    }
    Ok(line.trim_end().to_string())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `dns-serve`: answers DNS questions over UDP from the wire format (one question per message).
fn dns_serve(addr: SocketAddr, answer: Ipv4Addr) -> Result<(), String> {
    let socket = UdpSocket::bind(addr).map_err(|e| format!("bind UDP {addr}: {e}"))?;
    say(&format!("serving DNS on {addr}"));
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("recvfrom: {e}"))?;
        let query = &buf[..n];
        if n < 12 {
            continue;
        }
        // The question: labels up to the root, then type and class.
        let mut i = 12;
        let mut labels = Vec::new();
        while i < n && query[i] != 0 {
            let len = usize::from(query[i]);
            if len > 63 || i + 1 + len > n {
                break;
            }
            labels.push(String::from_utf8_lossy(&query[i + 1..i + 1 + len]).into_owned());
            i += 1 + len;
        }
        if i + 5 > n {
            continue;
        }
        let question_end = i + 5;
        let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
        let name = labels.join(".");
        say(&name);
        let nx = name.starts_with("nx");
        let mut reply = Vec::with_capacity(question_end + 16);
        reply.extend_from_slice(&query[..2]);
        // QR, opcode 0, RD copied, RA; rcode 3 for NXDOMAIN.
        reply.push(0x80 | (query[2] & 0x01));
        reply.push(0x80 | if nx { 3 } else { 0 });
        let answers: u16 = if !nx && qtype == 1 { 1 } else { 0 };
        reply.extend_from_slice(&[0, 1]);
        reply.extend_from_slice(&answers.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        reply.extend_from_slice(&query[12..question_end]);
        if answers == 1 {
            // A pointer to the question's name, A, IN, TTL 60, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&answer.octets());
        }
        if let Err(e) = socket.send_to(&reply, from) {
            eprintln!("wl-probe: reply to {from}: {e}");
        }
    }
}
