//! `ecq demo` on the real model (fetched by `scripts/fetch-model.sh`), and its error when the
//! model is missing.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_runs_quickly_and_round_trips() {
    let cache = std::env::var_os("ECQ_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    assert!(
        cache.join("all-MiniLM-L6-v2/model.safetensors").is_file(),
        "real model missing: run scripts/fetch-model.sh first"
    );
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ecq"))
        .args(["demo", "--dir", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("byte-identical"), "{stdout}");
    assert!(stdout.contains("ecq coded, everything stored"), "{stdout}");
    assert!(elapsed < Duration::from_secs(30), "demo took {elapsed:?}");
    assert!(tmp.path().join("ecq/model.safetensors").is_file());
}

#[test]
fn demo_without_the_model_says_how_to_fetch_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecq"))
        .arg("demo")
        .env("ECQ_CACHE", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("scripts/fetch-model.sh"),
        "{stderr}"
    );
}
