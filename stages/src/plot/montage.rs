//! Image montages: square RGB tiles with a coloured frame and a short
//! caption under each, grouped in rows that may carry a header on the left
//! (one row per class) and wrap after a fixed number of tiles. Grad-CAM's
//! per-class gallery and its worst-mistakes grid are both montages.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{bold, centered, text, widest, Figure, PlotError};

/// One image with its caption lines (at most two are shown).
#[derive(Clone, Debug)]
pub struct Tile {
    /// `side`×`side` RGB pixels, row-major.
    pub rgb: Vec<u8>,
    pub side: u32,
    pub caption: Vec<String>,
    /// Frame colour (e.g. red for a mistake), or none.
    pub frame: Option<[u8; 3]>,
}

/// A group of tiles; `header` is drawn to the left of its first line.
#[derive(Clone, Debug)]
pub struct Row {
    pub header: Option<String>,
    pub tiles: Vec<Tile>,
}

const GAP: u32 = 10;
const FRAME: u32 = 3;
const CAPTION_LINE: u32 = 15;
const TITLE_H: u32 = 62;
const HEADER_W: u32 = 120;
const MARGIN: u32 = 16;

/// Draws `rows` under `title` and `subtitle`, `columns` tiles per line.
pub fn draw(title: &str, subtitle: &str, rows: &[Row], columns: usize) -> Result<Figure, PlotError> {
    let side = rows.iter().flat_map(|r| &r.tiles).map(|t| t.side).max().unwrap_or(0);
    if let Some(t) = rows.iter().flat_map(|r| &r.tiles).find(|t| t.rgb.len() != (t.side * t.side * 3) as usize || t.side != side) {
        return Err(PlotError::Data(format!("montage tile of side {} has {} bytes; all tiles need side {side}", t.side, t.rgb.len())));
    }
    let columns = columns.max(1) as u32;
    let header_w = if rows.iter().any(|r| r.header.is_some()) { HEADER_W } else { 0 };
    // Cells widen to their longest caption so neighbours never overlap,
    // and the figure to its subtitle.
    let caption_w = widest(rows.iter().flat_map(|r| &r.tiles).flat_map(|t| t.caption.iter().take(2)).map(String::as_str), &text(12.0))?;
    let cell_w = (side + 2 * FRAME).max(caption_w + 8) + GAP;
    let cell_h = side + 2 * FRAME + 2 * CAPTION_LINE + GAP + 4;
    let lines: Vec<u32> = rows.iter().map(|r| (r.tiles.len() as u32).div_ceil(columns).max(1)).collect();
    let heading_w = widest([title], &bold(18.0))?.max(widest([subtitle], &text(13.0))?);
    let width = (2 * MARGIN + header_w + columns * cell_w).max(heading_w + 2 * MARGIN);
    let height = TITLE_H + lines.iter().sum::<u32>() * cell_h + MARGIN + GAP * rows.len() as u32;
    let mut fig = Figure::new(width, height.max(TITLE_H + 40))?;

    // Pixels first (frames and images), then text on top.
    let mut y = TITLE_H;
    let mut placed = Vec::new();
    for (row, &n_lines) in rows.iter().zip(&lines) {
        for (i, tile) in row.tiles.iter().enumerate() {
            let (col, line) = (i as u32 % columns, i as u32 / columns);
            let x0 = MARGIN + header_w + col * cell_w + (cell_w - GAP - side - 2 * FRAME) / 2;
            let y0 = y + line * cell_h;
            if let Some(c) = tile.frame {
                let s = side + 2 * FRAME;
                fig.blit(x0, y0, s, s, &c.repeat((s * s) as usize));
            }
            fig.blit(x0 + FRAME, y0 + FRAME, side, side, &tile.rgb);
            placed.push((x0 + side / 2 + FRAME, y0 + side + 2 * FRAME + 3, tile));
        }
        y += n_lines * cell_h + GAP;
    }
    fig.draw(|a| {
        a.draw(&Text::new(title, (width as i32 / 2, 20), centered(bold(18.0)).color(&BLACK)))?;
        a.draw(&Text::new(subtitle, (width as i32 / 2, 44), centered(text(13.0)).color(&RGBColor(80, 80, 80))))?;
        let mut y = TITLE_H as i32;
        for (row, &n_lines) in rows.iter().zip(&lines) {
            if let Some(h) = &row.header {
                let style = bold(14.0).pos(Pos::new(HPos::Left, VPos::Center)).color(&BLACK);
                a.draw(&Text::new(h.as_str(), (MARGIN as i32, y + side as i32 / 2), style))?;
            }
            y += (n_lines * cell_h + GAP) as i32;
        }
        let cap = text(12.0).pos(Pos::new(HPos::Center, VPos::Top)).color(&BLACK);
        for (x, y, tile) in &placed {
            for (i, line) in tile.caption.iter().take(2).enumerate() {
                a.draw(&Text::new(line.as_str(), (*x as i32, (*y + i as u32 * CAPTION_LINE) as i32), cap.clone()))?;
            }
        }
        if placed.is_empty() {
            a.draw(&Text::new("nothing to show", (width as i32 / 2, TITLE_H as i32 + 20), centered(text(14.0)).color(&BLACK)))?;
        }
        Ok(())
    })?;
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(v: u8) -> Tile {
        Tile { rgb: vec![v; 32 * 32 * 3], side: 32, caption: vec!["a".into(), "b".into()], frame: Some([200, 0, 0]) }
    }

    #[test]
    fn wraps_rows_and_checks_tile_sizes() {
        let rows = vec![Row { header: Some("cat".into()), tiles: vec![tile(0), tile(50), tile(100)] }];
        let two = draw("t", "s", &rows, 2).unwrap();
        let three = draw("t", "s", &rows, 3).unwrap();
        assert!(two.size().1 > three.size().1, "two columns need a second line");
        assert!(two.pixels().chunks(3).any(|p| p == [200, 0, 0]));
        let bad = vec![Row { header: None, tiles: vec![Tile { rgb: vec![0; 5], ..tile(0) }] }];
        assert!(draw("t", "s", &bad, 2).is_err());
        assert!(draw("t", "s", &[], 2).is_ok());
    }
}
