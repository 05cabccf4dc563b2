//! JSON log lines whose field values are real JSON: numbers as numbers,
//! lists as arrays. tracing-subscriber's own JSON format writes every
//! `?value` as a string of Rust debug text, and `valuable` is unstable, so
//! list-valued fields are wrapped in `Json` and this formatter embeds them.
//!
//! The line layout is tracing-subscriber's: `timestamp`, `level`, `fields`
//! (with `message`), `target`.
//!
//! Text logs (`TextFields`) and the messages `main` prints escape control
//! characters (`Escaped`): a node name, a YAML key or a discovered address
//! comes from outside, and a newline in it would forge a log line, an ESC
//! would drive the reader's terminal. JSON escapes them by itself.

use std::cell::Cell;
use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

thread_local! {
    /// Set by `Json`'s `Debug`, read right after by the visitor on the same
    /// thread: how a `&dyn Debug` says "my text is JSON" without downcasts.
    static IS_JSON: Cell<bool> = const { Cell::new(false) };
}

/// An error and its causes, joined by ": " as anyhow's `{:#}` prints
/// them: for the places that print an error without anyhow (logs,
/// `/status`). Each message gives context only, so each cause shows once.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// `T`'s text with control characters escaped as Rust writes them (`\n`,
/// `\u{1b}`), and the Unicode line and paragraph separators too (YAML and
/// some terminals break lines there): one line of text, inert in a
/// terminal, whatever `T` holds.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        write!(EscapeControls(f), "{}", self.0)
    }
}

/// Whether `c` is escaped in text meant for one line of a terminal.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Passes text on with `is_unsafe_char` characters escaped.
struct EscapeControls<W>(W);

impl<W: fmt::Write> fmt::Write for EscapeControls<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(is_unsafe_char) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            for e in c.escape_debug() {
                self.0.write_char(e)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// A `Debug` value's text, as `Display`.
struct DebugText<'a>(&'a dyn fmt::Debug);

impl fmt::Display for DebugText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The fields of a text log line, as tracing-subscriber's default writes
/// them (the message, then ` name=value`, names in italics on a terminal),
/// with every value and the message `Escaped`.
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut v = TextVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct TextVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Fields `tracing-log` adds to bridged `log` records.
        if name.starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let value = Escaped(DebugText(value));
        let w = &mut self.writer;
        self.result = if name == "message" {
            write!(w, "{sep}{value}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            if w.has_ansi_escapes() {
                // tracing-subscriber's own styles: italic name, dimmed `=`.
                write!(w, "{sep}\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{value}")
            } else {
                write!(w, "{sep}{name}={value}")
            }
        };
    }
}

/// A field value logged as JSON: `tracing::info!(upstreams = ?Json(&list))`.
/// Text logs show the compact JSON text; JSON logs embed the value.
pub(crate) struct Json<T>(pub T);

impl<T: serde::Serialize> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(text) => {
                IS_JSON.with(|m| m.set(true));
                f.write_str(&text)
            }
            // Serializing plain lists and strings cannot fail; say so if it did.
            Err(_) => f.write_str("\"(unserializable)\""),
        }
    }
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
pub(crate) struct Fields(pub Map<String, Value>);

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        self.0.insert(field.name().to_string(), v);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        IS_JSON.with(|m| m.set(false));
        let text = format!("{value:?}");
        let v = if IS_JSON.with(|m| m.replace(false)) {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        self.put(field, v);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
}

/// The JSON event formatter (`--log-format json`).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        writeln!(
            writer,
            "{}",
            line(&timestamp, meta.level().as_str(), fields.0, meta.target())
        )
    }
}

fn line(timestamp: &str, level: &str, fields: Map<String, Value>, target: &str) -> String {
    // Written by hand to keep tracing-subscriber's key order.
    let s = |v: &str| Value::from(v).to_string();
    format!(
        "{{\"timestamp\":{},\"level\":{},\"fields\":{},\"target\":{}}}",
        s(timestamp),
        s(level),
        Value::Object(fields),
        s(target)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log text written by a subscriber, for tests to read.
    #[derive(Clone, Default)]
    pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        /// Text log lines of this thread's events (a current-thread
        /// runtime runs every control-plane task on it) while the guard
        /// lives.
        pub(crate) fn capture() -> (tracing::subscriber::DefaultGuard, Logs) {
            let logs = Logs::default();
            let w = logs.clone();
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || w.clone())
                .finish();
            (tracing::subscriber::set_default(sub), logs)
        }

        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        pub(crate) fn lines(&self, needle: &str) -> Vec<String> {
            self.text()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect()
        }
    }

    /// Captures what the formatter writes for events logged in `f`.
    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let logs = Logs::default();
        let out = logs.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        logs.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn escaped_text_is_one_inert_line() {
        let raw = "node\n2026-01-01T00:00:00Z ERROR forged\x1b[31m\r\t\u{7f}\u{85}\u{2028}é✓";
        let e = Escaped(raw).to_string();
        assert_eq!(
            e,
            "node\\n2026-01-01T00:00:00Z ERROR forged\\u{1b}[31m\\r\\t\\u{7f}\\u{85}\\u{2028}é✓"
        );
        assert!(!e.chars().any(is_unsafe_char), "{e}");
        assert_eq!(
            Escaped("plain \"text\" \\ kept").to_string(),
            "plain \"text\" \\ kept"
        );
    }

    /// Text lines escape control characters in the message and in every
    /// kind of value; the layout is tracing-subscriber's own.
    #[test]
    fn text_fields_escape_messages_and_values() {
        let logs = Logs::default();
        let out = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(TextFields)
            .with_writer(move || out.clone())
            .finish();
        let evil = "n1\nFORGED\x1b[31m";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(node_id = %evil, debug = ?evil, count = 3u64, list = ?Json(&[evil]), "started {evil}");
        });
        let text = logs.text();
        print!("{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains(
                r#"started n1\nFORGED\u{1b}[31m node_id=n1\nFORGED\u{1b}[31m debug="n1\nFORGED\u{1b}[31m" count=3 list=["n1\nFORGED\u001b[31m"]"#
            ),
            "{text}"
        );
    }

    #[test]
    fn lists_and_numbers_are_json_values() {
        let ups = vec!["127.0.0.1:1", "127.0.0.1:2"];
        let got = capture(|| {
            tracing::info!(upstreams = ?Json(&ups), open = 3u64, ok = true, name = %"a\"b", plain = ?"x", "hello");
        });
        assert_eq!(got.len(), 1);
        let f = &got[0]["fields"];
        assert_eq!(
            f["upstreams"],
            serde_json::json!(["127.0.0.1:1", "127.0.0.1:2"])
        );
        assert_eq!(f["open"], 3);
        assert_eq!(f["ok"], true);
        assert_eq!(f["name"], "a\"b");
        // Debug text that is not marked stays a string, even if it parses.
        assert_eq!(f["plain"], "\"x\"");
        assert_eq!(f["message"], "hello");
        assert_eq!(got[0]["level"], "INFO");
        assert!(got[0]["timestamp"].as_str().unwrap().contains('T'));
        assert_eq!(got[0]["target"], module_path!());
    }
}
