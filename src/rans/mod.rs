//! CPU reference codec of the ecq coded-matrix format (`docs/FORMAT.md`, version 1).
//!
//! A quantized matrix (one `u8` value per weight, `0 .. 2^bits`, row-major) is cut into chunks
//! of rows; each chunk is coded by 32 interleaved rANS lanes (32-bit states, 16-bit words) with
//! the frequency table of its tile (a run of consecutive chunks). Chunks encode and decode
//! independently and in parallel (rayon).
//!
//! * [`encode`] codes a matrix with [`EncodeOptions`] into an [`EncodedMatrix`].
//! * [`EncodedMatrix::header`] and the part accessors give the tensors of FORMAT.md section 6;
//!   [`EncodedMatrix::from_parts`] validates and loads them.
//! * [`EncodedMatrix::decode_symbols`] returns the quantized values,
//!   [`EncodedMatrix::decode_packed`] the MLX packed `u32` words.
//! * [`SplitMatrix`] codes only the high bits of each weight (four weights per symbol for
//!   4-bit weights split 2 + 2) and stores the low bits raw: fewer rANS steps per weight for
//!   the GPU kernels, at 0.8-2.1% more size on MLX weights. In [`SplitOrder::RowPairs`] its
//!   rows are coded in interleaved pairs, which the GPU's fused kernel multiplies with one load
//!   of the activations for both rows. Its window form ([`SplitMatrix::encode_window`]) codes
//!   one bit per 4-bit weight, eight weights per symbol: the fastest form on the GPU.
//!
//! # Example
//!
//! ```
//! use ecq::rans::{encode, EncodeOptions, EncodedMatrix};
//!
//! // An 8 x 64 matrix of 4-bit values.
//! let q: Vec<u8> = (0..8 * 64).map(|i| ((i * 7) % 13) as u8).collect();
//! let enc = encode(&q, 8, 64, 4, &EncodeOptions::default())?;
//! assert_eq!(enc.decode_symbols()?, q);
//!
//! // Through the stored parts and back.
//! let (header, freqs, states, offsets, words, crc) = enc.clone().into_parts();
//! let back = EncodedMatrix::from_parts(&header, freqs, states, offsets, words, crc)?;
//! assert_eq!(back, enc);
//! assert_eq!(back.decode_packed()?.len(), 8 * 64 * 4 / 32);
//! # Ok::<(), ecq::rans::CodecError>(())
//! ```
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod format;
mod split;
mod table;

use rayon::prelude::*;

pub use error::CodecError;
pub use format::{HEADER_FIXED, MAGIC, MAX_PRECISION, MAX_WEIGHTS, MIN_PRECISION, VERSION};
pub use split::{
    window_raw_words, window_start, SplitMatrix, SplitOrder, ROW_PAIR_RUN_SYMBOLS,
    SPLIT_MIN_CHUNKS, WINDOW_FLAGS_PER_SYMBOL, WINDOW_PAIR_RUN_SYMBOLS,
};

use decode::{decode_chunk, ChunkCtx, L};
use format::Geometry;
use table::{SlotEntry, SlotTable};

/// Number of interleaved rANS lanes per chunk (a format constant, independent of any GPU's
/// subgroup size).
pub const LANES: usize = 32;

/// Largest precision whose decoder slot table (`2^n` packed `u32`) fits in 8 KiB of GPU
/// workgroup memory.
pub const GPU_MAX_PRECISION: u32 = 11;

/// Default probability precision `n` (see [`EncodeOptions::precision`]): the largest the GPU
/// slot table allows; on MiniLM g64 4-bit within 0.04% of n = 12..15 (BENCHMARKS.md, "CPU
/// codec").
pub const DEFAULT_PRECISION: u32 = 11;
/// Default target number of coded symbols per chunk: the smallest chunk whose 128 bytes of lane
/// states keep the side information under 2% of the payload at ~3.7 bits/weight.
pub const DEFAULT_CHUNK_SYMBOLS: usize = 16384;
/// Default number of chunks per tile: per-tile tables barely beat one table per matrix on real
/// weights, so large tiles amortise the tables. 32 rather than 8 (the default until the
/// thirteenth session): on MiniLM g64 4-bit every form's files are 0.010-0.011 bits/weight
/// smaller (whole 3.747 -> 3.737; the per-tile entropy bound moves by 0.001) and the decode
/// tables the GPU's fused GEMV keeps in memory take a quarter of the space (BENCHMARKS.md
/// issue 5, step 68).
pub const DEFAULT_TILE_CHUNKS: usize = 32;
/// Smallest chunk [`EncodeOptions::min_chunks`] shrinks chunks to, in weights (or one row when
/// rows are longer): below it the 128 bytes of lane states per chunk cost more than 0.125
/// bits/weight. (4096 symbols of two 4-bit weights, 2048 of four split 2-bit ones.)
pub const MIN_PARALLEL_CHUNK_WEIGHTS: usize = 8192;

