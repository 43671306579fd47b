//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into the JSON objects the
//! rest of the API server works on.
//!
//! kubectl >= 1.31 sends the bodies of its typed creates (`kubectl create deployment`, `run`,
//! `expose`, ...) as protobuf and does not retry with JSON. A body is the 4-byte magic `k8s\0`
//! followed by a `runtime.Unknown` message (1: TypeMeta {1: apiVersion, 2: kind}, 2: raw,
//! 3: contentEncoding, 4: contentType) whose `raw` is the typed object in proto2.
//!
//! The typed objects are decoded with [`MESSAGES`], a schema table of every message reachable from
//! the kinds in [`ROOTS`]: per field its number, JSON name and wire type, taken from the
//! `generated.proto` and `types.go` files of kubernetes/api (commit 10b39a39) and
//! kubernetes/apimachinery (commit eed236ce). Go's JSON rules are mirrored: a present scalar
//! field with a zero value is kept when the Go field is a pointer or has no `omitempty` (so
//! `replicas: 0` survives) and dropped otherwise (Go cannot tell a zero non-pointer field from an
//! absent one); embedded structs (`VolumeSource`, `ProbeHandler`, ...) are inlined; the special
//! types map as their JSON forms do (`IntOrString` to a number or string, `Quantity` to a string,
//! `Time`/`MicroTime` to RFC 3339, `Duration` to Go's duration string, `RawExtension`/`FieldsV1`
//! to embedded JSON). A field number the table does not know is an error naming the message and
//! number, never silently dropped.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with `k8s\0`.
    #[error("the body does not start with the kubernetes protobuf magic prefix")]
    NoMagic,
    /// The object's type has no schema here.
    #[error("decoding protobuf {kind} ({api_version}) is not supported, send it as JSON")]
    UnsupportedType {
        /// `apiVersion` of the object.
        api_version: String,
        /// `kind` of the object.
        kind: String,
    },
    /// The envelope names a content encoding or type this decoder does not handle.
    #[error("unsupported protobuf envelope: {0}")]
    Envelope(String),
    /// A field number the schema of `message` does not list.
    #[error("unknown field number {field} in protobuf message {message}")]
    UnknownField {
        /// The message being decoded.
        message: &'static str,
        /// The unknown field number.
        field: u64,
    },
    /// The bytes do not follow the protobuf wire format or the schema.
    #[error("malformed protobuf in message {message}: {what}")]
    Malformed {
        /// The message being decoded.
        message: &'static str,
        /// What was wrong.
        what: String,
    },
}

type Result<T> = std::result::Result<T, ProtobufError>;

fn malformed(message: &'static str, what: impl Into<String>) -> ProtobufError {
    ProtobufError::Malformed {
        message,
        what: what.into(),
    }
}

/// Decodes a whole `application/vnd.kubernetes.protobuf` body into the object's JSON form,
/// with `apiVersion` and `kind` taken from the envelope.
pub fn decode(body: &[u8]) -> Result<Value> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    const UNKNOWN: &str = "runtime.Unknown";
    let (mut api_version, mut kind) = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    let mut reader = Reader::new(envelope, UNKNOWN);
    while let Some((field, wire)) = reader.next()? {
        match field {
            1 => {
                let mut meta = Reader::new(wire.bytes(UNKNOWN, "typeMeta")?, "runtime.TypeMeta");
                while let Some((field, wire)) = meta.next()? {
                    match field {
                        1 => api_version = wire.string("runtime.TypeMeta", "apiVersion")?,
                        2 => kind = wire.string("runtime.TypeMeta", "kind")?,
                        field => {
                            return Err(ProtobufError::UnknownField {
                                message: "runtime.TypeMeta",
                                field,
                            });
                        }
                    }
                }
            }
            2 => raw = wire.bytes(UNKNOWN, "raw")?,
            3 => {
                let encoding = wire.string(UNKNOWN, "contentEncoding")?;
                if !encoding.is_empty() {
                    return Err(ProtobufError::Envelope(format!(
                        "content encoding {encoding}"
                    )));
                }
            }
            4 => {
                let content_type = wire.string(UNKNOWN, "contentType")?;
                if !content_type.is_empty() && content_type != MEDIA_TYPE {
                    return Err(ProtobufError::Envelope(format!(
                        "content type {content_type}"
                    )));
                }
            }
            field => {
                return Err(ProtobufError::UnknownField {
                    message: UNKNOWN,
                    field,
                });
            }
        }
    }
    let root = root_message(&api_version, &kind).ok_or_else(|| ProtobufError::UnsupportedType {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    decode_message(root, raw, &mut object, 0)?;
    Ok(Value::Object(object))
}

/// The kinds whose protobuf bodies are decoded, as (apiVersion, kind, schema message).
pub const ROOTS: &[(&str, &str, &str)] = &[
    ("v1", "Pod", "core.Pod"),
    ("v1", "Service", "core.Service"),
    ("v1", "ConfigMap", "core.ConfigMap"),
    ("v1", "Secret", "core.Secret"),
    ("v1", "Namespace", "core.Namespace"),
    ("v1", "ServiceAccount", "core.ServiceAccount"),
    ("v1", "Endpoints", "core.Endpoints"),
    ("v1", "Event", "core.Event"),
    ("v1", "Node", "core.Node"),
    ("v1", "Binding", "core.Binding"),
    ("apps/v1", "Deployment", "apps.Deployment"),
    ("apps/v1", "ReplicaSet", "apps.ReplicaSet"),
    ("apps/v1", "DaemonSet", "apps.DaemonSet"),
    ("apps/v1", "StatefulSet", "apps.StatefulSet"),
    ("batch/v1", "Job", "batch.Job"),
    ("batch/v1", "CronJob", "batch.CronJob"),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "discovery.EndpointSlice",
    ),
    ("coordination.k8s.io/v1", "Lease", "coordination.Lease"),
];

fn root_message(api_version: &str, kind: &str) -> Option<&'static str> {
    ROOTS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map(|(_, _, m)| *m)
}

/// One field's value as it came off the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Four bytes no field of the table uses (float, fixed32); skipped by wire type only.
    Fixed32,
    Len(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn bytes(self, message: &'static str, field: &str) -> Result<&'a [u8]> {
        match self {
            Wire::Len(b) => Ok(b),
            _ => Err(malformed(
                message,
                format!("field {field} is not length-delimited"),
            )),
        }
    }

    fn string(self, message: &'static str, field: &str) -> Result<String> {
        let bytes = self.bytes(message, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| malformed(message, format!("field {field} is not UTF-8")))
    }

    fn varint(self, message: &'static str, field: &str) -> Result<u64> {
        match self {
            Wire::Varint(v) => Ok(v),
            _ => Err(malformed(message, format!("field {field} is not a varint"))),
        }
    }
}

/// Reads (field number, value) pairs from one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| malformed(self.message, "truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(self.message, "varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(malformed(self.message, "truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(malformed(self.message, "field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| malformed(self.message, "length out of range"))?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            other => {
                return Err(malformed(
                    self.message,
                    format!("unsupported wire type {other} for field {field}"),
                ));
            }
        };
        Ok(Some((field, wire)))
    }
}

/// The protobuf type of a field, with the Kubernetes special types that have their own JSON forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    /// string
    S,
    /// int32
    I32,
    /// int64
    I64,
    /// bool
    B,
    /// bytes, base64 in JSON
    Y,
    /// double
    F64,
    /// A message of the table, by name.
    M(&'static str),
    /// `intstr.IntOrString`: a number or a string.
    XIntOrString,
    /// `resource.Quantity`: a string.
    XQuantity,
    /// `runtime.RawExtension`: embedded JSON.
    XRawExtension,
    /// `metav1.Time`: RFC 3339 to the second.
    XTime,
    /// `metav1.MicroTime`: RFC 3339 to the microsecond.
    XMicroTime,
    /// `metav1.Duration`: Go's duration string. No message reachable from [`ROOTS`] has one
    /// today; kept so that a root with one is only a table change.
    #[allow(dead_code)]
    XDuration,
    /// `metav1.FieldsV1`: embedded JSON.
    XFieldsV1,
}

/// How a field is laid out and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    /// Optional; a zero scalar is kept in the JSON only if `keep_zero`.
    Opt { keep_zero: bool },
    /// An embedded message whose fields are inlined into the parent's JSON object.
    Inline,
    /// repeated
    Rep,
    /// `map<string, ty>`, an object in JSON.
    Map,
}

/// One field of a schema message.
#[derive(Debug)]
struct Field {
    num: u64,
    json: &'static str,
    card: Card,
    ty: Ty,
}

/// Optional, a zero value dropped (non-pointer `omitempty` Go field).
const fn o(num: u64, json: &'static str, ty: Ty) -> Field {
    Field {
        num,
        json,
        card: Card::Opt { keep_zero: false },
        ty,
    }
}

/// Optional, a zero value kept (pointer, or no `omitempty`).
const fn k(num: u64, json: &'static str, ty: Ty) -> Field {
    Field {
        num,
        json,
        card: Card::Opt { keep_zero: true },
        ty,
    }
}

/// Embedded message inlined into the parent's JSON.
const fn inl(num: u64, json: &'static str, ty: Ty) -> Field {
    Field {
        num,
        json,
        card: Card::Inline,
        ty,
    }
}

/// repeated
const fn r(num: u64, json: &'static str, ty: Ty) -> Field {
    Field {
        num,
        json,
        card: Card::Rep,
        ty,
    }
}

/// `map<string, ty>`
const fn m(num: u64, json: &'static str, ty: Ty) -> Field {
    Field {
        num,
        json,
        card: Card::Map,
        ty,
    }
}

fn schema(name: &str) -> Option<&'static [Field]> {
    MESSAGES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| MESSAGES[i].1)
}

