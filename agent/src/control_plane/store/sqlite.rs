//! The embedded store: SQLite in WAL mode, laid out as an append-only log like kine's.
//!
//! Every write appends a row to `log`; its rowid (AUTOINCREMENT, never reused) is the revision.
//! A key's live value is its newest row unless that row is a deletion. Snapshot reads at a
//! revision take the newest row at or below it. One writer thread owns the write connection and
//! commits queued writes in batches (group commit), replying to each caller only after the batch
//! is durable in the WAL, so a `kill -9` loses no acknowledged write. Watchers get committed
//! events through a broadcast channel and fall back to reading the log when they lag.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, oneshot};

use super::{
    Deleted, Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
    list_start, prefix_end,
};

/// Largest number of queued writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Events buffered per watcher before it must catch up from the log.
const EVENT_BUFFER: usize = 4096;
/// Rows read per page when a watcher catches up from the log.
const HISTORY_PAGE: i64 = 1000;
/// Read connections (WAL lets them read while the writer writes).
const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    rev        INTEGER PRIMARY KEY AUTOINCREMENT,
    key        BLOB    NOT NULL,
    value      BLOB,
    create_rev INTEGER NOT NULL,
    prev_rev   INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum Outcome {
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    Deleted(Deleted),
    Compacted,
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// The SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<WriteRequest>>,
    readers: Arc<ReadPool>,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteRequest")
    }
}

#[derive(Debug)]
struct ReadPool {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl ReadPool {
    async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.connections.len();
            let connection = pool.connections[i].lock().map_err(|_| StoreError::Closed)?;
            f(&connection)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL syncs at checkpoints only: a committed transaction is in the WAL (the
    // OS page cache) before we acknowledge it, which survives a process kill; FULL would only add
    // power-loss durability at a large throughput cost.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let writer = open(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        writer.execute_batch(SCHEMA)?;
        let connections = (0..READERS)
            .map(|_| {
                let c = open(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
                c.pragma_update(None, "query_only", true)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (tx, rx) = mpsc::channel();
        let sender = events.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, rx, sender))
            .map_err(|_| StoreError::Closed)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(tx),
            readers: Arc::new(ReadPool {
                connections,
                next: AtomicUsize::new(0),
            }),
            events,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .lock()
            .map_err(|_| StoreError::Closed)?
            .send(WriteRequest { op, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer thread: takes what is queued (up to [`MAX_BATCH`]), applies it in one
/// transaction, commits, then answers each caller and publishes the events in revision order.
fn write_loop(
    mut connection: Connection,
    requests: mpsc::Receiver<WriteRequest>,
    events: broadcast::Sender<Arc<Event>>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                fail_all(batch, &e);
                continue;
            }
        };
        let results: Vec<Result<Outcome, StoreError>> =
            batch.iter().map(|r| apply(&tx, &r.op)).collect();
        if let Err(e) = tx.commit() {
            fail_all(batch, &e);
            continue;
        }
        for (request, result) in batch.into_iter().zip(results) {
            if let Ok(outcome) = &result {
                let event = match outcome {
                    Outcome::Put { kv, prev } => Some(Event::Put {
                        kv: kv.clone(),
                        prev: prev.clone(),
                    }),
                    Outcome::Deleted(d) => Some(Event::Delete {
                        prev: d.prev.clone(),
                        revision: d.revision,
                    }),
                    Outcome::Compacted => None,
                };
                if let Some(event) = event {
                    // No receivers is fine: nobody is watching.
                    let _ = events.send(Arc::new(event));
                }
            }
            let _ = request.reply.send(result);
        }
    }
}

fn fail_all(batch: Vec<WriteRequest>, error: &rusqlite::Error) {
    for request in batch {
        let _ = request.reply.send(Err(StoreError::Backend(format!(
            "transaction failed: {error}"
        ))));
    }
}

/// The newest log row of a key.
struct Row {
    rev: Revision,
    /// 0 on the row that created the key: its own revision.
    create_rev: Revision,
    deleted: bool,
    value: Option<Vec<u8>>,
}

impl Row {
    fn create_revision(&self) -> Revision {
        if self.create_rev == 0 {
            self.rev
        } else {
            self.create_rev
        }
    }
}

/// The newest row of `key`, live or a deletion.
fn newest(tx: &Connection, key: &str) -> Result<Option<Row>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 \
             ORDER BY rev DESC LIMIT 1",
            params![key.as_bytes()],
            |r| {
                Ok(Row {
                    rev: r.get(0)?,
                    create_rev: r.get(1)?,
                    deleted: r.get::<_, i64>(2)? != 0,
                    value: r.get(3)?,
                })
            },
        )
        .optional()?)
}

