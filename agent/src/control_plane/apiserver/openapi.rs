//! `/openapi/v2`: the Swagger 2.0 document of the served API, as JSON or as the protobuf
//! (gnostic's `openapi.v2.Document`) that kubectl fetches before `apply`, `edit` and
//! `create -f`. The document is built once as JSON; the protobuf is a faithful conversion.

use prost::Message;
use serde_json::{Value, json};

use super::resources::RESOURCES;

/// The media type answered for the protobuf document. Clients ask for
/// `...spec.v2@v1.0+protobuf` (or this spelling), but Go's mime parser refuses an `@` in a
/// response's Content-Type, so kube-apiserver answers with `.v1.0`, as this does.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// gnostic `openapi.v2.Document` (only the fields this server fills).
#[derive(Clone, PartialEq, Message)]
pub struct Document {
    /// `swagger`: "2.0".
    #[prost(string, tag = "1")]
    pub swagger: String,
    /// `info`.
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    /// `paths`.
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    /// `definitions`.
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

/// gnostic `openapi.v2.Info`.
#[derive(Clone, PartialEq, Message)]
pub struct Info {
    /// Title.
    #[prost(string, tag = "1")]
    pub title: String,
    /// Version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// gnostic `openapi.v2.Paths` (paths carry no schema kubectl uses; kept empty).
#[derive(Clone, PartialEq, Message)]
pub struct Paths {}

/// gnostic `openapi.v2.Definitions`.
#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    /// Named schemas.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// gnostic `openapi.v2.NamedSchema`.
#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Schema.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

/// gnostic `openapi.v2.Schema` (the fields a Kubernetes schema uses).
#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    /// `$ref`.
    #[prost(string, tag = "1")]
    pub reference: String,
    /// `format`.
    #[prost(string, tag = "2")]
    pub format: String,
    /// `description`.
    #[prost(string, tag = "4")]
    pub description: String,
    /// `required`.
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    /// `additionalProperties`.
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    /// `type`.
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    /// `items`.
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    /// `properties`.
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    /// `x-...` vendor extensions.
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// gnostic `openapi.v2.AdditionalPropertiesItem`.
#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    /// Schema or boolean.
    #[prost(oneof = "AdditionalProperties", tags = "1, 2")]
    pub oneof: Option<AdditionalProperties>,
}

/// The `oneof` of [`AdditionalPropertiesItem`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AdditionalProperties {
    /// A schema for the values.
    #[prost(message, tag = "1")]
    Schema(Schema),
    /// `true` / `false`.
    #[prost(bool, tag = "2")]
    Boolean(bool),
}

/// gnostic `openapi.v2.TypeItem`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    /// Type names.
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

/// gnostic `openapi.v2.ItemsItem`.
#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    /// Item schemas.
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// gnostic `openapi.v2.Properties`.
#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    /// Named property schemas.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// gnostic `openapi.v2.NamedAny`.
#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    /// Extension name (`x-kubernetes-...`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// gnostic `openapi.v2.Any`: the value as YAML text.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// YAML (JSON is YAML).
    #[prost(string, tag = "2")]
    pub yaml: String,
}

/// The Swagger 2.0 document as JSON: info, one path per served collection, and `definitions`.
pub fn document(definitions: &Value) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES {
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            path,
            json!({ "get": { "x-kubernetes-action": "list",
                             "x-kubernetes-group-version-kind": { "group": r.group, "version": r.version, "kind": r.kind } } }),
        );
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::KUBERNETES_VERSION.0, super::discovery::KUBERNETES_VERSION.1) },
        "paths": paths,
        "definitions": definitions,
    })
}