const _: () = assert!(LANES == 32);
const _: () = assert!(DEFAULT_PRECISION <= GPU_MAX_PRECISION);
const _: () = assert!(MIN_PRECISION <= GPU_MAX_PRECISION && MAX_PRECISION <= 15);

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Probability precision `n` (frequencies sum to `2^n`), 8..=15. GPU kernels need
    /// `n <= 11` ([`GPU_MAX_PRECISION`]). Default [`DEFAULT_PRECISION`].
    pub precision: u32,
    /// Weights combined into one coded symbol (1, 2, 4 or 8, with `bits * w <= 8`); `None`
    /// picks the largest of 4, 2, 1 that fits and divides `cols` (8, for 1-bit values, only
    /// when asked: [`SplitMatrix`]'s 1 + 3 split asks for it).
    pub weights_per_symbol: Option<u32>,
    /// Target number of coded symbols per chunk: `chunk_rows = max(1, round(chunk_symbols /
    /// symbols_per_row))`, at most `rows`. Default [`DEFAULT_CHUNK_SYMBOLS`].
    pub chunk_symbols: usize,
    /// Chunks per tile (one frequency table and checksum per tile), at least 1. Default
    /// [`DEFAULT_TILE_CHUNKS`].
    pub tile_chunks: usize,
    /// If not 0, chunks are made smaller than `chunk_symbols` where that is needed for the
    /// matrix to have at least this many chunks (independent decoders), but not smaller than
    /// [`MIN_PARALLEL_CHUNK_WEIGHTS`] weights (or one row); the chunks per tile then grow by
    /// the same factor, so that a tile (one frequency table) keeps the rows it would have had.
    /// A GPU decodes one chunk per 32-lane subgroup, and a matrix with too few chunks leaves it
    /// waiting on the serial rANS chain: on an H200, 4096x4096 4-bit runs 2.8x faster with
    /// 2048 chunks than with the default 512, for +0.1 bits/weight (BENCHMARKS.md, issue 5).
    /// Default 0 (off); [`SplitMatrix::default_options`] sets [`SPLIT_MIN_CHUNKS`].
    pub min_chunks: usize,
    /// MLX group size of the scales and biases, stored in the header for information (0 if
    /// none). Default 0.
    pub group_size: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            precision: DEFAULT_PRECISION,
            weights_per_symbol: None,
            chunk_symbols: DEFAULT_CHUNK_SYMBOLS,
            tile_chunks: DEFAULT_TILE_CHUNKS,
            min_chunks: 0,
            group_size: 0,
        }
    }
}

/// The default weights per symbol for `bits` and `cols`: the largest of 4, 2, 1 with
/// `bits * w <= 8` that divides `cols`.
pub fn default_weights_per_symbol(bits: u32, cols: usize) -> u32 {
    [4u32, 2, 1]
        .into_iter()
        .find(|&w| bits * w <= 8 && cols.is_multiple_of(w as usize))
        .unwrap_or(1)
}

/// The optimal frequency table at precision `n` for symbol counts `counts` (one per symbol of
/// the alphabet): every present symbol gets `f >= 1`, absent ones `f = 0`, the sum is exactly
/// `2^n`, and `sum counts[s] * log2(2^n / f[s])` is minimal (FORMAT.md section 3). This is the
/// table [`encode`] stores for each tile.
///
/// Errors if `n` is outside 8..=15, or more than `2^n` symbols are present.
///
/// ```
/// let f = ecq::rans::optimal_frequencies(&[900, 90, 9, 1, 0], 8)?;
/// assert_eq!(f.iter().map(|&f| u32::from(f)).sum::<u32>(), 256);
/// assert_eq!(f[4], 0);
/// assert!(f[3] >= 1);
/// # Ok::<(), ecq::rans::CodecError>(())
/// ```
pub fn optimal_frequencies(counts: &[u64], precision: u32) -> Result<Vec<u16>, CodecError> {
    if !(MIN_PRECISION..=MAX_PRECISION).contains(&precision) {
        return Err(CodecError::InvalidArgument(format!(
            "precision = {precision}, must be 8..=15"
        )));
    }
    if counts.iter().filter(|&&c| c > 0).count() > 1 << precision {
        return Err(CodecError::InvalidArgument(
            "more symbols present than 2^precision".into(),
        ));
    }
    Ok(table::normalize(counts, precision))
}

/// Empirical entropy in bits of a sample with these symbol counts, `sum c * log2(N / c)`.
pub fn entropy_bits(counts: &[u64]) -> f64 {
    table::entropy_bits(counts)
}

/// The first `n` bytes of `buf`, which is replaced by `n` zeroed bytes where it is shorter (a
/// fresh allocation, whose pages the writers fault in in parallel, rather than a serial
/// `resize`). Callers overwrite every byte.
pub(crate) fn grown(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        *buf = vec![0u8; n];
    }
    &mut buf[..n]
}

