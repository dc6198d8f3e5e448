//! What entropy coding can win on a model (`ecq inspect`).
//!
//! For every weight matrix and every quantization [`Scheme`] this measures the empirical entropy
//! of the quantized symbols (the size an ideal entropy coder reaches with one frequency table per
//! tensor), the side information (scales and biases at their stored size) and, when the float
//! weights are known, the relative RMS reconstruction error. Tensors are processed in parallel
//! with rayon. [`render_svg`] draws the model totals as a scatter chart.
//!
//! # Example
//! ```
//! use ecq::analysis::entropy_bits;
//! // Four equally likely symbols: 2 bits each.
//! assert_eq!(entropy_bits(&[5, 5, 5, 5]), 40.0);
//! ```

mod svg;

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::Serialize;

use crate::dtype::FloatDType;
use crate::model::quantize::is_quantizable;
use crate::model::{Model, ModelError, TensorData};
use crate::quant::{quantize_absmax, quantize_affine, AbsmaxMode, AffineParams};

pub use svg::render_svg;

/// Errors of the analysis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// Reading the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Quantizing a tensor failed.
    #[error("{tensor}: {reason}")]
    Quantize {
        /// The tensor.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
}

/// A quantization scheme whose cost is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scheme {
    /// MLX affine quantization (scale and bias per group of `group_size` weights).
    Affine {
        /// Bits per weight.
        bits: u32,
        /// Group size.
        group_size: u32,
    },
    /// Symmetric absmax quantization with one scale per row.
    AbsmaxChannel {
        /// Bits per weight.
        bits: u32,
    },
    /// Symmetric absmax quantization with one scale per tensor.
    AbsmaxTensor {
        /// Bits per weight.
        bits: u32,
    },
}

impl Scheme {
    /// Bits per weight before entropy coding.
    pub fn bits(&self) -> u32 {
        match *self {
            Scheme::Affine { bits, .. }
            | Scheme::AbsmaxChannel { bits }
            | Scheme::AbsmaxTensor { bits } => bits,
        }
    }

    /// A human-readable label, e.g. `affine g64 4-bit`.
    pub fn label(&self) -> String {
        match *self {
            Scheme::Affine { bits, group_size } => format!("affine g{group_size} {bits}-bit"),
            Scheme::AbsmaxChannel { bits } => format!("absmax/row {bits}-bit"),
            Scheme::AbsmaxTensor { bits } => format!("absmax/tensor {bits}-bit"),
        }
    }

    /// A short label for table columns, e.g. `a4g64`, `c8`, `t4`.
    pub fn short(&self) -> String {
        match *self {
            Scheme::Affine { bits, group_size } => format!("a{bits}g{group_size}"),
            Scheme::AbsmaxChannel { bits } => format!("row{bits}"),
            Scheme::AbsmaxTensor { bits } => format!("ten{bits}"),
        }
    }
}

/// The schemes `ecq inspect` measures on a float model: MLX affine g32/g64/g128 at 2/3/4/8 bits,
/// per-row and per-tensor absmax at 4 and 8 bits.
pub fn default_schemes() -> Vec<Scheme> {
    let mut v = Vec::new();
    for bits in [2, 3, 4, 8] {
        for group_size in [32, 64, 128] {
            v.push(Scheme::Affine { bits, group_size });
        }
    }
    for bits in [4, 8] {
        v.push(Scheme::AbsmaxChannel { bits });
    }
    for bits in [4, 8] {
        v.push(Scheme::AbsmaxTensor { bits });
    }
    v
}

/// Size and error of one scheme on one tensor, or summed over several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Weights.
    pub weights: u64,
    /// Sum over tensors of the histogram entropy times the weight count, in bits.
    pub entropy_bits: f64,
    /// Bits of scales and biases at their stored dtype.
    pub side_bits: f64,
    /// Bits of the packed quantized weights (bits per weight times weights).
    pub packed_bits: f64,
    /// Sum of squared reconstruction errors (`None` when the float weights are unknown).
    pub sq_err: Option<f64>,
    /// Sum of squared float weights (`None` when unknown).
    pub sq_norm: Option<f64>,
}

impl Stats {
    fn per_weight(&self, bits: f64) -> f64 {
        if self.weights == 0 {
            0.0
        } else {
            bits / self.weights as f64
        }
    }

    /// Empirical entropy of the symbols, bits per weight.
    pub fn entropy_per_weight(&self) -> f64 {
        self.per_weight(self.entropy_bits)
    }

    /// Side information, bits per weight.
    pub fn side_per_weight(&self) -> f64 {
        self.per_weight(self.side_bits)
    }

