//! Quantizing float models the way mlx-lm does (`ecq quantize`), and converting stored quantized
//! modules into [`QuantizedMatrix`] values.

use std::path::Path;

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::Value;

use super::write::{copy_extra_files, write_model, NamedTensor, WriteOptions};
use super::{Model, ModelError, QuantConfig, QuantizedModule, Result, TensorData};
use crate::dtype::FloatDType;
use crate::quant::{quantize_affine, AffineParams, QuantizedMatrix};

/// Parameters of [`quantize_model`].
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Bits per weight (2, 3, 4, 5, 6 or 8).
    pub bits: u32,
    /// Group size (32, 64 or 128).
    pub group_size: usize,
}

impl Default for QuantizeOptions {
    /// mlx-lm's defaults: 4 bits, group size 64.
    fn default() -> Self {
        QuantizeOptions {
            bits: 4,
            group_size: 64,
        }
    }
}

/// Whether `quantize_model` quantizes this tensor: a float, 2-D `*.weight` whose last dimension
/// is a multiple of the group size (embeddings included, as in mlx-lm).
pub fn is_quantizable(name: &str, t: &TensorData, group_size: usize) -> bool {
    name.ends_with(".weight")
        && t.is_float()
        && t.shape().len() == 2
        && t.shape()[0] > 0
        && t.shape()[1] > 0
        && t.shape()[1].is_multiple_of(group_size)
}

fn quant_err(tensor: &str) -> impl FnOnce(crate::quant::QuantError) -> ModelError + '_ {
    move |e| ModelError::Quantize {
        tensor: tensor.to_string(),
        reason: e.to_string(),
    }
}

/// The tensors `<p>.weight` (packed U32), `<p>.scales` and `<p>.biases` of a quantized matrix.
pub fn matrix_tensors(path: &str, m: &QuantizedMatrix) -> [NamedTensor; 3] {
    let rows = m.rows;
    let groups = m.cols / m.group_size as usize;
    let words = m.cols * m.bits as usize / 32;
    let side = |v: &[f32]| {
        TensorData::new(
            m.dtype.to_safetensors(),
            vec![rows, groups],
            m.dtype.encode_le(v),
        )
    };
    [
        (
            format!("{path}.weight"),
            TensorData::from_u32(vec![rows, words], &m.packed),
        ),
        (format!("{path}.scales"), side(&m.scales)),
        (format!("{path}.biases"), side(&m.biases)),
    ]
}

/// Converts a stored quantized module into a [`QuantizedMatrix`] (scales and biases to `f32`,
/// exactly).
pub fn module_to_matrix(m: &QuantizedModule) -> Result<QuantizedMatrix> {
    let wname = format!("{}.weight", m.path);
    let params = AffineParams::new(m.bits, m.group_size as u32).map_err(quant_err(&wname))?;
    let sname = format!("{}.scales", m.path);
    let dtype =
        FloatDType::from_safetensors(m.scales.dtype()).map_err(|e| ModelError::WrongDtype {
            tensor: sname.clone(),
            expected: "F32, F16 or BF16".into(),
            actual: e.to_string(),
        })?;
    let scales = dtype
        .decode_le(m.scales.bytes())
        .map_err(|e| ModelError::Quantize {
            tensor: sname,
            reason: e.to_string(),
        })?;
    let biases = dtype
        .decode_le(m.biases.bytes())
        .map_err(|e| ModelError::Quantize {
            tensor: format!("{}.biases", m.path),
            reason: e.to_string(),
        })?;
    let packed = m.weight.to_u32().expect("checked U32");
    QuantizedMatrix::from_parts(m.rows, m.cols, params, dtype, packed, scales, biases)
        .map_err(quant_err(&wname))
}

/// Quantizes every quantizable tensor of a float model ([`is_quantizable`]) with MLX affine
/// quantization, keeping the others unchanged. Returns the tensors in the input's order (a
/// quantized `<p>.weight` followed by `<p>.scales` and `<p>.biases`) and the config with its
/// `quantization` section. `progress` advances once per tensor.
pub fn quantize_model(
    model: &Model,
    opts: &QuantizeOptions,
    progress: &ProgressBar,
) -> Result<(Vec<NamedTensor>, Value)> {
    // Errors about the parameters name the first tensor they would apply to.
    let first = model
        .tensors
        .iter()
        .find(|t| is_quantizable(&t.name, &t.data, opts.group_size.max(1)))
        .or_else(|| {
            model
                .tensors
                .iter()
                .find(|t| is_quantizable(&t.name, &t.data, 1))
        })
        .or(model.tensors.first())
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let params = AffineParams::new(opts.bits, opts.group_size as u32).map_err(quant_err(&first))?;
    if let Some(m) = model.quantized_modules()?.first() {
        return Err(ModelError::Quantize {
            tensor: format!("{}.weight", m.path),
            reason: "the model is already quantized".into(),
        });
    }
    let out: Vec<Vec<NamedTensor>> = model
        .tensors
        .par_iter()
        .map(|t| {
            let r = if is_quantizable(&t.name, &t.data, opts.group_size) {
                let dtype = FloatDType::from_safetensors(t.data.dtype()).expect("float");
                let w = t.data.to_f32().expect("float");
                let (rows, cols) = (t.data.shape()[0], t.data.shape()[1]);
                let m =
                    quantize_affine(&w, rows, cols, dtype, params).map_err(quant_err(&t.name))?;
                let path = t.name.strip_suffix(".weight").expect("checked");
                Ok(matrix_tensors(path, &m).into())
            } else {
                Ok(vec![(t.name.clone(), t.data.clone())])
            };
            progress.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    let mut config = model
        .config
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    QuantConfig::affine(opts.group_size, opts.bits).store_in(&mut config);
    Ok((out.into_iter().flatten().collect(), config))
}

/// [`quantize_model`] written to `out_dir` in the mlx-lm layout (shards, index, `config.json`,
/// the input directory's other files copied). Returns the number of quantized matrices.
pub fn quantize_to_dir(
    model: &Model,
    out_dir: &Path,
    opts: &QuantizeOptions,
    write: &WriteOptions,
    progress: &ProgressBar,
) -> Result<usize> {
    let (tensors, config) = quantize_model(model, opts, progress)?;
    let n = tensors
        .iter()
        .filter(|(n, _)| n.ends_with(".scales"))
        .count();
    write_model(out_dir, &tensors, Some(&config), write)?;
    copy_extra_files(model, out_dir)?;
    Ok(n)
}
