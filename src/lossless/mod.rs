//! Lossless 16-bit weights: entropy-coded bf16/f16 matrices (docs/FORMAT.md, "Lossless 16-bit
//! weights").
//!
//! Every 16-bit weight `h` is split into two bytes:
//!
//! * the **symbol** `(h >> 7) & 0xFF`: the bf16 exponent (for f16: the 5 exponent bits and the 3
//!   top mantissa bits), coded with the rANS codec of [`crate::rans`] as a `rows x cols` matrix
//!   of `u8` symbols (`bits = 8`, `w = 1`, per-tile tables);
//! * the **raw byte** `((h >> 8) & 0x80) | (h & 0x7F)`: sign and the 7 low mantissa bits, stored
//!   uncoded in row-major order (32 consecutive lanes of a decode step read 32 consecutive bytes).
//!
//! The same two bit operations serve bf16 and f16, and [`join`] restores `h` exactly, so every
//! bit pattern (NaN payloads, infinities, subnormals, both zeros) round-trips.
//!
//! ```
//! use ecq::lossless::{encode, HalfType};
//! use ecq::rans::EncodeOptions;
//!
//! let w: Vec<u16> = (0..64 * 32).map(|i| half::bf16::from_f32((i as f32).sin() * 0.02).to_bits()).collect();
//! let m = encode(&w, 64, 32, HalfType::BF16, &EncodeOptions::default())?;
//! assert_eq!(m.decode()?, w);
//! assert!(m.bits_per_weight() < 16.0);
//! # Ok::<(), ecq::lossless::LosslessError>(())
//! ```

pub mod container;
pub mod gpu;
pub mod indexed;

use crate::model::{Dtype, TensorData};
use crate::rans::{self, CodecError, EncodeOptions, EncodedMatrix};

/// Magic of the `ecq16_meta` tensor: the bytes `E C Q L`.
pub const META_MAGIC: u32 = 0x4C51_4345;
/// Version of the lossless 16-bit layout.
pub const META_VERSION: u32 = 1;
/// Number of `u32` words in the `ecq16_meta` tensor.
pub const META_LEN: usize = 7;
/// Suffixes of the tensors that replace one coded 16-bit weight `<name>`.
pub const PART_SUFFIXES: [&str; 8] = [
    ".ecq16_meta",
    ".ecq16_header",
    ".ecq16_freqs",
    ".ecq16_states",
    ".ecq16_offsets",
    ".ecq16_words",
    ".ecq16_crc",
    ".ecq16_raw",
];

/// Errors of the lossless 16-bit codec. Messages name the tensor where one is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LosslessError {
    /// A caller-supplied argument is invalid (shape, length, dtype).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The exponent stream's codec failed (bad header, corrupt stream, checksum mismatch...).
    #[error("{tensor}: exponent stream: {source}")]
    Codec {
        /// The coded weight.
        tensor: String,
        /// The codec's error (names tile, chunk and offset).
        source: CodecError,
    },
    /// A stored part is missing, has the wrong dtype/shape, or disagrees with the others.
    #[error("{tensor}: {reason}")]
    BadPart {
        /// The tensor concerned.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The raw sign+mantissa stream does not match its CRC-32C.
    #[error("{tensor}: raw sign+mantissa stream checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    RawChecksum {
        /// The coded weight.
        tensor: String,
        /// Stored CRC-32C.
        stored: u32,
        /// Computed CRC-32C.
        computed: u32,
    },
    /// Reading or writing a model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Writing the output model failed.
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    /// A GPU error.
    #[error("gpu: {0}")]
    Gpu(String),
}

/// Shorthand for results of this module.
pub type Result<T, E = LosslessError> = std::result::Result<T, E>;

/// The 16-bit float format of a coded matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HalfType {
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
    BF16,
    /// IEEE half: 1 sign, 5 exponent, 10 mantissa bits.
    F16,
}

impl HalfType {
    /// The code stored in `ecq16_meta[2]`: 1 = bf16, 2 = f16.
    pub const fn code(self) -> u32 {
        match self {
            HalfType::BF16 => 1,
            HalfType::F16 => 2,
        }
    }

