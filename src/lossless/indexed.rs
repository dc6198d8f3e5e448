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
    let n = values.len();
    // indices (4 bits), raw bytes, row offsets, escape pairs, base
    (n / 2 + n + 4 * (rows + 1) + 8 * escapes + 1, escapes)
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

    /// The raw bytes in the GPU layout (`wgsl/lib/indexed16.wgsl`). The kernels build two
    /// weights at a time as one word of two bf16 patterns, so each little-endian word of four
    /// weights holds the pair (0, 1) in bf16 sign/mantissa positions (`PAIR_RAW` =
    /// `0x807F807F`, weight 0 in the low half) and the pair (2, 3) rotated right by 8 (a left
    /// rotation by 8 puts it in those positions).
    pub fn raw_gpu_words(&self) -> Vec<u32> {
        // sign and mantissa of raw byte b in the low half of a bf16 pattern
        let half = |b: u8| (u32::from(b >> 7) << 15) | u32::from(b & 0x7F);
        self.raw
            .chunks_exact(4)
            .map(|q| {
                let p01 = half(q[0]) | (half(q[1]) << 16);
                let p23 = half(q[2]) | (half(q[3]) << 16);
                p01 | p23.rotate_right(8)
            })
            .collect()
    }

    /// The indices in the GPU layout (`wgsl/lib/indexed16.wgsl`): in each word of eight
    /// weights the pair `(2p, 2p + 1)` has its indices at bits `7..11` and `23..27` (the low
    /// exponent bits of a two-bf16 word) after the kernel's shift for pair `p`: none, left 4,
    /// right 4, rotate left 8. The encoder applies the inverse rotations; the four pairs'
    /// bits are disjoint.
    pub fn index_gpu_words(&self) -> Vec<u32> {
        let n = self.rows * self.cols;
        (0..n / INDICES_PER_WORD)
            .map(|w| {
                let pair = |p: usize| {
                    let i = w * INDICES_PER_WORD + 2 * p;
                    (u32::from(self.index(i)) << 7) | (u32::from(self.index(i + 1)) << 23)
                };
                pair(0) | pair(1).rotate_right(4) | pair(2).rotate_left(4) | pair(3).rotate_right(8)
            })
            .collect()
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
        4 * self.indices.len()
            + self.raw.len()
            + 4 * self.escape_rows.len()
            + 8 * self.escapes.len()
            + 1
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
        let v: Vec<u16> = (0..256)
            .map(|i| bf16((i as f32 * 0.37).sin() * 0.02))
            .collect();
        let m = IndexedMatrix::from_bf16(&v, 4, 64).unwrap();
        assert!(m.escapes().len() < 8);
        let (codes, raw) = (m.index_gpu_words(), m.raw_gpu_words());
        let base2 = (u32::from(m.base()) << 7) | (u32::from(m.base()) << 23);
        let pair = |c: u32, r: u32| ((c & 0x0780_0780) + base2) | (r & 0x807F_807F);
        for (h, &c) in codes.iter().enumerate() {
            let (r0, r1) = (raw[2 * h], raw[2 * h + 1]);
            let words = [
                pair(c, r0),
                pair(c << 4, r0.rotate_left(8)),
                pair(c >> 4, r1),
                pair(c.rotate_left(8), r1.rotate_left(8)),
            ];
            for (p, w) in words.iter().enumerate() {
                for (k, got) in [*w as u16, (*w >> 16) as u16].into_iter().enumerate() {
                    let n = 8 * h + 2 * p + k;
                    let escape = m
                        .row_escapes(n / 64)
                        .iter()
                        .any(|e| e.col as usize == n % 64);
                    let want = if escape { join(m.base(), 0) } else { v[n] };
                    assert_eq!(got, want, "weight {n}");
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
