//! `cargo xtask bench scheduler`: how fast the scheduler binds.
//!
//! A release `windlass server --disable-controllers` gets 100 Ready fake nodes and 5,000 pending
//! pods; then `windlass controllers` starts and the time until every pod is bound (seen through
//! a watch) gives pods bound per second (controller start-up included). Then a Deployment of
//! 1,000 replicas: time from its creation to all 1,000 pods bound. Writes
//! `target/bench/scheduler.{json,md}`.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::apiserver::{
    HttpsClient, Server, client, create_namespace, creates, each_event, request, start,
};
use crate::paths;

const NODES: usize = 100;
const PENDING: usize = 5_000;
const REPLICAS: usize = 1_000;

fn node(i: usize) -> Value {
    json!({ "metadata": { "name": format!("node-{i:03}"), "labels": { "kubernetes.io/hostname": format!("node-{i:03}") } },
            "status": { "allocatable": { "cpu": "64", "memory": "256Gi", "pods": "110" },
                        "capacity": { "cpu": "64", "memory": "256Gi", "pods": "110" },
                        "conditions": [{ "type": "Ready", "status": "True" }] } })
}

fn pod(i: usize) -> Value {
    json!({ "metadata": { "name": format!("p-{i:05}") },
            "spec": { "containers": [{ "name": "c", "image": "windlass.local/busybox:latest",
                      "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } } }] } })
}

/// Opens a watch on `namespace`'s pods; the returned task finishes when `count` distinct pods
/// have been seen bound, with the instant the last one was.
async fn bound_watch(
    client: &HttpsClient,
    server: &Server,
    namespace: &str,
    count: usize,
) -> Result<tokio::task::JoinHandle<Option<Instant>>> {
    let req = hyper::Request::builder()
        .uri(format!(
            "{}/api/v1/namespaces/{namespace}/pods?watch=1",
            server.url
        ))
        .header("Authorization", format!("Bearer {}", server.token))
        .body(Full::new(Bytes::new()))?;
    let response = client.request(req).await?;
    Ok(tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut done = None;
        each_event(response.into_body(), |event, arrived| {
            if event
                .pointer("/object/spec/nodeName")
                .and_then(Value::as_str)
                .is_some()
            {
                let name = event
                    .pointer("/object/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                bound.insert(name);
                if bound.len() >= count {
                    done = Some(arrived);
                    return false;
                }
            }
            true
        })
        .await;
        done
    }))
}

async fn bench(binary: &Path) -> Result<Value> {
    let server = Arc::new(start(binary, "sqlite", &["--disable-controllers"])?);
    let client = client(&server.ca)?;
    creates(&client, &server, "/api/v1/nodes", NODES, 8, node).await?;
    create_namespace(&client, &server, "pending").await?;
    creates(
        &client,
        &server,
        "/api/v1/namespaces/pending/pods",
        PENDING,
        16,
        pod,
    )
    .await?;
    eprintln!("bench scheduler: {NODES} nodes, {PENDING} pending pods; starting the controllers");

    let watch = bound_watch(&client, &server, "pending", PENDING).await?;
    let kubeconfig = server.data.path().join("admin.kubeconfig");
    let started = Instant::now();
    let mut controllers = Command::new(binary)
        .args(["controllers", "--kubeconfig"])
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start windlass controllers")?;
    let done = tokio::time::timeout(Duration::from_secs(120), watch)
        .await
        .context("pending pods not all bound within 120 s")??;
    let Some(done) = done else {
        bail!("the watch ended before every pod was bound")
    };
    let pending_seconds = done.duration_since(started).as_secs_f64();
    let pods_per_second = PENDING as f64 / pending_seconds;
    eprintln!(
        "  {PENDING} pending pods bound in {pending_seconds:.2} s: {pods_per_second:.0} pods/s"
    );

    create_namespace(&client, &server, "deploy").await?;
    let watch = bound_watch(&client, &server, "deploy", REPLICAS).await?;
    let deployment = json!({ "metadata": { "name": "big" }, "spec": { "replicas": REPLICAS,
        "selector": { "matchLabels": { "app": "big" } },
        "template": { "metadata": { "labels": { "app": "big" } }, "spec": { "containers": [{ "name": "c",
            "image": "windlass.local/busybox:latest", "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] } } } });
    let created = Instant::now();
    let (code, body) = request(
        &client,
        &server,
        "POST",
        "/apis/apps/v1/namespaces/deploy/deployments",
        Some(&deployment),
    )
    .await?;
    if code != 201 {
        bail!(
            "create deployment: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let done = tokio::time::timeout(Duration::from_secs(120), watch)
        .await
        .context("deployment not bound within 120 s")??;
    let Some(done) = done else {
        bail!("the watch ended before every replica was bound")
    };
    let deployment_seconds = done.duration_since(created).as_secs_f64();
    eprintln!("  deployment of {REPLICAS} replicas bound in {deployment_seconds:.2} s");
    let _ = controllers.kill();
    let _ = controllers.wait();
    Ok(json!({
        "nodes": NODES,
        "pending_pods": PENDING,
        "pending_pods_bound_seconds": (pending_seconds * 100.0).round() / 100.0,
        "pods_bound_per_second": pods_per_second.round(),
        "deployment_replicas": REPLICAS,
        "deployment_bound_seconds": (deployment_seconds * 100.0).round() / 100.0,
    }))
}

/// Builds the release binary, runs the benchmark, writes the results.
pub fn run() -> Result<()> {
    crate::deps::ensure()?;
    paths::cargo(&["build", "--release", "--package", "windlass"])?;
    let binary = paths::target_dir().join("release/windlass");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(bench(&binary))?;
    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({ "benchmark": "scheduler", "command": "cargo xtask bench scheduler", "result": result });
    std::fs::write(
        out.join("scheduler.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = format!(
        "| nodes | pending pods | bound in (s) | pods bound/s | deployment replicas | all bound in (s) |\n|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} |\n",
        result["nodes"],
        result["pending_pods"],
        result["pending_pods_bound_seconds"],
        result["pods_bound_per_second"],
        result["deployment_replicas"],
        result["deployment_bound_seconds"]
    );
    std::fs::write(out.join("scheduler.md"), &md)?;
    println!("{md}");
    Ok(())
}
