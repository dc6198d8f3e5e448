//! A hand-written SVG scatter chart of the model totals: x = relative RMS reconstruction error
//! (log scale), y = bits per weight, one labelled point per scheme.

use std::fmt::Write;

use super::Report;

const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the chart. Schemes without a known error (a quantized model's stored scheme) are left
/// out; with no point at all the chart says so.
///
/// Two points per scheme are drawn: the filled one is the entropy-coded size (entropy + side
/// information), the hollow one the plain packed size (bits + side information).
pub fn render_svg(report: &Report, title: &str) -> String {
    let pts: Vec<(String, f64, f64, f64)> = report
        .schemes
        .iter()
        .zip(&report.totals)
        .filter_map(|(s, t)| {
            let e = t.rel_rms()?;
            (e > 0.0 && e.is_finite())
                .then(|| (s.label(), e, t.total_per_weight(), t.packed_per_weight()))
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    if pts.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no scheme with a known reconstruction error</text>"#,
            W / 2.0,
            H / 2.0
        );
        out.push_str("</svg>\n");
        return out;
    }
    // x: decades covering every error; y: 0 .. the largest bits/weight, rounded up.
    let lo = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let mut hi = pts.iter().map(|p| p.1).fold(0.0, f64::max).log10().ceil();
    if hi <= lo {
        hi = lo + 1.0;
    }
    let ymax = pts
        .iter()
        .map(|p| p.2.max(p.3))
        .fold(0.0, f64::max)
        .ceil()
        .max(1.0);
    let xs = |e: f64| LEFT + (e.log10() - lo) / (hi - lo) * pw;
    let ys = |b: f64| TOP + ph - b / ymax * ph;
    // Grid and ticks.
    let mut d = lo;
    while d <= hi + 1e-9 {
        let x = LEFT + (d - lo) / (hi - lo) * pw;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">1e{d}</text>"#,
            TOP + ph + 16.0
        );
        for m in 2..10 {
            let xm = xs(10f64.powf(d) * m as f64);
            if d < hi && xm < LEFT + pw {
                let _ = writeln!(
                    out,
                    r##"<line x1="{xm:.1}" y1="{}" x2="{xm:.1}" y2="{}" stroke="#999"/>"##,
                    TOP + ph,
                    TOP + ph - 4.0
                );
            }
        }
        d += 1.0;
    }
    let ystep = if ymax > 10.0 { 2.0 } else { 1.0 };
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        let py = ys(y);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{y}</text>"#,
            LEFT - 6.0,
            py + 4.0
        );
        y += ystep;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">relative RMS reconstruction error (log scale)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">bits per weight (incl. scales/biases)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Legend.
    let lx = LEFT + pw - 190.0;
    let _ = writeln!(
        out,
        r##"<circle cx="{}" cy="{}" r="4" fill="#1f77b4"/>"##,
        lx,
        TOP + 14.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}">entropy-coded (entropy + side)</text>"#,
        lx + 8.0,
        TOP + 18.0
    );
    let _ = writeln!(
        out,
        r##"<circle cx="{}" cy="{}" r="4" fill="none" stroke="#888"/>"##,
        lx,
        TOP + 30.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}">packed (bits + side)</text>"#,
        lx + 8.0,
        TOP + 34.0
    );
    // Labels: greedy placement, each at the first candidate spot (right, left, above, below,
    // then further out) that overlaps no label or point already placed and stays inside.
    let mut boxes: Vec<(f64, f64, f64, f64)> = pts
        .iter()
        .map(|p| (xs(p.1) - 4.0, ys(p.2) - 4.0, 8.0, 8.0))
        .collect();
    boxes.push((LEFT + pw - 196.0, TOP + 4.0, 196.0, 36.0)); // the legend
    let mut labels = String::new();
    for (label, e, total, packed) in &pts {
        let (x, yt, yp) = (xs(*e), ys(*total), ys(*packed));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{yp:.1}" x2="{x:.1}" y2="{yt:.1}" stroke="#bbb" stroke-dasharray="2,2"/>"##
        );
        let _ = writeln!(
            out,
            r##"<circle cx="{x:.1}" cy="{yp:.1}" r="3.5" fill="none" stroke="#888"/>"##
        );
        let _ = writeln!(
            out,
            r##"<circle cx="{x:.1}" cy="{yt:.1}" r="4" fill="#1f77b4"><title>{}: {total:.3} bits/weight, rel. RMS {e:.3e}</title></circle>"##,
            esc(label)
        );
        let tw = label.len() as f64 * 6.2;
        let th = 12.0;
        let mut cands = Vec::new();
        for dy in [0.0, -11.0, 11.0, -22.0, 22.0, -33.0, 33.0] {
            cands.push((x + 7.0, yt + 4.0 + dy));
            cands.push((x - 7.0 - tw, yt + 4.0 + dy));
        }
        let inside = |bx: f64, by: f64| {
            bx >= LEFT + 2.0 && bx + tw <= LEFT + pw - 2.0 && by - th >= TOP && by <= TOP + ph - 2.0
        };
        let free = |bx: f64, by: f64| {
            boxes.iter().all(|&(ox, oy, ow, oh)| {
                bx + tw <= ox || ox + ow <= bx || by <= oy || oy + oh <= by - th + 2.0
            })
        };
        let (lx, ly) = cands
            .iter()
            .copied()
            .find(|&(bx, by)| inside(bx, by) && free(bx, by))
            .or_else(|| cands.iter().copied().find(|&(bx, by)| inside(bx, by)))
            .unwrap_or(cands[0]);
        boxes.push((lx, ly - th + 2.0, tw, th - 2.0));
        if (ly - yt - 4.0).abs() > 1.0 {
            let lxa = if lx > x { lx - 1.0 } else { lx + tw + 1.0 };
            let _ = writeln!(
                labels,
                r##"<line x1="{x:.1}" y1="{yt:.1}" x2="{lxa:.1}" y2="{:.1}" stroke="#666" stroke-width="0.8"/>"##,
                ly - 4.0
            );
        }
        let _ = writeln!(
            labels,
            r#"<text x="{lx:.1}" y="{ly:.1}">{}</text>"#,
            esc(label)
        );
    }
    out.push_str(&labels);
    out.push_str("</svg>\n");
    out
}
