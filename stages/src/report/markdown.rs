//! `report.md`: the headline numbers, the per-class table with its macro
//! and weighted averages, the most confused pairs and a line per training
//! phase, as GitHub-flavoured Markdown (for a pull request or a terminal).

use std::fmt::Write;

use super::{num3, pct, Document};

/// Escapes the characters that would break a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace('\n', " ")
}

pub fn render(doc: &Document<'_>) -> String {
    let s = doc.stats;
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(out, "# {}\n", doc.title.replace('\n', " "));
    let _ = writeln!(
        out,
        "**Accuracy {}** on {} images, {} classes · macro F1 {} · weighted F1 {}{}\n",
        pct(s.accuracy),
        s.examples,
        s.classes.len(),
        num3(s.macro_avg.f1),
        num3(s.weighted_avg.f1),
        doc.mean_confidence.map(|c| format!(" · mean confidence {}", pct(c))).unwrap_or_default(),
    );

    let _ = writeln!(out, "## Per-class metrics\n");
    let _ = writeln!(out, "| class | precision | recall | F1 | support |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for c in &s.classes {
        let _ = writeln!(out, "| {} | {} | {} | {} | {} |", cell(&c.name), num3(c.precision), num3(c.recall), num3(c.f1), c.support);
    }
    for (name, a) in [("macro avg", &s.macro_avg), ("weighted avg", &s.weighted_avg)] {
        let _ = writeln!(out, "| **{name}** | {} | {} | {} | {} |", num3(a.precision), num3(a.recall), num3(a.f1), s.examples);
    }

    let _ = writeln!(out, "\n## Most confused pairs\n");
    if doc.pairs.is_empty() {
        let _ = writeln!(out, "No image was misclassified.");
    } else {
        let _ = writeln!(out, "| pair | a → b | b → a | total |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for p in doc.pairs {
            let (a, b) = (&s.classes[p.a].name, &s.classes[p.b].name);
            let _ = writeln!(out, "| {} ↔ {} | {} | {} | {} |", cell(a), cell(b), p.a_as_b, p.b_as_a, p.total());
        }
    }

    if !doc.phases.is_empty() {
        let _ = writeln!(out, "\n## Training phases\n");
        let _ = writeln!(out, "| phase | epochs | final train acc | final val acc | best val acc |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let acc = |a: Option<f64>| a.map(|a| format!("{a:.2}%")).unwrap_or_else(|| "–".into());
        for ph in doc.phases {
            let last = ph.epochs.last();
            let best = ph.epochs.iter().filter_map(|e| e.val_acc).reduce(f64::max);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(&ph.name),
                ph.epochs.len(),
                acc(last.map(|e| e.train_acc)),
                acc(last.and_then(|e| e.val_acc)),
                acc(best)
            );
        }
    }
    out
}
