//! Entropy-coded models stored as safetensors files (`ecq encode` / `decode` / `verify`).
//!
//! Every MLX-quantized `<p>.weight` (packed U32) is replaced by the six tensors
//! `<p>.weight.ecq_{header,freqs,states,offsets,words,crc}` of `docs/FORMAT.md` section 6;
//! scales, biases and every other tensor are stored unchanged. Each file's safetensors metadata
//! gains `ecq.format`, `ecq.version`, `ecq.lanes`, `ecq.precision`, `ecq.chunk_symbols`,
//! `ecq.tile_chunks` and `ecq.min_chunks` (informational: each matrix header holds its own
//! chunk geometry); a directory's `config.json` gains `"ecq": {"format": "ecq-rans",
//! "version": 1}`. A sharded model stays sharded with the same shard names, and the directory's
//! other files are copied unchanged. [`decode_model`] restores every tensor byte for byte.
//!
//! [`encode_model_with`] and [`MatrixCoding::Split4`] (`ecq encode --split [--row-pairs]`)
//! store 4-bit matrices split instead: coded high 2 bits, raw low 2 bits, in row-pair order
//! where asked and the shape allows (docs/FORMAT.md section 7: the six tensors then hold the
//! coded part, `<p>.weight.ecq_split` and `<p>.weight.ecq_low` are added, and the files
//! declare container version 2). [`MatrixCoding::Window4`] (`ecq encode --window
//! [--row-pairs]`) stores them as window splits (one coded bit per weight, three raw; split
//! descriptor version 2), the fastest form for the GPU's fused GEMV.
//!
//! [`CodedModel`] opens a coded file or directory and hands out each module's
//! [`CodedWeight`] (whole or split) with its scales and biases, for the GPU path.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::json;

use crate::model::write::{copy_extra_files, write_json_atomic, write_safetensors, NamedTensor};
use crate::model::{Dtype, Model, ModelError, QuantizedModule, TensorData, CONFIG_FILE};
use crate::rans::{encode, CodecError, EncodeOptions, EncodedMatrix, SplitMatrix, SplitOrder};

/// Value of the `ecq.format` metadata key and of `config.json`'s `ecq.format`.
pub const FORMAT_NAME: &str = "ecq-rans";
/// Container version of a model whose matrices are all coded whole (metadata `ecq.version`,
/// `config.json` `ecq.version`): what [`encode_model`] writes, and what every ecq reads.
pub const CONTAINER_VERSION: u32 = 1;
/// Container version of a model with at least one split matrix (docs/FORMAT.md section 7):
/// a reader of version 1 only would decode such a matrix's coded high bits as if they were
/// the whole weights, so these files declare a version it rejects.
pub const SPLIT_CONTAINER_VERSION: u32 = 2;
/// Suffixes of the two tensors a split matrix stores beside the six of [`PART_SUFFIXES`]
/// (which then hold its coded high bits): the split descriptor and the raw low bits.
pub const SPLIT_SUFFIXES: [&str; 2] = [".ecq_split", ".ecq_low"];
/// First word of a split descriptor (`<p>.weight.ecq_split`): the bytes `E C Q S`.
pub const SPLIT_MAGIC: u32 = 0x5351_4345;
/// Version of the split descriptor of a split into high and low bits (what ecq writes for
/// them, so that earlier readers keep reading those files).
pub const SPLIT_DESCRIPTOR_VERSION: u32 = 1;
/// Version of the split descriptor of a window split ([`SplitMatrix::encode_window`]): version
/// 1 plus word 8, the form (docs/FORMAT.md section 7). A reader of version 1 only rejects it.
pub const WINDOW_DESCRIPTOR_VERSION: u32 = 2;
/// Words of a split descriptor before the packed shape.
pub const SPLIT_DESCRIPTOR_FIXED: usize = 8;
/// Index of the descriptor's own checksum in a split descriptor.
const SPLIT_DESCRIPTOR_CRC: usize = 6;

/// The checksum a split descriptor `d` stores at index 6: CRC-32C of the little-endian bytes
/// of every other word (docs/FORMAT.md section 7). The descriptor decides how the coded
/// symbols are ordered and what shape they decode to, and neither the coded tiles' checksums
/// nor the low bits' cover it: without it, a changed order and shape would decode to wrong
/// weights without an error.
pub fn split_descriptor_crc(d: &[u32]) -> u32 {
    d.iter()
        .enumerate()
        .filter(|&(i, _)| i != SPLIT_DESCRIPTOR_CRC)
        .fold(0u32, |crc, (_, w)| {
            crc32c::crc32c_append(crc, &w.to_le_bytes())
        })
}
/// Suffixes of the six tensors that replace a coded `<p>.weight`, in FORMAT.md order.
pub const PART_SUFFIXES: [&str; 6] = [
    ".ecq_header",
    ".ecq_freqs",
    ".ecq_states",
    ".ecq_offsets",
    ".ecq_words",
    ".ecq_crc",
];

