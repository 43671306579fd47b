//! The `pods/log` subresource: the API server looks up the pod and its Node and proxies the
//! kubelet's `/containerLogs/<ns>/<pod>/<container>` (at the Node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`), presenting its `apiserver-kubelet-client`
//! certificate. Like kube-apiserver without `--kubelet-certificate-authority`, it does not verify
//! the kubelet's (self-signed) serving certificate. The body is streamed back as `text/plain`, so
//! `kubectl logs -f` follows.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::handlers::{Api, Target};
use super::pki::Credentials;
use super::resources;
use super::status::ApiError;

/// The kubelet's default port, when a Node publishes none.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// The query parameters passed on to the kubelet.
const PASSED: &[&str] = &[
    "follow",
    "tailLines",
    "timestamps",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// The annotation naming the default container (`kubectl.kubernetes.io/default-container`).
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The client credentials the API server presents to kubelets.
#[derive(Clone)]
pub struct KubeletClient {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Uses the `apiserver-kubelet-client` certificate from the server's credentials.
    pub fn new(credentials: &Credentials) -> Self {
        KubeletClient {
            cert_pem: credentials.kubelet_client_cert_pem.clone(),
            key_pem: credentials.kubelet_client_key_pem.clone(),
        }
    }

    fn client(&self, base: &str) -> Result<kube::Client, ApiError> {
        use base64::Engine as _;
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
        let uri = base
            .parse::<axum::http::Uri>()
            .map_err(|e| ApiError::internal(format!("invalid kubelet address {base}: {e}")))?;
        let mut config = kube::Config::new(uri);
        config.accept_invalid_certs = true;
        config.default_retry = false;
        config.read_timeout = None;
        config.auth_info.client_certificate_data = Some(b64(&self.cert_pem));
        config.auth_info.client_key_data = Some(b64(&self.key_pem).into());
        kube::Client::try_from(config)
            .map_err(|e| ApiError::internal(format!("cannot build a kubelet client: {e}")))
    }
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Which container a logs request is for: the named one, the annotated default, or the only
/// one; kube-apiserver's errors otherwise.
pub fn choose_container(
    pod: &Value,
    requested: Option<&str>,
    pod_name: &str,
) -> Result<String, ApiError> {
    let containers = names(pod.pointer("/spec/containers"));
    let init = names(pod.pointer("/spec/initContainers"));
    let ephemeral = names(pod.pointer("/spec/ephemeralContainers"));
    if let Some(c) = requested.filter(|c| !c.is_empty()) {
        if containers
            .iter()
            .chain(&init)
            .chain(&ephemeral)
            .any(|n| n == c)
        {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        )));
    }
    if let Some(c) = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|c| containers.iter().any(|n| n == c))
    {
        return Ok(c.to_string());
    }
    if containers.len() == 1 {
        return Ok(containers[0].clone());
    }
    let mut message = format!(
        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
        containers.join(" ")
    );
    if !init.is_empty() {
        message.push_str(&format!(
            " or one of the init containers: [{}]",
            init.join(" ")
        ));
    }
    if !ephemeral.is_empty() {
        message.push_str(&format!(
            " or one of the ephemeral containers: [{}]",
            ephemeral.join(" ")
        ));
    }
    Err(ApiError::bad_request(message))
}

/// kubelet's `validateContainerLogStatus`, answered here where the pod's status is at hand.
pub fn check_status(
    pod: &Value,
    container: &str,
    pod_name: &str,
    previous: bool,
) -> Result<(), ApiError> {
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|k| pod.pointer(&format!("/status/{k}"))?.as_array())
    .flatten()
    .find(|s| s["name"] == container);
    let waiting = |reason: &str| {
        ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
        ))
    };
    let Some(status) = status else {
        return Err(waiting("ContainerCreating"));
    };
    let last_terminated = status.pointer("/lastState/terminated").is_some();
    if previous {
        if !last_terminated {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            )));
        }
        return Ok(());
    }
    if let Some(w) = status.pointer("/state/waiting")
        && !last_terminated
    {
        return Err(waiting(w["reason"].as_str().unwrap_or("ContainerCreating")));
    }
    Ok(())
}

