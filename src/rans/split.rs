//! Coded high bits, raw low bits: a quantized matrix whose high `bits - low_bits` bits per
//! weight are entropy-coded as an ordinary [`EncodedMatrix`] and whose low `low_bits` bits are
//! stored as they are, MLX-packed.
//!
//! Why: a rANS step costs the same whatever it decodes, and a GPU pays for steps, not bits
//! (BENCHMARKS.md, issue 5). A byte symbol holds two 4-bit weights but four 2-bit ones, so
//! coding only the high two bits of 4-bit weights halves the steps. On MLX affine weights the
//! low two bits are nearly uniform given the high two (1.95 of 2 bits on MiniLM g64), so storing
//! them raw costs little: MiniLM g64 4-bit codes to 3.788 bits/weight split against 3.737 whole
//! (+1.4%; g32 +0.8%, g128 +2.1%; `tests/rans_split.rs`). On peaked weights it is a loss
//! (per-tensor absmax: 2.53 against 1.11 bits/weight); [`SplitMatrix::encode`] does not choose
//! for the caller.
//!
//! `chunk_symbols` of [`EncodeOptions`] counts symbols, which hold four weights here:
//! [`SplitMatrix::default_options`] halves the default so the chunks, and so the GPU
//! parallelism, are those of whole 4-bit symbols at the default; the measurements above and in
//! BENCHMARKS.md use it. With `EncodeOptions::default()` the chunks hold twice the weights: on
//! an H200 the fused GEMV at 4096x14336 took 121 µs instead of 74 (BENCHMARKS.md issue 5, seventh
//! session's table).
//!
//! [`SplitOrder::RowPairs`] stores the coded symbols of each pair of rows interleaved in runs of
//! [`ROW_PAIR_RUN_SYMBOLS`], so that the GPU's blocked fused kernel multiplies two rows' weights
//! at the same columns with one load of the activations (BENCHMARKS.md issue 5, steps 51-52).
//!
//! [`SplitMatrix::encode_window`] makes a **window split** of 4-bit weights instead: one coded
//! bit per weight (is it outside the eight levels holding most weights?), eight weights per
//! symbol, three raw bits. Half the steps of the 2 + 2 split again, for +0.23% on MiniLM g64;
//! the GPU's fused GEMV runs it 1.24-1.38x faster (BENCHMARKS.md issue 5, step 60).

use rayon::prelude::*;

use super::{encode, CodecError, EncodeOptions, EncodedMatrix};
use crate::quant::{pack_into, packed_len, unpack_into};

/// The chunk count [`SplitMatrix::default_options`] asks for
/// ([`EncodeOptions::min_chunks`]): about the 32-lane subgroups an H100/H200 holds at once
/// (132 SMs x 64), so a matrix gives every one a decoder. Chunks shrink to it only down to
/// [`MIN_PARALLEL_CHUNK_WEIGHTS`](super::MIN_PARALLEL_CHUNK_WEIGHTS) weights (one row of 4096
/// weights in row pairs), which keeps the lm_head's chunks at the default. On an H200 the fused
/// GEMV of split row pairs took 19.5 instead of 56.0 µs at 1024x4096, 23.9 instead of 55.6 at
/// 4096x4096 and 57.8 instead of 68.4 at 14336x4096, for 3.886 instead of 3.813 bits/weight
/// (BENCHMARKS.md, issue 5, tenth session).
pub const SPLIT_MIN_CHUNKS: usize = 8192;

/// Symbols per run of [`SplitOrder::RowPairs`]: four steps of the 32 interleaved rANS lanes,
/// half the 8-step block of the GPU's blocked kernels.
pub const ROW_PAIR_RUN_SYMBOLS: usize = 128;

/// The order of a split matrix's coded symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SplitOrder {
    /// Row-major: the coded part is the `rows x cols` matrix of high bits.
    #[default]
    Rows,
    /// Rows `2p` and `2p + 1` interleaved in runs of [`ROW_PAIR_RUN_SYMBOLS`] symbols (`128 w`
    /// weights for `w` weights per symbol), row `2p`'s first run first: the coded part is a
    /// `rows / 2 x 2 cols` matrix whose row `p` is that interleaving. In the GPU's blocked
    /// kernels a block of eight 32-lane steps then holds both rows' words for the same `512`
    /// columns (four weights per symbol), so each lane's two words share one load of the
    /// activations. Needs an even row count and `cols` a multiple of the run; the raw low bits
    /// stay row-major.
    ///
    /// ```
    /// use ecq::rans::{SplitMatrix, SplitOrder};
    ///
    /// // 2 x 512 4-bit weights: one pair of rows, one run of 128 four-weight symbols each
    /// let q: Vec<u8> = (0..2 * 512).map(|i| ((i * 5) % 16) as u8).collect();
    /// let opts = SplitMatrix::default_options();
    /// let m = SplitMatrix::encode_ordered(&q, 2, 512, 4, 2, &opts, SplitOrder::RowPairs)?;
    /// assert_eq!((m.rows(), m.cols()), (2, 512));
    /// assert_eq!((m.high().rows(), m.high().cols()), (1, 1024)); // the pair, interleaved
    /// assert_eq!(m.decode_symbols()?, q);
    /// # Ok::<(), ecq::rans::CodecError>(())
    /// ```
    RowPairs,
}

