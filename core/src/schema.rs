//! Validation of `tools/call` arguments against the tool's advertised `inputSchema`, at the
//! gateway (opt-in: `validate_arguments` of the document). A practical subset of JSON Schema:
//! `type` (one or a list), `enum`, `const`, `properties`, `required`, `additionalProperties: false`,
//! `items`. A schema node using anything this subset cannot decide (`$ref`, `anyOf`, `oneOf`,
//! `allOf`, `not`, `if`) accepts any value there: the upstream still validates. The first failure
//! is reported with its path (`arguments.owner`, `arguments.tags[2]`) as -32602.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Deepest schema nesting read; deeper nodes accept anything.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Kind::Null,
            "boolean" => Kind::Boolean,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "string" => Kind::String,
            "array" => Kind::Array,
            "object" => Kind::Object,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }

    /// The kind of a raw JSON value (numbers with an integral value count as integers too).
    fn of(raw: &str) -> (Self, bool) {
        match raw.trim_start().as_bytes().first() {
            Some(b'{') => (Kind::Object, false),
            Some(b'[') => (Kind::Array, false),
            Some(b'"') => (Kind::String, false),
            Some(b't' | b'f') => (Kind::Boolean, false),
            Some(b'n') => (Kind::Null, false),
            _ => {
                let integral = raw.trim().parse::<f64>().is_ok_and(|n| n.fract() == 0.0);
                (Kind::Number, integral)
            }
        }
    }
}

/// A compiled schema node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// `None`: any value (no `type`, or a node this subset does not decide).
    types: Option<Vec<Kind>>,
    any: bool,
    /// Allowed values (`enum`, `const`), as canonical JSON texts.
    values: Option<Vec<String>>,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    closed: bool,
    items: Option<Box<Schema>>,
}

#[derive(Deserialize)]
struct Node<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "enum")]
    values: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow, rename = "const")]
    constant: Option<&'a RawValue>,
    #[serde(default, borrow)]
    properties: Option<BTreeMap<String, &'a RawValue>>,
    #[serde(default)]
    required: Option<Vec<String>>,
    #[serde(default, borrow, rename = "additionalProperties")]
    additional: Option<&'a RawValue>,
    #[serde(default, borrow)]
    items: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "$ref")]
    reference: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "anyOf")]
    any_of: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "oneOf")]
    one_of: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "allOf")]
    all_of: Option<&'a RawValue>,
    #[serde(default, borrow)]
    not: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "if")]
    condition: Option<&'a RawValue>,
}

/// Canonical text of a scalar (strings decoded and re-encoded), for `enum` comparisons.
fn canonical(raw: &str) -> String {
    match serde_json::from_str::<String>(raw) {
        Ok(s) => crate::jsonrpc::json_string(&s),
        Err(_) => raw.trim().to_owned(),
    }
}

impl Schema {
    /// Compiles `raw` (a schema); anything unreadable accepts everything.
    pub fn compile(raw: &str) -> Self {
        Self::node(raw, 0)
    }

