//! What every GPU test binary shares: the adapter, and a skip that cannot go unseen.
#![allow(dead_code)] // each test binary uses its own subset

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use ecq::gpu::GpuContext;

/// Says on the process's stderr that a GPU test was skipped. It writes to the stderr handle
/// directly: the test harness captures `eprintln!` of passing tests, which would make a skip
/// look like a silent pass.
pub fn announce_skip(reason: &dyn Display) {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: no GPU adapter ({reason}) ***\n"
    );
}

/// The one GPU context of this test binary, or `None` (announced) where no adapter exists.
pub fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("GPU adapter: {}", c.describe());
            Some(c)
        }
        Err(e) => {
            announce_skip(&e);
            None
        }
    })
    .as_ref()
}

/// Says on stderr, where it cannot be captured, that part of a GPU test could not run on this
/// adapter (and what was checked instead).
pub fn announce_unsupported(what: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** PARTLY SKIPPED: {what} ***\n");
}
