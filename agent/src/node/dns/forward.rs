//! Forwarding of names outside the cluster domain to the node's resolvers (the `nameserver`
//! lines of its resolv.conf), like CoreDNS's `forward . /etc/resolv.conf`.
//!
//! A small client on hickory-proto's wire format rather than hickory-resolver: the upstream's
//! answer goes back to the pod as it came (response code, authority section, CNAME chains),
//! which a resolver's lookup API does not keep. Each upstream is tried in order over UDP with
//! a short timeout; a truncated answer is asked again over TCP. With no upstream the answer is
//! SERVFAIL at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The EDNS payload size asked of upstreams (the DNS flag day's 1232).
const EDNS_PAYLOAD: u16 = 1232;

/// Why a question could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// resolv.conf lists no nameserver.
    #[error("no upstream nameserver is configured")]
    NoUpstream,
    /// The question could not be encoded.
    #[error("failed to encode the forwarded query")]
    Encode(#[source] hickory_proto::ProtoError),
    /// Every upstream failed; the last failure.
    #[error("no upstream answered {name}: {last}")]
    Failed {
        /// The name asked.
        name: String,
        /// The last upstream's failure.
        last: String,
    },
}

/// Reads the `nameserver` addresses (port 53) from a resolv.conf. A missing file gives none, as
/// for a node without resolvers.
pub fn upstreams_from_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_nameservers(&text))
}

/// The `nameserver` addresses of resolv.conf text, port 53 (IPv6 zone suffixes dropped).
pub fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let address = words.next()?;
            let address = address.split('%').next().unwrap_or(address);
            address.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Sends questions to the node's resolvers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Forwarder {
            upstreams,
            timeout: UPSTREAM_TIMEOUT,
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Asks `query` of the upstreams; the first answer wins.
    pub async fn forward(
        &self,
        query: &Query,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let id = random_id();
        let mut message = Message::new();
        message
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .set_checking_disabled(checking_disabled)
            .add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.set_edns(edns);
        let bytes = message.to_vec().map_err(ForwardError::Encode)?;
        let mut last = String::new();
        for upstream in &self.upstreams {
            match self.ask(*upstream, &bytes, id).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::debug!(upstream = %upstream, name = %query.name(), error = %e, "upstream did not answer");
                    last = format!("{upstream}: {e}");
                }
            }
        }
        Err(ForwardError::Failed {
            name: query.name().to_string(),
            last,
        })
    }

    /// One upstream: UDP, then TCP when the answer was truncated.
    async fn ask(&self, upstream: SocketAddr, bytes: &[u8], id: u16) -> std::io::Result<Message> {
        let answer = tokio::time::timeout(self.timeout, udp_exchange(upstream, bytes, id))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out over UDP")
            })??;
        if !answer.truncated() {
            return Ok(answer);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(upstream, bytes, id))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out over TCP"))?
    }
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

async fn udp_exchange(upstream: SocketAddr, bytes: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A stray datagram (a late answer to someone else) is skipped, not taken.
        match Message::from_vec(&buf[..n]) {
            Ok(answer) if answer.id() == id && answer.message_type() == MessageType::Response => {
                return Ok(answer);
            }
            _ => continue,
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, bytes: &[u8], id: u16) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(invalid)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf).map_err(invalid)?;
    if answer.id() != id {
        return Err(invalid("answer id does not match the query"));
    }
    Ok(answer)
}

/// A query id nobody can guess (uuid v4 draws from the OS's random source).
fn random_id() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0 ; x\noptions ndots:2\nnameserver bogus\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_missing_resolv_conf_has_no_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            upstreams_from_resolv_conf(&dir.path().join("nope"))
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn no_upstream_fails_at_once() {
        let forwarder = Forwarder::new(Vec::new());
        let query = Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A);
        let started = std::time::Instant::now();
        assert!(matches!(
            forwarder.forward(&query, false).await,
            Err(ForwardError::NoUpstream)
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn answers_come_back_from_a_udp_upstream() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, peer) = upstream.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_response_code(hickory_proto::op::ResponseCode::NXDomain)
                .add_queries(query.queries().to_vec());
            upstream
                .send_to(&answer.to_vec().unwrap(), peer)
                .await
                .unwrap();
        });
        // A dead upstream first: the next one is tried.
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut forwarder = Forwarder::new(vec![dead.local_addr().unwrap(), addr]);
        forwarder.timeout = Duration::from_millis(200);
        let query = Query::query(Name::from_ascii("nope.example.").unwrap(), RecordType::A);
        let answer = forwarder.forward(&query, false).await.unwrap();
        assert_eq!(
            answer.response_code(),
            hickory_proto::op::ResponseCode::NXDomain
        );
    }
}
