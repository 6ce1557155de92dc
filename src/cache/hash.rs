//! Hashing file contents with blake3.
//!
//! One buffer per thread, reused: allocating (and so zeroing) a large
//! buffer per file made hashing a tree of 10,000 small files spend most of
//! its time in the allocator. Large files are read in bounded chunks, each
//! hashed with blake3's multi-threaded tree mode, so hashing a 9 GB
//! artifact keeps memory flat (mapping the whole file, as blake3's
//! `update_mmap_rayon` does, grew the engine's RSS to the file's size, and
//! a file truncated while mapped would kill the process with SIGBUS).
//! While one chunk is hashed the next is read into a second buffer: the
//! kernel's copy was a third of the CPU time, and on two cores reading
//! and hashing in turn left one of them idle (BENCHMARKS.md, "Hashing").

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
    /// The chunk being read while `BUF`'s is hashed; grown only by inputs
    /// larger than one chunk.
    static NEXT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hashes a file's bytes. Returns the hash and the number of bytes read.
pub fn hash_file(path: &Path) -> std::io::Result<(ArtifactHash, u64)> {
    let file = File::open(path)?;
    hash_reader(file)
}

/// Hashes everything `reader` yields.
pub fn hash_reader(mut reader: impl Read + Send) -> std::io::Result<(ArtifactHash, u64)> {
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let mut hasher = blake3::Hasher::new();
        let mut filled = fill(&mut reader, &mut buf)?;
        let mut size = filled as u64;
        if filled == HASH_CHUNK {
            NEXT.with(|next| -> std::io::Result<()> {
                let mut next = next.borrow_mut();
                loop {
                    let (spare, chunk): (&mut Vec<u8>, &[u8]) = (&mut next, &buf[..filled]);
                    let (read, ()) = rayon_core::join(|| fill(&mut reader, spare), || update(&mut hasher, chunk));
                    filled = read?;
                    size += filled as u64;
                    std::mem::swap(&mut *buf, &mut *next);
                    if filled < HASH_CHUNK {
                        return Ok(());
                    }
                }
            })?;
        }
        update(&mut hasher, &buf[..filled]);
        Ok((ArtifactHash::from_blake3(hasher.finalize()), size))
    })
}

fn update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= RAYON_MIN {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
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

    /// A reader that hands out at most 1,000,003 bytes a call, so chunk
    /// ends never fall on read ends.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.0.len()).min(1_000_003);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reading_ahead_hashes_every_chunk_once_in_order() {
        let bytes: Vec<u8> = (0..3 * HASH_CHUNK + 5).map(|i| (i * 7 % 253) as u8).collect();
        for len in [HASH_CHUNK, HASH_CHUNK + 1, 2 * HASH_CHUNK, bytes.len()] {
            let (h, size) = hash_reader(Trickle(&bytes[..len])).unwrap();
            assert_eq!((h, size), (ArtifactHash::of_bytes(&bytes[..len]), len as u64), "length {len}");
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
