//! GPU rANS decode (`wgsl/rans_decode.wgsl`) against the CPU reference codec, bit for bit, and
//! corrupt streams reported per chunk without hanging.
//!
//! Runs on any adapter wgpu finds (lavapipe in CI); prints `SKIPPED: no GPU adapter` and passes
//! when there is none. Output buffers are poisoned (0xFFFFFFFF) by the library before each run.

mod gpu_common;

use ecq::gpu::{
    error_bits, CodedMatrixRef, DecodeOutput, FusedVariant, GpuContext, GpuError, QuantParamsRef,
};
use ecq::rans::{encode, EncodeOptions, EncodedMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use gpu_common::ctx;

#[derive(Clone, Copy, Debug)]
enum Dist {
    /// Roughly Gaussian around the middle of the range (like real quantized weights).
    Skewed,
    /// Uniform over all values.
    Flat,
    /// A single value everywhere.
    Single,
}

fn symbols(rng: &mut ChaCha8Rng, n: usize, bits: u32, dist: Dist) -> Vec<u8> {
    let max = (1u32 << bits) - 1;
    let single = rng.random_range(0..=max) as u8;
    (0..n)
        .map(|_| match dist {
            Dist::Flat => rng.random_range(0..=max) as u8,
            Dist::Single => single,
            Dist::Skewed => {
                // sum of 4 uniforms: bell-shaped
                let s: f64 = (0..4).map(|_| rng.random::<f64>()).sum::<f64>() / 4.0;
                let c = (s - 0.5) * 2.5 + 0.5;
                (c.clamp(0.0, 1.0) * max as f64).round() as u8
            }
        })
        .collect()
}

/// Scales and biases of 1 for every group of 64 weights (`ones`: one per group), for the tests
/// where the weights' values do not matter, only whether the stream is reported corrupt.
fn unit_quant(ones: &[f32]) -> QuantParamsRef<'_> {
    QuantParamsRef {
        group_size: 64,
        scales: ones,
        biases: ones,
        side: None,
    }
}

struct Case {
    rows: usize,
    cols: usize,
    bits: u32,
    wps: Option<u32>,
    precision: u32,
    chunk_symbols: usize,
    tile_chunks: usize,
    dist: Dist,
}

/// `m` decoded to packed words by kernel `v` (panics naming `label` and the kernel on error).
fn packed_with(
    ctx: &GpuContext,
    m: &ecq::gpu::GpuCodedMatrix,
    v: FusedVariant,
    label: &str,
) -> Vec<u32> {
    m.decode_with(
        ctx.device(),
        ctx.queue(),
        ctx.registry(),
        DecodeOutput::Packed,
        Some(v),
    )
    .unwrap_or_else(|e| panic!("{label} {v:?}: GPU decode: {e}"))
}

/// A split matrix `m` (uploaded from `s`, the weights `q`) decoded on the GPU equals the CPU
/// decode: packed by the workgroup kernel and, where it runs, both blocked ones, by the default
/// kernel, and one byte per weight; the subgroup kernel refuses split matrices.
fn check_split_decodes(
    ctx: &GpuContext,
    m: &ecq::gpu::GpuCodedMatrix,
    s: &ecq::rans::SplitMatrix,
    q: &[u8],
    label: &str,
) {
    let r = m.decode_with(
        ctx.device(),
        ctx.queue(),
        ctx.registry(),
        DecodeOutput::Packed,
        Some(FusedVariant::Subgroup),
    );
    assert!(matches!(r, Err(GpuError::Unsupported(_))), "{label}: {r:?}");
    let want = s.decode_packed().unwrap();
    let mut kernels = vec![FusedVariant::Workgroup];
    if m.decode_blocked_supported(ctx.registry(), DecodeOutput::Packed) {
        kernels.extend([FusedVariant::Blocked, FusedVariant::BlockedCompact]);
    }
    for v in kernels {
        let got = packed_with(ctx, m, v, label);
        assert!(got == want, "{label} {v:?}: GPU and CPU decodes differ");
    }
    assert_eq!(ctx.decode_packed(m).unwrap(), want, "{label} default");
    check_lanes_decodes(ctx, m, &want, label);
    let bytes = ctx.decode_symbols(m).unwrap();
    assert!(bytes == q, "{label}: byte-per-weight decode differs");
    // the workgroup kernel building its table (the default loads the host's)
    let mut built = ctx.upload_split(s, None).unwrap();
    built.set_tables_in_memory(false);
    let got = packed_with(ctx, &built, FusedVariant::Workgroup, label);
    assert!(
        got == want,
        "{label} Workgroup, tables built: GPU and CPU decodes differ"
    );
}

/// A window split or byte-symbol matrix `m` decoded by the lanes kernel
/// (`rans_decode_lanes.wgsl`) at every group width W equals the CPU decode `want` where W
/// divides the device's subgroup size; where it does not, every chunk is reported (the
/// kernel's layout check), never a wrong result.
fn check_lanes_decodes(ctx: &GpuContext, m: &ecq::gpu::GpuCodedMatrix, want: &[u32], label: &str) {
    for (w, fits, reg) in gpu_common::lanes_registries() {
        assert_eq!(
            m.decode_lanes_width(reg, DecodeOutput::Packed),
            Some(*w),
            "{label}: the lanes kernel should take this matrix"
        );
        let r = m.decode_with(
            ctx.device(),
            ctx.queue(),
            reg,
            DecodeOutput::Packed,
            Some(FusedVariant::Workgroup),
        );
        if *fits {
            let got = r.unwrap_or_else(|e| panic!("{label} lanes W={w}: GPU decode: {e}"));
            assert!(
                got == want,
                "{label} lanes W={w}: GPU and CPU decodes differ"
            );
        } else {
            gpu_common::assert_every_chunk_flagged(r, m.n_chunks(), &format!("{label} W={w}"));
        }
    }
}

