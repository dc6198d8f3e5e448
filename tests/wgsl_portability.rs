//! Every kernel in `wgsl/` must parse and validate with naga (what wgpu-core runs on every
//! backend) and translate to MSL (Metal, the primary target), SPIR-V (Vulkan) and HLSL (D3D12).
//! No GPU needed.

use std::path::{Path, PathBuf};

fn wgsl_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wgsl");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("wgsl/ directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no kernels found in {}", dir.display());
    files
}

/// The kernel's source as the library loads it: each `// import: NAME` line appends
/// `wgsl/lib/NAME.wgsl` (what `wgsl_with_libs!` does in src/gpu), and a kernel reading
/// (scale, bias) pairs through `lib/side.wgsl` gets the integer `f16_pair`
/// (`lib/side_f16_bits.wgsl`, what devices without `unpack2x16float` get).
fn source(path: &PathBuf) -> String {
    source_with_f16(path, "side_f16_bits")
}

/// [`source`] with the `f16_pair` library `f16_lib` for kernels that read `lib/side.wgsl`.
fn source_with_f16(path: &PathBuf, f16_lib: &str) -> String {
    let mut src = std::fs::read_to_string(path).unwrap();
    let imports: Vec<String> = src
        .lines()
        .filter_map(|l| l.strip_prefix("// import: "))
        .map(|name| name.trim().to_string())
        .collect();
    for name in imports {
        let lib = path.with_file_name("lib").join(format!("{name}.wgsl"));
        src.push('\n');
        src.push_str(
            &std::fs::read_to_string(&lib)
                .unwrap_or_else(|e| panic!("{}: import {}: {e}", path.display(), lib.display())),
        );
    }
    if src.contains("fn side(i: u32)") {
        let lib = path.with_file_name("lib").join(format!("{f16_lib}.wgsl"));
        src.push('\n');
        src.push_str(&std::fs::read_to_string(&lib).unwrap());
    }
    src
}

fn validate(path: &PathBuf) -> (naga::Module, naga::valid::ModuleInfo) {
    validate_with(path, &[])
}

/// [`validate`] with some pipeline-overridable constants set (the others keep their defaults).
fn validate_with(
    path: &PathBuf,
    constants: &[(&str, f64)],
) -> (naga::Module, naga::valid::ModuleInfo) {
    validate_src(
        path,
        source(path),
        constants,
        naga::valid::Capabilities::default(),
    )
}

/// Validates `src` (the kernel at `path` as composed) with `extra` capabilities beyond those
/// its markers ask for, then resolves the overrides.
fn validate_src(
    path: &Path,
    src: String,
    constants: &[(&str, f64)],
    extra: naga::valid::Capabilities,
) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
        panic!("{}: {}", path.display(), e.emit_to_string(&src));
    });
    // Kernels marked `// requires: SUBGROUP` need the SUBGROUP capability (wgpu's
    // Features::SUBGROUP); every other kernel must validate with the default capabilities.
    // Kernels marked `// requires: COOPERATIVE_MATRIX` need wgpu's
    // Features::EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16, `// requires: SHADER_F16`
    // the latter (the host runs them only there).
    let caps = extra
        | if src.contains("// requires: SUBGROUP") {
            naga::valid::Capabilities::SUBGROUP
        } else {
            naga::valid::Capabilities::default()
        }
        | if needs_cooperative_matrix(&src) {
            naga::valid::Capabilities::COOPERATIVE_MATRIX
                | naga::valid::Capabilities::SHADER_FLOAT16
        } else {
            naga::valid::Capabilities::default()
        }
        | if src.contains("// requires: SHADER_F16") {
            naga::valid::Capabilities::SHADER_FLOAT16
        } else {
            naga::valid::Capabilities::default()
        };
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!("{}: {}", path.display(), e.emit_to_string(&src));
        });
    // Pipeline-overridable constants are resolved (with their defaults unless given) for the
    // back ends, as wgpu does at pipeline creation.
    let constants: naga::back::PipelineConstants =
        constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .unwrap_or_else(|e| panic!("{}: overrides: {e}", path.display()));
    (module.into_owned(), info.into_owned())
}

/// Whether the kernel (as composed) multiplies on cooperative matrices.
fn needs_cooperative_matrix(src: &str) -> bool {
    src.contains("// requires: COOPERATIVE_MATRIX")
}

