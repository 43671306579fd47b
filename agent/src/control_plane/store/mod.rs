//! The `Store` trait: a revisioned key-value store with compare-and-swap writes and watch, as
//! etcd offers it. One global revision orders every write; `metadata.resourceVersion` is that
//! revision as a string. Two implementations pass one test suite: [`sqlite`] (embedded, the
//! default) and [`etcd`] (keys under `/registry/...`).

pub mod etcd;
pub mod sqlite;

use futures::stream::BoxStream;

/// A store revision: increases by one with every write, never reused.
pub type Revision = i64;

/// A key with its current value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The stored bytes (JSON objects, for the API server).
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created (`prev` is `None`) or updated.
    Put {
        /// The new value.
        kv: KeyValue,
        /// The value before, for an update (may be `None` after compaction).
        prev: Option<KeyValue>,
    },
    /// The key was deleted at `revision`; `prev` is its last value.
    Delete {
        /// The last value before deletion.
        prev: KeyValue,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The last value of the key.
    pub prev: KeyValue,
    /// The revision of the deletion.
    pub revision: Revision,
}

/// How to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// List the state as of this revision (a consistent snapshot across pages); now if `None`.
    pub revision: Option<Revision>,
    /// Start after this key (for continuing a paged list).
    pub start_after: Option<String>,
    /// Return at most this many items.
    pub limit: Option<usize>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Live keys under the prefix, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list reflects.
    pub revision: Revision,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// A stream of changes, in revision order.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// Update or delete of a key that does not exist.
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key changed since `expected`.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's current revision.
        actual: Revision,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} has been compacted (compacted through {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction revision.
        compacted: Revision,
    },
    /// The revision asked for is in the future.
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// The SQLite backend failed.
    #[error("sqlite store failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The etcd backend failed.
    #[error("etcd store failed")]
    Etcd(#[from] etcd_client::Error),
    /// The backend failed in a way that has no richer type (a failed batch commit, say).
    #[error("store backend failed: {0}")]
    Backend(String),
    /// The store's background worker is gone (the store is shutting down).
    #[error("store is closed")]
    Closed,
}

/// A revisioned key-value store with compare-and-swap writes and watch.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Live keys under `prefix`, in key order.
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it is live.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces `key` if its `mod_revision` is still `expected`.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key`, only if its `mod_revision` is `expected` when given.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted, StoreError>;

    /// Changes under `prefix` with a revision greater than `after`, then live changes.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The revision of the latest write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forgets history at and before `revision` (superseded values and deletions).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// The first key a list of `prefix` may return: the prefix itself, or just after `start_after`
/// when continuing a paged list.
pub fn list_start(prefix: &str, start_after: Option<&str>) -> Vec<u8> {
    let start = prefix.as_bytes().to_vec();
    match start_after {
        Some(after) => {
            // The smallest key greater than `after`.
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            next.max(start)
        }
        None => start,
    }
}

/// The end of the key range that has `prefix` as prefix (etcd's `range_end`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): everything after.
    vec![0]
}
