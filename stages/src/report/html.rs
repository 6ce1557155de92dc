//! `index.html`: the whole report in one file that opens from disk with no
//! server and no network — CSS inline, every figure a base64 `data:` URI.
//! Sections: headline numbers, learning curves, per-class table (with a bar
//! per F1), confusion matrix and confused pairs, the Grad-CAM gallery when
//! given, and the params of the pipeline's stages. All text from inputs is
//! HTML-escaped.

use std::fmt::Write;

use base64::Engine;
use cairn_formats::table::{Column, Table};
use serde_json::Value;

use super::{num3, pct, Document};

const CSS: &str = r#"
:root { --ink:#1d2433; --muted:#5b6475; --line:#e3e7ee; --accent:#1f77b4; --bg:#f6f8fb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 14px; }
.sub { color: var(--muted); margin: 0 0 22px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:20px 22px; margin: 0 0 22px; }
.cards { display:flex; flex-wrap:wrap; gap:14px; margin: 0 0 22px; }
.card { flex: 1 1 160px; background:#fff; border:1px solid var(--line); border-radius:10px; padding:14px 18px; }
.card .v { font-size: 26px; font-weight: 700; }
.card .k { color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { font-size: 13px; color: var(--muted); font-weight: 600; }
tr.avg td { font-weight: 600; background: #fafbfd; }
.bar { display:inline-block; height:9px; background:var(--accent); border-radius:4px; vertical-align:middle; margin-left:8px; }
img.fig { display:block; max-width:100%; height:auto; margin: 0 auto; }
figure { margin: 0 0 18px; }
figcaption { color: var(--muted); font-size: 13px; text-align: center; margin-top: 6px; }
/* The matrix keeps its natural size (its numbers stay legible); the pairs table sits below. */
.two { display:grid; grid-template-columns: minmax(0, 1fr); gap: 22px; }
.two table { max-width: 640px; }
details { border-top: 1px solid var(--line); padding: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
td.param { text-align: left; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
"#;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn img(png: &[u8], alt: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    format!(r#"<img class="fig" alt="{}" src="data:image/png;base64,{b64}">"#, esc(alt))
}

fn card(out: &mut String, value: &str, key: &str) {
    let _ = write!(out, r#"<div class="card"><div class="v">{}</div><div class="k">{}</div></div>"#, esc(value), esc(key));
}

pub fn render(doc: &Document<'_>) -> String {
    let s = doc.stats;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body><main>",
        esc(doc.title)
    );
    let _ = write!(o, "<h1>{}</h1><p class=\"sub\">{} test images · {} classes</p>", esc(doc.title), s.examples, s.classes.len());

    o.push_str(r#"<div class="cards">"#);
    card(&mut o, &pct(s.accuracy), "accuracy");
    card(&mut o, &num3(s.macro_avg.f1), "macro F1");
    card(&mut o, &num3(s.weighted_avg.f1), "weighted F1");
    if let Some(c) = doc.mean_confidence {
        card(&mut o, &pct(c), "mean confidence");
    }
    if let Some(worst) = s.classes.iter().filter(|c| c.support > 0).min_by(|a, b| a.recall.total_cmp(&b.recall)) {
        card(&mut o, &format!("{} ({})", worst.name, pct(worst.recall)), "lowest recall");
    }
    o.push_str("</div>");

    let _ = write!(o, "<section><h2>Learning curves</h2>{}</section>", img(doc.curves_png, "learning curves: loss and accuracy per epoch"));

    o.push_str("<section><h2>Per-class metrics</h2><table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead><tbody>");
    for c in &s.classes {
        let bar = (c.f1 * 80.0).round() as u32;
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}<span class="bar" style="width:{bar}px"></span></td><td>{}</td></tr>"#,
            esc(&c.name),
            num3(c.precision),
            num3(c.recall),
            num3(c.f1),
            c.support
        );
    }
    for (name, a) in [("macro avg", &s.macro_avg), ("weighted avg", &s.weighted_avg)] {
        let _ = write!(
            o,
            r#"<tr class="avg"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            num3(a.precision),
            num3(a.recall),
            num3(a.f1),
            s.examples
        );
    }
    o.push_str("</tbody></table></section>");

    let _ = write!(o, r#"<section><h2>Confusion matrix</h2><div class="two"><div>{}</div><div>"#, img(doc.confusion_png, "confusion matrix"));
    o.push_str("<h2>Most confused pairs</h2>");
    if doc.pairs.is_empty() {
        o.push_str("<p>No image was misclassified.</p>");
    } else {
        o.push_str("<table><thead><tr><th>pair</th><th>a → b</th><th>b → a</th><th>total</th></tr></thead><tbody>");
        for p in doc.pairs {
            let (a, b) = (&s.classes[p.a].name, &s.classes[p.b].name);
            let _ = write!(o, "<tr><td>{} ↔ {}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(a), esc(b), p.a_as_b, p.b_as_a, p.total());
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("</div></div></section>");

    if !doc.gallery.is_empty() || doc.faithfulness.is_some() {
        o.push_str("<section><h2>Grad-CAM</h2>");
        for (i, png) in doc.gallery.iter().enumerate() {
            let _ = write!(o, "<figure>{}</figure>", img(png, &format!("Grad-CAM figure {}", i + 1)));
        }
        if let Some(t) = doc.faithfulness {
            o.push_str("<h2>Faithfulness</h2>");
            table(&mut o, t);
        }
        o.push_str("</section>");
    }

    if !doc.stages.is_empty() {
        o.push_str("<section><h2>Stage params</h2>");
        for st in doc.stages {
            let kind = st.kind.as_deref().map(|k| format!(" <code>{}</code>", esc(k))).unwrap_or_default();
            let _ = write!(o, "<details open><summary>{}{kind}</summary><table><tbody>", esc(&st.name));
            for (k, v) in &st.params {
                let shown = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(o, r#"<tr><td><code>{}</code></td><td class="param"><code>{}</code></td></tr>"#, esc(k), esc(&shown));
            }
            o.push_str("</tbody></table></details>");
        }
        o.push_str("</section>");
    }
    o.push_str("<footer>Generated by cairn's <code>report</code> stage.</footer></main></body></html>\n");
    o
}

/// Renders any cairn table (all columns) as an HTML table.
fn table(o: &mut String, t: &Table) {
    o.push_str("<table><thead><tr>");
    for (name, _) in &t.columns {
        let _ = write!(o, "<th>{}</th>", esc(name));
    }
    o.push_str("</tr></thead><tbody>");
    for r in 0..t.num_rows() {
        o.push_str("<tr>");
        for (_, c) in &t.columns {
            let v = match c {
                Column::I64(v) => v[r].to_string(),
                Column::F64(v) => format!("{:.4}", v[r]),
                Column::F32(v) => format!("{:.4}", v[r]),
                Column::Str(v) => v[r].clone(),
                Column::Bool(v) => v[r].to_string(),
            };
            let _ = write!(o, "<td>{}</td>", esc(&v));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc(r#"<b a="x">&'"#), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
