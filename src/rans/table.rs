//! Frequency normalisation, decoder slot tables and encoder symbol tables.

/// Counts how often each byte value occurs (four interleaved histograms to avoid
/// store-to-load stalls on runs of equal symbols).
pub(crate) fn histogram(symbols: &[u8]) -> [u64; 256] {
    let mut h = [[0u32; 256]; 4];
    let mut total = [0u64; 256];
    // u32 partial counts: flush every 2^31 symbols at the latest.
    for block in symbols.chunks(1 << 30) {
        let mut it = block.chunks_exact(4);
        for q in &mut it {
            h[0][q[0] as usize] += 1;
            h[1][q[1] as usize] += 1;
            h[2][q[2] as usize] += 1;
            h[3][q[3] as usize] += 1;
        }
        for &s in it.remainder() {
            h[0][s as usize] += 1;
        }
        for (s, t) in total.iter_mut().enumerate() {
            *t += u64::from(h[0][s]) + u64::from(h[1][s]) + u64::from(h[2][s]) + u64::from(h[3][s]);
        }
        h = [[0u32; 256]; 4];
    }
    total
}

/// Empirical entropy in bits of a sample with these counts: `sum c * log2(N / c)`.
pub(crate) fn entropy_bits(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            c * (nf / c).log2()
        })
        .sum()
}

/// Coded size in bits of a sample with these counts under the frequencies `freqs` (sum `2^n`):
/// `sum c * log2(2^n / f)`. Infinite if a present symbol has frequency 0.
#[cfg(test)]
pub(crate) fn cost_bits(counts: &[u64], freqs: &[u16], precision: u32) -> f64 {
    let m = f64::from(1u32 << precision);
    counts
        .iter()
        .zip(freqs)
        .filter(|(&c, _)| c > 0)
        .map(|(&c, &f)| {
            if f == 0 {
                f64::INFINITY
            } else {
                c as f64 * (m / f64::from(f)).log2()
            }
        })
        .sum()
}

/// The optimal frequency table for `counts` at precision `n`.
///
/// Minimises `sum counts[s] * log2(2^n / f[s])` subject to `sum f = 2^n`, `f[s] >= 1` for every
/// present symbol and `f[s] = 0` for absent ones. The objective is separable and convex in the
/// integers `f[s]`, so a table from which no single unit transfer between two symbols improves
/// the cost is globally optimal. We start from the proportional floor and apply improving
/// transfers greedily until none is left.
///
/// Invariant: the result sums to exactly `2^n`, and `f[s] > 0` iff `counts[s] > 0`.
/// Requires `1 <= number of present symbols <= 2^n` (always true: the alphabet has at most 256
/// symbols and `n >= 8`), or all counts zero (returns all zeros).
pub(crate) fn normalize(counts: &[u64], precision: u32) -> Vec<u16> {
    let m = 1u64 << precision;
    let total: u64 = counts.iter().sum();
    let mut f = vec![0u64; counts.len()];
    if total == 0 {
        return vec![0; counts.len()];
    }
    let present = counts.iter().filter(|&&c| c > 0).count() as u64;
    assert!(present <= m, "alphabet larger than 2^precision");
    let mut sum = 0u64;
    for (fs, &c) in f.iter_mut().zip(counts) {
        if c > 0 {
            // Proportional floor, at least 1 (u128: counts can be large).
            *fs = ((u128::from(c) * u128::from(m)) / u128::from(total)).max(1) as u64;
            sum += *fs;
        }
    }
    // Marginal gain of f -> f+1 and loss of f -> f-1, in bits, cached per symbol (absent
    // symbols: gain -inf, loss +inf, so they are never picked).
    let gain_of = |c: u64, f: u64| {
        if c == 0 {
            f64::NEG_INFINITY
        } else {
            c as f64 * ((f + 1) as f64 / f as f64).log2()
        }
    };
    let loss_of = |c: u64, f: u64| {
        if c == 0 || f <= 1 {
            f64::INFINITY
        } else {
            c as f64 * (f as f64 / (f - 1) as f64).log2()
        }
    };
    let mut gain: Vec<f64> = counts
        .iter()
        .zip(&f)
        .map(|(&c, &f)| gain_of(c, f))
        .collect();
    let mut loss: Vec<f64> = counts
        .iter()
        .zip(&f)
        .map(|(&c, &f)| loss_of(c, f))
        .collect();
    let argmax = |v: &[f64]| {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best
    };
    let argmin_except = |v: &[f64], except: usize| {
        let mut best = usize::MAX;
        let mut bv = f64::INFINITY;
        for (i, &x) in v.iter().enumerate() {
            if i != except && x < bv {
                bv = x;
                best = i;
            }
        }
        best
    };
    let set = |s: usize, v: u64, f: &mut [u64], gain: &mut [f64], loss: &mut [f64]| {
        f[s] = v;
        gain[s] = gain_of(counts[s], v);
        loss[s] = loss_of(counts[s], v);
    };
    while sum < m {
        let s = argmax(&gain);
        set(s, f[s] + 1, &mut f, &mut gain, &mut loss);
        sum += 1;
    }
    while sum > m {
        // Some present symbol has f > 1 here, since sum > m >= present.
        let s = argmin_except(&loss, usize::MAX);
        set(s, f[s] - 1, &mut f, &mut gain, &mut loss);
        sum -= 1;
    }
    // Improving unit transfers. Each strictly lowers the cost; the cap is a safety net only.
    for _ in 0..(4 * m) {
        let a = argmax(&gain);
        let r = argmin_except(&loss, a);
        if r == usize::MAX || gain[a] <= loss[r] * (1.0 + 1e-12) + 1e-9 {
            break;
        }
        set(a, f[a] + 1, &mut f, &mut gain, &mut loss);
        set(r, f[r] - 1, &mut f, &mut gain, &mut loss);
    }
    debug_assert_eq!(f.iter().sum::<u64>(), m);
    debug_assert!(f.iter().zip(counts).all(|(&f, &c)| (f > 0) == (c > 0)));
    f.into_iter().map(|v| v as u16).collect()
}

