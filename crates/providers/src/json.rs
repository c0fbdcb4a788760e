//! Editing JSON bodies without re-serializing what Quota does not change: forwarding an
//! allow-list of a client's fields as written, and adding the `quota` object to an answer.

use crate::openai::describe_json_error;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON object made of `model` (when given) and the `allowed` fields of the client's `raw`
/// object exactly as written, followed by `tail` (pre-serialized `,"name":value` pairs).
pub fn forward_fields(raw: &[u8], model: Option<&str>, allowed: &[&str], tail: &[u8]) -> Result<Vec<u8>, String> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(raw).map_err(|e| describe_json_error(&e))?;
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.push(b'{');
    let mut first = true;
    if let Some(m) = model {
        out.extend_from_slice(b"\"model\":");
        serde_json::to_writer(&mut out, m).map_err(|e| e.to_string())?;
        first = false;
    }
    for name in allowed {
        if let Some(value) = fields.get(*name) {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, name).map_err(|e| e.to_string())?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    let tail = if first { tail.strip_prefix(b",").unwrap_or(tail) } else { tail };
    out.extend_from_slice(tail);
    out.push(b'}');
    Ok(out)
}

/// Add `"quota": <object>` to a JSON object body, without re-serializing the rest.
pub fn splice_quota(body: &[u8], quota_json: &[u8]) -> Option<Vec<u8>> {
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[end] != b'}' {
        return None;
    }
    let inner_empty = body[..end].iter().rposition(|b| !b.is_ascii_whitespace()).map(|i| body[i] == b'{')?;
    let mut out = Vec::with_capacity(body.len() + quota_json.len() + 12);
    out.extend_from_slice(&body[..end]);
    if !inner_empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"quota\":");
    out.extend_from_slice(quota_json);
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_quota_into_objects() {
        assert_eq!(splice_quota(b"{\"a\":1}\n", b"{}").unwrap(), b"{\"a\":1,\"quota\":{}}");
        assert_eq!(splice_quota(b"{ }", b"1").unwrap(), b"{ \"quota\":1}");
        assert!(splice_quota(b"[1]", b"1").is_none());
    }

    #[test]
    fn forwards_allowed_fields_as_written() {
        let raw = br#"{"b": 1.50, "a": {"x" : 1}, "secret": true}"#;
        assert_eq!(
            forward_fields(raw, Some("m"), &["a", "b"], b"").unwrap(),
            br#"{"model":"m","a":{"x" : 1},"b":1.50}"#
        );
        assert_eq!(forward_fields(raw, None, &["zzz"], b",\"t\":1").unwrap(), br#"{"t":1}"#);
        assert!(forward_fields(b"[1]", None, &[], b"").is_err());
    }
}