/// Errors of the container. Messages start with the tensor or file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// Reading or writing the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The codec rejected a matrix (bad header, corrupt stream, checksum mismatch...).
    #[error("{tensor}: {source}")]
    Codec {
        /// The coded weight (`<p>.weight`) or the part concerned.
        tensor: String,
        /// The codec's error (names tile, chunk and byte offset).
        source: CodecError,
    },
    /// A part of a coded matrix is missing.
    #[error("{tensor}: missing (part of the coded matrix {weight})")]
    MissingPart {
        /// The missing tensor.
        tensor: String,
        /// The coded weight it belongs to.
        weight: String,
    },
    /// A part of a coded matrix has the wrong dtype or rank.
    #[error("{tensor}: {reason}")]
    BadPart {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// `encode` was given a model with no MLX-quantized weight.
    #[error("{}: no MLX-quantized weights (<p>.weight U32 with <p>.scales and <p>.biases) to encode", path.display())]
    NothingToEncode {
        /// The model.
        path: PathBuf,
    },
    /// `encode` was given a model that is already entropy-coded.
    #[error("{tensor}: the model is already entropy-coded")]
    AlreadyCoded {
        /// A coded tensor found.
        tensor: String,
    },
    /// `decode` or `verify` was given a model without coded tensors or ecq metadata.
    #[error("{}: not an entropy-coded model (no ecq tensors or metadata)", path.display())]
    NotCoded {
        /// The model.
        path: PathBuf,
    },
    /// A file's metadata names another format or version.
    #[error("{file}: {key} is {value:?}, this ecq reads {expected:?}")]
    UnsupportedVersion {
        /// The shard file.
        file: String,
        /// The metadata key.
        key: String,
        /// Its value.
        value: String,
        /// The supported value.
        expected: String,
    },
    /// The coded matrix disagrees with its scales or biases.
    #[error("{tensor}: {reason}")]
    Inconsistent {
        /// The tensor.
        tensor: String,
        /// What disagrees.
        reason: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// How [`encode_model_with`] codes each MLX-quantized weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MatrixCoding {
    /// Every matrix coded whole ([`EncodedMatrix`]: each symbol holds all the bits of 1, 2 or 4
    /// weights): the smallest files, readable by every ecq (container version 1).
    #[default]
    Whole,
    /// 4-bit matrices as [`SplitMatrix`]es (high 2 bits coded four weights to a symbol, low 2
    /// bits raw): 0.8-2.1% larger on MLX weights in the same chunks (2.6-4.0% on MiniLM with
    /// the chunks of [`default_min_chunks`](Self::default_min_chunks)); the GPU's fused GEMV
    /// runs it faster than whole symbols, and [`Window4`](Self::Window4) faster still
    /// (BENCHMARKS.md, issue 5). With `row_pairs`, every matrix whose shape allows it
    /// (an even number of rows, `K` a multiple of 512) is stored in [`SplitOrder::RowPairs`];
    /// the others in row order. Matrices of other widths, or whose rows do not fill whole
    /// words of low bits (`K` not a multiple of 16), are coded whole. The chunks hold
    /// `chunk_symbols / 2` symbols of four weights, as many weights as whole 4-bit chunks
    /// (then shrunk by `min_chunks`: see [`default_min_chunks`](Self::default_min_chunks)).
    /// Files with a split matrix are container version 2 ([`SPLIT_CONTAINER_VERSION`]).
    Split4 {
        /// Store pairs of rows interleaved where the shape allows it.
        row_pairs: bool,
    },
    /// 4-bit matrices as window splits ([`SplitMatrix::encode_window`]: one coded bit per
    /// weight, eight weights to a symbol, three raw bits): 0.23-0.27% larger than
    /// [`Split4`](Self::Split4) on MiniLM and the form the GPU's fused GEMV runs fastest, in
    /// row pairs 1.24-1.38x faster than `Split4`'s on an H200 (BENCHMARKS.md, issue 5, step
    /// 60). Split are the 4-bit matrices whose coded rows the GPU's fused kernel runs (whole
    /// blocks of 1024 coded weights): with `row_pairs`, those with an even number of rows and
    /// `K` a multiple of 512 in [`SplitOrder::RowPairs`] (runs of 16 columns); in row order
    /// those with `K` a multiple of 1024. The others, and other widths, are coded whole. The
    /// chunks
    /// hold `chunk_symbols / 4` symbols of eight weights (then shrunk by `min_chunks`). Files
    /// with a window split are container version 2 ([`SPLIT_CONTAINER_VERSION`]).
    Window4 {
        /// Store pairs of rows interleaved where the shape allows it.
        row_pairs: bool,
    },
}

impl MatrixCoding {
    /// The [`EncodeOptions::min_chunks`] `ecq encode` uses with this coding unless told
    /// otherwise: 0 (off) for [`Whole`](Self::Whole), the size form;
    /// [`SPLIT_MIN_CHUNKS`](crate::rans::SPLIT_MIN_CHUNKS) for [`Split4`](Self::Split4), the
    /// speed form, whose fused GEMV runs 1.2-2.9x faster on an H200 with those decoders.
    pub fn default_min_chunks(self) -> usize {
        match self {
            MatrixCoding::Whole => 0,
            MatrixCoding::Split4 { .. } | MatrixCoding::Window4 { .. } => {
                crate::rans::SPLIT_MIN_CHUNKS
            }
        }
    }
}

/// A stored coded weight: coded whole, or split into coded high and raw low bits.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CodedWeight {
    /// Docs/FORMAT.md section 6: every bit of every weight coded (its header holds the packed
    /// shape and the group size).
    Whole(EncodedMatrix),
    /// Docs/FORMAT.md section 7: the split matrix, with the MLX packed shape of the weight it
    /// decodes to (its coded part's header holds the coded part's own shape).
    Split {
        /// The coded high bits and raw low bits.
        matrix: SplitMatrix,
        /// The original MLX packed `U32` tensor's shape (last dimension `K * bits / 32`).
        shape: Vec<u32>,
    },
}

impl CodedWeight {
    /// The coded matrix holding the (high) bits that are entropy-coded.
    pub fn coded(&self) -> &EncodedMatrix {
        match self {
            CodedWeight::Whole(m) => m,
            CodedWeight::Split { matrix, .. } => matrix.high(),
        }
    }
    /// The split matrix, if the weight is stored split.
    pub fn split(&self) -> Option<&SplitMatrix> {
        match self {
            CodedWeight::Whole(_) => None,
            CodedWeight::Split { matrix, .. } => Some(matrix),
        }
    }
    /// Rows of the weight matrix (output features).
    pub fn rows(&self) -> usize {
        match self {
            CodedWeight::Whole(m) => m.rows(),
            CodedWeight::Split { matrix, .. } => matrix.rows(),
        }
    }
    /// Weights per row (input features).
    pub fn cols(&self) -> usize {
        match self {
            CodedWeight::Whole(m) => m.cols(),
            CodedWeight::Split { matrix, .. } => matrix.cols(),
        }
    }
    /// Bits per weight (coded and raw together).
    pub fn bits(&self) -> u32 {
        match self {
            CodedWeight::Whole(m) => m.bits(),
            CodedWeight::Split { matrix, .. } => matrix.bits(),
        }
    }
    /// Number of weights.
    pub fn weights(&self) -> usize {
        self.coded().weights()
    }
    /// MLX group size of the scales and biases (0 if none).
    pub fn group_size(&self) -> u32 {
        self.coded().group_size()
    }
    /// Shape of the MLX packed `U32` tensor the weight decodes to.
    pub fn shape(&self) -> &[u32] {
        match self {
            CodedWeight::Whole(m) => m.shape(),
            CodedWeight::Split { shape, .. } => shape,
        }
    }
    /// Stored bytes: every coded tensor, with a split matrix's raw low bits and descriptor.
    pub fn total_bytes(&self) -> usize {
        match self {
            CodedWeight::Whole(m) => m.total_bytes(),
            CodedWeight::Split { matrix, shape } => {
                matrix.high().total_bytes()
                    + matrix.low().len() * 4
                    + (split_descriptor_fixed(matrix) + shape.len()) * 4
            }
        }
    }
    /// Bytes of the word stream, plus a split matrix's raw low bits.
    pub fn payload_bytes(&self) -> usize {
        self.coded().payload_bytes() + self.split().map_or(0, |s| s.low().len() * 4)
    }
    /// Per-tile entropy bound of the coded symbols in bits, plus a split matrix's raw bits.
    pub fn entropy_bound_bits(&self) -> Result<f64, CodecError> {
        let raw = self
            .split()
            .map_or(0.0, |s| s.weights() as f64 * f64::from(s.low_bits()));
        Ok(self.coded().entropy_bound_bits()? + raw)
    }
    /// Verifies every checksum (the coded tiles', and a split matrix's low bits').
    pub fn verify_checksums(&self) -> Result<(), CodecError> {
        match self {
            CodedWeight::Whole(m) => m.verify_checksums(),
            CodedWeight::Split { matrix, .. } => matrix.verify_checksums(),
        }
    }
    /// Decodes to one `u8` per weight, row-major, verifying every checksum.
    pub fn decode_symbols(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            CodedWeight::Whole(m) => m.decode_symbols(),
            CodedWeight::Split { matrix, .. } => matrix.decode_symbols(),
        }
    }
    /// [`decode_symbols`](Self::decode_symbols) into a caller's buffer of
    /// [`weights`](Self::weights) bytes.
    pub fn decode_symbols_into(&self, out: &mut [u8]) -> Result<(), CodecError> {
        match self {
            CodedWeight::Whole(m) => m.decode_symbols_into(out),
            CodedWeight::Split { matrix, .. } => matrix.decode_symbols_into(out),
        }
    }
    /// Decodes to MLX packed `u32` words, verifying every checksum.
    pub fn decode_packed(&self) -> Result<Vec<u32>, CodecError> {
        match self {
            CodedWeight::Whole(m) => m.decode_packed(),
            CodedWeight::Split { matrix, .. } => matrix.decode_packed(),
        }
    }
}

