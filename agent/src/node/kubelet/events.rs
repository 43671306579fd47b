//! Pod events as kubelet records them (`Pulled`, `Created`, `Started`, `Killing`, `BackOff`,
//! `Unhealthy`, `Failed`), so `kubectl describe pod` tells the story. Recording never blocks a
//! pod worker: events go through a bounded queue to one task that writes them, and a repeat of
//! the same event for the same pod bumps its `count` instead of creating a new object, as
//! client-go's event correlator does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

#[derive(Debug)]
struct Record {
    pod: ObjectReference,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// Hands events to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
}

/// How many events may wait to be written before new ones are dropped.
const QUEUE: usize = 1024;

impl EventRecorder {
    /// Starts the writer task for `node`.
    pub fn start(client: Client, node: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, node, rx));
        EventRecorder { tx }
    }

    /// A recorder that drops everything (for pods with no API server, and tests).
    pub fn disabled() -> Self {
        let (tx, _) = mpsc::channel(1);
        EventRecorder { tx }
    }

    /// Records an event about `pod`, for its container `field_path` (`spec.containers{main}`)
    /// when given.
    pub fn pod(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path,
        };
        let record = Record {
            pod: reference,
            kind,
            reason,
            message,
        };
        if self.tx.try_send(record).is_err() {
            tracing::debug!(reason, "event queue full or closed; event dropped");
        }
    }
}

/// The field path kubelet uses for a container.
pub fn container_field(name: &str, init: bool) -> Option<String> {
    Some(if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    })
}

async fn write_events(client: Client, node: String, mut rx: mpsc::Receiver<Record>) {
    // (pod uid, reason, message) -> (namespace, event name, count)
    let mut seen: HashMap<(String, &'static str, String), (String, String, i32)> = HashMap::new();
    while let Some(record) = rx.recv().await {
        let namespace = record
            .pod
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Time(
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        );
        let key = (
            record.pod.uid.clone().unwrap_or_default(),
            record.reason,
            record.message.clone(),
        );
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        if let Some((ns, name, count)) = seen.get_mut(&key)
            && *ns == namespace
        {
            *count += 1;
            let patch = serde_json::json!({"count": *count, "lastTimestamp": now});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(e) => tracing::debug!(error = %e, "cannot update an event; creating it again"),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", record.pod.name.clone().unwrap_or_default())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: record.pod,
            reason: Some(record.reason.to_string()),
            message: Some(record.message),
            type_: Some(
                match record.kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.clone()),
            }),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                if seen.len() > 4096 {
                    seen.clear();
                }
                if let Some(name) = created.metadata.name {
                    seen.insert(key, (namespace, name, 1));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot record an event"),
        }
    }
}
