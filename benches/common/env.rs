//! The benches' settings from the environment (`ECQ_*_BENCH_*`).
#![allow(dead_code)] // each bench uses its own subset

/// The environment variable `name` as a number, if it is set and parses.
pub fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// The shape `ROWSxCOLS` in the environment variable `name`, or `default` where it is unset or
/// does not parse.
pub fn env_shape(name: &str, default: (usize, usize)) -> (usize, usize) {
    std::env::var(name)
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or(default)
}