fn codec(tensor: &str) -> impl FnOnce(CodecError) -> ContainerError + '_ {
    move |source| ContainerError::Codec {
        tensor: tensor.to_string(),
        source,
    }
}

/// The safetensors metadata entries ecq adds to every coded file.
pub fn coded_metadata(opts: &EncodeOptions) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ecq.format".to_string(), FORMAT_NAME.to_string()),
        ("ecq.version".to_string(), CONTAINER_VERSION.to_string()),
        ("ecq.lanes".to_string(), crate::rans::LANES.to_string()),
        ("ecq.precision".to_string(), opts.precision.to_string()),
        (
            "ecq.chunk_symbols".to_string(),
            opts.chunk_symbols.to_string(),
        ),
        ("ecq.tile_chunks".to_string(), opts.tile_chunks.to_string()),
        ("ecq.min_chunks".to_string(), opts.min_chunks.to_string()),
    ])
}

/// Entropy-codes one quantized module with `opts` (its group size and packed shape go into the
/// header), whole.
pub fn encode_module(m: &QuantizedModule, opts: &EncodeOptions) -> Result<EncodedMatrix> {
    match encode_module_with(m, opts, MatrixCoding::Whole)? {
        CodedWeight::Whole(enc) => Ok(enc),
        CodedWeight::Split { .. } => unreachable!("MatrixCoding::Whole codes whole"),
    }
}

/// Whether [`MatrixCoding::Split4`] splits a `bits`-bit matrix of `cols` weights per row, and
/// in which order for `rows` rows.
fn split_order(coding: MatrixCoding, rows: usize, cols: usize, bits: u32) -> Option<SplitOrder> {
    match coding {
        // (coded rows of whole 1024-weight blocks: what the GPU's fused kernel runs)
        MatrixCoding::Window4 { row_pairs } if bits == 4 => {
            if row_pairs && rows.is_multiple_of(2) && cols.is_multiple_of(512) {
                Some(SplitOrder::RowPairs)
            } else if cols.is_multiple_of(1024) {
                Some(SplitOrder::Rows)
            } else {
                None
            }
        }
        MatrixCoding::Split4 { row_pairs } if bits == 4 && cols.is_multiple_of(16) => {
            let run = crate::rans::ROW_PAIR_RUN_SYMBOLS * 4;
            Some(
                if row_pairs && rows.is_multiple_of(2) && cols.is_multiple_of(run) {
                    SplitOrder::RowPairs
                } else {
                    SplitOrder::Rows
                },
            )
        }
        _ => None,
    }
}

/// Checks that `shape` is an MLX packed shape of `rows x cols` `bits`-bit weights: rank 1..=8,
/// leading dimensions multiplying to `rows`, last dimension `cols * bits / 32`.
fn check_packed_shape(
    tensor: &str,
    rows: usize,
    cols: usize,
    bits: u32,
    shape: &[u32],
) -> Result<()> {
    let lead: u64 = shape[..shape.len().saturating_sub(1)]
        .iter()
        .fold(1u64, |a, &d| a.saturating_mul(u64::from(d)));
    let last = shape.last().map(|&d| u64::from(d));
    if shape.is_empty()
        || shape.len() > 8
        || lead != rows as u64
        || last != Some(cols as u64 * u64::from(bits) / 32)
    {
        return Err(ContainerError::Inconsistent {
            tensor: tensor.to_string(),
            reason: format!(
                "packed shape {shape:?} does not hold {rows} x {cols} {bits}-bit weights \
                 (rank 1..=8, rows in the leading dimensions, cols * bits / 32 in the last)"
            ),
        });
    }
    Ok(())
}

/// Entropy-codes one quantized module with `opts` as `coding` asks (see [`MatrixCoding`]).
pub fn encode_module_with(
    m: &QuantizedModule,
    opts: &EncodeOptions,
    coding: MatrixCoding,
) -> Result<CodedWeight> {
    let wname = format!("{}.weight", m.path);
    let packed = m.weight.to_u32().ok_or_else(|| ContainerError::BadPart {
        tensor: wname.clone(),
        reason: format!("dtype {:?}, expected U32", m.weight.dtype()),
    })?;
    let mut symbols = vec![0u8; m.rows * m.cols];
    crate::quant::unpack_into(&packed, m.bits, &mut symbols).map_err(|e| {
        ContainerError::BadPart {
            tensor: wname.clone(),
            reason: e.to_string(),
        }
    })?;
    let opts = EncodeOptions {
        group_size: m.group_size as u32,
        ..opts.clone()
    };
    let shape: Vec<u32> = m.weight.shape().iter().map(|&d| d as u32).collect();
    let geometry = (m.rows, m.cols, m.bits);
    encode_symbols_with(
        &wname,
        &symbols,
        geometry,
        shape,
        &opts,
        coding,
        &mut Vec::new(),
    )
}

/// Codes `symbols` (`rows x cols` values `< 2^bits`, row-major) of the weight called `weight`
/// as `coding` asks, with `opts` (its group size goes into the header) and MLX packed `shape`;
/// a window split's flags are built in `flags` (see `SplitMatrix::encode_window_in`).
fn encode_symbols_with(
    weight: &str,
    symbols: &[u8],
    (rows, cols, bits): (usize, usize, u32),
    shape: Vec<u32>,
    opts: &EncodeOptions,
    coding: MatrixCoding,
    flags: &mut Vec<u8>,
) -> Result<CodedWeight> {
    if let Some(order) = split_order(coding, rows, cols, bits) {
        let window = matches!(coding, MatrixCoding::Window4 { .. });
        let opts = EncodeOptions {
            chunk_symbols: (opts.chunk_symbols / if window { 4 } else { 2 }).max(1),
            ..opts.clone()
        };
        let matrix = if window {
            let start = crate::rans::window_start(symbols);
            SplitMatrix::encode_window_in(symbols, rows, cols, start, &opts, order, flags)
        } else {
            SplitMatrix::encode_ordered(symbols, rows, cols, bits, 2, &opts, order)
        }
        .map_err(codec(weight))?;
        // (the coded part keeps its own shape; the descriptor holds the weight's)
        check_packed_shape(weight, rows, cols, bits, &shape)?;
        return Ok(CodedWeight::Split { matrix, shape });
    }
    let mut enc = encode(symbols, rows, cols, bits, opts).map_err(codec(weight))?;
    enc.set_shape(&shape).map_err(codec(weight))?;
    Ok(CodedWeight::Whole(enc))
}

