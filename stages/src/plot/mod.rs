//! PNG figures for reports: a white RGB canvas drawn on with `plotters`'
//! bitmap backend and encoded with the `png` crate, plus the few charts cairn
//! draws ([`confusion`], [`curves`], [`montage`]). Text uses DejaVu Sans,
//! subset and compiled into the binary (`stages/assets/`, licence beside it),
//! so figures look the same on every machine and need no system fonts.
//! Figures are deterministic: same data, same bytes, same cache key.

pub mod colormap;
pub mod confusion;
pub mod curves;
pub mod montage;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The family name the bundled font is registered under.
const FONT: &str = "cairn-sans";

/// Largest figure side: bounds memory when a caller passes absurd sizes.
const MAX_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("figure of {width}×{height} px is empty or larger than {MAX_SIDE} px a side")]
    Size { width: u32, height: u32 },
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Data(String),
}

/// What drawing closures return; any plotters error converts into it.
pub type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The drawing area over a figure's pixels.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are compiled in and known to parse (a test draws text),
        // so a failure here is a build defect; figures then lack text rather
        // than failing the stage.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../../assets/DejaVuSans-subset.ttf"));
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, include_bytes!("../../assets/DejaVuSans-Bold-subset.ttf"));
    });
}

/// Regular text of `size` pixels.
pub fn text(size: f64) -> TextStyle<'static> {
    register_fonts();
    (FONT, size).into_font().into()
}

/// Bold text of `size` pixels.
pub fn bold(size: f64) -> TextStyle<'static> {
    register_fonts();
    (FONT, size, FontStyle::Bold).into_font().into()
}

/// `style` anchored at its centre (for labels placed on a point).
pub fn centered(style: TextStyle<'static>) -> TextStyle<'static> {
    style.pos(Pos::new(HPos::Center, VPos::Center))
}

/// The pixel width of `s` in `style`.
pub fn text_width(area: &Area<'_>, s: &str, style: &TextStyle<'_>) -> u32 {
    area.estimate_text_size(s, style).map(|(w, _)| w).unwrap_or(0)
}

/// The widest of `texts` in `style`, in pixels (measured on a scratch
/// canvas, so layouts can be sized before the figure exists).
pub fn widest<'s>(texts: impl IntoIterator<Item = &'s str>, style: &TextStyle<'_>) -> Result<u32, PlotError> {
    let mut probe = Figure::new(8, 8)?;
    let mut w = 0;
    probe.draw(|a| {
        w = texts.into_iter().map(|t| text_width(a, t, style)).max().unwrap_or(0);
        Ok(())
    })?;
    Ok(w)
}

/// An RGB image being drawn.
pub struct Figure {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Figure {
    /// A white figure.
    pub fn new(width: u32, height: u32) -> Result<Self, PlotError> {
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(PlotError::Size { width, height });
        }
        Ok(Self { width, height, rgb: vec![255; width as usize * height as usize * 3] })
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn pixels(&self) -> &[u8] {
        &self.rgb
    }

    /// Runs `f` on a plotters drawing area covering the whole figure.
    pub fn draw(&mut self, f: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), PlotError> {
        let backend = BitMapBackend::with_buffer(&mut self.rgb, (self.width, self.height));
        let area = backend.into_drawing_area();
        f(&area).map_err(|e| PlotError::Draw(e.to_string()))?;
        area.present().map_err(|e| PlotError::Draw(e.to_string()))
    }

    /// Copies an RGB image of `w`×`h` pixels with its top-left corner at
    /// (`x`, `y`), clipped to the figure.
    pub fn blit(&mut self, x: u32, y: u32, w: u32, h: u32, rgb: &[u8]) {
        debug_assert_eq!(rgb.len(), (w * h * 3) as usize);
        for row in 0..h.min(self.height.saturating_sub(y)) {
            let cols = w.min(self.width.saturating_sub(x)) as usize;
            let src = (row * w) as usize * 3;
            let dst = (((y + row) * self.width + x) as usize) * 3;
            self.rgb[dst..dst + cols * 3].copy_from_slice(&rgb[src..src + cols * 3]);
        }
    }

    /// The figure as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>, PlotError> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(out)
    }

    /// Writes the figure as a PNG file and returns its bytes (reports embed them).
    pub fn save(&self, path: &Path) -> Result<Vec<u8>, PlotError> {
        let bytes = self.png()?;
        std::fs::write(path, &bytes).map_err(|source| PlotError::Io { path: path.into(), source })?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_font_draws_text() {
        let mut fig = Figure::new(120, 40).unwrap();
        fig.draw(|area| {
            area.draw(&Text::new("Hello", (5, 20), text(20.0).color(&BLACK)))?;
            Ok(())
        })
        .unwrap();
        // Without a usable font plotters draws nothing: the canvas stays white.
        assert!(fig.pixels().iter().any(|&b| b < 128), "no dark pixels: the font did not render");
    }

    #[test]
    fn png_round_trips_and_sizes_are_checked() {
        let mut fig = Figure::new(3, 2).unwrap();
        fig.blit(1, 1, 2, 1, &[1, 2, 3, 4, 5, 6]);
        let bytes = fig.png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[12..18], &[1, 2, 3, 4, 5, 6]);
        assert!(Figure::new(0, 5).is_err());
        assert!(Figure::new(10, MAX_SIDE + 1).is_err());
    }
}