/// Whether the kernel at `path` multiplies on cooperative matrices.
fn is_cooperative(path: &Path) -> bool {
    needs_cooperative_matrix(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn all_kernels_validate() {
    for f in wgsl_files() {
        validate(&f);
    }
}

/// The constants of a window-split build of the blocked fused GEMV (one-bit symbols of
/// eight weights, four-step blocks, a window starting at 5), in row pairs or not, plus `extra`.
fn window_build(pairs: bool, extra: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
    let mut c = vec![
        ("LOW", 3.0),
        ("WPS", 8.0),
        ("BITS", 1.0),
        ("BLOCK", 4.0),
        ("WSTART", 5.0),
    ];
    if pairs {
        c.push(("PAIR", 1.0));
    }
    c.extend_from_slice(extra);
    c
}

/// Every kernel at its default constants, then the split-matrix builds of the blocked kernels
/// (raw low bits: `LOW = 2` beside 2-bit symbols of four weights), in row-major and row-pair
/// order (`PAIR = 1`), the window-split decode in row pairs, the lanes decode's forms and
/// widths (`LOW`, `W`), the lanes fused GEMV's forms, orders and widths, the window-split builds of the
/// blocked fused GEMV (`LOW = 3`, one-bit symbols of eight weights) with two and four groups of 32 lanes a chunk (`DUP`, whose
/// workgroup barrier the defaults drop) on f32 and 8-bit activations and with several
/// activation vectors a launch (`NVEC`, and its plain counterpart with its step-88 builds:
/// four rows a group, activations read or derived for diagnostics; activations in lane
/// order), and the row-pair build
/// of the batched `rans_gemm.wgsl`, which take code paths the defaults drop.
fn all_builds() -> Vec<(PathBuf, naga::Module, naga::valid::ModuleInfo)> {
    let mut builds: Vec<_> = wgsl_files()
        .into_iter()
        .map(|f| {
            let (m, i) = validate(&f);
            (f, m, i)
        })
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wgsl");
    let gemv = "rans_gemv_blocked.wgsl";
    // (the lanes fused GEMV's split 2 + 2 in row pairs at group width `w`)
    let lanes_split_pairs = |w: f64| {
        vec![
            ("LOW", 2.0),
            ("WPS", 4.0),
            ("BITS", 2.0),
            ("PAIR", 1.0),
            ("W", w),
        ]
    };
    let builds_with: Vec<(&str, Vec<(&str, f64)>)> = vec![
        (gemv, vec![("LOW", 2.0), ("WPS", 4.0), ("BITS", 2.0)]),
        ("rans_decode_blocked.wgsl", vec![("LOW", 2.0)]),
        (
            gemv,
            vec![
                ("LOW", 2.0),
                ("WPS", 4.0),
                ("BITS", 2.0),
                ("PAIR", 1.0),
                ("BRANCH_FREE_PLANES", 1.0),
            ],
        ),
        (
            "rans_decode_blocked.wgsl",
            vec![("LOW", 2.0), ("PAIR", 1.0)],
        ),
        // (the window-split decode in row pairs, with a window start)
        (
            "rans_decode_window.wgsl",
            vec![("PAIR", 1.0), ("WSTART", 5.0)],
        ),
        // (the lanes decode: window splits in row pairs at eight lanes an invocation and at
        // one, whose words are gathered over four steps, byte symbols at one and four, and
        // split matrices in row pairs at four and at two)
        (
            "rans_decode_lanes.wgsl",
            vec![("PAIR", 1.0), ("WSTART", 5.0), ("W", 4.0)],
        ),
        (
            "rans_decode_lanes.wgsl",
            vec![("PAIR", 1.0), ("WSTART", 5.0), ("W", 32.0)],
        ),
        ("rans_decode_lanes.wgsl", vec![("LOW", 0.0), ("W", 32.0)]),
        ("rans_decode_lanes.wgsl", vec![("LOW", 0.0), ("W", 4.0)]),
        (
            "rans_decode_lanes.wgsl",
            vec![("LOW", 2.0), ("PAIR", 1.0), ("W", 8.0)],
        ),
        (
            "rans_decode_lanes.wgsl",
            vec![("LOW", 2.0), ("PAIR", 1.0), ("W", 16.0)],
        ),
        // (the lanes fused GEMV: row pairs at one lane an invocation, whose words are
        // gathered over four steps, at two, which loads a gathered word's operands before its
        // block's last step (`EARLY_GATHERED`), and at four, which loads each word's operands
        // before its step (`EARLY_OPERANDS`); rows at eight lanes, the first of a step's two
        // words early, in groups of 32)
        (
            "rans_gemv_lanes.wgsl",
            vec![("PAIR", 1.0), ("WSTART", 5.0), ("W", 32.0)],
        ),
        ("rans_gemv_lanes.wgsl", vec![("PAIR", 1.0), ("W", 16.0)]),
        ("rans_gemv_lanes.wgsl", vec![("PAIR", 1.0), ("W", 8.0)]),
        ("rans_gemv_lanes.wgsl", vec![("W", 4.0), ("GSHIFT", 5.0)]),
        // (and byte symbols: 4-bit weights two a symbol gathered over four steps, 8-bit ones
        // at two lanes an invocation, split 2 + 2 in row pairs with early operands at eight
        // lanes and four, and with early gathered operands at two)
        (
            "rans_gemv_lanes.wgsl",
            vec![("LOW", 0.0), ("WPS", 2.0), ("BITS", 4.0), ("W", 32.0)],
        ),
        (
            "rans_gemv_lanes.wgsl",
            vec![("LOW", 0.0), ("WPS", 1.0), ("BITS", 8.0), ("W", 16.0)],
        ),
        ("rans_gemv_lanes.wgsl", lanes_split_pairs(4.0)),
        ("rans_gemv_lanes.wgsl", lanes_split_pairs(8.0)),
        ("rans_gemv_lanes.wgsl", lanes_split_pairs(16.0)),
        (
            gemv,
            window_build(true, &[("TABLE_MEM", 1.0), ("DUP", 2.0)]),
        ),
        (gemv, window_build(false, &[("XI8", 1.0), ("DUP", 4.0)])),
        // (several activation vectors a launch, in row-pair and row-major order)
        (
            gemv,
            window_build(true, &[("TABLE_MEM", 1.0), ("NVEC", 16.0)]),
        ),
        (gemv, window_build(false, &[("NVEC", 3.0)])),
        ("qgemv4_many.wgsl", vec![("NVEC", 16.0), ("GS", 32.0)]),
        (
            "qgemv4_many.wgsl",
            vec![("NVEC", 5.0), ("PAIRS", 2.0), ("XMODE", 2.0)],
        ),
        ("qgemv4_many.wgsl", vec![("NVEC", 3.0), ("XMODE", 1.0)]),
        ("qgemv4_many.wgsl", vec![("NVEC", 4.0), ("XLANES", 1.0)]),
        // (activations in lane order, one and several vectors)
        (gemv, window_build(true, &[("NVEC", 8.0), ("XLANES", 1.0)])),
        (gemv, window_build(true, &[("XLANES", 1.0)])),
        // (split matrices in row-pair order: two accumulators per row)
        ("rans_gemm.wgsl", vec![("PAIR", 1.0)]),
        (
            "rans_gemm_blocked.wgsl",
            vec![("PAIR", 1.0), ("WPS", 4.0), ("BITS", 2.0), ("BLOCK", 2.0)],
        ),
    ];
    for (file, constants) in &builds_with {
        let f = dir.join(file);
        let (m, i) = validate_with(&f, constants);
        builds.push((f, m, i));
    }
    // the kernels reading f16 (scale, bias) pairs, with `unpack2x16float` (the devices that
    // validate it) and the f16 format selected
    for f in wgsl_files() {
        let src = source_with_f16(&f, "side_f16_unpack");
        if src.contains("fn side(i: u32)") {
            let caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
            let (m, i) = validate_src(&f, src, &[("SIDE", 1.0)], caps);
            builds.push((f, m, i));
        }
    }
    builds
}

#[test]
fn all_kernels_translate_to_msl() {
    for (f, module, info) in all_builds() {
        let options = naga::back::msl::Options {
            // Metal 2.1: simd_ballot / simd_shuffle for the subgroup kernels; 2.3:
            // simdgroup matrices for the cooperative ones
            lang_version: if is_cooperative(&f) { (2, 3) } else { (2, 1) },
            ..Default::default()
        };
        let pipeline = naga::back::msl::PipelineOptions::default();
        let (src, _) = naga::back::msl::write_string(&module, &info, &options, &pipeline)
            .unwrap_or_else(|e| panic!("{}: MSL: {e}", f.display()));
        assert!(src.contains("kernel"), "{}: no kernel in MSL", f.display());
    }
}

#[test]
fn all_kernels_translate_to_spirv() {
    for (f, module, info) in all_builds() {
        let words = naga::back::spv::write_vec(&module, &info, &Default::default(), None)
            .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", f.display()));
        assert_eq!(words[0], 0x0723_0203, "{}: SPIR-V magic", f.display());
    }
}

#[test]
fn all_kernels_translate_to_hlsl() {
    for (f, module, info) in all_builds() {
        if is_cooperative(&f) {
            // naga 30's HLSL writer has no cooperative matrices (it stops at an
            // `unimplemented!` on their stores), and wgpu 30's D3D12 backend does not offer
            // Features::EXPERIMENTAL_COOPERATIVE_MATRIX: the host never builds these there.
            eprintln!("{}: no HLSL (cooperative matrices)", f.display());
            continue;
        }
        // Shader model 6.0: wave intrinsics for the subgroup kernels (D3D12 requires it for
        // Features::SUBGROUP anyway).
        let options = naga::back::hlsl::Options {
            shader_model: naga::back::hlsl::ShaderModel::V6_0,
            ..Default::default()
        };
        let mut out = String::new();
        let pipeline = naga::back::hlsl::PipelineOptions::default();
        let mut writer = naga::back::hlsl::Writer::new(&mut out, &options, &pipeline);
        writer
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{}: HLSL: {e}", f.display()));
        assert!(
            out.contains("numthreads"),
            "{}: no entry point in HLSL",
            f.display()
        );
    }
}
