// `f16_pair` of lib/side.wgsl with `unpack2x16float`: one or two instructions, for devices
// whose shaders may use it (naga's SHADER_FLOAT16_IN_FLOAT32; `PipelineRegistry` probes it).
fn f16_pair(w: u32) -> vec2<f32> {
    return unpack2x16float(w);
}
