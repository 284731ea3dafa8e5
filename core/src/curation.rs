//! Curated tools: per-tool overrides from configuration. A tool can be hidden (neither listed nor
//! callable), renamed, given another description, and have arguments pinned: a pinned argument
//! is removed from the advertised `inputSchema` (properties and `required`) and injected into every
//! call's `arguments`, whatever the client sent for it, so a model cannot change it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `tool_overrides[]` of the configuration document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOverride {
    /// The server's name.
    pub server: String,
    /// The tool's name upstream, or `*` for every tool of the server (then only `pin` and
    /// `hidden` apply).
    pub tool: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// The name clients see instead of `<prefix><tool>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Arguments fixed by the gateway (JSON values, kept raw: no JSON tree in the plugin).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pin: BTreeMap<String, Box<RawValue>>,
}

/// What the overrides make of one tool.
#[derive(Debug, Default)]
pub struct Curated {
    pub hidden: bool,
    pub name: Option<String>,
    /// The rewritten definition (upstream name still in it), when it changed.
    pub definition: Option<String>,
    /// Pinned arguments: name and JSON value.
    pub pins: Vec<(String, String)>,
}

/// Applies the overrides of `server`'s tool `tool` (its definition `text`); `None` when none
/// applies. `at` names the tool for errors.
pub fn curate(
    overrides: &[ToolOverride],
    server: &str,
    tool: &str,
    text: &str,
    at: &str,
) -> Result<Option<Curated>, String> {
    let mut curated = Curated::default();
    let mut any = false;
    let mut description = None;
    let mut pins: BTreeMap<&str, &RawValue> = BTreeMap::new();
    // `*` first, so a tool's own override wins.
    for exact in [false, true] {
        for o in overrides.iter().filter(|o| o.server == server) {
            if (o.tool == tool) != exact || (!exact && o.tool != "*") {
                continue;
            }
            any = true;
            curated.hidden |= o.hidden;
            if exact {
                if o.name.is_some() {
                    curated.name.clone_from(&o.name);
                }
                if o.description.is_some() {
                    description = o.description.as_deref();
                }
            }
            for (k, v) in &o.pin {
                pins.insert(k, v);
            }
        }
    }
    if !any {
        return Ok(None);
    }
    if description.is_some() || !pins.is_empty() {
        // Objects edited member by member, values kept raw (no JSON tree in the plugin).
        type Object = BTreeMap<String, Box<RawValue>>;
        let bad = |e: serde_json::Error| format!("{at}: {e}");
        let raw = |text: String| RawValue::from_string(text).map_err(bad);
        let mut definition: Object = serde_json::from_str(text).map_err(bad)?;
        if let Some(d) = description {
            definition.insert("description".into(), raw(crate::jsonrpc::json_string(d))?);
        }
        if let Some(schema_raw) = definition.get("inputSchema") {
            if let Ok(mut schema) = serde_json::from_str::<Object>(schema_raw.get()) {
                if let Some(props) = schema.get("properties") {
                    if let Ok(mut props) = serde_json::from_str::<Object>(props.get()) {
                        for name in pins.keys() {
                            props.remove(*name);
                        }
                        schema.insert("properties".into(), raw(render(&props))?);
                    }
                }
                if let Some(required) = schema.get("required") {
                    if let Ok(mut required) = serde_json::from_str::<Vec<String>>(required.get()) {
                        required.retain(|r| !pins.contains_key(r.as_str()));
                        let items: Vec<String> = required
                            .iter()
                            .map(|r| crate::jsonrpc::json_string(r))
                            .collect();
                        schema.insert("required".into(), raw(format!("[{}]", items.join(",")))?);
                    }
                }
                definition.insert("inputSchema".into(), raw(render(&schema))?);
            }
        }
        curated.definition = Some(render(&definition));
    }
    curated.pins = pins
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.get().to_owned()))
        .collect();
    Ok(Some(curated))
}

/// An object of raw members as JSON text (rendered by hand: no serializer in the plugin).
fn render(object: &BTreeMap<String, Box<RawValue>>) -> String {
    let members: Vec<String> = object
        .iter()
        .map(|(k, v)| format!("{}:{}", crate::jsonrpc::json_string(k), v.get()))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The call's `arguments` with the pinned ones set (the client's values for them dropped).
/// `client`: the raw `arguments` the client sent, if any; `Err` when it is not an object.
pub fn pinned_arguments(
    client: Option<&RawValue>,
    pins: &[(String, String)],
) -> Result<String, String> {
    let mut members: Vec<(String, Box<RawValue>)> = match client {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => {
            let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(raw.get())
                .map_err(|_| "arguments must be an object".to_owned())?;
            map.into_iter().collect()
        }
    };
    members.retain(|(k, _)| !pins.iter().any(|(p, _)| p == k));
    let mut out = String::from("{");
    let client_members = members
        .iter()
        .map(|(k, v)| (crate::jsonrpc::json_string(k), v.get().to_owned()));
    let pinned = pins
        .iter()
        .map(|(k, v)| (crate::jsonrpc::json_string(k), v.clone()));
    for (i, (k, v)) in client_members.chain(pinned).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&k);
        out.push(':');
        out.push_str(&v);
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn o(json: &str) -> ToolOverride {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pins_leave_the_schema_and_override_the_client() {
        let overrides = [
            o(r#"{"server":"gh","tool":"*","pin":{"owner":"my-org"}}"#),
            o(r#"{"server":"gh","tool":"list","name":"repos","description":"Our repos"}"#),
        ];
        let text = r#"{"name":"list","description":"x","inputSchema":{"type":"object","properties":{"owner":{"type":"string"},"q":{"type":"string"}},"required":["owner","q"]}}"#;
        let c = curate(&overrides, "gh", "list", text, "t")
            .unwrap()
            .unwrap();
        assert_eq!(c.name.as_deref(), Some("repos"));
        let d: Value = serde_json::from_str(c.definition.as_deref().unwrap()).unwrap();
        assert_eq!(d["description"], "Our repos");
        assert!(d["inputSchema"]["properties"].get("owner").is_none());
        assert_eq!(d["inputSchema"]["required"], serde_json::json!(["q"]));
        assert_eq!(c.pins, [("owner".to_owned(), "\"my-org\"".to_owned())]);
        assert!(curate(&overrides, "other", "list", text, "t")
            .unwrap()
            .is_none());

        let raw: Box<RawValue> = serde_json::from_str(r#"{"q":"x","owner":"evil"}"#).unwrap();
        let args: Value =
            serde_json::from_str(&pinned_arguments(Some(&raw), &c.pins).unwrap()).unwrap();
        assert_eq!(args, serde_json::json!({"q": "x", "owner": "my-org"}));
        assert_eq!(
            pinned_arguments(None, &c.pins).unwrap(),
            r#"{"owner":"my-org"}"#
        );
        let bad: Box<RawValue> = serde_json::from_str("[1]").unwrap();
        assert!(pinned_arguments(Some(&bad), &c.pins).is_err());
    }
}
