// Shared by the kernels that quantize activations to 8 bits (qgemv4_dp4a.wgsl in registers,
// quantize_x8.wgsl once per vector for the fused GEMV's 8-bit activations): one piece of 16
// activations, scale d = max|x| / 127 and x ~ d q with q = round(x * 127 / max|x|) (round
// half to even; 0 for an all-zero piece), so that every kernel gets the same integers for the
// same piece. `sum` is the exact f32 sum the bias term takes.

struct X8Piece {
    q0: vec4<i32>,  // activations 0..3 of the piece
    q1: vec4<i32>,  // 4..7
    q2: vec4<i32>,  // 8..11
    q3: vec4<i32>,  // 12..15
    d: f32,
    sum: f32,
}

fn x8_piece(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> X8Piece {
    let m4 = max(max(abs(x0), abs(x1)), max(abs(x2), abs(x3)));
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    let inv = select(0.0, 127.0 / m, m > 0.0);
    var r: X8Piece;
    r.q0 = vec4<i32>(round(x0 * inv));
    r.q1 = vec4<i32>(round(x1 * inv));
    r.q2 = vec4<i32>(round(x2 * inv));
    r.q3 = vec4<i32>(round(x3 * inv));
    r.d = m / 127.0;
    r.sum = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
    return r;
}

// A piece's integers in qgemv4_dp4a.wgsl's byte order: the even and odd nibbles of its two
// weight words, activations (0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15).
fn x8_plain_words(p: X8Piece) -> vec4<u32> {
    return vec4<u32>(
        pack4xI8(vec4<i32>(p.q0.x, p.q0.z, p.q1.x, p.q1.z)),
        pack4xI8(vec4<i32>(p.q0.y, p.q0.w, p.q1.y, p.q1.w)),
        pack4xI8(vec4<i32>(p.q2.x, p.q2.z, p.q3.x, p.q3.z)),
        pack4xI8(vec4<i32>(p.q2.y, p.q2.w, p.q3.y, p.q3.w)),
    );
}
