//! The watch cache: one store watch per resource, fanned out to every client watch.
//!
//! Each resource's cache lists its prefix once, then follows a single store watch, keeping the
//! current objects and a window of recent events. A client watch from "now" (no
//! resourceVersion, or "0") starts from the cached objects; one from a revision inside the window
//! replays the window; an older revision falls back to a direct store watch, which the store
//! answers with history or with "compacted" (410). When the store watch fails the cache is
//! rebuilt and its subscribers' streams end, so clients re-watch, as with kube-apiserver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::broadcast;

use crate::control_plane::store::{Event, KeyValue, ListOptions, Revision, Store, StoreError};

/// Events kept for clients that watch from a recent revision.
const WINDOW: usize = 4096;
/// Events buffered per subscriber before it is cut off (and re-watches).
const SUBSCRIBER_BUFFER: usize = 8192;

#[derive(Debug)]
struct State {
    objects: BTreeMap<String, KeyValue>,
    window: VecDeque<Arc<Event>>,
    /// Every event after this revision is in `window`.
    window_start: Revision,
    /// The revision the cache reflects.
    revision: Revision,
    /// Broadcast to subscribers; replaced when the cache is rebuilt (ending old streams).
    sender: broadcast::Sender<Arc<Event>>,
    ready: bool,
}

/// The cache of one resource prefix.
#[derive(Debug)]
pub struct Cache {
    prefix: String,
    state: Mutex<State>,
    ready: tokio::sync::Notify,
}

/// Where a client watch starts.
#[derive(Debug)]
pub enum Start {
    /// The current objects (as ADDED), then live events.
    Snapshot {
        /// Objects under the requested prefix.
        objects: Vec<KeyValue>,
        /// Their revision.
        revision: Revision,
        /// Live events after it.
        events: broadcast::Receiver<Arc<Event>>,
    },
    /// Events after the requested revision from the window, then live events.
    Replay {
        /// Buffered events after the requested revision.
        backlog: Vec<Arc<Event>>,
        /// Live events after them.
        events: broadcast::Receiver<Arc<Event>>,
    },
    /// The revision is older than the window: watch the store directly.
    TooOld,
}

impl Cache {
    fn new(prefix: String) -> Arc<Self> {
        let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Arc::new(Cache {
            prefix,
            state: Mutex::new(State {
                objects: BTreeMap::new(),
                window: VecDeque::new(),
                window_start: 0,
                revision: 0,
                sender,
                ready: false,
            }),
            ready: tokio::sync::Notify::new(),
        })
    }