fn encode_case(c: &Case, seed: u64) -> (Vec<u8>, EncodedMatrix) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let q = symbols(&mut rng, c.rows * c.cols, c.bits, c.dist);
    let opts = EncodeOptions {
        precision: c.precision,
        weights_per_symbol: c.wps,
        chunk_symbols: c.chunk_symbols,
        tile_chunks: c.tile_chunks,
        min_chunks: 0,
        group_size: 0,
    };
    let enc = encode(&q, c.rows, c.cols, c.bits, &opts).expect("encode");
    (q, enc)
}

fn check_case(ctx: &GpuContext, c: &Case, seed: u64) {
    let (q, enc) = encode_case(c, seed);
    let label = format!(
        "{}x{} b{} w{} n{} chunk_rows {} tile_chunks {} {:?}",
        c.rows,
        c.cols,
        c.bits,
        enc.weights_per_symbol(),
        c.precision,
        enc.chunk_rows(),
        enc.tile_chunks(),
        c.dist
    );
    let m = ctx
        .upload_coded(CodedMatrixRef::from(&enc), None)
        .unwrap_or_else(|e| panic!("{label}: upload: {e}"));
    let packed = ctx
        .decode_packed(&m)
        .unwrap_or_else(|e| panic!("{label}: GPU decode_packed: {e}"));
    let cpu_packed = enc.decode_packed().expect("CPU decode_packed");
    assert_eq!(packed.len(), cpu_packed.len(), "{label}");
    if let Some(i) = (0..packed.len()).find(|&i| packed[i] != cpu_packed[i]) {
        panic!(
            "{label}: packed word {i} (row {}) GPU {:#010x} CPU {:#010x}",
            i / (c.cols * c.bits as usize / 32),
            packed[i],
            cpu_packed[i]
        );
    }
    // both packed-output kernels explicitly (decode_packed above runs the one the registry
    // picks)
    for v in [
        FusedVariant::Workgroup,
        FusedVariant::Subgroup,
        FusedVariant::Blocked,
        FusedVariant::BlockedCompact,
    ] {
        let supported = match v {
            FusedVariant::Subgroup => {
                m.decode_subgroup_supported(ctx.registry(), DecodeOutput::Packed)
            }
            FusedVariant::Blocked | FusedVariant::BlockedCompact => {
                m.decode_blocked_supported(ctx.registry(), DecodeOutput::Packed)
            }
            _ => true,
        };
        if !supported {
            continue;
        }
        let got = packed_with(ctx, &m, v, &label);
        assert!(got == cpu_packed, "{label} {v:?}: packed words differ");
    }
    // byte symbols with the host's tables: the lanes kernel at every group width
    if c.bits * enc.weights_per_symbol() == 8 && (8..=11).contains(&c.precision) {
        check_lanes_decodes(ctx, &m, &cpu_packed, &label);
    }
    // the workgroup kernel building its table (the default loads the host's, for 8..=11
    // probability bits)
    let mut built = ctx.upload_coded(CodedMatrixRef::from(&enc), None).unwrap();
    built.set_tables_in_memory(false);
    let got = packed_with(ctx, &built, FusedVariant::Workgroup, &label);
    assert!(
        got == cpu_packed,
        "{label} Workgroup, tables built: packed words differ"
    );
    if c.cols.is_multiple_of(4) {
        let syms = ctx
            .decode_symbols(&m)
            .unwrap_or_else(|e| panic!("{label}: GPU decode_symbols: {e}"));
        assert_eq!(syms.len(), q.len(), "{label}");
        if let Some(i) = (0..q.len()).find(|&i| syms[i] != q[i]) {
            panic!("{label}: weight {i} GPU {} original {}", syms[i], q[i]);
        }
        assert_eq!(enc.decode_symbols().unwrap(), syms, "{label}");
    }
}

#[test]
fn decode_matches_cpu_all_bits_and_symbol_widths() {
    let Some(ctx) = ctx() else { return };
    let mut seed = 1;
    for bits in 1..=8u32 {
        for wps in [1u32, 2, 4] {
            if bits * wps > 8 {
                continue;
            }
            for (rows, cols) in [(1usize, 32usize), (7, 64), (33, 96)] {
                for dist in [Dist::Skewed, Dist::Flat, Dist::Single] {
                    let c = Case {
                        rows,
                        cols,
                        bits,
                        wps: Some(wps),
                        precision: 11,
                        chunk_symbols: 64,
                        tile_chunks: 3,
                        dist,
                    };
                    check_case(ctx, &c, seed);
                    seed += 1;
                }
            }
        }
    }
}

#[test]
fn decode_matches_cpu_mlx_shapes() {
    let Some(ctx) = ctx() else { return };
    let mut seed = 1000;
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for (rows, cols) in [(3usize, 64usize), (17, 1024), (2, 16384), (129, 256)] {
            let c = Case {
                rows,
                cols,
                bits,
                wps: None,
                precision: 11,
                chunk_symbols: 16384,
                tile_chunks: 4,
                dist: Dist::Skewed,
            };
            check_case(ctx, &c, seed);
            seed += 1;
        }
    }
}

