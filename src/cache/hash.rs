//! Hashing file contents with blake3.
//!
//! One buffer per thread, reused: allocating (and so zeroing) a large
//! buffer per file made hashing a tree of 10,000 small files spend most of
//! its time in the allocator. Large files are read in bounded chunks, each
//! hashed with blake3's multi-threaded tree mode, so hashing a 9 GB
//! artifact keeps memory flat (mapping the whole file, as blake3's
//! `update_mmap_rayon` does, grew the engine's RSS to the file's size).

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::digest::ArtifactHash;

/// Bytes hashed per read of a large file.
pub const HASH_CHUNK: usize = 16 << 20;

/// Below this many bytes in a chunk, blake3's thread pool costs more than
/// it saves.
const RAYON_MIN: usize = 1 << 20;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hashes a file's bytes. Returns the hash and the number of bytes read.
pub fn hash_file(path: &Path) -> std::io::Result<(ArtifactHash, u64)> {
    let file = File::open(path)?;
    hash_reader(file)
}

/// Hashes everything `reader` yields.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(ArtifactHash, u64)> {
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let filled = fill(&mut reader, &mut buf)?;
            if filled == 0 {
                break;
            }
            if filled >= RAYON_MIN {
                hasher.update_rayon(&buf[..filled]);
            } else {
                hasher.update(&buf[..filled]);
            }
            size += filled as u64;
            if filled < buf.len() {
                break;
            }
        }
        Ok((ArtifactHash::from_blake3(hasher.finalize()), size))
    })
}

/// Reads into `buf` until it is full or the input ends, growing `buf` from
/// a small start up to [`HASH_CHUNK`] only as the input proves large.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.is_empty() {
        buf.resize(64 << 10, 0);
    }
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= HASH_CHUNK {
                return Ok(filled);
            }
            let grown = (buf.len() * 4).min(HASH_CHUNK);
            buf.resize(grown, 0);
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_hash_equals_one_shot_hash_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 65_535, 65_536, 65_537, RAYON_MIN + 1, HASH_CHUNK - 1, HASH_CHUNK, HASH_CHUNK + 3, 2 * HASH_CHUNK + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            let (h, size) = hash_file(&p).unwrap();
            assert_eq!(size, len as u64);
            assert_eq!(h, ArtifactHash::of_bytes(&bytes), "length {len}");
        }
    }

    #[test]
    fn the_buffer_is_reused_not_reallocated_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
        hash_file(&big).unwrap();
        let cap = BUF.with(|b| b.borrow().capacity());
        let small = dir.path().join("small");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(hash_file(&small).unwrap().0, ArtifactHash::of_bytes(b"abc"));
        assert_eq!(BUF.with(|b| b.borrow().capacity()), cap);
    }
}
