//! One test suite for every `Store`: the embedded SQLite store and etcd (a real etcd-server
//! started per test on loopback). Each check runs once per backend.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use windlass::control_plane::store::etcd::EtcdStore;
use windlass::control_plane::store::sqlite::SqliteStore;
use windlass::control_plane::store::{Event, ListOptions, Store, StoreError, WatchStream};
use windlass_tests::etcd::EtcdServer;

const PATIENCE: Duration = Duration::from_secs(10);

/// A store under test and whatever keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("state.db")).expect("open sqlite store");
    Backend {
        store: Arc::new(store),
        _etcd: None,
        _dir: Some(dir),
    }
}

async fn etcd() -> Backend {
    let server = EtcdServer::start().expect("start etcd (from `cargo xtask deps`)");
    let store = EtcdStore::connect(&[server.client_url().to_string()])
        .await
        .expect("connect to etcd");
    Backend {
        store: Arc::new(store),
        _etcd: Some(server),
        _dir: None,
    }
}

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::sqlite();
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::etcd().await;
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
    };
}

suite!(
    create_get_and_revisions,
    update_is_compare_and_swap,
    delete_returns_last_value_and_allows_recreate,
    list_is_ordered_prefix_scoped_and_pages_on_a_snapshot,
    watch_replays_history_then_follows_live_changes,
    compaction_refuses_old_revisions,
    concurrent_creates_all_land_with_distinct_revisions,
);

async fn next_event(stream: &mut WatchStream) -> Event {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event within the patience window")
        .expect("stream still open")
        .expect("event, not error")
}

async fn create_get_and_revisions(store: Arc<dyn Store>) {
    let start = store.current_revision().await.expect("current revision");
    let a = store
        .create("/registry/pods/default/a", b"one".to_vec())
        .await
        .expect("create");
    assert!(a.mod_revision > start);
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(store.current_revision().await.expect("rev"), a.mod_revision);

    let got = store
        .get("/registry/pods/default/a")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got, a);
    assert_eq!(
        store
            .get("/registry/pods/default/missing")
            .await
            .expect("get"),
        None
    );

    match store
        .create("/registry/pods/default/a", b"two".to_vec())
        .await
    {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, "/registry/pods/default/a"),
        other => panic!("duplicate create must fail with AlreadyExists, got {other:?}"),
    }
    let b = store
        .create("/registry/pods/default/b", b"x".to_vec())
        .await
        .expect("create b");
    assert!(b.mod_revision > a.mod_revision, "revisions increase");
}

async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
    let key = "/registry/configmaps/ns/c";
    let v1 = store.create(key, b"v1".to_vec()).await.expect("create");
    let v2 = store
        .update(key, b"v2".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(
        v2.create_revision, v1.create_revision,
        "create revision is kept"
    );
    assert_eq!(v2.value, b"v2");

    match store.update(key, b"stale".to_vec(), v1.mod_revision).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(actual, v2.mod_revision);
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert_eq!(
        store.get(key).await.expect("get").expect("present").value,
        b"v2"
    );
    match store
        .update("/registry/configmaps/ns/none", b"x".to_vec(), 1)
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("update of a missing key must be NotFound, got {other:?}"),
    }
}

async fn delete_returns_last_value_and_allows_recreate(store: Arc<dyn Store>) {
    let key = "/registry/secrets/ns/s";
    let v1 = store.create(key, b"v1".to_vec()).await.expect("create");
    let v2 = store
        .update(key, b"v2".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    match store.delete(key, Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("delete with a stale revision must conflict, got {other:?}"),
    }
    let deleted = store
        .delete(key, Some(v2.mod_revision))
        .await
        .expect("delete");
    assert_eq!(deleted.prev.value, b"v2");
    assert_eq!(deleted.prev.mod_revision, v2.mod_revision);
    assert!(deleted.revision > v2.mod_revision);
    assert_eq!(store.get(key).await.expect("get"), None);
    match store.delete(key, None).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("second delete must be NotFound, got {other:?}"),
    }
    let again = store.create(key, b"new".to_vec()).await.expect("re-create");
    assert!(
        again.create_revision > deleted.revision,
        "a new life gets a new create revision"
    );
}

