//! `cargo xtask bench apiserver`: a release `windlass server` on SQLite and on etcd, driven over
//! HTTP/2 + TLS the way client-go drives kube-apiserver.
//!
//! Measures: creates per second with 1 and 16 concurrent clients; latency of a full list of 10k
//! pods; latency from sending a write to each of 100 watchers receiving its event (p50/p99);
//! server RSS with 10k pods stored. Writes `target/bench/apiserver.{json,md}`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::percentile;
use crate::paths;

const PODS: usize = 10_000;
const WATCHERS: usize = 100;
const WATCHED_WRITES: usize = 200;

pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) url: String,
    pub(super) token: String,
    pub(super) ca: String,
    pub(super) data: tempfile::TempDir,
    _etcd: Option<(Child, tempfile::TempDir)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((etcd, _)) = &mut self._etcd {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

pub(super) fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(super) fn start(binary: &Path, store: &str, extra: &[&str]) -> Result<Server> {
    let data = tempfile::tempdir()?;
    let mut args = vec![];
    let etcd = if store == "etcd" {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let child = Command::new("etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start etcd (from `cargo xtask deps`)")?;
        wait_for_port(client, "etcd")?;
        args.extend([
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            format!("http://127.0.0.1:{client}"),
        ]);
        Some((child, dir))
    } else {
        None
    };
    let port = free_port()?;
    let child = Command::new(binary)
        .arg("server")
        .arg("--data-dir")
        .arg(data.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(&args)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    wait_for_port(port, "windlass server")?;
    let read = |name: &str| {
        std::fs::read_to_string(data.path().join(name)).with_context(|| format!("read {name}"))
    };
    Ok(Server {
        child,
        url: format!("https://127.0.0.1:{port}"),
        token: read("pki/admin.token")?.trim().to_string(),
        ca: read("pki/ca.crt")?,
        data,
        _etcd: etcd,
    })
}

pub(super) fn client(ca_pem: &str) -> Result<HttpsClient> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parse CA")?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Like client-go (Go sets TCP_NODELAY by default): no Nagle delay on small requests.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(https))
}

pub(super) async fn request(
    client: &HttpsClient,
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.url))
        .header("Authorization", format!("Bearer {}", server.token))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let response = client.request(req).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