/// The index of the first of `symbols` that does not fit in `bits` bits, if any. Blocks are
/// OR-reduced in parallel (that vectorises; rayon's `position_first` over single values took
/// a sixth of a window split's encode), the offender located only if there is one.
pub(crate) fn first_out_of_range(symbols: &[u8], bits: u32) -> Option<usize> {
    if bits >= 8 {
        return None;
    }
    let block = symbols
        .par_chunks(1 << 16)
        .position_first(|b| b.iter().fold(0u8, |a, &v| a | v) >> bits != 0)?;
    let i = symbols[block << 16..]
        .iter()
        .position(|&v| v >> bits != 0)?;
    Some((block << 16) + i)
}

/// Encodes a quantized matrix.
///
/// `symbols` holds `rows * cols` values, row-major, each `< 2^bits` (`bits` in 1..=8).
/// `cols * bits` must be a multiple of 32 (the matrix is an MLX packed tensor), `cols` a
/// multiple of the weights per symbol, and `rows * cols <= MAX_WEIGHTS`. Tiles are encoded in
/// parallel, each with its optimal frequency table (see FORMAT.md section 3).
///
/// # Example
///
/// ```
/// use ecq::rans::{encode, EncodeOptions};
///
/// let q = vec![3u8; 4 * 32]; // a single symbol codes to no words at all
/// let enc = encode(&q, 4, 32, 4, &EncodeOptions::default())?;
/// assert_eq!(enc.words().len(), 0);
/// assert_eq!(enc.decode_symbols()?, q);
/// # Ok::<(), ecq::rans::CodecError>(())
/// ```
pub fn encode(
    symbols: &[u8],
    rows: usize,
    cols: usize,
    bits: u32,
    opts: &EncodeOptions,
) -> Result<EncodedMatrix, CodecError> {
    let arg = |s: String| Err(CodecError::InvalidArgument(s));
    if !(1..=8).contains(&bits) {
        return arg(format!("bits = {bits}, must be 1..=8"));
    }
    let n = rows.checked_mul(cols);
    if n != Some(symbols.len()) {
        return arg(format!(
            "{} symbols given for a {rows} x {cols} matrix",
            symbols.len()
        ));
    }
    if opts.tile_chunks == 0 {
        return arg("tile_chunks must be at least 1".into());
    }
    if let Some(i) = first_out_of_range(symbols, bits) {
        return Err(CodecError::SymbolOutOfRange {
            index: i,
            value: symbols[i],
            bits,
        });
    }
    let wps = opts
        .weights_per_symbol
        .unwrap_or_else(|| default_weights_per_symbol(bits, cols));
    let spr = if wps == 0 { 0 } else { cols / wps as usize };
    let mut chunk_rows = (opts.chunk_symbols + spr / 2)
        .checked_div(spr)
        .map_or(1, |r| r.clamp(1, rows.max(1)));
    let mut tile_chunks = opts.tile_chunks;
    if opts.min_chunks > 0 && spr > 0 {
        let for_count = (rows / opts.min_chunks).max(1);
        let floor = MIN_PARALLEL_CHUNK_WEIGHTS.div_ceil(cols);
        let shrunk = chunk_rows.min(for_count.max(floor));
        // Same speed on an H200 with the larger tiles, 1.2% smaller (BENCHMARKS.md, issue 5).
        tile_chunks = tile_chunks.saturating_mul(chunk_rows) / shrunk;
        chunk_rows = shrunk;
    }
    let g = Geometry::new(
        rows as u64,
        cols as u64,
        bits.into(),
        wps.into(),
        opts.precision.into(),
        chunk_rows as u64,
        tile_chunks.min(u32::MAX as usize) as u64,
    )
    .map_err(|e| match e {
        CodecError::BadHeader {
            field,
            value,
            reason,
        } => CodecError::InvalidArgument(format!("{field} = {value}: {reason}")),
        e => e,
    })?;

    // Coded symbols: w weights per symbol, LSB first.
    let combined;
    let coded: &[u8] = if wps == 1 {
        symbols
    } else {
        let w = wps as usize;
        let mut v = vec![0u8; symbols.len() / w];
        v.par_chunks_mut(1 << 16)
            .zip(symbols.par_chunks(w << 16))
            .for_each(|(o, s)| {
                for (o, s) in o.iter_mut().zip(s.chunks_exact(w)) {
                    let mut sym = 0u32;
                    for (i, &q) in s.iter().enumerate() {
                        sym |= u32::from(q) << (bits as usize * i);
                    }
                    *o = sym as u8;
                }
            });
        combined = v;
        &combined
    };

    let spr = g.syms_per_row;
    let a = g.alphabet;
    struct TileOut {
        freqs: Vec<u16>,
        entropy: f64,
        chunks: Vec<([u32; LANES], Vec<u16>, usize)>,
    }
    let tiles: Vec<TileOut> = (0..g.n_tiles)
        .into_par_iter()
        .map(|t| {
            let cr = g.tile_chunk_range(t);
            let r0 = g.chunk_rows_range(cr.start).start;
            let r1 = g.chunk_rows_range(cr.end - 1).end;
            let tile_syms = &coded[r0 * spr..r1 * spr];
            let hist = table::histogram(tile_syms);
            let counts = &hist[..a];
            let freqs = table::normalize(counts, g.precision);
            let entropy = table::entropy_bits(counts);
            let enc = table::enc_table(&freqs, g.precision);
            let chunks = cr
                .into_par_iter()
                .map(|c| {
                    let rr = g.chunk_rows_range(c);
                    encode::encode_chunk(
                        &coded[rr.start * spr..rr.end * spr],
                        spr,
                        &enc,
                        g.precision,
                    )
                })
                .collect();
            TileOut {
                freqs,
                entropy,
                chunks,
            }
        })
        .collect();

    let (lf, ls, lo, _) = g.part_lens();
    let n_words: usize = tiles
        .iter()
        .flat_map(|t| t.chunks.iter())
        .map(|c| c.1.len() - c.2)
        .sum();
    if n_words > u32::MAX as usize {
        return arg(format!("{n_words} words exceed the u32 offsets"));
    }
    let mut freqs = Vec::with_capacity(lf);
    let mut states = Vec::with_capacity(ls);
    let mut offsets = Vec::with_capacity(lo);
    let mut words = Vec::with_capacity(n_words);
    let mut entropy = 0.0;
    offsets.push(0u32);
    for t in tiles {
        freqs.extend_from_slice(&t.freqs);
        entropy += t.entropy;
        for (s, w, start) in t.chunks {
            states.extend_from_slice(&s);
            words.extend_from_slice(&w[start..]);
            offsets.push(words.len() as u32);
        }
    }
    let mut m = EncodedMatrix {
        geom: g,
        group_size: opts.group_size,
        shape: format::default_shape(&g),
        freqs,
        states,
        offsets,
        words,
        crc: Vec::new(),
        entropy: Some(entropy),
    };
    m.crc = (0..g.n_tiles)
        .into_par_iter()
        .map(|t| m.tile_crc(t))
        .collect();
    Ok(m)
}

