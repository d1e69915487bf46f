//! What event data the engine accepts, checked once at ingest (triggers,
//! batches, test events, dry runs): a JSON object nested at most
//! [`MAX_DEPTH`] levels deep whose strings are Unicode, so no lone surrogate
//! escape such as `"\ud800"`.
//!
//! Invariant: data that passes [`check`] parses into a `serde_json::Value`
//! (whose recursion limit is 128) everywhere it is read again: payload
//! filters, plugins (which parse it with their own JSON library), and the
//! API's views. JSON itself allows lone surrogates, but no reader that
//! decodes strings can represent them, so they are refused at the door
//! instead of failing later where nobody can answer.

/// Deepest nesting of objects and arrays event data may have.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataError {
    #[error("must be a JSON object")]
    NotAnObject,
    #[error("nested deeper than {MAX_DEPTH} levels (at byte {0})")]
    TooDeep(usize),
    #[error(
        "holds a lone surrogate escape \\u{0:04x} at byte {1}; JSON strings must be valid Unicode (a surrogate pair is fine)"
    )]
    LoneSurrogate(u32, usize),
}

/// Checks JSON text already known to be well formed (it was parsed as a
/// `RawValue`). One pass over the bytes; allocates nothing.
pub fn check(json: &str) -> Result<(), DataError> {
    let bytes = json.as_bytes();
    if bytes.first() != Some(&b'{') {
        return Err(DataError::NotAnObject);
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DataError::TooDeep(i));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => i = string_end(bytes, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the quote closing the string that starts at `i`, checking
/// its `\u` escapes pair up.
fn string_end(bytes: &[u8], mut i: usize) -> Result<usize, DataError> {
    // A high surrogate seen just before, waiting for its low half.
    let mut high: Option<(u32, usize)> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => break,
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex4(&bytes[i + 2..]).unwrap_or(0);
                match (unit, high.take()) {
                    (0xDC00..=0xDFFF, Some(_)) => {}
                    (0xDC00..=0xDFFF, None) => return Err(DataError::LoneSurrogate(unit, i)),
                    (_, Some((h, at))) => return Err(DataError::LoneSurrogate(h, at)),
                    (0xD800..=0xDBFF, None) => high = Some((unit, i)),
                    _ => {}
                }
                i += 6;
                continue;
            }
            b'\\' => i += 1,
            _ => {}
        }
        if let Some((h, at)) = high.take() {
            return Err(DataError::LoneSurrogate(h, at));
        }
        i += 1;
    }
    match high {
        Some((h, at)) => Err(DataError::LoneSurrogate(h, at)),
        None => Ok(i),
    }
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes.get(..4)?).ok()?;
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_every_reader_can_parse() {
        for ok in [
            r#"{}"#,
            r#"{"a": "\ud83d\ude00", "b": "\u00e9\n\\u", "c": [1, {"d": null}]}"#,
            r#"{"brackets in strings": "[[[[{{{{", "quote": "\"\\\""}"#,
            "{\"é\": \"😀\"}",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
            let _: serde_json::Value = serde_json::from_str(ok).unwrap();
        }
        let deepest = format!(
            "{}{}{}",
            "{\"a\":".repeat(MAX_DEPTH),
            "1",
            "}".repeat(MAX_DEPTH)
        );
        assert_eq!(check(&deepest), Ok(()));
        let _: serde_json::Value = serde_json::from_str(&deepest).unwrap();
    }

    #[test]
    fn refuses_what_readers_cannot_parse() {
        assert_eq!(check("[1]"), Err(DataError::NotAnObject));
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(matches!(check(&deep), Err(DataError::TooDeep(_))));
        assert!(serde_json::from_str::<serde_json::Value>(&"[".repeat(200)).is_err());
        for (bad, unit) in [
            (r#"{"x": "\ud800"}"#, 0xd800),
            (r#"{"x": "\ud800x"}"#, 0xd800),
            (r#"{"x": "\ud800\n"}"#, 0xd800),
            (r#"{"x": "\ud800\u0041"}"#, 0xd800),
            (r#"{"x": "\udc00"}"#, 0xdc00),
            (r#"{"x": "a\uDFFFb"}"#, 0xdfff),
            (r#"{"\ud800": 1}"#, 0xd800),
        ] {
            match check(bad) {
                Err(DataError::LoneSurrogate(u, _)) => assert_eq!(u, unit, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
