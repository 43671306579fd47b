//! `windlass server`: opens the configured store and runs the API server until a shutdown
//! signal.

use std::sync::Arc;

use super::apiserver::{self, RunningServer, ServerError, ServerOptions};
use super::store::etcd::EtcdStore;
use super::store::sqlite::SqliteStore;
use super::store::{Store, StoreError};

/// Which store backs the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded SQLite at `<data-dir>/state.db`.
    Sqlite,
    /// An etcd cluster at these endpoints.
    Etcd(Vec<String>),
}

/// Opens the store.
pub async fn open_store(
    kind: &StoreKind,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match kind {
        StoreKind::Sqlite => {
            let path = data_dir.join("state.db");
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
                .await
                .map_err(|_| StoreError::Closed)??;
            Arc::new(store)
        }
        StoreKind::Etcd(endpoints) => Arc::new(EtcdStore::connect(endpoints).await?),
    })
}

/// Opens `store` (in `options.data_dir` for SQLite) and runs the server until `shutdown`
/// resolves.
pub async fn run(
    store: StoreKind,
    options: ServerOptions,
    on_ready: impl FnOnce(&RunningServer),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ServerError::Listen {
        addr: options.listen,
        source,
    })?;
    let store = open_store(&store, &options.data_dir).await?;
    apiserver::run(options, store, on_ready, shutdown).await
}
