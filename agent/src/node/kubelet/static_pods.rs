//! Static pods: Pod manifests in `--manifest-dir` (YAML or JSON, one pod per file) that the
//! kubelet runs on its own, with or without an API server, and shows there as mirror pods.
//!
//! As in kubelet, a static pod is named `<name>-<node>`, its uid is a hash of the manifest and
//! the node (so an edit gives a new pod and the old one is stopped), it carries the
//! `kubernetes.io/config.{hash,source,seen}` annotations, and its mirror pod in the API has the
//! same spec plus `kubernetes.io/config.mirror: <hash>` and the Node as its owner. The mirror is
//! only a reflection: deleting it makes the kubelet create it again; removing the file stops
//! the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Annotation holding the static pod's hash (also its uid on the node).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Annotation naming where the pod came from (`file`).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// Annotation with the time the kubelet first saw the manifest.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// Annotation marking a mirror pod, holding the static pod's hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// A static pod read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The file.
    pub path: PathBuf,
    /// The pod as the kubelet runs it (named, annotated, bound to the node, uid = hash).
    pub pod: Pod,
}

impl StaticPod {
    /// Its hash, which is also its uid on the node.
    pub fn hash(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
}

/// Errors reading one manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("failed to read static pod manifest {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a Pod.
    #[error("static pod manifest {path} is not a valid Pod: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

impl ManifestError {
    /// The manifest the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Read { path, .. } | ManifestError::Invalid { path, .. } => {
                Path::new(path)
            }
        }
    }
}

/// Whether a pod object in the API is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// The static pod hash a mirror pod reflects.
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR)
        .map(String::as_str)
}

/// Reads every manifest in `dir` (`*.yaml`, `*.yml`, `*.json`; hidden files skipped, as
/// kubelet does). A bad file is reported and skipped; it never stops the others.
pub fn read_dir(dir: &Path, node: &str) -> (Vec<StaticPod>, Vec<ManifestError>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (pods, errors);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let hidden = name.as_deref().is_none_or(|n| n.starts_with('.'));
            let ext = p.extension().and_then(|e| e.to_str());
            !hidden && matches!(ext, Some("yaml" | "yml" | "json")) && p.is_file()
        })
        .collect();
    paths.sort();
    for path in paths {
        match read_manifest(&path, node) {
            Ok(pod) => pods.push(pod),
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

/// Reads one manifest.
pub fn read_manifest(path: &Path, node: &str) -> Result<StaticPod, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |message: String| ManifestError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let pod: Pod = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    Ok(StaticPod {
        path: path.to_path_buf(),
        pod: prepare(pod, node, &text).map_err(invalid)?,
    })
}

/// Turns a manifest's pod into the static pod kubelet runs.
pub fn prepare(mut pod: Pod, node: &str, source: &str) -> Result<Pod, String> {
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is required")?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err("spec.containers: Required value".into());
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{node}\n{namespace}\n{source}").as_bytes(),
    );
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata.namespace = Some(namespace);
    pod.metadata.uid = Some(hash.clone());
    pod.metadata.resource_version = None;
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_HASH.into(), hash);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_SEEN.into(), super::runtime::now_rfc3339());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.termination_grace_period_seconds.get_or_insert(30);
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        spec.scheduler_name
            .get_or_insert_with(|| "default-scheduler".into());
        spec.enable_service_links.get_or_insert(true);
    }
    pod.status = None;
    Ok(pod)
}

/// The mirror pod to create in the API for a static pod on `node` (whose uid is `node_uid`).
pub fn mirror(static_pod: &StaticPod, node: &str, node_uid: Option<&str>) -> Pod {
    let mut pod = static_pod.pod.clone();
    pod.metadata.uid = None;
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), static_pod.hash().to_string());
    if let Some(uid) = node_uid {
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_string(),
            uid: uid.to_string(),
            controller: Some(true),
            ..Default::default()
        }]);
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: main, image: windlass.local/busybox:latest}\n";

    #[test]
    fn static_pods_are_named_hashed_and_bound_like_kubelet_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), MANIFEST).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        std::fs::write(dir.path().join("bad.json"), "{\"kind\": \"Pod\"}").expect("write");
        let (pods, errors) = read_dir(dir.path(), "node-a");
        assert_eq!(pods.len(), 1, "{errors:?}");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad.json"), "{}", errors[0]);
        let pod = &pods[0].pod;
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-a"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        let hash = pods[0].hash().to_string();
        assert_eq!(hash.len(), 32);
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.get(CONFIG_HASH), Some(&hash));
        assert_eq!(
            annotations.get(CONFIG_SOURCE).map(String::as_str),
            Some("file")
        );

        // Same manifest, same hash; an edit or another node, another hash.
        let again = read_manifest(&dir.path().join("web.yaml"), "node-a").expect("read");
        assert_eq!(again.hash(), hash);
        let other = read_manifest(&dir.path().join("web.yaml"), "node-b").expect("read");
        assert_ne!(other.hash(), hash);
        std::fs::write(
            dir.path().join("web.yaml"),
            MANIFEST.replace("busybox", "iperf3"),
        )
        .expect("write");
        let edited = read_manifest(&dir.path().join("web.yaml"), "node-a").expect("read");
        assert_ne!(edited.hash(), hash);
    }

    #[test]
    fn mirrors_point_back_at_the_static_pod_and_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).expect("write");
        let (pods, _) = read_dir(dir.path(), "node-a");
        let mirror = mirror(&pods[0], "node-a", Some("node-uid"));
        assert!(is_mirror(&mirror));
        assert_eq!(mirror_hash(&mirror), Some(pods[0].hash()));
        assert!(mirror.metadata.uid.is_none());
        let owner = &mirror.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Node", "node-a")
        );
        assert!(!is_mirror(&pods[0].pod));
    }
}
