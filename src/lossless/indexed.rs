//! The **indexed** lossless bf16 form: a fixed-width layout the GPU can read at memory speed.
//!
//! The rANS form ([`super::LosslessMatrix`], about 10.7 bits/weight on real weights) is the
//! smallest, but decoding it costs tens of instructions per weight, and on an H200 its fused
//! GEMV measured 12x slower than plain bf16 (BENCHMARKS.md, issue 7). This form trades a
//! little size for a decode of a few bit operations per weight:
//!
//! * every weight keeps its **raw byte** (sign and 7 mantissa bits, [`super::raw_byte`]);
//! * its exponent becomes a **4-bit index** `exponent - base` into a per-matrix **window** of 16
//!   consecutive exponents `base ..= base + 15` (the window holding the most weights, `base >= 1`
//!   so that it never holds the zero/subnormal exponent 0, `base + 15 <= 254` so that it never
//!   holds the infinity/NaN exponent 255);
//! * a weight whose exponent is outside the window (zeros and subnormals always are) is an
//!   **escape**: its dense slot holds index 0 and raw byte 0, i.e. the value `2^(base - 127)`,
//!   and its exact 16-bit pattern goes to a per-row list of `(column, bits)` pairs; a GEMV adds
//!   `x * bits - x * 2^(base - 127)` for it.
//!
//! That is 12 bits per weight plus 64 bits per escape. Trained bf16 weights span about 2^16 in
//! magnitude, so escapes are rare (measured rates are in BENCHMARKS.md); a matrix with many
//! exact zeros pays 64 bits for each. The form is exact: [`IndexedMatrix::decode`] returns the
//! input bit for bit, NaN payloads, infinities, subnormals and both zeros included.
//!
//! A window instead of a table is what makes the GPU kernel cheap: the exponent field is the
//! index shifted into place plus a constant, with no memory lookup (`wgsl/lib/indexed16.wgsl`).
//!
//! It is built from 16-bit patterns or from a decoded [`super::LosslessMatrix`], in memory: the
//! files stay in the rANS form, and a loader that wants speed converts once.
//!
//! Only bf16: an f16 "exponent byte" ([`super::symbol`]) holds 3 mantissa bits too, so a
//! window of 16 of them would leave most weights as escapes.
//!
//! ```
//! use ecq::lossless::indexed::IndexedMatrix;
//!
//! let w: Vec<u16> = (0..16 * 64)
//!     .map(|i| half::bf16::from_f32((i as f32 * 0.37).sin() * 0.02).to_bits())
//!     .collect();
//! let m = IndexedMatrix::from_bf16(&w, 16, 64)?;
//! assert_eq!(m.decode(), w);
//! assert!(m.bits_per_weight() < 16.0);
//! # Ok::<(), ecq::lossless::LosslessError>(())
//! ```

use super::{join, raw_byte, symbol, HalfType, LosslessError, LosslessMatrix, Result};

/// Exponents in the window (one 4-bit index).
pub const WINDOW: usize = 16;
/// Smallest window base (exponent 0, zeros and subnormals, is never in the window).
pub const MIN_BASE: u8 = 1;
/// Largest window base (exponent 255, infinities and NaNs, is never in the window).
pub const MAX_BASE: u8 = 254 - (WINDOW as u8 - 1);
/// Weights per thread and iteration of the GPU kernels (a unit, see
/// [`IndexedMatrix::gpu_words`]): `cols` must be a multiple of it on the GPU.
pub const GPU_UNIT: usize = 16;
/// The bits of a two-weight GPU word that hold the two weights' sign, index and mantissa.
pub const PAIR_FIELDS: u32 = 0x87FF_87FF;
/// Weights per `u32` word of the index stream (eight 4-bit indices, weight `8w + j` in bits
/// `4j..4j+4`).
pub const INDICES_PER_WORD: usize = 8;

/// One escaped weight: its column and exact 16-bit pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Escape {
    /// Column of the weight in its row.
    pub col: u32,
    /// The weight's bf16 bit pattern.
    pub bits: u16,
}

