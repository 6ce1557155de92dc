//! Learning curves: loss (left) and accuracy (right) per epoch, train and
//! validation, for every training phase in order on one epoch axis. Phases
//! (e.g. frozen-backbone training, then fine-tuning) are shaded bands with
//! their names on top, so a jump at a phase boundary reads as what it is.
//! The names sit in headroom above the data and the legend in a strip above
//! both panels, so neither can cover a curve or each other.

use std::ops::Range;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{bold, centered, text, Area, DrawResult, Figure, PlotError};

/// One epoch's numbers; accuracies in percent.
#[derive(Clone, Debug, PartialEq)]
pub struct Epoch {
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
}

/// One training phase: its name and epochs in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    pub epochs: Vec<Epoch>,
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 500;
/// Height of the shared legend strip above the panels.
const LEGEND: u32 = 30;
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(230, 120, 20);
const BANDS: [RGBColor; 2] = [RGBColor(236, 242, 250), RGBColor(250, 244, 232)];

/// Draws the curves of `phases`; a note instead when there is no epoch.
pub fn draw(phases: &[Phase]) -> Result<Figure, PlotError> {
    let mut fig = Figure::new(WIDTH, HEIGHT)?;
    let total: usize = phases.iter().map(|p| p.epochs.len()).sum();
    let finite = |v: f64| v.is_finite();
    if phases.iter().flat_map(|p| &p.epochs).any(|e| !finite(e.train_loss) || !finite(e.train_acc)) {
        return Err(PlotError::Data("a training history has a non-finite loss or accuracy".into()));
    }
    fig.draw(|area| {
        if total == 0 {
            let msg = "No training history was given to this report.";
            area.draw(&Text::new(msg, (WIDTH as i32 / 2, HEIGHT as i32 / 2), centered(text(18.0)).color(&BLACK)))?;
            return Ok(());
        }
        let (strip, panels) = area.split_vertically(LEGEND);
        legend(&strip)?;
        let (left, right) = panels.split_horizontally(WIDTH / 2);
        let loss = |e: &Epoch| (Some(e.train_loss), e.val_loss);
        let acc = |e: &Epoch| (Some(e.train_acc), e.val_acc);
        panel(&left, phases, "Loss", "loss", &loss, false)?;
        panel(&right, phases, "Accuracy", "accuracy (%)", &acc, true)?;
        Ok(())
    })?;
    Ok(fig)
}

/// "— train   — validation", centred.
fn legend(area: &Area<'_>) -> DrawResult {
    let y = LEGEND as i32 / 2 + 4;
    let mut x = WIDTH as i32 / 2 - 110;
    for (name, colour) in [("train", TRAIN), ("validation", VAL)] {
        area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], colour.stroke_width(3)))?;
        area.draw(&Text::new(name, (x + 34, y), text(14.0).pos(Pos::new(HPos::Left, VPos::Center)).color(&BLACK)))?;
        x += 130;
    }
    Ok(())
}

type Pick<'a> = &'a dyn Fn(&Epoch) -> (Option<f64>, Option<f64>);

/// Fraction of the y span added on top for the phase names.
const HEADROOM: f64 = 0.12;

/// The y range covering every finite value, padded (accuracy's data part
/// stays ≤ 100), plus headroom for the phase names.
fn y_range(values: &[f64], percent: bool) -> Range<f64> {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(if percent { 1.0 } else { 0.01 });
    let (mut lo, mut hi) = (lo - pad, hi + pad);
    if percent {
        lo = lo.max(0.0);
        hi = hi.min(100.0);
    } else {
        lo = lo.max(0.0);
    }
    lo..hi + (hi - lo) * HEADROOM
}

fn panel(area: &Area<'_>, phases: &[Phase], title: &str, y_desc: &str, pick: Pick<'_>, percent: bool) -> DrawResult {
    let total: usize = phases.iter().map(|p| p.epochs.len()).sum();
    let values: Vec<f64> = phases
        .iter()
        .flat_map(|p| &p.epochs)
        .flat_map(|e| {
            let (t, v) = pick(e);
            [t, v]
        })
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    let ys = y_range(&values, percent);
    let xs = 0.5..total as f64 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, bold(18.0))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(xs, ys.clone())?;
    chart
        .configure_mesh()
        .x_desc("epoch (all phases)")
        .y_desc(y_desc)
        .axis_desc_style(text(14.0))
        .label_style(text(12.0))
        .x_labels(total.min(12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        // No tick labels in the headroom above 100%.
        .y_label_formatter(&|y| match percent {
            true if *y > 100.0 + 1e-9 => String::new(),
            true => format!("{y:.0}"),
            false => format!("{y:.2}"),
        })
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    // Phase bands, boundaries and names, under the series.
    let mut start = 0usize;
    let band_top = ys.end - (ys.end - ys.start) * 0.005;
    for (i, phase) in phases.iter().enumerate() {
        let end = start + phase.epochs.len();
        if end > start {
            let (x0, x1) = (start as f64 + 0.5, end as f64 + 0.5);
            let band = BANDS[i % BANDS.len()].mix(0.9).filled();
            chart.draw_series(std::iter::once(Rectangle::new([(x0, ys.start), (x1, band_top)], band)))?;
            let label = text(13.0).pos(Pos::new(HPos::Center, VPos::Top)).color(&RGBColor(70, 70, 70));
            chart.draw_series(std::iter::once(Text::new(phase.name.clone(), ((x0 + x1) / 2.0, band_top), label)))?;
            if start > 0 {
                let line = RGBColor(130, 130, 130).stroke_width(1);
                chart.draw_series(std::iter::once(PathElement::new(vec![(x0, ys.start), (x0, ys.end)], line)))?;
            }
        }
        start = end;
    }

    let series = |which: usize| -> Vec<(f64, f64)> {
        phases
            .iter()
            .flat_map(|p| &p.epochs)
            .enumerate()
            .filter_map(|(i, e)| {
                let (t, v) = pick(e);
                [t, v][which].filter(|y| y.is_finite()).map(|y| (i as f64 + 1.0, y))
            })
            .collect()
    };
    for (which, colour) in [(0, TRAIN), (1, VAL)] {
        let points = series(which);
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
        // Markers only while they stay distinct dots.
        if total <= 60 {
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(l: f64, a: f64) -> Epoch {
        Epoch { train_loss: l, train_acc: a, val_loss: Some(l + 0.1), val_acc: None }
    }

    #[test]
    fn draws_phases_and_handles_no_history_and_bad_values() {
        let phases = vec![
            Phase { name: "frozen".into(), epochs: vec![epoch(2.0, 30.0), epoch(1.5, 50.0)] },
            Phase { name: "finetune".into(), epochs: vec![epoch(1.0, 70.0)] },
        ];
        let fig = draw(&phases).unwrap();
        // Train curves are drawn in their colour.
        assert!(fig.pixels().chunks(3).any(|p| p == [31, 119, 180]));
        assert!(draw(&[]).is_ok());
        let bad = vec![Phase { name: "x".into(), epochs: vec![epoch(f64::NAN, 1.0)] }];
        assert!(draw(&bad).is_err());
    }

    #[test]
    fn accuracy_range_stays_within_percent_below_the_headroom() {
        let r = y_range(&[99.5, 100.0], true);
        let data_top = r.end - (r.end - r.start) * HEADROOM / (1.0 + HEADROOM);
        assert!((data_top - 100.0).abs() < 1e-9 && r.start < 99.5, "{r:?}");
        let r = y_range(&[0.2, 0.2], false);
        assert!(r.start < 0.2 && r.end > 0.2);
    }
}
