//! Whole models with lossless 16-bit weights: `ecq encode --lossless`, and `ecq decode` /
//! `ecq verify` on the result.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::json;

use super::{
    encode, encode_f32, ConversionReport, HalfType, LosslessError, LosslessMatrix, Result,
    PART_SUFFIXES,
};
use crate::model::{Dtype, Model, TensorData, CONFIG_FILE};
use crate::rans::EncodeOptions;

/// Value of the `ecq.format` metadata key of a file with lossless 16-bit weights.
pub const FORMAT_NAME: &str = "ecq-lossless16";
/// Value of its `ecq.version` key.
pub const FORMAT_VERSION: u32 = 1;

/// One coded matrix of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSummary {
    /// The weight's name.
    pub weight: String,
    /// Number of weights.
    pub weights: u64,
    /// The input dtype (F32, BF16 or F16).
    pub input: Dtype,
    /// Stored bytes (exponent stream with side information, raw bytes, meta).
    pub coded_bytes: u64,
    /// Per-tile exponent entropy bound plus 8 raw bits, in bits.
    pub entropy_bits: f64,
    /// Bytes of the indexed GPU form ([`super::indexed`]) of a bf16 matrix, where measured
    /// (`verify_model`); `None` for f16 or where not measured.
    pub indexed_bytes: Option<u64>,
}

/// What an encode, decode or verify run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The coded matrices.
    pub matrices: Vec<MatrixSummary>,
    /// The f32 -> bf16 conversion of f32 matrices (zero values if none).
    pub conversion: ConversionReport,
    /// Float tensors kept uncoded (not 2-D `.weight`, or K not a multiple of 32).
    pub kept_raw: Vec<String>,
    /// Bytes of the input files.
    pub bytes_in: u64,
    /// Bytes of the output files (0 for verify).
    pub bytes_out: u64,
}

impl Summary {
    /// Total coded weights.
    pub fn weights(&self) -> u64 {
        self.matrices.iter().map(|m| m.weights).sum()
    }

    /// Stored bits per coded weight.
    pub fn bits_per_weight(&self) -> f64 {
        let b: u64 = self.matrices.iter().map(|m| m.coded_bytes).sum();
        8.0 * b as f64 / self.weights().max(1) as f64
    }

    /// Entropy bound (exponent entropy + 8 raw bits) per coded weight.
    pub fn entropy_bits_per_weight(&self) -> f64 {
        let b: f64 = self.matrices.iter().map(|m| m.entropy_bits).sum();
        b / self.weights().max(1) as f64
    }
}

/// Whether tensor `name` of `t` is coded by [`encode_model`]: a 2-D F32/BF16/F16 tensor named
/// `*.weight` with at least one element and `K` (last dimension) a multiple of 32.
pub fn is_codable(name: &str, t: &TensorData) -> bool {
    name.ends_with(".weight")
        && matches!(t.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16)
        && t.shape().len() == 2
        && t.numel() > 0
        && t.shape()[1].is_multiple_of(32)
}

/// The weights of `model` stored as lossless 16-bit parts (those with an `ecq16_meta`).
pub fn lossless_weights(model: &Model) -> Vec<String> {
    model
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".ecq16_meta").map(str::to_string))
        .collect()
}

/// Whether `model` holds lossless 16-bit weights or declares the format in its metadata.
pub fn is_lossless(model: &Model) -> bool {
    !lossless_weights(model).is_empty()
        || model
            .shards
            .iter()
            .any(|s| s.metadata.get("ecq.format").map(String::as_str) == Some(FORMAT_NAME))
}

