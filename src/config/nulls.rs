//! One rule for empty values: a key written with no value (`admin:`, or a
//! section whose settings are all commented out) is refused, naming the key
//! and how to say what was meant. YAML reads such a key as null, and
//! serde would turn null into "off" for some fields and a default for
//! others; for the one program between a node and its API servers, a
//! half-deleted edit must not silently disable a feature.

use serde_yaml_ng::Value;

/// The first null value in the document, as `(field path, advice)`.
pub(super) fn find_null(doc: &Value) -> Option<(String, String)> {
    let mut path = String::new();
    walk(doc, &mut path)
}

fn walk(v: &Value, path: &mut String) -> Option<(String, String)> {
    match v {
        Value::Null if !path.is_empty() => Some((path.clone(), advice(path))),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            let len = path.len();
            let key = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
            };
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            let found = walk(v, path);
            path.truncate(len);
            found
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = walk(v, path);
            path.truncate(len);
            found
        }),
        Value::Tagged(t) => walk(&t.value, path),
        _ => None,
    }
}

fn advice(path: &str) -> String {
    let what = match path {
        "admin" => {
            "remove the line to use the default 127.0.0.1:8081, or write `admin: off` to turn the admin endpoint off"
        }
        "health_check" => {
            "its settings are missing or commented out; remove the section to turn active health checks off, or give its settings"
        }
        "health_check.tls" => "remove the line to use no TLS options, or give them",
        "hash" => "remove the line to use the defaults, or give its settings",
        "upstreams" => "list at least one upstream",
        _ if path.ends_with(']') => "remove the empty list item",
        _ => "remove the line to use the default, or give a value",
    };
    format!("has no value (an empty value is never taken as \"off\" or a default): {what}")
}

#[cfg(test)]
mod tests {
    use super::find_null;

    fn null_in(text: &str) -> Option<String> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        find_null(&doc).map(|(p, _)| p)
    }

    #[test]
    fn finds_the_path_of_the_first_null() {
        assert_eq!(null_in("admin:\n"), Some("admin".into()));
        assert_eq!(
            null_in("health_check:\n  # mode: tcp\n"),
            Some("health_check".into())
        );
        assert_eq!(null_in("a:\n  b:\n    c: ~\n"), Some("a.b.c".into()));
        assert_eq!(null_in("u:\n  - x: 1\n  -\n"), Some("u[1]".into()));
        assert_eq!(
            null_in("u:\n  - x: 1\n    y: null\n"),
            Some("u[0].y".into())
        );
        assert_eq!(null_in("a: 1\nb: [x, {c: d}]\n"), None);
        assert_eq!(null_in(""), None, "an empty document is reported elsewhere");
    }
}
