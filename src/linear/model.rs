//! [`EntropyCodedModel`]: every coded linear layer of an encoded model, resident on the GPU.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;

use super::coded::{CodedLayerRef, EntropyCodedLinear, LinearOptions};
use super::cpu::CpuLinear;
use super::device::LinearDevice;
use super::LinearError;
use crate::container::{
    load_weight, parse_split_descriptor, window_split_takes, CodedModel, WindowRecoder,
    PART_SUFFIXES, SPLIT_SUFFIXES,
};
use crate::model::{Dtype, TensorData};
use crate::rans::{verify_checksums_le, HEADER_FIXED, MAGIC, VERSION};

/// An entropy-coded model (an `ecq encode`d mlx-lm directory or safetensors file) with every
/// coded linear layer uploaded to the GPU once, by module path.
///
/// 4-bit layers stored whole (`ecq encode`'s default) or split 2 + 2 are re-coded on the host
/// as window splits, the form the GPU runs fastest, where their shape allows it (see
/// [`LinearOptions::keep_stored_form`]); the host holds one such layer's decoded and re-coded
/// weights at a time. Every other layer's coded streams are written to the GPU straight from
/// the memory-mapped file (borrowed slices into `queue.write_buffer`, flushed layer by layer);
/// scales and biases are converted to `f32` on the way (they are 1/8 to 1/16 of a 4-bit
/// model).
#[derive(Debug)]
pub struct EntropyCodedModel {
    coded: CodedModel,
    layers: BTreeMap<String, EntropyCodedLinear>,
}

fn part<'a>(
    coded: &'a CodedModel,
    path: &str,
    suffix: &str,
    dtype: Dtype,
) -> Result<&'a TensorData, LinearError> {
    let name = format!("{path}.weight{suffix}");
    let t = coded
        .model
        .get(&name)
        .ok_or_else(|| LinearError::InvalidLayer {
            layer: path.into(),
            reason: format!("{name} is missing"),
        })?;
    if t.dtype() != dtype {
        return Err(LinearError::InvalidLayer {
            layer: path.into(),
            reason: format!("{name} has dtype {:?}, expected {dtype:?}", t.dtype()),
        });
    }
    Ok(t)
}

fn floats(coded: &CodedModel, name: &str, layer: &str) -> Result<Option<Vec<f32>>, LinearError> {
    match coded.model.get(name) {
        None => Ok(None),
        Some(t) => t
            .to_f32()
            .map(Some)
            .ok_or_else(|| LinearError::InvalidLayer {
                layer: layer.into(),
                reason: format!("{name} has dtype {:?}, expected a float type", t.dtype()),
            }),
    }
}

impl EntropyCodedModel {
    /// Opens the coded model at `path` and uploads every coded layer.
    pub fn open(dev: &Arc<LinearDevice>, path: impl AsRef<Path>) -> Result<Self, LinearError> {
        Self::open_with(dev, path, &LinearOptions::default())
    }

    /// [`open`](Self::open) with upload options.
    pub fn open_with(
        dev: &Arc<LinearDevice>,
        path: impl AsRef<Path>,
        opts: &LinearOptions,
    ) -> Result<Self, LinearError> {
        Self::open_with_progress(dev, path, opts, &ProgressBar::hidden())
    }

    /// [`open_with`](Self::open_with), advancing `progress` by one a layer uploaded (its
    /// length set to the number of coded layers, its message to the layer being uploaded): a
    /// large model takes seconds to upload, and re-coding it
    /// as window splits (unless [`LinearOptions::keep_stored_form`]) about 0.13 s of 16 cores a
    /// Llama-3-8B layer.
    pub fn open_with_progress(
        dev: &Arc<LinearDevice>,
        path: impl AsRef<Path>,
        opts: &LinearOptions,
        progress: &ProgressBar,
    ) -> Result<Self, LinearError> {
        let coded = CodedModel::open(path)?;
        let paths = coded.module_paths();
        progress.set_length(paths.len() as u64);
        let mut layers = BTreeMap::new();
        // (one recoder for the model: its buffers serve layer after layer)
        let mut recoder = WindowRecoder::new();
        for p in paths {
            progress.set_message(p.clone());
            let layer = Self::upload_layer(dev, &coded, &p, opts, &mut recoder)?;
            layers.insert(p, layer);
            progress.inc(1);
        }
        Ok(EntropyCodedModel { coded, layers })
    }