#[test]
fn decode_tiny_chunks_and_tiles_and_precisions() {
    let Some(ctx) = ctx() else { return };
    let mut seed = 2000;
    for precision in [8u32, 10, 11, 12, 15] {
        for (chunk_symbols, tile_chunks) in [(1usize, 1usize), (32, 2), (100, 5), (1 << 20, 1)] {
            for bits in [2u32, 4, 5] {
                let c = Case {
                    rows: 19,
                    cols: 128,
                    bits,
                    wps: None,
                    precision,
                    chunk_symbols,
                    tile_chunks,
                    dist: if seed % 2 == 0 {
                        Dist::Skewed
                    } else {
                        Dist::Flat
                    },
                };
                check_case(ctx, &c, seed);
                seed += 1;
            }
        }
    }
}

/// Layouts the blocked decode kernel takes (byte symbols, rows of 8k whole steps): every
/// symbol distribution including single-symbol tiles, chunks of one row up to many, several
/// precisions; `check_case` runs it next to the other kernels where the adapter allows.
#[test]
fn decode_blocked_layouts() {
    let Some(ctx) = ctx() else { return };
    let mut seed = 3000;
    for (bits, wps, cols) in [
        (4u32, 2u32, 512usize),
        (4, 2, 14336),
        (8, 1, 256),
        (2, 4, 2048),
    ] {
        for dist in [Dist::Skewed, Dist::Flat, Dist::Single] {
            for (precision, chunk_symbols) in [(11u32, 32usize), (11, 16384), (8, 4096)] {
                let c = Case {
                    rows: 9,
                    cols,
                    bits,
                    wps: Some(wps),
                    precision,
                    chunk_symbols,
                    tile_chunks: 2,
                    dist,
                };
                check_case(ctx, &c, seed);
                seed += 1;
            }
        }
    }
}

/// The blocked kernels (decode and fused GEMV) on corrupt streams give what the subgroup
/// kernels give: the same first bad chunk, or, where a flipped word decodes cleanly, the same
/// output.
#[test]
fn blocked_kernels_agree_with_subgroup_kernels_on_corrupt_streams() {
    let Some(ctx) = ctx() else { return };
    if !ctx.registry().subgroups32() {
        eprintln!("NOTE: no 32-wide subgroups on this adapter; the blocked kernels are checked on the device runs");
        return;
    }
    let c = Case {
        rows: 24,
        cols: 512,
        bits: 4,
        wps: None,
        precision: 11,
        chunk_symbols: 256 * 3,
        tile_chunks: 2,
        dist: Dist::Skewed,
    };
    let (_, enc) = encode_case(&c, 11);
    assert_eq!(enc.chunk_rows(), 3);
    let a = enc.alphabet_size();
    let mut rng = ChaCha8Rng::seed_from_u64(78);
    let mut cases: Vec<(String, Parts)> = Vec::new();
    let mut p = Parts::of(&enc);
    p.states[5 * 32 + 9] = 1234;
    cases.push(("state below 2^16".into(), p));
    let mut p = Parts::of(&enc);
    p.states[2 * 32 + 31] ^= 0x0010_0000;
    cases.push(("wrong state".into(), p));
    let mut p = Parts::of(&enc);
    p.freqs[a + 3] = p.freqs[a + 3].wrapping_add(1);
    cases.push(("table sum".into(), p));
    let mut p = Parts::of(&enc);
    p.offsets[5] -= 1;
    cases.push(("short chunk".into(), p));
    let mut p = Parts::of(&enc);
    let last = p.offsets.len() - 1;
    p.offsets[last] += 7;
    cases.push(("offsets past the end".into(), p));
    for t in 0..12 {
        let mut p = Parts::of(&enc);
        let chunk = rng.random_range(0..enc.n_chunks());
        let i = rng.random_range(p.offsets[chunk] as usize..p.offsets[chunk + 1] as usize);
        p.words[i] ^= 1 << rng.random_range(0..16);
        cases.push((format!("flip {t} in chunk {chunk}"), p));
    }
    let gs = 64usize;
    let scales = vec![0.5f32; c.rows * c.cols / gs];
    let biases = vec![-1.0f32; c.rows * c.cols / gs];
    let x: Vec<f32> = (0..c.cols).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let first_bad = |r: Result<Vec<u32>, GpuError>| match r {
        Ok(v) => Ok(v),
        Err(GpuError::CorruptStream { chunk, .. }) => Err(chunk),
        Err(e) => panic!("unexpected error {e}"),
    };
    for (label, p) in &cases {
        let m = ctx
            .upload_coded(
                p.as_ref(),
                Some(QuantParamsRef {
                    group_size: gs as u32,
                    scales: &scales,
                    biases: &biases,
                    side: None,
                }),
            )
            .expect("upload");
        let dec = |v| {
            first_bad(m.decode_with(
                ctx.device(),
                ctx.queue(),
                ctx.registry(),
                DecodeOutput::Packed,
                Some(v),
            ))
        };
        for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
            assert_eq!(dec(v), dec(FusedVariant::Subgroup), "{label}: decode {v:?}");
        }
        let gemv = |v| {
            first_bad(
                m.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
                    .map(|y| y.iter().map(|f| f.to_bits()).collect()),
            )
        };
        let s = gemv(FusedVariant::Subgroup);
        for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
            let b = gemv(v);
            match (&b, &s) {
                (Err(cb), Err(cs)) => assert_eq!(cb, cs, "{label}: fused GEMV {v:?}"),
                // same symbols (checked by decode); sums may round differently
                (Ok(_), Ok(_)) => {}
                _ => panic!("{label}: fused GEMV {v:?} {b:?} vs subgroup {s:?}"),
            }
        }
    }
}

