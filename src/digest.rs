//! Typed blake3 digests.
//!
//! Following Buck2, different things that happen to be hashes get different
//! types: an [`ArtifactHash`] names the bytes of one output (an object in the
//! store), a [`StageKey`] names one execution of a stage kind on given params
//! and inputs. Mixing them up is a type error rather than a cache bug.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn from_blake3(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
            pub fn to_hex(&self) -> String {
                self.hex().to_string()
            }
            /// The hex digits on the stack: cache paths are built from
            /// them on every lookup.
            pub fn hex(&self) -> impl std::ops::Deref<Target = str> {
                blake3::Hash::from_bytes(self.0).to_hex()
            }
            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> String {
                self.hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                from_hex(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(HexVisitor).map(Self)
            }
        }
    };
}

/// Decodes 64 hex digits (either case). Every manifest, ref, lock entry
/// and stat-cache entry holds digests, so a no-op run over a large
/// pipeline decodes thousands: a table lookup per digit, no allocation
/// (blake3's own `Hash::from_hex` took a millisecond longer over 1,000
/// stages; BENCHMARKS.md).
fn from_hex(s: &str) -> Result<[u8; 32], String> {
    const BAD: u8 = 0xff;
    const VALUE: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return Err(format!("not a 64-digit blake3 hex digest: it has {} characters", s.chars().count()));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (VALUE[pair[0] as usize], VALUE[pair[1] as usize]);
        if hi == BAD || lo == BAD {
            return Err(format!("not a 64-digit blake3 hex digest: `{s}` has a character that is not a hex digit"));
        }
        *byte = hi << 4 | lo;
    }
    Ok(out)
}

/// Reads a digest from a borrowed string when the format lends one.
struct HexVisitor;

impl serde::de::Visitor<'_> for HexVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a 64-digit blake3 hex digest")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        from_hex(s).map_err(E::custom)
    }
}

digest_type!(
    /// blake3 of an artifact's bytes: the name of an object in the store.
    ArtifactHash
);
digest_type!(
    /// blake3 of a stage's canonical key inputs: the name of a manifest.
    StageKey
);

impl ArtifactHash {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_blake3(blake3::hash(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_read_back_what_they_write_in_either_case() {
        let h = ArtifactHash::of_bytes(b"cairn");
        assert_eq!(h.to_hex().parse::<ArtifactHash>(), Ok(h));
        assert_eq!(h.to_hex().to_uppercase().parse::<ArtifactHash>(), Ok(h));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<ArtifactHash>(&json).unwrap(), h);
        assert_eq!(h.to_hex(), blake3::hash(b"cairn").to_hex().as_str());
    }

    #[test]
    fn a_digest_of_the_wrong_length_or_digits_is_refused() {
        let hex = ArtifactHash::of_bytes(b"x").to_hex();
        for bad in [&hex[..63], &format!("{hex}0"), &format!("g{}", &hex[1..]), &format!("{}é", &hex[..62]), ""] {
            let e = bad.parse::<StageKey>().unwrap_err();
            assert!(e.starts_with("not a 64-digit blake3 hex digest"), "{bad}: {e}");
        }
        let e = serde_json::from_str::<StageKey>(&format!("\"{}\"", &hex[..10])).unwrap_err();
        assert!(e.to_string().contains("not a 64-digit blake3 hex digest"), "{e}");
        assert!(serde_json::from_str::<StageKey>("42").is_err());
    }
}
