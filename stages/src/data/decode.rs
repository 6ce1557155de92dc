//! Decodes one JPEG or PNG (recognised by its magic bytes, not its name)
//! into a planar RGB `3×H×W` slot, checking its size against the data set's
//! before decoding so a stray large image cannot allocate much, and so the
//! mixed-size error names the offending file; or, where the stage scales
//! images as they load, decodes any size up to [`MAX_SIDE`] and scales it.

use std::io::Cursor;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::DataError;

/// Largest accepted side; no classification data set comes close.
const MAX_SIDE: usize = 16_384;

enum Format {
    Jpeg,
    Png,
}

fn format_of(name: &str, bytes: &[u8]) -> Result<Format, DataError> {
    match bytes {
        [0xff, 0xd8, 0xff, ..] => Ok(Format::Jpeg),
        [0x89, b'P', b'N', b'G', ..] => Ok(Format::Png),
        _ => Err(DataError::invalid(name, "neither a JPEG nor a PNG image (wrong magic bytes); remove or replace the file")),
    }
}

fn corrupt(name: &str, what: &str, e: impl std::fmt::Display) -> DataError {
    // Decoders' messages may span lines; the error is one.
    let e = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    DataError::invalid(name, format!("corrupt {what} image ({e}); remove or replace the file"))
}

/// `(height, width)` from the image's header.
pub(crate) fn dims(name: &str, bytes: &[u8]) -> Result<(usize, usize), DataError> {
    match format_of(name, bytes)? {
        Format::Jpeg => {
            let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
            dec.decode_headers().map_err(|e| corrupt(name, "JPEG", format!("{e:?}")))?;
            let info = dec.info().ok_or_else(|| corrupt(name, "JPEG", "no frame header"))?;
            Ok((info.height as usize, info.width as usize))
        }
        Format::Png => {
            let reader = png_reader(name, bytes)?;
            let info = reader.info();
            Ok((info.height as usize, info.width as usize))
        }
    }
}

fn jpeg_options() -> DecoderOptions {
    DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
}

fn png_reader<'a>(name: &str, bytes: &'a [u8]) -> Result<png::Reader<Cursor<&'a [u8]>>, DataError> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    // 8-bit output whatever the input: palettes expanded, 16-bit stripped.
    dec.set_transformations(png::Transformations::normalize_to_color8());
    dec.read_info().map_err(|e| corrupt(name, "PNG", e))
}

/// Decodes `bytes` into `slot` (`3 × h × w`, planar RGB), failing if the
/// image is not `dims` = `(h, w)`.
pub(crate) fn decode_into(name: &str, bytes: &[u8], expect: (usize, usize), slot: &mut [u8]) -> Result<(), DataError> {
    let found = dims(name, bytes)?;
    if found != expect {
        return Err(DataError::invalid(
            name,
            format!(
                "image is {}×{} but the data set's first training image is {}×{}; all images must be one size: \
                 set the stage's `size = N` to scale each as it loads (shorter side to N, the centre N×N kept), \
                 or resize them beforehand",
                found.1, found.0, expect.1, expect.0
            ),
        ));
    }
    decode_planar(name, bytes, expect, slot)
}

/// Decodes `bytes`, whatever its size, into `slot` (`3 × size × size`):
/// its shorter side scaled to `size` and the centre square kept.
pub(crate) fn decode_square_into(name: &str, bytes: &[u8], size: usize, slot: &mut [u8]) -> Result<(), DataError> {
    let (h, w) = dims(name, bytes)?;
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(DataError::invalid(name, format!("image is {w}×{h}; cairn reads images of 1 to {MAX_SIDE} pixels a side")));
    }
    let (pixels, channels) = decode_pixels(name, bytes, (h, w))?;
    super::scale::square(&pixels, channels, (h, w), size, slot);
    Ok(())
}