#[test]
fn decode_empty_matrix() {
    let Some(ctx) = ctx() else { return };
    let enc = encode(&[], 0, 64, 4, &EncodeOptions::default()).unwrap();
    let m = ctx.upload_coded(CodedMatrixRef::from(&enc), None).unwrap();
    assert!(ctx.decode_packed(&m).unwrap().is_empty());
    assert!(ctx.decode_symbols(&m).unwrap().is_empty());
}

/// Owned copy of a coded matrix's tensors, to corrupt.
struct Parts {
    rows: usize,
    cols: usize,
    bits: u32,
    wps: u32,
    precision: u32,
    chunk_rows: usize,
    tile_chunks: usize,
    freqs: Vec<u16>,
    states: Vec<u32>,
    offsets: Vec<u32>,
    words: Vec<u16>,
}

impl Parts {
    fn of(e: &EncodedMatrix) -> Self {
        Parts {
            rows: e.rows(),
            cols: e.cols(),
            bits: e.bits(),
            wps: e.weights_per_symbol(),
            precision: e.precision(),
            chunk_rows: e.chunk_rows(),
            tile_chunks: e.tile_chunks(),
            freqs: e.freqs().to_vec(),
            states: e.states().to_vec(),
            offsets: e.offsets().to_vec(),
            words: e.words().to_vec(),
        }
    }

    fn as_ref(&self) -> CodedMatrixRef<'_> {
        CodedMatrixRef {
            rows: self.rows,
            cols: self.cols,
            bits: self.bits,
            weights_per_symbol: self.wps,
            precision: self.precision,
            chunk_rows: self.chunk_rows,
            tile_chunks: self.tile_chunks,
            freqs: &self.freqs,
            states: &self.states,
            offsets: &self.offsets,
            words: &self.words,
        }
    }

    /// Decodes on the GPU; returns (first bad chunk, its flags, number of bad chunks).
    fn gpu_errors(&self, ctx: &GpuContext) -> Option<(usize, u32, usize)> {
        let m = ctx.upload_coded(self.as_ref(), None).expect("upload");
        let r1 = ctx.decode_packed(&m);
        let r2 = ctx.decode_symbols(&m).map(|_| ());
        match (r1, r2) {
            (Ok(_), Ok(())) => None,
            (
                Err(GpuError::CorruptStream {
                    chunk,
                    flags,
                    bad_chunks,
                    tile,
                    ..
                }),
                Err(GpuError::CorruptStream { chunk: c2, .. }),
            ) => {
                assert_eq!(chunk, c2);
                assert_eq!(tile, chunk / self.tile_chunks);
                Some((chunk, flags, bad_chunks))
            }
            (a, b) => panic!("unexpected results {a:?} / {b:?}"),
        }
    }
}

fn corrupt_base(seed: u64) -> EncodedMatrix {
    let c = Case {
        rows: 24,
        cols: 256,
        bits: 4,
        wps: None,
        precision: 11,
        chunk_symbols: 128 * 3,
        tile_chunks: 2,
        dist: Dist::Skewed,
    };
    let (_, enc) = encode_case(&c, seed);
    assert_eq!(enc.chunk_rows(), 3);
    assert_eq!(enc.n_chunks(), 8);
    enc
}

/// A flipped word is a structural error (final state, over-read, unconsumed words) in almost
/// every case, but rANS decoding can resynchronise after a small state change, so some flips
/// decode "cleanly" to wrong symbols: only the tile CRC (verified on the host) catches those.
/// The GPU must agree with the CPU decoder run without checksum verification: same chunk
/// reported, or the same output.
#[test]
fn corrupt_flipped_word_agrees_with_cpu_structural_checks() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(7);
    let header = enc.header();
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let mut detected = 0;
    let trials = 24;
    for _ in 0..trials {
        let mut p = Parts::of(&enc);
        let chunk = rng.random_range(0..enc.n_chunks());
        let (a, b) = (p.offsets[chunk] as usize, p.offsets[chunk + 1] as usize);
        assert!(b > a);
        let i = rng.random_range(a..b);
        p.words[i] ^= 1 << rng.random_range(0..16);
        let cpu = EncodedMatrix::from_parts(
            &header,
            p.freqs.clone(),
            p.states.clone(),
            p.offsets.clone(),
            p.words.clone(),
            enc.crc().to_vec(),
        )
        .expect("parts");
        let mut cpu_out = vec![0u8; enc.rows() * enc.cols()];
        let cpu_res = cpu.decode_symbols_unverified_into(&mut cpu_out);
        assert!(cpu.decode_symbols().is_err(), "CRC must catch every flip");
        match p.gpu_errors(ctx) {
            Some((bad, flags, n)) => {
                assert!(
                    cpu_res.is_err(),
                    "GPU flagged chunk {bad} ({flags:#x}), CPU did not"
                );
                assert_eq!((bad, n), (chunk, 1), "flags {flags:#x}");
                detected += 1;
            }
            None => {
                assert!(cpu_res.is_ok(), "CPU flagged {cpu_res:?}, GPU did not");
                let m = ctx.upload_coded(p.as_ref(), None).unwrap();
                assert_eq!(ctx.decode_symbols(&m).unwrap(), cpu_out);
            }
        }
    }
    assert!(
        detected >= trials / 2,
        "only {detected} of {trials} flips detected structurally"
    );
}