    /// The type of a meta code.
    pub fn from_code(c: u32) -> Option<Self> {
        match c {
            1 => Some(HalfType::BF16),
            2 => Some(HalfType::F16),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub const fn dtype(self) -> Dtype {
        match self {
            HalfType::BF16 => Dtype::BF16,
            HalfType::F16 => Dtype::F16,
        }
    }

    /// The value of bit pattern `h` as f32 (exact).
    pub fn to_f32(self, h: u16) -> f32 {
        match self {
            HalfType::BF16 => f32::from_bits(u32::from(h) << 16),
            HalfType::F16 => half::f16::from_bits(h).to_f32(),
        }
    }
}

/// Where the coded 16-bit values came from (stored in `ecq16_meta[3]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The tensor was stored in the coded 16-bit type: decoding restores its bytes.
    Same,
    /// The tensor was f32 and was converted to bf16 with [`f32_to_bf16`]: decoding gives that
    /// bf16 tensor, not the f32 one.
    F32,
}

impl Source {
    /// Code in `ecq16_meta[3]`: 0 = same type, 1 = converted from f32.
    pub const fn code(self) -> u32 {
        match self {
            Source::Same => 0,
            Source::F32 => 1,
        }
    }
}

/// The coded symbol (exponent byte) of a 16-bit pattern.
#[inline]
pub const fn symbol(h: u16) -> u8 {
    (h >> 7) as u8
}

/// The raw byte (sign bit 7, 7 low mantissa bits) of a 16-bit pattern.
#[inline]
pub const fn raw_byte(h: u16) -> u8 {
    (((h >> 8) & 0x80) | (h & 0x7F)) as u8
}

/// Reassembles a 16-bit pattern from its symbol and raw byte.
#[inline]
pub const fn join(sym: u8, raw: u8) -> u16 {
    (((raw as u16) & 0x80) << 8) | ((sym as u16) << 7) | ((raw as u16) & 0x7F)
}

/// f32 -> bf16 exactly as `torch.Tensor.bfloat16()` (c10 `round_to_nearest_even`): round to
/// nearest, ties to even; every NaN becomes the canonical quiet NaN `0x7FC0`; overflow rounds to
/// infinity.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let u = x.to_bits();
    let bias = 0x7FFF + ((u >> 16) & 1);
    (u.wrapping_add(bias) >> 16) as u16
}

/// What the f32 -> bf16 conversion changed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConversionReport {
    /// Number of values converted.
    pub values: u64,
    /// Values whose bf16 value differs from the f32 one (NaNs count when their bits change).
    pub changed: u64,
    /// Largest `|bf16 - f32| / |f32|` over finite non-zero values (infinities from overflow
    /// excluded and counted in `overflows`).
    pub max_rel_error: f64,
    /// Finite f32 values that became infinite.
    pub overflows: u64,
}

impl ConversionReport {
    /// Merges another report into this one.
    pub fn merge(&mut self, o: &ConversionReport) {
        self.values += o.values;
        self.changed += o.changed;
        self.max_rel_error = self.max_rel_error.max(o.max_rel_error);
        self.overflows += o.overflows;
    }
}

/// Converts f32 values to bf16 bit patterns with [`f32_to_bf16`] and reports what changed.
pub fn convert_f32(values: &[f32]) -> (Vec<u16>, ConversionReport) {
    let mut r = ConversionReport {
        values: values.len() as u64,
        ..Default::default()
    };
    let out = values
        .iter()
        .map(|&x| {
            let h = f32_to_bf16(x);
            let y = f32::from_bits(u32::from(h) << 16);
            if y.to_bits() != x.to_bits() {
                r.changed += 1;
                if x.is_finite() && x != 0.0 {
                    if y.is_infinite() {
                        r.overflows += 1;
                    } else {
                        let e = ((f64::from(y) - f64::from(x)) / f64::from(x)).abs();
                        r.max_rel_error = r.max_rel_error.max(e);
                    }
                }
            }
            h
        })
        .collect();
    (out, r)
}

/// Empirical entropy of the symbol (exponent byte) in bits per value (0 for no values).
pub fn exponent_entropy(values: &[u16]) -> f64 {
    let mut counts = [0u64; 256];
    for &h in values {
        counts[symbol(h) as usize] += 1;
    }
    rans::entropy_bits(&counts) / values.len().max(1) as f64
}

/// One coded 16-bit matrix: the exponent symbols as an rANS [`EncodedMatrix`] plus the raw
/// sign+mantissa bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LosslessMatrix {
    half: HalfType,
    source: Source,
    exponents: EncodedMatrix,
    raw: Vec<u8>,
    raw_crc: u32,
}

