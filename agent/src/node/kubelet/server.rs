//! The kubelet's HTTPS server (`--kubelet-port`, 10250 by default) on the node IP:
//!
//! - `/healthz`: `ok`;
//! - `/pods`: a `PodList` of the pods bound to this node;
//! - `/containerLogs/<namespace>/<pod>/<container>`: the container's CRI log files as
//!   `kubectl logs` shows them, with kubelet's query parameters `follow`, `tailLines`,
//!   `timestamps`, `previous`, `sinceSeconds` / `sinceTime` and `limitBytes`.
//!
//! As a kubelet started without `--tls-cert-file`, it serves a self-signed certificate for its
//! node name and IP, made at start. Every request must present a client certificate signed by
//! the cluster CA (the one in the agent's kubeconfig): the API server's `apiserver-kubelet-client`
//! certificate, when it proxies `pods/log`.
//!
//! Logs live in `<pod-log-dir>/<ns>_<pod>_<uid>/<container>/<attempt>.log` (rotated siblings
//! `<attempt>.log.<YYYYMMDD-HHMMSS>`); the current attempt is the highest number, `previous` the
//! one before. `follow` watches the container's log directory with inotify and ends when the
//! client goes away, when a newer attempt starts, or when the pod's status says the attempt
//! has ended.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dir_watch::DirWatch;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use windlass_shim::cri_log::{self, Tag};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The Node's name (a name in the serving certificate).
    pub node_name: String,
    /// The node IP to listen on (and to put in the certificate); all addresses when unset.
    pub node_ip: Option<String>,
    /// `--kubelet-port`.
    pub port: u16,
    /// Container logs (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// The CA certificates (DER) that sign accepted client certificates.
    pub client_ca: Vec<Vec<u8>>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The serving certificate could not be made.
    #[error("failed to make the kubelet serving certificate")]
    Certificate(#[source] rcgen::Error),
    /// There is no CA to check client certificates against.
    #[error("no client CA: the kubeconfig has no certificate-authority-data")]
    NoClientCa,
    /// rustls refused the configuration.
    #[error("invalid kubelet TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("failed to build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The port could not be bound.
    #[error("failed to listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A self-signed serving certificate for `node_name` and `ip` (kubelet without
/// `--tls-cert-file`).
pub fn self_signed(
    node_name: &str,
    ip: Option<IpAddr>,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut names = vec![node_name.to_string()];
    if let Some(ip) = ip {
        names.push(ip.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{node_name}@{since_epoch}"),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// The rustls configuration: the self-signed certificate, client certificates required.
pub fn tls_config(options: &ServerOptions) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    if options.client_ca.is_empty() {
        return Err(ServerError::NoClientCa);
    }
    let ip = options.node_ip.as_deref().and_then(|ip| ip.parse().ok());
    let (cert, key) = self_signed(&options.node_name, ip).map_err(ServerError::Certificate)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in &options.client_ca {
        roots.add(CertificateDer::from(der.clone()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Clone)]
struct AppState {
    pods: watch::Receiver<Vec<Pod>>,
    pod_log_dir: Arc<Path>,
}

/// The router (without TLS), for tests and for [`run`].
fn router(pods: watch::Receiver<Vec<Pod>>, pod_log_dir: &Path) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(list_pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(AppState {
            pods,
            pod_log_dir: Arc::from(pod_log_dir),
        })
}

/// Serves until the process ends; errors are logged (the kubelet keeps running without it).
pub async fn run(options: ServerOptions, pods: watch::Receiver<Vec<Pod>>) {
    if let Err(e) = serve(options, pods).await {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "kubelet server not started");
    }
}

async fn serve(options: ServerOptions, pods: watch::Receiver<Vec<Pod>>) -> Result<(), ServerError> {
    let tls = tls_config(&options)?;
    let ip: IpAddr = options
        .node_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, options.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    tracing::info!(%addr, "kubelet server listening");
    let app = router(pods, &options.pod_log_dir);
    // The API server's TLS accept loop: rustls with ALPN, one task per connection.
    crate::control_plane::apiserver::serve::serve(listener, tls, app, std::future::pending()).await;
    Ok(())
}

async fn list_pods(State(state): State<AppState>) -> Response {
    let items = state.pods.borrow().clone();
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}

fn text_error(code: StatusCode, message: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

/// kubelet's `PodLogOptions`, from the query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming new lines.
    pub follow: bool,
    /// Only the last lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// The attempt before the current one.
    pub previous: bool,
    /// Only lines written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses kubelet's query parameters; an error names the bad one.
    pub fn parse(
        query: &HashMap<String, String>,
        now: jiff::Timestamp,
    ) -> Result<LogOptions, String> {
        let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
        let number = |name: &str| -> Result<Option<i64>, String> {
            query
                .get(name)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("invalid {name}: {v:?} is not a number"))
                })
                .transpose()
        };
        let mut since = None;
        if let Some(s) = number("sinceSeconds")? {
            if s <= 0 {
                return Err("sinceSeconds must be greater than 0".into());
            }
            since = now.checked_sub(jiff::SignedDuration::from_secs(s)).ok();
        }
        if let Some(t) = query.get("sinceTime") {
            since = Some(
                t.parse::<jiff::Timestamp>()
                    .map_err(|_| format!("invalid sinceTime: {t:?}"))?,
            );
        }
        let limit_bytes = match number("limitBytes")? {
            Some(n) if n <= 0 => return Err("limitBytes must be greater than 0".into()),
            other => other.map(|n| n as u64),
        };
        Ok(LogOptions {
            follow: flag("follow"),
            // A negative tailLines means "all", as in kubelet.
            tail_lines: number("tailLines")?.and_then(|n| u64::try_from(n).ok()),
            timestamps: flag("timestamps"),
            previous: flag("previous"),
            since,
            limit_bytes,
        })
    }
}

/// One line as `kubectl logs` prints it: partial entries joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The time of its first entry, as written.
    pub time: String,
    /// The message.
    pub text: Vec<u8>,
    /// Whether it ended with a full (`F`) entry, so it gets a newline.
    pub full: bool,
}

