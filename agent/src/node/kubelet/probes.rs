//! Probes and lifecycle hooks: exec (through the runtime), httpGet and tcpSocket (from the node
//! to the pod's address). A prober task per probe runs on the probe's period and reports only
//! changes of its result, after `successThreshold` / `failureThreshold` consecutive results.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::runtime::Runtime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

/// A change of a probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    /// The container's name.
    pub container: String,
    /// The container id the prober was started for (stale events are dropped by the worker).
    pub container_id: String,
    /// Which probe.
    pub kind: ProbeKind,
    /// Passed (true) or failed (false).
    pub success: bool,
    /// The last failure's message.
    pub message: String,
}

/// Where handlers run.
#[derive(Debug, Clone)]
pub struct Target {
    /// The runtime, for exec.
    pub runtime: Arc<dyn Runtime>,
    /// The container id.
    pub container_id: String,
    /// The pod's IP (httpGet and tcpSocket default host).
    pub pod_ip: Option<String>,
    /// The container spec (named ports).
    pub container: Container,
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port {name:?} not found in container {}", container.name)),
    }
}

async fn exec(target: &Target, action: &ExecAction, timeout: Duration) -> Result<(), String> {
    let command = action.command.clone().unwrap_or_default();
    let result = target
        .runtime
        .exec_sync(&target.container_id, &command, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if result.exit_code == 0 {
        Ok(())
    } else {
        Err(format!(
            "command {command:?} exited with {}: {}",
            result.exit_code,
            String::from_utf8_lossy(&result.output).trim()
        ))
    }
}

async fn http_get(
    target: &Target,
    action: &HTTPGetAction,
    timeout: Duration,
) -> Result<(), String> {
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("httpGet with scheme HTTPS is not supported yet".into());
    }
    let host = action
        .host
        .clone()
        .or_else(|| target.pod_ip.clone())
        .ok_or("the pod has no IP")?;
    let port = resolve_port(&action.port, &target.container)?;
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let mut headers = String::new();
    for h in action.http_headers.iter().flatten() {
        headers.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("invalid HTTP response {:?}", line.lines().next()))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("Get \"http://{host}:{port}{path}\": context deadline exceeded"))?
}

async fn tcp(target: &Target, action: &TCPSocketAction, timeout: Duration) -> Result<(), String> {
    let host = action
        .host
        .clone()
        .or_else(|| target.pod_ip.clone())
        .ok_or("the pod has no IP")?;
    let port = resolve_port(&action.port, &target.container)?;
    tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("dial tcp {host}:{port}: i/o timeout"))?
    .map(|_| ())
    .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

/// Runs a probe once.
pub async fn run_probe(target: &Target, probe: &Probe) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(action) = &probe.exec {
        exec(target, action, timeout).await
    } else if let Some(action) = &probe.http_get {
        http_get(target, action, timeout).await
    } else if let Some(action) = &probe.tcp_socket {
        tcp(target, action, timeout).await
    } else if probe.grpc.is_some() {
        Err("grpc probes are not supported yet".into())
    } else {
        Err("the probe has no handler".into())
    }
}

/// Runs a lifecycle hook (postStart, preStop), at most `timeout`.
pub async fn run_hook(
    target: &Target,
    handler: &LifecycleHandler,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(action) = &handler.exec {
        exec(target, action, timeout).await
    } else if let Some(action) = &handler.http_get {
        http_get(target, action, timeout).await
    } else if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        Ok(())
    } else if let Some(action) = &handler.tcp_socket {
        tcp(target, action, timeout).await
    } else {
        Err("the hook has no handler".into())
    }
}

/// Starts a prober; dropping or aborting the handle stops it.
pub fn spawn(
    kind: ProbeKind,
    probe: Probe,
    target: Target,
    events: mpsc::Sender<ProbeEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(Duration::from_secs(
            probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let mut reported: Option<bool> = None;
        let (mut successes, mut failures) = (0, 0);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = run_probe(&target, &probe).await;
            let message = match &result {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                    String::new()
                }
                Err(m) => {
                    failures += 1;
                    successes = 0;
                    tracing::debug!(container = %target.container.name, ?kind, error = %m, "probe failed");
                    m.clone()
                }
            };
            let verdict = if successes >= success_threshold {
                Some(true)
            } else if failures >= failure_threshold {
                Some(false)
            } else {
                None
            };
            if let Some(verdict) = verdict
                && reported != Some(verdict)
            {
                reported = Some(verdict);
                let event = ProbeEvent {
                    container: target.container.name.clone(),
                    container_id: target.container_id.clone(),
                    kind,
                    success: verdict,
                    message,
                };
                if events.send(event).await.is_err() {
                    return;
                }
                // A startup probe stops once it passed; a failed liveness probe restarts the
                // container, which starts a new prober.
                if (kind == ProbeKind::Startup && verdict)
                    || (kind == ProbeKind::Liveness && !verdict)
                {
                    return;
                }
            }
        }
    })
}