/// `https://<InternalIP>:<kubelet port>` of a Node object.
pub fn kubelet_base(node: &Value) -> Option<String> {
    let ip = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p <= u64::from(u16::MAX))
        .unwrap_or(u64::from(DEFAULT_KUBELET_PORT));
    Some(if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `/api/v1/namespaces/{ns}/pods/{name}/log` (authorization already done).
pub async fn pod_log(
    api: &Api,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or_else(ApiError::no_route)?;
    let nodes = resources::find("", "v1", "nodes").ok_or_else(ApiError::no_route)?;
    let pod = api
        .get(&Target {
            resource: pods,
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            subresource: None,
        })
        .await?;
    let container = choose_container(&pod, query.get("container").map(String::as_str), name)?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} is not yet scheduled")))?;
    let previous = query
        .get("previous")
        .is_some_and(|v| v == "true" || v == "1");
    check_status(&pod, &container, name, previous)?;
    let node = api
        .get(&Target {
            resource: nodes,
            namespace: None,
            name: Some(node_name.to_string()),
            subresource: None,
        })
        .await?;
    let base = kubelet_base(&node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name} has no InternalIP to reach its kubelet"
        ))
    })?;
    let params: Vec<String> = PASSED
        .iter()
        .filter_map(|k| query.get(*k).map(|v| format!("{k}={}", percent_encode(v))))
        .collect();
    let mut path = format!(
        "/containerLogs/{}/{}/{}",
        percent_encode(namespace),
        percent_encode(name),
        percent_encode(&container)
    );
    if !params.is_empty() {
        path.push('?');
        path.push_str(&params.join("&"));
    }
    let client = kubelet.client(&base)?;
    let request = axum::http::Request::get(path)
        .body(kube::client::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = client.send(request).await.map_err(|e| {
        ApiError::internal(format!(
            "failed to reach the kubelet of node {node_name} at {base}: {e}"
        ))
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match status.as_u16() {
            404 => ApiError {
                code: 404,
                reason: "NotFound",
                message,
                details: None,
            },
            400 => ApiError::bad_request(message),
            code => ApiError::internal(format!("the kubelet answered {code}: {message}")),
        });
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::new(response.into_body()),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_annotated_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, None, "p").expect("only"), "a");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = choose_container(&two, None, "p").expect_err("ambiguous");
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(choose_container(&two, Some("b"), "p").expect("named"), "b");
        assert_eq!(
            choose_container(&two, Some("x"), "p")
                .expect_err("bad")
                .code,
            400
        );
        let annotated = json!({
            "metadata": {"annotations": {DEFAULT_CONTAINER_ANNOTATION: "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
        });
        assert_eq!(
            choose_container(&annotated, None, "p").expect("default"),
            "b"
        );
    }

    #[test]
    fn the_kubelet_is_found_from_the_node() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "192.0.2.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}},
        }});
        assert_eq!(
            kubelet_base(&node).as_deref(),
            Some("https://192.0.2.1:12345")
        );
        let bare =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}});
        assert_eq!(
            kubelet_base(&bare).as_deref(),
            Some("https://192.0.2.1:10250")
        );
        assert_eq!(
            percent_encode("2026-01-02T03:04:05+01:00"),
            "2026-01-02T03%3A04%3A05%2B01%3A00"
        );
    }

    #[test]
    fn waiting_containers_have_no_logs_yet() {
        let pod = json!({"status": {"containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}});
        let e = check_status(&pod, "a", "p", false).expect_err("waiting");
        assert_eq!(
            e.message,
            "container \"a\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        assert!(check_status(&pod, "a", "p", true).is_err());
    }
}