#[test]
fn corrupt_states_are_reported() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(8);
    // a state below 2^16
    let mut p = Parts::of(&enc);
    p.states[5 * 32 + 9] = 1234;
    let (bad, flags, n) = p.gpu_errors(ctx).expect("bad state not detected");
    assert_eq!((bad, n), (5, 1));
    assert_ne!(flags & error_bits::BAD_STATE, 0, "{flags:#x}");
    // a valid-looking but wrong state
    let mut p = Parts::of(&enc);
    p.states[2 * 32 + 31] ^= 0x0010_0000;
    let (bad, _, n) = p.gpu_errors(ctx).expect("wrong state not detected");
    assert_eq!((bad, n), (2, 1));
}

#[test]
fn corrupt_frequency_tables_are_reported() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(9);
    let a = enc.alphabet_size();
    // sum != 2^n: every chunk of tile 1 (chunks 2, 3) fails with TABLE
    let mut p = Parts::of(&enc);
    p.freqs[a + 3] = p.freqs[a + 3].wrapping_add(1);
    let (bad, flags, n) = p.gpu_errors(ctx).expect("bad table sum not detected");
    assert_eq!((bad, n), (2, 2));
    assert_ne!(flags & error_bits::TABLE, 0, "{flags:#x}");
    // an all-zero table: every slot is a zero-frequency slot
    let mut p = Parts::of(&enc);
    for f in &mut p.freqs[3 * a..4 * a] {
        *f = 0;
    }
    // (kernels that build their tables meet zero-frequency slots; those that load the host's
    // tables, e.g. the lanes decode, get the tile's flag for a sum that is not 2^n)
    let (bad, flags, _) = p.gpu_errors(ctx).expect("zero table not detected");
    assert_eq!(bad, 6);
    assert_ne!(
        flags & (error_bits::ZERO_FREQ | error_bits::TABLE),
        0,
        "{flags:#x}"
    );
    // the most frequent symbol's frequency moved to another symbol (sum kept): decodes wrong
    let mut p = Parts::of(&enc);
    let t = &mut p.freqs[0..a];
    let top = (0..a).max_by_key(|&s| t[s]).unwrap();
    let other = (top + 1) % a;
    t[other] += t[top] - 1;
    t[top] = 1;
    let (bad, _, _) = p.gpu_errors(ctx).expect("moved frequency not detected");
    assert!(bad < 2);
}

#[test]
fn corrupt_offsets_are_reported() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(10);
    // chunk 4 loses its last word: over-read / wrong final state in chunk 4, and chunk 5
    // starts one word early
    let mut p = Parts::of(&enc);
    p.offsets[5] -= 1;
    let (bad, _, _) = p.gpu_errors(ctx).expect("short chunk not detected");
    assert_eq!(bad, 4);
    // offsets past the end of the stream
    let mut p = Parts::of(&enc);
    let nw = p.words.len() as u32;
    p.offsets[7] = nw + 1000;
    let (bad, flags, _) = p.gpu_errors(ctx).expect("offset past end not detected");
    assert_eq!(bad, 6);
    let _ = flags;
    // decreasing offsets
    let mut p = Parts::of(&enc);
    p.offsets[3] = p.offsets[2].saturating_sub(5);
    let (bad, _, _) = p.gpu_errors(ctx).expect("decreasing offsets not detected");
    assert!(bad == 2 || bad == 3, "{bad}");
}

#[test]
fn random_garbage_terminates_with_errors() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(11);
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    for _ in 0..3 {
        let mut p = Parts::of(&enc);
        for w in &mut p.words {
            *w = rng.random();
        }
        for s in &mut p.states {
            *s = rng.random::<u32>() | 0x0001_0000;
        }
        let (_, _, n) = p.gpu_errors(ctx).expect("garbage not detected");
        assert!(n >= 1);
    }
}

#[test]
fn inconsistent_geometry_is_rejected_before_upload() {
    let Some(ctx) = ctx() else { return };
    let enc = corrupt_base(12);
    let mut p = Parts::of(&enc);
    p.states.pop();
    assert!(matches!(
        ctx.upload_coded(p.as_ref(), None),
        Err(GpuError::InvalidInput(_))
    ));
    let mut p = Parts::of(&enc);
    p.wps = 3;
    assert!(matches!(
        ctx.upload_coded(p.as_ref(), None),
        Err(GpuError::InvalidInput(_))
    ));
}

/// Split matrices (coded high 2 bits, raw low 2 bits of 4-bit weights): the blocked and the
/// workgroup decode kernels merge the raw bits into MLX packed 4-bit words (and the workgroup
/// kernel into a byte per weight), bit for bit what the CPU's `SplitMatrix` gives, at every
/// symbol distribution, chunks of one step up to many rows, several precisions, and rows the
/// blocked kernel cannot take (10 steps); the subgroup kernel refuses them.
#[test]
fn decode_split_low_bits() {
    let Some(ctx) = ctx() else { return };
    let shapes = [(7, 1024), (7, 1280), (7, 4096), (7, 14336)];
    split_decode_sweep(ctx, ecq::rans::SplitOrder::Rows, &shapes, 7000, "split");
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "split decode: the blocked kernel needs 32-wide subgroups; the workgroup kernel was checked",
        );
    }
}

