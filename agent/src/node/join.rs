//! Joining a cluster with `windlass agent --server URL --token T`, the way k3s agents do: the
//! token (`K10<CA hash>::<secret>`, from the server's `<data-dir>/node-token`) pins the cluster
//! CA, which the agent downloads from `/cacerts` and checks before trusting it; the join step
//! then trades the secret for the node's own `system:node:<name>` kubeconfig, kept in the data
//! dir and reused on restart.

use std::path::{Path, PathBuf};

use crate::control_plane::apiserver::pki;

/// The node's kubeconfig in the agent's data dir.
pub const NODE_KUBECONFIG: &str = "node.kubeconfig";

/// Errors joining.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token pins no CA.
    #[error(
        "the join token pins no CA: use the K10…::… token from the server's <data-dir>/node-token"
    )]
    UnpinnedToken,
    /// The server URL is not a URL.
    #[error("invalid server URL {0:?}")]
    Url(String),
    /// A request failed.
    #[error("failed to {action} from {server}")]
    Request {
        /// What was being done.
        action: &'static str,
        /// The server.
        server: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The CA served does not match the token.
    #[error("the CA served by {server} does not match the join token (got sha256 {got})")]
    CaMismatch {
        /// The server.
        server: String,
        /// The hash of what it served.
        got: String,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] pki::PkiError),
}

fn client(
    server: &str,
    ca_file: Option<&Path>,
    bearer: Option<&str>,
) -> Result<kube::Client, JoinError> {
    let url: http::Uri = server
        .parse()
        .map_err(|_| JoinError::Url(server.to_string()))?;
    let mut config = kube::Config::new(url);
    match ca_file {
        Some(file) => config.root_cert_file = Some(file.to_path_buf()),
        // Only to fetch the CA, which is then checked against the token's hash.
        None => config.accept_invalid_certs = true,
    }
    if let Some(secret) = bearer {
        let value = http::HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| JoinError::Url(server.to_string()))?;
        config.headers.push((http::header::AUTHORIZATION, value));
    }
    kube::Client::try_from(config).map_err(|source| JoinError::Request {
        action: "build a client",
        server: server.to_string(),
        source,
    })
}

/// Returns the node's kubeconfig in `data_dir`, joining first when there is none yet.
pub async fn ensure_joined(
    server: &str,
    token: &str,
    node: &str,
    data_dir: &Path,
) -> Result<PathBuf, JoinError> {
    let kubeconfig = data_dir.join(NODE_KUBECONFIG);
    if kubeconfig.is_file() {
        return Ok(kubeconfig);
    }
    let server = server.trim_end_matches('/');
    let (Some(hash), secret) = pki::parse_node_token(token) else {
        return Err(JoinError::UnpinnedToken);
    };
    let request_err = |action| {
        let server = server.to_string();
        move |source| JoinError::Request {
            action,
            server,
            source,
        }
    };
    let get = http::Request::get(format!("{server}/cacerts"))
        .body(Vec::new())
        .map_err(|_| JoinError::Url(server.to_string()))?;
    let ca = client(server, None, None)?
        .request_text(get)
        .await
        .map_err(request_err("fetch the cluster CA"))?;
    let got = pki::ca_hash(&ca);
    if got != hash {
        return Err(JoinError::CaMismatch {
            server: server.to_string(),
            got,
        });
    }
    let ca_file = data_dir.join("cluster-ca.crt");
    pki::write_private(&ca_file, &ca)?;
    let post = http::Request::post(format!("{server}/windlass/v1/join"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "node": node }).to_string().into_bytes())
        .map_err(|_| JoinError::Url(server.to_string()))?;
    let issued = client(server, Some(&ca_file), Some(secret))?
        .request_text(post)
        .await
        .map_err(request_err("join"))?;
    pki::write_private(&kubeconfig, &issued)?;
    tracing::info!(node, server, "joined the cluster");
    Ok(kubeconfig)
}