    /// Starts a client watch under `prefix` (which lies inside the cache's own prefix) from
    /// `from` (`None` for now).
    pub async fn start(&self, prefix: &str, from: Option<Revision>) -> Start {
        // A client that listed from the store may be a little ahead of the cache; wait for the
        // cache to catch up (kube-apiserver waits up to 3 s too) before going to the store.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            // Register interest before checking, so a signal in between is not lost.
            let notified = self.ready.notified();
            {
                let state = match self.state.lock() {
                    Ok(state) => state,
                    Err(_) => return Start::TooOld,
                };
                let ahead = from.is_some_and(|rev| rev > state.revision);
                if state.ready && !(ahead && tokio::time::Instant::now() < deadline) {
                    return match from {
                        None => Start::Snapshot {
                            objects: state
                                .objects
                                .range(prefix.to_string()..)
                                .take_while(|(k, _)| k.starts_with(prefix))
                                .map(|(_, v)| v.clone())
                                .collect(),
                            revision: state.revision,
                            events: state.sender.subscribe(),
                        },
                        Some(rev) if rev < state.window_start || rev > state.revision => {
                            Start::TooOld
                        }
                        Some(rev) => Start::Replay {
                            backlog: state
                                .window
                                .iter()
                                .filter(|e| e.revision() > rev && e.key().starts_with(prefix))
                                .cloned()
                                .collect(),
                            events: state.sender.subscribe(),
                        },
                    };
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Keeps the cache in step with the store for as long as the process runs.
    async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match self.sync(&store).await {
                Ok(()) => backoff = std::time::Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(prefix = self.prefix, error = %e, "watch cache lost its store watch; rebuilding");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Lists, then follows the store watch until it fails.
    async fn sync(&self, store: &Arc<dyn Store>) -> Result<(), StoreError> {
        let list = store.list(&self.prefix, &ListOptions::default()).await?;
        let mut events = store.watch(&self.prefix, list.revision).await?;
        {
            let mut state = self.state.lock().map_err(|_| StoreError::Closed)?;
            // A fresh sender ends the streams of the previous generation's subscribers.
            let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
            state.sender = sender;
            state.objects = list
                .items
                .into_iter()
                .map(|kv| (kv.key.clone(), kv))
                .collect();
            state.window.clear();
            state.window_start = list.revision;
            state.revision = list.revision;
            state.ready = true;
        }
        self.ready.notify_waiters();
        while let Some(event) = events.next().await {
            let event = Arc::new(event?);
            let mut state = self.state.lock().map_err(|_| StoreError::Closed)?;
            match event.as_ref() {
                Event::Put { kv, .. } => {
                    state.objects.insert(kv.key.clone(), kv.clone());
                }
                Event::Delete { prev, .. } => {
                    state.objects.remove(&prev.key);
                }
            }
            state.revision = event.revision();
            if state.window.len() == WINDOW
                && let Some(dropped) = state.window.pop_front()
            {
                state.window_start = dropped.revision();
            }
            state.window.push_back(event.clone());
            // No subscribers is fine.
            let _ = state.sender.send(event);
            drop(state);
            // Wake watches waiting for the cache to reach their revision.
            self.ready.notify_waiters();
        }
        Err(StoreError::Backend("store watch ended".into()))
    }
}

impl Cache {
    /// Forgets window events at or before `revision`, which the store has compacted away: a
    /// watch from there is answered 410, as the store would.
    fn compacted(&self, revision: Revision) {
        if let Ok(mut state) = self.state.lock() {
            while state
                .window
                .front()
                .is_some_and(|e| e.revision() <= revision)
            {
                state.window.pop_front();
            }
            state.window_start = state.window_start.max(revision.min(state.revision));
        }
    }
}

/// The caches of every resource, created on first use, and watch gauges.
#[derive(Default)]
pub struct WatchCaches {
    caches: Mutex<HashMap<String, Arc<Cache>>>,
    /// Client watch streams open now.
    pub client_watches: std::sync::atomic::AtomicI64,
    /// Store watches opened directly for clients (revisions older than a cache's window).
    pub direct_store_watches: std::sync::atomic::AtomicI64,
}

/// Counts one open watch in a gauge for as long as it lives.
#[derive(Debug)]
pub struct Gauge<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Gauge<'a> {
    /// Increments `gauge` until the returned guard is dropped.
    pub fn hold(gauge: &'a std::sync::atomic::AtomicI64) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WatchCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCaches").finish_non_exhaustive()
    }
}

impl WatchCaches {
    /// The cache for `resource_prefix` (e.g. `/registry/pods/`), started on first use.
    pub fn get(&self, resource_prefix: &str, store: &Arc<dyn Store>) -> Option<Arc<Cache>> {
        let mut caches = self.caches.lock().ok()?;
        let cache = caches
            .entry(resource_prefix.to_string())
            .or_insert_with(|| {
                let cache = Cache::new(resource_prefix.to_string());
                tokio::spawn(cache.clone().run(store.clone()));
                cache
            });
        Some(cache.clone())
    }

    /// Tells every cache the store compacted through `revision`.
    pub fn compacted(&self, revision: Revision) {
        if let Ok(caches) = self.caches.lock() {
            for cache in caches.values() {
                cache.compacted(revision);
            }
        }
    }

    /// How many store watches the caches hold (one per resource in use).
    pub fn len(&self) -> usize {
        self.caches.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no cache has been started.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gauges in Prometheus text format.
    pub fn metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "# HELP windlass_apiserver_client_watches Client watch streams open.\n\
             # TYPE windlass_apiserver_client_watches gauge\n\
             windlass_apiserver_client_watches {}\n\
             # HELP windlass_apiserver_store_watches Store watches open, by who holds them.\n\
             # TYPE windlass_apiserver_store_watches gauge\n\
             windlass_apiserver_store_watches{{holder=\"watch_cache\"}} {}\n\
             windlass_apiserver_store_watches{{holder=\"client\"}} {}\n{}",
            self.client_watches.load(Relaxed),
            self.len(),
            self.direct_store_watches.load(Relaxed),
            self.per_resource(),
        )
    }

    /// One store-watch line per cached resource.
    fn per_resource(&self) -> String {
        let mut resources: Vec<String> = self
            .caches
            .lock()
            .map(|c| {
                c.keys()
                    .map(|k| {
                        k.trim_start_matches("/registry/")
                            .trim_end_matches('/')
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        resources.sort();
        resources
            .iter()
            .map(|r| format!("windlass_apiserver_store_watches{{holder=\"watch_cache\",resource=\"{r}\"}} 1\n"))
            .collect()
    }
}