/// One entropy-coded matrix: the header fields and the five parts of FORMAT.md section 6.
///
/// Invariant: every field agrees with every other as FORMAT.md requires (checked by
/// [`from_parts`](Self::from_parts), guaranteed by [`encode`]): part lengths match the header,
/// offsets run non-decreasing from 0 to `words.len()`, every frequency table sums to
/// `2^precision`, every state lies in `[2^16, 2^32)`. Fields are private so the invariant
/// cannot be broken; decoding relies on it to never index out of bounds. Checksums and the
/// stream contents are checked while decoding.
///
/// # Example
///
/// ```
/// use ecq::rans::{encode, EncodeOptions};
///
/// let (rows, cols, bits) = (3, 64, 3);
/// let q: Vec<u8> = (0..rows * cols).map(|i| (i % 5) as u8).collect();
/// let enc = encode(&q, rows, cols, bits, &EncodeOptions::default())?;
/// assert_eq!(enc.weights_per_symbol(), 2); // 3 bits: two weights per 6-bit symbol
/// assert_eq!(enc.header()[0], ecq::rans::MAGIC);
/// enc.verify_checksums()?;
/// assert_eq!(enc.decode_symbols()?, q);
/// assert_eq!(enc.decode_packed()?.len(), rows * cols * bits as usize / 32);
/// # Ok::<(), ecq::rans::CodecError>(())
/// ```
#[derive(Clone)]
pub struct EncodedMatrix {
    geom: Geometry,
    group_size: u32,
    shape: Vec<u32>,
    freqs: Vec<u16>,
    states: Vec<u32>,
    offsets: Vec<u32>,
    words: Vec<u16>,
    crc: Vec<u32>,
    entropy: Option<f64>,
}

impl PartialEq for EncodedMatrix {
    /// Equal iff the stored form (header and parts) is equal.
    fn eq(&self, o: &Self) -> bool {
        self.geom == o.geom
            && self.group_size == o.group_size
            && self.shape == o.shape
            && self.freqs == o.freqs
            && self.states == o.states
            && self.offsets == o.offsets
            && self.words == o.words
            && self.crc == o.crc
    }
}

impl std::fmt::Debug for EncodedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedMatrix")
            .field("rows", &self.geom.rows)
            .field("cols", &self.geom.cols)
            .field("bits", &self.geom.bits)
            .field("weights_per_symbol", &self.geom.wps)
            .field("precision", &self.geom.precision)
            .field("chunk_rows", &self.geom.chunk_rows)
            .field("tile_chunks", &self.geom.tile_chunks)
            .field("n_chunks", &self.geom.n_chunks)
            .field("n_tiles", &self.geom.n_tiles)
            .field("shape", &self.shape)
            .field("words", &self.words.len())
            .finish_non_exhaustive()
    }
}

