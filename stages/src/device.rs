//! Getting data onto the compute device without making a GPU wait.
//!
//! libtorch's blocking copy to CUDA synchronises the stream: the host waits
//! for every kernel queued before it. A training step that uploads its
//! indices, masks and labels that way, and gathers its batch in host memory
//! first, leaves the GPU idle for that long every step (ResNet50 at 224 px
//! on an H200 trained at 3,300 img/s in the pipeline against 4,500 in
//! `bench_train`). So small per-step tensors go through [`upload`], an
//! asynchronous copy from pinned memory, and a data set that fits easily in
//! the GPU's free memory is moved there once ([`fits_in_free_memory`]), so
//! batches are gathered where they are used. Copies move bytes: what runs
//! where changes no result.

use tch::{Device, Tensor};

/// The share of the GPU's free memory a resident data set may take; the
/// rest is for the weights, optimizer state and activations.
const RESIDENT_SHARE: f64 = 0.25;

/// `t`, a tensor made on the host, on `device`; on a GPU without waiting
/// for it: copied into pinned memory, which libtorch's host allocator keeps
/// until the transfer ends, or by a blocking copy when pinning fails.
/// (`_pin_memory`, since `pin_memory` warns on every call that names a
/// device, and tch always names one.)
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if !device.is_cuda() {
        return t.to_device(device);
    }
    match t.f_internal_pin_memory(device) {
        Ok(pinned) => pinned.to_device_(device, t.kind(), true, false),
        Err(_) => t.to_device(device),
    }
}

/// Rows `idx` (a host tensor) of `t`, on `device`: gathered where `t`
/// lives, so a resident set moves only the indices and a host one only
/// the batch.
pub fn gather(t: &Tensor, idx: &Tensor, device: Device) -> Tensor {
    if t.device() == device {
        t.index_select(0, &upload(idx, device))
    } else {
        upload(&t.index_select(0, idx), device)
    }
}

/// Whether `bytes` of data may live on `device` for a whole stage: always
/// on the CPU; on a GPU when they take at most a quarter of its free
/// memory (never when the free memory cannot be read). Also says why.
pub fn fits_in_free_memory(device: Device, bytes: u64) -> (bool, String) {
    if !device.is_cuda() {
        return (true, String::new());
    }
    let gb = |b: u64| b as f64 / 1e9;
    match cuda_free_bytes() {
        Some(free) if bytes as f64 <= RESIDENT_SHARE * free as f64 => {
            (true, format!("{:.1} GB of training data on the GPU ({:.1} GB free)", gb(bytes), gb(free)))
        }
        Some(free) => (false, format!("{:.1} GB of training data stay in host memory (over a quarter of the GPU's {:.1} GB free)", gb(bytes), gb(free))),
        None => (false, "training data stay in host memory (the GPU's free memory could not be read)".into()),
    }
}

/// Free memory on the current CUDA device, from the CUDA runtime libtorch
/// has loaded (tch has no binding for it; `.so.13` is the soname of the
/// pinned cu130 build's); `None` when it is not loaded.
fn cuda_free_bytes() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: RTLD_NOLOAD only finds a library already in the process (the
    // runtime libtorch_cuda links); the symbol has cudaMemGetInfo's C
    // signature in every CUDA release, and the handle stays open (a
    // loaded library is never unloaded under libtorch).
    unsafe {
        let lib = libc::dlopen(c"libcudart.so.13".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if lib.is_null() {
            return None;
        }
        let sym = libc::dlsym(lib, c"cudaMemGetInfo".as_ptr());
        if sym.is_null() {
            return None;
        }
        let get: MemGetInfo = std::mem::transmute::<*mut libc::c_void, MemGetInfo>(sym);
        let (mut free, mut total) = (0usize, 0usize);
        (get(&mut free, &mut total) == 0).then_some(free as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_cpu_data_always_fits_and_uploads_are_plain_copies() {
        assert!(fits_in_free_memory(Device::Cpu, u64::MAX).0);
        let t = Tensor::from_slice(&[1i64, 2, 3]);
        assert!(upload(&t, Device::Cpu).equal(&t));
        let rows = gather(&t, &Tensor::from_slice(&[2i64, 0]), Device::Cpu);
        assert!(rows.equal(&Tensor::from_slice(&[3i64, 1])));
    }
}
