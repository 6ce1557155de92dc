//! The network as training sees it: a frozen prefix (eval mode, no grad)
//! and a trainable tail, fed raw images or the prefix's cached features
//! ([`Source`]), and the val metric over either.

use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use cairn_kinds::train::Tta;

use super::features::{FeatureFile, FeatureWriter, Features, Held};
use super::{batches, Images};
use crate::ctx::{StageError, StageResult};
use crate::device;
use crate::models::{self, Feed, Net};

/// Freezes every variable outside `trainable` blocks; returns the trainable ones.
pub fn freeze(vs: &nn::VarStore, net: &Net, trainable: &[String]) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vs.trainable_variables_named();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (name, mut v) in vars {
        let on = net.owner(&name).is_some_and(|b| trainable.contains(&b.name));
        let _ = v.requires_grad_(on);
        if on {
            out.push(v);
        }
    }
    out
}

/// The variables of block `block` that take gradients (after [`freeze`]).
pub(super) fn trainable_in(vs: &nn::VarStore, net: &Net, block: &str) -> Vec<Tensor> {
    let owned = |name: &str| net.owner(name).is_some_and(|b| b.name == block);
    vs.trainable_variables_named().into_iter().filter(|(name, _)| owned(name)).map(|(_, v)| v).collect()
}

trait NamedVars {
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)>;
}

impl NamedVars for nn::VarStore {
    /// Variables that take gradients (i.e. not BN running statistics).
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)> {
        self.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }
}

/// What the trainable tail is fed: raw images, or the cached output of the
/// frozen prefix (and of its mirrored input, when flipping).
pub(super) enum Source {
    Images(Tensor),
    Features(Box<Features>),
}

impl Source {
    /// The shorter side of the images, in pixels (0 for features, which
    /// are never cropped).
    pub(super) fn side(&self) -> u32 {
        match self {
            Source::Images(x) => x.size()[2].min(x.size()[3]) as u32,
            Source::Features(_) => 0,
        }
    }
}

/// The part of training that is the same for train and val batches.
pub(super) struct Runner<'a> {
    net: &'a Net,
    pub(super) feed: Feed,
    /// Index of the first trainable block: blocks before it form the prefix.
    pub(super) first: usize,
    /// Which blocks run in training mode (BatchNorm batch statistics and
    /// running-stat updates) when the tail trains.
    trains: Vec<bool>,
}

impl<'a> Runner<'a> {
    /// The prefix ends where the first `trainable` block starts; with
    /// `freeze_bn` the trainable blocks run in eval mode too.
    pub(super) fn new(net: &'a Net, feed: Feed, trainable: &[String], freeze_bn: bool) -> Self {
        let names = net.names();
        let learns: Vec<bool> = names.iter().map(|b| trainable.iter().any(|t| t == b)).collect();
        let first = learns.iter().position(|&t| t).unwrap_or(0);
        let trains = learns.iter().map(|&l| l && !freeze_bn).collect();
        Self { net, feed, first, trains }
    }

    /// The last frozen block, if any: where cached features come from.
    pub(super) fn prefix_end(&self) -> Option<&str> {
        self.first.checked_sub(1).map(|i| self.net.blocks[i].name.as_str())
    }

    /// Output of the frozen prefix for u8 images (eval mode, no grad).
    pub(super) fn prefix(&self, images: &Tensor) -> Tensor {
        self.lift(&self.feed.input(images))
    }

    /// Output of the frozen prefix for a normalised input (itself when
    /// nothing is frozen).
    pub(super) fn lift(&self, x: &Tensor) -> Tensor {
        if self.first == 0 {
            return x.shallow_clone();
        }
        tch::no_grad(|| self.net.forward_range(x, 0..self.first, |_| false))
    }

