//! Watch: a stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}` lines.
//! Without a resourceVersion (or with "0") it starts with the current objects as ADDED; with one
//! it replays what changed after it, and a revision the store has compacted ends in an ERROR
//! event carrying a 410 Expired status, as kube-apiserver does. Selectors turn an object that
//! leaves the selection into DELETED and one that enters it into ADDED.

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::{Value, json};

use std::sync::Arc;

use super::handlers::{Api, ListRequest, Query, Target, decode};
use super::status::ApiError;
use super::table;
use super::watch_cache::{Gauge, Start};
use crate::control_plane::store::{Event, KeyValue, StoreError};

/// Longest a watch stays open when the client sets no `timeoutSeconds` (kube-apiserver picks
/// between 30 and 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a bookmark is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Where a client watch's events come from.
enum Source {
    /// The watch cache: a backlog, then the shared live stream.
    Cache(
        Vec<Arc<Event>>,
        tokio::sync::broadcast::Receiver<Arc<Event>>,
    ),
    /// A direct store watch (revision older than the cache's window).
    Store(Result<crate::control_plane::store::WatchStream, StoreError>),
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({ "type": kind, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Maps one store event to the watch event a client with `request`'s selectors sees.
fn translate(
    event: &Event,
    request: &ListRequest,
) -> Result<Option<(&'static str, Value)>, ApiError> {
    match event {
        Event::Put { kv, prev } => {
            let object = decode(kv)?;
            let now = request.matches(&object);
            let before = match prev {
                Some(p) => Some(request.matches(&decode(p)?)),
                None => None,
            };
            Ok(match (before, now) {
                (None, true) | (Some(false), true) => Some(("ADDED", object)),
                (Some(true), true) => Some(("MODIFIED", object)),
                (Some(true), false) => Some(("DELETED", object)),
                _ => None,
            })
        }
        Event::Delete { prev, revision } => {
            let mut object = decode(prev)?;
            if !request.matches(&object) {
                return Ok(None);
            }
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            Ok(Some(("DELETED", object)))
        }
    }
}

/// Starts a watch for `target` and returns the streaming body.
pub async fn watch(
    api: &Api,
    target: &Target,
    query: &Query,
    as_table: bool,
) -> Result<Body, ApiError> {
    let r = target.resource;
    let request = ListRequest::parse(r, query)?;
    let namespace = if r.namespaced {
        target.namespace.clone()
    } else {
        None
    };
    let prefix = r.key_prefix(namespace.as_deref());
    let single = target.name.clone();
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let from = if rv.is_empty() || rv == "0" {
        None
    } else {
        Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        )
    };
    // One store watch per resource, shared by every client (the watch cache); only a revision
    // older than its window goes to the store directly.
    let cache = api
        .caches
        .get(&r.key_prefix(None), &api.store)
        .ok_or_else(|| ApiError::internal("watch cache unavailable"))?;
    let (initial, source): (Vec<KeyValue>, Source) = match cache.start(&prefix, from).await {
        Start::Snapshot {
            objects, events, ..
        } => (objects, Source::Cache(Vec::new(), events)),
        Start::Replay { backlog, events } => (Vec::new(), Source::Cache(backlog, events)),
        Start::TooOld => {
            let from = from.unwrap_or_default();
            (
                Vec::new(),
                Source::Store(api.store.watch(&prefix, from).await),
            )
        }
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let kind = r.kind;
    let api_version = r.api_version();
    let matches_name = move |object: &Value| {
        single
            .as_deref()
            .is_none_or(|n| object.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
    };

    let caches = api.caches.clone();
    let direct = matches!(source, Source::Store(_));
    let stream = async_stream::stream! {
        let _client = Gauge::hold(&caches.client_watches);
        let _direct = direct.then(|| Gauge::hold(&caches.direct_store_watches));
        let mut first_row = true;
        let mut render = |event_type: &str, object: &Value| -> Bytes {
            if as_table && event_type != "BOOKMARK" && event_type != "ERROR" {
                let t = table::table(kind, std::slice::from_ref(object), object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or(""), None, first_row);
                first_row = false;
                line(event_type, &t)
            } else {
                line(event_type, object)
            }
        };
        for kv in &initial {
            match decode(kv) {
                Ok(object) if request.matches(&object) && matches_name(&object) => {
                    yield Ok::<Bytes, std::convert::Infallible>(render("ADDED", &object));
                }
                _ => {}
            }
        }
        let mut events: futures::stream::BoxStream<'static, Result<Arc<Event>, StoreError>> = match source {
            Source::Cache(backlog, receiver) => {
                let live = futures::stream::unfold(receiver, |mut receiver| async move {
                    match receiver.recv().await {
                        Ok(event) => Some((Ok(event), receiver)),
                        // Cut off (too slow) or the cache was rebuilt: end the stream; the client
                        // re-watches from its last resourceVersion.
                        Err(_) => None,
                    }
                });
                futures::stream::iter(backlog.into_iter().map(Ok)).chain(live).boxed()
            }
            Source::Store(Ok(stream)) => stream.map(|e| e.map(Arc::new)).boxed(),
            Source::Store(Err(StoreError::Compacted { requested, compacted })) => {
                let status = ApiError::expired(format!("too old resource version: {requested} ({compacted})")).to_status();
                yield Ok(render("ERROR", &status));
                return;
            }
            Source::Store(Err(e)) => {
                yield Ok(render("ERROR", &ApiError::internal(e.to_string()).to_status()));
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut last = from.unwrap_or_default();
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": last.to_string() } });
                    yield Ok(render("BOOKMARK", &bookmark));
                }
                next = events.next() => match next {
                    None => break,
                    Some(Ok(event)) => {
                        if !event.key().starts_with(&prefix) {
                            continue;
                        }
                        last = event.revision();
                        match translate(&event, &request) {
                            Ok(Some((event_type, object))) if matches_name(&object) => yield Ok(render(event_type, &object)),
                            Ok(_) => {}
                            Err(e) => { yield Ok(render("ERROR", &e.to_status())); break; }
                        }
                    }
                    Some(Err(StoreError::Compacted { requested, compacted })) => {
                        let status = ApiError::expired(format!("too old resource version: {requested} ({compacted})")).to_status();
                        yield Ok(render("ERROR", &status));
                        break;
                    }
                    Some(Err(e)) => {
                        yield Ok(render("ERROR", &ApiError::internal(e.to_string()).to_status()));
                        break;
                    }
                }
            }
        }
    };
    Ok(Body::from_stream(stream))
}
