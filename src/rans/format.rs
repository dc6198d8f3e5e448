//! Header layout, geometry and validation (FORMAT.md sections 2 and 6).

use super::{CodecError, LANES};

/// Header magic, the bytes `E C Q 1`.
pub const MAGIC: u32 = 0x3151_4345;
/// Format version written and accepted.
pub const VERSION: u32 = 1;
/// Number of fixed header words before the shape.
pub const HEADER_FIXED: usize = 14;
/// Largest number of weights (`rows * cols`) a coded matrix may declare.
///
/// A single-symbol tile codes to zero words, so a few bytes of input can legally describe an
/// arbitrarily large matrix; this cap keeps a hostile header from making
/// [`EncodedMatrix::decode_symbols`](super::EncodedMatrix::decode_symbols) allocate without
/// bound. `2^36` (64 Gi weights) is 16 times the largest matrix of current LLMs.
pub const MAX_WEIGHTS: u64 = 1 << 36;

/// Lowest supported precision.
pub const MIN_PRECISION: u32 = 8;
/// Highest supported precision.
pub const MAX_PRECISION: u32 = 15;

pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 1;
pub(crate) const H_ROWS: usize = 2;
pub(crate) const H_COLS: usize = 3;
pub(crate) const H_BITS: usize = 4;
pub(crate) const H_WPS: usize = 5;
pub(crate) const H_PRECISION: usize = 6;
pub(crate) const H_LANES: usize = 7;
pub(crate) const H_CHUNK_ROWS: usize = 8;
pub(crate) const H_TILE_CHUNKS: usize = 9;
pub(crate) const H_N_CHUNKS: usize = 10;
pub(crate) const H_N_TILES: usize = 11;
pub(crate) const H_GROUP: usize = 12;
pub(crate) const H_NDIM: usize = 13;

/// The derived geometry of a coded matrix.
///
/// Invariant: every field is consistent with the others as FORMAT.md section 2 defines; all
/// products (`rows * cols`, `n_chunks * 32`, `n_tiles * alphabet`) fit in `usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub rows: usize,
    pub cols: usize,
    pub bits: u32,
    pub wps: u32,
    pub precision: u32,
    pub chunk_rows: usize,
    pub tile_chunks: usize,
    pub n_chunks: usize,
    pub n_tiles: usize,
    /// `S = cols / wps`.
    pub syms_per_row: usize,
    /// `A = 2^(bits * wps)`.
    pub alphabet: usize,
}

fn bad(field: &'static str, value: u64, reason: &'static str) -> CodecError {
    CodecError::BadHeader {
        field,
        value,
        reason,
    }
}

impl Geometry {
    /// Checks the scalar parameters and derives the geometry. Does not allocate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        rows: u64,
        cols: u64,
        bits: u64,
        wps: u64,
        precision: u64,
        chunk_rows: u64,
        tile_chunks: u64,
    ) -> Result<Self, CodecError> {
        if !(1..=8).contains(&bits) {
            return Err(bad("bits", bits, "must be 1..=8"));
        }
        if ![1, 2, 4, 8].contains(&wps) {
            return Err(bad("weights_per_symbol", wps, "must be 1, 2, 4 or 8"));
        }
        if bits * wps > 8 {
            return Err(bad(
                "weights_per_symbol",
                wps,
                "bits * weights_per_symbol exceeds 8",
            ));
        }
        if !(u64::from(MIN_PRECISION)..=u64::from(MAX_PRECISION)).contains(&precision) {
            return Err(bad("precision", precision, "must be 8..=15"));
        }
        if rows > u64::from(u32::MAX) {
            return Err(bad("rows", rows, "exceeds u32"));
        }
        if cols > u64::from(u32::MAX) {
            return Err(bad("cols", cols, "exceeds u32"));
        }
        if !cols.is_multiple_of(wps) {
            return Err(bad("cols", cols, "not a multiple of weights_per_symbol"));
        }
        if !(cols * bits).is_multiple_of(32) {
            return Err(bad("cols", cols, "cols * bits is not a multiple of 32"));
        }
        if rows * cols > MAX_WEIGHTS {
            return Err(bad("rows", rows, "rows * cols exceeds MAX_WEIGHTS (2^36)"));
        }
        if chunk_rows == 0 || chunk_rows > u64::from(u32::MAX) {
            return Err(bad("chunk_rows", chunk_rows, "must be 1..2^32"));
        }
        if tile_chunks == 0 || tile_chunks > u64::from(u32::MAX) {
            return Err(bad("tile_chunks", tile_chunks, "must be 1..2^32"));
        }
        let n_chunks = if rows > 0 && cols > 0 {
            rows.div_ceil(chunk_rows)
        } else {
            0
        };
        let n_tiles = n_chunks.div_ceil(tile_chunks);
        Ok(Geometry {
            rows: rows as usize,
            cols: cols as usize,
            bits: bits as u32,
            wps: wps as u32,
            precision: precision as u32,
            chunk_rows: chunk_rows as usize,
            tile_chunks: tile_chunks as usize,
            n_chunks: n_chunks as usize,
            n_tiles: n_tiles as usize,
            syms_per_row: (cols / wps) as usize,
            alphabet: 1 << (bits * wps),
        })
    }

    /// Rows `[start, end)` of chunk `c`.
    #[inline]
    pub(crate) fn chunk_rows_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * self.chunk_rows;
        start..start.saturating_add(self.chunk_rows).min(self.rows)
    }

    /// Chunks `[start, end)` of tile `t`.
    #[inline]
    pub(crate) fn tile_chunk_range(&self, t: usize) -> std::ops::Range<usize> {
        let start = t * self.tile_chunks;
        start..start.saturating_add(self.tile_chunks).min(self.n_chunks)
    }

    /// Tile of chunk `c`.
    #[inline]
    pub(crate) fn tile_of(&self, c: usize) -> usize {
        c / self.tile_chunks
    }

    /// Lengths of the parts: (freqs, states, offsets, crc).
    pub(crate) fn part_lens(&self) -> (usize, usize, usize, usize) {
        (
            self.n_tiles * self.alphabet,
            self.n_chunks * LANES,
            self.n_chunks + 1,
            self.n_tiles,
        )
    }
}