/// A matrix of `bits`-bit weights stored as its coded high bits and raw low bits: weight `i` is
/// `(high[i] << low_bits) | low[i]`.
///
/// Invariant: `1 <= low_bits < bits <= 8`, `high` has `bits - low_bits` bits per weight, `low`
/// holds exactly `rows * cols * low_bits / 32` words (`cols * low_bits` is a multiple of 32, so
/// every row's low bits start on a word), and `low_crc` is their CRC-32C when built by
/// [`encode`](Self::encode) (checked when decoding). With [`SplitOrder::RowPairs`], `high` is
/// `rows / 2 x 2 cols` and `cols` is a multiple of [`ROW_PAIR_RUN_SYMBOLS`] times its weights
/// per symbol.
///
/// # Example
///
/// ```
/// use ecq::rans::SplitMatrix;
///
/// // A 4 x 64 matrix of 4-bit values: the high 2 bits coded (four weights per symbol), the
/// // low 2 bits raw.
/// let q: Vec<u8> = (0..4 * 64).map(|i| ((i * 7) % 16) as u8).collect();
/// let m = SplitMatrix::encode(&q, 4, 64, 4, 2, &SplitMatrix::default_options())?;
/// assert_eq!(m.high().bits(), 2);
/// assert_eq!(m.high().weights_per_symbol(), 4);
/// assert_eq!(m.low().len(), 4 * 64 * 2 / 32);
/// assert_eq!(m.decode_symbols()?, q);
/// assert_eq!(m.decode_packed()?, ecq::quant::pack(&q, 4));
/// # Ok::<(), ecq::rans::CodecError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SplitMatrix {
    high: EncodedMatrix,
    low: Vec<u32>,
    low_bits: u32,
    low_crc: u32,
    order: SplitOrder,
    /// `Some(c)`: a window split (see [`SplitMatrix::encode_window`]) with window start `c`.
    window: Option<u8>,
}

fn arg<T>(s: String) -> Result<T, CodecError> {
    Err(CodecError::InvalidArgument(s))
}

fn check_split(bits: u32, low_bits: u32, cols: usize) -> Result<(), CodecError> {
    if !(2..=8).contains(&bits) || low_bits == 0 || low_bits >= bits {
        return arg(format!(
            "low_bits = {low_bits} with bits = {bits}: need 1 <= low_bits < bits <= 8"
        ));
    }
    if !(cols * low_bits as usize).is_multiple_of(32) {
        return arg(format!(
            "cols = {cols}: cols * low_bits ({low_bits}) is not a multiple of 32"
        ));
    }
    Ok(())
}

/// Checks that the raw words `low` have the `expected` length.
fn check_low_len(low: &[u32], expected: usize) -> Result<(), CodecError> {
    if low.len() == expected {
        Ok(())
    } else {
        Err(CodecError::SizeMismatch {
            part: "low bits",
            expected: expected as u64,
            actual: low.len() as u64,
        })
    }
}

/// Weights per run of [`SplitOrder::RowPairs`] in runs of `run_symbols` symbols of `wps`
/// weights ([`ROW_PAIR_RUN_SYMBOLS`], or [`WINDOW_PAIR_RUN_SYMBOLS`] for a window split), after
/// checking that `rows` is even and `cols` a whole number of runs.
fn row_pair_run(
    rows: usize,
    cols: usize,
    run_symbols: usize,
    wps: u32,
) -> Result<usize, CodecError> {
    let run = run_symbols * wps as usize;
    if !rows.is_multiple_of(2) {
        return arg(format!(
            "rows = {rows}: row pairs need an even number of rows"
        ));
    }
    if !cols.is_multiple_of(run) {
        return arg(format!(
            "cols = {cols}: row pairs need whole runs of {run_symbols} symbols ({run} weights \
             at {wps} per symbol)"
        ));
    }
    Ok(run)
}

/// Interleaves each pair of rows (`2 cols` values) in runs of `run` values, row `2p` first.
fn pair_rows(v: &[u8], cols: usize, run: usize) -> Vec<u8> {
    let mut out = vec![0u8; v.len()];
    if cols > 0 {
        out.par_chunks_mut(2 * cols)
            .zip(v.par_chunks(2 * cols))
            .for_each(|(o, pair)| {
                let (a, b) = pair.split_at(cols);
                for ((o, a), b) in o.chunks_mut(2 * run).zip(a.chunks(run)).zip(b.chunks(run)) {
                    o[..run].copy_from_slice(a);
                    o[run..].copy_from_slice(b);
                }
            });
    }
    out
}

/// Undoes [`pair_rows`] in place.
fn unpair_rows(v: &mut [u8], cols: usize, run: usize) {
    if cols == 0 {
        return;
    }
    v.par_chunks_mut(2 * cols).for_each(|pair| {
        let paired = pair.to_vec();
        let (a, b) = pair.split_at_mut(cols);
        for ((p, a), b) in paired
            .chunks(2 * run)
            .zip(a.chunks_mut(run))
            .zip(b.chunks_mut(run))
        {
            a.copy_from_slice(&p[..run]);
            b.copy_from_slice(&p[run..]);
        }
    });
}

/// The weights per symbol [`encode`] would code `bits`-bit values with in rows of whole runs:
/// `opts`'s, else the most that fit a byte (4, 2 or 1).
fn row_pair_wps(bits: u32, opts: &EncodeOptions) -> u32 {
    opts.weights_per_symbol
        .unwrap_or_else(|| [4, 2, 1].into_iter().find(|w| bits * w <= 8).unwrap_or(1))
}

impl SplitMatrix {
    /// The encoder options for split 4-bit weights: the defaults with half the symbols per chunk
    /// ([`DEFAULT_CHUNK_SYMBOLS`](super::DEFAULT_CHUNK_SYMBOLS) / 2), so that a chunk holds as
    /// many weights as whole 4-bit symbols' chunks do, shrunk where a matrix would have fewer
    /// than [`SPLIT_MIN_CHUNKS`] chunks: the split form is the one kept for GPU speed, and its
    /// fused GEMV is 1.2-2.9x faster with those decoders (see [`SPLIT_MIN_CHUNKS`]).
    pub fn default_options() -> EncodeOptions {
        EncodeOptions {
            chunk_symbols: super::DEFAULT_CHUNK_SYMBOLS / 2,
            min_chunks: SPLIT_MIN_CHUNKS,
            ..Default::default()
        }
    }

    /// The encoder options for window splits ([`encode_window`](Self::encode_window)):
    /// [`default_options`](Self::default_options) with half its symbols per chunk again, so
    /// that a chunk of eight-weight symbols holds as many weights as the 2 + 2 split's.
    pub fn default_window_options() -> EncodeOptions {
        EncodeOptions {
            chunk_symbols: super::DEFAULT_CHUNK_SYMBOLS / 4,
            ..Self::default_options()
        }
    }

