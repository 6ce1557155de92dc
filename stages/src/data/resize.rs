//! The `resize` stage: resamples a u8 `N×C×H×W` image tensor to
//! `size×size`, in slices of rows so memory stays bounded (8,000 images at
//! 224 px are 1.2 GB even as u8): at most three slices of 64 MB at a time,
//! one being resampled, one queued and one being written by a thread of
//! its own ([`write_behind`]).
//!
//! Bilinear, bicubic and nearest run libtorch's kernels directly on u8
//! (the same ops `torch.nn.functional.interpolate` calls, with
//! `align_corners=False`), which measured 5–10× faster on CPU than
//! resampling in f32 and rounding back; `area` (box averaging through
//! `adaptive_avg_pool2d`) has no u8 kernel, so it goes through f32 and is
//! rounded half-to-even and clamped. Each output pixel depends only on its
//! input image, so results do not depend on the slice size or thread count.
//!
//! It runs on the CPU even where the worker has a GPU: libtorch's CUDA
//! antialiased kernels have no u8 version (`upsample_bilinear2d_out_frame
//! not implemented for 'Byte'`, seen on an H200), the CPU's u8 kernels
//! resample 32 px CIFAR images to 224 px at ~3,200 img/s on two EPYC cores,
//! and the output bytes then do not depend on the device.

use cairn_formats::{DType, TensorFile, TensorWriter};
use cairn_kinds::data::{ResizeMode, ResizeParams};
use tch::{Kind, Tensor};

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::tensors;
use crate::write_behind::write_behind;

/// Output bytes per slice (and f32 working memory for `area`, 4× this).
const SLICE_BYTES: usize = 64 << 20;

pub fn resize(ctx: &mut WorkerCtx, params: ResizeParams) -> StageResult {
    let mut total = 0;
    for split in &params.splits {
        total += resize_one(ctx, &params, split, SLICE_BYTES)?;
    }
    ctx.metric("images", total as f64);
    Ok(())
}

/// Resizes the tensor in slot `split` into the output of the same name,
/// about `slice_bytes` of output at a time.
pub(crate) fn resize_one(ctx: &WorkerCtx, params: &ResizeParams, split: &str, slice_bytes: usize) -> StageResult<usize> {
    let input = TensorFile::open(ctx.input(split)?)?;
    let [n, c, h, w] = image_shape(&input)?;
    let out_row = c * params.size * params.size;
    let slice = (slice_bytes / out_row.max(1)).clamp(1, n.max(1));
    let writer = TensorWriter::create(ctx.output(split)?, DType::U8, &[c, params.size, params.size])?;
    write_behind(
        |send| {
            let mut first = 0;
            while first < n {
                let count = slice.min(n - first);
                let images = tensors::load_rows(&input, first, count)?;
                if !send(resample(&images, params)?) {
                    break; // the writer stopped: its error is returned
                }
                first += count;
                // A bar on a terminal; in a log, a heartbeat only where a
                // split takes long (the line below closes each split).
                if first < n && ctx.progress_due() {
                    ctx.progress_at(format!("{split}: resizing {h}×{w} → {0}×{0}", params.size), first as u64, n as u64, true);
                }
            }
            Ok(())
        },
        |received| write_all(writer, received),
    )?;
    ctx.progress(format!("{split}: resized {n} images {h}×{w} → {0}×{0}", params.size));
    Ok(n)
}

/// The `N×C×H×W` shape of a u8 image tensor, or an error naming its file.
fn image_shape(input: &TensorFile) -> StageResult<[usize; 4]> {
    let path = input.path().display();
    let &[n, c, h, w] = input.shape() else {
        return Err(StageError::new(format!("{path}: resize needs N×C×H×W images, got shape {:?}", input.shape())));
    };
    if input.dtype() != DType::U8 {
        return Err(StageError::new(format!("{path}: resize needs u8 images, got {}", input.dtype())));
    }
    Ok([n, c, h, w])
}

/// Writes every slice `received` brings, in order, and finishes the file.
fn write_all(mut writer: TensorWriter, received: std::sync::mpsc::Receiver<Tensor>) -> StageResult {
    for resized in received {
        tensors::write_rows(&mut writer, &resized)?;
    }
    writer.finish()?;
    Ok(())
}

/// Resamples a u8 `N×C×H×W` batch to `size×size`.
pub fn resample(images: &Tensor, p: &ResizeParams) -> StageResult<Tensor> {
    let size = [p.size as i64, p.size as i64];
    let aa = p.antialias();
    Ok(match p.mode {
        ResizeMode::Bilinear if aa => images.f_internal_upsample_bilinear2d_aa(size, false, None, None)?,
        ResizeMode::Bilinear => images.f_upsample_bilinear2d(size, false, None, None)?,
        ResizeMode::Bicubic if aa => images.f_internal_upsample_bicubic2d_aa(size, false, None, None)?,
        ResizeMode::Bicubic => images.f_upsample_bicubic2d(size, false, None, None)?,
        ResizeMode::Nearest => images.f_upsample_nearest2d(size, None, None)?,
        ResizeMode::Area => images
            .f_to_kind(Kind::Float)?
            .f_adaptive_avg_pool2d(size)?
            .f_round()?
            .f_clamp(0.0, 255.0)?
            .f_to_kind(Kind::Uint8)?,
    })
}
