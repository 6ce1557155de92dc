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
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }
            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
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
                blake3::Hash::from_hex(s)
                    .map(Self::from_blake3)
                    .map_err(|e| format!("not a 64-digit blake3 hex digest: {e}"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
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
