//! The Nodes as the watch has shown them: a small reflector that folds kube-runtime watcher
//! events into [`NodeInfo`]s and says when the desired network may have changed.
//!
//! A relist (after a 410 Gone, or a reconnect) replaces the whole set at `InitDone`, so a Node
//! deleted while the watch was down disappears without a `Delete` event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;

use super::desired::NodeInfo;

/// The watched Nodes.
#[derive(Debug, Default)]
pub struct NodeCache {
    nodes: BTreeMap<String, NodeInfo>,
    listing: BTreeMap<String, NodeInfo>,
    listed: bool,
}

impl NodeCache {
    /// Folds one event in; true when the Nodes that matter changed (always after a full list).
    pub fn apply(&mut self, event: watcher::Event<Node>) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing.clear();
                false
            }
            watcher::Event::InitApply(node) => {
                let info = NodeInfo::from_node(&node);
                self.listing.insert(info.name.clone(), info);
                false
            }
            watcher::Event::InitDone => {
                self.nodes = std::mem::take(&mut self.listing);
                self.listed = true;
                true
            }
            watcher::Event::Apply(node) => {
                let info = NodeInfo::from_node(&node);
                if self.nodes.get(&info.name) == Some(&info) {
                    return false;
                }
                self.nodes.insert(info.name.clone(), info);
                self.listed
            }
            watcher::Event::Delete(node) => match node.metadata.name.as_deref() {
                Some(name) => self.nodes.remove(name).is_some() && self.listed,
                None => false,
            },
        }
    }

    /// Whether a first full list has arrived (before it, nothing is reconciled: an empty set
    /// would remove every route).
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The Nodes by name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn node(name: &str, cidr: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.9"}]}
        }))
        .expect("node")
    }

    #[tokio::test]
    async fn a_stream_of_watch_events_drives_the_cache_and_a_relist_drops_missed_deletes() {
        use watcher::Event::*;
        let events = futures::stream::iter(vec![
            Apply(node("early", "10.244.9.0/24")), // before the first list: not trusted
            Init,
            InitApply(node("a", "10.244.0.0/24")),
            InitApply(node("b", "10.244.1.0/24")),
            InitDone,
            Apply(node("a", "10.244.0.0/24")), // no change (a status update)
            Apply(node("b", "10.244.2.0/24")),
            Delete(node("b", "10.244.2.0/24")),
            Apply(node("c", "10.244.3.0/24")),
            // A relist after 410 Gone: c was deleted meanwhile.
            Init,
            InitApply(node("a", "10.244.0.0/24")),
            InitDone,
        ]);
        let mut cache = NodeCache::default();
        let changed: Vec<bool> = events.map(|e| cache.apply(e)).collect().await;
        assert_eq!(
            changed,
            [
                false, false, false, false, true, false, true, true, true, false, false, true
            ]
        );
        assert!(cache.listed());
        let names: Vec<&str> = cache.nodes().keys().map(String::as_str).collect();
        assert_eq!(names, ["a"]);
    }
}
