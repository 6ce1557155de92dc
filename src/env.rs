//! The facts about this machine that can change a stage's results.
//!
//! Detected without loading libtorch (which costs most of a second): the
//! libtorch version is fixed at build time (tch pins it), the CUDA device is
//! found through the NVIDIA driver's `/proc` entries, and the thread count
//! comes from `CAIRN_THREADS` or the number of CPUs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::EnvNeeds;

/// The libtorch version cairn's worker is built against (tch = 0.24).
pub const TORCH_VERSION: &str = "2.11.0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub torch_version: String,
    /// `cpu`, or `cuda:<device model>`.
    pub device: String,
    /// Intra-op threads for CPU compute.
    pub threads: usize,
}

impl Environment {
    pub fn detect(force_cpu: bool) -> Self {
        let device = if force_cpu { None } else { cuda_device_name() };
        Self {
            torch_version: TORCH_VERSION.to_string(),
            device: device.map(|n| format!("cuda:{n}")).unwrap_or_else(|| "cpu".into()),
            threads: threads_from_env(),
        }
    }

    pub fn is_cuda(&self) -> bool {
        self.device.starts_with("cuda")
    }

    /// The environment entries a kind's key includes. Thread count matters
    /// only on CPU: CUDA kernels' reduction order does not follow it.
    pub fn key_entries(&self, needs: EnvNeeds) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if needs.torch {
            m.insert("libtorch".into(), self.torch_version.clone());
            m.insert("device".into(), self.device.clone());
        }
        if needs.threads && !self.is_cuda() {
            m.insert("threads".into(), self.threads.to_string());
        }
        m
    }
}

fn threads_from_env() -> usize {
    std::env::var("CAIRN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The model name of the first NVIDIA GPU, if the driver is loaded.
/// `CUDA_VISIBLE_DEVICES=""` hides it, as it does from libtorch.
pub fn cuda_device_name() -> Option<String> {
    if std::env::var("CUDA_VISIBLE_DEVICES").map(|v| v.trim().is_empty() || v == "-1").unwrap_or(false) {
        return None;
    }
    let dir = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    let mut gpus: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    gpus.sort();
    let info = std::fs::read_to_string(gpus.first()?.join("information")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}