    /// Splits `symbols` (`rows * cols` values `< 2^bits`, row-major) into high and low bits and
    /// codes the high ones with [`encode`] and `opts` (weights per symbol from
    /// `bits - low_bits` unless `opts` sets it).
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] unless `1 <= low_bits < bits <= 8` and `cols * low_bits`
    /// is a multiple of 32; everything [`encode`] rejects (a value `>= 2^bits` is reported at
    /// its index with the full `bits`).
    pub fn encode(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        bits: u32,
        low_bits: u32,
        opts: &EncodeOptions,
    ) -> Result<Self, CodecError> {
        Self::encode_ordered(symbols, rows, cols, bits, low_bits, opts, SplitOrder::Rows)
    }

    /// [`encode`](Self::encode) with the coded symbols in `order`.
    ///
    /// # Errors
    ///
    /// As [`encode`](Self::encode); with [`SplitOrder::RowPairs`] also
    /// [`CodecError::InvalidArgument`] for an odd row count or `cols` not a multiple of
    /// [`ROW_PAIR_RUN_SYMBOLS`] symbols.
    pub fn encode_ordered(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        bits: u32,
        low_bits: u32,
        opts: &EncodeOptions,
        order: SplitOrder,
    ) -> Result<Self, CodecError> {
        check_split(bits, low_bits, cols)?;
        if rows.checked_mul(cols) != Some(symbols.len()) {
            return arg(format!(
                "{} symbols given for a {rows} x {cols} matrix",
                symbols.len()
            ));
        }
        if let Some(i) = super::first_out_of_range(symbols, bits) {
            return Err(CodecError::SymbolOutOfRange {
                index: i,
                value: symbols[i],
                bits,
            });
        }
        let high_syms: Vec<u8> = symbols.par_iter().map(|&v| v >> low_bits).collect();
        let high = match order {
            SplitOrder::Rows => encode(&high_syms, rows, cols, bits - low_bits, opts)?,
            SplitOrder::RowPairs => {
                let wps = row_pair_wps(bits - low_bits, opts);
                let run = row_pair_run(rows, cols, ROW_PAIR_RUN_SYMBOLS, wps)?;
                let paired = pair_rows(&high_syms, cols, run);
                let o = EncodeOptions {
                    weights_per_symbol: Some(wps),
                    ..opts.clone()
                };
                encode(&paired, rows / 2, 2 * cols, bits - low_bits, &o)?
            }
        };
        drop(high_syms);
        let mut low = vec![0u32; packed_len(symbols.len(), low_bits)];
        let row_words = cols * low_bits as usize / 32;
        if row_words > 0 {
            let block = 64;
            low.par_chunks_mut(row_words * block)
                .zip(symbols.par_chunks(cols * block))
                .for_each(|(o, s)| {
                    // pack_into uses only the low `low_bits` bits of each value
                    pack_into(s, low_bits, o).expect("whole rows of low bits");
                });
        }
        let low_crc = crc_of(&low);
        Ok(SplitMatrix {
            high,
            low,
            low_bits,
            low_crc,
            order,
            window: None,
        })
    }

    /// A **window split** of 4-bit weights: only one bit per weight is coded, whether the
    /// weight lies outside the window of eight levels `start .. start + 8` (mod 16), eight
    /// weights to a byte symbol, and the weight's other three bits are stored raw. Weight `q`
    /// is stored as `u = (q - start) mod 16`: the coded flag is `u >> 3`, the raw bits `u & 7`,
    /// three words per 32 weights of a row in the layout of [`window_raw_words`]. `start` is
    /// the window holding the most weights ([`window_start`]).
    ///
    /// Why: the GPU pays per rANS step (BENCHMARKS.md issue 5), and this halves the steps of
    /// the 2 + 2 split again (eight weights per step instead of four) for almost no size: MLX
    /// affine weights are peaked around one level, so a window of eight levels holds ~78% of
    /// them, and given the flag the three raw bits are close to uniform. On MiniLM g64 the
    /// entropy bound is 3.760 bits/weight against 3.751 for the 2 + 2 split and 3.701 whole.
    /// The coded part is an ordinary [`EncodedMatrix`] of 1-bit values with eight per symbol.
    ///
    /// ```
    /// use ecq::rans::{SplitMatrix, SplitOrder};
    ///
    /// let q: Vec<u8> = (0..4 * 64).map(|i| ((i * 7) % 16) as u8).collect();
    /// let opts = SplitMatrix::default_options();
    /// let m = SplitMatrix::encode_window(&q, 4, 64, &opts, SplitOrder::Rows)?;
    /// assert_eq!((m.high().bits(), m.high().weights_per_symbol()), (1, 8));
    /// assert_eq!((m.low_bits(), m.bits()), (3, 4));
    /// assert!(m.window().is_some());
    /// assert_eq!(m.decode_symbols()?, q);
    /// # Ok::<(), ecq::rans::CodecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] for a shape that does not hold `symbols` or `cols` not a
    /// multiple of 32 (with [`SplitOrder::RowPairs`], of 1024, and an even row count),
    /// [`CodecError::SymbolOutOfRange`] for a value `>= 16`, and everything [`encode`] rejects.
    pub fn encode_window(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        opts: &EncodeOptions,
        order: SplitOrder,
    ) -> Result<Self, CodecError> {
        let start = window_start(symbols);
        Self::encode_window_at(symbols, rows, cols, start, opts, order)
    }

    /// [`encode_window`](Self::encode_window) with the window starting at level `start`
    /// (`< 16`) instead of the fullest one.
    ///
    /// # Errors
    ///
    /// As [`encode_window`](Self::encode_window), and [`CodecError::InvalidArgument`] for
    /// `start >= 16`.
    pub fn encode_window_at(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        start: u8,
        opts: &EncodeOptions,
        order: SplitOrder,
    ) -> Result<Self, CodecError> {
        Self::encode_window_in(symbols, rows, cols, start, opts, order, &mut Vec::new())
    }

    /// [`encode_window_at`](Self::encode_window_at) with the coded flags built in `flags`,
    /// grown to `rows * cols` bytes where it is shorter (its contents do not matter): a loader
    /// re-coding layer after layer keeps the buffer instead of paging in a fresh one each time
    /// (`crate::container::WindowRecoder`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_window_in(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        start: u8,
        opts: &EncodeOptions,
        order: SplitOrder,
        flags: &mut Vec<u8>,
    ) -> Result<Self, CodecError> {
        check_split(4, 3, cols)?;
        if start >= 16 {
            return arg(format!("window start {start}: must be below 16"));
        }
        if rows.checked_mul(cols) != Some(symbols.len()) {
            return arg(format!(
                "{} symbols given for a {rows} x {cols} matrix",
                symbols.len()
            ));
        }
        if let Some(i) = super::first_out_of_range(symbols, 4) {
            return Err(CodecError::SymbolOutOfRange {
                index: i,
                value: symbols[i],
                bits: 4,
            });
        }
        // everything in coded order: with row pairs, a coded row is the pair's two rows
        // interleaved in runs of two symbols
        let (rows_c, cols_c, run) = match order {
            SplitOrder::Rows => (rows, cols, cols),
            SplitOrder::RowPairs => {
                let run =
                    row_pair_run(rows, cols, WINDOW_PAIR_RUN_SYMBOLS, WINDOW_FLAGS_PER_SYMBOL)?;
                (rows / 2, 2 * cols, run)
            }
        };
        // (one pass over the coded rows: each row's u = (q - start) mod 16 in coded order,
        // then its flags and raw words; a pass a step over the whole matrix took 3x as long)
        let flags = super::grown(flags, symbols.len());
        let mut low = vec![0u32; symbols.len() * 3 / WINDOW_WEIGHTS];
        if cols_c > 0 {
            let row_words = cols_c * 3 / WINDOW_WEIGHTS;
            let u_of = |o: &mut [u8], q: &[u8]| {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = q.wrapping_sub(start) & 15;
                }
            };
            flags
                .par_chunks_mut(cols_c)
                .zip(low.par_chunks_mut(row_words))
                .zip(symbols.par_chunks(cols_c))
                .for_each_init(
                    || vec![0u8; cols_c],
                    |u, ((f, w), q)| {
                        match order {
                            SplitOrder::Rows => u_of(u, q),
                            SplitOrder::RowPairs => {
                                let (a, b) = q.split_at(cols);
                                let runs =
                                    u.chunks_mut(2 * run).zip(a.chunks(run)).zip(b.chunks(run));
                                for ((o, a), b) in runs {
                                    let (oa, ob) = o.split_at_mut(run);
                                    u_of(oa, a);
                                    u_of(ob, b);
                                }
                            }
                        }
                        for (f, &u) in f.iter_mut().zip(u.iter()) {
                            *f = u >> 3;
                        }
                        window_raw_row(u, w);
                    },
                );
        }
        let o = EncodeOptions {
            weights_per_symbol: Some(WINDOW_FLAGS_PER_SYMBOL),
            ..opts.clone()
        };
        let high = encode(flags, rows_c, cols_c, 1, &o)?;
        let low_crc = crc_of(&low);
        Ok(SplitMatrix {
            high,
            low,
            low_bits: 3,
            low_crc,
            order,
            window: Some(start),
        })
    }

    /// Builds a window split ([`encode_window`](Self::encode_window)) from its stored parts:
    /// the coded flags (1 bit, eight per symbol), the raw words, their CRC-32C, the order and
    /// the window start.
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] if `high` is not 1-bit values eight to a symbol, its
    /// rows are not whole runs (row pairs) or 32-weight words, or `start >= 16`;
    /// [`CodecError::SizeMismatch`] if `low` has the wrong length.
    pub fn from_parts_window(
        high: EncodedMatrix,
        low: Vec<u32>,
        low_crc: u32,
        order: SplitOrder,
        start: u8,
    ) -> Result<Self, CodecError> {
        if high.bits() != 1 || high.weights_per_symbol() != WINDOW_FLAGS_PER_SYMBOL {
            return arg(format!(
                "a window split codes 1-bit flags eight to a symbol, not {}-bit values {} to a \
                 symbol",
                high.bits(),
                high.weights_per_symbol()
            ));
        }
        if start >= 16 {
            return arg(format!("window start {start}: must be below 16"));
        }
        let (cols_c, run) = (
            high.cols(),
            WINDOW_PAIR_RUN_SYMBOLS * WINDOW_FLAGS_PER_SYMBOL as usize,
        );
        if !cols_c.is_multiple_of(WINDOW_WEIGHTS)
            || (order == SplitOrder::RowPairs && !cols_c.is_multiple_of(2 * run))
        {
            return arg(format!(
                "coded rows of {cols_c} flags are not whole 32-weight words{}",
                if order == SplitOrder::RowPairs {
                    " in whole pairs of 16-weight runs"
                } else {
                    ""
                }
            ));
        }
        check_low_len(&low, high.weights() * 3 / WINDOW_WEIGHTS)?;
        Ok(SplitMatrix {
            high,
            low,
            low_bits: 3,
            low_crc,
            order,
            window: Some(start),
        })
    }

    /// The window start of a window split ([`encode_window`](Self::encode_window)); `None`
    /// for a split into high and low bits.
    pub fn window(&self) -> Option<u8> {
        self.window
    }

    /// Builds a split matrix from its stored parts: the coded high bits, the raw low bits
    /// (`rows * cols * low_bits / 32` MLX-packed words) and their CRC-32C (checked when
    /// decoding, or by [`verify_checksums`](Self::verify_checksums)).
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] if `high.bits() + low_bits` exceeds 8 or `cols *
    /// low_bits` is not a multiple of 32, [`CodecError::SizeMismatch`] if `low` has the wrong
    /// length.
    pub fn from_parts(
        high: EncodedMatrix,
        low: Vec<u32>,
        low_bits: u32,
        low_crc: u32,
    ) -> Result<Self, CodecError> {
        Self::from_parts_ordered(high, low, low_bits, low_crc, SplitOrder::Rows)
    }

    /// [`from_parts`](Self::from_parts) for coded symbols in `order` (with
    /// [`SplitOrder::RowPairs`], `high` is the `rows / 2 x 2 cols` interleaving).
    ///
    /// # Errors
    ///
    /// As [`from_parts`](Self::from_parts); with [`SplitOrder::RowPairs`] also
    /// [`CodecError::InvalidArgument`] if `high`'s rows are not whole runs of
    /// [`ROW_PAIR_RUN_SYMBOLS`] symbols for two rows.
    pub fn from_parts_ordered(
        high: EncodedMatrix,
        low: Vec<u32>,
        low_bits: u32,
        low_crc: u32,
        order: SplitOrder,
    ) -> Result<Self, CodecError> {
        let cols = match order {
            SplitOrder::Rows => high.cols(),
            SplitOrder::RowPairs => {
                let run = ROW_PAIR_RUN_SYMBOLS * high.weights_per_symbol() as usize;
                if !high.cols().is_multiple_of(2 * run) {
                    return arg(format!(
                        "coded row-pair rows of {} weights are not whole pairs of runs of {run}",
                        high.cols()
                    ));
                }
                high.cols() / 2
            }
        };
        check_split(high.bits() + low_bits, low_bits, cols)?;
        check_low_len(&low, high.weights() * low_bits as usize / 32)?;
        Ok(SplitMatrix {
            high,
            low,
            low_bits,
            low_crc,
            order,
            window: None,
        })
    }

    /// Splits into `(high, low, low_bits, low_crc)` ([`order`](Self::order) says how `high`'s
    /// symbols are ordered).
    pub fn into_parts(self) -> (EncodedMatrix, Vec<u32>, u32, u32) {
        (self.high, self.low, self.low_bits, self.low_crc)
    }

    /// The coded high bits.
    pub fn high(&self) -> &EncodedMatrix {
        &self.high
    }
    /// The raw low bits, MLX-packed, `cols * low_bits / 32` words per row.
    pub fn low(&self) -> &[u32] {
        &self.low
    }
    /// Raw low bits per weight.
    pub fn low_bits(&self) -> u32 {
        self.low_bits
    }
    /// The stored CRC-32C of the low bits.
    pub fn low_crc(&self) -> u32 {
        self.low_crc
    }
    /// The order of the coded symbols.
    pub fn order(&self) -> SplitOrder {
        self.order
    }
    /// Bits per weight, coded and raw together.
    pub fn bits(&self) -> u32 {
        self.high.bits() + self.low_bits
    }
    /// Rows.
    pub fn rows(&self) -> usize {
        match self.order {
            SplitOrder::Rows => self.high.rows(),
            SplitOrder::RowPairs => 2 * self.high.rows(),
        }
    }
    /// Weights per row.
    pub fn cols(&self) -> usize {
        match self.order {
            SplitOrder::Rows => self.high.cols(),
            SplitOrder::RowPairs => self.high.cols() / 2,
        }
    }
    /// Number of weights.
    pub fn weights(&self) -> usize {
        self.high.weights()
    }
    /// Stored bytes: the coded matrix's, the low bits and their 4-byte checksum.
    pub fn total_bytes(&self) -> usize {
        self.high.total_bytes() + self.low.len() * 4 + 4
    }

    /// Verifies the coded part's tile checksums and the low bits' checksum.
    pub fn verify_checksums(&self) -> Result<(), CodecError> {
        self.high.verify_checksums()?;
        self.verify_low_checksum()
    }

    fn verify_low_checksum(&self) -> Result<(), CodecError> {
        let computed = crc_of(&self.low);
        if computed != self.low_crc {
            return Err(CodecError::LowBitsChecksumMismatch {
                stored: self.low_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Decodes the weights, one `u8` per weight, row-major, verifying every checksum.
    pub fn decode_symbols(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; self.weights()];
        self.decode_symbols_into(&mut out)?;
        Ok(out)
    }

    /// [`decode_symbols`](Self::decode_symbols) into a caller's buffer of `rows * cols` bytes.
    pub fn decode_symbols_into(&self, out: &mut [u8]) -> Result<(), CodecError> {
        // (verifies the coded part's tile checksums as it decodes)
        self.high.decode_symbols_into(out)?;
        self.verify_low_checksum()?;
        let cols = self.cols();
        if let Some(start) = self.window {
            // merged in coded order, then the pairs taken apart
            let cols_c = self.high.cols();
            if cols_c > 0 {
                out.par_chunks_mut(cols_c)
                    .zip(self.low.par_chunks(cols_c * 3 / WINDOW_WEIGHTS))
                    .for_each(|(o, raw)| window_merge_row(o, raw, start));
            }
            if self.order == SplitOrder::RowPairs {
                unpair_rows(
                    out,
                    cols,
                    WINDOW_PAIR_RUN_SYMBOLS * WINDOW_FLAGS_PER_SYMBOL as usize,
                );
            }
            return Ok(());
        }
        if self.order == SplitOrder::RowPairs {
            let run = ROW_PAIR_RUN_SYMBOLS * self.high.weights_per_symbol() as usize;
            unpair_rows(out, cols, run);
        }
        let row_words = cols * self.low_bits as usize / 32;
        if row_words == 0 {
            return Ok(());
        }
        let (lb, block) = (self.low_bits, 64);
        out.par_chunks_mut(cols * block)
            .zip(self.low.par_chunks(row_words * block))
            .for_each(|(o, l)| {
                let mut lows = vec![0u8; o.len()];
                unpack_into(l, lb, &mut lows).expect("whole rows of low bits");
                for (v, lo) in o.iter_mut().zip(lows) {
                    *v = (*v << lb) | lo;
                }
            });
        Ok(())
    }

    /// Decodes to MLX packed `u32` words of [`bits`](Self::bits) bits (`rows * cols * bits /
    /// 32`; needs `cols * bits` a multiple of 32), verifying every checksum.
    pub fn decode_packed(&self) -> Result<Vec<u32>, CodecError> {
        let bits = self.bits();
        if !(self.cols() * bits as usize).is_multiple_of(32) {
            return Err(CodecError::Unsupported(
                "MLX packing needs cols * bits to be a multiple of 32",
            ));
        }
        let q = self.decode_symbols()?;
        let mut out = vec![0u32; packed_len(q.len(), bits)];
        pack_into(&q, bits, &mut out)
            .map_err(|_| CodecError::Unsupported("MLX packing rejected the geometry"))?;
        Ok(out)
    }
}

/// Weights per symbol of a window split's coded flags.
pub const WINDOW_FLAGS_PER_SYMBOL: u32 = 8;

/// Weights per group of three raw words of a window split.
const WINDOW_WEIGHTS: usize = 32;

/// The start of the window of eight levels (mod 16) holding the most of `symbols` (4-bit
/// values; higher ones are ignored), the lowest start on a tie. Starts `c` and `c + 8` give
/// complementary flags, so only `0..8` are returned.
pub fn window_start(symbols: &[u8]) -> u8 {
    let hist = symbols
        .par_chunks(1 << 16)
        .map(|c| {
            let mut h = [0u64; 16];
            for &v in c {
                h[usize::from(v & 15)] += 1;
            }
            h
        })
        .reduce(|| [0u64; 16], |a, b| std::array::from_fn(|i| a[i] + b[i]));
    let total: u64 = hist.iter().sum();
    let inside = |c: usize| (0..8).map(|i| hist[(c + i) % 16]).sum::<u64>();
    // the flag's entropy falls as the window's share moves away from one half
    (0..8u8)
        .max_by_key(|&c| {
            let k = inside(c as usize);
            (k.abs_diff(total - k), std::cmp::Reverse(c))
        })
        .map_or(0, |c| c)
}

/// The three raw words of 32 weights of a window split, from their `u = (q - start) mod 16`
/// (only bits 0-2 are stored): word 0 holds the low two bits of weights `4n` (at bit `4n`) and
/// `4n + 1` (at bit `4n + 2`), word 1 those of weights `4n + 2` and `4n + 3`, for `n` in
/// `0..8`, word 2 bit 2 of weight `t` at bit `t`. Why this order: a GPU kernel gets the
/// nibbles of weights `m, m + 4, .., m + 28` in place from each word with one shift and mask
/// (`wgsl/rans_gemv_blocked.wgsl`, `window_dot`).
pub fn window_raw_words(u: &[u8]) -> [u32; 3] {
    assert_eq!(
        u.len(),
        WINDOW_WEIGHTS,
        "a window split's raw words hold 32 weights"
    );
    let mut w = [0u32; 3];
    for n in 0..8 {
        for m in 0..4 {
            let v = u32::from(u[4 * n + m]);
            w[m / 2] |= (v & 3) << (4 * n + 2 * (m % 2));
        }
    }
    for (t, &v) in u.iter().enumerate() {
        w[2] |= ((u32::from(v) >> 2) & 1) << t;
    }
    w
}

/// Rebuilds 32 weights in place from their coded flags (0 or 1 each) and three raw words
/// ([`window_raw_words`]).
fn window_merge(o: &mut [u8], raw: [u32; 3], start: u8) {
    for (t, v) in o.iter_mut().enumerate() {
        let (n, m) = (t / 4, t % 4);
        let low = (raw[m / 2] >> (4 * n + 2 * (m % 2))) & 3;
        let mid = (raw[2] >> t) & 1;
        let u = (u32::from(*v) << 3) | (mid << 2) | low;
        *v = (u as u8).wrapping_add(start) & 15;
    }
}

/// The raw words of one coded row of a window split (`u` in coded order, a multiple of 32
/// values) into `out` (`3 u.len() / 32` words): the 32-weight words' [`window_raw_words`] in
/// groups of 32 words (1024 weights, four 32-lane steps), each group stored as three planes,
/// the group's first words, then its second words, then its third words (a last group of
/// `n < 32` words has planes of `n`). Why planes: a GPU lane takes one 32-weight word of
/// every four steps, so the 32 lanes load each plane as one contiguous 128-byte line.
fn window_raw_row(u: &[u8], out: &mut [u32]) {
    for (u, out) in u.chunks(32 * WINDOW_WEIGHTS).zip(out.chunks_mut(96)) {
        let n = u.len() / WINDOW_WEIGHTS;
        for (j, w) in u.chunks_exact(WINDOW_WEIGHTS).enumerate() {
            let t = window_raw_words(w);
            for (p, t) in t.into_iter().enumerate() {
                out[p * n + j] = t;
            }
        }
    }
}

/// Undoes [`window_raw_row`] and the flags' split: `o` holds one coded row's flags and gets its
/// weights (coded order).
fn window_merge_row(o: &mut [u8], raw: &[u32], start: u8) {
    for (o, raw) in o.chunks_mut(32 * WINDOW_WEIGHTS).zip(raw.chunks(96)) {
        let n = o.len() / WINDOW_WEIGHTS;
        for (j, w) in o.chunks_exact_mut(WINDOW_WEIGHTS).enumerate() {
            window_merge(w, [raw[j], raw[n + j], raw[2 * n + j]], start);
        }
    }
}

/// Symbols per run of a window split in [`SplitOrder::RowPairs`]: two (16 weights), so that the
/// four symbols a GPU lane multiplies at once are 16 columns of both rows, sharing their
/// activations.
pub const WINDOW_PAIR_RUN_SYMBOLS: usize = 2;

/// CRC-32C of the raw low bits' little-endian bytes (the coded parts' checksum routine).
fn crc_of(low: &[u32]) -> u32 {
    super::crc_append(0, low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, bits: u32, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(0..1u32 << bits) as u8)
            .collect()
    }

    #[test]
    fn round_trips_every_split() {
        for bits in 2..=8u32 {
            for low_bits in 1..bits {
                // 32 columns make cols * low_bits whole words for every low_bits
                for (rows, cols) in [(0, 32), (1, 32), (7, 64), (33, 96)] {
                    let q = random(rows * cols, bits, (bits * 100 + low_bits) as u64);
                    let m =
                        SplitMatrix::encode(&q, rows, cols, bits, low_bits, &Default::default())
                            .unwrap();
                    assert_eq!(m.bits(), bits);
                    assert_eq!(m.low().len(), rows * cols * low_bits as usize / 32);
                    assert_eq!(
                        m.decode_symbols().unwrap(),
                        q,
                        "{bits}/{low_bits} {rows}x{cols}"
                    );
                    assert_eq!(m.decode_packed().unwrap(), crate::quant::pack(&q, bits));
                    let (h, l, lb, c) = m.clone().into_parts();
                    assert_eq!(SplitMatrix::from_parts(h, l, lb, c).unwrap(), m);
                }
            }
        }
    }

    #[test]
    fn high_bits_take_four_weights_per_symbol() {
        let q = random(16 * 128, 4, 1);
        let m = SplitMatrix::encode(&q, 16, 128, 4, 2, &Default::default()).unwrap();
        assert_eq!(m.high().weights_per_symbol(), 4);
        assert_eq!(m.high().symbols_per_row(), 32);
        // exact size: the coded part, 2 raw bits per weight, 4 bytes of checksum
        assert_eq!(m.total_bytes(), m.high().total_bytes() + 16 * 128 / 4 + 4);
    }

    #[test]
    fn bad_arguments_are_named() {
        let q = vec![0u8; 64];
        let e = |r: Result<SplitMatrix, CodecError>| r.unwrap_err().to_string();
        let opts = EncodeOptions::default();
        assert!(e(SplitMatrix::encode(&q, 2, 32, 4, 0, &opts)).contains("low_bits = 0"));
        assert!(e(SplitMatrix::encode(&q, 2, 32, 4, 4, &opts)).contains("low_bits = 4"));
        assert!(e(SplitMatrix::encode(&q, 2, 32, 9, 2, &opts)).contains("bits = 9"));
        assert!(e(SplitMatrix::encode(&q, 4, 16, 4, 1, &opts)).contains("cols = 16"));
        assert!(e(SplitMatrix::encode(&q, 3, 32, 4, 2, &opts)).contains("64 symbols"));
        let mut bad = q.clone();
        bad[37] = 16;
        assert_eq!(
            SplitMatrix::encode(&bad, 2, 32, 4, 2, &opts).unwrap_err(),
            CodecError::SymbolOutOfRange {
                index: 37,
                value: 16,
                bits: 4
            }
        );
    }

    #[test]
    fn corrupt_low_bits_are_caught() {
        let q = random(8 * 64, 4, 2);
        let m = SplitMatrix::encode(&q, 8, 64, 4, 2, &Default::default()).unwrap();
        let (h, mut l, lb, c) = m.into_parts();
        l[3] ^= 1 << 7;
        let m = SplitMatrix::from_parts(h.clone(), l.clone(), lb, c).unwrap();
        assert!(matches!(
            m.decode_symbols(),
            Err(CodecError::LowBitsChecksumMismatch { stored, .. }) if stored == c
        ));
        l.pop();
        assert!(matches!(
            SplitMatrix::from_parts(h.clone(), l, lb, c),
            Err(CodecError::SizeMismatch {
                part: "low bits",
                ..
            })
        ));
        assert!(SplitMatrix::from_parts(h, vec![0; 8 * 64 * 7 / 32], 7, 0)
            .unwrap_err()
            .to_string()
            .contains("low_bits = 7 with bits = 9"));
    }

    #[test]
    fn row_pairs_round_trip_and_interleave_runs() {
        let run = ROW_PAIR_RUN_SYMBOLS * 4; // weights per run at four weights per symbol
        for (rows, cols, seed) in [(0, 512, 1), (2, 512, 2), (6, 1024, 3), (10, 1536, 4)] {
            let q = random(rows * cols, 4, seed);
            let opts = SplitMatrix::default_options();
            let m = SplitMatrix::encode_ordered(&q, rows, cols, 4, 2, &opts, SplitOrder::RowPairs)
                .unwrap();
            assert_eq!(m.order(), SplitOrder::RowPairs);
            assert_eq!((m.rows(), m.cols()), (rows, cols));
            assert_eq!((m.high().rows(), m.high().cols()), (rows / 2, 2 * cols));
            assert_eq!(m.high().weights_per_symbol(), 4);
            assert_eq!(m.decode_symbols().unwrap(), q, "{rows}x{cols}");
            assert_eq!(m.decode_packed().unwrap(), crate::quant::pack(&q, 4));
            // the coded rows are the pairs interleaved in runs, row 2p's first
            let high = m.high().decode_symbols().unwrap();
            for p in 0..rows / 2 {
                for j in 0..cols / run {
                    for t in 0..run {
                        let at = p * 2 * cols + 2 * j * run;
                        assert_eq!(high[at + t], q[2 * p * cols + j * run + t] >> 2);
                        assert_eq!(high[at + run + t], q[(2 * p + 1) * cols + j * run + t] >> 2);
                    }
                }
            }
            // the same raw bits as row-major order, and the parts rebuild it
            let rm = SplitMatrix::encode(&q, rows, cols, 4, 2, &opts).unwrap();
            assert_eq!(m.low(), rm.low());
            let order = m.order();
            let (h, l, lb, c) = m.clone().into_parts();
            assert_eq!(
                SplitMatrix::from_parts_ordered(h, l, lb, c, order).unwrap(),
                m
            );
        }
        // other splits: 5-bit weights as 3 + 2 (two weights per symbol, runs of 256)
        let q = random(4 * 256, 5, 5);
        let m = SplitMatrix::encode_ordered(
            &q,
            4,
            256,
            5,
            2,
            &Default::default(),
            SplitOrder::RowPairs,
        )
        .unwrap();
        assert_eq!(m.high().weights_per_symbol(), 2);
        assert_eq!(m.decode_symbols().unwrap(), q);
    }

    #[test]
    fn window_splits_round_trip() {
        for (rows, cols, order, seed) in [
            (0, 32, SplitOrder::Rows, 1),
            (1, 32, SplitOrder::Rows, 2),
            (7, 96, SplitOrder::Rows, 3),
            (2, 1024, SplitOrder::RowPairs, 4),
            (6, 2048, SplitOrder::RowPairs, 5),
        ] {
            let q = random(rows * cols, 4, seed);
            for start in [0u8, 5, 13] {
                let opts = SplitMatrix::default_options();
                let m = SplitMatrix::encode_window_at(&q, rows, cols, start, &opts, order).unwrap();
                assert_eq!((m.rows(), m.cols(), m.bits()), (rows, cols, 4));
                assert_eq!(m.window(), Some(start));
                assert_eq!(m.low().len(), rows * cols * 3 / 32);
                assert_eq!(
                    m.decode_symbols().unwrap(),
                    q,
                    "{rows}x{cols} {order:?} {start}"
                );
                assert_eq!(m.decode_packed().unwrap(), crate::quant::pack(&q, 4));
                // exact size: the coded flags, 3 raw bits per weight, 4 bytes of checksum
                assert_eq!(
                    m.total_bytes(),
                    m.high().total_bytes() + rows * cols * 3 / 8 + 4
                );
                let (h, l, _, c) = m.clone().into_parts();
                let back = SplitMatrix::from_parts_window(h, l, c, order, start).unwrap();
                assert_eq!(back, m);
            }
        }
    }

    #[test]
    fn window_flags_and_raw_words_are_where_the_layout_says() {
        // weights 0..32 with u = t % 16 (start 0): weight t's flag is bit 3 of t % 16
        let q: Vec<u8> = (0..32).map(|t| (t % 16) as u8).collect();
        let m = SplitMatrix::encode_window_at(&q, 1, 32, 0, &Default::default(), SplitOrder::Rows)
            .unwrap();
        let flags = m.high().decode_symbols().unwrap();
        assert_eq!(flags, q.iter().map(|v| v >> 3).collect::<Vec<_>>());
        let w = window_raw_words(&q);
        assert_eq!(m.low(), &w);
        // two words: the three planes of two words each
        let q2: Vec<u8> = (0..64).map(|t| ((t * 5) % 16) as u8).collect();
        let m2 =
            SplitMatrix::encode_window_at(&q2, 1, 64, 0, &Default::default(), SplitOrder::Rows)
                .unwrap();
        let (a, b) = (window_raw_words(&q2[..32]), window_raw_words(&q2[32..]));
        assert_eq!(m2.low(), &[a[0], b[0], a[1], b[1], a[2], b[2]]);
        // row pairs: coded order is runs of 16 weights of each row
        let q4: Vec<u8> = (0..64).map(|t| ((t * 3) % 16) as u8).collect();
        let m4 =
            SplitMatrix::encode_window_at(&q4, 2, 32, 0, &Default::default(), SplitOrder::RowPairs)
                .unwrap();
        let coded: Vec<u8> = [&q4[..16], &q4[32..48], &q4[16..32], &q4[48..]].concat();
        let flags = m4.high().decode_symbols().unwrap();
        assert_eq!(flags, coded.iter().map(|v| v >> 3).collect::<Vec<_>>());
        let (a, b) = (
            window_raw_words(&coded[..32]),
            window_raw_words(&coded[32..]),
        );
        assert_eq!(m4.low(), &[a[0], b[0], a[1], b[1], a[2], b[2]]);
        for t in 0..32 {
            let (n, j) = (t / 4, t % 4);
            assert_eq!((w[j / 2] >> (4 * n + 2 * (j % 2))) & 3, (t % 16) as u32 & 3);
            assert_eq!((w[2] >> t) & 1, ((t % 16) as u32 >> 2) & 1);
        }
        // the fullest window: levels 5..13 hold most of these weights
        let peaked: Vec<u8> = (0..1000)
            .map(|i| 5 + (i % 8) as u8)
            .chain([0, 15])
            .collect();
        assert_eq!(window_start(&peaked), 5);
        assert_eq!(window_start(&[]), 0);
    }

    #[test]
    fn window_splits_refuse_bad_input() {
        let e = |r: Result<SplitMatrix, CodecError>| r.unwrap_err().to_string();
        let opts = EncodeOptions::default();
        let q = vec![3u8; 64];
        assert!(e(SplitMatrix::encode_window(
            &q,
            4,
            16,
            &opts,
            SplitOrder::Rows
        ))
        .contains("cols = 16"));
        assert!(e(SplitMatrix::encode_window(
            &q,
            1,
            32,
            &opts,
            SplitOrder::Rows
        ))
        .contains("64 symbols"));
        assert!(e(SplitMatrix::encode_window_at(
            &q,
            2,
            32,
            16,
            &opts,
            SplitOrder::Rows
        ))
        .contains("start 16"));
        let q96 = vec![3u8; 96];
        let r = SplitMatrix::encode_window(&q96, 3, 32, &opts, SplitOrder::RowPairs);
        assert!(e(r).contains("rows = 3"));
        let mut bad = q.clone();
        bad[9] = 17;
        assert_eq!(
            SplitMatrix::encode_window(&bad, 2, 32, &opts, SplitOrder::Rows).unwrap_err(),
            CodecError::SymbolOutOfRange {
                index: 9,
                value: 17,
                bits: 4
            }
        );
        // a 2 + 2 split's parts are not a window split's
        let (h, l, _, c) = SplitMatrix::encode(&q, 2, 32, 4, 2, &opts)
            .unwrap()
            .into_parts();
        assert!(
            e(SplitMatrix::from_parts_window(h, l, c, SplitOrder::Rows, 5)).contains("1-bit flags")
        );
    }

    #[test]
    fn row_pairs_refuse_what_they_cannot_pair() {
        let e = |rows: usize, cols: usize| {
            let q = vec![0u8; rows * cols];
            SplitMatrix::encode_ordered(
                &q,
                rows,
                cols,
                4,
                2,
                &Default::default(),
                SplitOrder::RowPairs,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(e(3, 512).contains("rows = 3"), "{}", e(3, 512));
        assert!(e(2, 256).contains("cols = 256"), "{}", e(2, 256));
        // a row-major coded part is not a row-pair one
        let q = random(2 * 256, 4, 6);
        let (h, l, lb, c) = SplitMatrix::encode(&q, 2, 256, 4, 2, &Default::default())
            .unwrap()
            .into_parts();
        assert!(
            SplitMatrix::from_parts_ordered(h, l, lb, c, SplitOrder::RowPairs)
                .unwrap_err()
                .to_string()
                .contains("whole pairs of runs")
        );
    }
}