/// The window split ([`MatrixCoding::Window4`]) of a stored 4-bit weight coded whole or split
/// 2 + 2: what `ecq decode` and then `ecq encode --window [--row-pairs]` would store for it
/// (`ecq encode`'s default chunks for the form, the weight's group size and packed shape),
/// without the round trip through files. The GPU's fused kernels run window splits fastest:
/// on an H200, 32 Llama-3-8B layers coded whole, as `ecq encode` stores them by default, took
/// 20.6 ms a token, re-coded by this 5.4 (73.2 and 15.5 on the kernels of GPUs without
/// 32-wide subgroups, before steps 128-132 made both faster), for 0.13 s of the host's 16
/// cores a layer with a [`WindowRecoder`] kept across layers (BENCHMARKS.md, issue 5, steps
/// 126-127). This is how [`crate::linear::EntropyCodedModel`] uploads such weights unless
/// [`crate::linear::LinearOptions::keep_stored_form`] says not to. The weights are the same:
/// the split decodes to `w`'s symbols, checksums verified on the way.
///
/// `None` where the window split does not take the weight: not 4 bits, already a window
/// split, or a shape [`MatrixCoding::Window4`] codes whole (`K` not a multiple of 512 in row
/// pairs, or of 1024 in rows).
///
/// # Errors
///
/// [`ContainerError::Codec`] naming `weight` where `w` does not decode (a checksum that does
/// not match, a corrupt stream) or its symbols do not encode.
pub fn window_split_of(
    weight: &str,
    w: &CodedWeight,
    row_pairs: bool,
) -> Result<Option<SplitMatrix>> {
    WindowRecoder::default().window_split_of(weight, w, row_pairs)
}

/// Whether [`window_split_of`] re-codes a `bits`-bit weight of `rows x cols` that is not a
/// window split already: 4 bits, in a shape [`MatrixCoding::Window4`] splits. A loader can ask
/// before it copies a stored weight's parts.
pub fn window_split_takes(rows: usize, cols: usize, bits: u32, row_pairs: bool) -> bool {
    split_order(MatrixCoding::Window4 { row_pairs }, rows, cols, bits).is_some()
}

/// [`window_split_of`] for weight after weight, keeping its buffers (a weight's decoded
/// symbols and its coded flags, a byte each per weight) from one to the next: on a 16-core host
/// fresh buffers of that size cost as much as the re-coding itself, its threads waiting on the
/// kernel to page them in (BENCHMARKS.md, issue 5, step 127). A loader keeps one for a model.
#[derive(Debug, Default)]
pub struct WindowRecoder {
    symbols: Vec<u8>,
    flags: Vec<u8>,
}

impl WindowRecoder {
    /// A recoder with no buffers yet (they grow to the largest weight re-coded).
    pub fn new() -> Self {
        Self::default()
    }

    /// [`window_split_of`] in this recoder's buffers.
    ///
    /// # Errors
    ///
    /// As [`window_split_of`].
    pub fn window_split_of(
        &mut self,
        weight: &str,
        w: &CodedWeight,
        row_pairs: bool,
    ) -> Result<Option<SplitMatrix>> {
        let coding = MatrixCoding::Window4 { row_pairs };
        let (rows, cols, bits) = (w.rows(), w.cols(), w.bits());
        let is_window = w.split().is_some_and(|s| s.window().is_some());
        if is_window || !window_split_takes(rows, cols, bits, row_pairs) {
            return Ok(None);
        }
        let symbols = crate::rans::grown(&mut self.symbols, w.weights());
        w.decode_symbols_into(symbols).map_err(codec(weight))?;
        let opts = EncodeOptions {
            group_size: w.group_size(),
            min_chunks: coding.default_min_chunks(),
            ..Default::default()
        };
        let geometry = (rows, cols, bits);
        let shape = w.shape().to_vec();
        match encode_symbols_with(
            weight,
            symbols,
            geometry,
            shape,
            &opts,
            coding,
            &mut self.flags,
        )? {
            CodedWeight::Split { matrix, .. } => Ok(Some(matrix)),
            CodedWeight::Whole(_) => unreachable!("split_order took the shape"),
        }
    }
}

/// The stored tensors of a coded weight called `weight`: the six of [`matrix_tensors`] for a
/// whole one; for a split one, those of its coded high bits and the two of
/// [`SPLIT_SUFFIXES`] (docs/FORMAT.md section 7).
pub fn weight_tensors(weight: &str, w: &CodedWeight) -> Vec<NamedTensor> {
    match w {
        CodedWeight::Whole(enc) => matrix_tensors(weight, enc),
        CodedWeight::Split { matrix, shape } => {
            let mut t = matrix_tensors(weight, matrix.high());
            let order = match matrix.order() {
                SplitOrder::RowPairs => 1,
                _ => 0,
            };
            let mut desc = vec![
                SPLIT_MAGIC,
                SPLIT_DESCRIPTOR_VERSION,
                matrix.bits(),
                matrix.low_bits(),
                order,
                matrix.low_crc(),
                0,
                shape.len() as u32,
            ];
            if let Some(start) = matrix.window() {
                desc[1] = WINDOW_DESCRIPTOR_VERSION;
                desc.push(1 + u32::from(start));
            }
            desc.extend_from_slice(shape);
            desc[SPLIT_DESCRIPTOR_CRC] = split_descriptor_crc(&desc);
            t.push((
                format!("{weight}{}", SPLIT_SUFFIXES[0]),
                TensorData::from_u32(vec![desc.len()], &desc),
            ));
            t.push((
                format!("{weight}{}", SPLIT_SUFFIXES[1]),
                TensorData::from_u32(vec![matrix.low().len()], matrix.low()),
            ));
            t
        }
    }
}