pub(super) async fn create_namespace(
    client: &HttpsClient,
    server: &Server,
    name: &str,
) -> Result<()> {
    let (code, body) = request(
        client,
        server,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({ "metadata": { "name": name } })),
    )
    .await?;
    if code != 201 {
        bail!(
            "create namespace {name}: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// `total` creates of `make(i)` at `path` from `clients` concurrent tasks; creates per second.
pub(super) async fn creates(
    client: &HttpsClient,
    server: &Arc<Server>,
    path: &str,
    total: usize,
    clients: usize,
    make: fn(usize) -> Value,
) -> Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, server, next, path) = (
            client.clone(),
            server.clone(),
            next.clone(),
            path.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let (code, body) = request(&client, &server, "POST", &path, Some(&make(i))).await?;
                if code != 201 {
                    bail!("create {i}: {code} {}", String::from_utf8_lossy(&body));
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn configmap(i: usize) -> Value {
    json!({ "metadata": { "name": format!("cm-{i:06}"), "labels": { "bench": "creates" } }, "data": { "k": "v" } })
}

fn pod(i: usize) -> Value {
    json!({ "metadata": { "name": format!("pod-{i:05}"), "labels": { "app": "bench", "shard": (i % 10).to_string() } },
            "spec": { "nodeName": "bench-node", "containers": [{ "name": "app", "image": "windlass.local/busybox:latest",
                      "command": ["sleep", "3600"], "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] } })
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// Reads a watch response line by line and calls `on_event` with each event and the instant its
/// data arrived, until `on_event` returns false or the stream ends.
pub(super) async fn each_event(
    mut body: hyper::body::Incoming,
    mut on_event: impl FnMut(Value, Instant) -> bool,
) {
    let mut buffer = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let arrived = Instant::now();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if let Ok(event) = serde_json::from_slice::<Value>(&line)
                && !on_event(event, arrived)
            {
                return;
            }
        }
    }
}

/// Write-to-event latency with `WATCHERS` concurrent watches, in milliseconds (sorted).
async fn watch_latency(client: &HttpsClient, server: &Arc<Server>) -> Result<Vec<f64>> {
    create_namespace(client, server, "watchbench").await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let req = hyper::Request::builder()
            .uri(format!(
                "{}/api/v1/namespaces/watchbench/configmaps?watch=1",
                server.url
            ))
            .header("Authorization", format!("Bearer {}", server.token))
            .body(Full::new(Bytes::new()))?;
        let response = client.request(req).await?;
        let (sent, samples) = (sent.clone(), samples.clone());
        watchers.push(tokio::spawn(async move {
            let mut seen = 0;
            each_event(response.into_body(), |event, arrived| {
                let name = event
                    .pointer("/object/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Some(at) = sent.lock().ok().and_then(|s| s.get(&name).copied()) {
                    if let Ok(mut samples) = samples.lock() {
                        samples.push(arrived.duration_since(at).as_secs_f64() * 1000.0);
                    }
                    seen += 1;
                }
                seen < WATCHED_WRITES
            })
            .await;
        }));
    }
    // Wait until every watch is open on the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = request(client, server, "GET", "/metrics", None).await?;
        let open = String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix("windlass_apiserver_client_watches "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if open >= WATCHERS {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {open} of {WATCHERS} watches opened");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..WATCHED_WRITES {
        let name = format!("w-{i:04}");
        if let Ok(mut sent) = sent.lock() {
            sent.insert(name.clone(), Instant::now());
        }
        let (code, body) = request(
            client,
            server,
            "POST",
            "/api/v1/namespaces/watchbench/configmaps",
            Some(&json!({ "metadata": { "name": name } })),
        )
        .await?;
        if code != 201 {
            bail!("watched write: {code} {}", String::from_utf8_lossy(&body));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in watchers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .context("watchers did not see every write")??;
    }
    let mut samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

async fn bench_store(binary: &Path, store: &str) -> Result<Value> {
    eprintln!("bench apiserver: {store}");
    let server = Arc::new(start(binary, store, &[])?);
    let client = client(&server.ca)?;
    let pid = server.child.id();
    create_namespace(&client, &server, "creates1").await?;
    create_namespace(&client, &server, "creates16").await?;
    let one = creates(
        &client,
        &server,
        "/api/v1/namespaces/creates1/configmaps",
        2000,
        1,
        configmap,
    )
    .await?;
    let sixteen = creates(
        &client,
        &server,
        "/api/v1/namespaces/creates16/configmaps",
        8000,
        16,
        configmap,
    )
    .await?;
    eprintln!("  creates/s: 1 client {one:.0}, 16 clients {sixteen:.0}");

    create_namespace(&client, &server, "pods").await?;
    creates(
        &client,
        &server,
        "/api/v1/namespaces/pods/pods",
        PODS,
        16,
        pod,
    )
    .await?;
    let mut list_ms = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let (code, body) = request(
            &client,
            &server,
            "GET",
            "/api/v1/namespaces/pods/pods",
            None,
        )
        .await?;
        list_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if code != 200 {
            bail!("list: {code}");
        }
        let items = serde_json::from_slice::<Value>(&body)?["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if items != PODS {
            bail!("list returned {items} pods, expected {PODS}");
        }
        list_bytes = body.len();
    }
    list_ms.sort_by(f64::total_cmp);
    let rss = rss_mib(pid)?;
    eprintln!(
        "  list {PODS} pods: p50 {:.1} ms ({} MiB), RSS {rss:.1} MiB",
        percentile(&list_ms, 50.0),
        list_bytes / (1024 * 1024)
    );

    let watch = watch_latency(&client, &server).await?;
    eprintln!(
        "  watch latency ({WATCHERS} watchers): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&watch, 50.0),
        percentile(&watch, 99.0)
    );
    Ok(json!({
        "store": store,
        "creates_per_second_1_client": one.round(),
        "creates_per_second_16_clients": sixteen.round(),
        "list_10k_pods_ms": { "p50": percentile(&list_ms, 50.0), "p99": percentile(&list_ms, 99.0), "bytes": list_bytes },
        "watch_latency_ms": { "watchers": WATCHERS, "events": watch.len(), "p50": percentile(&watch, 50.0), "p99": percentile(&watch, 99.0) },
        "rss_mib_with_10k_pods": (rss * 10.0).round() / 10.0,
    }))
}

fn markdown(results: &[Value]) -> String {
    let mut md = String::from(
        "| store | creates/s (1 client) | creates/s (16 clients) | list 10k pods p50 / p99 (ms) | watch latency p50 / p99 (ms, 100 watchers) | RSS with 10k pods (MiB) |\n|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} / {:.1} | {:.2} / {:.2} | {} |\n",
            r["store"].as_str().unwrap_or(""),
            r["creates_per_second_1_client"],
            r["creates_per_second_16_clients"],
            r["list_10k_pods_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["list_10k_pods_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            r["watch_latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["watch_latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            r["rss_mib_with_10k_pods"],
        ));
    }
    md
}

/// Builds the release binary, runs both stores, writes the results.
pub fn run() -> Result<()> {
    crate::deps::ensure()?;
    paths::cargo(&["build", "--release", "--package", "windlass"])?;
    let binary: PathBuf = paths::target_dir().join("release/windlass");
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    // WINDLASS_BENCH_STORES=sqlite runs one store (for quick iterations).
    let stores = std::env::var("WINDLASS_BENCH_STORES").unwrap_or_else(|_| "sqlite,etcd".into());
    for store in stores.split(',').filter(|s| !s.is_empty()) {
        results.push(runtime.block_on(bench_store(&binary, store))?);
    }
    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "benchmark": "apiserver",
        "command": "cargo xtask bench apiserver",
        "machine": format!("{} cores, kernel {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                           std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        "results": results,
    });
    std::fs::write(
        out.join("apiserver.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&results);
    std::fs::write(out.join("apiserver.md"), &md)?;
    println!("{md}");
    println!("written to {}", out.display());
    Ok(())
}
