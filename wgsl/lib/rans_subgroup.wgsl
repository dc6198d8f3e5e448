// Shared by the subgroup rANS kernels that `// import: rans_subgroup` (appended to them at load
// time, like rans_table.wgsl): the pieces of the decode step that do not depend on what the
// kernel does with the symbols. Uses the importing kernel's `P` (rows, chunk_rows, n_words),
// `states`, `offsets` and `words`, and `L` and the error bits of rans_consts.wgsl (ERR_BAD_STATE,
// ERR_OFFSETS, ERR_TABLE, ERR_SUBGROUP, ERR_OVER_READ, ERR_FINAL_STATE, ERR_UNCONSUMED). Every
// function must be called by the 32 lanes of a subgroup together.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

// One plane of 64 words from word index w0 (even): lane l gets the u32 holding words w0 + 2l
// and w0 + 2l + 1; zero past the buffer.
fn plane_at(w0: u32, l: u32) -> u32 {
    let i = (w0 >> 1u) + l;
    var v = 0u;
    if (i < arrayLength(&words)) {
        v = words[i];
    }
    return v;
}

// A chunk's start: steps and first row (T steps per row), stream range [p, end), this lane's
// state x and the error bits found so far. steps, r0, p and end are the same in every lane;
// they are broadcast from the first lane so the compiler sees that the step loop and its
// branches are uniform (it then keeps no per-step active-lane bookkeeping).
struct ChunkStart {
    steps: u32,
    r0: u32,
    p: u32,
    end: u32,
    x: u32,
    err: u32,
}

fn chunk_start(chunk: u32, valid: bool, l: u32, T: u32, bad_table: bool, sg_size: u32) -> ChunkStart {
    var steps = 0u;
    var r0 = 0u;
    var x = L;
    var p = 0u;
    var end = 0u;
    var err = 0u;
    if (valid) {
        r0 = chunk * P.chunk_rows;
        steps = min(P.chunk_rows, P.rows - r0) * T;
        x = states[chunk * 32u + l];
        if (x < L) { err |= ERR_BAD_STATE; }
        p = offsets[chunk];
        end = offsets[chunk + 1u];
        if (end > P.n_words || p > end) {
            err |= ERR_OFFSETS;
            end = min(end, P.n_words);
            p = min(p, end);
        }
        if (bad_table) { err |= ERR_TABLE; }
        if (sg_size != 32u) { err |= ERR_SUBGROUP; }
    }
    return ChunkStart(
        subgroupBroadcastFirst(steps),
        subgroupBroadcastFirst(r0),
        subgroupBroadcastFirst(p),
        subgroupBroadcastFirst(end),
        x,
        err,
    );
}

// The renormalisation read of one step by lane l: a lane with `need` takes word p + (lanes
// below it that need one), at offset rel < rel0 + 32 from `base` (rel0 = p - base < 96), so
// from u32 rel / 2 of planes a and b (u32 i < 32 in lane i of plane a, the others in lane
// i - 32 of plane b). The step's 32 words lie in u32s rel0 / 2 .. rel0 / 2 + 16, which sit in
// 17 different lanes, so each lane can pick beforehand the plane its u32 in that range is in
// (a if l >= rel0 / 2, i.e. rel0 <= 2 l + 1, else b) and one shuffle of the picked values
// serves all (BENCHMARKS.md issue 5, step 74). Returns (this lane's word in the high 16 bits,
// the low ones undefined; words the step consumes): the word is moved up instead of down so
// that `renormalised` merges it into the state with one funnel shift.
fn renorm_word(need: bool, rel0: u32, pa: u32, pb: u32, ltmask: u32, l: u32) -> vec2<u32> {
    let mine = select(pb, pa, rel0 <= 2u * l + 1u);
    let mask = subgroupBallot(need).x;
    let rel = rel0 + countOneBits(mask & ltmask);
    let v = subgroupShuffle(mine, (rel >> 1u) & 31u);
    return vec2<u32>(v << ((~rel & 1u) << 4u), countOneBits(mask));
}

// The state after a step: xd, or with `need` xd with the word renorm_word returned (in the
// high 16 bits of `word_hi`) shifted in below it.
fn renormalised(xd: u32, word_hi: u32, need: bool) -> u32 {
    return select(xd, (xd << 16u) | (word_hi >> 16u), need);
}

// Error bits of a chunk whose decoding ended with state x and stream position p: a state
// other than 2^16, or a stream not read exactly to its end (p > end: a read past the chunk;
// only lane 0 reports the position, which all lanes share).
fn chunk_end_flags(x: u32, p: u32, end: u32, l: u32) -> u32 {
    var e = 0u;
    if (x != L) { e |= ERR_FINAL_STATE; }
    if (l == 0u) {
        if (p > end) {
            e |= ERR_OVER_READ;
        } else if (p != end) {
            e |= ERR_UNCONSUMED;
        }
    }
    return e;
}
