//! EndpointSlice controller (and the legacy Endpoints object): for every Service with a
//! selector, the pods it selects that have an IP, with the conditions the proxy reads: `ready`
//! (Ready and not terminating), `serving` (Ready, even while terminating) and `terminating`.
//! Target ports are resolved per Service port (named ports through the pod's container ports);
//! at most 100 endpoints per slice; slices are only written when their content changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::ControllerError;
use super::replicaset::pod_ready;

/// Endpoints per slice, as kube's default `--max-endpoints-per-slice`.
const MAX_PER_SLICE: usize = 100;
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.windlass.dev";

struct Context {
    client: Client,
    pods: Store<Pod>,
}

fn selects(service: &Service, pod: &Pod) -> bool {
    let selector = service.spec.as_ref().and_then(|s| s.selector.as_ref());
    match selector {
        Some(selector) if !selector.is_empty() => {
            let labels = pod.labels();
            pod.namespace() == service.namespace()
                && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        _ => false,
    }
}

/// The pod port a Service port targets: a number, or a named container port of this pod.
fn target_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The desired slices' bodies (endpoints and ports), in a stable order.
fn desired(service: &Service, pods: &[Arc<Pod>]) -> Vec<Value> {
    let ports: Vec<(Option<String>, String, Option<IntOrString>, i32)> = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.target_port.clone(),
                p.port,
            )
        })
        .collect();
    // Group pods by their resolved port numbers (named ports may differ between pods).
    let mut groups: BTreeMap<Vec<i32>, Vec<Value>> = BTreeMap::new();
    let mut selected: Vec<&Arc<Pod>> = pods.iter().filter(|p| selects(service, p)).collect();
    selected.sort_by_key(|p| p.name_any());
    for pod in selected {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let resolved: Option<Vec<i32>> = ports
            .iter()
            .map(|(_, _, target, port)| target_port(target.as_ref(), *port, pod))
            .collect();
        let Some(resolved) = resolved else { continue };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pod_ready(pod);
        groups.entry(resolved).or_default().push(json!({
            "addresses": [ip],
            "conditions": { "ready": ready && !terminating, "serving": ready, "terminating": terminating },
            "nodeName": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            "targetRef": { "kind": "Pod", "name": pod.name_any(), "namespace": pod.namespace(), "uid": pod.uid() },
        }));
    }
    let mut slices = Vec::new();
    for (numbers, endpoints) in groups {
        let slice_ports: Vec<Value> = ports
            .iter()
            .zip(numbers.iter())
            .map(|((name, protocol, _, _), number)| json!({ "name": name.clone().unwrap_or_default(), "protocol": protocol, "port": number }))
            .collect();
        for chunk in endpoints.chunks(MAX_PER_SLICE) {
            slices.push(json!({ "endpoints": chunk, "ports": slice_ports }));
        }
    }
    if slices.is_empty() && !ports.is_empty() {
        // A Service with no endpoints still has a slice (empty), as kube's controller keeps one.
        slices.push(json!({ "endpoints": [], "ports": [] }));
    }
    slices
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    super::synced(&ctx.pods).await?;
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty());
    if selector.is_none() || service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (ns, name) = (service.namespace().unwrap_or_default(), service.name_any());
    let owner = service
        .controller_owner_ref(&())
        .ok_or_else(|| ControllerError::Invalid("no owner ref".into()))?;
    let pods = ctx.pods.state();
    let wanted = desired(&service, &pods);

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME}={name}")))
        .await?
        .items;
    let mut existing: Vec<EndpointSlice> = existing
        .into_iter()
        .filter(|s| s.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER))
        .collect();
    existing.sort_by_key(|s| s.name_any());
    for (i, body) in wanted.iter().enumerate() {
        let mut slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "namespace": ns, "labels": { SERVICE_NAME: name, MANAGED_BY: MANAGER }, "ownerReferences": [owner] },
            "addressType": "IPv4", "endpoints": body["endpoints"], "ports": body["ports"],
        });
        match existing.get(i) {
            Some(current) => {
                // Compare in typed form, so a field absent on one side and null on the other agree.
                let typed = |v: &Value| {
                    serde_json::from_value::<EndpointSlice>(json!({ "addressType": "IPv4", "endpoints": v["endpoints"], "ports": v["ports"] })).ok()
                };
                let wanted_typed = typed(body);
                let same = wanted_typed.is_some_and(|w| {
                    w.endpoints == current.endpoints
                        && w.ports.unwrap_or_default() == current.ports.clone().unwrap_or_default()
                });
                if !same {
                    slice["metadata"]["name"] = json!(current.name_any());
                    slice["metadata"]["resourceVersion"] = json!(current.resource_version());
                    let typed: EndpointSlice = serde_json::from_value(slice)
                        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                    slices
                        .replace(&current.name_any(), &PostParams::default(), &typed)
                        .await?;
                }
            }
            None => {
                slice["metadata"]["generateName"] = json!(format!("{name}-"));
                let typed: EndpointSlice = serde_json::from_value(slice)
                    .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                slices.create(&PostParams::default(), &typed).await?;
            }
        }
    }
    for extra in existing.iter().skip(wanted.len()) {
        let _ = slices
            .delete(&extra.name_any(), &DeleteParams::default())
            .await;
    }

    // The legacy Endpoints object, for clients that still read it.
    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let mut subsets = Vec::new();
    for body in &wanted {
        let address = |e: &Value| json!({ "ip": e["addresses"][0], "nodeName": e["nodeName"], "targetRef": e["targetRef"] });
        let all = body["endpoints"].as_array().cloned().unwrap_or_default();
        let ready: Vec<Value> = all
            .iter()
            .filter(|e| e["conditions"]["ready"] == true)
            .map(address)
            .collect();
        let not_ready: Vec<Value> = all
            .iter()
            .filter(|e| e["conditions"]["ready"] != true)
            .map(address)
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let ports: Vec<Value> = body["ports"].as_array().cloned().unwrap_or_default();
        subsets.push(json!({ "addresses": ready, "notReadyAddresses": not_ready, "ports": ports }));
    }
    let endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": { SERVICE_NAME: name }, "ownerReferences": [owner] },
        "subsets": subsets,
    }))
    .map_err(|e| ControllerError::Invalid(e.to_string()))?;
    match endpoints_api.get_opt(&name).await? {
        None => {
            endpoints_api
                .create(&PostParams::default(), &endpoints)
                .await?;
        }
        Some(current)
            if serde_json::to_value(&current.subsets).ok()
                != serde_json::to_value(&endpoints.subsets).ok() =>
        {
            let mut next = endpoints;
            next.metadata.resource_version = current.resource_version();
            endpoints_api
                .replace(&name, &PostParams::default(), &next)
                .await?;
        }
        Some(_) => {}
    }
    Ok(Action::await_change())
}

fn error_policy(service: Arc<Service>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(svc = service.name_any(), error = %error, "endpointslice controller: retrying");
    Action::requeue(std::time::Duration::from_millis(500))
}

/// Runs the controller.
pub async fn run(client: Client) {
    let (pods, pod_events) =
        super::reflect(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let services: Api<Service> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let service_store = controller.store();
    // A pod change concerns every Service in its namespace that selects it.
    let to_services = move |pod: Pod| {
        service_store
            .state()
            .iter()
            .filter(|s| selects(s, &pod))
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .watches_stream(pod_events, to_services)
        .run(reconcile, error_policy, Arc::new(Context { client, pods }))
        .for_each(|_| futures::future::ready(()))
        .await;
}