    fn node(raw: &str, depth: usize) -> Self {
        let any = Self {
            any: true,
            ..Self::default()
        };
        if depth > MAX_DEPTH {
            return any;
        }
        let Ok(node) = serde_json::from_str::<Node>(raw) else {
            return any;
        };
        if node.reference.is_some()
            || node.any_of.is_some()
            || node.one_of.is_some()
            || node.all_of.is_some()
            || node.not.is_some()
            || node.condition.is_some()
        {
            return any;
        }
        let types = node.kind.and_then(|k| {
            let names: Vec<String> = serde_json::from_str::<String>(k.get())
                .map(|one| vec![one])
                .or_else(|_| serde_json::from_str(k.get()))
                .ok()?;
            names.iter().map(|n| Kind::parse(n)).collect()
        });
        let values = match (node.values, node.constant) {
            (_, Some(c)) => Some(vec![canonical(c.get())]),
            (Some(v), None) => Some(v.iter().map(|r| canonical(r.get())).collect()),
            (None, None) => None,
        };
        Self {
            types,
            any: false,
            values,
            properties: node
                .properties
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, Self::node(v.get(), depth + 1)))
                .collect(),
            required: node.required.unwrap_or_default(),
            closed: node.additional.is_some_and(|a| a.get().trim() == "false"),
            items: node.items.map(|i| Box::new(Self::node(i.get(), depth + 1))),
        }
    }

    /// Checks the raw value at `path`; the error names the failing path.
    pub fn check(&self, raw: &str, path: &str) -> Result<(), String> {
        if self.any {
            return Ok(());
        }
        let (kind, integral) = Kind::of(raw);
        if let Some(types) = &self.types {
            let ok = types.iter().any(|t| {
                *t == kind
                    || (*t == Kind::Integer && kind == Kind::Number && integral)
                    || (*t == Kind::Number && kind == Kind::Number)
            });
            if !ok {
                let wanted: Vec<&str> = types.iter().map(|t| t.name()).collect();
                return Err(format!(
                    "{path}: expected {}, got {}",
                    wanted.join(" or "),
                    kind.name()
                ));
            }
        }
        if let Some(values) = &self.values {
            if !values.contains(&canonical(raw)) {
                return Err(format!("{path}: must be one of {}", values.join(", ")));
            }
        }
        match kind {
            Kind::Object => {
                let members: BTreeMap<String, &RawValue> =
                    serde_json::from_str(raw).map_err(|_| format!("{path}: not an object"))?;
                for name in &self.required {
                    if !members.contains_key(name) {
                        return Err(format!("{path}.{name}: is required"));
                    }
                }
                for (name, value) in &members {
                    match self.properties.iter().find(|(p, _)| p == name) {
                        Some((_, schema)) => {
                            schema.check(value.get(), &format!("{path}.{name}"))?
                        }
                        None if self.closed => {
                            return Err(format!("{path}.{name}: is not allowed"))
                        }
                        None => {}
                    }
                }
            }
            Kind::Array => {
                if let Some(items) = &self.items {
                    let elements: Vec<&RawValue> =
                        serde_json::from_str(raw).map_err(|_| format!("{path}: not an array"))?;
                    for (i, element) in elements.iter().enumerate() {
                        items.check(element.get(), &format!("{path}[{i}]"))?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Schema;

    #[test]
    fn the_subset_names_the_failing_path() {
        let s = Schema::compile(
            r#"{"type":"object","properties":{"a":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}},"mode":{"enum":["r","w"]}},"required":["a"],"additionalProperties":false}"#,
        );
        assert!(s
            .check(r#"{"a":1,"tags":["x"],"mode":"r"}"#, "arguments")
            .is_ok());
        assert!(s.check(r#"{"a":2.0}"#, "arguments").is_ok());
        for (args, err) in [
            (r#"{}"#, "arguments.a: is required"),
            (r#"{"a":"1"}"#, "arguments.a: expected integer, got string"),
            (r#"{"a":1.5}"#, "arguments.a: expected integer, got number"),
            (
                r#"{"a":1,"tags":["x",2]}"#,
                "arguments.tags[1]: expected string, got number",
            ),
            (r#"{"a":1,"mode":"x"}"#, "arguments.mode: must be one of"),
            (r#"{"a":1,"zzz":true}"#, "arguments.zzz: is not allowed"),
            (r#"[1]"#, "arguments: expected object, got array"),
        ] {
            let e = s.check(args, "arguments").unwrap_err();
            assert!(e.starts_with(err), "{args}: {e}");
        }
        // What the subset cannot decide accepts anything.
        let loose = Schema::compile(
            r#"{"type":"object","properties":{"x":{"anyOf":[{"type":"string"}]}}}"#,
        );
        assert!(loose.check(r#"{"x":5}"#, "arguments").is_ok());
        assert!(Schema::compile("not json").check("5", "arguments").is_ok());
    }
}
