//! Heat-map overlays: the image and its Grad-CAM map are enlarged
//! bilinearly to the tile size and the map's jet colour is blended in with
//! an opacity that grows with saliency (0.2 at 0, 0.6 at 1), so the salient
//! region stands out while the rest of the image stays readable.

use tch::{Kind, Tensor};

use crate::plot::colormap::jet;

const MIN_ALPHA: f32 = 0.2;
const MAX_ALPHA: f32 = 0.6;

/// A `side`×`side` RGB tile of `image` (u8 or float 0–255, 3×H×W) with
/// `cam` (H×W in [0, 1]) blended in.
pub fn overlay(image: &Tensor, cam: &Tensor, side: i64) -> Vec<u8> {
    let grow = |t: Tensor| t.to_device(tch::Device::Cpu).to_kind(Kind::Float).unsqueeze(0).upsample_bilinear2d([side, side], false, None, None);
    let img: Vec<f32> = Vec::try_from(grow(image.shallow_clone()).clamp(0.0, 255.0).flatten(0, -1)).unwrap_or_default();
    let map: Vec<f32> = Vec::try_from(grow(cam.unsqueeze(0)).clamp(0.0, 1.0).flatten(0, -1)).unwrap_or_default();
    let plane = (side * side) as usize;
    if img.len() != 3 * plane || map.len() != plane {
        // Only a malformed tensor gets here; show a grey tile, not a panic.
        return vec![128; 3 * plane];
    }
    let mut out = vec![0u8; 3 * plane];
    for p in 0..plane {
        let colour = jet(map[p] as f64);
        let alpha = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * map[p];
        for c in 0..3 {
            let v = (1.0 - alpha) * img[c * plane + p] + alpha * colour[c] as f32;
            out[3 * p + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn hot_pixels_turn_red_and_cold_ones_keep_the_image() {
        let image = Tensor::full([3, 4, 4], 200.0, (Kind::Float, Device::Cpu));
        let cam = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
        let _ = cam.narrow(1, 2, 2).fill_(1.0);
        let tile = overlay(&image, &cam, 8);
        assert_eq!(tile.len(), 8 * 8 * 3);
        let left = &tile[0..3];
        let right = &tile[(7 * 3)..(8 * 3)];
        assert!(right[0] > right[2] + 50, "hot side should be red: {right:?}");
        assert!(left[0] > 150 && left[1] > 150, "cold side keeps the light image: {left:?}");
    }
}