    fn upload_layer(
        dev: &Arc<LinearDevice>,
        coded: &CodedModel,
        path: &str,
        opts: &LinearOptions,
        recoder: &mut WindowRecoder,
    ) -> Result<EntropyCodedLinear, LinearError> {
        let bad = |reason: String| LinearError::InvalidLayer {
            layer: path.into(),
            reason,
        };
        let h = part(coded, path, PART_SUFFIXES[0], Dtype::U32)?
            .to_u32()
            .expect("U32");
        if h.len() < HEADER_FIXED || h[0] != MAGIC || h[1] != VERSION || h[7] != 32 {
            return Err(bad(format!(
                "{path}.weight.ecq_header is not a version-{VERSION} ecq header with 32 lanes"
            )));
        }
        let (rows, cols) = (h[2] as usize, h[3] as usize);
        let (chunk_rows, tile_chunks) = (h[8] as usize, h[9] as usize);
        let nc = if rows == 0 || cols == 0 || chunk_rows == 0 {
            0
        } else {
            rows.div_ceil(chunk_rows)
        };
        if h[10] as usize != nc || h[11] as usize != nc.div_ceil(tile_chunks.max(1)) {
            return Err(bad(format!(
                "header n_chunks {} / n_tiles {} disagree with {rows} rows, {chunk_rows} rows per chunk, {tile_chunks} chunks per tile",
                h[10], h[11]
            )));
        }
        // a split matrix: the header describes its coded high bits
        let split = match coded
            .model
            .get(&format!("{path}.weight{}", SPLIT_SUFFIXES[0]))
        {
            None => None,
            Some(_) => {
                let d = part(coded, path, SPLIT_SUFFIXES[0], Dtype::U32)?
                    .to_u32()
                    .expect("U32");
                let d = parse_split_descriptor(&format!("{path}.weight"), &d, h[4])?;
                let low = part(coded, path, SPLIT_SUFFIXES[1], Dtype::U32)?.bytes();
                // the GPU reads the raw bits as they are: check them here
                let computed = crc32c::crc32c(low);
                if computed != d.low_crc {
                    return Err(LinearError::Codec {
                        layer: path.into(),
                        source: crate::rans::CodecError::LowBitsChecksumMismatch {
                            stored: d.low_crc,
                            computed,
                        },
                    });
                }
                Some((d, low))
            }
        };
        let row_pairs = split
            .as_ref()
            .is_some_and(|(d, _)| d.order == crate::rans::SplitOrder::RowPairs);
        // the layer's outputs and inputs (with row pairs a coded row is two matrix rows)
        let (out_f, in_f) = if row_pairs {
            (rows * 2, cols / 2)
        } else {
            (rows, cols)
        };
        let scales = floats(coded, &format!("{path}.scales"), path)?
            .ok_or_else(|| bad(format!("{path}.scales is missing")))?;
        let biases = floats(coded, &format!("{path}.biases"), path)?
            .ok_or_else(|| bad(format!("{path}.biases is missing")))?;
        let bias = floats(coded, &format!("{path}.bias"), path)?;
        let group_size = match h[12] as usize {
            0 if out_f > 0 && !scales.is_empty() => in_f / (scales.len() / out_f).max(1),
            g => g,
        };
        let freqs = part(coded, path, PART_SUFFIXES[1], Dtype::U16)?.bytes();
        let states = part(coded, path, PART_SUFFIXES[2], Dtype::U32)?.bytes();
        let offsets = part(coded, path, PART_SUFFIXES[3], Dtype::U32)?;
        let words = part(coded, path, PART_SUFFIXES[4], Dtype::U16)?.bytes();
        let crc = part(coded, path, PART_SUFFIXES[5], Dtype::U32)?
            .to_u32()
            .expect("U32");
        // The GPU kernels check the stream's structure but not the checksums, and a flipped
        // word can decode "cleanly" to wrong values: verify the file's bytes before upload.
        let symbol_bits = h[4].saturating_mul(h[5]);
        if !(1..=8).contains(&symbol_bits) {
            return Err(bad(format!(
                "{} bits x {} weights per symbol is not a symbol of 1..=8 bits",
                h[4], h[5]
            )));
        }
        let alphabet = 1usize << symbol_bits;
        verify_checksums_le(
            alphabet,
            tile_chunks,
            freqs,
            states,
            &offsets.to_u32().expect("U32"),
            words,
            &crc,
        )
        .map_err(|source| LinearError::Codec {
            layer: path.into(),
            source,
        })?;
        // (the layer as a window split: see LinearOptions::keep_stored_form; whether the form
        // takes it is asked before `load_weight` copies the stored parts)
        let weight_bits = h[4] + split.as_ref().map_or(0, |(d, _)| d.low_bits);
        let window_split = if !opts.keep_stored_form
            && split.as_ref().is_none_or(|(d, _)| d.window.is_none())
            && window_split_takes(out_f, in_f, weight_bits, true)
        {
            let weight = format!("{path}.weight");
            recoder.window_split_of(&weight, &load_weight(&coded.model, &weight)?, true)?
        } else {
            None
        };
        if let Some(s) = &window_split {
            let m = CodedLayerRef::from_split(s, group_size, &scales, &biases, bias.as_deref());
            return EntropyCodedLinear::upload(dev, path, m, opts);
        }
        let m = CodedLayerRef {
            rows,
            cols,
            bits: h[4],
            weights_per_symbol: h[5],
            precision: h[6],
            chunk_rows,
            tile_chunks,
            freqs,
            states,
            offsets: offsets.bytes(),
            words,
            group_size,
            scales: &scales,
            biases: &biases,
            bias: bias.as_deref(),
            low_bits: split.as_ref().map_or(0, |(d, _)| d.low_bits),
            low: split.as_ref().map_or(&[], |(_, low)| low),
            row_pairs,
            window: split.as_ref().and_then(|(d, _)| d.window),
        };
        EntropyCodedLinear::upload(dev, path, m, opts)
    }

