//! Canonical, exact binary encoding of parameter values.
//!
//! Keys must not depend on how a user happened to write a value, nor on
//! map ordering, nor on float formatting. Every value is written as a tag
//! byte followed by a fixed-width or length-prefixed payload; maps are
//! written in sorted key order; floats are written as their IEEE-754 bits,
//! so `1e-4` and `0.0001` encode identically and no decimal rounding can
//! ever make two different floats collide.

use serde_json::Value;

/// Appends the canonical encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(b'n'),
        Value::Bool(b) => {
            out.push(b'b');
            out.push(*b as u8);
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            } else if let Some(u) = n.as_u64() {
                out.push(b'u');
                out.extend_from_slice(&u.to_le_bytes());
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                out.push(b'f');
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        }
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            out.push(b'a');
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(map) => {
            out.push(b'm');
            out.extend_from_slice(&(map.len() as u64).to_le_bytes());
            // serde_json's map may preserve insertion order when another
            // crate enables `preserve_order`; sort explicitly.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                encode_str(k, out);
                encode(&map[k], out);
            }
        }
    }
}

/// Strings are tagged and length-prefixed so that no concatenation of two
/// fields can be confused with a different split of the same bytes.
pub fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(b's');
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out);
        out
    }

    #[test]
    fn map_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(enc(&a), enc(&b));
    }

    #[test]
    fn floats_are_exact() {
        assert_eq!(enc(&json!(1e-4)), enc(&json!(0.0001)));
        assert_ne!(enc(&json!(0.1 + 0.2)), enc(&json!(0.3)));
    }

    #[test]
    fn int_and_float_differ() {
        assert_ne!(enc(&json!(1)), enc(&json!(1.0)));
    }

    #[test]
    fn string_boundaries_are_unambiguous() {
        assert_ne!(enc(&json!(["ab", "c"])), enc(&json!(["a", "bc"])));
    }
}
