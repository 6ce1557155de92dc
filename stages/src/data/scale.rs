//! Scales a decoded image to a square of `size` pixels as it loads, so an
//! image folder of mixed sizes (photos, scans) becomes one `N×3×S×S`
//! tensor: the shorter side is scaled to `size`, then the centre square
//! kept, as torchvision's `Resize(size)` + `CenterCrop(size)` do. The
//! filter is a triangle (bilinear) widened by the shrink factor when
//! shrinking, PIL's antialiasing, so a large photo is averaged rather than
//! sampled. Pure f32 arithmetic in a fixed order: the bytes are the same on
//! every CPU.

/// One output sample's taps: the first input index and the weights from
/// there on, summing to 1.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The taps of outputs `skip..skip + count` of an axis scaled from `n_in`
/// to `n_out` samples.
fn taps(n_in: usize, n_out: usize, skip: usize, count: usize) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    let radius = scale.max(1.0);
    (skip..skip + count)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let first = (centre - radius).floor().max(0.0) as usize;
            let last = ((centre + radius).ceil() as usize).min(n_in);
            let raw: Vec<f64> = (first..last).map(|i| (1.0 - ((i as f64 + 0.5 - centre) / radius).abs()).max(0.0)).collect();
            let total: f64 = raw.iter().sum();
            Taps { first, weights: raw.iter().map(|w| (w / total) as f32).collect() }
        })
        .collect()
}

/// The scaled size of a `h×w` image whose shorter side becomes `size`.
fn scaled(h: usize, w: usize, size: usize) -> (usize, usize) {
    let long = |l: usize, s: usize| ((l * size) as f64 / s as f64).round().max(size as f64) as usize;
    if h <= w {
        (size, long(w, h))
    } else {
        (long(h, w), size)
    }
}

/// Writes the centre `size×size` square of planar RGB `src` (`3×h×w`),
/// scaled so its shorter side is `size`, into `dst` (`3×size×size`).
pub(crate) fn square(src: &[u8], (h, w): (usize, usize), size: usize, dst: &mut [u8]) {
    let (sh, sw) = scaled(h, w, size);
    let rows = taps(h, sh, (sh - size) / 2, size);
    let cols = taps(w, sw, (sw - size) / 2, size);
    let mut across = vec![0f32; h * size];
    for c in 0..3 {
        let plane = &src[c * h * w..(c + 1) * h * w];
        for y in 0..h {
            let line = &plane[y * w..(y + 1) * w];
            for (x, t) in cols.iter().enumerate() {
                across[y * size + x] = t.weights.iter().zip(&line[t.first..]).map(|(k, &v)| k * v as f32).sum();
            }
        }
        let out = &mut dst[c * size * size..(c + 1) * size * size];
        for (y, t) in rows.iter().enumerate() {
            for x in 0..size {
                let v: f32 = t.weights.iter().enumerate().map(|(i, k)| k * across[(t.first + i) * size + x]).sum();
                out[y * size + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planar(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) -> Vec<u8> {
        (0..3).flat_map(|c| (0..h).flat_map(move |y| (0..w).map(move |x| (c, y, x)))).map(|(c, y, x)| f(c, y, x)).collect()
    }

    #[test]
    fn the_shorter_side_is_scaled_then_the_centre_kept() {
        assert_eq!(scaled(480, 640, 32), (32, 43));
        assert_eq!(scaled(640, 480, 32), (43, 32));
        assert_eq!(scaled(10, 10, 32), (32, 32));
        // A wide image whose middle third (and the filter's 3-pixel reach
        // beyond it) differs from the rest: the centre square is that.
        let src = planar(30, 90, |_, _, x| if (27..63).contains(&x) { 200 } else { 10 });
        let mut dst = vec![0; 3 * 10 * 10];
        square(&src, (30, 90), 10, &mut dst);
        assert!(dst.iter().all(|&v| v == 200), "{dst:?}");
    }

    #[test]
    fn shrinking_averages_and_flat_images_stay_flat() {
        // A 1-pixel checkerboard shrunk 4x is its mean, not an alias.
        let src = planar(64, 64, |_, y, x| if (x + y) % 2 == 0 { 0 } else { 250 });
        let mut dst = vec![0; 3 * 16 * 16];
        square(&src, (64, 64), 16, &mut dst);
        assert!(dst.iter().all(|&v| (120..=130).contains(&v)), "{:?}", &dst[..16]);
        for (h, w, size) in [(7, 13, 5), (5, 5, 17), (31, 32, 32)] {
            let src = planar(h, w, |c, _, _| 40 * c as u8 + 7);
            let mut dst = vec![0; 3 * size * size];
            square(&src, (h, w), size, &mut dst);
            assert!(dst.chunks(size * size).enumerate().all(|(c, p)| p.iter().all(|&v| v == 40 * c as u8 + 7)), "{h}×{w} → {size}");
        }
    }
}
