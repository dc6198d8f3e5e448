//! `ecq inspect PATH [--json] [--plot FILE.svg]`.

use std::path::PathBuf;

use ecq::analysis::{analyze, default_schemes, render_svg, Report, Scheme, Stats};
use ecq::model::Model;
use serde_json::{json, Value};

use super::{bar, CliResult};

/// Arguments of `ecq inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Safetensors file or model directory (float or MLX-quantized).
    path: PathBuf,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of bits/weight against reconstruction error.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "weights": s.weights,
        "entropy_bits_per_weight": s.entropy_per_weight(),
        "side_bits_per_weight": s.side_per_weight(),
        "total_bits_per_weight": s.total_per_weight(),
        "packed_bits_per_weight": s.packed_per_weight(),
        "rel_rms_error": s.rel_rms(),
    })
}

/// The report as JSON, with per-weight figures.
pub fn report_json(r: &Report) -> Value {
    let schemes: Vec<Value> = r
        .schemes
        .iter()
        .zip(&r.totals)
        .map(|(s, t)| {
            let mut v = stats_json(t);
            v["scheme"] = json!(s.label());
            v["params"] = serde_json::to_value(s).unwrap_or(Value::Null);
            v
        })
        .collect();
    let tensors: Vec<Value> = r
        .tensors
        .iter()
        .map(|t| {
            let per: serde_json::Map<String, Value> = r
                .schemes
                .iter()
                .zip(&t.stats)
                .filter_map(|(s, st)| st.as_ref().map(|st| (s.label(), stats_json(st))))
                .collect();
            json!({"name": t.name, "shape": t.shape, "format": t.format, "schemes": per})
        })
        .collect();
    json!({"quantized": r.quantized, "totals": schemes, "tensors": tensors})
}

fn reference(r: &Report) -> Option<f64> {
    let i = r.schemes.iter().position(|s| {
        *s == Scheme::Affine {
            bits: 4,
            group_size: 64,
        }
    })?;
    r.totals[i]
        .sq_err
        .zip(r.totals[i].sq_norm)
        .map(|(e, n)| e / n)
}

/// Prints the per-tensor and total tables.
pub fn print_tables(r: &Report) {
    let name_w = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let shorts: Vec<String> = r.schemes.iter().map(Scheme::short).collect();
    out!("{:<name_w$}  {:<14} {:<28}", "tensor", "shape", "stored");
    for s in &shorts {
        out!(" {s:>7}");
    }
    outln!();
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        out!("{:<name_w$}  {:<14} {:<28}", t.name, shape, t.format);
        for st in &t.stats {
            match st {
                Some(st) => out!(" {:>7.3}", st.entropy_per_weight()),
                None => out!(" {:>7}", "-"),
            }
        }
        outln!();
    }
    outln!("(columns per scheme: empirical entropy of the symbols, bits/weight)");
    outln!();
    let refe = reference(r);
    outln!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "scheme (model total)",
        "weights",
        "entropy",
        "side",
        "total",
        "packed",
        "rel RMS",
        "err²/a4g64"
    );
    for (s, t) in r.schemes.iter().zip(&r.totals) {
        let rms = t
            .rel_rms()
            .map(|e| format!("{e:.3e}"))
            .unwrap_or_else(|| "-".into());
        let ratio = match (refe, t.sq_err.zip(t.sq_norm)) {
            (Some(re), Some((e, n))) if re > 0.0 && e / n / re < 0.1 => {
                format!("{:.4}x", e / n / re)
            }
            (Some(re), Some((e, n))) if re > 0.0 => format!("{:.2}x", e / n / re),
            _ => "-".into(),
        };
        outln!(
            "{:<22} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10} {:>10}",
            s.label(),
            t.weights,
            t.entropy_per_weight(),
            t.side_per_weight(),
            t.total_per_weight(),
            t.packed_per_weight(),
            rms,
            ratio
        );
    }
    outln!("(bits/weight; side = scales and biases at their stored dtype; packed = bits + side without entropy coding)");
}