async fn list_is_ordered_prefix_scoped_and_pages_on_a_snapshot(store: Arc<dyn Store>) {
    for name in ["c", "a", "e", "b", "d"] {
        store
            .create(
                &format!("/registry/pods/ns1/{name}"),
                name.as_bytes().to_vec(),
            )
            .await
            .expect("create");
    }
    store
        .create("/registry/pods/ns2/z", b"z".to_vec())
        .await
        .expect("create");
    store
        .create("/registry/podsx/ns1/q", b"q".to_vec())
        .await
        .expect("create");

    let all = store
        .list("/registry/pods/ns1/", &ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", "c", "d", "e"].map(|n| format!("/registry/pods/ns1/{n}")),
        "key order, only this prefix"
    );
    assert!(!all.more);
    let pods = store
        .list("/registry/pods/", &ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        pods.items.len(),
        6,
        "a prefix does not match /registry/podsx/"
    );

    // Page through with limit + start_after at the first page's revision; a write in between is
    // not seen, as with a Kubernetes continue token.
    let first = store
        .list(
            "/registry/pods/ns1/",
            &ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    store
        .create("/registry/pods/ns1/bb", b"late".to_vec())
        .await
        .expect("create");
    let deleted = store
        .delete("/registry/pods/ns1/e", None)
        .await
        .expect("delete");
    let mut keys: Vec<String> = first.items.iter().map(|kv| kv.key.clone()).collect();
    let mut after = first.items.last().map(|kv| kv.key.clone());
    loop {
        let page = store
            .list(
                "/registry/pods/ns1/",
                &ListOptions {
                    revision: Some(first.revision),
                    start_after: after.clone(),
                    limit: Some(2),
                },
            )
            .await
            .expect("next page");
        assert_eq!(page.revision, first.revision);
        keys.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = page.items.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(
        keys,
        ["a", "b", "c", "d", "e"].map(|n| format!("/registry/pods/ns1/{n}")),
        "pages reflect the snapshot: no bb, still e"
    );
    let now = store
        .list("/registry/pods/ns1/", &ListOptions::default())
        .await
        .expect("list");
    assert!(now.revision >= deleted.revision);
    assert!(now.items.iter().any(|kv| kv.key.ends_with("/bb")));
    assert!(!now.items.iter().any(|kv| kv.key.ends_with("/e")));
}

async fn watch_replays_history_then_follows_live_changes(store: Arc<dyn Store>) {
    let before = store.current_revision().await.expect("rev");
    let a = store
        .create("/registry/pods/w/a", b"1".to_vec())
        .await
        .expect("create");
    store
        .create("/registry/services/w/s", b"other".to_vec())
        .await
        .expect("create");
    let mut stream = store.watch("/registry/pods/", before).await.expect("watch");

    // History: the create, and not the service.
    match next_event(&mut stream).await {
        Event::Put { kv, prev: None } => assert_eq!(kv, a),
        other => panic!("expected the create of a, got {other:?}"),
    }
    // Live: an update with its previous value, then a delete.
    let a2 = store
        .update("/registry/pods/w/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    match next_event(&mut stream).await {
        Event::Put { kv, prev } => {
            assert_eq!(kv, a2);
            assert_eq!(prev.map(|p| p.value), Some(b"1".to_vec()));
        }
        other => panic!("expected the update of a, got {other:?}"),
    }
    let deleted = store
        .delete("/registry/pods/w/a", None)
        .await
        .expect("delete");
    match next_event(&mut stream).await {
        Event::Delete { prev, revision } => {
            assert_eq!(revision, deleted.revision);
            assert_eq!(prev.value, b"2");
        }
        other => panic!("expected the delete of a, got {other:?}"),
    }
    // Watching from the middle starts after that revision.
    let mut from_middle = store
        .watch("/registry/pods/", a.mod_revision)
        .await
        .expect("watch");
    assert_eq!(
        next_event(&mut from_middle).await.revision(),
        a2.mod_revision
    );
}

async fn compaction_refuses_old_revisions(store: Arc<dyn Store>) {
    let v1 = store
        .create("/registry/leases/n/l", b"1".to_vec())
        .await
        .expect("create");
    let v2 = store
        .update("/registry/leases/n/l", b"2".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    let v3 = store
        .update("/registry/leases/n/l", b"3".to_vec(), v2.mod_revision)
        .await
        .expect("update");
    store.compact(v2.mod_revision).await.expect("compact");

    assert_eq!(
        store
            .get("/registry/leases/n/l")
            .await
            .expect("get")
            .expect("live")
            .value,
        b"3"
    );
    let old = store
        .list(
            "/registry/leases/",
            &ListOptions {
                revision: Some(v1.mod_revision),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(old, Err(StoreError::Compacted { .. })),
        "list before compaction: {old:?}"
    );
    let at = store
        .list(
            "/registry/leases/",
            &ListOptions {
                revision: Some(v2.mod_revision),
                ..Default::default()
            },
        )
        .await
        .expect("list at the compaction revision");
    assert_eq!(at.items[0].value, b"2");

    // A watch from before the compaction revision fails (the API server answers 410 Gone).
    let outcome = match store.watch("/registry/leases/", v1.mod_revision - 1).await {
        Err(e) => Err(e),
        Ok(mut stream) => match tokio::time::timeout(PATIENCE, stream.next()).await {
            Ok(Some(result)) => result,
            other => panic!("expected an error from the stream, got {other:?}"),
        },
    };
    assert!(
        matches!(outcome, Err(StoreError::Compacted { .. })),
        "watch from compacted: {outcome:?}"
    );
    // From the compaction revision on, history is intact.
    let mut stream = store
        .watch("/registry/leases/", v2.mod_revision)
        .await
        .expect("watch");
    assert_eq!(next_event(&mut stream).await.revision(), v3.mod_revision);
}

async fn concurrent_creates_all_land_with_distinct_revisions(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for client in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..25 {
                let kv = store
                    .create(
                        &format!("/registry/events/c/{client:02}-{i:02}"),
                        vec![0; 64],
                    )
                    .await
                    .expect("concurrent create");
                revisions.push(kv.mod_revision);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "every write has its own revision");
    let listed = store
        .list("/registry/events/", &ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 16 * 25);
}