    /// Runs the prefix over all images in batches (read from their file a
    /// batch at a time when they are in one); `done` hears the size of each
    /// batch done. The features go into a tensor file at `file` when one is
    /// given, else stay on the device, each batch copied into one tensor
    /// allocated up front, so they are never held twice (concatenating the
    /// batches at the end would). The file only saves memory: where writing
    /// it fails (a disk that filled since [`super::features::disk_holds`]
    /// looked, a quota, a file-size limit), the pass starts again in memory,
    /// `done` hears the rows done so far taken back, and `fell_back` why.
    pub(super) fn features(
        &self,
        images: &Images,
        flip: bool,
        batch: i64,
        file: Option<PathBuf>,
        done: &mut impl FnMut(i64),
        fell_back: &mut impl FnMut(String),
    ) -> StageResult<Held> {
        // No rows, no file: an empty tensor of the prefix's shape.
        if let Some(path) = file.filter(|_| images.rows() > 0) {
            let mut written = 0;
            let mut count = |n: i64| {
                written += n;
                done(n)
            };
            match self.features_to_file(images, flip, batch, &path, &mut count)? {
                Ok(file) => return Ok(Held::File(file)),
                Err(why) => {
                    let _ = std::fs::remove_file(&path);
                    done(-written);
                    fell_back(why.to_string());
                }
            }
        }
        self.features_in_memory(images, flip, batch, done).map(Held::Memory)
    }

    /// The pass into a tensor file at `path`: `Ok(Err(_))` where writing
    /// it failed, `Err` where reading or computing did.
    fn features_to_file(&self, images: &Images, flip: bool, batch: i64, path: &Path, done: &mut impl FnMut(i64)) -> StageResult<StageResult<FeatureFile>> {
        let mut rows = FeatureWriter::new(path.to_path_buf());
        for s in (0..images.rows()).step_by(batch as usize) {
            let f = self.prefix_of(images, flip, s, batch)?;
            if let Err(e) = rows.push(&f) {
                return Ok(Err(e));
            }
            done(f.size()[0]);
        }
        // `features` asks for a file only where there are rows.
        Ok(rows.finish().and_then(|file| file.ok_or_else(|| StageError::new("no rows to write"))))
    }

    /// The pass into one tensor on the device.
    fn features_in_memory(&self, images: &Images, flip: bool, batch: i64, done: &mut impl FnMut(i64)) -> StageResult<Tensor> {
        let n = images.rows();
        let mut out: Option<Tensor> = None;
        for s in (0..n).step_by(batch as usize) {
            let f = self.prefix_of(images, flip, s, batch)?;
            let len = f.size()[0];
            out.get_or_insert_with(|| empty_rows_like(&f, n)).narrow(0, s, len).copy_(&f);
            done(len);
        }
        match out {
            Some(features) => Ok(features),
            None => Ok(self.prefix(&images.slice(0, 0)?)),
        }
    }

    /// The prefix's output for rows `first..first + batch` (fewer at the
    /// end) of `images`, mirrored when `flip`.
    fn prefix_of(&self, images: &Images, flip: bool, first: i64, batch: i64) -> StageResult<Tensor> {
        let x = images.slice(first, batch.min(images.rows() - first))?;
        Ok(self.prefix(&if flip { x.flip([3]) } else { x }))
    }

    /// Logits for a batch whose tail input is `x` (prefix already applied).
    pub(super) fn tail(&self, x: &Tensor, train: bool) -> Tensor {
        self.net.forward_range(x, self.first..self.net.blocks.len(), |i| train && self.trains[i]).to_kind(Kind::Float)
    }

    /// Tail input for rows `idx` of `src` with per-row flips / shifts.
    pub(super) fn batch(&self, src: &Source, idx: &Tensor, draw: &batches::Draw, translate: u32) -> StageResult<Tensor> {
        Ok(match src {
            Source::Images(x) => {
                // Augmenting on the device: the u8 gathers give the same
                // bytes anywhere, and on a GPU doing them on the CPU took
                // 3x the training step (ResNet50 at 224 px on an H200).
                let rows = device::gather(x, idx, self.feed.device);
                self.prefix(&batches::apply(&rows, draw, translate))
            }
            Source::Features(features) => {
                let x = features.gather(idx, &draw.flip, |dev, dims| draw.flip_mask(dev, dims))?;
                // `index_select` returns NCHW: back to the layout the convs run fast in.
                if x.dim() == 4 {
                    models::channels_last(&x)
                } else {
                    x
                }
            }
        })
    }
}