/// Every shape of `shapes` (rows, cols) at every symbol distribution, chunks of one step up to
/// many rows and two precisions, coded as 4-bit weights split 2 + 2 in `order`: uploaded with
/// the matrix's size and [`check_split_decodes`]. Seeds count up from `seed`.
fn split_decode_sweep(
    ctx: &GpuContext,
    order: ecq::rans::SplitOrder,
    shapes: &[(usize, usize)],
    seed: u64,
    what: &str,
) {
    let chunkings = [(11, 32), (11, 4096), (9, 16384)];
    split_sweep(ctx, shapes, &chunkings, seed, 2, |q, rows, cols, opts| {
        let s = ecq::rans::SplitMatrix::encode_ordered(q, rows, cols, 4, 2, opts, order).unwrap();
        (s, what.to_string())
    });
}

/// Every shape of `shapes` (rows, cols) at every symbol distribution and every (precision,
/// chunk symbols) of `chunkings` (tiles of two chunks), 4-bit weights coded by `encode` (the
/// split matrix and a label) with `low_bits` raw bits a weight: uploaded with the matrix's
/// size and [`check_split_decodes`]. Seeds count up from `seed`.
fn split_sweep(
    ctx: &GpuContext,
    shapes: &[(usize, usize)],
    chunkings: &[(u32, usize)],
    mut seed: u64,
    low_bits: u32,
    encode: impl Fn(&[u8], usize, usize, &EncodeOptions) -> (ecq::rans::SplitMatrix, String),
) {
    for &(rows, cols) in shapes {
        for dist in [Dist::Skewed, Dist::Flat, Dist::Single] {
            for &(precision, chunk_symbols) in chunkings {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                seed += 1;
                let q = symbols(&mut rng, rows * cols, 4, dist);
                let opts = EncodeOptions {
                    precision,
                    chunk_symbols,
                    tile_chunks: 2,
                    ..Default::default()
                };
                let (s, what) = encode(&q, rows, cols, &opts);
                let label =
                    format!("{what} {rows}x{cols} {dist:?} n{precision} chunk {chunk_symbols}");
                let m = ctx.upload_split(&s, None).unwrap();
                assert_eq!(
                    (m.rows(), m.cols(), m.bits(), m.low_bits()),
                    (rows, cols, 4, low_bits),
                    "{label}"
                );
                check_split_decodes(ctx, &m, &s, &q, &label);
            }
        }
    }
}

/// Split matrices in row-pair order (`SplitOrder::RowPairs`) decoded by the blocked kernel,
/// both tables, and the workgroup kernel (lavapipe in CI), packed and one byte per weight,
/// equal the CPU decode word for word: peaked, flat and single-symbol weights, chunks from one
/// step to many pairs. The subgroup kernel refuses the order.
#[test]
fn decode_row_pairs() {
    let Some(ctx) = ctx() else { return };
    let shapes = [(2, 512), (6, 1536), (10, 4096), (4, 14336)];
    split_decode_sweep(
        ctx,
        ecq::rans::SplitOrder::RowPairs,
        &shapes,
        7500,
        "row pairs",
    );
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "row-pair decode: the blocked kernel needs 32-wide subgroups; the workgroup kernel was checked",
        );
    }
}

/// Window splits (`SplitMatrix::encode_window`: one coded flag a weight, eight to a symbol,
/// three raw bits), row-major and in row pairs, decoded by the workgroup kernel (every device,
/// lavapipe in CI), the lanes kernel at group widths 4, 8, 16 and 32 (those the device's
/// subgroups are not a multiple of must report every chunk instead) and, with 32-wide
/// subgroups, both blocked ones (tables in memory: the window
/// kernel), packed and one byte per weight, equal the CPU decode word for word: peaked, flat and
/// single-symbol weights, chunks from one step to many rows, two precisions, and window starts
/// picked by the encoder and set to 13 (its nibbles wrap past 15). The subgroup kernel refuses
/// them; coded rows that are not whole 1024-weight blocks are refused by name.
#[test]
fn decode_window_splits() {
    use ecq::rans::{SplitMatrix, SplitOrder};
    let Some(ctx) = ctx() else { return };
    let chunkings = [(11, 32), (11, 512), (9, 4096)];
    for (seed, order, shapes) in [
        (7700, SplitOrder::Rows, [(3, 1024), (5, 2048), (2, 4096)]),
        (
            7800,
            SplitOrder::RowPairs,
            [(2, 1024), (6, 2048), (4, 4096)],
        ),
    ] {
        for (start, seed) in [(None, seed), (Some(13u8), seed + 50)] {
            split_sweep(ctx, &shapes, &chunkings, seed, 3, |q, rows, cols, opts| {
                let s = match start {
                    None => SplitMatrix::encode_window(q, rows, cols, opts, order),
                    Some(w) => SplitMatrix::encode_window_at(q, rows, cols, w, opts, order),
                }
                .unwrap();
                let what = format!("window {order:?} start {:?}", s.window());
                (s, what)
            });
        }
    }
    // rows of 96 weights: not whole blocks of raw words
    let q = vec![3u8; 4 * 96];
    let s =
        SplitMatrix::encode_window(&q, 4, 96, &EncodeOptions::default(), SplitOrder::Rows).unwrap();
    let m = ctx.upload_split(&s, None).unwrap();
    for r in [
        ctx.decode_packed(&m).map(drop),
        ctx.decode_symbols(&m).map(drop),
    ] {
        assert!(
            matches!(&r, Err(GpuError::Unsupported(e)) if e.contains("1024-weight blocks")),
            "{r:?}"
        );
    }
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "window decode: the blocked kernels need 32-wide subgroups; the workgroup kernel was checked",
        );
    }
    if gpu_common::lanes_registries().is_empty() {
        gpu_common::announce_unsupported(
            "window decode: the lanes kernels need Features::SUBGROUP; the workgroup kernel was checked",
        );
    }
}

