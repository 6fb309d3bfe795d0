//! Walking an OpenAPI schema (a CRD's `openAPIV3Schema`) node by node (pure). Part of
//! `common`, and included by path (`#[path = "common/schema.rs"] mod schema;`) from test
//! files that need none of the rest of it.

use serde_json::Value;

/// Calls `visit(path, node)` for every node of `node`: the root as `path`, then
/// `<path>.<property>`, `<path>[]` for list items and `<path>{}` for map values.
pub fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(&format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}