    /// Entropy plus side information, bits per weight.
    pub fn total_per_weight(&self) -> f64 {
        self.per_weight(self.entropy_bits + self.side_bits)
    }

    /// Packed bits plus side information, bits per weight (the size without entropy coding).
    pub fn packed_per_weight(&self) -> f64 {
        self.per_weight(self.packed_bits + self.side_bits)
    }

    /// Relative RMS reconstruction error `sqrt(sum (w - w')^2 / sum w^2)`, when known.
    pub fn rel_rms(&self) -> Option<f64> {
        match (self.sq_err, self.sq_norm) {
            (Some(e), Some(n)) if n > 0.0 => Some((e / n).sqrt()),
            _ => None,
        }
    }

    /// Adds `other` into `self` (errors stay known only if both are).
    pub fn add(&mut self, other: &Stats) {
        let first = self.weights == 0;
        self.weights += other.weights;
        self.entropy_bits += other.entropy_bits;
        self.side_bits += other.side_bits;
        self.packed_bits += other.packed_bits;
        let sum = |a: Option<f64>, b: Option<f64>| {
            if first {
                b
            } else {
                a.zip(b).map(|(a, b)| a + b)
            }
        };
        self.sq_err = sum(self.sq_err, other.sq_err);
        self.sq_norm = sum(self.sq_norm, other.sq_norm);
    }
}

/// One tensor of the report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// Tensor name (for a quantized module, its `<p>.weight`).
    pub name: String,
    /// Shape (for a quantized module, the unpacked `[rows, cols]`).
    pub shape: Vec<usize>,
    /// How it is stored, e.g. `F32` or `affine g64 4-bit (F16 scales)`.
    pub format: String,
    /// One entry per scheme of the report; `None` where the scheme does not apply.
    pub stats: Vec<Option<Stats>>,
}

/// The result of [`analyze`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether the model was quantized (then there is one scheme per stored parameter set).
    pub quantized: bool,
    /// The schemes, one column each.
    pub schemes: Vec<Scheme>,
    /// Every tensor of the model (scales and biases of quantized modules are folded into their
    /// weight's entry).
    pub tensors: Vec<TensorReport>,
    /// Per scheme, the sum over tensors.
    pub totals: Vec<Stats>,
}

/// Total bits an ideal coder needs for symbols with histogram `hist`:
/// `sum n_s * log2(N / n_s)`.
pub fn entropy_bits(hist: &[u64]) -> f64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (nf / c as f64).log2())
        .sum()
}

/// Histogram of byte symbols.
pub fn histogram(symbols: &[u8]) -> Vec<u64> {
    let mut h = vec![0u64; 256];
    for &s in symbols {
        h[s as usize] += 1;
    }
    h
}

/// Entropy bound of coding `symbols` (one byte per coded symbol, row-major, `syms_per_row` per
/// row) with one frequency table per tile of `rows_per_tile` rows: the sum over tiles of the
/// tile's histogram entropy, in bits.
pub fn tile_entropy_bound(symbols: &[u8], syms_per_row: usize, rows_per_tile: usize) -> f64 {
    if syms_per_row == 0 || rows_per_tile == 0 {
        return 0.0;
    }
    symbols
        .chunks(syms_per_row * rows_per_tile)
        .map(|tile| entropy_bits(&histogram(tile)))
        .sum()
}

fn sq_sums(w: &[f32], deq: &[f32]) -> (f64, f64) {
    let mut e = 0.0f64;
    let mut n = 0.0f64;
    for (a, b) in w.iter().zip(deq) {
        let d = (*a as f64) - (*b as f64);
        e += d * d;
        n += (*a as f64) * (*a as f64);
    }
    (e, n)
}

