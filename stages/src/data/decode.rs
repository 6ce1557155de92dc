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
