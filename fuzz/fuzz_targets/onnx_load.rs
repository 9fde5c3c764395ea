//! `rnn_kernels::onnx` (the ONNX importer) on arbitrary bytes: `list_nodes_from_bytes`,
//! `load_node_from_bytes` and `load_stack_from_bytes`.
//!
//! Any input may be rejected, but none may panic, abort or allocate more than a small multiple of
//! its own size (run with `-malloc_limit_mb`, see `.ci/fuzz.sh`). A node that imports has the
//! parameters of its configuration, at most two per byte of the file (one initializer may be
//! both `W` and `R` of a node; a stack's nodes may not share one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnk_core::onnx;

fuzz_target!(|data: &[u8]| {
    let _ = onnx::list_nodes_from_bytes(data, "<fuzz>");
    if let Ok(m) = onnx::load_node_from_bytes::<f32>(data, "<fuzz>", None) {
        assert_eq!(m.params.as_slice().len(), m.config.param_count());
        assert!(m.params.as_slice().len() <= 2 * data.len(), "{} parameters from a file of {} bytes", m.params.as_slice().len(), data.len());
    }
    if let Ok(s) = onnx::load_stack_from_bytes::<f32>(data, "<fuzz>") {
        assert_eq!(s.params.as_slice().len(), s.config.param_count());
        assert_eq!(s.config.num_layers(), s.layers.len());
        assert!(s.params.as_slice().len() <= 2 * data.len(), "{} parameters from a file of {} bytes", s.params.as_slice().len(), data.len());
    }
});