/// Checks a table: `A` entries, each `<= 2^n`, summing to `2^n`.
pub(crate) fn check_freqs(freqs: &[u16], precision: u32) -> Result<(), String> {
    let m = 1u64 << precision;
    let mut sum = 0u64;
    for (s, &f) in freqs.iter().enumerate() {
        if u64::from(f) > m {
            return Err(format!("f[{s}] = {f} exceeds 2^{precision}"));
        }
        sum += u64::from(f);
    }
    if sum != m {
        return Err(format!(
            "frequencies sum to {sum}, expected 2^{precision} = {m}"
        ));
    }
    Ok(())
}

/// One decoder slot entry: symbol, frequency, and `slot - c[s]` (the bias).
pub(crate) trait SlotEntry: Copy + Default + Send + Sync {
    /// Largest precision the entry can represent.
    const MAX_PRECISION: u32;
    fn pack(sym: u8, freq: u32, bias: u32) -> Self;
    fn sym(self) -> u8;
    fn freq(self) -> u32;
    fn bias(self) -> u32;
}

/// Unpacked slot entry for any precision up to 16: each field is its own load, which costs
/// fewer instructions than shifting and masking a packed word.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub(crate) struct Slot {
    sym: u8,
    _pad: u8,
    freq: u16,
    bias: u16,
    _pad2: u16,
}