impl LogLine {
    /// The bytes to send.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 40);
        if timestamps {
            out.extend_from_slice(self.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.text);
        if self.full {
            out.push(b'\n');
        }
        out
    }

    fn after(&self, since: Option<jiff::Timestamp>) -> bool {
        match (since, self.time.parse::<jiff::Timestamp>()) {
            (Some(since), Ok(t)) => t >= since,
            _ => true,
        }
    }
}

/// Joins CRI entries into lines (kubelet concatenates `P` entries up to the next `F`).
#[derive(Debug, Default)]
pub struct Joiner {
    pending: Option<LogLine>,
}

impl Joiner {
    /// Takes one raw CRI line (without its `\n`); returns a completed line.
    pub fn push(&mut self, raw: &[u8]) -> Option<LogLine> {
        let entry = cri_log::parse_line(raw)?;
        let line = self.pending.get_or_insert_with(|| LogLine {
            time: entry.time.to_string(),
            text: Vec::new(),
            full: false,
        });
        line.text.extend_from_slice(entry.message);
        match entry.tag {
            Tag::Partial => None,
            Tag::Full => {
                let mut done = self.pending.take()?;
                done.full = true;
                Some(done)
            }
        }
    }

    /// The partial line left over when the log ends without an `F` entry.
    pub fn finish(&mut self) -> Option<LogLine> {
        self.pending.take()
    }
}

/// Reads a log file's bytes (rotated files may be gzipped, as the kubelet leaves them).
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let file = std::fs::File::open(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_end(&mut data)?;
    } else {
        std::io::BufReader::new(file).read_to_end(&mut data)?;
    }
    Ok(data)
}

/// The attempts (`<n>.log`) in a container's log directory, lowest first.
pub fn attempts(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse::<u32>().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_unstable();
    found
}

/// The log to read: the current attempt's, or with `previous` the one before it.
pub fn select_attempt(dir: &Path, previous: bool) -> Option<u32> {
    let all = attempts(dir);
    if previous {
        all.len().checked_sub(2).map(|i| all[i])
    } else {
        all.last().copied()
    }
}

/// What a log read produced and where following it continues.
#[derive(Debug)]
pub struct LogRead {
    /// The bytes to send first.
    pub output: Vec<u8>,
    /// How many more bytes `limitBytes` allows (`None`: no limit).
    pub remaining: Option<u64>,
    /// The current file, positioned after what was read, for following.
    pub tail: Option<Follower>,
}