/// Expands `n` coded symbols at the start of `region` in place to `W` weights each (via `lut`),
/// back to front: the expanded position of symbol `i` is `i * W >= i`, and each block of 16
/// symbols is read before its expansion is written, so nothing is overwritten before it is read.
fn expand<const W: usize>(region: &mut [u8], n: usize, lut: &[[u8; 8]; 256]) {
    const B: usize = 16;
    let mut i = n;
    while i >= B {
        i -= B;
        let mut blk = [0u8; B];
        blk.copy_from_slice(&region[i..i + B]);
        let dst = &mut region[i * W..(i + B) * W];
        for (d, &s) in dst.chunks_exact_mut(W).zip(&blk) {
            d.copy_from_slice(&lut[s as usize][..W]);
        }
    }
    while i > 0 {
        i -= 1;
        let s = region[i];
        region[i * W..i * W + W].copy_from_slice(&lut[s as usize][..W]);
    }
}

/// Verifies every tile's CRC-32C (FORMAT.md section 5) over parts given as the little-endian
/// bytes stored in a file, without copying them: for loaders that upload the coded streams
/// straight from a memory map. `offsets` are the `n_chunks + 1` word offsets, `crc` the
/// `n_tiles` stored checksums; every length is checked before anything is read.
///
/// # Errors
///
/// [`CodecError::SizeMismatch`] if a part's length disagrees with the geometry,
/// [`CodecError::BadOffsets`] for offsets that decrease or run past the words,
/// [`CodecError::ChecksumMismatch`] naming the first tile whose checksum differs.
pub fn verify_checksums_le(
    alphabet: usize,
    tile_chunks: usize,
    freqs: &[u8],
    states: &[u8],
    offsets: &[u32],
    words: &[u8],
    crc: &[u32],
) -> Result<(), CodecError> {
    let n_chunks = offsets.len().saturating_sub(1);
    let n_tiles = n_chunks.div_ceil(tile_chunks.max(1));
    let size = |part, expected: usize, actual: usize| {
        if expected == actual {
            Ok(())
        } else {
            Err(CodecError::SizeMismatch {
                part,
                expected: expected as u64,
                actual: actual as u64,
            })
        }
    };
    size("crc", n_tiles, crc.len())?;
    size("freqs", n_tiles * alphabet * 2, freqs.len())?;
    size("states", n_chunks * LANES * 4, states.len())?;
    for (chunk, pair) in offsets.windows(2).enumerate() {
        if pair[1] < pair[0] || pair[1] as usize * 2 > words.len() {
            return Err(CodecError::BadOffsets {
                chunk: chunk + 1,
                offset: pair[1],
                reason: "offsets must not decrease nor run past the words",
            });
        }
    }
    (0..n_tiles).into_par_iter().try_for_each(|t| {
        let (c0, c1) = (t * tile_chunks, ((t + 1) * tile_chunks).min(n_chunks));
        let mut computed = crc32c::crc32c(&freqs[t * alphabet * 2..(t + 1) * alphabet * 2]);
        computed = crc32c::crc32c_append(computed, &states[c0 * LANES * 4..c1 * LANES * 4]);
        let (w0, w1) = (offsets[c0] as usize * 2, offsets[c1] as usize * 2);
        computed = crc32c::crc32c_append(computed, &words[w0..w1]);
        if computed == crc[t] {
            Ok(())
        } else {
            Err(CodecError::ChecksumMismatch {
                tile: t,
                stored: crc[t],
                computed,
            })
        }
    })
}

/// Appends the little-endian bytes of `data` to a running CRC-32C.
fn crc_append<T: bytemuck::Pod + LeBytes>(crc: u32, data: &[T]) -> u32 {
    if cfg!(target_endian = "little") {
        crc32c::crc32c_append(crc, bytemuck::cast_slice(data))
    } else {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.le()).collect();
        crc32c::crc32c_append(crc, &bytes)
    }
}