/// Converts one JSON schema to gnostic's message.
pub fn schema_to_proto(schema: &Value) -> Schema {
    let text = |key: &str| {
        schema
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let named = |map: Option<&Value>| -> Vec<NamedSchema> {
        map.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(name, s)| NamedSchema {
                        name: name.clone(),
                        value: Some(schema_to_proto(s)),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let types = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    let additional = match schema.get("additionalProperties") {
        Some(Value::Bool(b)) => Some(Box::new(AdditionalPropertiesItem {
            oneof: Some(AdditionalProperties::Boolean(*b)),
        })),
        Some(s @ Value::Object(_)) => Some(Box::new(AdditionalPropertiesItem {
            oneof: Some(AdditionalProperties::Schema(schema_to_proto(s))),
        })),
        _ => None,
    };
    let items = match schema.get("items") {
        Some(Value::Array(list)) => Some(ItemsItem {
            schema: list.iter().map(schema_to_proto).collect(),
        }),
        Some(item @ Value::Object(_)) => Some(ItemsItem {
            schema: vec![schema_to_proto(item)],
        }),
        _ => None,
    };
    let properties = schema.get("properties").map(|p| Properties {
        additional_properties: named(Some(p)),
    });
    let vendor_extension = schema
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("x-"))
                .map(|(k, v)| NamedAny {
                    name: k.clone(),
                    value: Some(AnyValue {
                        yaml: v.to_string(),
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    Schema {
        reference: text("$ref"),
        format: text("format"),
        description: text("description"),
        required: schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        additional_properties: additional,
        r#type: (!types.is_empty()).then_some(TypeItem { value: types }),
        items,
        properties,
        vendor_extension,
    }
}

/// The protobuf encoding of a JSON Swagger document.
pub fn to_protobuf(document: &Value) -> Vec<u8> {
    let definitions = document
        .get("definitions")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, s)| NamedSchema {
                    name: name.clone(),
                    value: Some(schema_to_proto(s)),
                })
                .collect()
        })
        .unwrap_or_default();
    Document {
        swagger: "2.0".into(),
        info: Some(Info {
            title: document
                .pointer("/info/title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            version: document
                .pointer("/info/version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
        }),
        paths: Some(Paths {}),
        definitions: Some(Definitions {
            additional_properties: definitions,
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trips_the_schema_shape() {
        let definitions = json!({
            "io.k8s.api.core.v1.ConfigMap": {
                "type": "object",
                "required": ["metadata"],
                "properties": {
                    "data": { "type": "object", "additionalProperties": { "type": "string" } },
                    "metadata": { "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" },
                    "finalizers": { "type": "array", "items": { "type": "string" },
                                    "x-kubernetes-patch-strategy": "merge" },
                },
                "x-kubernetes-group-version-kind": [{ "group": "", "kind": "ConfigMap", "version": "v1" }],
            }
        });
        let bytes = to_protobuf(&document(&definitions));
        let decoded = Document::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.swagger, "2.0");
        let defs = decoded
            .definitions
            .expect("definitions")
            .additional_properties;
        assert_eq!(defs.len(), 1);
        let cm = defs[0].value.as_ref().expect("schema");
        assert_eq!(cm.r#type.as_ref().expect("type").value, ["object"]);
        assert_eq!(cm.required, ["metadata"]);
        assert_eq!(
            cm.vendor_extension[0].name,
            "x-kubernetes-group-version-kind"
        );
        let props = &cm
            .properties
            .as_ref()
            .expect("properties")
            .additional_properties;
        let metadata = props
            .iter()
            .find(|p| p.name == "metadata")
            .and_then(|p| p.value.as_ref())
            .expect("metadata");
        assert_eq!(
            metadata.reference,
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let data = props
            .iter()
            .find(|p| p.name == "data")
            .and_then(|p| p.value.as_ref())
            .expect("data");
        match data
            .additional_properties
            .as_deref()
            .and_then(|a| a.oneof.as_ref())
        {
            Some(AdditionalProperties::Schema(s)) => {
                assert_eq!(s.r#type.as_ref().expect("t").value, ["string"])
            }
            other => panic!("additionalProperties: {other:?}"),
        }
    }
}