/// Reads `log` (an attempt's `<n>.log`) and its rotated files, oldest first, as `kubectl logs`
/// shows them with `options` (since, tail, limit, timestamps).
pub fn read_logs(log: &Path, options: &LogOptions) -> std::io::Result<LogRead> {
    let files = windlass_shim::rotation::all_logs(log).map_err(std::io::Error::other)?;
    let mut joiner = Joiner::default();
    let keep = options.tail_lines.map(|n| n as usize);
    let mut lines: VecDeque<LogLine> = VecDeque::new();
    let add = |line: LogLine, lines: &mut VecDeque<LogLine>| {
        if !line.after(options.since) {
            return;
        }
        lines.push_back(line);
        if keep.is_some_and(|k| lines.len() > k) {
            lines.pop_front();
        }
    };
    let (current, rotated) = files.split_last().unwrap_or((&files[0], &[]));
    for path in rotated {
        let data = match read_file(path) {
            Ok(d) => d,
            // Removed by rotation between the listing and now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(line) = joiner.push(raw) {
                add(line, &mut lines);
            }
        }
    }
    let mut follower = Follower::open(current, joiner)?;
    for line in follower.read_new()? {
        add(line, &mut lines);
    }
    if !options.follow
        && let Some(line) = follower.joiner.finish()
    {
        add(line, &mut lines);
    }
    let mut remaining = options.limit_bytes;
    let mut output = Vec::new();
    for line in lines {
        if !emit(&mut output, &line, options.timestamps, &mut remaining) {
            break;
        }
    }
    Ok(LogRead {
        output,
        remaining,
        tail: Some(follower),
    })
}

/// Appends `line` within the byte limit; false once the limit is used up.
fn emit(out: &mut Vec<u8>, line: &LogLine, timestamps: bool, remaining: &mut Option<u64>) -> bool {
    let bytes = line.render(timestamps);
    match remaining {
        None => {
            out.extend_from_slice(&bytes);
            true
        }
        Some(left) => {
            let take = (*left).min(bytes.len() as u64) as usize;
            out.extend_from_slice(&bytes[..take]);
            *left -= take as u64;
            *left > 0
        }
    }
}

/// An open log file read incrementally; follows the shim's rotation (rename + new file).
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: std::fs::File,
    carry: Vec<u8>,
    joiner: Joiner,
}

impl Follower {
    fn open(path: &Path, joiner: Joiner) -> std::io::Result<Follower> {
        Ok(Follower {
            path: path.to_path_buf(),
            file: std::fs::File::open(path)?,
            carry: Vec::new(),
            joiner,
        })
    }

    /// The complete lines written since the last read; when the file was rotated away, the
    /// rest of the old file and then the new one.
    pub fn read_new(&mut self) -> std::io::Result<Vec<LogLine>> {
        let mut out = Vec::new();
        loop {
            let mut data = std::mem::take(&mut self.carry);
            self.file.read_to_end(&mut data)?;
            let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            self.carry = data.split_off(complete);
            for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(line) = self.joiner.push(raw) {
                    out.push(line);
                }
            }
            let rotated = match (std::fs::metadata(&self.path), self.file.metadata()) {
                (Ok(now), Ok(open)) => now.ino() != open.ino() || now.dev() != open.dev(),
                _ => false,
            };
            if !rotated {
                return Ok(out);
            }
            match std::fs::File::open(&self.path) {
                Ok(file) => {
                    self.file = file;
                    self.carry.clear();
                }
                Err(_) => return Ok(out),
            }
        }
    }

    fn rewind_check(&mut self) {
        // A file truncated under us (not done by the shim, but by hand) restarts from its top.
        if let (Ok(pos), Ok(meta)) = (self.file.stream_position(), self.file.metadata())
            && meta.len() < pos
        {
            let _ = self.file.seek(SeekFrom::Start(0));
        }
    }
}

/// The container's log directory: the pod's by uid when the kubelet knows the pod, else the
/// newest `<ns>_<pod>_*` directory on disk.
fn container_dir(
    pod_log_dir: &Path,
    pods: &[Pod],
    namespace: &str,
    name: &str,
    container: &str,
) -> Option<(PathBuf, Option<String>)> {
    let known = pods.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(namespace)
            && p.metadata.name.as_deref() == Some(name)
    });
    if let Some(uid) = known.and_then(|p| p.metadata.uid.clone()) {
        return Some((
            pod_log_dir
                .join(format!("{namespace}_{name}_{uid}"))
                .join(container),
            Some(uid),
        ));
    }
    let prefix = format!("{namespace}_{name}_");
    let newest = std::fs::read_dir(pod_log_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?;
    Some((newest.path().join(container), None))
}

