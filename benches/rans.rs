//! CPU rANS codec speed on ONE core, against `constriction` and `rans` (ryg_rans) on the same
//! symbols: the real model (all-MiniLM-L6-v2) quantized MLX affine g64 4-bit when
//! `.cache/all-MiniLM-L6-v2/model.safetensors` exists, else Gaussian weights quantized the
//! same way (the label says which).
//!
//! `cargo bench --bench rans` (add `-- decode` or `-- encode` to filter). Sizes of every coder
//! are printed to stderr before the timings.

#[path = "../tests/rans_common/mod.rs"]
mod rans_common;

use std::time::Duration;

use constriction::stream::model::{
    DefaultContiguousCategoricalEntropyModel, SmallContiguousCategoricalEntropyModel,
    SmallContiguousLookupDecoderModel,
};
use constriction::stream::stack::{DefaultAnsCoder, SmallAnsCoder};
use constriction::stream::Decode;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ecq::rans::{encode, optimal_frequencies, EncodeOptions};
use rans::b64_decoder::{B64RansDecSymbol, B64RansDecoderMulti};
use rans::b64_encoder::{B64RansEncSymbol, B64RansEncoderMulti};
use rans::{RansDecSymbol, RansDecoderMulti, RansEncSymbol, RansEncoderMulti};

const COLS: usize = 384;
const RYG_SCALE: u32 = 12;

struct Data {
    label: String,
    rows: usize,
    q: Vec<u8>,
}

fn data() -> Data {
    // Pre-quantized symbols (one byte per weight, rows of 384), e.g. to run the bench binary on
    // another machine: `ECQ_BENCH_WRITE_SYMBOLS=path` writes them, `ECQ_BENCH_SYMBOLS=path`
    // reads them.
    if let Some(path) = std::env::var_os("ECQ_BENCH_SYMBOLS") {
        let q = std::fs::read(&path).expect("ECQ_BENCH_SYMBOLS file");
        assert_eq!(q.len() % COLS, 0);
        return Data {
            label: format!("MiniLM-L6 MLX g64 4-bit from file, {} weights", q.len()),
            rows: q.len() / COLS,
            q,
        };
    }
    if let Some(ms) = rans_common::real_model(4, 64) {
        // Every matrix has 384 or 1536 columns: view them all as rows of 384.
        let q: Vec<u8> = ms.iter().flat_map(|m| m.q.iter().copied()).collect();
        assert_eq!(q.len() % COLS, 0);
        if let Some(path) = std::env::var_os("ECQ_BENCH_WRITE_SYMBOLS") {
            std::fs::write(path, &q).expect("write symbols");
        }
        Data {
            label: format!("MiniLM-L6 MLX g64 4-bit, {} weights", q.len()),
            rows: q.len() / COLS,
            q,
        }
    } else {
        let m = rans_common::gaussian(16384, COLS, 4, 64, 1);
        Data {
            label: format!("FALLBACK Gaussian MLX g64 4-bit, {} weights", m.q.len()),
            rows: m.rows,
            q: m.q,
        }
    }
}

/// On-CPU time of the calling thread in ns (`/proc/thread-self/schedstat`), or `None`.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `f` `iters` times on the calling thread and returns its on-CPU time (wall time where
/// schedstat is unavailable). The machine is shared with other jobs, so wall time measures
/// their load as much as ours; on-CPU time does not (caches are still shared).
fn timed<F: FnMut()>(iters: u64, mut f: F) -> Duration {
    let wall = std::time::Instant::now();
    let t0 = thread_cpu_ns();
    for _ in 0..iters {
        f();
    }
    match (t0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Duration::from_nanos(b - a),
        _ => wall.elapsed(),
    }
}

fn one_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
}

fn probabilities(q: &[u8], alphabet: usize) -> (Vec<u64>, Vec<f64>) {
    let mut counts = vec![0u64; alphabet];
    for &s in q {
        counts[s as usize] += 1;
    }
    // constriction needs every symbol of the alphabet to have positive probability.
    let probs = counts.iter().map(|&c| c.max(1) as f64).collect();
    (counts, probs)
}

