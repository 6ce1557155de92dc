//! The confusion matrix as a heat map: true class down the rows, predicted
//! class across the columns, the count written in every cell. Cells are
//! coloured by the share of their row (how the true class's images were
//! predicted) rather than the raw count, so a rare class's errors are as
//! visible as a common one's; a colour bar gives the scale and the title the
//! overall accuracy.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colormap::{blues, needs_light_text};
use super::{bold, centered, text, widest, Figure, PlotError};

const MARGIN: i32 = 20;
const TITLE_H: i32 = 56;
const AXIS_TITLE: i32 = 26;
const BAR_W: i32 = 18;
const BAR_GAP: i32 = 24;
const BAR_LABELS: i32 = 56;

/// Draws `counts[true][pred]` with `names` on both axes.
pub fn draw(counts: &[Vec<u64>], names: &[String], title: &str) -> Result<Figure, PlotError> {
    let k = names.len();
    if k == 0 || counts.len() != k || counts.iter().any(|r| r.len() != k) {
        return Err(PlotError::Data(format!("confusion matrix is not {k}×{k} for {k} class names")));
    }
    // Cells shrink with more classes; counts must still fit inside.
    let cell = (640 / k as i32).clamp(14, 64);
    let cell_font = (cell as f64 * 0.3).clamp(7.0, 15.0);
    let label_font = 14.0_f64.min(cell as f64 * 0.8).max(8.0);

    let widest = widest(names.iter().map(String::as_str), &text(label_font))? as i32;
    // Predicted-class labels go vertical when they would not fit a cell.
    let vertical_x = widest + 6 > cell;
    let x_labels_h = if vertical_x { widest + 10 } else { label_font as i32 + 12 };
    let left = MARGIN + AXIS_TITLE + widest + 10;
    let top = TITLE_H;
    let grid = cell * k as i32;
    let width = left + grid + BAR_GAP + BAR_W + BAR_LABELS + MARGIN;
    let height = top + grid + x_labels_h + AXIS_TITLE + MARGIN;
    let mut fig = Figure::new(width as u32, height as u32)?;

    let total: u64 = counts.iter().flatten().sum();
    let correct: u64 = (0..k).map(|i| counts[i][i]).sum();
    fig.draw(|a| {
        let acc = if total > 0 { format!("{:.2}%", 100.0 * correct as f64 / total as f64) } else { "n/a".into() };
        let heading = format!("{title} — accuracy {acc} (n = {total})");
        a.draw(&Text::new(heading, (width / 2, 22), centered(bold(17.0)).color(&BLACK)))?;
        a.draw(&Text::new("colour: share of the true class's images", (width / 2, 42), centered(text(12.0)).color(&RGBColor(90, 90, 90))))?;

        for (i, row) in counts.iter().enumerate() {
            let row_total: u64 = row.iter().sum();
            for (j, &n) in row.iter().enumerate() {
                let share = if row_total > 0 { n as f64 / row_total as f64 } else { 0.0 };
                let bg = blues(share);
                let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
                a.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], RGBColor(bg[0], bg[1], bg[2]).filled()))?;
                let style = centered(if i == j { bold(cell_font) } else { text(cell_font) });
                // `color` wants a 'static colour for a 'static style: pick a constant.
                let style = if needs_light_text(bg) { style.color(&WHITE) } else { style.color(&BLACK) };
                a.draw(&Text::new(n.to_string(), (x0 + cell / 2, y0 + cell / 2), style))?;
            }
        }
        a.draw(&Rectangle::new([(left, top), (left + grid, top + grid)], RGBColor(120, 120, 120)))?;

        let right = Pos::new(HPos::Right, VPos::Center);
        for (i, name) in names.iter().enumerate() {
            let y = top + i as i32 * cell + cell / 2;
            a.draw(&Text::new(name.as_str(), (left - 8, y), text(label_font).pos(right).color(&BLACK)))?;
            let x = left + i as i32 * cell + cell / 2;
            if vertical_x {
                // Rotated a quarter turn clockwise, anchored below the grid.
                let style = text(label_font).transform(FontTransform::Rotate90).pos(Pos::new(HPos::Left, VPos::Center));
                a.draw(&Text::new(name.as_str(), (x, top + grid + 6), style.color(&BLACK)))?;
            } else {
                let style = text(label_font).pos(Pos::new(HPos::Center, VPos::Top));
                a.draw(&Text::new(name.as_str(), (x, top + grid + 6), style.color(&BLACK)))?;
            }
        }
        let axis = bold(14.0).color(&BLACK);
        a.draw(&Text::new("predicted class", (left + grid / 2, top + grid + x_labels_h + AXIS_TITLE / 2), centered(axis.clone())))?;
        let y_title = centered(bold(14.0)).transform(FontTransform::Rotate270).color(&BLACK);
        a.draw(&Text::new("true class", (MARGIN + AXIS_TITLE / 2, top + grid / 2), y_title))?;

        // Colour bar: 0 % at the bottom, 100 % at the top.
        let bx = left + grid + BAR_GAP;
        for y in 0..grid {
            let c = blues(1.0 - y as f64 / (grid - 1).max(1) as f64);
            a.draw(&Rectangle::new([(bx, top + y), (bx + BAR_W, top + y + 1)], RGBColor(c[0], c[1], c[2]).filled()))?;
        }
        a.draw(&Rectangle::new([(bx, top), (bx + BAR_W, top + grid)], RGBColor(120, 120, 120)))?;
        let tick = text(11.0).pos(Pos::new(HPos::Left, VPos::Center)).color(&BLACK);
        for pct in [0, 25, 50, 75, 100] {
            let y = top + grid - (grid * pct / 100);
            a.draw(&PathElement::new(vec![(bx + BAR_W, y), (bx + BAR_W + 4, y)], BLACK))?;
            a.draw(&Text::new(format!("{pct}%"), (bx + BAR_W + 7, y), tick.clone()))?;
        }
        Ok(())
    })?;
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_any_size_and_rejects_mismatched_shapes() {
        let names: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
        let fig = draw(&[vec![5, 1], vec![2, 7]], &names, "test").unwrap();
        let (w, h) = fig.size();
        assert!(w > 100 && h > 100);
        // The diagonal cell of the row with most mass is darker than white.
        assert!(fig.pixels().chunks(3).any(|p| p[0] < 60 && p[2] > 90));
        assert!(draw(&[vec![1, 2]], &names, "bad").is_err());
        assert!(draw(&[], &[], "empty").is_err());
    }
}