impl SlotEntry for Slot {
    const MAX_PRECISION: u32 = 15;
    #[inline(always)]
    fn pack(sym: u8, freq: u32, bias: u32) -> Self {
        debug_assert!((1..=32768).contains(&freq) && bias < freq);
        Slot {
            sym,
            _pad: 0,
            freq: freq as u16,
            bias: bias as u16,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn sym(self) -> u8 {
        self.sym
    }
    #[inline(always)]
    fn freq(self) -> u32 {
        u32::from(self.freq)
    }
    #[inline(always)]
    fn bias(self) -> u32 {
        u32::from(self.bias)
    }
}

/// Decoder slot table with exactly `2^n` entries.
pub(crate) struct SlotTable<E: SlotEntry> {
    pub(crate) entries: Box<[E]>,
}

impl<E: SlotEntry> SlotTable<E> {
    /// Builds the table. Requires a table accepted by [`check_freqs`] with `n <= E::MAX_PRECISION`.
    pub(crate) fn new(freqs: &[u16], precision: u32) -> Self {
        assert!(precision <= E::MAX_PRECISION);
        let mut entries = vec![E::default(); 1 << precision].into_boxed_slice();
        let mut c = 0usize;
        for (s, &f) in freqs.iter().enumerate() {
            for b in 0..usize::from(f) {
                entries[c + b] = E::pack(s as u8, u32::from(f), b as u32);
            }
            c += usize::from(f);
        }
        debug_assert_eq!(c, 1 << precision);
        SlotTable { entries }
    }
}

/// Encoder parameters of one symbol (ryg_rans style, with a 64-bit reciprocal).
///
/// `x / f == mulhi64(x, rcp)` for every 32-bit `x` and `2 <= f < 2^32` with
/// `rcp = ceil(2^64 / f)` (Lemire, Kaser, Kurz 2019, Theorem 1: `rcp * f - 2^64 < f <= 2^32`).
/// For `f == 1`, `rcp = 2^64 - 1` gives `x - 1` and the bias absorbs the difference.
#[derive(Clone, Copy, Default)]
pub(crate) struct EncSymbol {
    pub(crate) rcp: u64,
    /// `c[s]`, or `c[s] + 2^n - 1` when `f == 1`.
    pub(crate) bias: u32,
    /// `2^n - f`.
    pub(crate) cmpl: u32,
    /// `f << (32 - n)`: a state at or above it must emit a word before coding the symbol.
    pub(crate) thresh: u64,
}

/// Per-symbol encoder parameters for one tile.
pub(crate) fn enc_table(freqs: &[u16], precision: u32) -> [EncSymbol; 256] {
    let m = 1u32 << precision;
    let mut t = [EncSymbol::default(); 256];
    let mut c = 0u32;
    for (s, &f) in freqs.iter().enumerate() {
        let f = u32::from(f);
        if f > 0 {
            t[s] = if f == 1 {
                EncSymbol {
                    rcp: u64::MAX,
                    bias: c + m - 1,
                    cmpl: m - 1,
                    thresh: 1u64 << (32 - precision),
                }
            } else {
                EncSymbol {
                    rcp: (u128::from(u64::MAX) / u128::from(f)) as u64 + 1,
                    bias: c,
                    cmpl: m - f,
                    thresh: u64::from(f) << (32 - precision),
                }
            };
        }
        c += f;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reciprocal_is_exact() {
        for f in 2u32..=32768 {
            let t = enc_table(&[f as u16], 15);
            let rcp = t[0].rcp;
            for x in [
                0u32,
                1,
                f - 1,
                f,
                f + 1,
                65535,
                65536,
                u32::MAX,
                u32::MAX - 1,
                0x8000_0000,
            ] {
                let q = ((u128::from(x) * u128::from(rcp)) >> 64) as u32;
                assert_eq!(q, x / f, "x={x} f={f}");
            }
        }
    }

    /// Brute-force optimum for tiny alphabets.
    #[test]
    fn normalize_is_optimal() {
        let cases: &[&[u64]] = &[
            &[1, 1],
            &[100, 1],
            &[5, 3, 2],
            &[1000, 1, 1, 1],
            &[7, 0, 3, 9],
        ];
        for counts in cases {
            let n = 8;
            let m = 256u64;
            let f = normalize(counts, n);
            let cost = cost_bits(counts, &f, n);
            // Exhaustive over present symbols (at most 4).
            let present: Vec<usize> = (0..counts.len()).filter(|&s| counts[s] > 0).collect();
            let mut best = f64::INFINITY;
            let k = present.len();
            let mut idx = vec![1u64; k];
            loop {
                let s: u64 = idx[..k - 1].iter().sum();
                if s < m {
                    let mut ff = vec![0u16; counts.len()];
                    for (i, &p) in present.iter().enumerate().take(k - 1) {
                        ff[p] = idx[i] as u16;
                    }
                    ff[present[k - 1]] = (m - s) as u16;
                    best = best.min(cost_bits(counts, &ff, n));
                }
                // odometer over the first k-1
                let mut i = 0;
                loop {
                    if i + 1 >= k {
                        break;
                    }
                    idx[i] += 1;
                    if idx[i] < m {
                        break;
                    }
                    idx[i] = 1;
                    i += 1;
                }
                if i + 1 >= k {
                    break;
                }
            }
            assert!(cost <= best + 1e-9, "{counts:?}: {cost} > {best}");
        }
    }
}