/// An uninitialised tensor of `n` rows shaped, typed and laid out like
/// `part`'s rows: channels-last when `part` is, so the tail runs on the
/// cached features in the layout it would get from the prefix.
fn empty_rows_like(part: &Tensor, n: i64) -> Tensor {
    let mut size = part.size();
    size[0] = n;
    match size[..] {
        [n, c, h, w] => models::empty_in_layout_of(part, [n, c, h, w]),
        _ => Tensor::empty(size, (part.kind(), part.device())),
    }
}

/// Mean loss and accuracy of the current weights on a val source, over
/// the `tta` views (cached features carry the mirror only, which
/// `TrainParams::caches_features` guarantees is all they need).
pub(super) fn validate(r: &Runner, src: &Source, y: &Tensor, tta: Tta, batch: i64, smoothing: f64) -> StageResult<(f64, f64)> {
    let n = y.size()[0];
    let (mut loss, mut correct) = (0.0, 0i64);
    tch::no_grad(|| -> StageResult<()> {
        for s in (0..n).step_by(batch as usize) {
            let len = batch.min(n - s);
            let logits = match src {
                Source::Images(x) => {
                    let v = r.feed.input(&x.narrow(0, s, len));
                    models::tta_logits(&v, tta, |v| r.tail(&r.lift(v), false))
                }
                Source::Features(features) => {
                    let (plain, flipped) = features.narrow(s, len)?;
                    let p = r.tail(&plain, false);
                    match flipped {
                        Some(f) if tta != Tta::None => (p + r.tail(&f, false)) * 0.5,
                        _ => p,
                    }
                }
            };
            let t = y.narrow(0, s, len).to_device(logits.device());
            loss += logits.cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Sum, -100, smoothing).double_value(&[]);
            correct += logits.argmax(1, false).eq_tensor(&t).sum(Kind::Int64).int64_value(&[]);
        }
        Ok(())
    })?;
    Ok((loss / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::tensor::TensorFile;
    use cairn_kinds::train::{Arch, ModelSpec, Normalize};
    use tch::Device;

    /// A fast net of widths 4 and 8 over three classes, fp32 on the CPU,
    /// and its feed.
    fn fast_net(vs: &nn::VarStore) -> (Net, Feed) {
        let spec = ModelSpec { arch: Arch::Fast, num_classes: 3, stem: None, widths: Some(vec![4, 8]), normalize: Normalize::Cifar };
        (models::build(&vs.root(), &spec), Feed { normalize: spec.normalize, kind: Kind::Float, device: Device::Cpu })
    }

    #[test]
    fn features_are_the_prefix_batches_in_one_tensor_and_layout() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (net, feed) = fast_net(&vs);
        let r = Runner::new(&net, feed, &["group2".to_string(), "head".to_string()], false);
        let pixels: Vec<u8> = (0..10 * 3 * 8 * 8).map(|i| (i * 37 % 251) as u8).collect();
        let images = Tensor::from_slice(&pixels).view([10, 3, 8, 8]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.arrow");
        crate::tensors::save(&path, &images).unwrap();
        let sources = [Images::Loaded(images.shallow_clone()), Images::File(TensorFile::open(&path).unwrap())];
        let in_memory = |h: Held| match h {
            Held::Memory(t) => t,
            Held::File(_) => panic!("features asked to stay in memory went to a file"),
        };
        for (src, flip) in sources.iter().flat_map(|s| [(s, false), (s, true)]) {
            let mut seen = 0;
            let got = in_memory(r.features(src, flip, 4, None, &mut |n| seen += n, &mut |_| {}).unwrap());
            let x = if flip { images.flip([3]) } else { images.shallow_clone() };
            let want = Tensor::cat(&[0, 4, 8].map(|s| r.prefix(&x.narrow(0, s, 4.min(10 - s)))), 0);
            assert_eq!(seen, 10);
            assert!(got.equal(&want), "flip {flip}: features differ from the prefix's batches");
            assert_eq!(got.stride(), want.stride(), "flip {flip}: not the prefix's layout");
            let Held::File(file) = r.features(src, flip, 4, Some(dir.path().join(format!("f{flip}.arrow"))), &mut |_| {}, &mut |_| {}).unwrap() else {
                panic!("features asked to go to a file stayed in memory")
            };
            assert!(file.load(0, 10).unwrap().equal(&want), "flip {flip}: the file holds other rows");
        }
        assert!(!in_memory(r.features(&sources[1], false, 4, None, &mut |_| {}, &mut |_| {}).unwrap()).is_contiguous(), "the fast net's prefix runs channels-last");
        assert_eq!(in_memory(r.features(&Images::Loaded(images.narrow(0, 0, 0)), false, 4, None, &mut |_| {}, &mut |_| {}).unwrap()).size()[0], 0);
    }

    /// A file that cannot be written (here: in a directory that does not
    /// exist) leaves the features in memory, the same rows, with the
    /// progress taken back and the reason heard.
    #[test]
    fn features_whose_file_cannot_be_written_stay_in_memory() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (net, feed) = fast_net(&vs);
        let r = Runner::new(&net, feed, &["group2".to_string(), "head".to_string()], false);
        let images = Images::Loaded(Tensor::from_slice(&(0..10 * 3 * 8 * 8).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>()).view([10, 3, 8, 8]));
        let (mut seen, mut why) = (0, Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let nowhere = dir.path().join("gone/f.arrow");
        let Held::Memory(got) = r.features(&images, true, 4, Some(nowhere.clone()), &mut |n| seen += n, &mut |w| why.push(w)).unwrap() else {
            panic!("an unwritable file was kept")
        };
        let Held::Memory(want) = r.features(&images, true, 4, None, &mut |_| {}, &mut |_| {}).unwrap() else { unreachable!() };
        assert!(got.equal(&want) && got.stride() == want.stride());
        assert_eq!(seen, 10, "the progress counts the rows once");
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("gone/f.arrow"), "the reason names the file: {why:?}");
        assert!(!nowhere.exists());
    }

    /// A disk that fills while the file is written (a 64 KiB tmpfs for
    /// 256 KB of features): the pass starts again in memory, to the same
    /// rows, and nothing is left on the disk.
    #[test]
    fn features_whose_disk_fills_mid_pass_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let Some(small) = crate::tmpfs::Tmpfs::mount(&dir.path().join("small"), "64k") else {
            crate::skip::unavailable("features_whose_disk_fills_mid_pass_stay_in_memory", "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return;
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let (net, feed) = fast_net(&vs);
        let r = Runner::new(&net, feed, &["group1".to_string(), "group2".to_string(), "head".to_string()], false);
        let images = Images::Loaded(Tensor::from_slice(&(0..64 * 3 * 32 * 32).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>()).view([64, 3, 32, 32]));
        let (mut seen, mut why) = (0, Vec::new());
        let path = small.0.join("features.arrow");
        let Held::Memory(got) = r.features(&images, false, 8, Some(path.clone()), &mut |n| seen += n, &mut |w| why.push(w)).unwrap() else {
            panic!("features that do not fit were kept in a file")
        };
        let Held::Memory(want) = r.features(&images, false, 8, None, &mut |_| {}, &mut |_| {}).unwrap() else { unreachable!() };
        assert!(crate::train::features::file_bytes(&want, 64) > 4 * 64 * 1024, "the features outgrow the disk");
        assert!(got.equal(&want) && seen == 64);
        assert!(why.len() == 1 && why[0].contains("No space left on device"), "{why:?}");
        assert!(!path.exists(), "the partial file is removed");
    }
}
