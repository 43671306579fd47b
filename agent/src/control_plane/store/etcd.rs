//! The etcd store, for clusters of several servers: keys under `/registry/...` as
//! kube-apiserver lays them out, compare-and-swap through transactions on `mod_revision`, watch
//! through etcd's own watch with `prev_kv`.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;

use super::{
    Deleted, Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
    list_start, prefix_end,
};

/// A store backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| StoreError::Backend(format!("non-UTF-8 key in etcd: {e}")))?
            .to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without header".into()))
}

/// Maps etcd's compaction and future-revision errors onto the store's own.
fn map_range_error(error: etcd_client::Error, requested: Option<Revision>) -> StoreError {
    let message = error.to_string();
    match requested {
        Some(requested) if message.contains("required revision has been compacted") => {
            StoreError::Compacted {
                requested,
                compacted: 0,
            }
        }
        Some(requested) if message.contains("future revision") => StoreError::FutureRevision {
            requested,
            current: 0,
        },
        _ => StoreError::Etcd(error),
    }
}

/// Largest etcd response accepted: a list of every pod in a big cluster is far over gRPC's
/// 4 MiB default (kube-apiserver allows up to 2 GiB too).
const MAX_RESPONSE: usize = i32::MAX as usize;

impl EtcdStore {
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE)
    }

    /// Connects to the given endpoints (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(EtcdStore { client })
    }

    /// The live value of `key` with the revision of the read.
    async fn current(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.kv().get(key, None).await?;
        response.kvs().first().map(convert).transpose()
    }

    /// Explains a failed compare on `key`: gone, or changed since `expected`.
    async fn why_failed(&self, key: &str, expected: Revision) -> StoreError {
        match self.current(key).await {
            Ok(Some(kv)) => StoreError::Conflict {
                key: key.to_string(),
                expected,
                actual: kv.mod_revision,
            },
            Ok(None) => StoreError::NotFound(key.to_string()),
            Err(e) => e,
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.current(key).await
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        let start = list_start(prefix, options.start_after.as_deref());
        let mut get = GetOptions::new().with_range(prefix_end(prefix));
        if let Some(revision) = options.revision {
            get = get.with_revision(revision);
        }
        if let Some(limit) = options.limit {
            get = get.with_limit(limit as i64);
        }
        let response = self
            .kv()
            .get(start, Some(get))
            .await
            .map_err(|e| map_range_error(e, options.revision))?;
        let items = response
            .kvs()
            .iter()
            .map(convert)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListResult {
            items,
            revision: options
                .revision
                .map(Ok)
                .unwrap_or_else(|| header_revision(response.header()))?,
            more: response.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let response = self.kv().txn(txn).await?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::get(key, None), TxnOp::put(key, value.clone(), None)]);
        let response = self.kv().txn(txn).await?;
        if !response.succeeded() {
            return Err(self.why_failed(key, expected).await);
        }
        let revision = header_revision(response.header())?;
        let create_revision = response
            .op_responses()
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(revision);
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted, StoreError> {
        let compare = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::delete(
            key,
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )]);
        let response = self.kv().txn(txn).await?;
        if !response.succeeded() {
            return Err(match expected {
                Some(rev) => self.why_failed(key, rev).await,
                None => StoreError::NotFound(key.to_string()),
            });
        }
        let revision = header_revision(response.header())?;
        let prev = response
            .op_responses()
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert),
                _ => None,
            })
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        Ok(Deleted { prev, revision })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after + 1)
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE)
            .watch(prefix, Some(options))
            .await?;
        let events = stream.flat_map(move |response| {
            let batch: Vec<Result<Event, StoreError>> = match response {
                Err(e) => vec![Err(StoreError::Etcd(e))],
                Ok(r) if r.compact_revision() > 0 => vec![Err(StoreError::Compacted {
                    requested: after,
                    compacted: r.compact_revision(),
                })],
                Ok(r) if r.canceled() => vec![Err(StoreError::Backend(format!(
                    "etcd cancelled the watch: {}",
                    r.cancel_reason()
                )))],
                Ok(r) => r
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        let prev = e.prev_kv().map(convert).transpose();
                        Some(match (e.event_type(), prev) {
                            (_, Err(err)) => Err(err),
                            (EventType::Put, Ok(prev)) => {
                                convert(kv).map(|kv| Event::Put { kv, prev })
                            }
                            (EventType::Delete, Ok(prev)) => {
                                let revision = kv.mod_revision();
                                match prev {
                                    Some(prev) => Ok(Event::Delete { prev, revision }),
                                    None => convert(kv).map(|mut prev| {
                                        prev.mod_revision = revision;
                                        Event::Delete { prev, revision }
                                    }),
                                }
                            }
                        })
                    })
                    .collect(),
            };
            futures::stream::iter(batch)
        });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .kv()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await?;
        header_revision(response.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.kv()
            .compact(revision, None)
            .await
            .map_err(|e| map_range_error(e, Some(revision)))?;
        Ok(())
    }
}