/// Little-endian byte image of a word (only used on big-endian hosts).
trait LeBytes {
    fn le(&self) -> Vec<u8>;
}
impl LeBytes for u16 {
    fn le(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}
impl LeBytes for u32 {
    fn le(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl EncodedMatrix {
    /// Rows `R`.
    pub fn rows(&self) -> usize {
        self.geom.rows
    }
    /// Columns `K` (weights per row).
    pub fn cols(&self) -> usize {
        self.geom.cols
    }
    /// Bits per weight `b`.
    pub fn bits(&self) -> u32 {
        self.geom.bits
    }
    /// Weights per coded symbol `w`.
    pub fn weights_per_symbol(&self) -> u32 {
        self.geom.wps
    }
    /// Coded symbols per row, `S = K / w`.
    pub fn symbols_per_row(&self) -> usize {
        self.geom.syms_per_row
    }
    /// Alphabet size `A = 2^(b * w)`.
    pub fn alphabet_size(&self) -> usize {
        self.geom.alphabet
    }
    /// Probability precision `n`.
    pub fn precision(&self) -> u32 {
        self.geom.precision
    }
    /// Rows per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.geom.chunk_rows
    }
    /// Chunks per tile.
    pub fn tile_chunks(&self) -> usize {
        self.geom.tile_chunks
    }
    /// Number of chunks.
    pub fn n_chunks(&self) -> usize {
        self.geom.n_chunks
    }
    /// Number of tiles.
    pub fn n_tiles(&self) -> usize {
        self.geom.n_tiles
    }
    /// MLX group size recorded in the header (informational, 0 if none).
    pub fn group_size(&self) -> u32 {
        self.group_size
    }
    /// Sets the informational group size.
    pub fn set_group_size(&mut self, group_size: u32) {
        self.group_size = group_size;
    }
    /// Shape of the original packed tensor (default `[rows, cols * bits / 32]`).
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }
    /// Sets the original packed tensor's shape: 1..=8 dimensions, leading ones multiplying to
    /// `rows`, the last equal to `cols * bits / 32`.
    pub fn set_shape(&mut self, shape: &[u32]) -> Result<(), CodecError> {
        format::check_shape(&self.geom, shape)?;
        self.shape = shape.to_vec();
        Ok(())
    }
    /// Frequency tables, `n_tiles * A` values.
    pub fn freqs(&self) -> &[u16] {
        &self.freqs
    }
    /// Initial decoder states, `n_chunks * 32` values.
    pub fn states(&self) -> &[u32] {
        &self.states
    }
    /// Word offsets of the chunks, `n_chunks + 1` values.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// All chunks' words.
    pub fn words(&self) -> &[u16] {
        &self.words
    }
    /// Tile checksums (CRC-32C), `n_tiles` values.
    pub fn crc(&self) -> &[u32] {
        &self.crc
    }

    /// The header of FORMAT.md section 6 (`14 + ndim` words).
    pub fn header(&self) -> Vec<u32> {
        format::build_header(&self.geom, self.group_size, &self.shape)
    }

    /// Splits into `(header, freqs, states, offsets, words, crc)`.
    #[allow(clippy::type_complexity)]
    pub fn into_parts(self) -> (Vec<u32>, Vec<u16>, Vec<u32>, Vec<u32>, Vec<u16>, Vec<u32>) {
        (
            self.header(),
            self.freqs,
            self.states,
            self.offsets,
            self.words,
            self.crc,
        )
    }

