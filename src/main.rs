//! The `ecq` command-line tool.
fn main() {}
