//! The `report` stage end to end on synthetic inputs: CIFAR-10-like
//! predictions with a planted cat↔dog confusion, two training phases, a
//! Grad-CAM figure and stage params. Checks the per-class numbers against an
//! independent recomputation from the predictions, the confused pairs, the
//! metrics JSON, the self-containedness of the HTML, and — as a person
//! would — that headless Chromium renders the page with every image loaded.

mod common;
#[path = "../../tests/support/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_formats::table::{Column, Table};
use common::Rng;
use serde_json::json;

const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const N: usize = 2000;

/// Predictions where each class is right with its own probability and cats
/// and dogs are mistaken for each other more than anything else.
fn predictions(rng: &mut Rng) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
    let (mut label, mut pred, mut conf) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..N {
        let l = rng.below(10) as i64;
        let right = rng.unit() < 0.55 + 0.04 * l as f64;
        let p = if right {
            l
        } else if l == 3 && rng.unit() < 0.7 {
            5
        } else if l == 5 && rng.unit() < 0.6 {
            3
        } else {
            rng.below(10) as i64
        };
        label.push(l);
        pred.push(p);
        conf.push(if p == l { 0.6 + 0.4 * rng.unit() } else { 0.3 + 0.5 * rng.unit() });
    }
    (label, pred, conf)
}

fn history(epochs: usize, start_acc: f64, path: &Path) {
    let e: Vec<i64> = (1..=epochs as i64).collect();
    let acc: Vec<f64> = (0..epochs).map(|i| start_acc + (0.9 - start_acc) * (1.0 - (-(i as f64) / 3.0).exp())).collect();
    let loss: Vec<f64> = acc.iter().map(|a| 2.3 * (1.0 - a) + 0.05).collect();
    Table::new()
        .with("epoch", Column::I64(e))
        .with("train_loss", Column::F64(loss.clone()))
        .with("train_acc", Column::F64(acc.clone()))
        .with("val_loss", Column::F64(loss.iter().map(|l| l + 0.1).collect()))
        .with("val_acc", Column::F64(acc.iter().map(|a| a - 0.04).collect()))
        .with("lr", Column::F64(vec![0.1; epochs]))
        .write(path)
        .unwrap();
}

struct Run {
    _dir: tempfile::TempDir,
    out: PathBuf,
    label: Vec<i64>,
    pred: Vec<i64>,
}

fn run_report() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng(0x5eed);
    let (label, pred, conf) = predictions(&mut rng);
    Table::new()
        .with("index", Column::I64((0..N as i64).collect()))
        .with("label", Column::I64(label.clone()))
        .with("pred", Column::I64(pred.clone()))
        .with("confidence", Column::F32(conf.iter().map(|&c| c as f32).collect()))
        .write(&d.join("predictions.parquet"))
        .unwrap();
    Table::new()
        .with("label", Column::I64((0..10).collect()))
        .with("name", Column::Str(CLASSES.iter().map(|s| s.to_string()).collect()))
        .write(&d.join("classes.parquet"))
        .unwrap();
    history(4, 0.35, &d.join("h1.parquet"));
    history(7, 0.6, &d.join("h2.parquet"));
    // A stand-in Grad-CAM figure: any PNG the gradcam stage could produce.
    let fig = cairn_stages::plot::montage::draw(
        "Grad-CAM <stand-in>",
        "synthetic tiles",
        &[cairn_stages::plot::montage::Row {
            header: Some("cat".into()),
            tiles: (0..4u8)
                .map(|i| cairn_stages::plot::montage::Tile {
                    rgb: (0..64 * 64 * 3).map(|p| ((p as u32 * (i as u32 + 1)) % 251) as u8).collect(),
                    side: 64,
                    caption: vec!["pred: dog".into(), "conf 91.0%".into()],
                    frame: Some([214, 39, 40]),
                })
                .collect(),
        }],
        4,
    )
    .unwrap();
    fig.save(&d.join("gallery.png")).unwrap();
    Table::new()
        .with("method", Column::Str(vec!["salient".into(), "random".into()]))
        .with("mean_drop", Column::F64(vec![0.31, 0.04]))
        .write(&d.join("faith.parquet"))
        .unwrap();
    let pipeline = json!({"stages": {
        "frozen": {"kind": "train", "params": {"lr": 0.1, "epochs": 4, "trainable": ["head"]}},
        "finetune": {"kind": "train", "params": {"lr": 0.01, "epochs": 7, "model": {"arch": "resnet18"}}},
        "report": {"kind": "report", "params": {"title": "CIFAR-10 <subset> & fine-tune"}}
    }});
    std::fs::write(d.join("pipeline.json"), pipeline.to_string()).unwrap();

    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let inputs = [
        ("predictions", vec![d.join("predictions.parquet")]),
        ("classes", vec![d.join("classes.parquet")]),
        ("histories", vec![d.join("h1.parquet"), d.join("h2.parquet")]),
        ("gradcam", vec![d.join("gallery.png")]),
        ("faithfulness", vec![d.join("faith.parquet")]),
        ("pipeline", vec![d.join("pipeline.json")]),
    ];
    let raw = json!({"title": "CIFAR-10 <subset> & fine-tune", "phases": ["frozen", "finetune"]});
    let mut ctx = common::ctx("report", &raw, &inputs, &out);
    cairn_stages::run(&mut ctx).unwrap();
    Run { _dir: dir, out, label, pred }
}

