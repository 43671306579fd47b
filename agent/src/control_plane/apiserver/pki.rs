//! The server's credentials in its data dir: a cluster CA, a serving certificate signed by it,
//! the admin bearer token, the node-join token, and `admin.kubeconfig`. Made on first start,
//! reused on every later one; the serving certificate is re-issued from the same CA only when
//! the names it must cover change.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside `<data-dir>/pki/` and the data dir.
const CA_CERT: &str = "pki/ca.crt";
const CA_KEY: &str = "pki/ca.key";
const SERVING_CERT: &str = "pki/apiserver.crt";
const SERVING_KEY: &str = "pki/apiserver.key";
const SERVING_SANS: &str = "pki/apiserver.sans";
const KUBELET_CLIENT_CERT: &str = "pki/apiserver-kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "pki/apiserver-kubelet-client.key";
const ADMIN_TOKEN: &str = "pki/admin.token";
const NODE_JOIN_TOKEN: &str = "pki/node-join.token";
/// The admin kubeconfig, relative to the data dir.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

/// Errors while making or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("failed to {action}")]
    Certificate {
        /// What was being done.
        action: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

fn cert(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { action, source }
}

/// Everything the API server needs to serve and authenticate.
#[derive(Clone)]
pub struct Credentials {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The serving certificate chain (PEM).
    pub cert_pem: String,
    /// The serving key (PEM).
    pub key_pem: String,
    /// The admin's bearer token.
    pub admin_token: String,
    /// The token nodes present to join and get their own credentials.
    pub node_join_token: String,
    /// The client certificate (PEM) the server presents to kubelets (`apiserver-kubelet-client`,
    /// as kube-apiserver's `--kubelet-client-certificate`).
    pub kubelet_client_cert_pem: String,
    /// Its key (PEM).
    pub kubelet_client_key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys or tokens.
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

/// Writes `contents` to `path` readable by root only, atomically (temp file + rename).
/// Writes `contents` to `path` with mode 0600, durably (synced, then renamed into place).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// A random 32-byte token, hex-encoded.
pub fn random_token() -> Result<String, PkiError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read", Path::new("/dev/urandom")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "windlass-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The names the serving certificate covers: the listen address (or every address of this
/// host when it listens on all of them), the advertised address, 127.0.0.1, localhost, the host
/// name, the `kubernetes` Service's ClusterIP and the in-cluster names, as kube-apiserver's.
pub fn serving_names(listen: SocketAddr, advertise: IpAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
        KUBERNETES_SERVICE_IP.to_string(),
        advertise.to_string(),
    ];
    if let Ok(host) = hostname::get() {
        names.push(host.to_string_lossy().to_string());
    }
    if listen.ip().is_unspecified() {
        names.extend(
            super::bootstrap::host_addresses()
                .into_iter()
                .map(|ip| ip.to_string()),
        );
    } else {
        names.push(listen.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// The `kubernetes` Service's ClusterIP (the first address of the default service range).
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

fn serving_params(names: &[String]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "windlass-apiserver");
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into().unwrap_or_else(|_| {
                "invalid.windlass.local"
                    .to_string()
                    .try_into()
                    .expect("valid DNS name")
            })),
        })
        .collect();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// kubeadm's `apiserver-kubelet-client`: a client certificate in `system:masters`.
fn kubelet_client_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Loads the credentials from `data_dir`, making whatever is missing. The serving certificate is
/// re-issued when `listen` needs a name it does not cover.
pub fn ensure(
    data_dir: &Path,
    listen: SocketAddr,
    advertise: IpAddr,
) -> Result<Credentials, PkiError> {
    let pki = data_dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(io("create", &pki))?;
    std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod", &pki))?;

    let (ca_pem, ca_key_pem) = match (
        read(&data_dir.join(CA_CERT))?,
        read(&data_dir.join(CA_KEY))?,
    ) {
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            let key = KeyPair::generate().map_err(cert("generate the CA key"))?;
            let ca = ca_params()
                .self_signed(&key)
                .map_err(cert("self-sign the CA"))?;
            let (cert_pem, key_pem) = (ca.pem(), key.serialize_pem());
            write_private(&data_dir.join(CA_KEY), &key_pem)?;
            write_private(&data_dir.join(CA_CERT), &cert_pem)?;
            (cert_pem, key_pem)
        }
    };

    let names = serving_names(listen, advertise);
    let wanted = names.join("\n");
    let existing = (
        read(&data_dir.join(SERVING_CERT))?,
        read(&data_dir.join(SERVING_KEY))?,
        read(&data_dir.join(SERVING_SANS))?,
    );
    let (cert_pem, key_pem) = match existing {
        (Some(c), Some(k), Some(sans)) if sans == wanted => (c, k),
        _ => {
            let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert("load the CA key"))?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
                .map_err(cert("load the CA certificate"))?;
            let key = KeyPair::generate().map_err(cert("generate the serving key"))?;
            let serving = serving_params(&names)
                .signed_by(&key, &issuer)
                .map_err(cert("sign the serving certificate"))?;
            let (cert_pem, key_pem) = (serving.pem(), key.serialize_pem());
            write_private(&data_dir.join(SERVING_KEY), &key_pem)?;
            write_private(&data_dir.join(SERVING_CERT), &cert_pem)?;
            write_private(&data_dir.join(SERVING_SANS), &wanted)?;
            (cert_pem, key_pem)
        }
    };

    let (kubelet_client_cert_pem, kubelet_client_key_pem) = match (
        read(&data_dir.join(KUBELET_CLIENT_CERT))?,
        read(&data_dir.join(KUBELET_CLIENT_KEY))?,
    ) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert("load the CA key"))?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
                .map_err(cert("load the CA certificate"))?;
            let key = KeyPair::generate().map_err(cert("generate the kubelet client key"))?;
            let client = kubelet_client_params()
                .signed_by(&key, &issuer)
                .map_err(cert("sign the kubelet client certificate"))?;
            let (cert_pem, key_pem) = (client.pem(), key.serialize_pem());
            write_private(&data_dir.join(KUBELET_CLIENT_KEY), &key_pem)?;
            write_private(&data_dir.join(KUBELET_CLIENT_CERT), &cert_pem)?;
            (cert_pem, key_pem)
        }
    };

    let token = |name: &str| -> Result<String, PkiError> {
        let path = data_dir.join(name);
        match read(&path)? {
            Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => {
                let t = random_token()?;
                write_private(&path, &t)?;
                Ok(t)
            }
        }
    };
    Ok(Credentials {
        ca_pem,
        cert_pem,
        key_pem,
        admin_token: token(ADMIN_TOKEN)?,
        node_join_token: token(NODE_JOIN_TOKEN)?,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
    })
}