/// The six stored tensors of a coded weight called `weight` (e.g. `model.layers.0.q.weight`).
pub fn matrix_tensors(weight: &str, enc: &EncodedMatrix) -> Vec<NamedTensor> {
    let a = enc.alphabet_size();
    vec![
        (
            format!("{weight}.ecq_header"),
            TensorData::from_u32(vec![enc.header().len()], &enc.header()),
        ),
        (
            format!("{weight}.ecq_freqs"),
            TensorData::from_u16(vec![enc.n_tiles(), a], enc.freqs()),
        ),
        (
            format!("{weight}.ecq_states"),
            TensorData::from_u32(vec![enc.n_chunks(), crate::rans::LANES], enc.states()),
        ),
        (
            format!("{weight}.ecq_offsets"),
            TensorData::from_u32(vec![enc.offsets().len()], enc.offsets()),
        ),
        (
            format!("{weight}.ecq_words"),
            TensorData::from_u16(vec![enc.words().len()], enc.words()),
        ),
        (
            format!("{weight}.ecq_crc"),
            TensorData::from_u32(vec![enc.crc().len()], enc.crc()),
        ),
    ]
}

/// Names of the coded weights of a model (`<p>.weight` for every `<p>.weight.ecq_header`), in
/// tensor order.
pub fn coded_weights(model: &Model) -> Vec<String> {
    model
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".ecq_header").map(str::to_string))
        .collect()
}

/// Loads the coded matrix stored for a whole `weight` (`<p>.weight`), validating the header
/// against every part's size (checksums are verified when decoding). A split weight is an
/// error here (its six parts hold only the coded high bits): [`load_weight`] loads either.
pub fn load_matrix(model: &Model, weight: &str) -> Result<EncodedMatrix> {
    match load_weight(model, weight)? {
        CodedWeight::Whole(enc) => Ok(enc),
        CodedWeight::Split { .. } => Err(ContainerError::Inconsistent {
            tensor: format!("{weight}{}", SPLIT_SUFFIXES[0]),
            reason: "the weight is stored split (coded high bits, raw low bits): load it with \
                     load_weight"
                .into(),
        }),
    }
}

fn stored_part<'a>(
    model: &'a Model,
    weight: &str,
    suffix: &str,
    dtype: Dtype,
) -> Result<&'a TensorData> {
    let name = format!("{weight}{suffix}");
    let t = model
        .get(&name)
        .ok_or_else(|| ContainerError::MissingPart {
            tensor: name.clone(),
            weight: weight.to_string(),
        })?;
    if t.dtype() != dtype {
        return Err(ContainerError::BadPart {
            tensor: name,
            reason: format!("dtype {:?}, expected {dtype:?}", t.dtype()),
        });
    }
    Ok(t)
}

/// Loads the coded weight stored for `weight` (`<p>.weight`), whole or split, validating every
/// header and descriptor against the parts' sizes (checksums are verified when decoding).
pub fn load_weight(model: &Model, weight: &str) -> Result<CodedWeight> {
    let u32s = |suffix: &str| {
        stored_part(model, weight, suffix, Dtype::U32).map(|t| t.to_u32().expect("U32"))
    };
    let u16s = |suffix: &str| {
        stored_part(model, weight, suffix, Dtype::U16).map(|t| t.to_u16().expect("U16"))
    };
    let header = u32s(PART_SUFFIXES[0])?;
    let enc = EncodedMatrix::from_parts(
        &header,
        u16s(PART_SUFFIXES[1])?,
        u32s(PART_SUFFIXES[2])?,
        u32s(PART_SUFFIXES[3])?,
        u16s(PART_SUFFIXES[4])?,
        u32s(PART_SUFFIXES[5])?,
    )
    .map_err(codec(weight))?;
    let split_name = format!("{weight}{}", SPLIT_SUFFIXES[0]);
    if model.get(&split_name).is_none() {
        return Ok(CodedWeight::Whole(enc));
    }
    let d = parse_split_descriptor(weight, &u32s(SPLIT_SUFFIXES[0])?, enc.bits())?;
    let (low_bits, low_crc, order) = (d.low_bits, d.low_crc, d.order);
    let low = u32s(SPLIT_SUFFIXES[1])?;
    let matrix = match d.window {
        Some(start) => SplitMatrix::from_parts_window(enc, low, low_crc, order, start),
        None => SplitMatrix::from_parts_ordered(enc, low, low_bits, low_crc, order),
    }
    .map_err(codec(weight))?;
    check_packed_shape(&split_name, matrix.rows(), matrix.cols(), d.bits, &d.shape)?;
    Ok(CodedWeight::Split {
        matrix,
        shape: d.shape,
    })
}

/// A parsed split descriptor (`<p>.weight.ecq_split`, docs/FORMAT.md section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitDescriptor {
    /// Bits per weight, coded and raw.
    pub bits: u32,
    /// Raw low bits per weight.
    pub low_bits: u32,
    /// Order of the coded symbols.
    pub order: SplitOrder,
    /// CRC-32C of the raw low bits' little-endian bytes.
    pub low_crc: u32,
    /// The window start of a window split (descriptor version 2, form `1 + start`).
    pub window: Option<u8>,
    /// The MLX packed shape of the weight.
    pub shape: Vec<u32>,
}

/// Words of `matrix`'s split descriptor before the packed shape: [`SPLIT_DESCRIPTOR_FIXED`],
/// and the form word of a window split.
fn split_descriptor_fixed(matrix: &SplitMatrix) -> usize {
    SPLIT_DESCRIPTOR_FIXED + matrix.window().is_some() as usize
}

/// Parses the split descriptor `d` of `weight`, whose coded part holds `coded_bits` bits per
/// weight.
pub(crate) fn parse_split_descriptor(
    weight: &str,
    d: &[u32],
    coded_bits: u32,
) -> Result<SplitDescriptor> {
    let bad = |reason: String| ContainerError::BadPart {
        tensor: format!("{weight}{}", SPLIT_SUFFIXES[0]),
        reason,
    };
    if d.len() < SPLIT_DESCRIPTOR_FIXED || d[0] != SPLIT_MAGIC {
        return Err(bad(format!(
            "not a split descriptor ({} words, need {SPLIT_DESCRIPTOR_FIXED} + ndim starting \
             with the magic {SPLIT_MAGIC:#010x})",
            d.len()
        )));
    }
    if d[1] != SPLIT_DESCRIPTOR_VERSION && d[1] != WINDOW_DESCRIPTOR_VERSION {
        return Err(bad(format!(
            "descriptor version {}, this ecq reads {SPLIT_DESCRIPTOR_VERSION} and \
             {WINDOW_DESCRIPTOR_VERSION}",
            d[1]
        )));
    }
    // version 2: the form word before the shape
    let fixed = SPLIT_DESCRIPTOR_FIXED + (d[1] == WINDOW_DESCRIPTOR_VERSION) as usize;
    if d.len() < fixed {
        return Err(bad(format!(
            "{} words, a version {} descriptor has at least {fixed}",
            d.len(),
            d[1]
        )));
    }
    let computed = split_descriptor_crc(d);
    if computed != d[SPLIT_DESCRIPTOR_CRC] {
        return Err(bad(format!(
            "descriptor checksum mismatch (stored {:#010x}, computed {computed:#010x})",
            d[SPLIT_DESCRIPTOR_CRC]
        )));
    }
    let (bits, low_bits, order, low_crc, ndim) = (d[2], d[3], d[4], d[5], d[7] as usize);
    if d.len() != fixed.saturating_add(ndim) {
        return Err(bad(format!(
            "{} words, the descriptor's ndim {ndim} implies {}",
            d.len(),
            fixed.saturating_add(ndim)
        )));
    }
    let window = match (fixed > SPLIT_DESCRIPTOR_FIXED).then(|| d[SPLIT_DESCRIPTOR_FIXED]) {
        None => None,
        Some(f @ 1..=16) if bits == 4 && low_bits == 3 => Some((f - 1) as u8),
        Some(f) => {
            return Err(bad(format!(
                "form {f} with {bits} bits and {low_bits} raw bits: a window split has form \
                 1 + start (1..=16), 4 bits and 3 raw bits"
            )))
        }
    };
    if low_bits == 0 || low_bits >= bits || Some(bits) != coded_bits.checked_add(low_bits) {
        return Err(bad(format!(
            "{bits} bits with {low_bits} raw low bits, the coded part holds {coded_bits} bits"
        )));
    }
    let order = match order {
        0 => SplitOrder::Rows,
        1 => SplitOrder::RowPairs,
        o => {
            return Err(bad(format!(
                "order {o}, expected 0 (rows) or 1 (row pairs)"
            )))
        }
    };
    Ok(SplitDescriptor {
        bits,
        low_bits,
        order,
        low_crc,
        window,
        shape: d[fixed..].to_vec(),
    })
}

