//! Fuzz input layout, shared by the fuzz target and the corpus replay test.
//!
//! byte 0: flags (bit 0: verify checksums); bytes 1..13: six little-endian `u16` element
//! counts for header, freqs, states, offsets, words, crc; then the elements, little-endian, in
//! that order. Missing bytes read as zero.
#![allow(dead_code)]

use ecq::rans::EncodedMatrix;

/// The parts of one fuzz input.
pub struct Parts {
    pub verify: bool,
    pub header: Vec<u32>,
    pub freqs: Vec<u16>,
    pub states: Vec<u32>,
    pub offsets: Vec<u32>,
    pub words: Vec<u16>,
    pub crc: Vec<u32>,
}

struct Reader<'a> {
    d: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.d.get(self.p).copied().unwrap_or(0);
        self.p += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// Splits fuzz bytes into parts.
pub fn split(data: &[u8]) -> Parts {
    let mut r = Reader { d: data, p: 0 };
    let verify = r.byte() & 1 == 1;
    let n: Vec<usize> = (0..6).map(|_| r.u16() as usize).collect();
    let header = (0..n[0]).map(|_| r.u32()).collect();
    let freqs = (0..n[1]).map(|_| r.u16()).collect();
    let states = (0..n[2]).map(|_| r.u32()).collect();
    let offsets = (0..n[3]).map(|_| r.u32()).collect();
    let words = (0..n[4]).map(|_| r.u16()).collect();
    let crc = (0..n[5]).map(|_| r.u32()).collect();
    Parts {
        verify,
        header,
        freqs,
        states,
        offsets,
        words,
        crc,
    }
}

/// The inverse of [`split`] (for writing seeds).
pub fn join(p: &Parts) -> Vec<u8> {
    let mut out = vec![u8::from(p.verify)];
    for n in [
        p.header.len(),
        p.freqs.len(),
        p.states.len(),
        p.offsets.len(),
        p.words.len(),
        p.crc.len(),
    ] {
        out.extend_from_slice(&(n as u16).to_le_bytes());
    }
    p.header
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    p.freqs
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    p.states
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    p.offsets
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    p.words
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    p.crc
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// What the fuzz target does with one input: load, then exercise every decode path. Returns
/// whether the matrix loaded and decoded without error.
pub fn run(data: &[u8]) -> bool {
    let p = split(data);
    let Ok(m) = EncodedMatrix::from_parts(&p.header, p.freqs, p.states, p.offsets, p.words, p.crc)
    else {
        return false;
    };
    // Keep allocations bounded for the fuzzer: skip matrices over 2^24 weights (the format
    // allows up to MAX_WEIGHTS; large all-zero matrices code to nothing).
    if m.weights() > 1 << 24 {
        return false;
    }
    let mut out = vec![0u8; m.weights()];
    let ok = if p.verify {
        m.decode_symbols_into(&mut out).is_ok()
    } else {
        m.decode_symbols_unverified_into(&mut out).is_ok()
    };
    let _ = m.verify_checksums();
    let _ = m.decode_packed();
    let _ = m.decode_coded_symbols();
    let _ = m.entropy_bound_bits();
    ok
}