/// The URL clients use: the listen address, or 127.0.0.1 when it listens on all addresses.
pub fn client_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{}", listen.port()),
        IpAddr::V6(v6) => format!("https://[{v6}]:{}", listen.port()),
    }
}

/// A kubeconfig (JSON, which every YAML reader accepts) for `user` with a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "windlass",
            "cluster": {
                "server": server,
                "certificate-authority-data": ca_b64,
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": "windlass",
            "context": { "cluster": "windlass", "user": user, "namespace": "default" },
        }],
        "current-context": "windlass",
        "preferences": {},
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// Where the full node join token is written in the data dir (k3s: `server/node-token`).
pub const NODE_TOKEN: &str = "node-token";

/// The join token a node is given: `K10<sha256 of the CA PEM, hex>::<secret>`, k3s's format, so a
/// joining node can check the CA it downloads from `/cacerts` before trusting it.
pub fn node_token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::{secret}", ca_hash(ca_pem))
}

/// The hex SHA-256 of a CA bundle, as it appears in a join token.
pub fn ca_hash(ca_pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits a join token into the CA hash it pins (if any) and the secret the join step checks.
/// A bare secret (no `K10...::`) pins nothing.
pub fn parse_node_token(token: &str) -> (Option<&str>, &str) {
    match token
        .trim()
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
    {
        Some((hash, secret)) if hash.len() == 64 => (Some(hash), secret),
        _ => (None, token.trim()),
    }
}

/// Writes `<data-dir>/node-token` (mode 0600) and returns its path.
pub fn write_node_token(data_dir: &Path, ca_pem: &str, secret: &str) -> Result<PathBuf, PkiError> {
    let path = data_dir.join(NODE_TOKEN);
    write_private(&path, &format!("{}\n", node_token(ca_pem, secret)))?;
    Ok(path)
}

/// Writes `<data-dir>/admin.kubeconfig` and returns its path.
pub fn write_admin_kubeconfig(
    data_dir: &Path,
    listen: SocketAddr,
    credentials: &Credentials,
) -> Result<PathBuf, PkiError> {
    let path = data_dir.join(ADMIN_KUBECONFIG);
    let contents = kubeconfig(
        &client_url(listen),
        &credentials.ca_pem,
        "admin",
        &credentials.admin_token,
    );
    write_private(&path, &contents)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_pin_the_ca() {
        let token = node_token("CA PEM", "secret");
        let (hash, secret) = parse_node_token(&token);
        assert_eq!(hash, Some(ca_hash("CA PEM").as_str()));
        assert_eq!(secret, "secret");
        assert_eq!(parse_node_token(" bare \n"), (None, "bare"));
    }

    #[test]
    fn a_server_on_every_address_is_named_by_each_of_them() {
        let any: SocketAddr = "0.0.0.0:6443".parse().expect("addr");
        let advertise: IpAddr = "192.0.2.9".parse().expect("ip");
        let names = serving_names(any, advertise);
        for ip in super::super::bootstrap::host_addresses() {
            assert!(names.contains(&ip.to_string()), "{ip} in {names:?}");
        }
        for name in [
            "192.0.2.9",
            "10.96.0.1",
            "127.0.0.1",
            "kubernetes.default.svc",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "0.0.0.0"));
    }

    #[test]
    fn credentials_are_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = "127.0.0.1:6443".parse().expect("addr");
        let advertise = listen.ip();
        let first = ensure(dir.path(), listen, advertise).expect("first start");
        let second = ensure(dir.path(), listen, advertise).expect("restart");
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.cert_pem, second.cert_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.node_join_token, second.node_join_token);
        assert_ne!(first.admin_token, first.node_join_token);
        assert_eq!(
            first.kubelet_client_cert_pem,
            second.kubelet_client_cert_pem
        );
        assert!(first.kubelet_client_key_pem.contains("PRIVATE KEY"));

        // A new listen address needs a new serving certificate from the same CA.
        let moved_to: SocketAddr = "192.0.2.7:6443".parse().expect("addr");
        let moved = ensure(dir.path(), moved_to, moved_to.ip()).expect("moved");
        assert_eq!(moved.ca_pem, first.ca_pem);
        assert_ne!(moved.cert_pem, first.cert_pem);
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .expect("ca key")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600, "keys are private");
    }
}
