//! `testkit::Case::from_bytes` (what `Case::load` and the `verify` example run) on arbitrary
//! bytes: a PyTorch case file (docs/case-format.md).
//!
//! Any input may be rejected, but none may panic, abort or allocate more than a small multiple of
//! its own size (run with `-malloc_limit_mb`, see `.ci/fuzz.sh`). A case that loads must have
//! every tensor of the shape its metadata gives, with the data for it in the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnk_core::testkit::case::Case;

fuzz_target!(|data: &[u8]| {
    let Ok(case) = Case::<f32>::from_bytes(data, "<fuzz>") else { return };
    let (cfg, shape) = (&case.config, &case.shape);
    let count = |s: [usize; 3]| s.iter().product::<usize>();
    assert_eq!(case.x.len(), count(shape.x_shape(cfg)));
    assert_eq!(case.params.as_slice().len(), cfg.param_count());
    for (name, t, want) in [
        ("h0", &case.h0, shape.h_shape(cfg)),
        ("c0", &case.c0, shape.c_shape(cfg)),
        ("y", &case.y, shape.y_shape(cfg)),
        ("hn", &case.hn, shape.h_shape(cfg)),
        ("cn", &case.cn, shape.c_shape(cfg)),
        ("dy", &case.dy, shape.y_shape(cfg)),
        ("dx", &case.dx, shape.x_shape(cfg)),
    ] {
        if let Some(t) = t {
            assert_eq!(t.len(), count(want), "{name}");
        }
    }
    if let Some(lengths) = shape.lengths() {
        assert_eq!(lengths.len(), shape.batch());
        assert!(lengths.iter().all(|&n| (1..=shape.steps()).contains(&n)), "lengths {lengths:?}, steps {}", shape.steps());
    }
    // Every element loaded came from at least two bytes of the file.
    let elements = case.x.len() + case.params.as_slice().len();
    assert!(elements * 2 <= data.len(), "{elements} elements loaded from a file of {} bytes", data.len());
});
