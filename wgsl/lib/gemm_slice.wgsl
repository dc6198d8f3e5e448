// Shared by the batched kernels (rans_gemm.wgsl, rans_gemm_blocked.wgsl, qgemm.wgsl): the
// multiply of a slice of dequantized weights (`wbuf`, one vec4 per column, at `wslot(column)`:
// the workgroup's 4 matrix rows) with activation rows of `X`. Uses the importing kernel's `P` (xs4, kparts),
// `X`, `wbuf` and `WG`. (qgemm.wgsl keeps its rows in four scalars and four accumulators
// instead of row_share and add_slice: written with them it ran up to 16% slower on an H200
// at some shapes, and as the baseline it keeps its faster form.)
//
// The 128 invocations share the activation rows: invocation lid owns rows
// lid / P.kparts + j * (WG / P.kparts), j < 4, of its workgroup's block and the columns part,
// part + kparts, ... of every slice (part = lid % kparts). With few rows (M <= 128 the host
// sets kparts = 128 / M rounded to a power of two, at most 32) every invocation still works:
// with kparts = 1, as before, a row of 8 activations kept 8 of 128 invocations busy and
// each walked all 64 columns of a slice alone.

// An invocation's share of its workgroup's block of activation rows (from m_lo): rows
// m0 + j rstride, j < 4, and the columns part, part + kparts, ... of every slice.
struct RowShare {
    m0: u32,
    rstride: u32,
    part: u32,
}

fn row_share(lid: u32, m_lo: u32) -> RowShare {
    return RowShare(m_lo + lid / P.kparts, WG / P.kparts, lid % P.kparts);
}

// The slot of `wbuf` holding column `col` (0..256) of a slice: component c = col % 4 of the
// columns' vec4s in a run of 64, so that the kparts invocations sharing a row, which read
// consecutive vec4 columns i of the activations, read consecutive slots (wbuf[4 i + c] put
// their reads 64 bytes apart, several to a bank), and a lane writing columns 8 l .. 8 l + 7
// writes slots 32 bytes from its neighbours' instead of 128.
fn wslot(col: u32) -> u32 {
    return ((col & 3u) << 6u) | (col >> 2u);
}

fn dot_slice(m: u32, k4: u32, n4: u32, part: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let xb = m * P.xs4 + k4;
    for (var i = part; i < n4; i += P.kparts) {
        let xv = X[xb + i];
        acc += wbuf[i] * xv.x + wbuf[64u + i] * xv.y
            + wbuf[128u + i] * xv.z + wbuf[192u + i] * xv.w;
    }
    return acc;
}

// The sum of v over the kparts invocations sharing lid's rows, in the invocation with part 0
// (the others get partial garbage), through wbuf[0 .. 128): every invocation of the workgroup
// calls it together, when wbuf is no longer read (after a barrier). v itself when kparts = 1.
fn sum_parts(v: vec4<f32>, lid: u32, part: u32) -> vec4<f32> {
    if (P.kparts == 1u) {
        return v;
    }
    wbuf[lid] = v;
    workgroupBarrier();
    var s = vec4<f32>(0.0);
    if (part == 0u) {
        for (var p = 0u; p < P.kparts; p++) {
            s += wbuf[lid + p];
        }
    }
    workgroupBarrier();
    return s;
}

// Adds the products of the slice (n4 vec4 columns from column k4) to acc[j] for the
// invocation's activation rows below m_hi.
fn add_slice(acc: ptr<function, array<vec4<f32>, 4>>, rs: RowShare, m_hi: u32, k4: u32, n4: u32) {
    for (var j = 0u; j < 4u; j++) {
        let m = rs.m0 + j * rs.rstride;
        if (m < m_hi) {
            (*acc)[j] += dot_slice(m, k4, n4, rs.part);
        }
    }
}