/// Measures one scheme on one float matrix `tensor` of `dtype` (row-major `rows x cols`). `None`
/// when the scheme does not apply (row length not a multiple of the group size).
///
/// ```
/// use ecq::analysis::{measure, Scheme};
/// use ecq::dtype::FloatDType;
/// let w: Vec<f32> = (0..64 * 4).map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
/// let s = measure("w", &w, 4, 64, FloatDType::F32, Scheme::Affine { bits: 4, group_size: 64 })?
///     .unwrap();
/// assert!(s.entropy_per_weight() <= 4.0);
/// assert_eq!(s.side_per_weight(), 1.0); // f32 scale + bias per 64 weights
/// assert!(s.rel_rms().unwrap() < 0.1);
/// # Ok::<(), ecq::analysis::AnalysisError>(())
/// ```
pub fn measure(
    tensor: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    dtype: FloatDType,
    scheme: Scheme,
) -> Result<Option<Stats>, AnalysisError> {
    let err = |e: crate::quant::QuantError| AnalysisError::Quantize {
        tensor: tensor.to_string(),
        reason: e.to_string(),
    };
    let side_elem = (dtype.size_bytes() * 8) as f64;
    let weights = (rows * cols) as u64;
    let (symbols, deq, side_bits) = match scheme {
        Scheme::Affine { bits, group_size } => {
            if !cols.is_multiple_of(group_size as usize) {
                return Ok(None);
            }
            let p = AffineParams::new(bits, group_size).map_err(err)?;
            let m = quantize_affine(w, rows, cols, dtype, p).map_err(err)?;
            (
                m.symbols(),
                m.dequantize(),
                2.0 * (m.scales.len() as f64) * side_elem,
            )
        }
        Scheme::AbsmaxChannel { bits } | Scheme::AbsmaxTensor { bits } => {
            let mode = if matches!(scheme, Scheme::AbsmaxChannel { .. }) {
                AbsmaxMode::PerChannel
            } else {
                AbsmaxMode::PerTensor
            };
            let a = quantize_absmax(w, rows, cols, bits, mode).map_err(err)?;
            let side = a.scales.len() as f64 * side_elem;
            (a.symbols.clone(), a.dequantize(), side)
        }
    };
    let (e, n) = sq_sums(w, &deq);
    Ok(Some(Stats {
        weights,
        entropy_bits: entropy_bits(&histogram(&symbols)),
        side_bits,
        packed_bits: weights as f64 * scheme.bits() as f64,
        sq_err: Some(e),
        sq_norm: Some(n),
    }))
}

fn float_format(t: &TensorData) -> String {
    format!("{:?}", t.dtype())
}

/// Analyses a model. For a float model every quantizable tensor (float 2-D `*.weight` whose row
/// length is a multiple of 32) is measured under each of `schemes`; for an MLX-quantized model
/// each quantized module is measured under its stored scheme (`schemes` is ignored) and the
/// reconstruction error is unknown. `progress` advances once per (tensor, scheme) pair.
pub fn analyze(
    model: &Model,
    schemes: &[Scheme],
    progress: &ProgressBar,
) -> Result<Report, AnalysisError> {
    let modules = model.quantized_modules()?;
    if !modules.is_empty() {
        return analyze_quantized(model, modules, progress);
    }
    let candidates: Vec<usize> = (0..model.tensors.len())
        .filter(|&i| is_quantizable(&model.tensors[i].name, &model.tensors[i].data, 32))
        .collect();
    progress.set_length((candidates.len() * schemes.len()) as u64);
    let jobs: Vec<(usize, usize)> = candidates
        .iter()
        .flat_map(|&i| (0..schemes.len()).map(move |s| (i, s)))
        .collect();
    let results: Vec<((usize, usize), Option<Stats>)> = jobs
        .par_iter()
        .map(|&(i, s)| {
            let t = &model.tensors[i];
            let dtype = FloatDType::from_safetensors(t.data.dtype()).expect("float");
            let w = t.data.to_f32().expect("float");
            let (rows, cols) = (t.data.shape()[0], t.data.shape()[1]);
            let r = measure(&t.name, &w, rows, cols, dtype, schemes[s])?;
            progress.inc(1);
            Ok(((i, s), r))
        })
        .collect::<Result<_, AnalysisError>>()?;
    let mut tensors: Vec<TensorReport> = model
        .tensors
        .iter()
        .map(|t| TensorReport {
            name: t.name.clone(),
            shape: t.data.shape().to_vec(),
            format: float_format(&t.data),
            stats: vec![None; schemes.len()],
        })
        .collect();
    let mut totals = vec![Stats::default(); schemes.len()];
    for ((i, s), r) in results {
        if let Some(st) = r {
            totals[s].add(&st);
        }
        tensors[i].stats[s] = r;
    }
    Ok(Report {
        quantized: false,
        schemes: schemes.to_vec(),
        tensors,
        totals,
    })
}