/// Decodes a whole coded weight back to its packed U32 tensor (original shape), verifying
/// checksums.
pub fn decode_matrix(weight: &str, enc: &EncodedMatrix) -> Result<TensorData> {
    let packed = enc.decode_packed().map_err(codec(weight))?;
    packed_tensor(weight, enc.shape(), packed)
}

/// Decodes a coded weight, whole or split, back to its packed U32 tensor (original shape),
/// verifying checksums.
pub fn decode_weight(weight: &str, w: &CodedWeight) -> Result<TensorData> {
    let packed = w.decode_packed().map_err(codec(weight))?;
    packed_tensor(weight, w.shape(), packed)
}

fn packed_tensor(weight: &str, shape: &[u32], packed: Vec<u32>) -> Result<TensorData> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    if shape.iter().product::<usize>() != packed.len() {
        return Err(ContainerError::Inconsistent {
            tensor: weight.to_string(),
            reason: format!(
                "header shape {shape:?} does not hold {} packed words",
                packed.len()
            ),
        });
    }
    Ok(TensorData::from_u32(shape, &packed))
}

/// Sizes of one coded matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSummary {
    /// The coded weight (`<p>.weight`).
    pub weight: String,
    /// Weights.
    pub weights: u64,
    /// Bits per weight.
    pub bits: u32,
    /// Bytes of the packed MLX weight.
    pub packed_bytes: u64,
    /// Bytes of the six coded tensors.
    pub coded_bytes: u64,
    /// Bytes of the word stream alone.
    pub payload_bytes: u64,
    /// Per-tile entropy bound of the coded symbols, in bits.
    pub entropy_bound_bits: f64,
    /// Bytes of the module's scales and biases.
    pub side_bytes: u64,
    /// Raw low bits per weight of a split matrix (0: coded whole).
    pub low_bits: u32,
    /// The window start of a window split ([`SplitMatrix::encode_window`]).
    pub window: Option<u8>,
    /// Chunks of the coded symbols: the independent rANS decoders a GPU runs in parallel (a
    /// GPU with more 32-lane subgroups than this leaves some idle; BENCHMARKS.md issue 5,
    /// step 57).
    pub chunks: usize,
}

/// What [`encode_model`], [`decode_model`] and [`verify_model`] report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// One entry per coded matrix.
    pub matrices: Vec<MatrixSummary>,
    /// Total bytes of the input's safetensors files.
    pub bytes_in: u64,
    /// Total bytes of the output's safetensors files (0 for `verify`).
    pub bytes_out: u64,
}

impl Summary {
    fn sum<F: Fn(&MatrixSummary) -> f64>(&self, f: F) -> f64 {
        self.matrices.iter().map(f).sum()
    }
    /// Weights of every coded matrix.
    pub fn weights(&self) -> u64 {
        self.matrices.iter().map(|m| m.weights).sum()
    }
    fn per_weight(&self, bits: f64) -> f64 {
        let w = self.weights();
        if w == 0 {
            0.0
        } else {
            bits / w as f64
        }
    }
    /// Packed MLX bits per weight (e.g. 4.0).
    pub fn packed_bits_per_weight(&self) -> f64 {
        self.per_weight(self.sum(|m| m.packed_bytes as f64 * 8.0))
    }
    /// Coded bits per weight, everything stored included (header, tables, states, offsets,
    /// checksums).
    pub fn coded_bits_per_weight(&self) -> f64 {
        self.per_weight(self.sum(|m| m.coded_bytes as f64 * 8.0))
    }
    /// Word-stream bits per weight.
    pub fn payload_bits_per_weight(&self) -> f64 {
        self.per_weight(self.sum(|m| m.payload_bytes as f64 * 8.0))
    }
    /// Per-tile entropy bound, bits per weight.
    pub fn entropy_bits_per_weight(&self) -> f64 {
        self.per_weight(self.sum(|m| m.entropy_bound_bits))
    }
    /// Scales and biases, bits per weight.
    pub fn side_bits_per_weight(&self) -> f64 {
        self.per_weight(self.sum(|m| m.side_bytes as f64 * 8.0))
    }
}

fn summarize(weight: &str, enc: &CodedWeight, model: &Model) -> Result<MatrixSummary> {
    let path = weight.strip_suffix(".weight").unwrap_or(weight);
    let side = [format!("{path}.scales"), format!("{path}.biases")]
        .iter()
        .filter_map(|n| model.get(n))
        .map(|t| t.bytes().len() as u64)
        .sum();
    Ok(MatrixSummary {
        weight: weight.to_string(),
        weights: enc.weights() as u64,
        bits: enc.bits(),
        packed_bytes: (enc.weights() * enc.bits() as usize / 8) as u64,
        coded_bytes: enc.total_bytes() as u64,
        payload_bytes: enc.payload_bytes() as u64,
        entropy_bound_bits: enc.entropy_bound_bits().map_err(codec(weight))?,
        side_bytes: side,
        low_bits: enc.split().map_or(0, SplitMatrix::low_bits),
        window: enc.split().and_then(SplitMatrix::window),
        chunks: enc.coded().n_chunks(),
    })
}

/// Tensor indices of each shard, in file order.
pub(crate) fn shard_groups(model: &Model) -> Vec<Vec<usize>> {
    let mut g = vec![Vec::new(); model.shards.len()];
    for (i, t) in model.tensors.iter().enumerate() {
        g[t.shard].push(i);
    }
    g
}

