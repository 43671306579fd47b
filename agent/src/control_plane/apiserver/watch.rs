//! Watch: a stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}` lines.
//! Without a resourceVersion (or with "0") it starts with the current objects as ADDED; with one
//! it replays what changed after it, and a revision the store has compacted ends in an ERROR
//! event carrying a 410 Expired status, as kube-apiserver does. Selectors turn an object that
//! leaves the selection into DELETED and one that enters it into ADDED.

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::{Value, json};

use super::handlers::{Api, ListRequest, Query, Target, decode};
use super::status::ApiError;
use super::table;
use crate::control_plane::store::{Event, KeyValue, ListOptions, StoreError};

/// Longest a watch stays open when the client sets no `timeoutSeconds` (kube-apiserver picks
/// between 30 and 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a bookmark is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

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
    let (initial, from): (Vec<KeyValue>, i64) = if rv.is_empty() || rv == "0" {
        let list = api
            .store
            .list(&prefix, &ListOptions::default())
            .await
            .map_err(|e| ApiError::from_store(e, r.group, r.plural, ""))?;
        (list.items, list.revision)
    } else {
        (
            Vec::new(),
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        )
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let store_events = api.store.watch(&prefix, from).await;
    let kind = r.kind;
    let api_version = r.api_version();
    let matches_name = move |object: &Value| {
        single
            .as_deref()
            .is_none_or(|n| object.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
    };

    let stream = async_stream::stream! {
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
        let mut events = match store_events {
            Ok(events) => events,
            Err(StoreError::Compacted { requested, compacted }) => {
                let status = ApiError::expired(format!("too old resource version: {requested} ({compacted})")).to_status();
                yield Ok(render("ERROR", &status));
                return;
            }
            Err(e) => {
                yield Ok(render("ERROR", &ApiError::internal(e.to_string()).to_status()));
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut last = from;
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