fn decode_message(
    name: &'static str,
    bytes: &[u8],
    out: &mut Map<String, Value>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(malformed(name, "nested too deeply"));
    }
    let fields = schema(name).ok_or_else(|| malformed(name, "message missing from the schema"))?;
    let mut reader = Reader::new(bytes, name);
    while let Some((num, wire)) = reader.next()? {
        let field = fields
            .iter()
            .find(|f| f.num == num)
            .ok_or(ProtobufError::UnknownField {
                message: name,
                field: num,
            })?;
        match field.card {
            Card::Opt { keep_zero } => {
                if let Some(value) = decode_value(name, field, wire, depth)?
                    && (keep_zero || !is_zero_scalar(&value, field.ty))
                {
                    out.insert(field.json.to_string(), value);
                }
            }
            Card::Inline => {
                let Ty::M(inner) = field.ty else {
                    return Err(malformed(name, "inline field is not a message"));
                };
                decode_message(inner, wire.bytes(name, field.json)?, out, depth + 1)?;
            }
            Card::Rep => {
                let items = out
                    .entry(field.json.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = items else {
                    return Err(malformed(
                        name,
                        format!("field {} repeated and not", field.json),
                    ));
                };
                match (wire, field.ty) {
                    // A packed run of numbers.
                    (Wire::Len(run), Ty::I32 | Ty::I64 | Ty::B | Ty::F64) => {
                        let mut run_reader = Reader::new(run, name);
                        while !run_reader.buf.is_empty() {
                            let element = if field.ty == Ty::F64 {
                                Wire::Fixed64(u64::from_le_bytes(
                                    run_reader.take(8)?.try_into().expect("8 bytes"),
                                ))
                            } else {
                                Wire::Varint(run_reader.varint()?)
                            };
                            if let Some(v) = decode_value(name, field, element, depth)? {
                                items.push(v);
                            }
                        }
                    }
                    _ => {
                        if let Some(v) = decode_value(name, field, wire, depth)? {
                            items.push(v);
                        }
                    }
                }
            }
            Card::Map => {
                let mut entry = Reader::new(wire.bytes(name, field.json)?, name);
                let (mut key, mut value) = (String::new(), None);
                while let Some((num, wire)) = entry.next()? {
                    match num {
                        1 => key = wire.string(name, field.json)?,
                        2 => value = decode_value(name, field, wire, depth)?,
                        _ => {
                            return Err(malformed(
                                name,
                                format!("map {} entry field {num}", field.json),
                            ));
                        }
                    }
                }
                let value = value.unwrap_or_else(|| zero_value(field.ty));
                let map = out
                    .entry(field.json.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = map else {
                    return Err(malformed(
                        name,
                        format!("field {} is a map and not", field.json),
                    ));
                };
                map.insert(key, value);
            }
        }
    }
    Ok(())
}

fn is_zero_scalar(value: &Value, ty: Ty) -> bool {
    match ty {
        Ty::S | Ty::Y => value.as_str() == Some(""),
        Ty::I32 | Ty::I64 => value.as_i64() == Some(0),
        Ty::F64 => value.as_f64() == Some(0.0),
        Ty::B => value == &Value::Bool(false),
        _ => false,
    }
}

fn zero_value(ty: Ty) -> Value {
    match ty {
        Ty::S | Ty::Y => Value::String(String::new()),
        Ty::XQuantity => Value::String("0".into()),
        Ty::I32 | Ty::I64 => Value::from(0),
        Ty::F64 => Value::from(0.0),
        Ty::B => Value::Bool(false),
        Ty::XIntOrString => Value::from(0),
        _ => Value::Object(Map::new()),
    }
}

/// The JSON form of one value of `field`; `None` for values Go's JSON leaves out (zero times,
/// empty raw extensions).
fn decode_value(
    message: &'static str,
    field: &Field,
    wire: Wire<'_>,
    depth: usize,
) -> Result<Option<Value>> {
    let name = field.json;
    let value = match field.ty {
        Ty::S => Value::String(wire.string(message, name)?),
        // int32 travels sign-extended to 64 bits; the low 32 bits are the value.
        Ty::I32 => Value::from(wire.varint(message, name)? as u32 as i32),
        Ty::I64 => Value::from(wire.varint(message, name)? as i64),
        Ty::B => Value::Bool(wire.varint(message, name)? != 0),
        Ty::Y => Value::String(
            base64::engine::general_purpose::STANDARD.encode(wire.bytes(message, name)?),
        ),
        Ty::F64 => match wire {
            Wire::Fixed64(bits) => Number::from_f64(f64::from_bits(bits))
                .map(Value::Number)
                .ok_or_else(|| {
                    malformed(message, format!("field {name} is not a finite number"))
                })?,
            _ => return Err(malformed(message, format!("field {name} is not a double"))),
        },
        Ty::M(inner) => {
            let mut object = Map::new();
            decode_message(inner, wire.bytes(message, name)?, &mut object, depth + 1)?;
            Value::Object(object)
        }
        Ty::XIntOrString => {
            const IOS: &str = "intstr.IntOrString";
            let (mut is_string, mut int, mut string) = (false, 0i32, String::new());
            let mut reader = Reader::new(wire.bytes(message, name)?, IOS);
            while let Some((num, wire)) = reader.next()? {
                match num {
                    1 => is_string = wire.varint(IOS, "type")? == 1,
                    2 => int = wire.varint(IOS, "intVal")? as u32 as i32,
                    3 => string = wire.string(IOS, "strVal")?,
                    field => {
                        return Err(ProtobufError::UnknownField {
                            message: IOS,
                            field,
                        });
                    }
                }
            }
            if is_string {
                Value::String(string)
            } else {
                Value::from(int)
            }
        }
        Ty::XQuantity => {
            const Q: &str = "resource.Quantity";
            let mut quantity = String::new();
            let mut reader = Reader::new(wire.bytes(message, name)?, Q);
            while let Some((num, wire)) = reader.next()? {
                match num {
                    1 => quantity = wire.string(Q, "string")?,
                    field => return Err(ProtobufError::UnknownField { message: Q, field }),
                }
            }
            Value::String(quantity)
        }
        Ty::XTime | Ty::XMicroTime => {
            let t: &'static str = if field.ty == Ty::XTime {
                "metav1.Time"
            } else {
                "metav1.MicroTime"
            };
            let bytes = wire.bytes(message, name)?;
            let (mut seconds, mut nanos) = (0i64, 0i32);
            let mut reader = Reader::new(bytes, t);
            while let Some((num, wire)) = reader.next()? {
                match num {
                    1 => seconds = wire.varint(t, "seconds")? as i64,
                    2 => nanos = wire.varint(t, "nanos")? as u32 as i32,
                    field => return Err(ProtobufError::UnknownField { message: t, field }),
                }
            }
            // Go writes nothing for the zero time, whose JSON is null.
            if bytes.is_empty() {
                return Ok(None);
            }
            Value::String(rfc3339(t, seconds, nanos, field.ty == Ty::XMicroTime)?)
        }
        Ty::XDuration => {
            const D: &str = "metav1.Duration";
            let mut nanos = 0i64;
            let mut reader = Reader::new(wire.bytes(message, name)?, D);
            while let Some((num, wire)) = reader.next()? {
                match num {
                    1 => nanos = wire.varint(D, "duration")? as i64,
                    field => return Err(ProtobufError::UnknownField { message: D, field }),
                }
            }
            Value::String(go_duration(nanos))
        }
        Ty::XRawExtension | Ty::XFieldsV1 => {
            let t: &'static str = if field.ty == Ty::XRawExtension {
                "runtime.RawExtension"
            } else {
                "metav1.FieldsV1"
            };
            let mut raw: &[u8] = &[];
            let mut reader = Reader::new(wire.bytes(message, name)?, t);
            while let Some((num, wire)) = reader.next()? {
                match num {
                    1 => raw = wire.bytes(t, "raw")?,
                    field => return Err(ProtobufError::UnknownField { message: t, field }),
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(raw).map_err(|e| {
                malformed(
                    t,
                    format!("field {name} of {message} does not hold JSON: {e}"),
                )
            })?
        }
    };
    Ok(Some(value))
}

/// `2006-01-02T15:04:05Z`, or with six fractional digits for a `MicroTime`.
fn rfc3339(message: &'static str, seconds: i64, nanos: i32, micro: bool) -> Result<String> {
    let ts = jiff::Timestamp::from_second(seconds)
        .map_err(|e| malformed(message, format!("time out of range: {e}")))?;
    let whole = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(if micro {
        format!("{whole}.{:06}Z", nanos.clamp(0, 999_999_999) / 1000)
    } else {
        format!("{whole}Z")
    })
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    fn frac(value: u64, unit: u64, digits: usize) -> String {
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            return whole.to_string();
        }
        let rest = format!("{rest:0digits$}");
        format!("{whole}.{}", rest.trim_end_matches('0'))
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    const SECOND: u64 = 1_000_000_000;
    let body = if n == 0 {
        "0s".to_string()
    } else if n < 1_000 {
        format!("{n}ns")
    } else if n < 1_000_000 {
        format!("{}µs", frac(n, 1_000, 3))
    } else if n < SECOND {
        format!("{}ms", frac(n, 1_000_000, 6))
    } else {
        let (h, m) = (n / (3600 * SECOND), n / (60 * SECOND) % 60);
        let s = format!("{}s", frac(n % (60 * SECOND), SECOND, 9));
        if h > 0 {
            format!("{h}h{m}m{s}")
        } else if m > 0 {
            format!("{m}m{s}")
        } else {
            s
        }
    };
    format!("{sign}{body}")
}

use Ty::{B, I32, I64, M, S, XFieldsV1, XIntOrString, XMicroTime, XQuantity, XTime, Y};

/// `core.Container` and `core.EphemeralContainerCommon` have the same fields, numbers included.
#[rustfmt::skip]
const CONTAINER_FIELDS: &[Field] = &[
    k(1, "name", S), o(2, "image", S), r(3, "command", S), r(4, "args", S),
    o(5, "workingDir", S), r(6, "ports", M("core.ContainerPort")),
    r(19, "envFrom", M("core.EnvFromSource")), r(7, "env", M("core.EnvVar")),
    o(8, "resources", M("core.ResourceRequirements")),
    r(23, "resizePolicy", M("core.ContainerResizePolicy")), k(24, "restartPolicy", S),
    r(25, "restartPolicyRules", M("core.ContainerRestartRule")),
    r(9, "volumeMounts", M("core.VolumeMount")), r(21, "volumeDevices", M("core.VolumeDevice")),
    k(10, "livenessProbe", M("core.Probe")), k(11, "readinessProbe", M("core.Probe")),
    k(22, "startupProbe", M("core.Probe")), k(12, "lifecycle", M("core.Lifecycle")),
    o(13, "terminationMessagePath", S), o(20, "terminationMessagePolicy", S),
    o(14, "imagePullPolicy", S), k(15, "securityContext", M("core.SecurityContext")),
    o(16, "stdin", B), o(17, "stdinOnce", B), o(18, "tty", B),
];

/// Every message reachable from [`ROOTS`], sorted by name for binary search. Names are
/// `<group>.<Message>`, with `meta` for apimachinery's meta/v1.
#[rustfmt::skip]
static MESSAGES: &[(&str, &[Field])] = &[
    ("apps.DaemonSet", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("apps.DaemonSetSpec")),
        o(3, "status", M("apps.DaemonSetStatus")),
    ]),
    ("apps.DaemonSetCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastTransitionTime", XTime), o(4, "reason", S),
        o(5, "message", S),
    ]),
    ("apps.DaemonSetSpec", &[
        k(1, "selector", M("meta.LabelSelector")), k(2, "template", M("core.PodTemplateSpec")),
        o(3, "updateStrategy", M("apps.DaemonSetUpdateStrategy")), o(4, "minReadySeconds", I32),
        k(6, "revisionHistoryLimit", I32),
    ]),
    ("apps.DaemonSetStatus", &[
        k(1, "currentNumberScheduled", I32), k(2, "numberMisscheduled", I32),
        k(3, "desiredNumberScheduled", I32), k(4, "numberReady", I32),
        o(5, "observedGeneration", I64), o(6, "updatedNumberScheduled", I32),
        o(7, "numberAvailable", I32), o(8, "numberUnavailable", I32), k(9, "collisionCount", I32),
        r(10, "conditions", M("apps.DaemonSetCondition")),
    ]),
    ("apps.DaemonSetUpdateStrategy", &[
        o(1, "type", S), k(2, "rollingUpdate", M("apps.RollingUpdateDaemonSet")),
    ]),
    ("apps.Deployment", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("apps.DeploymentSpec")),
        o(3, "status", M("apps.DeploymentStatus")),
    ]),
    ("apps.DeploymentCondition", &[
        k(1, "type", S), k(2, "status", S), o(6, "lastUpdateTime", XTime),
        o(7, "lastTransitionTime", XTime), o(4, "reason", S), o(5, "message", S),
    ]),
    ("apps.DeploymentSpec", &[
        k(1, "replicas", I32), k(2, "selector", M("meta.LabelSelector")),
        k(3, "template", M("core.PodTemplateSpec")), o(4, "strategy", M("apps.DeploymentStrategy")),
        o(5, "minReadySeconds", I32), k(6, "revisionHistoryLimit", I32), o(7, "paused", B),
        k(9, "progressDeadlineSeconds", I32),
    ]),
    ("apps.DeploymentStatus", &[
        o(1, "observedGeneration", I64), o(2, "replicas", I32), o(3, "updatedReplicas", I32),
        o(7, "readyReplicas", I32), o(4, "availableReplicas", I32),
        o(5, "unavailableReplicas", I32), k(9, "terminatingReplicas", I32),
        r(6, "conditions", M("apps.DeploymentCondition")), k(8, "collisionCount", I32),
    ]),
    ("apps.DeploymentStrategy", &[
        o(1, "type", S), k(2, "rollingUpdate", M("apps.RollingUpdateDeployment")),
    ]),
    ("apps.ReplicaSet", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("apps.ReplicaSetSpec")),
        o(3, "status", M("apps.ReplicaSetStatus")),
    ]),
    ("apps.ReplicaSetCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastTransitionTime", XTime), o(4, "reason", S),
        o(5, "message", S),
    ]),
    ("apps.ReplicaSetSpec", &[
        k(1, "replicas", I32), o(4, "minReadySeconds", I32),
        k(2, "selector", M("meta.LabelSelector")), o(3, "template", M("core.PodTemplateSpec")),
    ]),
    ("apps.ReplicaSetStatus", &[
        k(1, "replicas", I32), o(2, "fullyLabeledReplicas", I32), o(4, "readyReplicas", I32),
        o(5, "availableReplicas", I32), k(7, "terminatingReplicas", I32),
        o(3, "observedGeneration", I64), r(6, "conditions", M("apps.ReplicaSetCondition")),
    ]),
    ("apps.RollingUpdateDaemonSet", &[
        k(1, "maxUnavailable", XIntOrString), k(2, "maxSurge", XIntOrString),
    ]),
    ("apps.RollingUpdateDeployment", &[
        k(1, "maxUnavailable", XIntOrString), k(2, "maxSurge", XIntOrString),
    ]),
    ("apps.RollingUpdateStatefulSetStrategy", &[
        k(1, "partition", I32), k(2, "maxUnavailable", XIntOrString),
    ]),
    ("apps.StatefulSet", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("apps.StatefulSetSpec")),
        o(3, "status", M("apps.StatefulSetStatus")),
    ]),
    ("apps.StatefulSetCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastTransitionTime", XTime), o(4, "reason", S),
        o(5, "message", S),
    ]),
    ("apps.StatefulSetOrdinals", &[
        k(1, "start", I32),
    ]),
    ("apps.StatefulSetPersistentVolumeClaimRetentionPolicy", &[
        o(1, "whenDeleted", S), o(2, "whenScaled", S),
    ]),
    ("apps.StatefulSetSpec", &[
        k(1, "replicas", I32), k(2, "selector", M("meta.LabelSelector")),
        k(3, "template", M("core.PodTemplateSpec")),
        r(4, "volumeClaimTemplates", M("core.PersistentVolumeClaim")), k(5, "serviceName", S),
        o(6, "podManagementPolicy", S), o(7, "updateStrategy", M("apps.StatefulSetUpdateStrategy")),
        k(8, "revisionHistoryLimit", I32), o(9, "minReadySeconds", I32),
        k(10, "persistentVolumeClaimRetentionPolicy", M("apps.StatefulSetPersistentVolumeClaimRetentionPolicy")),
        k(11, "ordinals", M("apps.StatefulSetOrdinals")),
    ]),
    ("apps.StatefulSetStatus", &[
        o(1, "observedGeneration", I64), k(2, "replicas", I32), o(3, "readyReplicas", I32),
        o(4, "currentReplicas", I32), o(5, "updatedReplicas", I32), o(6, "currentRevision", S),
        o(7, "updateRevision", S), k(9, "collisionCount", I32),
        r(10, "conditions", M("apps.StatefulSetCondition")), k(11, "availableReplicas", I32),
    ]),
    ("apps.StatefulSetUpdateStrategy", &[
        o(1, "type", S), k(2, "rollingUpdate", M("apps.RollingUpdateStatefulSetStrategy")),
    ]),
    ("batch.CronJob", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("batch.CronJobSpec")),
        o(3, "status", M("batch.CronJobStatus")),
    ]),
    ("batch.CronJobSpec", &[
        k(1, "schedule", S), k(8, "timeZone", S), k(2, "startingDeadlineSeconds", I64),
        o(3, "concurrencyPolicy", S), k(4, "suspend", B),
        k(5, "jobTemplate", M("batch.JobTemplateSpec")), k(6, "successfulJobsHistoryLimit", I32),
        k(7, "failedJobsHistoryLimit", I32),
    ]),
    ("batch.CronJobStatus", &[
        r(1, "active", M("core.ObjectReference")), k(4, "lastScheduleTime", XTime),
        k(5, "lastSuccessfulTime", XTime),
    ]),
    ("batch.Job", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("batch.JobSpec")),
        o(3, "status", M("batch.JobStatus")),
    ]),
    ("batch.JobCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastProbeTime", XTime),
        o(4, "lastTransitionTime", XTime), o(5, "reason", S), o(6, "message", S),
    ]),
    ("batch.JobSchedulingConfiguration", &[
        k(1, "schedulingPolicy", M("scheduling.WorkloadPodGroupSchedulingPolicy")),
        k(2, "schedulingConstraints", M("scheduling.WorkloadPodGroupSchedulingConstraints")),
        k(3, "disruptionMode", M("scheduling.WorkloadPodGroupDisruptionMode")),
        r(4, "resourceClaims", M("scheduling.WorkloadPodGroupResourceClaim")),
    ]),
    ("batch.JobSpec", &[
        k(1, "parallelism", I32), k(2, "completions", I32), k(3, "activeDeadlineSeconds", I64),
        k(11, "podFailurePolicy", M("batch.PodFailurePolicy")),
        k(16, "successPolicy", M("batch.SuccessPolicy")), k(7, "backoffLimit", I32),
        k(12, "backoffLimitPerIndex", I32), k(13, "maxFailedIndexes", I32),
        k(4, "selector", M("meta.LabelSelector")), k(5, "manualSelector", B),
        k(6, "template", M("core.PodTemplateSpec")), k(8, "ttlSecondsAfterFinished", I32),
        k(9, "completionMode", S), k(10, "suspend", B), k(14, "podReplacementPolicy", S),
        k(15, "managedBy", S), k(17, "scheduling", M("batch.JobSchedulingConfiguration")),
    ]),
    ("batch.JobStatus", &[
        r(1, "conditions", M("batch.JobCondition")), k(2, "startTime", XTime),
        k(3, "completionTime", XTime), o(4, "active", I32), o(5, "succeeded", I32),
        o(6, "failed", I32), k(11, "terminating", I32), o(7, "completedIndexes", S),
        k(10, "failedIndexes", S),
        k(8, "uncountedTerminatedPods", M("batch.UncountedTerminatedPods")), k(9, "ready", I32),
    ]),
    ("batch.JobTemplateSpec", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("batch.JobSpec")),
    ]),
    ("batch.PodFailurePolicy", &[
        r(1, "rules", M("batch.PodFailurePolicyRule")),
    ]),
    ("batch.PodFailurePolicyOnExitCodesRequirement", &[
        k(1, "containerName", S), k(2, "operator", S), r(3, "values", I32),
    ]),
    ("batch.PodFailurePolicyOnPodConditionsPattern", &[
        k(1, "type", S), k(2, "status", S),
    ]),
    ("batch.PodFailurePolicyRule", &[
        k(1, "action", S), k(2, "onExitCodes", M("batch.PodFailurePolicyOnExitCodesRequirement")),
        r(3, "onPodConditions", M("batch.PodFailurePolicyOnPodConditionsPattern")),
    ]),
    ("batch.SuccessPolicy", &[
        r(1, "rules", M("batch.SuccessPolicyRule")),
    ]),
    ("batch.SuccessPolicyRule", &[
        k(1, "succeededIndexes", S), k(2, "succeededCount", I32),
    ]),
    ("batch.UncountedTerminatedPods", &[
        r(1, "succeeded", S), r(2, "failed", S),
    ]),
    ("coordination.Lease", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("coordination.LeaseSpec")),
    ]),
    ("coordination.LeaseSpec", &[
        k(1, "holderIdentity", S), k(2, "leaseDurationSeconds", I32),
        k(3, "acquireTime", XMicroTime), k(4, "renewTime", XMicroTime),
        k(5, "leaseTransitions", I32), k(6, "strategy", S), k(7, "preferredHolder", S),
    ]),
    ("core.AWSElasticBlockStoreVolumeSource", &[
        k(1, "volumeID", S), o(2, "fsType", S), o(3, "partition", I32), o(4, "readOnly", B),
    ]),
    ("core.Affinity", &[
        k(1, "nodeAffinity", M("core.NodeAffinity")), k(2, "podAffinity", M("core.PodAffinity")),
        k(3, "podAntiAffinity", M("core.PodAntiAffinity")),
    ]),
    ("core.AppArmorProfile", &[
        k(1, "type", S), k(2, "localhostProfile", S),
    ]),
    ("core.AttachedVolume", &[
        k(1, "name", S), k(2, "devicePath", S),
    ]),
    ("core.AzureDiskVolumeSource", &[
        k(1, "diskName", S), k(2, "diskURI", S), k(3, "cachingMode", S), k(4, "fsType", S),
        k(5, "readOnly", B), k(6, "kind", S),
    ]),
    ("core.AzureFileVolumeSource", &[
        k(1, "secretName", S), k(2, "shareName", S), o(3, "readOnly", B),
    ]),
    ("core.Binding", &[
        o(1, "metadata", M("meta.ObjectMeta")), k(2, "target", M("core.ObjectReference")),
    ]),
    ("core.CSIVolumeSource", &[
        k(1, "driver", S), k(2, "readOnly", B), k(3, "fsType", S), m(4, "volumeAttributes", S),
        k(5, "nodePublishSecretRef", M("core.LocalObjectReference")),
    ]),
    ("core.Capabilities", &[
        r(1, "add", S), r(2, "drop", S),
    ]),
    ("core.CephFSVolumeSource", &[
        r(1, "monitors", S), o(2, "path", S), o(3, "user", S), o(4, "secretFile", S),
        k(5, "secretRef", M("core.LocalObjectReference")), o(6, "readOnly", B),
    ]),
    ("core.CinderVolumeSource", &[
        k(1, "volumeID", S), o(2, "fsType", S), o(3, "readOnly", B),
        k(4, "secretRef", M("core.LocalObjectReference")),
    ]),
    ("core.ClientIPConfig", &[
        k(1, "timeoutSeconds", I32),
    ]),
    ("core.ClusterTrustBundleProjection", &[
        k(1, "name", S), k(2, "signerName", S), k(3, "labelSelector", M("meta.LabelSelector")),
        k(5, "optional", B), k(4, "path", S), k(6, "user", I64),
    ]),
    ("core.ConfigMap", &[
        o(1, "metadata", M("meta.ObjectMeta")), k(4, "immutable", B), m(2, "data", S),
        m(3, "binaryData", Y),
    ]),
    ("core.ConfigMapEnvSource", &[
        inl(1, "", M("core.LocalObjectReference")), k(2, "optional", B),
    ]),
    ("core.ConfigMapKeySelector", &[
        inl(1, "", M("core.LocalObjectReference")), k(2, "key", S), k(3, "optional", B),
    ]),
    ("core.ConfigMapNodeConfigSource", &[
        k(1, "namespace", S), k(2, "name", S), o(3, "uid", S), o(4, "resourceVersion", S),
        k(5, "kubeletConfigKey", S),
    ]),
    ("core.ConfigMapProjection", &[
        inl(1, "", M("core.LocalObjectReference")), r(2, "items", M("core.KeyToPath")),
        k(4, "optional", B),
    ]),
    ("core.ConfigMapVolumeSource", &[
        inl(1, "", M("core.LocalObjectReference")), r(2, "items", M("core.KeyToPath")),
        k(3, "defaultMode", I32), k(4, "optional", B), k(5, "defaultUser", I64),
    ]),
    ("core.Container", CONTAINER_FIELDS),
    ("core.ContainerExtendedResourceRequest", &[
        k(1, "containerName", S), k(2, "resourceName", S), k(3, "requestName", S),
    ]),
    ("core.ContainerImage", &[
        r(1, "names", S), o(2, "sizeBytes", I64),
    ]),
    ("core.ContainerPort", &[
        o(1, "name", S), o(2, "hostPort", I32), k(3, "containerPort", I32), o(4, "protocol", S),
        o(5, "hostIP", S),
    ]),
    ("core.ContainerResizePolicy", &[
        k(1, "resourceName", S), k(2, "restartPolicy", S),
    ]),
    ("core.ContainerRestartRule", &[
        o(1, "action", S), k(2, "exitCodes", M("core.ContainerRestartRuleOnExitCodes")),
    ]),
    ("core.ContainerRestartRuleOnExitCodes", &[
        o(1, "operator", S), r(2, "values", I32),
    ]),
    ("core.ContainerState", &[
        k(1, "waiting", M("core.ContainerStateWaiting")),
        k(2, "running", M("core.ContainerStateRunning")),
        k(3, "terminated", M("core.ContainerStateTerminated")),
    ]),
    ("core.ContainerStateRunning", &[
        o(1, "startedAt", XTime),
    ]),
    ("core.ContainerStateTerminated", &[
        k(1, "exitCode", I32), o(2, "signal", I32), o(3, "reason", S), o(4, "message", S),
        o(5, "startedAt", XTime), o(6, "finishedAt", XTime), o(7, "containerID", S),
    ]),
    ("core.ContainerStateWaiting", &[
        o(1, "reason", S), o(2, "message", S),
    ]),
    ("core.ContainerStatus", &[
        k(1, "name", S), o(2, "state", M("core.ContainerState")),
        o(3, "lastState", M("core.ContainerState")), k(4, "ready", B), k(5, "restartCount", I32),
        k(6, "image", S), k(7, "imageID", S), o(8, "containerID", S), k(9, "started", B),
        m(10, "allocatedResources", XQuantity), k(11, "resources", M("core.ResourceRequirements")),
        r(12, "volumeMounts", M("core.VolumeMountStatus")), k(13, "user", M("core.ContainerUser")),
        r(14, "allocatedResourcesStatus", M("core.ResourceStatus")), k(15, "stopSignal", S),
    ]),
    ("core.ContainerUser", &[
        k(1, "linux", M("core.LinuxContainerUser")),
    ]),
    ("core.DaemonEndpoint", &[
        k(1, "Port", I32),
    ]),
    ("core.DownwardAPIProjection", &[
        r(1, "items", M("core.DownwardAPIVolumeFile")),
    ]),
    ("core.DownwardAPIVolumeFile", &[
        k(1, "path", S), k(2, "fieldRef", M("core.ObjectFieldSelector")),
        k(3, "resourceFieldRef", M("core.ResourceFieldSelector")), k(4, "mode", I32),
        k(5, "user", I64),
    ]),
    ("core.DownwardAPIVolumeSource", &[
        r(1, "items", M("core.DownwardAPIVolumeFile")), k(2, "defaultMode", I32),
        k(3, "defaultUser", I64),
    ]),
    ("core.EmptyDirVolumeSource", &[
        o(1, "medium", S), k(2, "sizeLimit", XQuantity), k(3, "mode", I32),
    ]),
    ("core.EndpointAddress", &[
        k(1, "ip", S), o(3, "hostname", S), k(4, "nodeName", S),
        k(2, "targetRef", M("core.ObjectReference")),
    ]),
    ("core.EndpointPort", &[
        o(1, "name", S), k(2, "port", I32), o(3, "protocol", S), k(4, "appProtocol", S),
    ]),
    ("core.EndpointSubset", &[
        r(1, "addresses", M("core.EndpointAddress")),
        r(2, "notReadyAddresses", M("core.EndpointAddress")), r(3, "ports", M("core.EndpointPort")),
    ]),
    ("core.Endpoints", &[
        o(1, "metadata", M("meta.ObjectMeta")), r(2, "subsets", M("core.EndpointSubset")),
    ]),
    ("core.EnvFromSource", &[
        o(1, "prefix", S), k(2, "configMapRef", M("core.ConfigMapEnvSource")),
        k(3, "secretRef", M("core.SecretEnvSource")),
    ]),
    ("core.EnvVar", &[
        k(1, "name", S), o(2, "value", S), k(3, "valueFrom", M("core.EnvVarSource")),
    ]),
    ("core.EnvVarSource", &[
        k(1, "fieldRef", M("core.ObjectFieldSelector")),
        k(2, "resourceFieldRef", M("core.ResourceFieldSelector")),
        k(3, "configMapKeyRef", M("core.ConfigMapKeySelector")),
        k(4, "secretKeyRef", M("core.SecretKeySelector")),
        k(5, "fileKeyRef", M("core.FileKeySelector")),
    ]),
    ("core.EphemeralContainer", &[
        inl(1, "", M("core.EphemeralContainerCommon")), o(2, "targetContainerName", S),
    ]),
    ("core.EphemeralContainerCommon", CONTAINER_FIELDS),
    ("core.EphemeralVolumeSource", &[
        k(1, "volumeClaimTemplate", M("core.PersistentVolumeClaimTemplate")),
    ]),
    ("core.Event", &[
        k(1, "metadata", M("meta.ObjectMeta")), k(2, "involvedObject", M("core.ObjectReference")),
        o(3, "reason", S), o(4, "message", S), o(5, "source", M("core.EventSource")),
        o(6, "firstTimestamp", XTime), o(7, "lastTimestamp", XTime), o(8, "count", I32),
        o(9, "type", S), o(10, "eventTime", XMicroTime), k(11, "series", M("core.EventSeries")),
        o(12, "action", S), k(13, "related", M("core.ObjectReference")),
        k(14, "reportingComponent", S), k(15, "reportingInstance", S),
    ]),
    ("core.EventSeries", &[
        o(1, "count", I32), o(2, "lastObservedTime", XMicroTime),
    ]),
    ("core.EventSource", &[
        o(1, "component", S), o(2, "host", S),
    ]),
    ("core.EvictionResponder", &[
        k(1, "name", S), k(2, "priority", I32),
    ]),
    ("core.ExecAction", &[
        r(1, "command", S),
    ]),
    ("core.FCVolumeSource", &[
        r(1, "targetWWNs", S), k(2, "lun", I32), o(3, "fsType", S), o(4, "readOnly", B),
        r(5, "wwids", S),
    ]),
    ("core.FileKeySelector", &[
        k(1, "volumeName", S), k(2, "path", S), k(3, "key", S), k(4, "optional", B),
    ]),
    ("core.FlexVolumeSource", &[
        k(1, "driver", S), o(2, "fsType", S), k(3, "secretRef", M("core.LocalObjectReference")),
        o(4, "readOnly", B), m(5, "options", S),
    ]),
    ("core.FlockerVolumeSource", &[
        o(1, "datasetName", S), o(2, "datasetUUID", S),
    ]),
    ("core.GCEPersistentDiskVolumeSource", &[
        k(1, "pdName", S), o(2, "fsType", S), o(3, "partition", I32), o(4, "readOnly", B),
    ]),
    ("core.GRPCAction", &[
        k(1, "port", I32), k(2, "service", S), k(3, "mode", S),
    ]),
    ("core.GitRepoVolumeSource", &[
        k(1, "repository", S), o(2, "revision", S), o(3, "directory", S),
    ]),
    ("core.GlusterfsVolumeSource", &[
        k(1, "endpoints", S), k(2, "path", S), o(3, "readOnly", B),
    ]),
    ("core.HTTPGetAction", &[
        o(1, "path", S), k(2, "port", XIntOrString), o(3, "host", S), o(4, "scheme", S),
        r(5, "httpHeaders", M("core.HTTPHeader")), k(6, "protocol", S),
    ]),
    ("core.HTTPHeader", &[
        k(1, "name", S), k(2, "value", S),
    ]),
    ("core.HostAlias", &[
        k(1, "ip", S), r(2, "hostnames", S),
    ]),
    ("core.HostIP", &[
        k(1, "ip", S),
    ]),
    ("core.HostPathVolumeSource", &[
        k(1, "path", S), k(2, "type", S),
    ]),
    ("core.ISCSIVolumeSource", &[
        k(1, "targetPortal", S), k(2, "iqn", S), k(3, "lun", I32), o(4, "iscsiInterface", S),
        o(5, "fsType", S), o(6, "readOnly", B), r(7, "portals", S), o(8, "chapAuthDiscovery", B),
        o(11, "chapAuthSession", B), k(10, "secretRef", M("core.LocalObjectReference")),
        k(12, "initiatorName", S),
    ]),
    ("core.ImageVolumeSource", &[
        o(1, "reference", S), o(2, "pullPolicy", S),
    ]),
    ("core.ImageVolumeStatus", &[
        o(1, "imageRef", S),
    ]),
    ("core.KeyToPath", &[
        k(1, "key", S), k(2, "path", S), k(3, "mode", I32), k(4, "user", I64),
    ]),
    ("core.Lifecycle", &[
        k(1, "postStart", M("core.LifecycleHandler")), k(2, "preStop", M("core.LifecycleHandler")),
        k(3, "stopSignal", S),
    ]),
    ("core.LifecycleHandler", &[
        k(1, "exec", M("core.ExecAction")), k(2, "httpGet", M("core.HTTPGetAction")),
        k(3, "tcpSocket", M("core.TCPSocketAction")), k(4, "sleep", M("core.SleepAction")),
    ]),
    ("core.LinuxContainerUser", &[
        k(1, "uid", I64), k(2, "gid", I64), r(3, "supplementalGroups", I64),
    ]),
    ("core.LoadBalancerIngress", &[
        o(1, "ip", S), o(2, "hostname", S), k(3, "ipMode", S), r(4, "ports", M("core.PortStatus")),
    ]),
    ("core.LoadBalancerStatus", &[
        r(1, "ingress", M("core.LoadBalancerIngress")),
    ]),
    ("core.LocalObjectReference", &[
        o(1, "name", S),
    ]),
    ("core.ModifyVolumeStatus", &[
        o(1, "targetVolumeAttributesClassName", S), k(2, "status", S),
    ]),
    ("core.NFSVolumeSource", &[
        k(1, "server", S), k(2, "path", S), o(3, "readOnly", B),
    ]),
    ("core.Namespace", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.NamespaceSpec")),
        o(3, "status", M("core.NamespaceStatus")),
    ]),
    ("core.NamespaceCondition", &[
        k(1, "type", S), k(2, "status", S), o(4, "lastTransitionTime", XTime), o(5, "reason", S),
        o(6, "message", S),
    ]),
    ("core.NamespaceSpec", &[
        r(1, "finalizers", S),
    ]),
    ("core.NamespaceStatus", &[
        o(1, "phase", S), r(2, "conditions", M("core.NamespaceCondition")),
    ]),
    ("core.Node", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.NodeSpec")),
        o(3, "status", M("core.NodeStatus")),
    ]),
    ("core.NodeAddress", &[
        k(1, "type", S), k(2, "address", S),
    ]),
    ("core.NodeAffinity", &[
        k(1, "requiredDuringSchedulingIgnoredDuringExecution", M("core.NodeSelector")),
        r(2, "preferredDuringSchedulingIgnoredDuringExecution", M("core.PreferredSchedulingTerm")),
    ]),
    ("core.NodeAllocatableMappedResources", &[
        k(1, "name", S), k(2, "quantity", XQuantity),
    ]),
    ("core.NodeAllocatableOverheadResources", &[
        k(1, "name", S), k(2, "perPod", XQuantity), k(3, "perContainer", XQuantity),
    ]),
    ("core.NodeAllocatableResourceClaimStatus", &[
        k(1, "resourceClaimName", S), r(2, "containers", S),
        r(4, "mapping", M("core.NodeAllocatableMappedResources")),
        r(5, "overhead", M("core.NodeAllocatableOverheadResources")),
    ]),
    ("core.NodeCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastHeartbeatTime", XTime),
        o(4, "lastTransitionTime", XTime), o(5, "reason", S), o(6, "message", S),
    ]),
    ("core.NodeConfigSource", &[
        k(2, "configMap", M("core.ConfigMapNodeConfigSource")),
    ]),
    ("core.NodeConfigStatus", &[
        k(1, "assigned", M("core.NodeConfigSource")), k(2, "active", M("core.NodeConfigSource")),
        k(3, "lastKnownGood", M("core.NodeConfigSource")), o(4, "error", S),
    ]),
    ("core.NodeDaemonEndpoints", &[
        o(1, "kubeletEndpoint", M("core.DaemonEndpoint")),
    ]),
    ("core.NodeFeatures", &[
        k(1, "supplementalGroupsPolicy", B),
    ]),
    ("core.NodePodPreemptionPolicy", &[
        r(1, "disableResizePreemption", S),
    ]),
    ("core.NodeRuntimeHandler", &[
        k(1, "name", S), k(2, "features", M("core.NodeRuntimeHandlerFeatures")),
    ]),
    ("core.NodeRuntimeHandlerFeatures", &[
        k(1, "recursiveReadOnlyMounts", B), k(2, "userNamespaces", B),
    ]),
    ("core.NodeSelector", &[
        r(1, "nodeSelectorTerms", M("core.NodeSelectorTerm")),
    ]),
    ("core.NodeSelectorRequirement", &[
        k(1, "key", S), k(2, "operator", S), r(3, "values", S),
    ]),
    ("core.NodeSelectorTerm", &[
        r(1, "matchExpressions", M("core.NodeSelectorRequirement")),
        r(2, "matchFields", M("core.NodeSelectorRequirement")),
    ]),
    ("core.NodeSpec", &[
        o(1, "podCIDR", S), r(7, "podCIDRs", S), o(3, "providerID", S), o(4, "unschedulable", B),
        r(5, "taints", M("core.Taint")), k(6, "configSource", M("core.NodeConfigSource")),
        o(2, "externalID", S), k(8, "podPreemptionPolicy", M("core.NodePodPreemptionPolicy")),
    ]),
    ("core.NodeStatus", &[
        m(1, "capacity", XQuantity), m(2, "allocatable", XQuantity), o(3, "phase", S),
        r(4, "conditions", M("core.NodeCondition")), r(5, "addresses", M("core.NodeAddress")),
        o(6, "daemonEndpoints", M("core.NodeDaemonEndpoints")),
        o(7, "nodeInfo", M("core.NodeSystemInfo")), r(8, "images", M("core.ContainerImage")),
        r(9, "volumesInUse", S), r(10, "volumesAttached", M("core.AttachedVolume")),
        k(11, "config", M("core.NodeConfigStatus")),
        r(12, "runtimeHandlers", M("core.NodeRuntimeHandler")),
        k(13, "features", M("core.NodeFeatures")), r(14, "declaredFeatures", S),
    ]),
    ("core.NodeSwapStatus", &[
        k(1, "capacity", I64),
    ]),
    ("core.NodeSystemInfo", &[
        k(1, "machineID", S), k(2, "systemUUID", S), k(3, "bootID", S), k(4, "kernelVersion", S),
        k(5, "osImage", S), k(6, "containerRuntimeVersion", S), k(7, "kubeletVersion", S),
        k(8, "kubeProxyVersion", S), k(9, "operatingSystem", S), k(10, "architecture", S),
        k(11, "swap", M("core.NodeSwapStatus")),
    ]),
    ("core.ObjectFieldSelector", &[
        o(1, "apiVersion", S), k(2, "fieldPath", S),
    ]),
    ("core.ObjectReference", &[
        o(1, "kind", S), o(2, "namespace", S), o(3, "name", S), o(4, "uid", S),
        o(5, "apiVersion", S), o(6, "resourceVersion", S), o(7, "fieldPath", S),
    ]),
    ("core.PersistentVolumeClaim", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.PersistentVolumeClaimSpec")),
        o(3, "status", M("core.PersistentVolumeClaimStatus")),
    ]),
    ("core.PersistentVolumeClaimCondition", &[
        k(1, "type", S), k(2, "status", S), o(3, "lastProbeTime", XTime),
        o(4, "lastTransitionTime", XTime), o(5, "reason", S), o(6, "message", S),
    ]),
    ("core.PersistentVolumeClaimSpec", &[
        r(1, "accessModes", S), k(4, "selector", M("meta.LabelSelector")),
        o(2, "resources", M("core.VolumeResourceRequirements")), o(3, "volumeName", S),
        k(5, "storageClassName", S), k(6, "volumeMode", S),
        k(7, "dataSource", M("core.TypedLocalObjectReference")),
        k(8, "dataSourceRef", M("core.TypedObjectReference")), k(9, "volumeAttributesClassName", S),
    ]),
    ("core.PersistentVolumeClaimStatus", &[
        o(1, "phase", S), r(2, "accessModes", S), m(3, "capacity", XQuantity),
        r(4, "conditions", M("core.PersistentVolumeClaimCondition")),
        m(5, "allocatedResources", XQuantity), m(7, "allocatedResourceStatuses", S),
        k(8, "currentVolumeAttributesClassName", S),
        k(9, "modifyVolumeStatus", M("core.ModifyVolumeStatus")),
        k(10, "healthStatus", M("core.VolumeHealthStatus")),
    ]),
    ("core.PersistentVolumeClaimTemplate", &[
        o(1, "metadata", M("meta.ObjectMeta")), k(2, "spec", M("core.PersistentVolumeClaimSpec")),
    ]),
    ("core.PersistentVolumeClaimVolumeSource", &[
        k(1, "claimName", S), o(2, "readOnly", B),
    ]),
    ("core.PhotonPersistentDiskVolumeSource", &[
        k(1, "pdID", S), o(2, "fsType", S),
    ]),
    ("core.Pod", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.PodSpec")),
        o(3, "status", M("core.PodStatus")),
    ]),
    ("core.PodAffinity", &[
        r(1, "requiredDuringSchedulingIgnoredDuringExecution", M("core.PodAffinityTerm")),
        r(2, "preferredDuringSchedulingIgnoredDuringExecution", M("core.WeightedPodAffinityTerm")),
    ]),
    ("core.PodAffinityTerm", &[
        k(1, "labelSelector", M("meta.LabelSelector")), r(2, "namespaces", S),
        k(3, "topologyKey", S), k(4, "namespaceSelector", M("meta.LabelSelector")),
        r(5, "matchLabelKeys", S), r(6, "mismatchLabelKeys", S),
    ]),
    ("core.PodAntiAffinity", &[
        r(1, "requiredDuringSchedulingIgnoredDuringExecution", M("core.PodAffinityTerm")),
        r(2, "preferredDuringSchedulingIgnoredDuringExecution", M("core.WeightedPodAffinityTerm")),
    ]),
    ("core.PodCertificateProjection", &[
        o(1, "signerName", S), o(2, "keyType", S), k(3, "maxExpirationSeconds", I32),
        o(4, "credentialBundlePath", S), o(5, "keyPath", S), o(6, "certificateChainPath", S),
        m(7, "userAnnotations", S), k(8, "user", I64),
    ]),
    ("core.PodCondition", &[
        k(1, "type", S), o(7, "observedGeneration", I64), k(2, "status", S),
        o(3, "lastProbeTime", XTime), o(4, "lastTransitionTime", XTime), o(5, "reason", S),
        o(6, "message", S),
    ]),
    ("core.PodDNSConfig", &[
        r(1, "nameservers", S), r(2, "searches", S), r(3, "options", M("core.PodDNSConfigOption")),
    ]),
    ("core.PodDNSConfigOption", &[
        o(1, "name", S), k(2, "value", S),
    ]),
    ("core.PodExtendedResourceClaimStatus", &[
        r(1, "requestMappings", M("core.ContainerExtendedResourceRequest")),
        k(2, "resourceClaimName", S),
    ]),
    ("core.PodIP", &[
        k(1, "ip", S),
    ]),
    ("core.PodOS", &[
        k(1, "name", S),
    ]),
    ("core.PodReadinessGate", &[
        k(1, "conditionType", S),
    ]),
    ("core.PodResourceClaim", &[
        k(1, "name", S), k(3, "resourceClaimName", S), k(4, "resourceClaimTemplateName", S),
    ]),
    ("core.PodResourceClaimStatus", &[
        k(1, "name", S), k(2, "resourceClaimName", S),
    ]),
    ("core.PodSchedulingGate", &[
        k(1, "name", S),
    ]),
    ("core.PodSchedulingGroup", &[
        k(1, "podGroupName", S),
    ]),
    ("core.PodSecurityContext", &[
        k(1, "seLinuxOptions", M("core.SELinuxOptions")),
        k(8, "windowsOptions", M("core.WindowsSecurityContextOptions")), k(2, "runAsUser", I64),
        k(6, "runAsGroup", I64), k(3, "runAsNonRoot", B), r(4, "supplementalGroups", I64),
        k(12, "supplementalGroupsPolicy", S), k(5, "fsGroup", I64),
        r(7, "sysctls", M("core.Sysctl")), k(9, "fsGroupChangePolicy", S),
        k(10, "seccompProfile", M("core.SeccompProfile")),
        k(11, "appArmorProfile", M("core.AppArmorProfile")), k(13, "seLinuxChangePolicy", S),
    ]),
    ("core.PodSpec", &[
        r(1, "volumes", M("core.Volume")), r(20, "initContainers", M("core.Container")),
        r(2, "containers", M("core.Container")),
        r(34, "ephemeralContainers", M("core.EphemeralContainer")), o(3, "restartPolicy", S),
        k(4, "terminationGracePeriodSeconds", I64), k(5, "activeDeadlineSeconds", I64),
        o(6, "dnsPolicy", S), m(7, "nodeSelector", S), o(8, "serviceAccountName", S),
        o(9, "serviceAccount", S), k(21, "automountServiceAccountToken", B), o(10, "nodeName", S),
        o(11, "hostNetwork", B), o(12, "hostPID", B), o(13, "hostIPC", B),
        k(27, "shareProcessNamespace", B), k(14, "securityContext", M("core.PodSecurityContext")),
        r(15, "imagePullSecrets", M("core.LocalObjectReference")), o(16, "hostname", S),
        o(17, "subdomain", S), k(18, "affinity", M("core.Affinity")), o(19, "schedulerName", S),
        r(22, "tolerations", M("core.Toleration")), r(23, "hostAliases", M("core.HostAlias")),
        o(24, "priorityClassName", S), k(25, "priority", I32),
        k(26, "dnsConfig", M("core.PodDNSConfig")),
        r(28, "readinessGates", M("core.PodReadinessGate")), k(29, "runtimeClassName", S),
        k(30, "enableServiceLinks", B), k(31, "preemptionPolicy", S), m(32, "overhead", XQuantity),
        r(33, "topologySpreadConstraints", M("core.TopologySpreadConstraint")),
        k(35, "setHostnameAsFQDN", B), k(36, "os", M("core.PodOS")), k(37, "hostUsers", B),
        r(38, "schedulingGates", M("core.PodSchedulingGate")),
        r(39, "resourceClaims", M("core.PodResourceClaim")),
        k(40, "resources", M("core.ResourceRequirements")), k(41, "hostnameOverride", S),
        k(43, "schedulingGroup", M("core.PodSchedulingGroup")),
        r(44, "evictionResponders", M("core.EvictionResponder")),
    ]),
    ("core.PodStatus", &[
        o(17, "observedGeneration", I64), o(1, "phase", S),
        r(2, "conditions", M("core.PodCondition")), o(3, "message", S), o(4, "reason", S),
        o(11, "nominatedNodeName", S), o(5, "hostIP", S), r(16, "hostIPs", M("core.HostIP")),
        o(6, "podIP", S), r(12, "podIPs", M("core.PodIP")), k(7, "startTime", XTime),
        r(10, "initContainerStatuses", M("core.ContainerStatus")),
        r(8, "containerStatuses", M("core.ContainerStatus")), o(9, "qosClass", S),
        r(13, "ephemeralContainerStatuses", M("core.ContainerStatus")), o(14, "resize", S),
        r(15, "resourceClaimStatuses", M("core.PodResourceClaimStatus")),
        k(18, "extendedResourceClaimStatus", M("core.PodExtendedResourceClaimStatus")),
        m(19, "allocatedResources", XQuantity), k(20, "resources", M("core.ResourceRequirements")),
        r(21, "nodeAllocatableResourceClaimStatuses", M("core.NodeAllocatableResourceClaimStatus")),
        r(22, "volumeHealth", M("core.PodVolumeHealth")),
    ]),
    ("core.PodTemplateSpec", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.PodSpec")),
    ]),
    ("core.PodVolumeHealth", &[
        k(1, "name", S), r(2, "healthConditions", M("core.VolumeHealthCondition")),
        o(3, "lastTransitionTime", XTime),
    ]),
    ("core.PortStatus", &[
        k(1, "port", I32), k(2, "protocol", S), k(3, "error", S),
    ]),
    ("core.PortworxVolumeSource", &[
        k(1, "volumeID", S), o(2, "fsType", S), o(3, "readOnly", B),
    ]),
    ("core.PreferredSchedulingTerm", &[
        k(1, "weight", I32), k(2, "preference", M("core.NodeSelectorTerm")),
    ]),
    ("core.Probe", &[
        inl(1, "", M("core.ProbeHandler")), o(2, "initialDelaySeconds", I32),
        o(3, "timeoutSeconds", I32), o(4, "periodSeconds", I32), o(5, "successThreshold", I32),
        o(6, "failureThreshold", I32), k(7, "terminationGracePeriodSeconds", I64),
    ]),
    ("core.ProbeHandler", &[
        k(1, "exec", M("core.ExecAction")), k(2, "httpGet", M("core.HTTPGetAction")),
        k(3, "tcpSocket", M("core.TCPSocketAction")), k(4, "grpc", M("core.GRPCAction")),
    ]),
    ("core.ProjectedVolumeSource", &[
        r(1, "sources", M("core.VolumeProjection")), k(2, "defaultMode", I32),
        k(3, "defaultUser", I64),
    ]),
    ("core.QuobyteVolumeSource", &[
        k(1, "registry", S), k(2, "volume", S), o(3, "readOnly", B), o(4, "user", S),
        o(5, "group", S), o(6, "tenant", S),
    ]),
    ("core.RBDVolumeSource", &[
        r(1, "monitors", S), k(2, "image", S), o(3, "fsType", S), o(4, "pool", S), o(5, "user", S),
        o(6, "keyring", S), k(7, "secretRef", M("core.LocalObjectReference")), o(8, "readOnly", B),
    ]),
    ("core.ResourceClaim", &[
        k(1, "name", S), o(2, "request", S),
    ]),
    ("core.ResourceFieldSelector", &[
        o(1, "containerName", S), k(2, "resource", S), o(3, "divisor", XQuantity),
    ]),
    ("core.ResourceHealth", &[
        k(1, "resourceID", S), o(2, "health", S), k(6, "message", S),
    ]),
    ("core.ResourceRequirements", &[
        m(1, "limits", XQuantity), m(2, "requests", XQuantity),
        r(3, "claims", M("core.ResourceClaim")),
    ]),
    ("core.ResourceStatus", &[
        k(1, "name", S), r(2, "resources", M("core.ResourceHealth")),
    ]),
    ("core.SELinuxOptions", &[
        o(1, "user", S), o(2, "role", S), o(3, "type", S), o(4, "level", S),
    ]),
    ("core.ScaleIOVolumeSource", &[
        k(1, "gateway", S), k(2, "system", S), k(3, "secretRef", M("core.LocalObjectReference")),
        o(4, "sslEnabled", B), o(5, "protectionDomain", S), o(6, "storagePool", S),
        o(7, "storageMode", S), o(8, "volumeName", S), o(9, "fsType", S), o(10, "readOnly", B),
    ]),
    ("core.SeccompProfile", &[
        k(1, "type", S), k(2, "localhostProfile", S),
    ]),
    ("core.Secret", &[
        o(1, "metadata", M("meta.ObjectMeta")), k(5, "immutable", B), m(2, "data", Y),
        m(4, "stringData", S), o(3, "type", S),
    ]),
    ("core.SecretEnvSource", &[
        inl(1, "", M("core.LocalObjectReference")), k(2, "optional", B),
    ]),
    ("core.SecretKeySelector", &[
        inl(1, "", M("core.LocalObjectReference")), k(2, "key", S), k(3, "optional", B),
    ]),
    ("core.SecretProjection", &[
        inl(1, "", M("core.LocalObjectReference")), r(2, "items", M("core.KeyToPath")),
        k(4, "optional", B),
    ]),
    ("core.SecretVolumeSource", &[
        o(1, "secretName", S), r(2, "items", M("core.KeyToPath")), k(3, "defaultMode", I32),
        k(4, "optional", B), k(5, "defaultUser", I64),
    ]),
    ("core.SecurityContext", &[
        k(1, "capabilities", M("core.Capabilities")), k(2, "privileged", B),
        k(3, "seLinuxOptions", M("core.SELinuxOptions")),
        k(10, "windowsOptions", M("core.WindowsSecurityContextOptions")), k(4, "runAsUser", I64),
        k(8, "runAsGroup", I64), k(5, "runAsNonRoot", B), k(6, "readOnlyRootFilesystem", B),
        k(7, "allowPrivilegeEscalation", B), k(9, "procMount", S),
        k(11, "seccompProfile", M("core.SeccompProfile")),
        k(12, "appArmorProfile", M("core.AppArmorProfile")),
    ]),
    ("core.Service", &[
        o(1, "metadata", M("meta.ObjectMeta")), o(2, "spec", M("core.ServiceSpec")),
        o(3, "status", M("core.ServiceStatus")),
    ]),
    ("core.ServiceAccount", &[
        o(1, "metadata", M("meta.ObjectMeta")), r(2, "secrets", M("core.ObjectReference")),
        r(3, "imagePullSecrets", M("core.LocalObjectReference")),
        k(4, "automountServiceAccountToken", B),
    ]),
    ("core.ServiceAccountTokenProjection", &[
        o(1, "audience", S), k(2, "expirationSeconds", I64), k(3, "path", S), k(4, "user", I64),
    ]),
    ("core.ServicePort", &[
        o(1, "name", S), o(2, "protocol", S), k(6, "appProtocol", S), k(3, "port", I32),
        o(4, "targetPort", XIntOrString), o(5, "nodePort", I32),
    ]),
    ("core.ServiceSpec", &[
        r(1, "ports", M("core.ServicePort")), m(2, "selector", S), o(3, "clusterIP", S),
        r(18, "clusterIPs", S), o(4, "type", S), r(5, "externalIPs", S), o(7, "sessionAffinity", S),
        o(8, "loadBalancerIP", S), r(9, "loadBalancerSourceRanges", S), o(10, "externalName", S),
        o(11, "externalTrafficPolicy", S), o(12, "healthCheckNodePort", I32),
        o(13, "publishNotReadyAddresses", B),
        k(14, "sessionAffinityConfig", M("core.SessionAffinityConfig")), r(19, "ipFamilies", S),
        k(17, "ipFamilyPolicy", S), k(20, "allocateLoadBalancerNodePorts", B),
        k(21, "loadBalancerClass", S), k(22, "internalTrafficPolicy", S),
        k(23, "trafficDistribution", S),
    ]),
    ("core.ServiceStatus", &[
        o(1, "loadBalancer", M("core.LoadBalancerStatus")), r(2, "conditions", M("meta.Condition")),
    ]),
    ("core.SessionAffinityConfig", &[
        k(1, "clientIP", M("core.ClientIPConfig")),
    ]),
    ("core.SleepAction", &[
        k(1, "seconds", I64),
    ]),
    ("core.StorageOSVolumeSource", &[
        o(1, "volumeName", S), o(2, "volumeNamespace", S), o(3, "fsType", S), o(4, "readOnly", B),
        k(5, "secretRef", M("core.LocalObjectReference")),
    ]),
    ("core.Sysctl", &[
        k(1, "name", S), k(2, "value", S),
    ]),
    ("core.TCPSocketAction", &[
        k(1, "port", XIntOrString), o(2, "host", S),
    ]),
    ("core.Taint", &[
        k(1, "key", S), o(2, "value", S), k(3, "effect", S), k(4, "timeAdded", XTime),
    ]),
    ("core.Toleration", &[
        o(1, "key", S), o(2, "operator", S), o(3, "value", S), o(4, "effect", S),
        k(5, "tolerationSeconds", I64),
    ]),
    ("core.TopologySpreadConstraint", &[
        k(1, "maxSkew", I32), k(2, "topologyKey", S), k(3, "whenUnsatisfiable", S),
        k(4, "labelSelector", M("meta.LabelSelector")), k(5, "minDomains", I32),
        k(6, "nodeAffinityPolicy", S), k(7, "nodeTaintsPolicy", S), r(8, "matchLabelKeys", S),
    ]),
    ("core.TypedLocalObjectReference", &[
        k(1, "apiGroup", S), k(2, "kind", S), k(3, "name", S),
    ]),
    ("core.TypedObjectReference", &[
        k(1, "apiGroup", S), k(2, "kind", S), k(3, "name", S), k(4, "namespace", S),
    ]),
    ("core.Volume", &[
        k(1, "name", S), inl(2, "", M("core.VolumeSource")),
    ]),
    ("core.VolumeDevice", &[
        k(1, "name", S), k(2, "devicePath", S),
    ]),
    ("core.VolumeHealthCondition", &[
        k(1, "status", S), k(2, "reason", S), o(3, "message", S),
    ]),
    ("core.VolumeHealthStatus", &[
        r(1, "healthConditions", M("core.VolumeHealthCondition")),
        o(2, "lastTransitionTime", XTime),
    ]),
    ("core.VolumeMount", &[
        k(1, "name", S), o(2, "readOnly", B), k(7, "recursiveReadOnly", S), k(3, "mountPath", S),
        o(4, "subPath", S), k(5, "mountPropagation", S), o(6, "subPathExpr", S),
        r(8, "bindMountOptions", S),
    ]),
    ("core.VolumeMountStatus", &[
        k(1, "name", S), k(2, "mountPath", S), o(3, "readOnly", B), k(4, "recursiveReadOnly", S),
        k(5, "volumeStatus", M("core.VolumeStatus")),
    ]),
    ("core.VolumeProjection", &[
        k(1, "secret", M("core.SecretProjection")),
        k(2, "downwardAPI", M("core.DownwardAPIProjection")),
        k(3, "configMap", M("core.ConfigMapProjection")),
        k(4, "serviceAccountToken", M("core.ServiceAccountTokenProjection")),
        k(5, "clusterTrustBundle", M("core.ClusterTrustBundleProjection")),
        k(6, "podCertificate", M("core.PodCertificateProjection")),
    ]),
    ("core.VolumeResourceRequirements", &[
        m(1, "limits", XQuantity), m(2, "requests", XQuantity),
    ]),
    ("core.VolumeSource", &[
        k(1, "hostPath", M("core.HostPathVolumeSource")),
        k(2, "emptyDir", M("core.EmptyDirVolumeSource")),
        k(3, "gcePersistentDisk", M("core.GCEPersistentDiskVolumeSource")),
        k(4, "awsElasticBlockStore", M("core.AWSElasticBlockStoreVolumeSource")),
        k(5, "gitRepo", M("core.GitRepoVolumeSource")),
        k(6, "secret", M("core.SecretVolumeSource")), k(7, "nfs", M("core.NFSVolumeSource")),
        k(8, "iscsi", M("core.ISCSIVolumeSource")),
        k(9, "glusterfs", M("core.GlusterfsVolumeSource")),
        k(10, "persistentVolumeClaim", M("core.PersistentVolumeClaimVolumeSource")),
        k(11, "rbd", M("core.RBDVolumeSource")), k(12, "flexVolume", M("core.FlexVolumeSource")),
        k(13, "cinder", M("core.CinderVolumeSource")),
        k(14, "cephfs", M("core.CephFSVolumeSource")),
        k(15, "flocker", M("core.FlockerVolumeSource")),
        k(16, "downwardAPI", M("core.DownwardAPIVolumeSource")),
        k(17, "fc", M("core.FCVolumeSource")), k(18, "azureFile", M("core.AzureFileVolumeSource")),
        k(19, "configMap", M("core.ConfigMapVolumeSource")),
        k(20, "vsphereVolume", M("core.VsphereVirtualDiskVolumeSource")),
        k(21, "quobyte", M("core.QuobyteVolumeSource")),
        k(22, "azureDisk", M("core.AzureDiskVolumeSource")),
        k(23, "photonPersistentDisk", M("core.PhotonPersistentDiskVolumeSource")),
        k(26, "projected", M("core.ProjectedVolumeSource")),
        k(24, "portworxVolume", M("core.PortworxVolumeSource")),
        k(25, "scaleIO", M("core.ScaleIOVolumeSource")),
        k(27, "storageos", M("core.StorageOSVolumeSource")),
        k(28, "csi", M("core.CSIVolumeSource")),
        k(29, "ephemeral", M("core.EphemeralVolumeSource")),
        k(30, "image", M("core.ImageVolumeSource")),
    ]),
    ("core.VolumeStatus", &[
        k(1, "image", M("core.ImageVolumeStatus")),
    ]),
    ("core.VsphereVirtualDiskVolumeSource", &[
        k(1, "volumePath", S), o(2, "fsType", S), o(3, "storagePolicyName", S),
        o(4, "storagePolicyID", S),
    ]),
    ("core.WeightedPodAffinityTerm", &[
        k(1, "weight", I32), k(2, "podAffinityTerm", M("core.PodAffinityTerm")),
    ]),
    ("core.WindowsSecurityContextOptions", &[
        k(1, "gmsaCredentialSpecName", S), k(2, "gmsaCredentialSpec", S), k(3, "runAsUserName", S),
        k(4, "hostProcess", B),
    ]),
    ("discovery.Endpoint", &[
        r(1, "addresses", S), o(2, "conditions", M("discovery.EndpointConditions")),
        k(3, "hostname", S), k(4, "targetRef", M("core.ObjectReference")),
        m(5, "deprecatedTopology", S), k(6, "nodeName", S), k(7, "zone", S),
        k(8, "hints", M("discovery.EndpointHints")),
    ]),
    ("discovery.EndpointConditions", &[
        k(1, "ready", B), k(2, "serving", B), k(3, "terminating", B),
    ]),
    ("discovery.EndpointHints", &[
        r(1, "forZones", M("discovery.ForZone")), r(2, "forNodes", M("discovery.ForNode")),
    ]),
    ("discovery.EndpointPort", &[
        k(1, "name", S), k(2, "protocol", S), k(3, "port", I32), k(4, "appProtocol", S),
    ]),
    ("discovery.EndpointSlice", &[
        o(1, "metadata", M("meta.ObjectMeta")), k(4, "addressType", S),
        r(2, "endpoints", M("discovery.Endpoint")), r(3, "ports", M("discovery.EndpointPort")),
    ]),
    ("discovery.ForNode", &[
        k(1, "name", S),
    ]),
    ("discovery.ForZone", &[
        k(1, "name", S),
    ]),
    ("meta.Condition", &[
        k(1, "type", S), k(2, "status", S), o(3, "observedGeneration", I64),
        k(4, "lastTransitionTime", XTime), k(5, "reason", S), k(6, "message", S),
    ]),
    ("meta.LabelSelector", &[
        m(1, "matchLabels", S), r(2, "matchExpressions", M("meta.LabelSelectorRequirement")),
    ]),
    ("meta.LabelSelectorRequirement", &[
        k(1, "key", S), k(2, "operator", S), r(3, "values", S),
    ]),
    ("meta.ManagedFieldsEntry", &[
        o(1, "manager", S), o(2, "operation", S), o(3, "apiVersion", S), k(4, "time", XTime),
        o(6, "fieldsType", S), k(7, "fieldsV1", XFieldsV1), o(8, "subresource", S),
    ]),
    ("meta.ObjectMeta", &[
        o(1, "name", S), o(2, "generateName", S), o(3, "namespace", S), o(4, "selfLink", S),
        o(5, "uid", S), o(6, "resourceVersion", S), o(7, "generation", I64),
        o(8, "creationTimestamp", XTime), k(9, "deletionTimestamp", XTime),
        k(10, "deletionGracePeriodSeconds", I64), m(11, "labels", S), m(12, "annotations", S),
        r(13, "ownerReferences", M("meta.OwnerReference")), r(14, "finalizers", S),
        r(17, "managedFields", M("meta.ManagedFieldsEntry")),
    ]),
    ("meta.OwnerReference", &[
        k(5, "apiVersion", S), k(1, "kind", S), k(3, "name", S), k(4, "uid", S),
        k(6, "controller", B), k(7, "blockOwnerDeletion", B),
    ]),
    ("scheduling.TopologyConstraint", &[
        k(1, "key", S),
    ]),
    ("scheduling.WorkloadPodGroupAllDisruptionMode", &[]),
    ("scheduling.WorkloadPodGroupBasicSchedulingPolicy", &[]),
    ("scheduling.WorkloadPodGroupDisruptionMode", &[
        k(1, "single", M("scheduling.WorkloadPodGroupSingleDisruptionMode")),
        k(2, "all", M("scheduling.WorkloadPodGroupAllDisruptionMode")),
    ]),
    ("scheduling.WorkloadPodGroupGangSchedulingPolicy", &[
        k(1, "minCount", I32),
    ]),
    ("scheduling.WorkloadPodGroupResourceClaim", &[
        k(1, "name", S), k(2, "resourceClaimName", S), k(3, "resourceClaimTemplateName", S),
    ]),
    ("scheduling.WorkloadPodGroupSchedulingConstraints", &[
        r(1, "topology", M("scheduling.TopologyConstraint")),
    ]),
    ("scheduling.WorkloadPodGroupSchedulingPolicy", &[
        k(1, "basic", M("scheduling.WorkloadPodGroupBasicSchedulingPolicy")),
        k(2, "gang", M("scheduling.WorkloadPodGroupGangSchedulingPolicy")),
    ]),
    ("scheduling.WorkloadPodGroupSingleDisruptionMode", &[]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A tiny proto2 encoder: each helper returns one encoded field.
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len(field: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, field << 3 | 2);
        varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }

    fn s(field: u64, text: &str) -> Vec<u8> {
        len(field, text.as_bytes())
    }

    fn int(field: u64, value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, field << 3);
        varint(&mut out, value as u64);
        out
    }

    fn msg(field: u64, parts: &[Vec<u8>]) -> Vec<u8> {
        len(field, &parts.concat())
    }

    fn entry(field: u64, key: &str, value: &str) -> Vec<u8> {
        msg(field, &[s(1, key), s(2, value)])
    }

    fn envelope(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(msg(1, &[s(1, api_version), s(2, kind)]));
        out.extend(len(2, &raw.concat()));
        out.extend(s(4, MEDIA_TYPE));
        out
    }

    #[test]
    fn the_table_is_sorted_and_closed() {
        for pair in MESSAGES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (name, fields) in MESSAGES {
            for field in *fields {
                if let Ty::M(inner) = field.ty {
                    assert!(
                        schema(inner).is_some(),
                        "{name}.{} names {inner}",
                        field.json
                    );
                }
                assert_eq!(
                    fields.iter().filter(|f| f.num == field.num).count(),
                    1,
                    "{name} field {}",
                    field.num
                );
            }
        }
        for (_, _, root) in ROOTS {
            assert!(schema(root).is_some(), "{root}");
        }
    }

    #[test]
    fn decodes_a_deployment() {
        let labels = || entry(11, "app", "web");
        let container = msg(
            2,
            &[
                s(1, "busybox"),
                s(2, "windlass.local/busybox:latest"),
                s(3, "httpd"),
                s(3, "-f"),
                s(3, "-p"),
                s(3, "8080"),
                // A non-pointer omitempty string sent empty is absent in JSON.
                s(5, ""),
                msg(8, &[]),
                msg(6, &[int(3, 8080), s(4, "TCP")]),
                // stdin: false, a non-pointer omitempty bool, is dropped.
                int(16, 0),
            ],
        );
        let volume = msg(1, &[s(1, "scratch"), msg(2, &[msg(2, &[])])]);
        let body = envelope(
            "apps/v1",
            "Deployment",
            &[
                msg(
                    1,
                    &[
                        s(1, "web"),
                        s(3, "default"),
                        // The zero time travels as an empty message and is left out.
                        msg(8, &[]),
                        labels(),
                        entry(12, "note", "x"),
                        s(14, "example.com/keep"),
                    ],
                ),
                msg(
                    2,
                    &[
                        int(1, 3),
                        msg(2, &[entry(1, "app", "web")]),
                        msg(3, &[msg(1, &[labels()]), msg(2, &[container, volume])]),
                        msg(
                            4,
                            &[
                                s(1, "RollingUpdate"),
                                msg(
                                    2,
                                    &[
                                        msg(1, &[int(1, 0), int(2, 0)]),
                                        msg(2, &[int(1, 1), s(3, "25%")]),
                                    ],
                                ),
                            ],
                        ),
                        int(6, 0),
                        int(9, -1),
                    ],
                ),
                msg(3, &[]),
            ],
        );
        let object = decode(&body).expect("decode");
        assert_eq!(
            object,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "namespace": "default",
                    "labels": {"app": "web"},
                    "annotations": {"note": "x"},
                    "finalizers": ["example.com/keep"],
                },
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "busybox",
                                "image": "windlass.local/busybox:latest",
                                "command": ["httpd", "-f", "-p", "8080"],
                                "resources": {},
                                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            }],
                            "volumes": [{"name": "scratch", "emptyDir": {}}],
                        },
                    },
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                    },
                    // Pointers present with zero or negative values are kept.
                    "revisionHistoryLimit": 0,
                    "progressDeadlineSeconds": -1,
                },
                "status": {},
            })
        );
    }

    #[test]
    fn decodes_a_service_with_numeric_and_named_target_ports() {
        let body = envelope(
            "v1",
            "Service",
            &[
                msg(1, &[s(1, "web"), msg(8, &[int(1, 1_700_000_000)])]),
                msg(
                    2,
                    &[
                        msg(
                            1,
                            &[s(2, "TCP"), int(3, 80), msg(4, &[int(1, 0), int(2, 8080)])],
                        ),
                        msg(
                            1,
                            &[
                                s(1, "admin"),
                                int(3, 81),
                                msg(4, &[int(1, 1), s(3, "admin")]),
                            ],
                        ),
                        entry(2, "app", "web"),
                        s(4, "ClusterIP"),
                        s(7, "None"),
                    ],
                ),
            ],
        );
        assert_eq!(
            decode(&body).expect("decode"),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "creationTimestamp": "2023-11-14T22:13:20Z"},
                "spec": {
                    "ports": [
                        {"protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "admin", "port": 81, "targetPort": "admin"},
                    ],
                    "selector": {"app": "web"},
                    "type": "ClusterIP",
                    "sessionAffinity": "None",
                },
            })
        );
    }

    #[test]
    fn secret_data_is_base64_and_probe_handlers_are_inlined() {
        let secret = envelope(
            "v1",
            "Secret",
            &[msg(1, &[s(1, "s")]), entry(2, "p", "q"), s(3, "Opaque")],
        );
        assert_eq!(
            decode(&secret).expect("decode"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "data": {"p": "cQ=="}, "type": "Opaque"})
        );
        let probe = msg(
            10,
            &[
                msg(
                    1,
                    &[msg(
                        2,
                        &[s(1, "/healthz"), msg(2, &[int(1, 0), int(2, 8080)])],
                    )],
                ),
                int(4, 5),
            ],
        );
        let pod = envelope("v1", "Pod", &[msg(2, &[msg(2, &[s(1, "c"), probe])])]);
        assert_eq!(
            decode(&pod).expect("decode")["spec"]["containers"][0]["livenessProbe"],
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5})
        );
    }

    #[test]
    fn unknown_fields_and_types_are_errors_naming_them() {
        let body = envelope("apps/v1", "Deployment", &[msg(2, &[int(99, 1)])]);
        let error = decode(&body).expect_err("unknown field");
        assert_eq!(
            error.to_string(),
            "unknown field number 99 in protobuf message apps.DeploymentSpec"
        );
        let body = envelope("example.com/v1", "Widget", &[]);
        let error = decode(&body).expect_err("unknown type");
        assert!(
            error.to_string().contains("Widget (example.com/v1)"),
            "{error}"
        );
        assert!(matches!(decode(b"{}"), Err(ProtobufError::NoMagic)));
        let mut truncated = envelope("v1", "ConfigMap", &[msg(1, &[s(1, "c")])]);
        truncated.truncate(truncated.len() - 30);
        assert!(decode(&truncated).is_err());
    }

    #[test]
    fn decodes_a_cron_job_with_its_job_template() {
        let pod_spec = msg(
            2,
            &[msg(2, &[s(1, "j"), s(2, "x"), s(3, "true")]), s(3, "Never")],
        );
        let body = envelope(
            "batch/v1",
            "CronJob",
            &[
                msg(1, &[s(1, "cj")]),
                msg(
                    2,
                    &[
                        s(1, "* * * * *"),
                        msg(5, &[msg(1, &[s(1, "cj")]), msg(2, &[msg(6, &[pod_spec])])]),
                        // suspend: false is a pointer and stays.
                        int(4, 0),
                    ],
                ),
            ],
        );
        assert_eq!(
            decode(&body).expect("decode"),
            json!({
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "cj"},
                "spec": {
                    "schedule": "* * * * *",
                    "suspend": false,
                    "jobTemplate": {
                        "metadata": {"name": "cj"},
                        "spec": {"template": {"spec": {
                            "containers": [{"name": "j", "image": "x", "command": ["true"]}],
                            "restartPolicy": "Never",
                        }}},
                    },
                },
            })
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_500_000_000), "1m30.5s");
        assert_eq!(go_duration(-2_000), "-2µs");
    }
}