pub(crate) fn without_ecq_keys(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with("ecq."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn write_output(
    model: &Model,
    out: &Path,
    shards: Vec<(String, Vec<NamedTensor>, BTreeMap<String, String>)>,
) -> Result<u64> {
    if model.is_dir {
        // Shards keep their names; metadata is the same in every shard of an mlx-lm model, but
        // each is written with its own.
        std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let mut all = Vec::new();
        for (name, tensors, meta) in shards {
            write_safetensors(&out.join(&name), &tensors, &meta)?;
            all.push((name, tensors));
        }
        // Rewrites the index (the tensors are already on disk; write_shards would rewrite them).
        write_index_only(out, &all)?;
        copy_extra_files(model, out)?;
    } else {
        let (_, tensors, meta) = shards
            .into_iter()
            .next()
            .expect("a single file has one shard");
        write_safetensors(out, &tensors, &meta)?;
    }
    let reopened = Model::open(out)?;
    Ok(reopened.file_bytes())
}

fn write_index_only(dir: &Path, shards: &[(String, Vec<NamedTensor>)]) -> Result<()> {
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (file, tensors) in shards {
        for (name, t) in tensors {
            weight_map.insert(name.clone(), file.clone());
            total += t.bytes().len() as u64;
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json_atomic(&dir.join(crate::model::INDEX_FILE), &index)?;
    Ok(())
}

/// Entropy-codes every MLX-quantized weight of `model` and writes the coded model to `out` (a
/// directory for a directory input, else a single file). Shards are processed one at a time,
/// their matrices in parallel; `progress` advances once per matrix. Every matrix is coded
/// whole ([`encode_model_with`] chooses).
pub fn encode_model(
    model: &Model,
    out: &Path,
    opts: &EncodeOptions,
    progress: &ProgressBar,
) -> Result<Summary> {
    encode_model_with(model, out, opts, MatrixCoding::Whole, progress)
}

/// [`encode_model`] with each matrix coded as `coding` asks. The files declare container
/// version 2 ([`SPLIT_CONTAINER_VERSION`]) if a matrix was split, else 1.
pub fn encode_model_with(
    model: &Model,
    out: &Path,
    opts: &EncodeOptions,
    coding: MatrixCoding,
    progress: &ProgressBar,
) -> Result<Summary> {
    if let Some(w) = coded_weights(model).first() {
        return Err(ContainerError::AlreadyCoded {
            tensor: format!("{w}.ecq_header"),
        });
    }
    let modules = model.quantized_modules()?;
    if modules.is_empty() {
        return Err(ContainerError::NothingToEncode {
            path: model.path.clone(),
        });
    }
    progress.set_length(modules.len() as u64);
    let by_weight: BTreeMap<String, &QuantizedModule> = modules
        .iter()
        .map(|m| (format!("{}.weight", m.path), m))
        .collect();
    let split_any = modules
        .iter()
        .any(|m| split_order(coding, m.rows, m.cols, m.bits).is_some());
    let version = if split_any {
        SPLIT_CONTAINER_VERSION
    } else {
        CONTAINER_VERSION
    };
    let mut meta_add = coded_metadata(opts);
    meta_add.insert("ecq.version".into(), version.to_string());
    let split_meta = match coding {
        MatrixCoding::Split4 { row_pairs: false } => Some("4=2+2"),
        MatrixCoding::Split4 { row_pairs: true } => Some("4=2+2,row-pairs"),
        MatrixCoding::Window4 { row_pairs: false } => Some("4=window1+3"),
        MatrixCoding::Window4 { row_pairs: true } => Some("4=window1+3,row-pairs"),
        MatrixCoding::Whole => None,
    };
    if let Some(v) = split_meta {
        meta_add.insert("ecq.split".into(), v.into());
    }
    let mut summary = Summary {
        bytes_in: model.file_bytes(),
        ..Summary::default()
    };
    let mut shards = Vec::new();
    for (s, idx) in shard_groups(model).into_iter().enumerate() {
        let coded: Vec<(usize, Option<(CodedWeight, MatrixSummary)>)> = idx
            .par_iter()
            .map(|&i| {
                let t = &model.tensors[i];
                match by_weight.get(&t.name) {
                    Some(m) => {
                        let enc = encode_module_with(m, opts, coding)?;
                        let sum = summarize(&t.name, &enc, model)?;
                        progress.inc(1);
                        Ok((i, Some((enc, sum))))
                    }
                    None => Ok((i, None)),
                }
            })
            .collect::<Result<_>>()?;
        let mut tensors = Vec::new();
        for (i, c) in coded {
            let t = &model.tensors[i];
            match c {
                Some((enc, sum)) => {
                    tensors.extend(weight_tensors(&t.name, &enc));
                    summary.matrices.push(sum);
                }
                None => tensors.push((t.name.clone(), t.data.clone())),
            }
        }
        let mut meta = model.shards[s].metadata.clone();
        meta.extend(meta_add.clone());
        shards.push((model.shards[s].file_name.clone(), tensors, meta));
    }
    summary.bytes_out = write_output(model, out, shards)?;
    if model.is_dir {
        let mut config = model.config.clone().unwrap_or_else(|| json!({}));
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "ecq".into(),
                json!({"format": FORMAT_NAME, "version": version}),
            );
        }
        write_json_atomic(&out.join(CONFIG_FILE), &config)?;
    }
    Ok(summary)
}

/// Checks that a model is entropy-coded: it has coded tensors, and every shard that declares
/// `ecq.format` / `ecq.version` declares this format and a version this ecq reads (1, or 2
/// where split matrices may occur; a file declaring 1 with a split matrix is refused). Returns
/// the coded weights.
pub fn check_coded(model: &Model) -> Result<Vec<String>> {
    let coded = coded_weights(model);
    let mut declared = false;
    for s in &model.shards {
        for (key, accepted, expected) in [
            (
                "ecq.format",
                vec![FORMAT_NAME.to_string()],
                FORMAT_NAME.to_string(),
            ),
            (
                "ecq.version",
                vec![
                    CONTAINER_VERSION.to_string(),
                    SPLIT_CONTAINER_VERSION.to_string(),
                ],
                format!("{CONTAINER_VERSION} or {SPLIT_CONTAINER_VERSION}"),
            ),
        ] {
            if let Some(v) = s.metadata.get(key) {
                declared = true;
                if !accepted.contains(v) {
                    return Err(ContainerError::UnsupportedVersion {
                        file: s.file_name.clone(),
                        key: key.into(),
                        value: v.clone(),
                        expected,
                    });
                }
            }
        }
    }
    if coded.is_empty() && !declared {
        return Err(ContainerError::NotCoded {
            path: model.path.clone(),
        });
    }
    let v1 = CONTAINER_VERSION.to_string();
    for t in &model.tensors {
        if t.name.ends_with(SPLIT_SUFFIXES[0])
            && model.shards[t.shard].metadata.get("ecq.version") == Some(&v1)
        {
            return Err(ContainerError::Inconsistent {
                tensor: t.name.clone(),
                reason: format!(
                    "a split matrix in a file of container version {CONTAINER_VERSION} (split \
                     matrices need version {SPLIT_CONTAINER_VERSION})"
                ),
            });
        }
    }
    Ok(coded)
}

/// Checks a decoded module against its scales and biases (when present): rows and the number of
/// groups per row must agree with the header.
fn check_side(model: &Model, weight: &str, enc: &CodedWeight) -> Result<()> {
    let path = weight.strip_suffix(".weight").unwrap_or(weight);
    let g = enc.group_size() as usize;
    if g == 0 {
        return Ok(());
    }
    let shape = enc.shape();
    let expected: Vec<usize> = shape[..shape.len() - 1]
        .iter()
        .map(|&d| d as usize)
        .chain([enc.cols() / g])
        .collect();
    for n in [format!("{path}.scales"), format!("{path}.biases")] {
        if let Some(t) = model.get(&n) {
            if t.shape() != expected.as_slice() {
                return Err(ContainerError::Inconsistent {
                    tensor: n,
                    reason: format!(
                        "shape {:?}, the coded weight's header implies {expected:?}",
                        t.shape()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Decodes every coded weight of `model` and writes the original MLX model to `out` (a directory
/// for a directory input, else a file): every tensor byte for byte as it was encoded, ecq
/// metadata and the `ecq` config entry removed.
pub fn decode_model(model: &Model, out: &Path, progress: &ProgressBar) -> Result<Summary> {
    let coded = check_coded(model)?;
    progress.set_length(coded.len() as u64);
    let coded_set: HashSet<&str> = coded.iter().map(String::as_str).collect();
    let mut summary = Summary {
        bytes_in: model.file_bytes(),
        ..Summary::default()
    };
    let mut shards = Vec::new();
    for (s, idx) in shard_groups(model).into_iter().enumerate() {
        let items: Vec<Option<(String, TensorData, MatrixSummary)>> = idx
            .par_iter()
            .map(|&i| {
                let name = &model.tensors[i].name;
                let Some(weight) = name.strip_suffix(".ecq_header") else {
                    return Ok(None);
                };
                let enc = load_weight(model, weight)?;
                let data = decode_weight(weight, &enc)?;
                let sum = summarize(weight, &enc, model)?;
                progress.inc(1);
                Ok(Some((weight.to_string(), data, sum)))
            })
            .collect::<Result<_>>()?;
        let mut decoded = BTreeMap::new();
        for (w, d, sum) in items.into_iter().flatten() {
            summary.matrices.push(sum);
            decoded.insert(w, d);
        }
        let mut tensors = Vec::new();
        for &i in &idx {
            let t = &model.tensors[i];
            if let Some(weight) = t.name.strip_suffix(".ecq_header") {
                tensors.push((weight.to_string(), decoded.remove(weight).expect("decoded")));
            } else if is_part(&t.name, &coded_set) {
                continue;
            } else {
                tensors.push((t.name.clone(), t.data.clone()));
            }
        }
        shards.push((
            model.shards[s].file_name.clone(),
            tensors,
            without_ecq_keys(&model.shards[s].metadata),
        ));
    }
    summary.bytes_out = write_output(model, out, shards)?;
    if model.is_dir {
        if let Some(mut config) = model.config.clone() {
            if let Some(obj) = config.as_object_mut() {
                obj.shift_remove("ecq");
            }
            write_json_atomic(&out.join(CONFIG_FILE), &config)?;
        }
    }
    Ok(summary)
}

fn is_part(name: &str, coded: &HashSet<&str>) -> bool {
    PART_SUFFIXES
        .iter()
        .chain(&SPLIT_SUFFIXES)
        .any(|s| name.strip_suffix(s).is_some_and(|w| coded.contains(w)))
}

/// Decodes every coded weight of `model` in full, verifying every tile checksum, the end-of-chunk
/// state conditions of the stream, and the scales/biases shapes against each header.
pub fn verify_model(model: &Model, progress: &ProgressBar) -> Result<Summary> {
    let coded = check_coded(model)?;
    progress.set_length(coded.len() as u64);
    let matrices = coded
        .par_iter()
        .map(|w| {
            let enc = load_weight(model, w)?;
            enc.verify_checksums().map_err(codec(w))?;
            decode_weight(w, &enc)?;
            check_side(model, w, &enc)?;
            let s = summarize(w, &enc, model)?;
            progress.inc(1);
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Summary {
        matrices,
        bytes_in: model.file_bytes(),
        bytes_out: 0,
    })
}

/// One coded module of a [`CodedModel`]: the coded weight with its scales, biases and optional
/// layer bias.
#[derive(Debug)]
pub struct CodedModule {
    /// Module path (`<p>`).
    pub path: String,
    /// The coded weight, whole or split (headers validated; checksums are verified when
    /// decoding).
    pub matrix: CodedWeight,
    /// `<p>.scales`, if present.
    pub scales: Option<TensorData>,
    /// `<p>.biases`, if present.
    pub biases: Option<TensorData>,
    /// `<p>.bias` (the layer's additive bias), if present.
    pub bias: Option<TensorData>,
}

/// An entropy-coded model opened for use (e.g. by the GPU path).
///
/// ```no_run
/// let m = ecq::container::CodedModel::open("coded-model-dir")?;
/// for path in m.module_paths() {
///     let module = m.module(&path)?;
///     println!("{path}: {} x {}", module.matrix.rows(), module.matrix.cols());
/// }
/// # Ok::<(), ecq::container::ContainerError>(())
/// ```
#[derive(Debug)]
pub struct CodedModel {
    /// The underlying safetensors model (memory-mapped).
    pub model: Model,
    weights: Vec<String>,
}

impl CodedModel {
    /// Opens a coded safetensors file or directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let model = Model::open(path)?;
        let weights = check_coded(&model)?;
        Ok(CodedModel { model, weights })
    }

    /// Paths of the coded modules (`<p>` of every coded `<p>.weight`), in file order.
    pub fn module_paths(&self) -> Vec<String> {
        self.weights
            .iter()
            .map(|w| w.strip_suffix(".weight").unwrap_or(w).to_string())
            .collect()
    }

    /// The coded module at `path`.
    pub fn module(&self, path: &str) -> Result<CodedModule> {
        let weight = format!("{path}.weight");
        let matrix = load_weight(&self.model, &weight)?;
        check_side(&self.model, &weight, &matrix)?;
        let get = |s: &str| self.model.get(&format!("{path}.{s}")).cloned();
        Ok(CodedModule {
            path: path.to_string(),
            matrix,
            scales: get("scales"),
            biases: get("biases"),
            bias: get("bias"),
        })
    }

    /// A tensor stored unchanged (norms, embeddings left float, ...).
    pub fn tensor(&self, name: &str) -> Option<&TensorData> {
        self.model.get(name)
    }
}
