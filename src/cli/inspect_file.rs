//! `cairn inspect` of an output that is neither a tensor, a table nor a
//! model: a PNG's size in pixels, the first lines of a text file (a
//! `command` stage's CSV or log, a report's Markdown, a metrics JSON), and
//! for anything else its size alone. Only the first [`PEEK`] bytes are read,
//! so a large file costs no more than a small one.

use std::io::Read;
use std::path::Path;

use cairn::cache::OutputRecord;

use super::commands::{fail, CmdResult};
use super::exit;
use super::ui::{human_bytes, Console};

/// How much of a file is read to describe it.
const PEEK: usize = 64 << 10;

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq)]
enum Peek {
    Png { width: u32, height: u32 },
    /// Its first lines, and whether more of the file follows them.
    Text { lines: Vec<String>, more: bool },
    Binary,
}

pub fn show(path: &Path, rec: &OutputRecord, json: bool, rows: usize, console: &Console) -> CmdResult {
    let mut head = Vec::with_capacity(PEEK.min(rec.size as usize));
    std::fs::File::open(path)
        .and_then(|f| f.take(PEEK as u64).read_to_end(&mut head))
        .map_err(|e| fail(console, exit::FAILED, format!("cannot read {}: {e}", path.display())))?;
    let peek = peek(&head, rec.size, rows);
    if json {
        let mut v = serde_json::json!({"type": rec.ty, "size": rec.size, "hash": rec.hash, "path": path});
        match &peek {
            Peek::Png { width, height } => v["png"] = serde_json::json!({"width": width, "height": height}),
            Peek::Text { lines, more } => v["text"] = serde_json::json!({"first_lines": lines, "more": more}),
            Peek::Binary => {}
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    let what = match &peek {
        Peek::Png { width, height } => format!("{} (PNG, {width}×{height} px)", rec.ty),
        Peek::Text { .. } => format!("{} (text)", rec.ty),
        Peek::Binary => format!("{} (binary)", rec.ty),
    };
    println!("{what}  ({}, {})", human_bytes(rec.size), rec.hash.short());
    if let Peek::Text { lines, more } = &peek {
        lines.iter().for_each(|l| println!("  | {l}"));
        if *more {
            println!("  … (--rows N shows more lines)");
        }
    }
    println!("  {}", path.display());
    Ok(exit::OK)
}

/// Describes a file of `size` bytes from its first bytes `head`.
fn peek(head: &[u8], size: u64, rows: usize) -> Peek {
    if let Some((width, height)) = png_size(head) {
        return Peek::Png { width, height };
    }
    if head.contains(&0) {
        return Peek::Binary;
    }
    // A cut may fall inside a character: only the valid part counts.
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > head.len() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or(""),
        Err(_) => return Peek::Binary,
    };
    let mut all = text.lines();
    let lines: Vec<String> = all.by_ref().take(rows).map(|l| l.chars().take(200).collect()).collect();
    let more = all.next().is_some() || (head.len() as u64) < size;
    Peek::Text { lines, more }
}

/// Width and height from a PNG's `IHDR`, the chunk every PNG starts with.
fn png_size(head: &[u8]) -> Option<(u32, u32)> {
    let ihdr = head.strip_prefix(b"\x89PNG\r\n\x1a\n")?.get(4..16)?;
    let (tag, dims) = ihdr.split_at(4);
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    (tag == b"IHDR").then(|| (be(&dims[..4]), be(&dims[4..8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_shows_its_first_lines_and_says_when_more_follow() {
        let text = b"a,b\n1,2\n3,4\n";
        assert_eq!(peek(text, 12, 2), Peek::Text { lines: vec!["a,b".into(), "1,2".into()], more: true });
        assert_eq!(peek(text, 12, 10), Peek::Text { lines: vec!["a,b".into(), "1,2".into(), "3,4".into()], more: false });
        // Read in part: more follows even where the lines shown are all read.
        assert_eq!(peek(b"x\n", 1 << 20, 10), Peek::Text { lines: vec!["x".into()], more: true });
        // Cut inside a character: the whole ones are text.
        assert_eq!(peek("é".as_bytes()[..1].as_ref(), 1 << 20, 10), Peek::Text { lines: vec![], more: true });
    }

    #[test]
    fn a_png_gives_its_size_and_other_bytes_are_binary() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(640u32.to_be_bytes());
        png.extend(480u32.to_be_bytes());
        assert_eq!(peek(&png, 100, 10), Peek::Png { width: 640, height: 480 });
        assert_eq!(peek(b"\x00\x01\x02", 3, 10), Peek::Binary);
        assert_eq!(peek(b"\xff\xfe\xfd not utf-8", 14, 10), Peek::Binary);
    }
}
