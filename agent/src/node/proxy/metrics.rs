//! The proxy's Prometheus endpoint (`/metrics`, text format 0.0.4): new connections per service
//! port, read from the datapath's per-CPU counters, labelled with the service they belong to.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aya::maps::{Map, MapData, PerCpuArray};

use crate::ebpf::proxy::map_names;

/// What a service id stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Port name or number.
    pub port: String,
    /// TCP or UDP.
    pub protocol: String,
    /// Its main frontend, `address:port/PROTO`.
    pub frontend: String,
}

/// Labels by service id, kept current by the proxy loop.
pub type Labels = Arc<Mutex<HashMap<u16, Label>>>;

/// The datapath's per-CPU connection counters, opened from their pin once.
pub type Counters = Arc<PerCpuArray<MapData, u64>>;

/// Opens the pinned counters of `pin_dir` (the agent has loaded the datapath by then).
pub fn open_counters(pin_dir: &Path) -> Option<Counters> {
    let map = MapData::from_pin(pin_dir.join(map_names::METRICS)).ok()?;
    PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(map))
        .ok()
        .map(Arc::new)
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, counters: Option<Counters>, labels: Labels) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let counters = counters.clone();
            let labels = Arc::clone(&labels);
            async move {
                let body = render(counters.as_deref(), &labels);
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub fn render(counters: Option<&PerCpuArray<MapData, u64>>, labels: &Labels) -> String {
    let mut rows: Vec<(u16, Label)> = labels
        .lock()
        .map(|l| l.iter().map(|(k, v)| (*k, v.clone())).collect())
        .unwrap_or_default();
    rows.sort_by(|a, b| a.1.frontend.cmp(&b.1.frontend).then(a.0.cmp(&b.0)));
    let mut out = String::new();
    out.push_str(
        "# HELP windlass_proxy_service_connections_total New connections (and first datagrams) \
         load-balanced to a service port.\n# TYPE windlass_proxy_service_connections_total counter\n",
    );
    for (id, l) in &rows {
        let n: u64 = counters
            .and_then(|c| c.get(&u32::from(*id), 0).ok())
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "windlass_proxy_service_connections_total{{namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\",frontend=\"{}\"}} {n}",
            escape(&l.namespace),
            escape(&l.service),
            escape(&l.port),
            escape(&l.protocol),
            escape(&l.frontend),
        );
    }
    let _ = writeln!(
        out,
        "# HELP windlass_proxy_service_ports Service ports programmed in the datapath.\n# TYPE windlass_proxy_service_ports gauge\nwindlass_proxy_service_ports {}",
        rows.len()
    );
    out
}
