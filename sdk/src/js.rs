//! JavaScript's `JSON.stringify`, for formats whose receivers parse the body
//! and re-serialise it before checking the signature
//! (`JSON.stringify(req.body)`). A body written by [`stringify`] survives
//! that round trip byte for byte, because it already is what
//! `JSON.stringify(JSON.parse(body))` produces:
//!
//! - numbers as JavaScript prints them (`1500.00` → `1500`, `1e21` → `1e+21`,
//!   integers past 2^53 rounded, `-0` → `0`, overflow → `null`);
//! - object keys in JavaScript's order: array-index keys (`"0"`, `"42"`) first,
//!   ascending, then the others in their order;
//! - strings escaped as `JSON.stringify` escapes them.

use serde_json::{Map, Value};

/// `JSON.stringify(JSON.parse(text))` for the JSON that `value` holds.
pub fn stringify(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    // JSON.parse reads every number as an f64.
    let f: f64 = n.to_string().parse().unwrap_or(f64::NAN);
    if !f.is_finite() {
        out.push_str("null");
    } else if f == 0.0 {
        out.push('0');
    } else {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A key JavaScript treats as an array index: a canonical decimal below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    let n: u32 = key.parse().ok()?;
    (n != u32::MAX && n.to_string() == key).then_some(n)
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut indexed: Vec<(u32, &String, &Value)> = Vec::new();
    let mut named: Vec<(&String, &Value)> = Vec::new();
    for (k, v) in map {
        match array_index(k) {
            Some(i) => indexed.push((i, k, v)),
            None => named.push((k, v)),
        }
    }
    indexed.sort_by_key(|(i, _, _)| *i);
    out.push('{');
    let entries = indexed.into_iter().map(|(_, k, v)| (k, v)).chain(named);
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(text: &str) -> String {
        stringify(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn numbers_print_as_javascript_does() {
        assert_eq!(
            js("[1500.00, 1e21, 1e-7, 123e-20, -0, 0.1, 100, 1.5e300]"),
            "[1500,1e+21,1e-7,1.23e-18,0,0.1,100,1.5e+300]"
        );
        assert_eq!(
            js("[12345678901234567890, 9007199254740993, 1e400]"),
            "[12345678901234567000,9007199254740992,null]"
        );
        assert_eq!(
            js("[0.000001, 123456789012345680000]"),
            "[0.000001,123456789012345680000]"
        );
    }

    #[test]
    fn keys_follow_javascript_order() {
        assert_eq!(
            js(r#"{"b":1,"10":2,"a":3,"2":4,"01":5,"4294967295":6}"#),
            r#"{"2":4,"10":2,"b":1,"a":3,"01":5,"4294967295":6}"#
        );
        assert_eq!(js(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn strings_escape_as_javascript_does() {
        assert_eq!(
            js(r#"["\u00e9\u2028/\"\\\b\f\n\r\t\u0001\u001f", "😀"]"#),
            "[\"é\u{2028}/\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\",\"😀\"]"
        );
        assert_eq!(
            js(r#"{ "spaced" : [ true , null ] }"#),
            r#"{"spaced":[true,null]}"#
        );
    }
}