/// Default packed shape `[rows, cols * bits / 32]`.
pub(crate) fn default_shape(g: &Geometry) -> Vec<u32> {
    vec![g.rows as u32, (g.cols * g.bits as usize / 32) as u32]
}

/// Checks that `shape` (1..=8 dims) is a packed tensor shape for the geometry: leading dims
/// multiply to `rows` and the last is `cols * bits / 32`.
pub(crate) fn check_shape(g: &Geometry, shape: &[u32]) -> Result<(), CodecError> {
    if shape.is_empty() || shape.len() > 8 {
        return Err(bad("ndim", shape.len() as u64, "must be 1..=8"));
    }
    let last = *shape.last().unwrap() as u64;
    if last != (g.cols as u64 * u64::from(g.bits)) / 32 {
        return Err(bad("shape", last, "last dimension is not cols * bits / 32"));
    }
    let mut lead = 1u64;
    for &d in &shape[..shape.len() - 1] {
        lead = lead.saturating_mul(u64::from(d));
    }
    // A rank-1 tensor is one row (the empty product is 1).
    let rows_ok = lead == g.rows as u64;
    if !rows_ok {
        return Err(bad(
            "shape",
            lead,
            "leading dimensions do not multiply to rows",
        ));
    }
    Ok(())
}

/// Parses and checks a header (everything except the part lengths).
pub(crate) fn parse_header(h: &[u32]) -> Result<(Geometry, u32, Vec<u32>), CodecError> {
    if h.len() < HEADER_FIXED {
        return Err(CodecError::SizeMismatch {
            part: "header",
            expected: HEADER_FIXED as u64,
            actual: h.len() as u64,
        });
    }
    if h[H_MAGIC] != MAGIC {
        return Err(bad("magic", h[H_MAGIC].into(), "not 0x31514345 (\"ECQ1\")"));
    }
    if h[H_VERSION] != VERSION {
        return Err(bad("version", h[H_VERSION].into(), "unsupported version"));
    }
    if h[H_LANES] as usize != LANES {
        return Err(bad("lanes", h[H_LANES].into(), "must be 32"));
    }
    let ndim = h[H_NDIM] as u64;
    if !(1..=8).contains(&ndim) {
        return Err(bad("ndim", ndim, "must be 1..=8"));
    }
    if h.len() as u64 != HEADER_FIXED as u64 + ndim {
        return Err(CodecError::SizeMismatch {
            part: "header",
            expected: HEADER_FIXED as u64 + ndim,
            actual: h.len() as u64,
        });
    }
    let g = Geometry::new(
        h[H_ROWS].into(),
        h[H_COLS].into(),
        h[H_BITS].into(),
        h[H_WPS].into(),
        h[H_PRECISION].into(),
        h[H_CHUNK_ROWS].into(),
        h[H_TILE_CHUNKS].into(),
    )?;
    if h[H_N_CHUNKS] as usize != g.n_chunks {
        return Err(bad(
            "n_chunks",
            h[H_N_CHUNKS].into(),
            "disagrees with rows, cols and chunk_rows",
        ));
    }
    if h[H_N_TILES] as usize != g.n_tiles {
        return Err(bad(
            "n_tiles",
            h[H_N_TILES].into(),
            "disagrees with n_chunks and tile_chunks",
        ));
    }
    let shape = h[HEADER_FIXED..].to_vec();
    check_shape(&g, &shape)?;
    Ok((g, h[H_GROUP], shape))
}

/// Builds a header.
pub(crate) fn build_header(g: &Geometry, group_size: u32, shape: &[u32]) -> Vec<u32> {
    let mut h = vec![0u32; HEADER_FIXED];
    h[H_MAGIC] = MAGIC;
    h[H_VERSION] = VERSION;
    h[H_ROWS] = g.rows as u32;
    h[H_COLS] = g.cols as u32;
    h[H_BITS] = g.bits;
    h[H_WPS] = g.wps;
    h[H_PRECISION] = g.precision;
    h[H_LANES] = LANES as u32;
    h[H_CHUNK_ROWS] = g.chunk_rows as u32;
    h[H_TILE_CHUNKS] = g.tile_chunks as u32;
    h[H_N_CHUNKS] = g.n_chunks as u32;
    h[H_N_TILES] = g.n_tiles as u32;
    h[H_GROUP] = group_size;
    h[H_NDIM] = shape.len() as u32;
    h.extend_from_slice(shape);
    h
}
