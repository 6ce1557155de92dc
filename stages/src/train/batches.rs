//! Shuffling and augmentation for the training loop, driven by a seeded
//! SplitMix64 generator of our own rather than libtorch's RNG.
//!
//! Every random decision (epoch order, per-image flip, per-image shift) is
//! drawn here, on one thread, in a fixed order, so a run's data stream
//! depends only on the stage seed — not on libtorch's generator state, the
//! thread count or the device — and the same seed gives the same batches.
//! Augmentations act on the u8 images before normalisation: a flip mirrors
//! the width axis; a translation pads by `t` pixels and crops back at a
//! random offset (the pad-and-crop of the CIFAR speed-run nets). The pad
//! reflects the image, as airbench's does: zero borders are an artefact the
//! test images never show, and cost accuracy.

use cairn_kinds::train::{Augment, Flip};
use tch::{Kind, Tensor};

use crate::device::upload;

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, good enough to
/// shuffle and to pick augmentations, and fully specified.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The whole state: `Rng::new(r.state())` continues `r`'s stream (a
    /// checkpoint keeps it).
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-40 for the
    /// sizes used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut v: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
        v
    }
}

/// One batch's augmentation decisions.
pub struct Draw {
    pub flip: Vec<bool>,
    /// (dy, dx) crop offsets into the padded image, in `0..=2t + slack`.
    pub shift: Vec<(i64, i64)>,
    /// The side of a square crop, when this epoch trains on crops.
    pub crop: Option<i64>,
}

/// The flips and offsets of the batch of images `rows` in zero-based
/// `epoch` of a stage seeded `seed`; `crop` is `(side, image side)` when
/// this epoch trains on crops, whose offsets then also span the
/// difference. Random flips are drawn for `"alternate"` too, and replaced,
/// so both forms draw the same shifts.
pub fn draw(rng: &mut Rng, aug: &Augment, (seed, epoch): (u64, usize), rows: &[i64], crop: Option<(u32, u32)>) -> Draw {
    let n = rows.len();
    let mut flip: Vec<bool> = (0..n).map(|_| aug.flip.any() && rng.below(2) == 1).collect();
    if aug.flip == Flip::Alternate {
        flip = rows.iter().map(|&i| coin(seed, i) != (epoch % 2 == 1)).collect();
    }
    let slack = crop.map_or(0, |(side, image)| image.saturating_sub(side)) as u64;
    let span = 2 * aug.translate as u64 + slack + 1;
    let shift = (0..n).map(|_| if span > 1 { (rng.below(span) as i64, rng.below(span) as i64) } else { (0, 0) }).collect();
    Draw { flip, shift, crop: crop.map(|(side, _)| side as i64) }
}

/// Image `row`'s fixed coin for alternating flips: a hash of the stage
/// seed and the row, the same in every epoch and execution.
fn coin(seed: u64, row: i64) -> bool {
    Rng::new(seed ^ (row as u64).wrapping_add(1).wrapping_mul(0xa076_1d64_78bd_642f)).next_u64() & 1 == 1
}

impl Draw {
    /// Which rows flip, as a bool tensor on `device` shaped to broadcast
    /// over a batch of `dims` dimensions (`[B, 1, 1, ...]`).
    pub fn flip_mask(&self, device: tch::Device, dims: usize) -> Tensor {
        let mask = Tensor::from_slice(&self.flip.iter().map(|&f| f as u8).collect::<Vec<_>>()).to_kind(Kind::Bool);
        let shape: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat_n(1, dims - 1)).collect();
        upload(&mask, device).view(shape.as_slice())
    }
}

/// Applies `d` to u8 images `[B, C, H, W]`, translating by up to `t` px
/// and cropping to `d.crop`.
pub fn apply(images: &Tensor, d: &Draw, t: u32) -> Tensor {
    let x = if d.flip.iter().any(|&f| f) { images.flip([3]).where_self(&d.flip_mask(images.device(), 4), images) } else { images.shallow_clone() };
    if t == 0 && d.crop.is_none() {
        return x;
    }
    let (h, w) = d.crop.map_or((x.size()[2], x.size()[3]), |c| (c, c));
    let padded = if t > 0 { reflect_pad(&x, t as i64) } else { x };
    let crops: Vec<Tensor> = d.shift.iter().enumerate().map(|(i, &(dy, dx))| padded.get(i as i64).narrow(1, dy, h).narrow(2, dx, w)).collect();
    Tensor::stack(&crops, 0)
}