/// ryg_rans (64-bit state, 32-bit words, 2 interleaved streams) with one optimal table.
struct Ryg {
    enc: Vec<B64RansEncSymbol>,
    dec: Vec<B64RansDecSymbol>,
    cum2sym: Vec<u8>,
}

impl Ryg {
    fn new(counts: &[u64]) -> Self {
        let freqs = optimal_frequencies(counts, RYG_SCALE).unwrap();
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        let mut cum2sym = Vec::new();
        let mut c = 0u32;
        for (s, &f) in freqs.iter().enumerate() {
            let f = u32::from(f);
            enc.push(B64RansEncSymbol::new(c, f.max(1), RYG_SCALE));
            dec.push(B64RansDecSymbol::new(c, f.max(1)));
            cum2sym.extend(std::iter::repeat_n(s as u8, f as usize));
            c += f;
        }
        Ryg { enc, dec, cum2sym }
    }
    fn encode(&self, q: &[u8]) -> Vec<u8> {
        let mut e = B64RansEncoderMulti::<2>::new(q.len() + 1024);
        for (i, &s) in q.iter().enumerate().rev() {
            e.put_at(i & 1, &self.enc[s as usize]);
        }
        // The decoder reads channel 0's state first: flush it last.
        e.flush_at(1);
        e.flush_at(0);
        e.data().to_vec()
    }
    fn decode(&self, data: &mut [u8], out: &mut [u8]) {
        let mut d = B64RansDecoderMulti::<2>::new(data);
        for (i, o) in out.iter_mut().enumerate() {
            let ch = i & 1;
            let s = self.cum2sym[d.get_at(ch, RYG_SCALE) as usize];
            d.advance_at(ch, &self.dec[s as usize], RYG_SCALE);
            *o = s;
        }
    }
}