/// `ecq inspect` of an entropy-coded model: decodes every matrix (checking it) and lists its
/// coded size against its per-tile entropy bound.
fn inspect_coded(model: &Model, as_json: bool) -> CliResult {
    let pb = bar(0, "decode");
    let s = ecq::container::verify_model(model, &pb)?;
    pb.finish_and_clear();
    let bpw = |bytes: u64, w: u64| bytes as f64 * 8.0 / w.max(1) as f64;
    if as_json {
        let m: Vec<Value> = s
            .matrices
            .iter()
            .map(|m| {
                json!({
                    "name": m.weight, "weights": m.weights, "bits": m.bits,
                    "raw_low_bits": m.low_bits,
                    "window_start": m.window,
                    "coded_bits_per_weight": bpw(m.coded_bytes, m.weights),
                    "stream_bits_per_weight": bpw(m.payload_bytes, m.weights),
                    "entropy_bound_bits_per_weight": m.entropy_bound_bits / m.weights.max(1) as f64,
                    "side_bits_per_weight": bpw(m.side_bytes, m.weights),
                    "chunks": m.chunks,
                })
            })
            .collect();
        let total = json!({
            "weights": s.weights(),
            "packed_bits_per_weight": s.packed_bits_per_weight(),
            "coded_bits_per_weight": s.coded_bits_per_weight(),
            "stream_bits_per_weight": s.payload_bits_per_weight(),
            "entropy_bound_bits_per_weight": s.entropy_bits_per_weight(),
            "side_bits_per_weight": s.side_bits_per_weight(),
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"coded": true, "total": total, "matrices": m}))?
        );
        return Ok(());
    }
    let w = s
        .matrices
        .iter()
        .map(|m| m.weight.len())
        .max()
        .unwrap_or(6)
        .max(6);
    outln!(
        "{:<w$} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "coded weight",
        "weights",
        "bits",
        "coded",
        "stream",
        "bound",
        "side",
        "chunks"
    );
    for m in &s.matrices {
        // a split matrix shows its coded and raw bits, e.g. 2+2; a window split its start,
        // e.g. w5:1+3
        let bits = if let Some(start) = m.window {
            format!("w{start}:{}+{}", m.bits - m.low_bits, m.low_bits)
        } else if m.low_bits > 0 {
            format!("{}+{}", m.bits - m.low_bits, m.low_bits)
        } else {
            m.bits.to_string()
        };
        outln!(
            "{:<w$} {:>10} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}",
            m.weight,
            m.weights,
            bits,
            bpw(m.coded_bytes, m.weights),
            bpw(m.payload_bytes, m.weights),
            m.entropy_bound_bits / m.weights.max(1) as f64,
            bpw(m.side_bytes, m.weights),
            m.chunks
        );
    }
    outln!(
        "{:<w$} {:>10} {:>5.2} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        "total",
        s.weights(),
        s.packed_bits_per_weight(),
        s.coded_bits_per_weight(),
        s.payload_bits_per_weight(),
        s.entropy_bits_per_weight(),
        s.side_bits_per_weight()
    );
    outln!("(bits/weight; coded = every stored part, stream = rANS words, bound = per-tile entropy, side = scales+biases; chunks = independent decoders, what a GPU runs in parallel)");
    Ok(())
}

/// Runs `ecq inspect`.
pub fn run(a: Args) -> CliResult {
    let model = Model::open(&a.path)?;
    if !ecq::container::coded_weights(&model).is_empty() {
        return inspect_coded(&model, a.json);
    }
    if ecq::lossless::container::is_lossless(&model) {
        return super::coding::inspect_lossless(&model, a.json);
    }
    let pb = bar(0, "inspect");
    let report = analyze(&model, &default_schemes(), &pb)?;
    pb.finish_and_clear();
    let lossless = (!report.quantized).then(|| ecq::lossless::container::estimate(&model));
    if a.json {
        let mut v = report_json(&report);
        if let Some(e) = &lossless {
            v["lossless16"] = json!({
                "matrices": e.matrices,
                "weights": e.weights,
                "exponent_entropy_bits_per_weight": e.exponent_entropy,
                "bits_per_weight": e.bits_per_weight(),
                "f32_to_bf16_changed": e.conversion.changed,
                "f32_to_bf16_max_rel_error": e.conversion.max_rel_error,
            });
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_tables(&report);
        if let Some(e) = &lossless {
            super::coding::print_estimate(e);
        }
    }
    if let Some(p) = &a.plot {
        let title = format!("{}: bits/weight vs reconstruction error", a.path.display());
        ecq::model::write::write_atomic(p, render_svg(&report, &title).as_bytes())?;
        if !a.json {
            outln!("chart written to {}", p.display());
        }
    }
    Ok(())
}