/// A bf16 matrix in the indexed form (module docs).
///
/// Invariants, checked by every constructor: `cols` is a multiple of [`INDICES_PER_WORD`];
/// `MIN_BASE <= base <= MAX_BASE`; `escape_rows` has `rows + 1` non-decreasing entries from 0 to
/// `escapes.len()`; within a row escape columns are strictly increasing and `< cols`; at every
/// escape the index is 0 and the raw byte is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedMatrix {
    rows: usize,
    cols: usize,
    base: u8,
    indices: Vec<u32>,
    raw: Vec<u8>,
    escape_rows: Vec<u32>,
    escapes: Vec<Escape>,
}

fn invalid(msg: String) -> LosslessError {
    LosslessError::InvalidArgument(msg)
}

/// The window base for `values`: the `base` in `MIN_BASE..=MAX_BASE` whose window
/// `base ..= base + 15` holds the most values (the smallest such base on ties; `MIN_BASE` for
/// no values).
pub fn window_base(values: &[u16]) -> u8 {
    let mut counts = [0u64; 256];
    for &h in values {
        counts[symbol(h) as usize] += 1;
    }
    let mut best = (0u64, MIN_BASE);
    for b in MIN_BASE..=MAX_BASE {
        let n: u64 = counts[b as usize..b as usize + WINDOW].iter().sum();
        if n > best.0 {
            best = (n, b);
        }
    }
    best.1
}

/// The size the indexed form of a `rows x cols` bf16 matrix would have, without building it:
/// `(total bytes, escapes)` as [`IndexedMatrix::total_bytes`] and `escapes().len()` would give.
pub fn indexed_size(values: &[u16], rows: usize) -> (usize, usize) {
    let b = window_base(values);
    let escapes = values
        .iter()
        .filter(|&&h| !(b..=b + (WINDOW as u8 - 1)).contains(&symbol(h)))
        .count();
    (form_bytes(values.len(), rows, escapes), escapes)
}

/// Bytes of the indexed form of `weights` weights in `rows` rows with `escapes` escapes:
/// indices (4 bits each), raw bytes, row offsets, escape pairs (8 bytes each), the base.
fn form_bytes(weights: usize, rows: usize, escapes: usize) -> usize {
    weights / 2 + weights + 4 * (rows + 1) + 8 * escapes + 1
}

impl IndexedMatrix {
    /// Builds the indexed form of a `rows x cols` bf16 matrix (row-major bit patterns) with the
    /// window of [`window_base`]. `cols` must be a multiple of 8.
    pub fn from_bf16(values: &[u16], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bf16_with_base(values, rows, cols, window_base(values))
    }