fn analyze_quantized(
    model: &Model,
    modules: Vec<crate::model::QuantizedModule>,
    progress: &ProgressBar,
) -> Result<Report, AnalysisError> {
    let mut schemes: Vec<Scheme> = Vec::new();
    for m in &modules {
        let s = Scheme::Affine {
            bits: m.bits,
            group_size: m.group_size as u32,
        };
        if !schemes.contains(&s) {
            schemes.push(s);
        }
    }
    progress.set_length(modules.len() as u64);
    let stats: Vec<(String, usize, Stats, String)> = modules
        .par_iter()
        .map(|m| {
            let qm = m.to_matrix()?;
            let symbols = qm.symbols();
            let weights = (m.rows * m.cols) as u64;
            let st = Stats {
                weights,
                entropy_bits: entropy_bits(&histogram(&symbols)),
                side_bits: ((m.scales.bytes().len() + m.biases.bytes().len()) * 8) as f64,
                packed_bits: (m.weight.bytes().len() * 8) as f64,
                sq_err: None,
                sq_norm: None,
            };
            let s = Scheme::Affine {
                bits: m.bits,
                group_size: m.group_size as u32,
            };
            let col = schemes.iter().position(|x| *x == s).expect("listed");
            progress.inc(1);
            let format = format!("{} ({:?} scales)", s.label(), m.scales.dtype());
            Ok((format!("{}.weight", m.path), col, st, format))
        })
        .collect::<Result<_, AnalysisError>>()?;
    let mut totals = vec![Stats::default(); schemes.len()];
    let mut by_name = std::collections::HashMap::new();
    for (name, col, st, format) in stats {
        totals[col].add(&st);
        by_name.insert(name, (col, st, format));
    }
    let folded: std::collections::HashSet<String> = modules
        .iter()
        .flat_map(|m| [format!("{}.scales", m.path), format!("{}.biases", m.path)])
        .collect();
    let mut tensors = Vec::new();
    for t in &model.tensors {
        if folded.contains(&t.name) {
            continue;
        }
        let mut stats = vec![None; schemes.len()];
        let (shape, format) = match by_name.get(&t.name) {
            Some((col, st, format)) => {
                stats[*col] = Some(*st);
                let m = modules
                    .iter()
                    .find(|m| format!("{}.weight", m.path) == t.name)
                    .expect("module");
                (vec![m.rows, m.cols], format.clone())
            }
            None => (t.data.shape().to_vec(), float_format(&t.data)),
        };
        tensors.push(TensorReport {
            name: t.name.clone(),
            shape,
            format,
            stats,
        });
    }
    Ok(Report {
        quantized: true,
        schemes,
        tensors,
        totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_simple_histograms() {
        assert_eq!(entropy_bits(&[]), 0.0);
        assert_eq!(entropy_bits(&[0, 7, 0]), 0.0);
        assert_eq!(entropy_bits(&[1, 1]), 2.0);
        assert!((entropy_bits(&[3, 1]) - (3.0 * (4.0f64 / 3.0).log2() + 2.0)).abs() < 1e-12);
    }

    #[test]
    fn tile_bound_is_sum_of_tile_entropies() {
        // Two tiles of 2 rows x 2 symbols: one constant, one with four distinct symbols.
        let s = [5u8, 5, 5, 5, 0, 1, 2, 3];
        assert_eq!(tile_entropy_bound(&s, 2, 2), 8.0);
        // One table for everything costs more.
        assert!(tile_entropy_bound(&s, 2, 4) > 8.0);
    }

    #[test]
    fn stats_add_keeps_errors_only_when_known() {
        let a = Stats {
            weights: 10,
            entropy_bits: 30.0,
            sq_err: Some(1.0),
            sq_norm: Some(4.0),
            ..Stats::default()
        };
        let mut t = Stats::default();
        t.add(&a);
        t.add(&a);
        assert_eq!((t.weights, t.entropy_per_weight()), (20, 3.0));
        assert_eq!(t.rel_rms(), Some(0.5));
        t.add(&Stats {
            weights: 1,
            ..Stats::default()
        });
        assert_eq!(t.rel_rms(), None);
    }

    #[test]
    fn svg_has_one_labelled_point_per_scheme() {
        let schemes = vec![
            Scheme::Affine {
                bits: 4,
                group_size: 64,
            },
            Scheme::AbsmaxTensor { bits: 4 },
        ];
        let st = |e: f64, h: f64| Stats {
            weights: 100,
            entropy_bits: h * 100.0,
            side_bits: 50.0,
            packed_bits: 400.0,
            sq_err: Some(e),
            sq_norm: Some(1.0),
        };
        let r = Report {
            quantized: false,
            schemes,
            tensors: vec![],
            totals: vec![st(0.01, 3.7), st(0.4, 1.1)],
        };
        let svg = render_svg(&r, "t <&>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains(">affine g64 4-bit</text>") && svg.contains(">absmax/tensor 4-bit</text>")
        );
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert_eq!(
            svg.matches("<circle").count(),
            2 * 2 + 2,
            "two per scheme plus the legend"
        );
    }
}