fn f64s(t: &Table, name: &str) -> Vec<f64> {
    match t.column(name) {
        Some(Column::F64(v)) => v.clone(),
        other => panic!("column {name}: {other:?}"),
    }
}

fn i64s(t: &Table, name: &str) -> Vec<i64> {
    match t.column(name) {
        Some(Column::I64(v)) => v.clone(),
        other => panic!("column {name}: {other:?}"),
    }
}

#[test]
fn per_class_numbers_match_an_independent_recount() {
    let r = run_report();
    let t = Table::read(&r.out.join("per_class.parquet")).unwrap();
    let (precision, recall, f1, support) = (f64s(&t, "precision"), f64s(&t, "recall"), f64s(&t, "f1"), i64s(&t, "support"));
    assert_eq!(t.num_rows(), 12, "10 classes + macro + weighted");
    let (mut mp, mut mr, mut mf, mut wf) = (0.0, 0.0, 0.0, 0.0);
    for c in 0..10i64 {
        // Plain loops, no polars: the recount must not share the stage's code.
        let tp = r.label.iter().zip(&r.pred).filter(|(l, p)| **l == c && **p == c).count() as f64;
        let sup = r.label.iter().filter(|l| **l == c).count() as f64;
        let predicted = r.pred.iter().filter(|p| **p == c).count() as f64;
        let (p, rc) = (tp / predicted, tp / sup);
        let f = 2.0 * p * rc / (p + rc);
        let i = c as usize;
        assert!((precision[i] - p).abs() < 1e-12, "precision of {}: {} vs {p}", CLASSES[i], precision[i]);
        assert!((recall[i] - rc).abs() < 1e-12, "recall of {}", CLASSES[i]);
        assert!((f1[i] - f).abs() < 1e-12, "F1 of {}", CLASSES[i]);
        assert_eq!(support[i], sup as i64);
        mp += p / 10.0;
        mr += rc / 10.0;
        mf += f / 10.0;
        wf += f * sup / N as f64;
    }
    assert!((precision[10] - mp).abs() < 1e-12 && (recall[10] - mr).abs() < 1e-12 && (f1[10] - mf).abs() < 1e-12);
    assert!((f1[11] - wf).abs() < 1e-12, "weighted F1 {} vs {wf}", f1[11]);
    assert_eq!(i64s(&t, "class")[10..], [-1, -1]);

    let acc = r.label.iter().zip(&r.pred).filter(|(l, p)| l == p).count() as f64 / N as f64;
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(r.out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["schema"], "cairn.report.metrics/1");
    assert!((m["accuracy"].as_f64().unwrap() - acc).abs() < 1e-6);
    assert!((m["macro_avg"]["f1"].as_f64().unwrap() - mf).abs() < 1e-6);
    assert_eq!(m["per_class"][3]["name"], "cat");
    assert_eq!(m["phases"][1]["name"], "finetune");
    assert_eq!(m["phases"][1]["epochs"], 7);
}