/// Codes a `rows x cols` matrix of 16-bit patterns (row-major). `opts.weights_per_symbol` is
/// forced to 1 (symbols are whole bytes); `cols` must be a multiple of 4 (the codec stores a
/// packed shape of `cols * 8 / 32` words per row); use `opts.precision <= 11` for the GPU.
pub fn encode(
    values: &[u16],
    rows: usize,
    cols: usize,
    half: HalfType,
    opts: &EncodeOptions,
) -> Result<LosslessMatrix> {
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(LosslessError::InvalidArgument(format!(
            "{} values for a {rows} x {cols} matrix",
            values.len()
        )));
    }
    if !cols.is_multiple_of(4) {
        return Err(LosslessError::InvalidArgument(format!(
            "cols = {cols} must be a multiple of 4"
        )));
    }
    let syms: Vec<u8> = values.iter().map(|&h| symbol(h)).collect();
    let raw: Vec<u8> = values.iter().map(|&h| raw_byte(h)).collect();
    let o = EncodeOptions {
        weights_per_symbol: Some(1),
        ..opts.clone()
    };
    let exponents =
        rans::encode(&syms, rows, cols, 8, &o).map_err(|source| LosslessError::Codec {
            tensor: String::new(),
            source,
        })?;
    let raw_crc = crc32c::crc32c(&raw);
    Ok(LosslessMatrix {
        half,
        source: Source::Same,
        exponents,
        raw,
        raw_crc,
    })
}

/// Converts f32 values to bf16 ([`convert_f32`]) and codes them; returns the conversion report.
pub fn encode_f32(
    values: &[f32],
    rows: usize,
    cols: usize,
    opts: &EncodeOptions,
) -> Result<(LosslessMatrix, ConversionReport)> {
    let (h, r) = convert_f32(values);
    let mut m = encode(&h, rows, cols, HalfType::BF16, opts)?;
    m.source = Source::F32;
    Ok((m, r))
}

impl LosslessMatrix {
    /// The 16-bit float type.
    pub fn half_type(&self) -> HalfType {
        self.half
    }

