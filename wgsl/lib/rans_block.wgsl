// Shared by the blocked subgroup rANS kernels (rans_gemv_blocked.wgsl,
// rans_decode_blocked.wgsl): the decode of a block of steps by a group of 32 lanes. Uses the
// importing kernel's `PREC`, `words` and `BRANCH_FREE_PLANES` (see block_plane_at), `L` of
// rans_consts.wgsl, `decode_slot` of its table library (rans_table_sg.wgsl or rans_table_byte.wgsl), and
// `plane_at` / `renorm_word` of rans_subgroup.wgsl. Every function must be called by the 32
// lanes of a subgroup together.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

// What a lane carries from step to step: its rANS state, the group's stream position and the
// four word planes around it (see plane_at; invariant p - base < 64 at the start of every
// even step of a block, < 96 at odd steps: a step reads words below p - base + 32, so
// within planes a and b).
struct BlockDecoder {
    x: u32,
    p: u32,
    base: u32,
    pa: u32,
    pb: u32,
    pc: u32,
    pd: u32,
}

// One plane of 64 words (plane_at of rans_subgroup.wgsl). With the importing kernel's
// `BRANCH_FREE_PLANES` true it has no branch: the index is clamped to the buffer (the clamp,
// not naga, keeps the read in range), so past it a plane holds the buffer's last words
// instead of zeros. Only the planes ahead of the chunk's end are ever past it, and a
// step reads their words only when the stream is corrupt (p > end, which the kernels report),
// so the values there do not matter. The branch made every plane move compile to a second
// branch with its own copies of the register moves: without it the decode kernel runs 4-13%
// faster on an H200, but the fused kernel up to 5% slower (BENCHMARKS.md issue 5, step 31),
// so each kernel says which it takes.
fn block_plane_at(w0: u32, l: u32) -> u32 {
    if (BRANCH_FREE_PLANES) {
        return words[min((w0 >> 1u) + l, arrayLength(&words) - 1u)];
    }
    return plane_at(w0, l);
}

// A decoder for lane l starting with state x at stream position p (the same in all lanes).
fn block_decoder(x: u32, p: u32, l: u32) -> BlockDecoder {
    let base = p & ~1u;
    return BlockDecoder(
        x,
        p,
        base,
        block_plane_at(base, l),
        block_plane_at(base + 64u, l),
        block_plane_at(base + 128u, l),
        block_plane_at(base + 192u, l),
    );
}

// Symbol i (< 8) of a block, in byte i % 4 of .x (i < 4) or .y.
fn block_symbol(sym: u32, i: u32) -> vec2<u32> {
    let v = sym << (8u * (i & 3u));
    return select(vec2<u32>(0u, v), vec2<u32>(v, 0u), i < 4u);
}

// After an odd step of a block: once the position relative to the planes has left plane a
// (rel >= 64), the planes move on by one and the next plane d is loaded. Returns the new rel.
fn block_move_planes(d: ptr<function, BlockDecoder>, rel: u32, l: u32) -> u32 {
    var r = rel;
    if (r >= 64u) {
        (*d).pa = (*d).pb;
        (*d).pb = (*d).pc;
        (*d).pc = (*d).pd;
        (*d).base += 64u;
        r -= 64u;
        (*d).pd = block_plane_at((*d).base + 192u, l);
    }
    return r;
}

// Decodes `steps` (<= 8, even) steps: symbol i of the block in byte i % 4 of .x (i < 4) or .y.
// The stream words come from the planes, moved on by one plane when 64 words are used up,
// checked after every second step only: the check and the plane moves it compiles to (about
// 9 instructions) are paid half as often. `stream` false is a diagnostic build's (wrong
// symbols): renormalisation shifts in a constant instead of the stream's next word, so the
// step costs what it would with a free word supply (BENCHMARKS.md issue 5, step 54).
fn decode_block(
    d: ptr<function, BlockDecoder>,
    steps: u32,
    l: u32,
    ltmask: u32,
    stream: bool,
) -> vec2<u32> {
    var s = vec2<u32>(0u);
    // (the position relative to the planes, carried through the block instead of p so that a
    // step does not subtract base again; p is written back once)
    var rel = (*d).p - (*d).base;
    for (var i = 0u; i < steps; i++) {
        let dec = decode_slot((*d).x, PREC);
        let xd = dec.x;
        let need = xd < L;
        var rw = vec2<u32>(0x5A5A0000u, 0u);
        if (stream) {
            rw = renorm_word(need, rel, (*d).pa, (*d).pb, ltmask, l);
        }
        (*d).x = renormalised(xd, rw.x, need);
        rel += rw.y;
        if (stream && (i & 1u) == 1u) {
            rel = block_move_planes(d, rel, l);
        }
        s |= block_symbol(dec.y, i);
    }
    (*d).p = (*d).base + rel;
    return s;
}