#[test]
fn cat_and_dog_are_the_most_confused_pair() {
    let r = run_report();
    let t = Table::read(&r.out.join("confused_pairs.parquet")).unwrap();
    let count = |a: i64, b: i64| r.label.iter().zip(&r.pred).filter(|(l, p)| **l == a && **p == b).count() as i64;
    assert_eq!((i64s(&t, "class_a")[0], i64s(&t, "class_b")[0]), (3, 5));
    assert_eq!(i64s(&t, "a_as_b")[0], count(3, 5));
    assert_eq!(i64s(&t, "b_as_a")[0], count(5, 3));
    let totals = i64s(&t, "total");
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "sorted most confused first");
    let md = std::fs::read_to_string(r.out.join("report.md")).unwrap();
    assert!(md.contains("| cat ↔ dog |"), "{md}");
    assert!(md.contains("| **weighted avg** |"));
}

#[test]
fn html_is_self_contained_and_escaped() {
    let r = run_report();
    let html = std::fs::read_to_string(r.out.join("index.html")).unwrap();
    // curves, confusion matrix, one Grad-CAM figure
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 3);
    assert!(!html.contains("http://") && !html.contains("https://"), "no external resources");
    assert!(html.contains("CIFAR-10 &lt;subset&gt; &amp; fine-tune"));
    assert!(!html.contains("<subset>"));
    assert!(html.contains("finetune") && html.contains("<code>train</code>"));
    for fig in ["confusion.png", "curves.png"] {
        let (w, h, _, _) = common::decode_png(&r.out.join(fig));
        assert!(w >= 600 && h >= 400, "{fig} is {w}×{h}");
    }
}

/// Chromium on PATH, installed once per machine (scripts/setup-chromium.sh)
/// where it is missing, as the Slurm and S3 tests install theirs.
fn chromium() -> Option<PathBuf> {
    let on_path = || {
        ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
            std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
        })
    };
    on_path().or_else(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup-chromium.sh");
        let _ = Command::new("bash").arg(script).stderr(std::process::Stdio::inherit()).status();
        on_path()
    })
}

/// Opens the report in headless Chromium like a reader would: every image
/// must decode (a script marks the body with the count of broken ones) and
/// the screenshot must show more than a blank page.
#[test]
fn chromium_renders_the_report_with_every_image() {
    let Some(browser) = chromium() else {
        skip::missing(
            "chromium_renders_the_report_with_every_image",
            "chromium is not on PATH and scripts/setup-chromium.sh could not install it; install chromium to check the rendered report",
        );
        return;
    };
    let r = run_report();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-check");
    std::fs::create_dir_all(&keep).unwrap();
    // Kept for a person to look at after the run.
    for fig in ["confusion.png", "curves.png", "report.md"] {
        std::fs::copy(r.out.join(fig), keep.join(fig)).unwrap();
    }
    // The probe works on a copy, so the artifact itself stays script-free.
    let html = std::fs::read_to_string(r.out.join("index.html")).unwrap();
    let probe = r#"<script>window.addEventListener('load', () => {
        const imgs = [...document.images];
        document.body.setAttribute('data-images', imgs.length);
        document.body.setAttribute('data-broken', imgs.filter(i => !i.complete || i.naturalWidth === 0).length);
    });</script></body>"#;
    let page = keep.join("index.html");
    std::fs::write(&page, html.replace("</body>", probe)).unwrap();
    let url = format!("file://{}", page.display());
    let common_args = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"];
    let dom = Command::new("timeout").arg("120").arg(&browser).args(common_args).arg("--dump-dom").arg(&url).output().unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("data-images=\"3\""), "the page's images were not counted; DOM starts {:?}", &dom[..dom.len().min(300)]);
    assert!(dom.contains("data-broken=\"0\""), "some images failed to load");

    let shot = keep.join("index.png");
    let _ = std::fs::remove_file(&shot);
    let status = Command::new("timeout")
        .arg("120")
        .arg(&browser)
        .args(common_args)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,2000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&status.stderr));
    let (w, h, px, ch) = common::decode_png(&shot);
    assert_eq!((w, h), (1280, 2000));
    let mut colours: Vec<[u8; 3]> = px.chunks(ch).step_by(97).map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 50, "screenshot looks blank ({} colours)", colours.len());
    // The lower half holds the per-class table and the confusion matrix.
    let lower = &px[px.len() / 2..];
    let dark = lower.chunks(ch).filter(|p| p[0] < 100 && p[1] < 100).count();
    assert!(dark > 5000, "lower half of the page is nearly empty ({dark} dark pixels)");
    eprintln!("screenshot: {}", shot.display());
}
