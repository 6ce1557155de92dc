//! Colour maps from a value in [0, 1] to an RGB colour: `jet` for Grad-CAM
//! overlays (the paper's and most tools' convention, so maps read as people
//! expect) and a white-to-navy `blues` ramp (matplotlib's "Blues" anchors)
//! for counts, where a sequential map keeps "more" unambiguous. Values
//! outside [0, 1], and NaN, are clamped so a bad input never panics.

fn clamp01(t: f64) -> f64 {
    if t.is_nan() {
        0.0
    } else {
        t.clamp(0.0, 1.0)
    }
}

/// The classic jet map: blue → cyan → yellow → red.
pub fn jet(t: f64) -> [u8; 3] {
    let t = clamp01(t);
    let channel = |centre: f64| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

const BLUES: [[u8; 3]; 9] = [
    [247, 251, 255],
    [222, 235, 247],
    [198, 219, 239],
    [158, 202, 225],
    [107, 174, 214],
    [66, 146, 198],
    [33, 113, 181],
    [8, 81, 156],
    [8, 48, 107],
];

/// Sequential white-to-navy map.
pub fn blues(t: f64) -> [u8; 3] {
    let x = clamp01(t) * (BLUES.len() - 1) as f64;
    let i = (x.floor() as usize).min(BLUES.len() - 2);
    let f = x - i as f64;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    std::array::from_fn(|c| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * f).round() as u8)
}

/// Whether text on `bg` should be white rather than black (by luminance).
pub fn needs_light_text(bg: [u8; 3]) -> bool {
    let l = 0.2126 * bg[0] as f64 + 0.7152 * bg[1] as f64 + 0.0722 * bg[2] as f64;
    l < 140.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red_and_clamps() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(-3.0), jet(0.0));
        assert_eq!(jet(f64::NAN), jet(0.0));
    }

    #[test]
    fn blues_is_monotone_and_contrast_flips() {
        assert_eq!(blues(0.0), BLUES[0]);
        assert_eq!(blues(1.0), BLUES[8]);
        let lum = |c: [u8; 3]| c.iter().map(|&v| v as u32).sum::<u32>();
        assert!((1..=20).all(|i| lum(blues(i as f64 / 20.0)) <= lum(blues((i - 1) as f64 / 20.0))));
        assert!(!needs_light_text(blues(0.1)));
        assert!(needs_light_text(blues(0.9)));
    }
}
