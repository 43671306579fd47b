//! A fake kubelet for fake nodes: registers Ready nodes with a given capacity, marks pods bound
//! to them Running and Ready, and confirms their deletion, driven by a watch (kube-rs), so
//! controller tests see pods come and go as on a real node, without containers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::HarnessError;

/// Runs until dropped.
#[derive(Debug)]
pub struct FakeKubelet {
    stop: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    nodes: Arc<std::sync::Mutex<Vec<String>>>,
}

fn client(kubeconfig: &Path, runtime: &tokio::runtime::Runtime) -> Result<Client, HarnessError> {
    runtime.block_on(async {
        let config = kube::config::Kubeconfig::read_from(kubeconfig)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        Client::try_from(config).map_err(|e| HarnessError::Setup(e.to_string()))
    })
}

/// Registers a Ready node with `cpu` cores, `memory` and 110 pods.
pub fn register_node(
    kubeconfig: &Path,
    name: &str,
    cpu: &str,
    memory: &str,
) -> Result<(), HarnessError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Setup(e.to_string()))?;
    let client = client(kubeconfig, &runtime)?;
    runtime.block_on(async {
        let nodes: Api<Node> = Api::all(client);
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "status": {
                "capacity": { "cpu": cpu, "memory": memory, "pods": "110" },
                "allocatable": { "cpu": cpu, "memory": memory, "pods": "110" },
                "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady" }],
            },
        }))
        .map_err(|e| HarnessError::Setup(e.to_string()))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(|e| HarnessError::Setup(format!("register node {name}: {e}")))?;
        Ok(())
    })
}

impl FakeKubelet {
    /// Starts serving pods bound to `nodes`.
    pub fn start(kubeconfig: &Path, nodes: &[&str]) -> Result<Self, HarnessError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let client = client(kubeconfig, &runtime)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::Mutex::new(
            nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ));
        let hold = Arc::new(AtomicBool::new(false));
        let (stopping, serving, holding) = (stop.clone(), served.clone(), hold.clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let pods: Api<Pod> = Api::all(client.clone());
                let mut events = watcher(pods, watcher::Config::default()).default_backoff().applied_objects().boxed();
                let mut next_ip: u32 = 0;
                let mut held: Vec<(String, String)> = Vec::new();
                let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
                let mut renewed = std::time::Instant::now() - std::time::Duration::from_secs(60);
                while !stopping.load(Ordering::Relaxed) {
                    // Renew the served nodes' leases (a real kubelet does every 10 s).
                    if renewed.elapsed() >= std::time::Duration::from_millis(300) {
                        renewed = std::time::Instant::now();
                        let served: Vec<String> = serving.lock().map(|n| n.clone()).unwrap_or_default();
                        for node in served {
                            let now = jiff::Timestamp::now().to_string();
                            let body = json!({ "metadata": { "name": node, "namespace": "kube-node-lease" },
                                               "spec": { "holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now } });
                            match leases.get_opt(&node).await {
                                Ok(None) => {
                                    if let Ok(lease) = serde_json::from_value::<Lease>(body) {
                                        let _ = leases.create(&PostParams::default(), &lease).await;
                                    }
                                }
                                Ok(Some(_)) => {
                                    let _ = leases.patch(&node, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "renewTime": now } }))).await;
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    if !holding.load(Ordering::Relaxed) {
                        for (ns, name) in held.drain(..) {
                            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                            let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                        }
                    }
                    let next = tokio::time::timeout(std::time::Duration::from_millis(100), events.next()).await;
                    let Ok(Some(Ok(pod))) = next else { continue };
                    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                    if !serving.lock().map(|n| n.contains(&node)).unwrap_or(false) {
                        continue;
                    }
                    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                    if pod.metadata.deletion_timestamp.is_some() {
                        if holding.load(Ordering::Relaxed) {
                            held.push((pod.namespace().unwrap_or_default(), pod.name_any()));
                            continue;
                        }
                        let _ = api.delete(&pod.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                    } else if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                        let names: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| c.name.clone()).collect();
                        let statuses: Vec<_> = names.iter().map(|n| json!({ "name": n, "ready": true, "restartCount": 0,
                            "image": "fake", "imageID": "", "started": true, "state": { "running": {} } })).collect();
                        next_ip += 1;
                        let ip = format!("10.244.{}.{}", 100 + next_ip / 250, 2 + next_ip % 250);
                        let status = json!({ "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
                            "conditions": [{ "type": "Ready", "status": "True" }, { "type": "ContainersReady", "status": "True" }],
                            "containerStatuses": statuses } });
                        let _ = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(status)).await;
                    }
                }
            });
        });
        Ok(FakeKubelet {
            stop,
            hold,
            thread: Some(thread),
            nodes: served,
        })
    }

    /// Holds (true) or resumes (false) confirming the deletion of pods, so a test can see pods
    /// while they terminate.
    pub fn hold_terminations(&self, hold: bool) {
        self.hold.store(hold, Ordering::Relaxed);
    }

    /// Serves `node` too (after [`register_node`]).
    pub fn serve(&self, node: &str) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.push(node.to_string());
        }
    }

    /// Stops serving `node`: no more lease renewals, its pods left as they are (the node looks
    /// dead).
    pub fn abandon(&self, node: &str) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.retain(|n| n != node);
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
