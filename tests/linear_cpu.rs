//! The CPU reference layer and the shape/parameter errors of the linear module (no GPU needed).

use ecq::dtype::FloatDType;
use ecq::linear::{tolerance, CpuLinear, Linear, LinearError, TOLERANCE_PER_TERM};
use ecq::quant::{quantize_affine, AffineParams};
use ecq::rans::{encode, EncodeOptions};
use half::f16;

#[test]
fn dense_forward_and_batch() {
    let l = CpuLinear::from_dense(
        "d",
        2,
        3,
        vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.0],
        Some(vec![1.0, -1.0]),
    )
    .unwrap();
    assert_eq!((l.in_features(), l.out_features()), (3, 2));
    assert_eq!(l.forward(&[1.0, 2.0, 3.0]).unwrap(), vec![15.0, -1.0]);
    assert_eq!(
        l.forward_batch(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], 2).unwrap(),
        vec![15.0, -1.0, 1.0, -1.0]
    );
    let y16 = l.forward_f16(&[f16::ONE, f16::ONE, f16::ONE]).unwrap();
    assert_eq!(y16, vec![f16::from_f32(7.0), f16::from_f32(-1.5)]);
}

#[test]
fn quantized_and_coded_references_agree() {
    let (r, k) = (16, 128);
    let w: Vec<f32> = (0..r * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let q = quantize_affine(&w, r, k, FloatDType::F32, AffineParams::new(4, 64).unwrap()).unwrap();
    let enc = encode(&q.symbols(), r, k, 4, &EncodeOptions::default()).unwrap();
    let a = CpuLinear::from_quantized("q", &q, None).unwrap();
    let b = CpuLinear::from_encoded("c", &enc, 64, &q.scales, &q.biases, None).unwrap();
    assert_eq!(a.weights(), b.weights());
    assert_eq!(a.weights(), q.dequantize().as_slice());
    let x: Vec<f32> = (0..k).map(|i| (i as f32).sin()).collect();
    let (y, sum_abs) = a.reference(&x, 1).unwrap();
    let got = a.forward(&x).unwrap();
    for i in 0..r {
        assert!((got[i] as f64 - y[i]).abs() <= tolerance(k, sum_abs[i]));
        assert!(sum_abs[i] >= y[i].abs());
    }
    assert_eq!(TOLERANCE_PER_TERM, 2f64.powi(-24));
}

#[test]
fn wrong_shapes_are_errors() {
    let l = CpuLinear::from_dense("d", 2, 3, vec![0.0; 6], None).unwrap();
    match l.forward(&[0.0; 4]) {
        Err(LinearError::ShapeMismatch {
            layer,
            got,
            expected,
            m,
            in_features,
        }) => {
            assert_eq!(
                (layer.as_str(), got, expected, m, in_features),
                ("d", 4, 3, 1, 3)
            );
        }
        other => panic!("{other:?}"),
    }
    let e = l.forward_batch(&[0.0; 7], 2).unwrap_err().to_string();
    assert!(
        e.contains("d: x has 7 values, expected 6 (2 row(s) of 3 inputs)"),
        "{e}"
    );
    assert!(matches!(
        CpuLinear::from_dense("d", 2, 3, vec![0.0; 5], None),
        Err(LinearError::InvalidLayer { .. })
    ));
    assert!(matches!(
        CpuLinear::from_dense("d", 2, 3, vec![0.0; 6], Some(vec![0.0; 3])),
        Err(LinearError::InvalidLayer { .. })
    ));
}