/// Uploads of split matrices the GPU cannot run, or whose raw low bits do not fit the matrix,
/// are refused before anything runs.
#[test]
fn split_uploads_checked() {
    let Some(ctx) = ctx() else { return };
    let q = vec![5u8; 4 * 128];
    let opts = EncodeOptions::default();
    // 3-bit weights split 2 + 1: the CPU codec takes it, the GPU kernels do not
    let s3 = ecq::rans::SplitMatrix::encode(&q, 4, 128, 3, 1, &opts).unwrap();
    assert!(matches!(
        ctx.upload_split(&s3, None),
        Err(GpuError::Unsupported(_))
    ));
    let s = ecq::rans::SplitMatrix::encode(&q, 4, 128, 4, 2, &opts).unwrap();
    let short = &s.low()[1..];
    let r = ecq::gpu::GpuCodedMatrix::upload_with_low_bits(
        ctx.device(),
        s.high().into(),
        2,
        short,
        None,
    );
    assert!(matches!(r, Err(GpuError::InvalidInput(_))), "{r:?}");
    let r = ecq::gpu::GpuCodedMatrix::upload_with_low_bits(
        ctx.device(),
        s.high().into(),
        0,
        s.low(),
        None,
    );
    assert!(matches!(r, Err(GpuError::InvalidInput(_))), "{r:?}");
}

/// A corrupt stream in a row-pair split matrix is reported by chunk, decoded or multiplied,
/// by whichever kernel runs it (the workgroup ones on lavapipe): the order changes where
/// symbols go, not how chunks are checked.
#[test]
fn row_pairs_corrupt_word_is_reported() {
    let Some(ctx) = ctx() else { return };
    let (rows, cols) = (8, 1024);
    let mut rng = ChaCha8Rng::seed_from_u64(78);
    let q = symbols(&mut rng, rows * cols, 4, Dist::Skewed);
    let opts = EncodeOptions {
        chunk_symbols: 512,
        tile_chunks: 2,
        group_size: 64,
        ..Default::default()
    };
    let order = ecq::rans::SplitOrder::RowPairs;
    let s = ecq::rans::SplitMatrix::encode_ordered(&q, rows, cols, 4, 2, &opts, order).unwrap();
    assert!(s.high().n_chunks() >= 3, "{}", s.high().n_chunks());
    let (high, low, low_bits, low_crc) = s.into_parts();
    // flip bits of a word in the middle of chunk 1 (the GPU does not check the tile CRCs: the
    // decode reports the damage by the states it ends in)
    let at = (high.offsets()[1] + high.offsets()[2]) as usize / 2;
    let (header, freqs, states, offsets, mut words, crc) = high.into_parts();
    words[at] ^= 0x5A5A;
    let high =
        ecq::rans::EncodedMatrix::from_parts(&header, freqs, states, offsets, words, crc).unwrap();
    let s =
        ecq::rans::SplitMatrix::from_parts_ordered(high, low, low_bits, low_crc, order).unwrap();
    let ones = vec![1.0f32; rows * cols / 64];
    let quant = unit_quant(&ones);
    let g = ctx.upload_split(&s, Some(quant)).unwrap();
    assert!(matches!(
        ctx.decode_packed(&g),
        Err(GpuError::CorruptStream { chunk: 1, .. })
    ));
    let x = vec![1.0f32; cols];
    assert!(matches!(
        ctx.gemv_coded(&g, &x),
        Err(GpuError::CorruptStream { chunk: 1, .. })
    ));
}

/// A corrupt coded part of a split matrix is reported per chunk like a whole matrix's: a state
/// below 2^16 in the second chunk, through the default decode and fused kernels (blocked with
/// 32-wide subgroups, workgroup elsewhere).
#[test]
fn split_corrupt_state_is_reported() {
    let Some(ctx) = ctx() else { return };
    let (rows, cols) = (6, 1024);
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let q = symbols(&mut rng, rows * cols, 4, Dist::Skewed);
    let opts = EncodeOptions {
        chunk_symbols: 256,
        tile_chunks: 2,
        group_size: 64,
        ..Default::default()
    };
    let s = ecq::rans::SplitMatrix::encode(&q, rows, cols, 4, 2, &opts).unwrap();
    assert!(s.high().n_chunks() >= 3);
    let mut states = s.high().states().to_vec();
    states[32 + 5] = 7;
    let m = CodedMatrixRef {
        states: &states,
        ..s.high().into()
    };
    let ones = vec![1.0f32; rows * cols / 64];
    let quant = unit_quant(&ones);
    let g =
        ecq::gpu::GpuCodedMatrix::upload_with_low_bits(ctx.device(), m, 2, s.low(), Some(quant))
            .unwrap();
    match ctx.decode_packed(&g) {
        Err(GpuError::CorruptStream { chunk, flags, .. }) => {
            assert_eq!(chunk, 1);
            assert_ne!(flags & error_bits::BAD_STATE, 0, "{flags:#x}");
        }
        r => panic!("expected a corrupt stream, got {r:?}"),
    }
    let x = vec![1.0f32; cols];
    assert!(matches!(
        ctx.gemv_coded(&g, &x),
        Err(GpuError::CorruptStream { chunk: 1, .. })
    ));
}