/// `x` padded by `t` pixels on each side of both spatial axes, mirroring
/// the edge (`reflect`, edge pixel not repeated). Done by indexing, since
/// libtorch's reflection pad has no u8 kernel.
fn reflect_pad(x: &Tensor, t: i64) -> Tensor {
    let index = |n: i64| {
        let idx: Vec<i64> = (-t..n + t).map(|i| if i < 0 { -i } else if i >= n { 2 * (n - 1) - i } else { i }).collect();
        upload(&Tensor::from_slice(&idx), x.device())
    };
    x.index_select(2, &index(x.size()[2])).index_select(3, &index(x.size()[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = Rng::new(7).permutation(100);
        assert_eq!(a, Rng::new(7).permutation(100));
        assert_ne!(a, Rng::new(8).permutation(100));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_saved_state_continues_the_stream() {
        let mut a = Rng::new(7);
        a.permutation(10);
        let mut b = Rng::new(a.state());
        assert_eq!(a.permutation(50), b.permutation(50));
    }

    #[test]
    fn flip_and_shift_move_pixels() {
        let x = Tensor::arange(2 * 4 * 4, (Kind::Uint8, tch::Device::Cpu)).view([2, 1, 4, 4]);
        let d = Draw { flip: vec![true, false], shift: vec![(1, 1), (0, 2)], crop: None };
        let y = apply(&x, &d, 1);
        // Image 0: mirrored, no net shift.
        assert!(y.get(0).equal(&x.get(0).flip([2])));
        // Image 1: shifted left by one column (crop at dx = 2 of a 1-px pad);
        // the new top row and right column reflect the image.
        let px = |r: i64, c: i64| x.get(1).get(0).get(r).int64_value(&[c]);
        assert_eq!(y.get(1).get(0).get(1).int64_value(&[0]), px(0, 1));
        assert_eq!(y.get(1).get(0).get(0).int64_value(&[0]), px(1, 1), "top row reflects row 1");
        assert_eq!(y.get(1).get(0).get(1).int64_value(&[3]), px(0, 2), "right column reflects column 2");
    }

    #[test]
    fn a_crop_takes_a_random_square_of_the_translated_image() {
        let aug = Augment { flip: Flip::Off, translate: 1, crop: 2, crop_epochs: 1 };
        let d = draw(&mut Rng::new(3), &aug, (5, 0), &[0; 64], Some((2, 4)));
        // 2 px of translation either way plus 2 px of slack: offsets 0..=4.
        assert!(d.shift.iter().all(|&(y, x)| (0..=4).contains(&y) && (0..=4).contains(&x)));
        assert!(d.shift.iter().any(|&(y, _)| y == 4) && d.shift.iter().any(|&(_, x)| x == 0));
        let x = Tensor::arange(4 * 4, (Kind::Uint8, tch::Device::Cpu)).view([1, 1, 4, 4]).repeat([64, 1, 1, 1]);
        let y = apply(&x, &d, 1);
        assert_eq!(y.size(), [64, 1, 2, 2]);
        let (dy, dx) = d.shift[0];
        // Offset (dy, dx) in the 1-px padded image is pixel (dy - 1, dx - 1).
        let src = |r: i64, c: i64| x.get(0).get(0).get((r - 1).abs().min(7 - r)).int64_value(&[(c - 1).abs().min(7 - c)]);
        assert_eq!(y.get(0).get(0).get(0).int64_value(&[0]), src(dy, dx));
        assert_eq!(y.get(0).get(0).get(1).int64_value(&[1]), src(dy + 1, dx + 1));
    }

    #[test]
    fn no_crop_draws_as_before() {
        let aug = Augment { flip: Flip::Random, translate: 2, crop: 0, crop_epochs: 0 };
        let mut a = Rng::new(9);
        let d = draw(&mut a, &aug, (5, 0), &[7; 8], None);
        let mut b = Rng::new(9);
        let flips: Vec<bool> = (0..8).map(|_| b.below(2) == 1).collect();
        let shifts: Vec<(i64, i64)> = (0..8).map(|_| (b.below(5) as i64, b.below(5) as i64)).collect();
        assert_eq!((d.flip, d.shift, d.crop), (flips, shifts, None));
    }

    #[test]
    fn alternating_flips_mirror_each_image_the_other_way_each_epoch() {
        let aug = Augment { flip: Flip::Alternate, translate: 2, crop: 0, crop_epochs: 0 };
        let rows: Vec<i64> = (0..256).collect();
        let at = |seed, epoch, rows: &[i64]| draw(&mut Rng::new(epoch as u64), &aug, (seed, epoch), rows, None);
        let (e0, e1, e2) = (at(5, 0, &rows), at(5, 1, &rows), at(5, 2, &rows));
        assert!(e0.flip.iter().zip(&e1.flip).all(|(a, b)| a != b), "odd epochs invert");
        assert_eq!(e0.flip, e2.flip, "even epochs repeat");
        let mirrored = e0.flip.iter().filter(|&&f| f).count();
        assert!((96..160).contains(&mirrored), "about half of the images: {mirrored}");
        // The coin belongs to the image, not to its place in a batch.
        let shuffled: Vec<i64> = rows.iter().rev().copied().collect();
        assert_eq!(at(5, 0, &shuffled).flip, e0.flip.iter().rev().copied().collect::<Vec<_>>());
        assert_ne!(at(6, 0, &rows).flip, e0.flip, "another seed, other coins");
        // The shifts are those random flips would draw.
        let random = Augment { flip: Flip::Random, ..aug };
        assert_eq!(e1.shift, draw(&mut Rng::new(1), &random, (5, 1), &rows, None).shift);
    }
}