fn u16_values(t: &TensorData) -> Vec<u16> {
    t.bytes()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Codes one tensor (see [`is_codable`]); f32 is converted to bf16 first.
pub fn encode_tensor(
    name: &str,
    t: &TensorData,
    opts: &EncodeOptions,
) -> Result<(LosslessMatrix, ConversionReport)> {
    let (r, k) = (t.shape()[0], t.shape()[1]);
    let named = |e| LosslessMatrix::named(e, name);
    match t.dtype() {
        Dtype::F32 => {
            let v = t.to_f32().expect("f32");
            encode_f32(&v, r, k, opts).map_err(named)
        }
        Dtype::BF16 | Dtype::F16 => {
            let half = if t.dtype() == Dtype::BF16 {
                HalfType::BF16
            } else {
                HalfType::F16
            };
            let m = encode(&u16_values(t), r, k, half, opts).map_err(named)?;
            Ok((m, ConversionReport::default()))
        }
        d => Err(LosslessError::InvalidArgument(format!(
            "{name}: dtype {d:?} is not a float"
        ))),
    }
}

fn summarize(name: &str, m: &LosslessMatrix, input: Dtype) -> Result<MatrixSummary> {
    let w = (m.rows() * m.cols()) as u64;
    Ok(MatrixSummary {
        weight: name.to_string(),
        weights: w,
        input,
        coded_bytes: m.total_bytes() as u64,
        entropy_bits: m
            .entropy_bits_per_weight()
            .map_err(|e| LosslessMatrix::named(e, name))?
            * w as f64,
        indexed_bytes: None,
    })
}

fn input_dtype(m: &LosslessMatrix) -> Dtype {
    match m.source() {
        super::Source::F32 => Dtype::F32,
        _ => m.half_type().dtype(),
    }
}

/// Codes every codable float weight of `model` ([`is_codable`]) and writes the model to `out` (a
/// directory for a directory input, else a file); every other tensor is copied unchanged.
/// Shards are written one at a time, their matrices coded in parallel.
pub fn encode_model(
    model: &Model,
    out: &Path,
    opts: &EncodeOptions,
    progress: &ProgressBar,
) -> Result<Summary> {
    if let Some(w) = lossless_weights(model).first() {
        return Err(LosslessError::BadPart {
            tensor: format!("{w}.ecq16_meta"),
            reason: "the model is already coded".into(),
        });
    }
    let n = model
        .tensors
        .iter()
        .filter(|t| is_codable(&t.name, &t.data))
        .count();
    if n == 0 {
        return Err(LosslessError::InvalidArgument(format!(
            "{}: no 2-D float .weight tensor with K a multiple of 32 to code",
            model.path.display()
        )));
    }
    progress.set_length(n as u64);
    let mut summary = Summary {
        bytes_in: model.file_bytes(),
        ..Summary::default()
    };
    let mut shards = Vec::new();
    for (s, idx) in crate::container::shard_groups(model)
        .into_iter()
        .enumerate()
    {
        let coded: Vec<Option<(LosslessMatrix, ConversionReport)>> = idx
            .par_iter()
            .map(|&i| {
                let t = &model.tensors[i];
                if !is_codable(&t.name, &t.data) {
                    return Ok(None);
                }
                let r = encode_tensor(&t.name, &t.data, opts)?;
                progress.inc(1);
                Ok(Some(r))
            })
            .collect::<Result<_>>()?;
        let mut tensors = Vec::new();
        for (&i, c) in idx.iter().zip(coded) {
            let t = &model.tensors[i];
            match c {
                Some((m, conv)) => {
                    summary
                        .matrices
                        .push(summarize(&t.name, &m, t.data.dtype())?);
                    summary.conversion.merge(&conv);
                    tensors.extend(m.to_tensors(&t.name));
                }
                None => {
                    if t.data.is_float() {
                        summary.kept_raw.push(t.name.clone());
                    }
                    tensors.push((t.name.clone(), t.data.clone()));
                }
            }
        }
        let mut meta = model.shards[s].metadata.clone();
        meta.insert("ecq.format".into(), FORMAT_NAME.into());
        meta.insert("ecq.version".into(), FORMAT_VERSION.to_string());
        shards.push((model.shards[s].file_name.clone(), tensors, meta));
    }
    summary.bytes_out = crate::container::write_output(model, out, shards)?;
    if model.is_dir {
        let mut config = model.config.clone().unwrap_or_else(|| json!({}));
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "ecq".into(),
                json!({"format": FORMAT_NAME, "version": FORMAT_VERSION}),
            );
        }
        crate::model::write::write_json_atomic(&out.join(CONFIG_FILE), &config)?;
    }
    Ok(summary)
}

fn check_format(model: &Model) -> Result<Vec<String>> {
    for s in &model.shards {
        if let Some(v) = s.metadata.get("ecq.version") {
            if s.metadata.get("ecq.format").map(String::as_str) == Some(FORMAT_NAME)
                && *v != FORMAT_VERSION.to_string()
            {
                return Err(LosslessError::BadPart {
                    tensor: s.file_name.clone(),
                    reason: format!("ecq.version is {v:?}, this ecq reads {FORMAT_VERSION}"),
                });
            }
        }
    }
    let w = lossless_weights(model);
    if w.is_empty() && !is_lossless(model) {
        return Err(LosslessError::InvalidArgument(format!(
            "{}: no lossless 16-bit weights",
            model.path.display()
        )));
    }
    Ok(w)
}

fn load(model: &Model, name: &str) -> Result<LosslessMatrix> {
    LosslessMatrix::from_tensors(name, |n| model.get(n))
}

