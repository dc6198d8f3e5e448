//! Decodes arbitrary bytes split into the six parts of a coded matrix (see
//! `fuzz/common/split.rs` for the layout). Must never panic, loop without bound or allocate
//! without bound. Run: `cargo +nightly fuzz run decode fuzz/seeds/decode` from the repository
//! root. `tests/rans_corrupt.rs` replays `fuzz/seeds/decode/*` on stable.
#![no_main]

#[path = "../common/split.rs"]
mod split;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    split::run(data);
});
