//! The chunk decoder (FORMAT.md section 4).

use super::table::{SlotEntry, SlotTable};
use super::{CodecError, LANES};

/// The lower bound of a normalised state, `2^16`.
pub(crate) const L: u32 = 1 << 16;

/// Where a chunk sits, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct ChunkCtx {
    pub tile: usize,
    pub chunk: usize,
    pub first_row: usize,
}

/// Renormalises lanes `0..x.len()` with bounds-checked reads (tail path and partial steps).
#[inline(never)]
fn renorm_checked(
    x: &mut [u32],
    words: &[u16],
    p: &mut usize,
    ctx: ChunkCtx,
    row: usize,
) -> Result<(), CodecError> {
    for xl in x.iter_mut() {
        if *xl < L {
            let Some(&w) = words.get(*p) else {
                return Err(CodecError::StreamOverrun {
                    tile: ctx.tile,
                    chunk: ctx.chunk,
                    byte_offset: 2 * *p as u64,
                    row,
                });
            };
            *xl = (*xl << 16) | u32::from(w);
            *p += 1;
        }
    }
    Ok(())
}

/// Decodes and renormalises one full step (32 active lanes) whose renormalisation words all
/// lie in `win`; returns the number of words consumed.
///
/// Decode and renormalisation are fused per lane: lane `l`'s renormalisation depends only on
/// its own state, so reading in ascending lane order as FORMAT.md section 4 requires is the
/// same as decoding all lanes first. The read is branch-free: `win[k]` is loaded for every
/// lane and kept only if the lane needs it (`k <= l < 32`, so the index is in bounds).
#[inline(always)]
fn step_full<E: SlotEntry, const N: u32>(
    x: &mut [u32; LANES],
    o: &mut [u8; LANES],
    tab: &[E],
    tmask: usize,
    win: &[u16; LANES],
) -> usize {
    let mask = (1u32 << N) - 1;
    let mut k = 0usize;
    // Unrolled by 4 lanes; the body is the per-lane decode + branch-free renormalisation.
    for q in 0..LANES / 4 {
        for l in 4 * q..4 * q + 4 {
            let xl = x[l];
            let e = tab[(xl & mask) as usize & tmask];
            o[l] = e.sym();
            let y = e.freq() * (xl >> N) + e.bias();
            let need = u32::from(y < L);
            let m = need.wrapping_neg();
            debug_assert!(k <= l);
            // SAFETY: `k` counts the lanes before `l` that took a word, so `k <= l < LANES`
            // and the index is inside the 32-word window.
            let w = u32::from(unsafe { *win.get_unchecked(k) });
            x[l] = (((y << 16) | w) & m) | (y & !m);
            k += need as usize;
        }
    }
    k
}

/// Decodes one chunk of `out.len() / syms_per_row` rows into `out` (coded symbols, row-major).
///
/// `words[start..end]` is the chunk's word range; `states` its 32 initial states, each already
/// checked to lie in `[2^16, 2^32)`; `table` is built from a frequency table accepted by
/// `check_freqs`, so every slot maps to a symbol of non-zero frequency. `N` is the precision.
///
/// Never panics and never reads outside `words[start..end]`: the fast path reads a whole 32-word
/// window that it has checked to lie inside the range (one check per step); near the end of the
/// range the checked path takes over.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decode_chunk_impl<E: SlotEntry, const N: u32>(
    table: &SlotTable<E>,
    states: &[u32],
    words: &[u16],
    start: usize,
    end: usize,
    out: &mut [u8],
    syms_per_row: usize,
    ctx: ChunkCtx,
) -> Result<(), CodecError> {
    const { assert!(N >= 8 && N <= 16) };
    let mask = (1u32 << N) - 1;
    let tab: &[E] = &table.entries;
    let tmask = (1usize << N) - 1;
    // Lets the compiler drop the bounds checks of `tab[slot & tmask]`.
    assert_eq!(tab.len(), tmask + 1);
    assert!(N <= E::MAX_PRECISION);
    let mut x: [u32; LANES] = states.try_into().expect("32 states per chunk");
    let words = &words[..end];
    let mut p = start;
    if syms_per_row == 0 {
        return Ok(());
    }
    for (ri, row) in out.chunks_exact_mut(syms_per_row).enumerate() {
        let mut steps = row.chunks_exact_mut(LANES);
        for o in &mut steps {
            let o: &mut [u8; LANES] = o.try_into().unwrap();
            if let Some(win) = words.get(p..p + LANES) {
                p += step_full::<E, N>(&mut x, o, tab, tmask, win.try_into().unwrap());
            } else {
                for l in 0..LANES {
                    let e = tab[(x[l] & mask) as usize & tmask];
                    o[l] = e.sym();
                    x[l] = e.freq() * (x[l] >> N) + e.bias();
                }
                renorm_checked(&mut x, words, &mut p, ctx, ctx.first_row + ri)?;
            }
        }
        let rem = steps.into_remainder();
        if !rem.is_empty() {
            let act = rem.len();
            for (l, o) in rem.iter_mut().enumerate() {
                let e = tab[(x[l] & mask) as usize & tmask];
                *o = e.sym();
                x[l] = e.freq() * (x[l] >> N) + e.bias();
            }
            renorm_checked(&mut x[..act], words, &mut p, ctx, ctx.first_row + ri)?;
        }
    }
    if p != end {
        return Err(CodecError::TrailingWords {
            tile: ctx.tile,
            chunk: ctx.chunk,
            unread: (end - p) as u64,
            byte_offset: 2 * p as u64,
        });
    }
    if let Some((lane, &state)) = x.iter().enumerate().find(|(_, &s)| s != L) {
        return Err(CodecError::BadFinalState {
            tile: ctx.tile,
            chunk: ctx.chunk,
            lane,
            state,
        });
    }
    Ok(())
}

/// [`decode_chunk_impl`] compiled for BMI2 (three-operand shifts save a register copy per
/// shift in the inner loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
#[allow(clippy::too_many_arguments)]
fn decode_chunk_bmi2<E: SlotEntry, const N: u32>(
    table: &SlotTable<E>,
    states: &[u32],
    words: &[u16],
    start: usize,
    end: usize,
    out: &mut [u8],
    syms_per_row: usize,
    ctx: ChunkCtx,
) -> Result<(), CodecError> {
    decode_chunk_impl::<E, N>(table, states, words, start, end, out, syms_per_row, ctx)
}

/// Decodes one chunk (see [`decode_chunk_impl`]), with the fastest code path the CPU supports.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_chunk<E: SlotEntry, const N: u32>(
    table: &SlotTable<E>,
    states: &[u32],
    words: &[u16],
    start: usize,
    end: usize,
    out: &mut [u8],
    syms_per_row: usize,
    ctx: ChunkCtx,
) -> Result<(), CodecError> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU supports BMI2 (checked just above).
        return unsafe {
            decode_chunk_bmi2::<E, N>(table, states, words, start, end, out, syms_per_row, ctx)
        };
    }
    decode_chunk_impl::<E, N>(table, states, words, start, end, out, syms_per_row, ctx)
}
