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

/// Writes the centre `size×size` square of `src` (`h×w×channels`,
/// interleaved: RGB, RGBA, grey or grey and alpha), scaled so its shorter
/// side is `size`, into `dst` (`3×size×size`, planar). Each output is
/// `0 + k₀v₀ + k₁v₁ + …` in tap order, rows first; the loops only
/// interleave independent sums (four rows and three channels at a time
/// across, whole output rows down) so that they overlap.
pub(crate) fn square(src: &[u8], channels: usize, (h, w): (usize, usize), size: usize, dst: &mut [u8]) {
    let (sh, sw) = scaled(h, w, size);
    let rows = taps(h, sh, (sh - size) / 2, size);
    let cols = taps(w, sw, (sw - size) / 2, size);
    let mut across = vec![0f32; 3 * h * size];
    match channels {
        1 => scale_rows::<1>(src, w, &cols, &mut across),
        2 => scale_rows::<2>(src, w, &cols, &mut across),
        3 => scale_rows::<3>(src, w, &cols, &mut across),
        _ => scale_rows::<4>(src, w, &cols, &mut across),
    }
    let mut acc = vec![0f32; size];
    for (across, out) in across.chunks_exact(h * size).zip(dst.chunks_exact_mut(size * size)) {
        for (t, out) in rows.iter().zip(out.chunks_exact_mut(size)) {
            acc.fill(0.0);
            for (i, &k) in t.weights.iter().enumerate() {
                let line = &across[(t.first + i) * size..][..size];
                acc.iter_mut().zip(line).for_each(|(a, &v)| *a += k * v);
            }
            out.iter_mut().zip(&acc).for_each(|(o, a)| *o = a.round().clamp(0.0, 255.0) as u8);
        }
    }
}

/// Rows scaled at once: each tap's weight multiplies one sample of each,
/// side by side in a vector lane, with the three channels' sums in flight.
const LANES: usize = 4;

/// Scales each row of `src` (`w` pixels of `N` samples) to the samples
/// `cols` describe, into `across` (three planes of `rows × cols`): RGB as
/// is, grey into all three, alpha dropped.
fn scale_rows<const N: usize>(src: &[u8], w: usize, cols: &[Taps], across: &mut [f32]) {
    let pick = if N >= 3 { [0, 1, 2] } else { [0; 3] };
    let (plane, out_w) = (across.len() / 3, cols.len());
    // Channel-major, then sample, then row: `LANES` rows' samples adjacent.
    let mut samples = vec![[0f32; LANES]; 3 * w];
    for (b, block) in src.chunks(LANES * w * N).enumerate() {
        let rows = block.len() / (w * N);
        for (r, line) in block.chunks_exact(w * N).enumerate() {
            for (j, px) in line.chunks_exact(N).enumerate() {
                for (c, &p) in pick.iter().enumerate() {
                    samples[c * w + j][r] = px[p] as f32;
                }
            }
        }
        for (x, t) in cols.iter().enumerate() {
            let mut acc = [[0f32; LANES]; 3];
            for (i, &k) in t.weights.iter().enumerate() {
                for (c, acc) in acc.iter_mut().enumerate() {
                    let v = &samples[c * w + t.first + i];
                    acc.iter_mut().zip(v).for_each(|(a, &v)| *a += k * v);
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                for (r, &a) in acc.iter().enumerate().take(rows) {
                    across[c * plane + (b * LANES + r) * out_w + x] = a;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interleaved RGB image whose sample `(c, y, x)` is `f(c, y, x)`.
    fn rgb(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) -> Vec<u8> {
        (0..h).flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| (c, y, x)))).map(|(c, y, x)| f(c, y, x)).collect()
    }

    #[test]
    fn the_shorter_side_is_scaled_then_the_centre_kept() {
        assert_eq!(scaled(480, 640, 32), (32, 43));
        assert_eq!(scaled(640, 480, 32), (43, 32));
        assert_eq!(scaled(10, 10, 32), (32, 32));
        // A wide image whose middle third (and the filter's 3-pixel reach
        // beyond it) differs from the rest: the centre square is that.
        let src = rgb(30, 90, |_, _, x| if (27..63).contains(&x) { 200 } else { 10 });
        let mut dst = vec![0; 3 * 10 * 10];
        square(&src, 3, (30, 90), 10, &mut dst);
        assert!(dst.iter().all(|&v| v == 200), "{dst:?}");
    }

    #[test]
    fn shrinking_averages_and_flat_images_stay_flat() {
        // A 1-pixel checkerboard shrunk 4x is its mean, not an alias.
        let src = rgb(64, 64, |_, y, x| if (x + y) % 2 == 0 { 0 } else { 250 });
        let mut dst = vec![0; 3 * 16 * 16];
        square(&src, 3, (64, 64), 16, &mut dst);
        assert!(dst.iter().all(|&v| (120..=130).contains(&v)), "{:?}", &dst[..16]);
        for (h, w, size) in [(7, 13, 5), (5, 5, 17), (31, 32, 32)] {
            let src = rgb(h, w, |c, _, _| 40 * c as u8 + 7);
            let mut dst = vec![0; 3 * size * size];
            square(&src, 3, (h, w), size, &mut dst);
            assert!(dst.chunks(size * size).enumerate().all(|(c, p)| p.iter().all(|&v| v == 40 * c as u8 + 7)), "{h}×{w} → {size}");
        }
    }

    #[test]
    fn grey_fills_every_channel_and_alpha_is_dropped() {
        let src = rgb(9, 12, |c, y, x| (30 * c + 7 * y + x) as u8);
        let mut want = vec![0; 3 * 5 * 5];
        square(&src, 3, (9, 12), 5, &mut want);
        let rgba: Vec<u8> = src.chunks(3).flat_map(|p| [p[0], p[1], p[2], 99]).collect();
        let mut got = vec![0; 3 * 5 * 5];
        square(&rgba, 4, (9, 12), 5, &mut got);
        assert_eq!(got, want);
        let grey: Vec<u8> = src.chunks(3).flat_map(|p| [p[1], 200]).collect();
        square(&grey, 2, (9, 12), 5, &mut got);
        assert!(got.chunks(25).all(|p| p == &want[25..50]), "{got:?}");
    }
}