    /// [`Self::from_bf16`] with a given window base (`MIN_BASE..=MAX_BASE`).
    pub fn from_bf16_with_base(values: &[u16], rows: usize, cols: usize, base: u8) -> Result<Self> {
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(invalid(format!(
                "{} values for a {rows} x {cols} matrix",
                values.len()
            )));
        }
        if !cols.is_multiple_of(INDICES_PER_WORD) {
            return Err(invalid(format!(
                "cols = {cols} must be a multiple of {INDICES_PER_WORD} for the indexed form"
            )));
        }
        check_base(base)?;
        u32::try_from(cols).map_err(|_| invalid(format!("cols = {cols} exceeds u32")))?;
        // index of each exponent, 0xFF = escape
        let mut index_of = [0xFFu8; 256];
        for i in 0..WINDOW {
            index_of[base as usize + i] = i as u8;
        }
        let mut indices = vec![0u32; values.len() / INDICES_PER_WORD];
        let mut raw = Vec::with_capacity(values.len());
        let mut escape_rows = Vec::with_capacity(rows + 1);
        let mut escapes = Vec::new();
        escape_rows.push(0u32);
        for (r, row) in values.chunks_exact(cols.max(1)).take(rows).enumerate() {
            for (c, &h) in row.iter().enumerate() {
                let i = index_of[symbol(h) as usize];
                let n = r * cols + c;
                if i == 0xFF {
                    escapes.push(Escape {
                        col: c as u32,
                        bits: h,
                    });
                    raw.push(0);
                } else {
                    indices[n / INDICES_PER_WORD] |= u32::from(i) << (4 * (n % INDICES_PER_WORD));
                    raw.push(raw_byte(h));
                }
            }
            let e = u32::try_from(escapes.len())
                .map_err(|_| invalid("more than 2^32 escapes".into()))?;
            escape_rows.push(e);
        }
        // cols == 0: no rows were visited above
        escape_rows.resize(rows + 1, 0);
        Ok(IndexedMatrix {
            rows,
            cols,
            base,
            indices,
            raw,
            escape_rows,
            escapes,
        })
    }

    /// The indexed form of a rANS-coded bf16 matrix (decodes it on the CPU, verifying its
    /// checksums).
    pub fn from_lossless(m: &LosslessMatrix) -> Result<Self> {
        if m.half_type() != HalfType::BF16 {
            return Err(invalid(format!(
                "the indexed form holds bf16 only, this matrix is {:?} (its exponent byte \
                 carries mantissa bits, so most weights would be escapes)",
                m.half_type()
            )));
        }
        Self::from_bf16(&m.decode()?, m.rows(), m.cols())
    }

    /// Assembles a matrix from its parts, checking every invariant (type docs), so that
    /// nothing read from elsewhere can make a kernel read out of bounds or add an escape twice.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        base: u8,
        indices: Vec<u32>,
        raw: Vec<u8>,
        escape_rows: Vec<u32>,
        escapes: Vec<Escape>,
    ) -> Result<Self> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| invalid(format!("{rows} x {cols} overflows")))?;
        if !cols.is_multiple_of(INDICES_PER_WORD) {
            return Err(invalid(format!(
                "cols = {cols} must be a multiple of {INDICES_PER_WORD}"
            )));
        }
        check_base(base)?;
        if indices.len() != n / INDICES_PER_WORD || raw.len() != n {
            return Err(invalid(format!(
                "{} index words and {} raw bytes for {rows} x {cols} (expected {} and {n})",
                indices.len(),
                raw.len(),
                n / INDICES_PER_WORD
            )));
        }
        if escape_rows.len() != rows + 1
            || escape_rows.first() != Some(&0)
            || escape_rows.last().map(|&e| e as usize) != Some(escapes.len())
            || escape_rows.windows(2).any(|w| w[0] > w[1])
        {
            return Err(invalid(format!(
                "escape row offsets must be {} non-decreasing entries from 0 to {}",
                rows + 1,
                escapes.len()
            )));
        }
        let m = IndexedMatrix {
            rows,
            cols,
            base,
            indices,
            raw,
            escape_rows,
            escapes,
        };
        for r in 0..rows {
            let mut prev: Option<u32> = None;
            for e in m.row_escapes(r) {
                if e.col as usize >= cols || prev.is_some_and(|p| e.col <= p) {
                    return Err(invalid(format!(
                        "row {r}: escape column {} out of order or >= cols = {cols}",
                        e.col
                    )));
                }
                prev = Some(e.col);
                let at = r * cols + e.col as usize;
                if m.index(at) != 0 || m.raw[at] != 0 {
                    return Err(invalid(format!(
                        "row {r}, column {}: an escape's dense slot must hold index 0 and raw \
                         byte 0",
                        e.col
                    )));
                }
            }
        }
        Ok(m)
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The window base: index `i` stands for exponent `base + i`.
    pub fn base(&self) -> u8 {
        self.base
    }

    /// The matrix in the GPU layout (`wgsl/lib/indexed16.wgsl`), `u32` words, 12 bits per
    /// weight. Needs `cols` a multiple of [`GPU_UNIT`].
    ///
    /// Each **octet** (8 consecutive weights, pairs `p = 0..4` of weights `2p, 2p + 1`) is three
    /// words `A, B, C`. A pair's **target** is a word of two bf16-like halves, the low weight in
    /// bits 0..16: sign at bit 15, 4-bit index at 7..11, mantissa at 0..7 (mask
    /// [`PAIR_FIELDS`]); bits 11..15 of each half are **spare**. `A`, `B`, `C` are the targets
    /// of pairs 0, 1, 2 with pair 3 in their spare bits: `A`'s hold its two indices, `B`'s the
    /// mantissa bits 0..4 of its two weights, `C`'s bits 4..7 of the mantissas (at 11..14) and
    /// the signs (at 14). So pairs 0-2 come out with one AND/OR each, pair 3 with four shifts.
    ///
    /// A **unit** is 2 octets (16 weights, one thread's share of an iteration); a row's units
    /// are grouped in **tiles** of up to 32 (one per thread), and a tile of `m` units stores
    /// the `m` units' `A` words (as `vec2`: octet `o` in component `o`), then their `B` words,
    /// then their `C` words, so that each of a warp's three loads is contiguous.
    pub fn gpu_words(&self) -> Result<Vec<u32>> {
        if !self.cols.is_multiple_of(GPU_UNIT) {
            return Err(invalid(format!(
                "the GPU layout needs cols a multiple of {GPU_UNIT}, got {}",
                self.cols
            )));
        }
        // a weight's half-word target: its 16-bit pattern with the index as the exponent
        let half = |n: usize| u32::from(join(self.index(n), self.raw[n]));
        let units = self.cols / GPU_UNIT;
        let mut out = vec![0u32; self.rows * self.cols * 3 / 8];
        for r in 0..self.rows {
            for u in 0..units {
                let t0 = u - u % 32;
                let m = (units - t0).min(32);
                // vec2 index of the unit's A words
                let a = (r * units + t0) * 3 + (u - t0);
                for o in 0..2 {
                    let n = r * self.cols + u * GPU_UNIT + 8 * o;
                    let target = |p: usize| half(n + 2 * p) | (half(n + 2 * p + 1) << 16);
                    let t3 = target(3);
                    let spare = |v: u32| ((v & 0xF) << 11) | (((v >> 16) & 0xF) << 27);
                    let idx3 = spare((t3 >> 7) & 0x000F_000F);
                    let mant_lo3 = spare(t3 & 0x000F_000F);
                    let mant_hi3 = spare(((t3 >> 4) & 0x0007_0007) | ((t3 >> 12) & 0x0008_0008));
                    out[2 * a + o] = target(0) | idx3;
                    out[2 * (a + m) + o] = target(1) | mant_lo3;
                    out[2 * (a + 2 * m) + o] = target(2) | mant_hi3;
                }
            }
        }
        Ok(out)
    }

    /// The bf16 value of an escape's dense slot (index 0, raw byte 0): `2^(base - 127)`.
    pub fn escape_slot_value(&self) -> f32 {
        f32::from_bits(u32::from(self.base) << 23)
    }

    /// The 4-bit indices, eight per word, row-major.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// The raw bytes (sign, 7 mantissa bits), row-major; 0 at escapes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Row offsets into [`Self::escapes`] (`rows + 1` entries).
    pub fn escape_rows(&self) -> &[u32] {
        &self.escape_rows
    }

    /// All escapes, by row, then column.
    pub fn escapes(&self) -> &[Escape] {
        &self.escapes
    }

    /// The escapes of row `r`.
    pub fn row_escapes(&self, r: usize) -> &[Escape] {
        &self.escapes[self.escape_rows[r] as usize..self.escape_rows[r + 1] as usize]
    }

    /// The 4-bit index of weight `n` (row-major position).
    pub fn index(&self, n: usize) -> u8 {
        ((self.indices[n / INDICES_PER_WORD] >> (4 * (n % INDICES_PER_WORD))) & 0xF) as u8
    }

    /// Fraction of weights that are escapes (0 for an empty matrix).
    pub fn escape_rate(&self) -> f64 {
        self.escapes.len() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Bytes of the form: indices, raw bytes, escape offsets and pairs (8 bytes each), and
    /// one byte of window base.
    pub fn total_bytes(&self) -> usize {
        form_bytes(self.raw.len(), self.rows, self.escapes.len())
    }

    /// Bits per weight, everything included.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.total_bytes() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// The bf16 bit patterns, row-major, exactly as given.
    pub fn decode(&self) -> Vec<u16> {
        let mut out: Vec<u16> = (0..self.rows * self.cols)
            .map(|n| join(self.base + self.index(n), self.raw[n]))
            .collect();
        for r in 0..self.rows {
            for e in self.row_escapes(r) {
                out[r * self.cols + e.col as usize] = e.bits;
            }
        }
        out
    }
}