/// A corrupt window split (`SplitMatrix::encode_window`, the fastest GPU form) is reported by
/// chunk, never multiplied into silently wrong output: a flipped word in the middle of chunk 1,
/// or of the last chunk, row-major and in row pairs, through the GPU decode (the default kernel,
/// the workgroup one and the lanes one at every group width the device's subgroups allow,
/// packed and one byte per weight) and every fused kernel that takes
/// window splits (the workgroup one everywhere, the lanes one at every group width the
/// subgroups allow, both blocked ones with 32-wide subgroups, for one vector and for three
/// in one launch). A bad state never gets
/// that far: `EncodedMatrix::from_parts` refuses it.
#[test]
fn window_corrupt_stream_is_reported() {
    let Some(ctx) = ctx() else { return };
    let (rows, cols) = (8, 1024);
    let mut rng = ChaCha8Rng::seed_from_u64(79);
    let q = symbols(&mut rng, rows * cols, 4, Dist::Skewed);
    let opts = EncodeOptions {
        chunk_symbols: 256,
        tile_chunks: 2,
        group_size: 64,
        ..Default::default()
    };
    let ones = vec![1.0f32; rows * cols / 64];
    let quant = unit_quant(&ones);
    let x = vec![1.0f32; cols];
    let mut variants = vec![FusedVariant::Workgroup];
    if ctx.registry().subgroups32() {
        variants.extend([FusedVariant::Blocked, FusedVariant::BlockedCompact]);
    }
    for order in [ecq::rans::SplitOrder::Rows, ecq::rans::SplitOrder::RowPairs] {
        let s = ecq::rans::SplitMatrix::encode_window(&q, rows, cols, &opts, order).unwrap();
        let n = s.high().n_chunks();
        assert!(n >= 3, "{order:?}: {n} chunks");
        let start = s.window().unwrap();
        let (high, low, _, low_crc) = s.into_parts();
        let (header, freqs, states, offsets, words, crc) = high.into_parts();
        let mut bad_states = states.clone();
        bad_states[32 + 5] = 7;
        assert!(matches!(
            EncodedMatrix::from_parts(
                &header,
                freqs.clone(),
                bad_states,
                offsets.clone(),
                words.clone(),
                crc.clone()
            ),
            Err(ecq::rans::CodecError::BadInitialState { chunk: 1, .. })
        ));
        for chunk in [1, n - 1] {
            let label = format!("window {order:?}, a word of chunk {chunk} flipped");
            let mut words = words.clone();
            words[(offsets[chunk] + offsets[chunk + 1]) as usize / 2] ^= 0x5A5A;
            let high = EncodedMatrix::from_parts(
                &header,
                freqs.clone(),
                states.clone(),
                offsets.clone(),
                words,
                crc.clone(),
            )
            .unwrap();
            let s =
                ecq::rans::SplitMatrix::from_parts_window(high, low.clone(), low_crc, order, start)
                    .unwrap();
            let g = ctx.upload_split(&s, Some(quant)).unwrap();
            let expect = |what: &str, r: Result<(), GpuError>| match r {
                Err(GpuError::CorruptStream { chunk: c, .. }) => {
                    assert_eq!(c, chunk, "{label} {what}")
                }
                r => panic!("{label} {what}: expected a corrupt stream, got {r:?}"),
            };
            expect("decode", ctx.decode_packed(&g).map(drop));
            expect("byte-per-weight decode", ctx.decode_symbols(&g).map(drop));
            let r = g.decode_with(
                ctx.device(),
                ctx.queue(),
                ctx.registry(),
                DecodeOutput::Packed,
                Some(FusedVariant::Workgroup),
            );
            expect("workgroup decode", r.map(drop));
            for (w, fits, reg) in gpu_common::lanes_registries() {
                if *fits {
                    let r = g.decode_with(
                        ctx.device(),
                        ctx.queue(),
                        reg,
                        DecodeOutput::Packed,
                        Some(FusedVariant::Workgroup),
                    );
                    expect(&format!("lanes W={w} decode"), r.map(drop));
                    let r =
                        g.gemv_with(ctx.device(), ctx.queue(), reg, &x, FusedVariant::Workgroup);
                    expect(&format!("lanes W={w} GEMV"), r.map(drop));
                }
            }
            expect("default GEMV", ctx.gemv_coded(&g, &x).map(drop));
            for &v in &variants {
                let r = g.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v);
                expect(&format!("{v:?} GEMV"), r.map(drop));
                // (three vectors: one launch of the multi-vector kernel on the blocked ones)
                let x3 = [x.as_slice(), &x, &x].concat();
                let r = g.gemv_many_with(ctx.device(), ctx.queue(), ctx.registry(), &x3, 3, v);
                expect(&format!("{v:?} GEMV of 3 vectors"), r.map(drop));
            }
        }
    }
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "window split: the blocked decode and fused kernels need 32-wide subgroups; \
             the workgroup kernels' reports were checked",
        );
    }
}