fn apply(tx: &Connection, op: &Op) -> Result<Outcome, StoreError> {
    match op {
        Op::Create { key, value } => {
            if newest(tx, key)?.is_some_and(|row| !row.deleted) {
                return Err(StoreError::AlreadyExists(key.clone()));
            }
            // create_rev 0 stands for "this row's own revision".
            tx.execute(
                "INSERT INTO log (key, value, create_rev, prev_rev, deleted) VALUES (?1, ?2, 0, 0, 0)",
                params![key.as_bytes(), value],
            )?;
            let rev = tx.last_insert_rowid();
            Ok(Outcome::Put {
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                },
                prev: None,
            })
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let (rev, create_rev, old) = live(tx, key, Some(*expected))?;
            tx.execute(
                "INSERT INTO log (key, value, create_rev, prev_rev, deleted) VALUES (?1, ?2, ?3, ?4, 0)",
                params![key.as_bytes(), value, create_rev, rev],
            )?;
            Ok(Outcome::Put {
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: create_rev,
                    mod_revision: tx.last_insert_rowid(),
                },
                prev: Some(KeyValue {
                    key: key.clone(),
                    value: old,
                    create_revision: create_rev,
                    mod_revision: rev,
                }),
            })
        }
        Op::Delete { key, expected } => {
            let (rev, create_rev, value) = live(tx, key, *expected)?;
            tx.execute(
                "INSERT INTO log (key, value, create_rev, prev_rev, deleted) VALUES (?1, NULL, ?2, ?3, 1)",
                params![key.as_bytes(), create_rev, rev],
            )?;
            Ok(Outcome::Deleted(Deleted {
                prev: KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: create_rev,
                    mod_revision: rev,
                },
                revision: tx.last_insert_rowid(),
            }))
        }
        Op::Compact { revision } => {
            let current = current_revision(tx)?;
            if *revision > current {
                return Err(StoreError::FutureRevision {
                    requested: *revision,
                    current,
                });
            }
            let compacted = compact_revision(tx)?;
            if *revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: *revision,
                    compacted,
                });
            }
            // Drop deletions and every row superseded at or before the revision; the newest row
            // of a live key stays, and so does anything a snapshot after the revision needs.
            tx.execute(
                "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR EXISTS \
                 (SELECT 1 FROM log n WHERE n.key = log.key AND n.rev > log.rev AND n.rev <= ?1))",
                params![revision],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('compact_rev', ?1)",
                params![revision],
            )?;
            Ok(Outcome::Compacted)
        }
    }
}

/// The live row of `key` as (rev, create_rev, value), checking `expected` when given.
fn live(
    tx: &Connection,
    key: &str,
    expected: Option<Revision>,
) -> Result<(Revision, Revision, Vec<u8>), StoreError> {
    match newest(tx, key)? {
        Some(row) if !row.deleted => {
            if let Some(expected) = expected
                && expected != row.rev
            {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    actual: row.rev,
                });
            }
            Ok((
                row.rev,
                row.create_revision(),
                row.value.unwrap_or_default(),
            ))
        }
        _ => Err(StoreError::NotFound(key.to_string())),
    }
}

fn current_revision(c: &Connection) -> Result<Revision, StoreError> {
    Ok(c.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'log'",
        [],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(0))
}