fn bench(c: &mut Criterion) {
    let d = data();
    let n = d.q.len();
    let pool = one_thread();
    eprintln!("symbols: {}", d.label);

    let opts1 = EncodeOptions {
        weights_per_symbol: Some(1),
        group_size: 64,
        ..Default::default()
    };
    let opts2 = EncodeOptions {
        weights_per_symbol: Some(2),
        group_size: 64,
        ..Default::default()
    };
    let enc1 = encode(&d.q, d.rows, COLS, 4, &opts1).unwrap();
    let enc2 = encode(&d.q, d.rows, COLS, 4, &opts2).unwrap();
    assert!(enc1.decode_symbols().unwrap() == d.q);
    assert!(enc2.decode_symbols().unwrap() == d.q);

    let (counts, probs) = probabilities(&d.q, 16);
    let h = ecq::rans::entropy_bits(&counts);
    let dmodel = DefaultContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast(
        &probs, None,
    )
    .unwrap();
    let smodel = SmallContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast(
        &probs, None,
    )
    .unwrap();
    let lmodel =
        SmallContiguousLookupDecoderModel::from_floating_point_probabilities_fast(&probs, None)
            .unwrap();
    let cdef = {
        let mut a = DefaultAnsCoder::new();
        a.encode_iid_symbols_reverse(d.q.iter().map(|&s| s as usize), &dmodel)
            .unwrap();
        a.into_compressed().unwrap()
    };
    let csmall = {
        let mut a = SmallAnsCoder::new();
        a.encode_iid_symbols_reverse(d.q.iter().map(|&s| s as usize), &smodel)
            .unwrap();
        a.into_compressed().unwrap()
    };
    let ryg = Ryg::new(&counts);
    let ryg_data = ryg.encode(&d.q);
    {
        let mut buf = ryg_data.clone();
        let mut out = vec![0u8; n];
        ryg.decode(&mut buf, &mut out);
        assert!(out == d.q, "ryg_rans round trip");
    }
    let bpw = |bytes: usize| bytes as f64 * 8.0 / n as f64;
    eprintln!(
        "sizes in bits/weight: one-table entropy {:.4}; ecq w=1 payload {:.4} total {:.4} (tile entropy {:.4}); \
         ecq w=2 payload {:.4} total {:.4} (tile entropy {:.4}); constriction default {:.4}; \
         constriction small {:.4}; ryg_rans {:.4}",
        h / n as f64,
        bpw(enc1.payload_bytes()),
        bpw(enc1.total_bytes()),
        enc1.entropy_bound_bits().unwrap() / n as f64,
        bpw(enc2.payload_bytes()),
        bpw(enc2.total_bytes()),
        enc2.entropy_bound_bits().unwrap() / n as f64,
        bpw(cdef.len() * 4),
        bpw(csmall.len() * 2),
        bpw(ryg_data.len()),
    );

    let mut g = c.benchmark_group(format!("rans decode 1 thread, on-CPU time ({})", d.label));
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut out = vec![0u8; n];
    g.bench_function(BenchmarkId::new("ecq", "w=1"), |b| {
        b.iter_custom(|it| {
            pool.install(|| {
                timed(it, || {
                    enc1.decode_symbols_unverified_into(&mut out).unwrap()
                })
            })
        })
    });
    g.bench_function(BenchmarkId::new("ecq", "w=1 +crc"), |b| {
        b.iter_custom(|it| {
            pool.install(|| timed(it, || enc1.decode_symbols_into(&mut out).unwrap()))
        })
    });
    g.bench_function(BenchmarkId::new("ecq", "w=2 values"), |b| {
        b.iter_custom(|it| {
            pool.install(|| {
                timed(it, || {
                    enc2.decode_symbols_unverified_into(&mut out).unwrap()
                })
            })
        })
    });
    let mut packed = vec![0u32; n / 8];
    g.bench_function(BenchmarkId::new("ecq", "w=2 packed +crc"), |b| {
        b.iter(|| {
            pool.install(|| enc2.decode_packed_into(&mut packed))
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("constriction", "default"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                let mut a = DefaultAnsCoder::from_compressed_slice(&cdef).unwrap();
                for (o, s) in out.iter_mut().zip(a.decode_iid_symbols(n, &dmodel)) {
                    *o = s.unwrap() as u8;
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("constriction", "small lookup"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                let mut a = SmallAnsCoder::from_compressed_slice(&csmall).unwrap();
                for (o, s) in out.iter_mut().zip(a.decode_iid_symbols(n, &lmodel)) {
                    *o = s.unwrap() as u8;
                }
            })
        })
    });
    let mut ryg_buf = ryg_data.clone();
    g.bench_function(BenchmarkId::new("ryg_rans", "64-bit x2"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                ryg_buf.copy_from_slice(&ryg_data);
                ryg.decode(&mut ryg_buf, &mut out)
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("rans encode 1 thread, on-CPU time ({})", d.label));
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(BenchmarkId::new("ecq", "w=1"), |b| {
        b.iter(|| {
            pool.install(|| encode(&d.q, d.rows, COLS, 4, &opts1))
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("ecq", "w=2"), |b| {
        b.iter(|| {
            pool.install(|| encode(&d.q, d.rows, COLS, 4, &opts2))
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("constriction", "default"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                let mut a = DefaultAnsCoder::new();
                a.encode_iid_symbols_reverse(d.q.iter().map(|&s| s as usize), &dmodel)
                    .unwrap();
                std::hint::black_box(a.into_compressed().unwrap());
            })
        })
    });
    g.bench_function(BenchmarkId::new("constriction", "small"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                let mut a = SmallAnsCoder::new();
                a.encode_iid_symbols_reverse(d.q.iter().map(|&s| s as usize), &smodel)
                    .unwrap();
                std::hint::black_box(a.into_compressed().unwrap());
            })
        })
    });
    g.bench_function(BenchmarkId::new("ryg_rans", "64-bit x2"), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                std::hint::black_box(ryg.encode(&d.q));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
