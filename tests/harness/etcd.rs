//! A real etcd (Debian's etcd-server) on loopback ports for one test, with its data in a temp
//! directory; killed and removed on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{HarnessError, io_err, prefix, prereq};

/// A running etcd.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client_url: String,
    _data: tempfile::TempDir,
}

fn free_port() -> Result<u16, HarnessError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("bind", "127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("read address of", "127.0.0.1:0"))?
        .port())
}

impl EtcdServer {
    /// Starts etcd on two free loopback ports and waits until it accepts clients.
    pub fn start() -> Result<Self, HarnessError> {
        let etcd = prereq::require_tool("etcd");
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-etcd", prefix::unique()))
            .tempdir()
            .map_err(io_err("create", "etcd data dir"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(etcd)
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.path().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("start", "etcd"))?;
        let mut server = EtcdServer {
            child,
            client_url,
            _data: data,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(HarnessError::Setup(format!(
                    "etcd exited at start: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup("etcd did not start within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