    /// Loads a coded matrix from its stored parts, validating every header field and every
    /// part's size against each other before touching the parts' contents, then the offsets,
    /// frequency tables and states. Allocates nothing but the shape; checksums are verified
    /// when decoding (or by [`verify_checksums`](Self::verify_checksums)).
    pub fn from_parts(
        header: &[u32],
        freqs: Vec<u16>,
        states: Vec<u32>,
        offsets: Vec<u32>,
        words: Vec<u16>,
        crc: Vec<u32>,
    ) -> Result<Self, CodecError> {
        let (g, group_size, shape) = format::parse_header(header)?;
        let (lf, ls, lo, lc) = g.part_lens();
        let size = |part, expected: usize, actual: usize| {
            if expected == actual {
                Ok(())
            } else {
                Err(CodecError::SizeMismatch {
                    part,
                    expected: expected as u64,
                    actual: actual as u64,
                })
            }
        };
        size("freqs", lf, freqs.len())?;
        size("states", ls, states.len())?;
        size("offsets", lo, offsets.len())?;
        size("crc", lc, crc.len())?;
        if offsets[0] != 0 {
            return Err(CodecError::BadOffsets {
                chunk: 0,
                offset: offsets[0],
                reason: "offsets[0] must be 0",
            });
        }
        for (c, w) in offsets.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(CodecError::BadOffsets {
                    chunk: c + 1,
                    offset: w[1],
                    reason: "offsets decrease",
                });
            }
        }
        let last = *offsets.last().unwrap();
        if last as usize != words.len() {
            return Err(CodecError::SizeMismatch {
                part: "words",
                expected: last.into(),
                actual: words.len() as u64,
            });
        }
        if g.alphabet > 0 {
            for (t, f) in freqs.chunks_exact(g.alphabet).enumerate() {
                table::check_freqs(f, g.precision)
                    .map_err(|reason| CodecError::BadFrequencyTable { tile: t, reason })?;
            }
        }
        if let Some(i) = states.iter().position(|&s| s < L) {
            let chunk = i / LANES;
            return Err(CodecError::BadInitialState {
                tile: g.tile_of(chunk),
                chunk,
                lane: i % LANES,
                state: states[i],
            });
        }
        Ok(EncodedMatrix {
            geom: g,
            group_size,
            shape,
            freqs,
            states,
            offsets,
            words,
            crc,
            entropy: None,
        })
    }

    /// CRC-32C of tile `t` (FORMAT.md section 5).
    fn tile_crc(&self, t: usize) -> u32 {
        let a = self.geom.alphabet;
        let cr = self.geom.tile_chunk_range(t);
        let mut crc = crc_append(0, &self.freqs[t * a..(t + 1) * a]);
        crc = crc_append(crc, &self.states[cr.start * LANES..cr.end * LANES]);
        let (w0, w1) = (
            self.offsets[cr.start] as usize,
            self.offsets[cr.end] as usize,
        );
        crc_append(crc, &self.words[w0..w1])
    }

    fn check_tile_crc(&self, t: usize) -> Result<(), CodecError> {
        let computed = self.tile_crc(t);
        if computed != self.crc[t] {
            return Err(CodecError::ChecksumMismatch {
                tile: t,
                stored: self.crc[t],
                computed,
            });
        }
        Ok(())
    }

    /// Verifies every tile's CRC-32C.
    pub fn verify_checksums(&self) -> Result<(), CodecError> {
        (0..self.geom.n_tiles)
            .into_par_iter()
            .try_for_each(|t| self.check_tile_crc(t))
    }

    /// Bytes of coded payload (the word stream).
    pub fn payload_bytes(&self) -> usize {
        self.words.len() * 2
    }

    /// Bytes of everything else: header, frequency tables, states, offsets and checksums.
    pub fn overhead_bytes(&self) -> usize {
        (HEADER_FIXED + self.shape.len()) * 4
            + self.freqs.len() * 2
            + self.states.len() * 4
            + self.offsets.len() * 4
            + self.crc.len() * 4
    }

    /// Total stored bytes, `payload_bytes() + overhead_bytes()`.
    pub fn total_bytes(&self) -> usize {
        self.payload_bytes() + self.overhead_bytes()
    }

    /// Number of weights, `rows * cols`.
    pub fn weights(&self) -> usize {
        self.geom.rows * self.geom.cols
    }

    /// Sum over tiles of the empirical entropy (in bits) of the tile's coded symbols: the size
    /// an ideal coder with one static model per tile would reach, side information excluded.
    /// Recorded by [`encode`]; computed by decoding for a matrix loaded with
    /// [`from_parts`](Self::from_parts).
    pub fn entropy_bound_bits(&self) -> Result<f64, CodecError> {
        if let Some(e) = self.entropy {
            return Ok(e);
        }
        let coded = self.decode_coded_symbols()?;
        let g = &self.geom;
        let spr = g.syms_per_row;
        Ok((0..g.n_tiles)
            .map(|t| {
                let cr = g.tile_chunk_range(t);
                let r0 = g.chunk_rows_range(cr.start).start;
                let r1 = g.chunk_rows_range(cr.end - 1).end;
                table::entropy_bits(&table::histogram(&coded[r0 * spr..r1 * spr]))
            })
            .sum())
    }

    /// Core parallel decode. `out` holds `rows * row_bytes` bytes, `row_bytes >= S`; each
    /// chunk's coded symbols are written to the start of its region (`m * row_bytes` bytes),
    /// after which `post(region, m)` runs on it.
    fn run_decode<F>(
        &self,
        out: &mut [u8],
        row_bytes: usize,
        verify: bool,
        post: F,
    ) -> Result<(), CodecError>
    where
        F: Fn(&mut [u8], usize) + Sync,
    {
        let g = &self.geom;
        if g.n_chunks == 0 {
            return Ok(());
        }
        // Rows per tile and chunk, capped at `rows`: the header fields may be huge (one chunk,
        // one tile) and their product must not overflow.
        let tile_rows = g.tile_chunks.saturating_mul(g.chunk_rows).min(g.rows);
        let tile_bytes = tile_rows * row_bytes;
        let chunk_bytes = g.chunk_rows.min(g.rows) * row_bytes;
        out.par_chunks_mut(tile_bytes)
            .enumerate()
            .try_for_each(|(t, region)| {
                if verify {
                    self.check_tile_crc(t)?;
                }
                let f = &self.freqs[t * g.alphabet..(t + 1) * g.alphabet];
                macro_rules! go {
                    ($e:ty, $n:literal) => {{
                        let tab = SlotTable::<$e>::new(f, $n);
                        self.decode_tile::<$e, $n, F>(&tab, t, region, chunk_bytes, &post)
                    }};
                }
                match g.precision {
                    8 => go!(table::Slot, 8),
                    9 => go!(table::Slot, 9),
                    10 => go!(table::Slot, 10),
                    11 => go!(table::Slot, 11),
                    12 => go!(table::Slot, 12),
                    13 => go!(table::Slot, 13),
                    14 => go!(table::Slot, 14),
                    _ => go!(table::Slot, 15),
                }
            })
    }

    fn decode_tile<E: SlotEntry, const N: u32, F>(
        &self,
        tab: &SlotTable<E>,
        t: usize,
        region: &mut [u8],
        chunk_bytes: usize,
        post: &F,
    ) -> Result<(), CodecError>
    where
        F: Fn(&mut [u8], usize) + Sync,
    {
        let g = &self.geom;
        let c0 = t * g.tile_chunks;
        let spr = g.syms_per_row;
        region
            .par_chunks_mut(chunk_bytes)
            .enumerate()
            .try_for_each(|(i, cregion)| {
                let c = c0 + i;
                let rr = g.chunk_rows_range(c);
                let m = rr.len();
                decode_chunk::<E, N>(
                    tab,
                    &self.states[c * LANES..(c + 1) * LANES],
                    &self.words,
                    self.offsets[c] as usize,
                    self.offsets[c + 1] as usize,
                    &mut cregion[..m * spr],
                    spr,
                    ChunkCtx {
                        tile: t,
                        chunk: c,
                        first_row: rr.start,
                    },
                )?;
                post(cregion, m);
                Ok(())
            })
    }

    fn check_out(
        &self,
        part: &'static str,
        expected: usize,
        actual: usize,
    ) -> Result<(), CodecError> {
        if expected != actual {
            return Err(CodecError::SizeMismatch {
                part,
                expected: expected as u64,
                actual: actual as u64,
            });
        }
        Ok(())
    }

    fn alloc<T: Clone + Default>(n: usize) -> Result<Vec<T>, CodecError> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| CodecError::Allocation {
            bytes: (n * std::mem::size_of::<T>()) as u64,
        })?;
        v.resize(n, T::default());
        Ok(v)
    }

    /// Decodes the coded symbols (`rows * S` bytes, `w` weights per byte, LSB first), verifying
    /// checksums.
    pub fn decode_coded_symbols(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Self::alloc(self.geom.rows * self.geom.syms_per_row)?;
        self.run_decode(&mut out, self.geom.syms_per_row, true, |_, _| {})?;
        Ok(out)
    }

    /// Decodes the quantized values, one `u8` per weight, row-major (`rows * cols` bytes),
    /// verifying checksums.
    pub fn decode_symbols(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Self::alloc(self.weights())?;
        self.decode_symbols_into(&mut out)?;
        Ok(out)
    }

    /// [`decode_symbols`](Self::decode_symbols) into a caller's buffer of `rows * cols` bytes.
    pub fn decode_symbols_into(&self, out: &mut [u8]) -> Result<(), CodecError> {
        self.decode_symbols_impl(out, true)
    }

    /// [`decode_symbols_into`](Self::decode_symbols_into) without checksum verification. The
    /// stream is still fully checked for consistency (a corrupt stream gives an error or wrong
    /// values, never a panic or out-of-bounds access).
    pub fn decode_symbols_unverified_into(&self, out: &mut [u8]) -> Result<(), CodecError> {
        self.decode_symbols_impl(out, false)
    }

    fn decode_symbols_impl(&self, out: &mut [u8], verify: bool) -> Result<(), CodecError> {
        self.check_out("output", self.weights(), out.len())?;
        let g = &self.geom;
        let w = g.wps as usize;
        let spr = g.syms_per_row;
        if w == 1 {
            return self.run_decode(out, g.cols, verify, |_, _| {});
        }
        // Expand w weights per symbol in place, back to front (the expanded position of symbol
        // i is i * w >= i, so nothing is overwritten before it is read).
        let bits = g.bits;
        let mask = (1u32 << bits) - 1;
        let mut lut = [[0u8; 8]; 256];
        for (s, e) in lut.iter_mut().enumerate() {
            for (i, v) in e.iter_mut().enumerate() {
                *v = ((s as u32 >> (bits * i as u32)) & mask) as u8;
            }
        }
        self.run_decode(out, g.cols, verify, |region, m| {
            let n = m * spr;
            match w {
                2 => expand::<2>(region, n, &lut),
                4 => expand::<4>(region, n, &lut),
                _ => expand::<8>(region, n, &lut),
            }
        })
    }

    /// Decodes to MLX packed `u32` words (`rows * cols * bits / 32`), verifying checksums.
    pub fn decode_packed(&self) -> Result<Vec<u32>, CodecError> {
        let mut out = Self::alloc(self.weights() * self.geom.bits as usize / 32)?;
        self.decode_packed_into(&mut out)?;
        Ok(out)
    }

    /// [`decode_packed`](Self::decode_packed) into a caller's buffer.
    pub fn decode_packed_into(&self, out: &mut [u32]) -> Result<(), CodecError> {
        let g = &self.geom;
        let words_per_row = g.cols * g.bits as usize / 32;
        self.check_out("output", g.rows * words_per_row, out.len())?;
        // 2, 4, 8 bits with one byte per symbol: the coded symbols are the packed bytes.
        if cfg!(target_endian = "little") && g.bits * g.wps == 8 && 8 % g.bits == 0 {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
            return self.run_decode(bytes, g.syms_per_row, true, |_, _| {});
        }
        // Other widths: decode values, then MLX-pack rows (every row starts on a word boundary
        // because cols * bits is a multiple of 32).
        let sym = self.decode_symbols()?;
        if g.cols == 0 {
            return Ok(());
        }
        let block = 256;
        out.par_chunks_mut(words_per_row * block)
            .zip(sym.par_chunks(g.cols * block))
            .try_for_each(|(o, s)| {
                crate::quant::pack_into(s, g.bits, o)
                    .map_err(|_| CodecError::Unsupported("MLX packing rejected the geometry"))
            })?;
        Ok(())
    }
}
