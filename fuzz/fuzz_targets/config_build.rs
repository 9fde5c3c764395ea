//! `RnnConfig`'s builder with fuzzed cell, sizes and flags, then every size computation a
//! configuration offers.
//!
//! `build` may reject anything, but must not panic (the fuzz build has overflow checks on); what
//! it accepts must have sizes that fit (the parameter count, in f64 bytes, within `isize::MAX`),
//! must agree with the closed form of the parameter count, and must come back unchanged through
//! the metadata of a parameter file. The parameters themselves are only laid out (no data) and
//! only for small configurations: a legitimately large configuration is not a finding.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rnnk_core::{config_from_metadata, config_metadata, CellKind, ParamLayout, RnnConfig};

/// A size: small, a power of two (with an offset), or any value.
#[derive(Debug, Arbitrary)]
enum Size {
    Small(u8),
    Pow2 { shift: u8, minus: u8 },
    Any(usize),
}

impl Size {
    fn get(&self) -> usize {
        match *self {
            Size::Small(n) => n as usize,
            Size::Pow2 { shift, minus } => (1usize << (shift % usize::BITS as u8)).wrapping_sub(minus as usize % 4),
            Size::Any(n) => n,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    cell: u8,
    input_size: Size,
    hidden_size: Size,
    num_layers: Size,
    proj_size: Size,
    bidirectional: bool,
    bias: bool,
}

/// The parameter count in closed form, without overflow: per layer-direction
/// `G·H·(In + Hout) + 2·G·H·bias + Hout·H·proj`.
fn closed_form(c: &RnnConfig) -> u128 {
    let (g, h, hout, d, l) =
        (c.gates() as u128, c.hidden_size() as u128, c.hidden_out_size() as u128, c.num_directions() as u128, c.num_layers() as u128);
    let per = |input: u128| g * h * (input + hout) + if c.bias() { 2 * g * h } else { 0 } + if c.proj_size() > 0 { hout * h } else { 0 };
    d * (per(c.input_size() as u128) + (l - 1) * per(d * hout))
}

fuzz_target!(|input: Input| {
    let cell = CellKind::ALL[input.cell as usize % CellKind::ALL.len()];
    let built = RnnConfig::new(cell, input.input_size.get(), input.hidden_size.get())
        .num_layers(input.num_layers.get())
        .proj_size(input.proj_size.get())
        .bidirectional(input.bidirectional)
        .bias(input.bias)
        .build();
    let Ok(cfg) = built else { return };
    let want = closed_form(&cfg);
    assert!(want * 8 <= isize::MAX as u128, "accepted a configuration of {want} parameters: {cfg:?}");
    // Every size a configuration computes.
    let (d, hout) = (cfg.num_directions(), cfg.hidden_out_size());
    assert_eq!(cfg.output_size(), d * hout);
    assert_eq!(cfg.layer_input_size(0), cfg.input_size());
    assert_eq!(cfg.layer_input_size(cfg.num_layers() - 1), if cfg.num_layers() > 1 { d * hout } else { cfg.input_size() });
    assert_eq!(cfg.param_count() as u128, want, "{cfg:?}");
    // The metadata of a parameter file round-trips.
    let back = config_from_metadata(&config_metadata(&cfg), "<fuzz>").expect("reading back the metadata of a valid configuration");
    assert_eq!(back, cfg);
    assert_eq!(cfg.to_builder().build().expect("rebuilding a valid configuration"), cfg);
    // The layout, where it is small: contiguous, PyTorch's order, as long as param_count.
    if want <= 1 << 20 && cfg.num_layers() <= 64 {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.len(), cfg.param_count());
        let mut offset = 0;
        for spec in layout.specs() {
            assert_eq!(spec.offset, offset, "{}", spec.name);
            assert!(!spec.is_empty(), "{}", spec.name);
            offset += spec.len();
        }
        assert_eq!(offset, layout.len());
    }
});