    /// The layer at module path `path` (e.g. `encoder.layer.0.attention.self.query`).
    pub fn layer(&self, path: &str) -> Result<&EntropyCodedLinear, LinearError> {
        self.layers
            .get(path)
            .ok_or_else(|| LinearError::MissingLayer {
                path: path.into(),
                model: self.coded.model.path.display().to_string(),
                available: self.layers.len(),
                example: self.layers.keys().next().cloned().unwrap_or_default(),
            })
    }

    /// Bytes every coded layer's weights occupy on the GPU (coded tensors, scales and biases
    /// as held: [`EntropyCodedLinear::gpu_bytes`]).
    pub fn gpu_bytes(&self) -> u64 {
        self.layers
            .values()
            .map(EntropyCodedLinear::gpu_bytes)
            .sum()
    }

    /// Module paths of the coded layers, sorted.
    pub fn layer_paths(&self) -> Vec<&str> {
        self.layers.keys().map(String::as_str).collect()
    }

    /// The model's `config.json` (the directory's, or the one beside a single file).
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.coded.model.config.as_ref()
    }

    /// A tensor stored unchanged (norms, embeddings, layer biases).
    pub fn tensor(&self, name: &str) -> Option<&TensorData> {
        self.coded.tensor(name)
    }

    /// The underlying coded model.
    pub fn coded(&self) -> &CodedModel {
        &self.coded
    }

    /// The CPU reference of the layer at `path`, decoded on the CPU (checksums verified).
    pub fn cpu_layer(&self, path: &str) -> Result<CpuLinear, LinearError> {
        let layer = self.layer(path)?;
        let module = self.coded.module(path)?;
        let f = |t: &Option<TensorData>| t.as_ref().and_then(TensorData::to_f32);
        let scales = f(&module.scales).unwrap_or_default();
        let biases = f(&module.biases).unwrap_or_default();
        let gs = if scales.is_empty() {
            0
        } else {
            module.matrix.cols() * module.matrix.rows() / scales.len()
        };
        CpuLinear::from_coded(
            path,
            &module.matrix,
            gs,
            &scales,
            &biases,
            layer.bias().map(<[f32]>::to_vec),
        )
    }
}