fn compact_revision(c: &Connection) -> Result<Revision, StoreError> {
    Ok(c.query_row(
        "SELECT value FROM meta WHERE name = 'compact_rev'",
        [],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(0))
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// Log rows after `after` under `[start, end)`, as events, oldest first.
fn history(
    c: &Connection,
    start: &[u8],
    end: &[u8],
    after: Revision,
) -> Result<Vec<Event>, StoreError> {
    let mut statement = c.prepare_cached(
        "SELECT l.key, l.value, l.create_rev, l.rev, l.deleted, p.value, p.create_rev, p.rev \
         FROM log l LEFT JOIN log p ON p.rev = l.prev_rev \
         WHERE l.rev > ?1 AND l.key >= ?2 AND l.key < ?3 ORDER BY l.rev LIMIT ?4",
    )?;
    let rows = statement.query_map(params![after, start, end, HISTORY_PAGE], |r| {
        let key = key_string(r.get(0)?)?;
        let rev: Revision = r.get(3)?;
        let create_rev: Revision = r.get(2)?;
        let create_rev = if create_rev == 0 { rev } else { create_rev };
        let prev = match r.get::<_, Option<Revision>>(7)? {
            Some(prev_rev) => {
                let prev_create: Revision = r.get(6)?;
                Some(KeyValue {
                    key: key.clone(),
                    value: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                    create_revision: if prev_create == 0 {
                        prev_rev
                    } else {
                        prev_create
                    },
                    mod_revision: prev_rev,
                })
            }
            None => None,
        };
        if r.get::<_, i64>(4)? != 0 {
            Ok(Event::Delete {
                prev: prev.unwrap_or(KeyValue {
                    key,
                    value: Vec::new(),
                    create_revision: create_rev,
                    mod_revision: rev,
                }),
                revision: rev,
            })
        } else {
            Ok(Event::Put {
                kv: KeyValue {
                    key,
                    value: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    create_revision: create_rev,
                    mod_revision: rev,
                },
                prev,
            })
        }
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.readers
            .with(move |c| match newest(c, &key)? {
                Some(row) if !row.deleted => Ok(Some(KeyValue {
                    create_revision: row.create_revision(),
                    mod_revision: row.rev,
                    value: row.value.unwrap_or_default(),
                    key,
                })),
                _ => Ok(None),
            })
            .await
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        let lower = list_start(prefix, options.start_after.as_deref());
        let end = prefix_end(prefix);
        let options = options.clone();
        self.readers
            .with(move |c| {
                let current = current_revision(c)?;
                let revision = options.revision.unwrap_or(current);
                if revision > current {
                    return Err(StoreError::FutureRevision {
                        requested: revision,
                        current,
                    });
                }
                let compacted = compact_revision(c)?;
                if revision < compacted {
                    return Err(StoreError::Compacted {
                        requested: revision,
                        compacted,
                    });
                }
                let limit = options.limit.map(|l| l as i64 + 1).unwrap_or(-1);
                let mut statement = c.prepare_cached(
                    "SELECT l.key, l.value, l.create_rev, l.rev FROM log l JOIN \
                     (SELECT MAX(rev) AS rev FROM log WHERE key >= ?1 AND key < ?2 AND rev <= ?3 \
                      GROUP BY key) m ON l.rev = m.rev \
                     WHERE l.deleted = 0 ORDER BY l.key LIMIT ?4",
                )?;
                let mut items = statement
                    .query_map(params![lower, end, revision, limit], |r| {
                        let rev: Revision = r.get(3)?;
                        let create_rev: Revision = r.get(2)?;
                        Ok(KeyValue {
                            key: key_string(r.get(0)?)?,
                            value: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                            create_revision: if create_rev == 0 { rev } else { create_rev },
                            mod_revision: rev,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let more = options.limit.is_some_and(|l| items.len() > l);
                if let Some(l) = options.limit {
                    items.truncate(l);
                }
                Ok(ListResult {
                    items,
                    revision,
                    more,
                })
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        match self
            .write(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            Outcome::Put { kv, .. } => Ok(kv),
            _ => Err(StoreError::Backend("unexpected write outcome".into())),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        match self
            .write(Op::Update {
                key: key.to_string(),
                value,
                expected,
            })
            .await?
        {
            Outcome::Put { kv, .. } => Ok(kv),
            _ => Err(StoreError::Backend("unexpected write outcome".into())),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted, StoreError> {
        match self
            .write(Op::Delete {
                key: key.to_string(),
                expected,
            })
            .await?
        {
            Outcome::Deleted(d) => Ok(d),
            _ => Err(StoreError::Backend("unexpected write outcome".into())),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history so nothing committed in between is missed; events
        // seen twice are dropped by revision.
        let mut live = self.events.subscribe();
        let compacted = self.readers.with(compact_revision).await?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let readers = self.readers.clone();
        let prefix = prefix.to_string();
        let (start, end) = (prefix.as_bytes().to_vec(), prefix_end(&prefix));
        Ok(Box::pin(async_stream::try_stream! {
            let mut last = after;
            loop {
                // Catch up from the log.
                loop {
                    let (s, e) = (start.clone(), end.clone());
                    let page = readers
                        .with(move |c| {
                            let compacted = compact_revision(c)?;
                            if last < compacted {
                                return Err(StoreError::Compacted { requested: last, compacted });
                            }
                            history(c, &s, &e, last)
                        })
                        .await?;
                    if page.is_empty() {
                        break;
                    }
                    for event in page {
                        last = event.revision();
                        yield event;
                    }
                }
                // Then follow live events until we fall behind.
                loop {
                    match live.recv().await {
                        Ok(event) => {
                            let revision = event.revision();
                            if revision <= last {
                                continue;
                            }
                            last = revision;
                            if event.key().starts_with(&prefix) {
                                yield (*event).clone();
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.readers.with(current_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_watcher_catches_up_from_the_log_without_gaps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("state.db")).expect("open");
        let mut stream = store.watch("/registry/", 0).await.expect("watch");
        // More writes than the broadcast buffer holds while nobody reads the stream.
        let writes = EVENT_BUFFER + 500;
        let mut last = 0;
        for i in 0..writes {
            last = store
                .create(&format!("/registry/pods/ns/p{i:05}"), vec![1])
                .await
                .expect("create")
                .mod_revision;
        }
        let mut seen = 0;
        let mut previous = 0;
        while previous < last {
            let event = stream.next().await.expect("open").expect("event");
            assert_eq!(event.revision(), previous + 1, "no gap and no repeat");
            previous = event.revision();
            seen += 1;
        }
        assert_eq!(seen, writes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_keeps_data_and_revisions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        let written = {
            let store = SqliteStore::open(&path).expect("open");
            store
                .create("/registry/a", b"x".to_vec())
                .await
                .expect("create");
            store.delete("/registry/a", None).await.expect("delete");
            store
                .create("/registry/b", b"y".to_vec())
                .await
                .expect("create")
        };
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.get("/registry/b").await.expect("get"),
            Some(written.clone())
        );
        assert_eq!(store.get("/registry/a").await.expect("get"), None);
        let next = store.create("/registry/c", vec![]).await.expect("create");
        assert_eq!(
            next.mod_revision,
            written.mod_revision + 1,
            "revisions continue"
        );
    }
}