/// Whether the pod's status says `attempt` of `container` is over (exited, or a newer one
/// started), or the pod is gone.
fn attempt_over(pods: &[Pod], uid: Option<&str>, container: &str, attempt: u32) -> bool {
    let Some(uid) = uid else { return false };
    let Some(pod) = pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid)) else {
        return true;
    };
    let Some(status) = &pod.status else {
        return false;
    };
    let statuses = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let Some(c) = statuses.into_iter().find(|c| c.name == container) else {
        return false;
    };
    let restarts = u32::try_from(c.restart_count).unwrap_or(0);
    let state = c.state.as_ref();
    restarts > attempt
        || (restarts == attempt
            && (state.is_some_and(|s| s.terminated.is_some())
                || state
                    .and_then(|s| s.waiting.as_ref())
                    .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))))
}

async fn container_logs(
    State(state): State<AppState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let options = match LogOptions::parse(&query, jiff::Timestamp::now()) {
        Ok(o) => o,
        Err(message) => return text_error(StatusCode::BAD_REQUEST, message),
    };
    let pods = state.pods.borrow().clone();
    if let Some(p) = pods.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && p.metadata.name.as_deref() == Some(pod.as_str())
    }) {
        let spec = p.spec.as_ref();
        let names = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .map(|c| c.name.clone())
                    .chain(
                        s.ephemeral_containers
                            .iter()
                            .flatten()
                            .map(|c| c.name.clone()),
                    )
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !names.contains(&container) {
            return text_error(
                StatusCode::NOT_FOUND,
                format!("container {container} is not valid for pod {pod}"),
            );
        }
    }
    let Some((dir, uid)) = container_dir(&state.pod_log_dir, &pods, &namespace, &pod, &container)
    else {
        return text_error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} not found"),
        );
    };
    let Some(attempt) = select_attempt(&dir, options.previous) else {
        let message = if options.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: no logs yet")
        };
        return text_error(StatusCode::BAD_REQUEST, message);
    };
    let log = dir.join(format!("{attempt}.log"));
    // The watch is set up before the first read, so nothing written in between is missed.
    let follow = options.follow && !options.previous;
    let inotify = if follow { DirWatch::new(&dir) } else { None };
    let opts = options.clone();
    let log2 = log.clone();
    let read = match tokio::task::spawn_blocking(move || read_logs(&log2, &opts)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            return text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to read {}: {e}", log.display()),
            );
        }
        Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let limited_out = read.remaining == Some(0);
    if !follow || limited_out {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            read.output,
        )
            .into_response();
    }
    let mut pods_rx = state.pods.clone();
    let timestamps = options.timestamps;
    let stream = async_stream::stream! {
        yield Ok::<Bytes, std::io::Error>(Bytes::from(read.output));
        let mut remaining = read.remaining;
        let Some(mut follower) = read.tail else { return };
        let mut last_round = false;
        loop {
            follower.rewind_check();
            let lines = match follower.read_new() {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::debug!(error = %e, "kubelet server: log follow ended");
                    return;
                }
            };
            let mut out = Vec::new();
            let mut more = true;
            for line in &lines {
                if !emit(&mut out, line, timestamps, &mut remaining) {
                    more = false;
                    break;
                }
            }
            if !out.is_empty() {
                yield Ok(Bytes::from(out));
            }
            if !more || last_round {
                return;
            }
            let newer = attempts(&dir).last().is_some_and(|&n| n > attempt);
            let over = attempt_over(&pods_rx.borrow(), uid.as_deref(), &container, attempt);
            if newer || over || !dir.is_dir() {
                // One more read drains what the attempt wrote before it ended.
                last_round = true;
                continue;
            }
            tokio::select! {
                _ = super::dir_watch::changed(inotify.as_ref()) => {}
                r = pods_rx.changed() => if r.is_err() { return },
            }
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log");
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
    }

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    fn text(log: &Path, options: &LogOptions) -> String {
        String::from_utf8(read_logs(log, options).expect("read").output).expect("utf8")
    }

    const T1: &str = "2026-01-02T03:04:05.000000001Z";
    const T2: &str = "2026-01-02T03:04:06.5Z";
    const T3: &str = "2026-01-02T03:04:07Z";

    #[test]
    fn strips_the_cri_prefix_and_tails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        write(
            &log,
            &[
                &format!("{T1} stdout F one"),
                &format!("{T2} stderr F two"),
                &format!("{T3} stdout F three"),
            ],
        );
        assert_eq!(text(&log, &opts()), "one\ntwo\nthree\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..opts()
        };
        assert_eq!(text(&log, &tail), "two\nthree\n");
        let none = LogOptions {
            tail_lines: Some(0),
            ..opts()
        };
        assert_eq!(text(&log, &none), "");
    }

    #[test]
    fn joins_partial_entries_and_keeps_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        write(
            &log,
            &[
                &format!("{T1} stdout P abc"),
                &format!("{T2} stdout P def"),
                &format!("{T2} stdout F ghi"),
                &format!("{T3} stdout F next"),
                &format!("{T3} stdout P unterminated"),
            ],
        );
        assert_eq!(text(&log, &opts()), "abcdefghi\nnext\nunterminated");
        let ts = LogOptions {
            timestamps: true,
            tail_lines: Some(2),
            ..opts()
        };
        assert_eq!(
            text(&log, &ts),
            format!("{T3} next\n{T3} unterminated"),
            "a joined line carries its first entry's time"
        );
        let ts = LogOptions {
            timestamps: true,
            ..opts()
        };
        assert!(text(&log, &ts).starts_with(&format!("{T1} abcdefghi\n")));
    }

    #[test]
    fn reads_rotated_files_in_order_and_limits_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("1.log");
        write(
            &dir.path().join("1.log.20260102-030401"),
            &[&format!("{T1} stdout F a")],
        );
        write(
            &dir.path().join("1.log.20260102-030402"),
            &[&format!("{T1} stdout P b"), &format!("{T2} stdout F c")],
        );
        write(&log, &[&format!("{T3} stdout F d")]);
        assert_eq!(text(&log, &opts()), "a\nbc\nd\n");
        let limit = LogOptions {
            limit_bytes: Some(4),
            ..opts()
        };
        assert_eq!(text(&log, &limit), "a\nbc");
        let since = LogOptions {
            since: Some(T2.parse().expect("time")),
            ..opts()
        };
        assert_eq!(text(&log, &since), "d\n", "bc starts at T1");
    }

    #[test]
    fn previous_is_the_attempt_before_the_current_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(select_attempt(dir.path(), false), None);
        write(&dir.path().join("0.log"), &[&format!("{T1} stdout F zero")]);
        assert_eq!(select_attempt(dir.path(), false), Some(0));
        assert_eq!(select_attempt(dir.path(), true), None);
        write(&dir.path().join("1.log"), &[&format!("{T2} stdout F one")]);
        write(&dir.path().join("10.log"), &[&format!("{T3} stdout F ten")]);
        write(&dir.path().join("10.log.20260102-030401"), &[]);
        assert_eq!(attempts(dir.path()), vec![0, 1, 10]);
        assert_eq!(select_attempt(dir.path(), false), Some(10));
        assert_eq!(select_attempt(dir.path(), true), Some(1));
        assert_eq!(text(&dir.path().join("1.log"), &opts()), "one\n");
    }

    #[test]
    fn follower_reads_new_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        write(&log, &[&format!("{T1} stdout F first")]);
        let follow = LogOptions {
            follow: true,
            ..opts()
        };
        let read = read_logs(&log, &follow).expect("read");
        assert_eq!(read.output, b"first\n");
        let mut tail = read.tail.expect("follower");
        assert!(tail.read_new().expect("read").is_empty());
        // A half-written line is held back until its newline arrives.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        write!(f, "{T2} stdout F sec").expect("write");
        assert!(tail.read_new().expect("read").is_empty());
        writeln!(f, "ond").expect("write");
        write(&log, &[&format!("{T2} stdout F third")]);
        std::fs::rename(&log, dir.path().join("0.log.20260102-030401")).expect("rotate");
        write(&log, &[&format!("{T3} stdout F fourth")]);
        let texts: Vec<String> = tail
            .read_new()
            .expect("read")
            .into_iter()
            .map(|l| String::from_utf8(l.text).expect("utf8"))
            .collect();
        assert_eq!(texts, ["second", "third", "fourth"]);
    }

    #[test]
    fn query_parameters_parse_like_kubelet() {
        let now: jiff::Timestamp = T3.parse().expect("time");
        let q: HashMap<String, String> = [
            ("follow", "true"),
            ("tailLines", "2"),
            ("timestamps", "true"),
            ("previous", "false"),
            ("sinceSeconds", "1"),
            ("limitBytes", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = LogOptions::parse(&q, now).expect("parse");
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(2));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(o.since, Some("2026-01-02T03:04:06Z".parse().expect("time")));
        let bad: HashMap<String, String> = [("tailLines".to_string(), "x".to_string())].into();
        assert!(LogOptions::parse(&bad, now).is_err());
    }
}
