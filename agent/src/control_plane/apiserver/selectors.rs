//! Label selectors (equality- and set-based, as `kubectl -l` sends them) and field selectors
//! (`metadata.name`, `metadata.namespace`, and the per-kind fields kube-apiserver supports).

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(key: &str, rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values for {key}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (a,b),!legacy,release`.
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(valid_key(key.trim())?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(valid_key(key.trim())?, value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(valid_key(key.trim())?, value.trim().to_string())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(valid_key(key.trim())?, value.trim().to_string())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(valid_key(key.trim())?, parse_set(key, rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(valid_key(key.trim())?, parse_set(key, rest)?)
            } else {
                Requirement::Exists(valid_key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// A `matchLabels`-style map as selector text (`a=1,b=2`, keys sorted), as kubectl prints it and
/// as the Scale subresource reports it; empty for a missing map.
pub fn match_labels_string(labels: Option<&Value>) -> String {
    labels
        .and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            parts.sort();
            parts.join(",")
        })
        .unwrap_or_default()
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,status.phase!=Running`, accepting only `supported` fields (and
    /// `metadata.name` / `metadata.namespace`, which every kind supports).
    pub fn parse(selector: &str, supported: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in selector.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {part:?}"));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !supported.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether `object` satisfies every term; a missing field reads as the empty string.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }

    /// The value a term pins `metadata.namespace` to, if any (to narrow a list).
    pub fn namespace(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.namespace" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({ "metadata": { "name": "p", "namespace": "ns", "labels": labels },
                "spec": { "nodeName": "n1" }, "status": { "phase": "Running" } })
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let web = pod(json!({ "app": "web", "tier": "front", "env": "prod" }));
        let db = pod(json!({ "app": "db", "env": "dev" }));
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("env in (prod, staging)", true, false),
            ("env notin (prod)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,env=prod", true, false),
            ("app=web,env=dev", false, false),
            ("missing notin (x)", true, true),
        ];
        for (selector, on_web, on_db) in cases {
            let parsed = LabelSelector::parse(selector).expect(selector);
            assert_eq!(parsed.matches(&web), on_web, "{selector} on web");
            assert_eq!(parsed.matches(&db), on_db, "{selector} on db");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let p = pod(json!({}));
        let supported = ["spec.nodeName", "status.phase"];
        for (selector, expected) in [
            ("metadata.name=p", true),
            ("metadata.namespace=other", false),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("status.phase!=Running", false),
            ("spec.nodeName=", false),
        ] {
            let parsed = FieldSelector::parse(selector, &supported).expect(selector);
            assert_eq!(parsed.matches(&p), expected, "{selector}");
        }
        assert!(
            FieldSelector::parse("spec.restartPolicy=Always", &supported)
                .expect_err("unsupported")
                .contains("field label not supported")
        );
        let unscheduled = FieldSelector::parse("spec.nodeName=", &supported).expect("parse");
        assert!(unscheduled.matches(&json!({ "metadata": {}, "spec": {} })));
    }
}
