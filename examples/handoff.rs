//! Prints the CPU backend's thread hand-off time: one job of two empty parts on its team, a
//! round trip between two threads (`rnn_kernels::testkit::bench::team_handoff_ns`). `benches/compare.py`
//! prints it per round, since it decides what a split per-step product of a small batch costs.
//!
//! ```text
//! cargo run --release --example handoff
//! ```
fn main() {
    let ns = rnn_kernels::testkit::bench::team_handoff_ns(100_000);
    println!("team hand-off: {ns:.0} ns");
}