/// Decodes every lossless 16-bit weight of `model` and writes the model to `out`: bf16/f16
/// inputs come back byte for byte; f32 inputs come back as their bf16 conversion. ecq metadata
/// and the `ecq` config entry are removed.
pub fn decode_model(model: &Model, out: &Path, progress: &ProgressBar) -> Result<Summary> {
    let coded = check_format(model)?;
    progress.set_length(coded.len() as u64);
    let coded_set: HashSet<&str> = coded.iter().map(String::as_str).collect();
    let mut summary = Summary {
        bytes_in: model.file_bytes(),
        ..Summary::default()
    };
    let mut shards = Vec::new();
    for (s, idx) in crate::container::shard_groups(model)
        .into_iter()
        .enumerate()
    {
        let items: Vec<Option<(String, TensorData, MatrixSummary)>> = idx
            .par_iter()
            .map(|&i| {
                let Some(w) = model.tensors[i].name.strip_suffix(".ecq16_meta") else {
                    return Ok(None);
                };
                let m = load(model, w)?;
                let t = m.decode_tensor().map_err(|e| LosslessMatrix::named(e, w))?;
                let sum = summarize(w, &m, input_dtype(&m))?;
                progress.inc(1);
                Ok(Some((w.to_string(), t, sum)))
            })
            .collect::<Result<_>>()?;
        let mut decoded = BTreeMap::new();
        for (w, t, sum) in items.into_iter().flatten() {
            summary.matrices.push(sum);
            decoded.insert(w, t);
        }
        let mut tensors = Vec::new();
        for &i in &idx {
            let t = &model.tensors[i];
            if let Some(w) = t.name.strip_suffix(".ecq16_meta") {
                tensors.push((w.to_string(), decoded.remove(w).expect("decoded")));
            } else if PART_SUFFIXES.iter().any(|s| {
                t.name
                    .strip_suffix(s)
                    .is_some_and(|w| coded_set.contains(w))
            }) {
                continue;
            } else {
                tensors.push((t.name.clone(), t.data.clone()));
            }
        }
        shards.push((
            model.shards[s].file_name.clone(),
            tensors,
            crate::container::without_ecq_keys(&model.shards[s].metadata),
        ));
    }
    summary.bytes_out = crate::container::write_output(model, out, shards)?;
    if model.is_dir {
        if let Some(mut config) = model.config.clone() {
            if let Some(obj) = config.as_object_mut() {
                obj.shift_remove("ecq");
            }
            crate::model::write::write_json_atomic(&out.join(CONFIG_FILE), &config)?;
        }
    }
    Ok(summary)
}

/// Decodes every lossless 16-bit weight of `model` in full, verifying every checksum and the
/// stream's end conditions.
pub fn verify_model(model: &Model, progress: &ProgressBar) -> Result<Summary> {
    let coded = check_format(model)?;
    progress.set_length(coded.len() as u64);
    let matrices = coded
        .par_iter()
        .map(|w| {
            let m = load(model, w)?;
            let v = m.decode().map_err(|e| LosslessMatrix::named(e, w))?;
            let mut s = summarize(w, &m, input_dtype(&m))?;
            if m.half_type() == HalfType::BF16 {
                s.indexed_bytes = Some(super::indexed::indexed_size(&v, m.rows()).0 as u64);
            }
            progress.inc(1);
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Summary {
        matrices,
        bytes_in: model.file_bytes(),
        ..Summary::default()
    })
}

/// Estimate of the lossless 16-bit size of a float model (`ecq inspect`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    /// Weights of the codable matrices ([`is_codable`]).
    pub weights: u64,
    /// Codable matrices.
    pub matrices: usize,
    /// Weight-averaged per-matrix empirical entropy of the exponent byte (of the bf16 conversion
    /// for f32 matrices), bits/weight.
    pub exponent_entropy: f64,
    /// The f32 -> bf16 conversion of f32 matrices.
    pub conversion: ConversionReport,
    /// Weights of the bf16 (or f32 -> bf16) matrices, which have an indexed GPU form.
    pub indexed_weights: u64,
    /// Bytes of their indexed forms ([`super::indexed`]).
    pub indexed_bytes: u64,
    /// Their escapes (weights outside the exponent window).
    pub indexed_escapes: u64,
}

impl Estimate {
    /// Exponent entropy + 8 raw bits per weight (side information not counted).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 + self.exponent_entropy
    }
}

/// Measures the exponent entropy of every codable matrix of a float model without coding it.
pub fn estimate(model: &Model) -> Estimate {
    type Row = (u64, f64, ConversionReport, Option<(usize, usize)>);
    let per: Vec<Row> = model
        .tensors
        .par_iter()
        .filter(|t| is_codable(&t.name, &t.data))
        .map(|t| {
            let (h, r) = match t.data.dtype() {
                Dtype::F32 => super::convert_f32(&t.data.to_f32().expect("f32")),
                _ => (u16_values(&t.data), ConversionReport::default()),
            };
            let n = h.len() as u64;
            let indexed = (t.data.dtype() != Dtype::F16)
                .then(|| super::indexed::indexed_size(&h, t.data.shape()[0]));
            (n, super::exponent_entropy(&h) * n as f64, r, indexed)
        })
        .collect();
    let mut e = Estimate::default();
    let mut bits = 0.0;
    for (n, b, r, indexed) in per {
        e.weights += n;
        e.matrices += 1;
        bits += b;
        e.conversion.merge(&r);
        if let Some((bytes, esc)) = indexed {
            e.indexed_weights += n;
            e.indexed_bytes += bytes as u64;
            e.indexed_escapes += esc as u64;
        }
    }
    e.exponent_entropy = bits / e.weights.max(1) as f64;
    e
}
