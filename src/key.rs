//! Action keys: the canonical encoding of everything an action depends on, hashed with blake3.
//!
//! Why canonical JSON: `serde_json::Value` keeps object keys sorted (no `preserve_order`), and
//! `to_string` writes no whitespace, so two configs that differ only in formatting, comments or
//! key order serialise to the same bytes. Keys are built from *parsed* values, never raw text.
//!
//! Depends on nothing else of pipe.

use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// Bumped when the key encoding itself changes; every key then changes.
pub const KEY_VERSION: u32 = 1;

/// A blake3 digest: names objects, action records and stage outputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Hash bytes.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }
    /// Hash the canonical encoding of a JSON value.
    pub fn of_value(v: &Value) -> Hash {
        Hash::of(canonical(v).as_bytes())
    }
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
    /// The first 12 hex characters, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a blake3 hash (64 hex digits): {0:?}")]
pub struct BadHash(pub String);

impl FromStr for Hash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Hash, BadHash> {
        blake3::Hash::from_hex(s)
            .map(|h| Hash(*h.as_bytes()))
            .map_err(|_| BadHash(s.to_string()))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The canonical encoding: compact JSON with sorted object keys.
pub fn canonical(v: &Value) -> String {
    // serde_json's Map is a BTreeMap unless the `preserve_order` feature is on; a test pins it.
    serde_json::to_string(v).expect("serialising a serde_json::Value cannot fail")
}

/// The part of a key shared by every item of one stage: stage identity, parameters and the
/// output hashes of its inputs. Stored as an object so that `explain` can diff it later.
pub fn common_ingredients(
    stage: &str,
    stage_version: u32,
    params: &Value,
    inputs: &std::collections::BTreeMap<String, Hash>,
) -> Value {
    let inputs: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|(k, h)| (k.clone(), Value::String(h.to_hex())))
        .collect();
    serde_json::json!({
        "key_version": KEY_VERSION,
        "stage": stage,
        "stage_version": stage_version,
        "params": params,
        "inputs": inputs,
    })
}

/// The key of one item: the common part's hash, the item's id, the canonical JSON of the
/// ingredients it shares with its group, and its own ingredients. Written as the canonical JSON
/// of `{"common":…,"id":…,"own":…,"shared":…}` without building that value.
pub fn item_key(common: &Hash, item_id: &str, shared_canonical: &str, own: &Value) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"{\"common\":\"");
    h.update(common.to_hex().as_bytes());
    h.update(b"\",\"id\":");
    h.update(canonical(&Value::String(item_id.to_string())).as_bytes());
    h.update(b",\"own\":");
    h.update(canonical(own).as_bytes());
    h.update(b",\"shared\":");
    h.update(shared_canonical.as_bytes());
    h.update(b"}");
    Hash(*h.finalize().as_bytes())
}

/// The key of a whole stage: the item keys in order. Equal to the ref's stage key means no-op.
pub fn stage_key(item_keys: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"pipe-stage-key-v1\0");
    for k in item_keys {
        h.update(&k.0);
    }
    Hash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let a: Value =
            serde_json::from_str("{\"b\": 1, \"a\": {\"y\": 2, \"x\": [1, 2]}}").unwrap();
        assert_eq!(canonical(&a), r#"{"a":{"x":[1,2],"y":2},"b":1}"#);
    }

    #[test]
    fn golden_item_key() {
        // Pins the encoding: if this changes, bump KEY_VERSION (every store's keys move).
        let common = Hash::of_value(&common_ingredients(
            "trial",
            1,
            &json!({"rmax": 3, "temperature": 0.7}),
            &Default::default(),
        ));
        let k = item_key(
            &common,
            "stack/base/0",
            "{}",
            &json!({"index": 0, "seed": 42}),
        );
        assert_eq!(
            k.to_hex(),
            item_key(
                &common,
                "stack/base/0",
                "{}",
                &json!({"seed": 42, "index": 0})
            )
            .to_hex()
        );
        assert_eq!(&k.to_hex()[..16], GOLDEN);
    }
    const GOLDEN: &str = "3ed95e8d38d1289e";

    #[test]
    fn each_ingredient_invalidates() {
        let base = common_ingredients("trial", 1, &json!({"t": 0.7}), &Default::default());
        let h = Hash::of_value(&base);
        let mut inputs = std::collections::BTreeMap::new();
        inputs.insert("trial".to_string(), Hash::of(b"x"));
        for other in [
            common_ingredients("eval", 1, &json!({"t": 0.7}), &Default::default()),
            common_ingredients("trial", 2, &json!({"t": 0.7}), &Default::default()),
            common_ingredients("trial", 1, &json!({"t": 0.8}), &Default::default()),
            common_ingredients("trial", 1, &json!({"t": 0.7}), &inputs),
        ] {
            assert_ne!(Hash::of_value(&other), h);
        }
        let k = item_key(&h, "a", "{}", &json!(1));
        assert_ne!(k, item_key(&h, "b", "{}", &json!(1)));
        assert_ne!(k, item_key(&h, "a", "{}", &json!(2)));
        assert_ne!(k, item_key(&h, "a", "{\"x\":1}", &json!(1)));
        assert_ne!(k, item_key(&Hash::of(b"other"), "a", "{}", &json!(1)));
    }

    #[test]
    fn hash_hex_roundtrip() {
        let h = Hash::of(b"abc");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert!("zz".parse::<Hash>().is_err());
    }
}
