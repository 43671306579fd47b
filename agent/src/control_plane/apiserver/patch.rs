//! The three patch types clients send: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)
//! through the `json-patch` crate, and Kubernetes' strategic merge patch (what `kubectl apply`,
//! `edit` and `label` send), where lists of objects merge by a key such as a container's name.

use serde_json::{Map, Value};

use super::status::ApiError;

/// Which patch a request carries, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchKind {
    /// The kind for a Content-Type header.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies `patch` (raw JSON) to `target`.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge => {
            let patch: Value = parse(patch)?;
            json_patch::merge(target, &patch);
            Ok(())
        }
        PatchKind::Json => {
            let operations: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &operations).map_err(|e| {
                ApiError::internal(format!("the JSON patch could not be applied: {e}"))
                    .with_code(422, "Invalid")
            })
        }
        PatchKind::Strategic => {
            let patch: Value = parse(patch)?;
            strategic_merge(target, &patch)
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))
}

/// Keys that identify the elements of well-known lists of objects (`patchMergeKey`), tried in
/// order against the elements of the patch.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    let candidates: &[&'static str] = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases"
        | "secrets" => &["name", "ip"],
        "ports" => &["containerPort", "port"],
        "volumeMounts" | "volumeDevices" => &["mountPath", "devicePath"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "addresses" => &["type", "ip"],
        "taints" => &["key"],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|k| sample.get(*k).is_some())
}

/// Lists of scalars merged as sets (`patchStrategy: merge`).
fn merges_as_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Strategic merge of `patch` into `target` (maps merge recursively; `null` deletes; lists of
/// objects with a merge key merge by that key; other lists are replaced).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return Ok(());
    };
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) =
                (target_map.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value)?;
            }
            Value::Array(items) => merge_list(target_map, key, items)?,
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    target: &mut Map<String, Value>,
    field: &str,
    items: &[Value],
) -> Result<(), ApiError> {
    if merges_as_set(field) {
        let list = target
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(existing) = list {
            for item in items {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
        }
        return Ok(());
    }
    let key = items.first().and_then(|first| merge_key(field, first));
    let (Some(key), Some(Value::Array(existing))) = (key, target.get_mut(field)) else {
        // No merge key (or nothing to merge into): the patch's list replaces the old one, minus
        // any directives.
        let cleaned: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        target.insert(field.to_string(), Value::Array(cleaned));
        return Ok(());
    };
    for item in items {
        let id = item.get(key);
        let position = existing.iter().position(|e| e.get(key) == id);
        let directive = item.get("$patch").and_then(Value::as_str);
        match (directive, position) {
            (Some("delete"), Some(i)) => {
                existing.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge(&mut existing[i], item)?,
            (_, None) => {
                let mut added = Value::Null;
                strategic_merge(&mut added, item)?;
                existing.push(added);
            }
        }
    }
    Ok(())
}

impl ApiError {
    /// The same error with another code and reason.
    pub fn with_code(mut self, code: u16, reason: &'static str) -> Self {
        self.code = code;
        self.reason = reason;
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({ "metadata": { "name": "d", "labels": { "app": "web", "old": "x" }, "finalizers": ["a"] },
                "spec": { "replicas": 1, "template": { "spec": { "containers": [
                    { "name": "web", "image": "nginx:1", "env": [{ "name": "A", "value": "1" }] },
                    { "name": "side", "image": "busybox" } ] } } } })
    }

    #[test]
    fn containers_merge_by_name() {
        let mut d = deployment();
        let patch = json!({ "metadata": { "labels": { "old": null, "new": "y" } },
            "spec": { "template": { "spec": {
                "$setElementOrder/containers": [{ "name": "web" }, { "name": "side" }],
                "containers": [{ "name": "web", "image": "nginx:2",
                                 "env": [{ "name": "B", "value": "2" }] }] } } } });
        strategic_merge(&mut d, &patch).expect("patch");
        assert_eq!(
            d.pointer("/metadata/labels"),
            Some(&json!({ "app": "web", "new": "y" }))
        );
        let containers = d
            .pointer("/spec/template/spec/containers")
            .expect("containers");
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(
            containers[0]["env"],
            json!([{ "name": "A", "value": "1" }, { "name": "B", "value": "2" }])
        );
        assert_eq!(containers[1]["name"], "side", "the other container is kept");
    }

    #[test]
    fn delete_directive_and_set_lists() {
        let mut d = deployment();
        let patch = json!({ "metadata": { "finalizers": ["b", "a"] },
            "spec": { "template": { "spec": { "containers": [{ "name": "side", "$patch": "delete" }] } } } });
        strategic_merge(&mut d, &patch).expect("patch");
        assert_eq!(d.pointer("/metadata/finalizers"), Some(&json!(["a", "b"])));
        let containers = d
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .expect("list");
        assert_eq!(containers.len(), 1);
        let patch = json!({ "$deleteFromPrimitiveList/finalizers": ["a"] });
        let mut meta = d["metadata"].clone();
        strategic_merge(&mut meta, &patch).expect("patch");
        assert_eq!(meta["finalizers"], json!(["b"]));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut d = deployment();
        apply(PatchKind::Merge, &mut d, br#"{"spec":{"replicas":3}}"#).expect("merge");
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(3)));
        apply(
            PatchKind::Json,
            &mut d,
            br#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        )
        .expect("json");
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(5)));
        let bad = apply(
            PatchKind::Json,
            &mut d,
            br#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        );
        assert_eq!(bad.expect_err("failed test op").code, 422);
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml")
                .expect_err("ssa")
                .code,
            415
        );
    }
}