/// Decodes `bytes`, whose header says it is `(h, w)`, into `slot`.
fn decode_planar(name: &str, bytes: &[u8], (h, w): (usize, usize), slot: &mut [u8]) -> Result<(), DataError> {
    let plane = h * w;
    let (rgb, channels) = decode_pixels(name, bytes, (h, w))?;
    // Interleaved to planar; grey (1 or 2 samples) fills all three planes,
    // alpha is dropped.
    for (i, px) in rgb.chunks_exact(channels).enumerate() {
        for c in 0..3 {
            slot[c * plane + i] = if channels >= 3 { px[c] } else { px[0] };
        }
    }
    Ok(())
}

/// Decodes `bytes`, whose header says it is `(h, w)`, into interleaved
/// 8-bit samples, and their number a pixel (1 to 4).
fn decode_pixels(name: &str, bytes: &[u8], (h, w): (usize, usize)) -> Result<(Vec<u8>, usize), DataError> {
    let (rgb, channels) = match format_of(name, bytes)? {
        Format::Jpeg => {
            if !reaches_end(bytes) {
                return Err(DataError::invalid(name, "truncated JPEG image (its data ends before the end-of-image marker); remove or replace the file"));
            }
            let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
            let pixels = dec.decode().map_err(|e| corrupt(name, "JPEG", format!("{e:?}")))?;
            let channels = dec.output_colorspace().map_or(3, |c| c.num_components());
            (pixels, channels)
        }
        Format::Png => {
            let mut reader = png_reader(name, bytes)?;
            let size = reader.output_buffer_size().ok_or_else(|| corrupt(name, "PNG", "size overflows"))?;
            let mut buf = vec![0; size];
            let frame = reader.next_frame(&mut buf).map_err(|e| corrupt(name, "PNG", e))?;
            buf.truncate(frame.buffer_size());
            (buf, frame.color_type.samples())
        }
    };
    if rgb.len() != h * w * channels || !(1..=4).contains(&channels) {
        return Err(corrupt(name, "image", format!("decoded {} bytes of {channels} channel(s), expected {}×{}", rgb.len(), w, h)));
    }
    Ok((rgb, channels))
}

/// Whether a JPEG's data reaches its end-of-image marker. zune-jpeg, like
/// a browser, shows the missing part of a truncated file as grey, where
/// PIL refuses it ("image file is truncated"); its strict mode would also
/// refuse the stray bytes between segments that libjpeg and PIL accept.
/// The header segments are skipped by their lengths (an EXIF thumbnail
/// holds markers of its own), then the marker is looked for after the
/// first scan starts, from the end.
fn reaches_end(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xff || bytes[i + 1] == 0xff {
            // Stray or fill bytes before a marker, skipped as libjpeg does.
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        i += 2;
        match marker {
            0xda => return bytes[i..].windows(2).rev().any(|w| w == [0xff, 0xd9]),
            0xd9 => return true,
            0x00 | 0x01 | 0xd0..=0xd7 => {}
            _ => match bytes.get(i..i + 2) {
                Some(len) => i += usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => return false,
            },
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::reaches_end;

    #[test]
    fn a_jpeg_cut_short_is_told_from_one_with_stray_bytes() {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..48 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
        jpeg_encoder::Encoder::new(&mut out, 90).encode(&data, 64, 48, jpeg_encoder::ColorType::Rgb).unwrap();
        assert!(reaches_end(&out));
        for cut in [out.len() - 2, out.len() / 2, 200, 3] {
            assert!(!reaches_end(&out[..cut]), "cut at {cut} of {}", out.len());
        }
        // Trailing bytes after the image, and stray ones between segments.
        let mut padded = out.clone();
        padded.extend_from_slice(b"camera trailer");
        padded.splice(2..2, [0x00, 0x13]);
        assert!(reaches_end(&padded));
        // An end marker inside a header segment (a thumbnail's) does not count.
        let mut thumb = vec![0xff, 0xd8, 0xff, 0xe1, 0x00, 0x06, 0xff, 0xd9, 0xff, 0xd9];
        thumb.extend_from_slice(&out[2..out.len() / 2]);
        assert!(!reaches_end(&thumb));
    }
}