    /// Where the values came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.exponents.rows()
    }

    /// Columns (weights per row).
    pub fn cols(&self) -> usize {
        self.exponents.cols()
    }

    /// The coded exponent symbols.
    pub fn exponents(&self) -> &EncodedMatrix {
        &self.exponents
    }

    /// The raw sign+mantissa bytes, row-major.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The stored CRC-32C of [`raw`](Self::raw).
    pub fn raw_crc(&self) -> u32 {
        self.raw_crc
    }

    /// Total stored bytes (exponent stream with its side information, raw bytes, meta).
    pub fn total_bytes(&self) -> usize {
        self.exponents.total_bytes() + self.raw.len() + 4 * META_LEN
    }

    /// Stored bits per weight, everything included.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.total_bytes() as f64 / self.exponents.weights().max(1) as f64
    }

    /// Per-tile entropy bound of the exponent stream in bits per weight, plus the 8 raw bits.
    pub fn entropy_bits_per_weight(&self) -> Result<f64> {
        let e = self
            .exponents
            .entropy_bound_bits()
            .map_err(|source| LosslessError::Codec {
                tensor: String::new(),
                source,
            })?;
        Ok(8.0 + e / self.exponents.weights().max(1) as f64)
    }

    /// Verifies the exponent tile checksums and the raw stream's checksum.
    pub fn verify_checksums(&self) -> Result<()> {
        self.exponents
            .verify_checksums()
            .map_err(|source| LosslessError::Codec {
                tensor: String::new(),
                source,
            })?;
        self.check_raw()
    }

    fn check_raw(&self) -> Result<()> {
        let computed = crc32c::crc32c(&self.raw);
        if computed != self.raw_crc {
            return Err(LosslessError::RawChecksum {
                tensor: String::new(),
                stored: self.raw_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Decodes to the 16-bit patterns (row-major), verifying every checksum and the stream's
    /// end conditions.
    pub fn decode(&self) -> Result<Vec<u16>> {
        self.check_raw()?;
        let syms = self
            .exponents
            .decode_symbols()
            .map_err(|source| LosslessError::Codec {
                tensor: String::new(),
                source,
            })?;
        Ok(syms
            .iter()
            .zip(&self.raw)
            .map(|(&s, &r)| join(s, r))
            .collect())
    }

    /// Decodes to the tensor it came from as stored: `[rows, cols]` in the coded 16-bit type.
    pub fn decode_tensor(&self) -> Result<TensorData> {
        let v = self.decode()?;
        Ok(TensorData::new(
            self.half.dtype(),
            vec![self.rows(), self.cols()],
            v.iter().flat_map(|h| h.to_le_bytes()).collect(),
        ))
    }

    /// The `ecq16_meta` words: magic, version, half type, source, rows, cols, raw CRC-32C.
    pub fn meta(&self) -> [u32; META_LEN] {
        [
            META_MAGIC,
            META_VERSION,
            self.half.code(),
            self.source.code(),
            self.rows() as u32,
            self.cols() as u32,
            self.raw_crc,
        ]
    }

    /// The tensors that replace weight `name` in a safetensors file (FORMAT.md, "Lossless
    /// 16-bit weights").
    pub fn to_tensors(&self, name: &str) -> Vec<(String, TensorData)> {
        let mut v = vec![(
            format!("{name}.ecq16_meta"),
            TensorData::from_u32(vec![META_LEN], &self.meta()),
        )];
        for (n, t) in crate::container::matrix_tensors(name, &self.exponents) {
            let n = n.replacen(&format!("{name}.ecq_"), &format!("{name}.ecq16_"), 1);
            v.push((n, t));
        }
        v.push((
            format!("{name}.ecq16_raw"),
            TensorData::new(Dtype::U8, vec![self.rows(), self.cols()], self.raw.clone()),
        ));
        v
    }

    /// Loads weight `name` from its stored tensors (`get` looks a tensor up by name),
    /// validating every part before reading the streams.
    pub fn from_tensors<'a>(
        name: &str,
        get: impl Fn(&str) -> Option<&'a TensorData>,
    ) -> Result<Self> {
        let part = |suffix: &str, dtype: Dtype| -> Result<&'a TensorData> {
            let n = format!("{name}{suffix}");
            let t = get(&n).ok_or_else(|| LosslessError::BadPart {
                tensor: n.clone(),
                reason: format!("missing (part of the lossless 16-bit weight {name})"),
            })?;
            if t.dtype() != dtype || t.shape().is_empty() {
                return Err(LosslessError::BadPart {
                    tensor: n,
                    reason: format!(
                        "dtype {:?} shape {:?}, expected {dtype:?} with rank >= 1",
                        t.dtype(),
                        t.shape()
                    ),
                });
            }
            Ok(t)
        };
        let bad = |suffix: &str, reason: String| LosslessError::BadPart {
            tensor: format!("{name}{suffix}"),
            reason,
        };
        let meta = part(".ecq16_meta", Dtype::U32)?.to_u32().expect("u32");
        if meta.len() != META_LEN || meta[0] != META_MAGIC {
            return Err(bad(".ecq16_meta", format!("bad magic or length: {meta:?}")));
        }
        if meta[1] != META_VERSION {
            return Err(bad(
                ".ecq16_meta",
                format!("version {}, this ecq reads {META_VERSION}", meta[1]),
            ));
        }
        let half = HalfType::from_code(meta[2])
            .ok_or_else(|| bad(".ecq16_meta", format!("unknown type code {}", meta[2])))?;
        let source = match (meta[3], half) {
            (0, _) => Source::Same,
            (1, HalfType::BF16) => Source::F32,
            (c, _) => return Err(bad(".ecq16_meta", format!("bad source code {c}"))),
        };
        let codec = |source| LosslessError::Codec {
            tensor: name.to_string(),
            source,
        };
        let exponents = EncodedMatrix::from_parts(
            &part(".ecq16_header", Dtype::U32)?.to_u32().expect("u32"),
            part(".ecq16_freqs", Dtype::U16)?.to_u16().expect("u16"),
            part(".ecq16_states", Dtype::U32)?.to_u32().expect("u32"),
            part(".ecq16_offsets", Dtype::U32)?.to_u32().expect("u32"),
            part(".ecq16_words", Dtype::U16)?.to_u16().expect("u16"),
            part(".ecq16_crc", Dtype::U32)?.to_u32().expect("u32"),
        )
        .map_err(codec)?;
        if exponents.bits() != 8 || exponents.weights_per_symbol() != 1 {
            return Err(bad(
                ".ecq16_header",
                format!(
                    "bits = {}, w = {}; lossless 16-bit weights need bits = 8, w = 1",
                    exponents.bits(),
                    exponents.weights_per_symbol()
                ),
            ));
        }
        if (exponents.rows(), exponents.cols()) != (meta[4] as usize, meta[5] as usize) {
            return Err(bad(
                ".ecq16_meta",
                format!(
                    "shape {} x {} disagrees with the header's {} x {}",
                    meta[4],
                    meta[5],
                    exponents.rows(),
                    exponents.cols()
                ),
            ));
        }
        let raw_t = part(".ecq16_raw", Dtype::U8)?;
        if raw_t.numel() != exponents.weights() {
            return Err(bad(
                ".ecq16_raw",
                format!(
                    "{} bytes, the header implies {}",
                    raw_t.numel(),
                    exponents.weights()
                ),
            ));
        }
        Ok(LosslessMatrix {
            half,
            source,
            exponents,
            raw: raw_t.bytes().to_vec(),
            raw_crc: meta[6],
        })
    }

    /// Attaches the tensor name to an error of this matrix.
    pub(crate) fn named(e: LosslessError, name: &str) -> LosslessError {
        match e {
            LosslessError::Codec { source, .. } => LosslessError::Codec {
                tensor: name.to_string(),
                source,
            },
            LosslessError::RawChecksum {
                stored, computed, ..
            } => LosslessError::RawChecksum {
                tensor: name.to_string(),
                stored,
                computed,
            },
            e => e,
        }
    }
}