fn check_base(base: u8) -> Result<()> {
    if !(MIN_BASE..=MAX_BASE).contains(&base) {
        return Err(invalid(format!(
            "window base {base} outside {MIN_BASE}..={MAX_BASE}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    #[test]
    fn window_holds_the_most_values() {
        // exponents 100 x1, 120 x1, 127 x3, 135 x2: only the window from 120 holds 6
        let v = [
            2f32.powi(-27),
            2f32.powi(-7),
            1.0,
            1.5,
            1.25,
            256.0,
            384.0,
            0.0,
        ]
        .map(bf16);
        assert_eq!(window_base(&v), 120);
        // exponents 100 x1, 127 x3: the windows from 112 to 127 hold 3, the smallest wins
        let v = [2f32.powi(-27), 1.0, 1.5, 1.25, 0.0].map(bf16);
        assert_eq!(window_base(&v), 112);
        // the zero exponent never counts, nor does 255
        assert_eq!(window_base(&[0, 0, 0x7F80, 0x7FC0]), MIN_BASE);
        assert_eq!(window_base(&[0x7F00; 3]), MAX_BASE);
        assert_eq!(window_base(&[]), MIN_BASE);
    }

    #[test]
    fn more_than_fifteen_exponents_escape_and_round_trip() {
        // 2^-20 .. 2^19 with both signs: 40 exponents, 25 of them escapes
        let v: Vec<u16> = (0..40)
            .flat_map(|e| {
                let x = 2f32.powi(e - 20) * 1.5;
                [bf16(x), bf16(-x)]
            })
            .chain([
                0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x8003, 0x7F7F,
            ])
            .collect();
        let m = IndexedMatrix::from_bf16(&v, 8, 11).unwrap_err();
        assert!(m.to_string().contains("multiple of 8"), "{m}");
        let m = IndexedMatrix::from_bf16(&v, 11, 8).unwrap();
        assert_eq!(m.decode(), v);
        // every exponent outside the window is an escape
        let b = m.base();
        let expect = v
            .iter()
            .filter(|&&h| !(b..b + 16).contains(&symbol(h)))
            .count();
        assert_eq!(m.escapes().len(), expect);
        assert!(expect >= 24 * 2 + 8, "{expect}");
        for r in 0..m.rows() {
            for e in m.row_escapes(r) {
                assert_eq!(v[r * 8 + e.col as usize], e.bits);
            }
        }
    }

    #[test]
    fn sizes_are_exact() {
        let v = vec![bf16(0.25); 4 * 16];
        let m = IndexedMatrix::from_bf16(&v, 4, 16).unwrap();
        assert_eq!(m.escapes().len(), 0);
        assert_eq!(m.total_bytes(), 4 * 8 + 64 + 4 * 5 + 1);
        assert_eq!(m.decode(), v);
    }

    /// Rebuilds every weight the way the kernels do (two per word) from the GPU layout.
    #[test]
    fn gpu_layout_rebuilds_pairs_of_weights() {
        // 3 rows of 560: units of 16 weights, 35 per row, a full tile and a partial one
        let (rows, cols) = (3, 560);
        let v: Vec<u16> = (0..rows * cols)
            .map(|i| bf16((i as f32 * 0.37).sin() * 0.02 * if i % 41 == 0 { 1e-9 } else { 1.0 }))
            .collect();
        let m = IndexedMatrix::from_bf16(&v, rows, cols).unwrap();
        assert!(!m.escapes().is_empty());
        assert!(IndexedMatrix::from_bf16(&v[..3 * 24], 3, 24)
            .unwrap()
            .gpu_words()
            .is_err());
        let w = m.gpu_words().unwrap();
        assert_eq!(w.len(), rows * cols * 12 / 32);
        let base2 = (u32::from(m.base()) << 7) | (u32::from(m.base()) << 23);
        let true_pair = |p: u32| ((p & 0x0780_0780) + base2) | (p & 0x807F_807F);
        let units = cols / GPU_UNIT;
        for r in 0..rows {
            for u in 0..units {
                let t0 = u - u % 32;
                let mt = (units - t0).min(32);
                let a = (r * units + t0) * 3 + (u - t0);
                for o in 0..2 {
                    let (aw, bw, cw) = (w[2 * a + o], w[2 * (a + mt) + o], w[2 * (a + 2 * mt) + o]);
                    let p3 = ((aw >> 4) & 0x0780_0780)
                        | ((bw >> 11) & 0x000F_000F)
                        | ((cw >> 7) & 0x0070_0070)
                        | ((cw << 1) & 0x8000_8000);
                    let pairs = [aw & PAIR_FIELDS, bw & PAIR_FIELDS, cw & PAIR_FIELDS, p3];
                    for (p, &pw) in pairs.iter().enumerate() {
                        let t = true_pair(pw);
                        for (k, got) in [t as u16, (t >> 16) as u16].into_iter().enumerate() {
                            let col = u * GPU_UNIT + 8 * o + 2 * p + k;
                            let escape = m.row_escapes(r).iter().any(|e| e.col as usize == col);
                            let want = if escape {
                                join(m.base(), 0)
                            } else {
                                v[r * cols + col]
                            };
                            assert_eq!(got, want, "row {r} col {col}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn indexed_size_matches_the_built_form() {
        let v: Vec<u16> = (0..40 * 64)
            .map(|i| bf16(((i * 7919) % 2000) as f32 * 1e-5 * if i % 3 == 0 { 1e-4 } else { 1.0 }))
            .collect();
        let m = IndexedMatrix::from_bf16(&v, 40, 64).unwrap();
        assert!(!m.escapes().is_empty());
        assert_eq!(indexed_size(&v, 40), (m.total_bytes(), m.escapes().len()));
    }

    #[test]
    fn empty_matrices() {
        for (r, c) in [(0, 8), (3, 0), (0, 0)] {
            let m = IndexedMatrix::from_bf16(&[], r, c).unwrap();
            assert_eq!(m.decode(), Vec::<u16>::new());
            assert_eq!(m.escape_rows().len(), r + 1);
            assert_eq!(m.escape_rate(), 0.0);
        }
    }

    #[test]
    fn from_parts_rejects_broken_invariants() {
        let v: Vec<u16> = (0..64).map(|i| bf16(2f32.powi(i % 20 - 10))).collect();
        let m = IndexedMatrix::from_bf16(&v, 4, 16).unwrap();
        assert!(!m.escapes().is_empty());
        let parts = |m: &IndexedMatrix| {
            (
                m.base,
                m.indices.clone(),
                m.raw.clone(),
                m.escape_rows.clone(),
                m.escapes.clone(),
            )
        };
        let (t, i, r, er, e) = parts(&m);
        assert_eq!(
            IndexedMatrix::from_parts(4, 16, t, i.clone(), r.clone(), er.clone(), e.clone())
                .unwrap(),
            m
        );
        let err = |t, i, r, er, e| {
            IndexedMatrix::from_parts(4, 16, t, i, r, er, e)
                .unwrap_err()
                .to_string()
        };
        assert!(err(0, i.clone(), r.clone(), er.clone(), e.clone()).contains("window base"));
        assert!(err(240, i.clone(), r.clone(), er.clone(), e.clone()).contains("window base"));
        assert!(err(t, i[1..].to_vec(), r.clone(), er.clone(), e.clone()).contains("index words"));
        let mut er2 = er.clone();
        er2[1] = er2[4] + 1;
        assert!(err(t, i.clone(), r.clone(), er2, e.clone()).contains("offsets"));
        let mut e2 = e.clone();
        e2[0].col = 16;
        assert!(err(t, i.clone(), r.clone(), er.clone(), e2).contains("out of order"));
        // an escape whose dense slot is not (index 0, raw 0) would be corrected wrongly
        let c = e[0].col as usize;
        let row = er.iter().rposition(|&o| o as usize == 0).unwrap();
        let mut r2 = r.clone();
        r2[row * 16 + c] = 1;
        assert!(err(t, i, r2, er, e).contains("dense slot"));
    }

    #[test]
    fn from_lossless_matches_the_bits() {
        let v: Vec<u16> = (0..32 * 64)
            .map(|i| bf16(((i * 7919) % 1000) as f32 * 1e-4 - 0.05))
            .collect();
        let coded =
            crate::lossless::encode(&v, 32, 64, HalfType::BF16, &Default::default()).unwrap();
        let m = IndexedMatrix::from_lossless(&coded).unwrap();
        assert_eq!(m, IndexedMatrix::from_bf16(&v, 32, 64).unwrap());
        assert_eq!(m.decode(), v);
    }
}
