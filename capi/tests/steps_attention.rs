//! The decoder-step (`rnnk_steps_*`) and attention (`rnnk_attention_*`) entry points through
//! the C ABI: this crate's shared library is built (as tests/c_program.rs does) and loaded with
//! dlopen, and its functions are called as a C program would call them.
//!
//! Everything they write must equal, bit for bit, what the Rust API computes on the same inputs
//! and backend (the reference backend and the CPU backend on one and two threads). Bad input
//! (NULL pointers, wrong lengths, lengths of 0 or past S, a backward before any step, handles of
//! another model or of old parameters) must give the right status and a message naming the
//! argument, and leave every output buffer as it was.

// This test uses the library build and `values`, not the shared `Case`.
#[allow(dead_code)]
mod common;

use common::{build_library, values, Library};
use rnnk_core::attention::{AttentionBackend, AttentionConfig, AttentionMemoryGrads, AttentionShape, AttentionUpstream, Score};
use rnnk_core::{CellKind, Cpu, Params, Reference, Rnn, RnnConfig};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};

const RNNK_OK: c_int = 0;
const RNNK_ERR_NULL_POINTER: c_int = 1;
const RNNK_ERR_INVALID_ARGUMENT: c_int = 2;
const RNNK_ERR_SIZE_MISMATCH: c_int = 3;
const RNNK_ERR_WRONG_HANDLE: c_int = 4;
const RNNK_ERR_BACKEND_UNAVAILABLE: c_int = 5;

type H = *mut c_void;
type In = *const f32;
type Out = *mut f32;
type N = usize;

/// The library's functions this test calls (the header's prototypes).
struct Lib {
    last_error: unsafe extern "C" fn() -> *const c_char,
    model_create: unsafe extern "C" fn(*const c_char, N, N, N, c_int, N, c_int, *const c_char, N, *mut H) -> c_int,
    model_free: unsafe extern "C" fn(H) -> c_int,
    set_params: unsafe extern "C" fn(H, In, N) -> c_int,
    steps_start: unsafe extern "C" fn(H, N, In, N, In, N, c_int, *mut H) -> c_int,
    steps_free: unsafe extern "C" fn(H) -> c_int,
    steps_step: unsafe extern "C" fn(H, H, In, N, Out, N) -> c_int,
    steps_info: unsafe extern "C" fn(H, *mut N, *mut N, *mut N, *mut N) -> c_int,
    steps_state: unsafe extern "C" fn(H, Out, N, Out, N) -> c_int,
    steps_reorder: unsafe extern "C" fn(H, *const i64, N) -> c_int,
    backward_start: unsafe extern "C" fn(H, H, In, N, In, N, *mut H) -> c_int,
    backward_step: unsafe extern "C" fn(H, H, In, N, Out, N) -> c_int,
    backward_finish: unsafe extern "C" fn(H, H, Out, N, Out, N, Out, N, Out, N, c_int) -> c_int,
    backward_free: unsafe extern "C" fn(H) -> c_int,
    attn_create: unsafe extern "C" fn(*const c_char, N, N, N, N, *const c_char, N, *mut H) -> c_int,
    attn_free: unsafe extern "C" fn(H) -> c_int,
    attn_param_count: unsafe extern "C" fn(H, *mut N) -> c_int,
    attn_param_range: unsafe extern "C" fn(H, *const c_char, *mut N, *mut N) -> c_int,
    attn_set_params: unsafe extern "C" fn(H, In, N) -> c_int,
    attn_get_params: unsafe extern "C" fn(H, Out, N) -> c_int,
    memory_create: unsafe extern "C" fn(H, N, N, *const i64, N, In, N, *mut H) -> c_int,
    memory_gather: unsafe extern "C" fn(H, H, *const i64, N, *mut H) -> c_int,
    memory_free: unsafe extern "C" fn(H) -> c_int,
    memory_zero_grads: unsafe extern "C" fn(H) -> c_int,
    attn_forward: unsafe extern "C" fn(H, H, N, In, N, Out, N, Out, N, Out, N) -> c_int,
    #[allow(clippy::type_complexity)]
    attn_backward: unsafe extern "C" fn(H, H, N, In, N, In, N, In, N, In, N, In, N, In, N, In, N, Out, N, Out, N, c_int) -> c_int,
    memory_backward: unsafe extern "C" fn(H, H, Out, N, Out, N, c_int) -> c_int,
}

impl Lib {
    fn open(dir: &Path) -> Lib {
        let lib = Library::open(dir);
        macro_rules! sym {
            ($name:literal) => {
                lib.symbol($name)
            };
        }
        Lib {
            last_error: sym!("rnnk_last_error"),
            model_create: sym!("rnnk_model_create"),
            model_free: sym!("rnnk_model_free"),
            set_params: sym!("rnnk_model_set_params"),
            steps_start: sym!("rnnk_steps_start"),
            steps_free: sym!("rnnk_steps_free"),
            steps_step: sym!("rnnk_steps_step"),
            steps_info: sym!("rnnk_steps_info"),
            steps_state: sym!("rnnk_steps_state"),
            steps_reorder: sym!("rnnk_steps_reorder"),
            backward_start: sym!("rnnk_steps_backward_start"),
            backward_step: sym!("rnnk_steps_backward_step"),
            backward_finish: sym!("rnnk_steps_backward_finish"),
            backward_free: sym!("rnnk_steps_backward_free"),
            attn_create: sym!("rnnk_attention_create"),
            attn_free: sym!("rnnk_attention_free"),
            attn_param_count: sym!("rnnk_attention_param_count"),
            attn_param_range: sym!("rnnk_attention_param_range"),
            attn_set_params: sym!("rnnk_attention_set_params"),
            attn_get_params: sym!("rnnk_attention_get_params"),
            memory_create: sym!("rnnk_attention_memory_create"),
            memory_gather: sym!("rnnk_attention_memory_gather"),
            memory_free: sym!("rnnk_attention_memory_free"),
            memory_zero_grads: sym!("rnnk_attention_memory_zero_grads"),
            attn_forward: sym!("rnnk_attention_forward"),
            attn_backward: sym!("rnnk_attention_backward"),
            memory_backward: sym!("rnnk_attention_memory_backward"),
        }
    }

    fn msg(&self) -> String {
        // SAFETY: the library's thread-local message, valid until the next call.
        unsafe { CStr::from_ptr((self.last_error)()) }.to_string_lossy().into_owned()
    }

    /// Checks a call's status and, for an error, that its message contains `needle`.
    #[track_caller]
    fn expect(&self, rc: c_int, want: c_int, needle: &str) {
        let m = self.msg();
        assert_eq!(rc, want, "status {rc}, expected {want}: {m}");
        assert!(m.contains(needle), "message {m:?} does not contain {needle:?}");
    }
}

fn lib() -> Lib {
    Lib::open(&build_library())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[track_caller]
fn same(c: &[f32], rust: &[f32], what: &str) {
    assert_eq!(bits(c), bits(rust), "{what}: the C ABI's result differs from the Rust API's");
}

/// A buffer of `n` sentinels, to see that a failing call wrote nothing.
fn sentinel(n: usize) -> Vec<f32> {
    vec![f32::from_bits(0x7fc0_1234); n]
}

#[track_caller]
fn untouched(v: &[f32], what: &str) {
    assert!(v.iter().all(|x| x.to_bits() == 0x7fc0_1234), "{what} was written by a failing call");
}

/// The backends every comparison runs on.
const RUNS: [(&str, usize); 3] = [("reference", 0), ("cpu", 1), ("cpu", 2)];

const I: usize = 3;
const HID: usize = 4;
const L: usize = 2;
const B: usize = 2;
const T: usize = 4;

/// A model through the C ABI with `params`.
fn model(lib: &Lib, cell: &str, backend: &str, threads: usize, params: &[f32]) -> H {
    let (cell, be) = (CString::new(cell).unwrap(), CString::new(backend).unwrap());
    let mut m = null_mut();
    // SAFETY (every library call in this file): live handles, buffers of the lengths given.
    let rc = unsafe { (lib.model_create)(cell.as_ptr(), I, HID, L, 0, 0, 1, be.as_ptr(), threads, &mut m) };
    lib.expect(rc, RNNK_OK, "");
    lib.expect(unsafe { (lib.set_params)(m, params.as_ptr(), params.len()) }, RNNK_OK, "");
    m
}

/// The decoder steps of an LSTM through the C ABI against `Rnn::start_steps` and friends.
fn steps_match<Bk: rnnk_core::Backend<f32, Buf = [f32]>>(lib: &Lib, backend: &str, threads: usize, rust: Bk) {
    let cfg = RnnConfig::new(CellKind::Lstm, I, HID).num_layers(L).build().unwrap();
    let params = Params::<f32>::init_uniform(&cfg, 11).unwrap();
    let p = params.as_slice();
    let rnn = Rnn::new(rust, &cfg, p).unwrap();
    let m = model(lib, "lstm", backend, threads, p);
    let (hl, xl, yl) = (L * B * HID, B * I, B * HID);
    let (h0, c0, dhn, dcn) = (values(hl, 1), values(hl, 2), values(hl, 3), values(hl, 4));
    let xs: Vec<Vec<f32>> = (0..T).map(|t| values(xl, 10 + t as u64)).collect();
    let dys: Vec<Vec<f32>> = (0..T).map(|t| values(yl, 20 + t as u64)).collect();
    let dparams0 = values(p.len(), 30);

    let mut rs = rnn.start_steps(B, Some(&h0), Some(&c0), true, None).unwrap();
    let mut run = null_mut();
    let rc = unsafe { (lib.steps_start)(m, B, h0.as_ptr(), hl, c0.as_ptr(), hl, 1, &mut run) };
    lib.expect(rc, RNNK_OK, "");
    for (t, x) in xs.iter().enumerate() {
        let want = rnn.step(&mut rs, x).unwrap();
        let mut y = sentinel(yl);
        lib.expect(unsafe { (lib.steps_step)(m, run, x.as_ptr(), xl, y.as_mut_ptr(), yl) }, RNNK_OK, "");
        same(&y, &want, &format!("{backend}: y of step {t}"));
    }
    let (mut h, mut c) = (sentinel(hl), sentinel(hl));
    lib.expect(unsafe { (lib.steps_state)(run, h.as_mut_ptr(), hl, c.as_mut_ptr(), hl) }, RNNK_OK, "");
    same(&h, rs.h(), "h after the last step");
    same(&c, rs.c().unwrap(), "c after the last step");
    let mut info = [0usize; 4];
    let [a, b, cc, d] = &mut info;
    lib.expect(unsafe { (lib.steps_info)(run, a, b, cc, d) }, RNNK_OK, "");
    assert_eq!(info, [T, B, hl, hl]);

    let mut rb = rnn.backward_steps(&rs, Some(&dhn), Some(&dcn)).unwrap();
    let mut bw = null_mut();
    let rc = unsafe { (lib.backward_start)(m, run, dhn.as_ptr(), hl, dcn.as_ptr(), hl, &mut bw) };
    lib.expect(rc, RNNK_OK, "");
    // A run a walk holds takes no step.
    let mut y = sentinel(yl);
    let rc = unsafe { (lib.steps_step)(m, run, xs[0].as_ptr(), xl, y.as_mut_ptr(), yl) };
    lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`steps`");
    untouched(&y, "y");
    // The walk keeps the run alive: free it now.
    lib.expect(unsafe { (lib.steps_free)(run) }, RNNK_OK, "");
    // Finishing early is refused and writes nothing.
    let mut dp = sentinel(p.len());
    let rc = unsafe { (lib.backward_finish)(m, bw, null_mut(), 0, null_mut(), 0, null_mut(), 0, dp.as_mut_ptr(), p.len(), 0) };
    lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`backward`");
    untouched(&dp, "dparams");
    for t in (0..T).rev() {
        let want = rb.step(&rnn, Some(&dys[t])).unwrap();
        let mut dx = sentinel(xl);
        lib.expect(unsafe { (lib.backward_step)(m, bw, dys[t].as_ptr(), yl, dx.as_mut_ptr(), xl) }, RNNK_OK, "");
        same(&dx, want, &format!("{backend}: dx of step {t}"));
    }
    // Past the first step: refused, nothing written.
    let mut dx = sentinel(xl);
    let rc = unsafe { (lib.backward_step)(m, bw, dys[0].as_ptr(), yl, dx.as_mut_ptr(), xl) };
    lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`backward`");
    untouched(&dx, "dx");
    let g = rb.finish().unwrap();
    let (mut dx, mut dh0, mut dc0, mut dp) = (sentinel(T * xl), sentinel(hl), sentinel(hl), dparams0.clone());
    // A wrong dparams length: refused, nothing written, the walk still unfinished.
    let rc = unsafe {
        (lib.backward_finish)(m, bw, dx.as_mut_ptr(), T * xl, dh0.as_mut_ptr(), hl, dc0.as_mut_ptr(), hl, dp.as_mut_ptr(), p.len() - 1, 1)
    };
    lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`dparams`: expected [param_count]");
    untouched(&dx, "dx");
    let rc = unsafe {
        (lib.backward_finish)(m, bw, dx.as_mut_ptr(), T * xl, dh0.as_mut_ptr(), hl, dc0.as_mut_ptr(), hl, dp.as_mut_ptr(), p.len(), 1)
    };
    lib.expect(rc, RNNK_OK, "");
    same(&dx, &g.dx, "dx of every step");
    same(&dh0, &g.dh0, "dh0");
    same(&dc0, g.dc0.as_ref().unwrap(), "dc0");
    let acc: Vec<f32> = dparams0.iter().zip(g.dparams.as_ref().unwrap()).map(|(a, b)| a + b).collect();
    same(&dp, &acc, "dparams accumulated");
    // A finished walk takes no more calls.
    let rc = unsafe { (lib.backward_finish)(m, bw, null_mut(), 0, null_mut(), 0, null_mut(), 0, dp.as_mut_ptr(), p.len(), 0) };
    lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`backward`");
    same(&dp, &acc, "dparams after a refused call");
    lib.expect(unsafe { (lib.backward_free)(bw) }, RNNK_OK, "");

    // Overwrite mode, on a second training run from zeros, with only dparams wanted.
    let mut rs = rnn.start_steps(B, None, None, true, None).unwrap();
    let mut run = null_mut();
    lib.expect(unsafe { (lib.steps_start)(m, B, null(), 0, null(), 0, 1, &mut run) }, RNNK_OK, "");
    let mut y = sentinel(yl);
    for x in &xs[..2] {
        rnn.step(&mut rs, x).unwrap();
        lib.expect(unsafe { (lib.steps_step)(m, run, x.as_ptr(), xl, y.as_mut_ptr(), yl) }, RNNK_OK, "");
    }
    let mut rb = rnn.backward_steps(&rs, None, None).unwrap();
    let mut bw = null_mut();
    lib.expect(unsafe { (lib.backward_start)(m, run, null(), 0, null(), 0, &mut bw) }, RNNK_OK, "");
    for t in (0..2).rev() {
        rb.step(&rnn, Some(&dys[t])).unwrap();
        lib.expect(unsafe { (lib.backward_step)(m, bw, dys[t].as_ptr(), yl, null_mut(), 0) }, RNNK_OK, "");
    }
    let g = rb.finish().unwrap();
    let mut dp = sentinel(p.len());
    let rc = unsafe { (lib.backward_finish)(m, bw, null_mut(), 0, null_mut(), 0, null_mut(), 0, dp.as_mut_ptr(), p.len(), 0) };
    lib.expect(rc, RNNK_OK, "");
    same(&dp, g.dparams.as_ref().unwrap(), "dparams overwritten");
    unsafe {
        lib.expect((lib.backward_free)(bw), RNNK_OK, "");
        lib.expect((lib.steps_free)(run), RNNK_OK, "");
        lib.expect((lib.model_free)(m), RNNK_OK, "");
    }
}

#[test]
fn decoder_steps_match_the_rust_api() {
    let lib = lib();
    for (backend, threads) in RUNS {
        match backend {
            "reference" => steps_match(&lib, backend, threads, Reference),
            _ => steps_match(&lib, backend, threads, Cpu::with_threads(threads).unwrap()),
        }
    }
}

#[test]
fn decoder_steps_reject_bad_input() {
    let lib = lib();
    let cfg = RnnConfig::new(CellKind::Gru, I, HID).num_layers(L).build().unwrap();
    let params = Params::<f32>::init_uniform(&cfg, 3).unwrap();
    let m = model(&lib, "gru", "reference", 0, params.as_slice());
    let hl = L * B * HID;
    let h0 = values(hl, 1);
    let mut run: H = null_mut();
    unsafe {
        // NULL model, NULL out, wrong h0 length, c0 given to a GRU, batch 0.
        lib.expect((lib.steps_start)(null_mut(), B, null(), 0, null(), 0, 1, &mut run), RNNK_ERR_NULL_POINTER, "`model`");
        assert!(run.is_null());
        lib.expect((lib.steps_start)(m, B, null(), 0, null(), 0, 1, null_mut()), RNNK_ERR_NULL_POINTER, "`out`");
        let rc = (lib.steps_start)(m, B, h0.as_ptr(), hl - 1, null(), 0, 1, &mut run);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, &format!("`h0`: expected [L, B, Hout] = [{L}, {B}, {HID}], {hl} elements, got {}", hl - 1));
        assert!(run.is_null());
        let rc = (lib.steps_start)(m, B, h0.as_ptr(), hl, h0.as_ptr(), hl, 1, &mut run);
        lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`c0`: not given: cell gru has no cell state");
        lib.expect((lib.steps_start)(m, 0, null(), 0, null(), 0, 1, &mut run), RNNK_ERR_INVALID_ARGUMENT, "batch");
        assert!(run.is_null());

        // Backward before any step, and of an inference run.
        lib.expect((lib.steps_start)(m, B, h0.as_ptr(), hl, null(), 0, 1, &mut run), RNNK_OK, "");
        let mut bw: H = null_mut();
        lib.expect((lib.backward_start)(m, run, null(), 0, null(), 0, &mut bw), RNNK_ERR_INVALID_ARGUMENT, "`steps`");
        assert!(bw.is_null());
        let mut infer: H = null_mut();
        lib.expect((lib.steps_start)(m, B, null(), 0, null(), 0, 0, &mut infer), RNNK_OK, "");
        lib.expect((lib.backward_start)(m, infer, null(), 0, null(), 0, &mut bw), RNNK_ERR_INVALID_ARGUMENT, "an inference run");

        // A step: NULL and wrong-length buffers, nothing written, the state unchanged.
        let (x, mut y) = (values(B * I, 5), sentinel(B * HID));
        lib.expect((lib.steps_step)(m, run, null(), 0, y.as_mut_ptr(), B * HID), RNNK_ERR_NULL_POINTER, "`x`");
        lib.expect((lib.steps_step)(m, run, x.as_ptr(), B * I, null_mut(), 0), RNNK_ERR_NULL_POINTER, "`y`");
        let rc = (lib.steps_step)(m, run, x.as_ptr(), B * I + 1, y.as_mut_ptr(), B * HID);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, &format!("`x`: expected [B, I] = [{B}, {I}], {} elements, got {}", B * I, B * I + 1));
        let rc = (lib.steps_step)(m, run, x.as_ptr(), B * I, y.as_mut_ptr(), B * HID - 1);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`y`: expected [B, Hout]");
        untouched(&y, "y");
        let mut count = 9;
        lib.expect((lib.steps_info)(run, &mut count, null_mut(), null_mut(), null_mut()), RNNK_OK, "");
        assert_eq!(count, 0, "a refused step moved the run on");
        // An output overlapping the input.
        let mut both = values(B * I + B * HID, 6);
        let rc = (lib.steps_step)(m, run, both.as_ptr(), B * I, both.as_mut_ptr().add(1), B * HID);
        lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`x`: memory that does not overlap `y`");
        // A run of another model.
        let other = model(&lib, "gru", "reference", 0, params.as_slice());
        let rc = (lib.steps_step)(other, run, x.as_ptr(), B * I, y.as_mut_ptr(), B * HID);
        lib.expect(rc, RNNK_ERR_WRONG_HANDLE, "`steps`");
        untouched(&y, "y");
        // A state buffer for a cell state the GRU does not have.
        let mut c = sentinel(hl);
        lib.expect((lib.steps_state)(run, null_mut(), 0, c.as_mut_ptr(), hl), RNNK_ERR_INVALID_ARGUMENT, "`c`");
        untouched(&c, "c");

        // One step, then the walk's bad input.
        lib.expect((lib.steps_step)(m, run, x.as_ptr(), B * I, y.as_mut_ptr(), B * HID), RNNK_OK, "");
        let rc = (lib.backward_start)(m, run, h0.as_ptr(), hl + 1, null(), 0, &mut bw);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`dhn`");
        lib.expect((lib.backward_start)(m, run, null(), 0, h0.as_ptr(), hl, &mut bw), RNNK_ERR_INVALID_ARGUMENT, "`dcn`");
        assert!(bw.is_null());
        lib.expect((lib.backward_start)(m, run, null(), 0, null(), 0, &mut bw), RNNK_OK, "");
        let (dy, mut dx) = (values(B * HID, 7), sentinel(B * I));
        let rc = (lib.backward_step)(m, bw, dy.as_ptr(), B * HID - 1, dx.as_mut_ptr(), B * I);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`dy`: expected [B, Hout]");
        let rc = (lib.backward_step)(m, bw, dy.as_ptr(), B * HID, dx.as_mut_ptr(), B * I + 2);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`dx`: expected [B, I]");
        untouched(&dx, "dx");
        lib.expect((lib.backward_step)(other, bw, dy.as_ptr(), B * HID, dx.as_mut_ptr(), B * I), RNNK_ERR_WRONG_HANDLE, "`backward`");
        // A handle of another kind, and a freed one.
        lib.expect((lib.backward_step)(m, run, dy.as_ptr(), B * HID, dx.as_mut_ptr(), B * I), RNNK_ERR_WRONG_HANDLE, "`backward`");
        untouched(&dx, "dx");
        lib.expect((lib.backward_free)(bw), RNNK_OK, "");
        lib.expect((lib.backward_step)(m, bw, dy.as_ptr(), B * HID, dx.as_mut_ptr(), B * I), RNNK_ERR_WRONG_HANDLE, "`backward`");
        lib.expect((lib.steps_free)(infer), RNNK_OK, "");
        lib.expect((lib.steps_free)(run), RNNK_OK, "");
        lib.expect((lib.steps_free)(null_mut()), RNNK_OK, "");
        lib.expect((lib.model_free)(other), RNNK_OK, "");
        lib.expect((lib.model_free)(m), RNNK_OK, "");
    }
}

/// Attention sizes: S encoder steps, B sequences, Tq queries, Hq, Hk, A.
const S: usize = 5;
const TQ: usize = 3;
const HQ: usize = 4;
const HK: usize = 6;
const A: usize = 3;
const LENGTHS: [usize; B] = [5, 2];

/// An attention through the C ABI and its configuration.
fn attention(lib: &Lib, score: &str, o: usize, backend: &str, threads: usize) -> (H, AttentionConfig) {
    let sc: Score = score.parse().unwrap();
    let (hk, a) = match sc {
        Score::Dot => (HQ, 0),
        Score::General => (HK, 0),
        _ => (HK, A),
    };
    let cfg = AttentionConfig::new(sc, HQ, hk).attn_size(a).output_size(o).build().unwrap();
    let (s, be) = (CString::new(score).unwrap(), CString::new(backend).unwrap());
    let mut h = null_mut();
    let rc = unsafe { (lib.attn_create)(s.as_ptr(), HQ, hk, a, o, be.as_ptr(), threads, &mut h) };
    lib.expect(rc, RNNK_OK, "");
    (h, cfg)
}

fn attention_match<Bk: AttentionBackend<f32>>(lib: &Lib, backend: &str, threads: usize, rust: &Bk) {
    for score in ["dot", "general", "concat", "additive"] {
        for o in [0, 5] {
            let what = format!("{backend} ({threads}), {score}, O = {o}");
            let (at, cfg) = attention(lib, score, o, backend, threads);
            let hk = cfg.key_size();
            let mut n = 0;
            unsafe {
                lib.expect((lib.attn_param_count)(at, &mut n), RNNK_OK, "");
            }
            assert_eq!(n, cfg.param_len(), "{what}");
            for (name, _) in cfg.params() {
                let (cname, mut off, mut len) = (CString::new(name).unwrap(), 0, 0);
                lib.expect(unsafe { (lib.attn_param_range)(at, cname.as_ptr(), &mut off, &mut len) }, RNNK_OK, "");
                assert_eq!(off..off + len, cfg.param_range(name).unwrap(), "{what}: {name}");
            }
            let params = values(n, 40);
            let mut back = sentinel(n);
            unsafe {
                lib.expect((lib.attn_set_params)(at, params.as_ptr(), n), RNNK_OK, "");
                lib.expect((lib.attn_get_params)(at, back.as_mut_ptr(), n), RNNK_OK, "");
            }
            same(&back, &params, "parameters read back");
            let keys = values(S * B * hk, 41);
            let lengths: Vec<i64> = LENGTHS.iter().map(|&l| l as i64).collect();
            let mut mem = null_mut();
            let rc = unsafe { (lib.memory_create)(at, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len(), &mut mem) };
            lib.expect(rc, RNNK_OK, "");
            let shape1 = AttentionShape::new(1, S, LENGTHS.to_vec()).unwrap();
            let rmem = rust.attention_memory(&cfg, &shape1, &params, &keys).unwrap();
            let mut rgrads = AttentionMemoryGrads::new(&rmem);

            // All queries at once, then one query at a time: each forward and backward.
            let qs = values(TQ * B * HQ, 42);
            let (dw, dc, dh) = (values(TQ * B * S, 43), values(TQ * B * hk, 44), values(TQ * B * o, 45));
            let mut dp_c = vec![0.0f32; n];
            let mut dp_r = vec![0.0f32; n];
            for (tq, at_q) in [(TQ, 0), (1, 0), (1, 2)] {
                let shape = AttentionShape::new(tq, S, LENGTHS.to_vec()).unwrap();
                let q = &qs[at_q * B * HQ..(at_q + tq) * B * HQ];
                let want = rust.attention_forward_with(&cfg, &shape, &params, &rmem, q).unwrap();
                let (mut w, mut c, mut h) = (sentinel(tq * B * S), sentinel(tq * B * hk), sentinel(tq * B * o));
                let hp = if o > 0 { h.as_mut_ptr() } else { null_mut() };
                let rc = unsafe {
                    (lib.attn_forward)(at, mem, tq, q.as_ptr(), q.len(), w.as_mut_ptr(), w.len(), c.as_mut_ptr(), c.len(), hp, h.len())
                };
                lib.expect(rc, RNNK_OK, "");
                same(&w, &want.weights, &format!("{what}: weights"));
                same(&c, &want.context, &format!("{what}: context"));
                same(&h, &want.hidden, &format!("{what}: hidden"));
                let (dw, dc, dh) = (&dw[..tq * B * S], &dc[..tq * B * hk], &dh[..tq * B * o]);
                let up = AttentionUpstream { d_weights: Some(dw), d_context: Some(dc), d_hidden: (o > 0).then_some(dh) };
                let g = rust.attention_backward_with(&cfg, &shape, &params, &rmem, q, &want, up, &mut rgrads).unwrap();
                for (d, v) in dp_r.iter_mut().zip(&g.d_params) {
                    *d += *v;
                }
                let mut dq = sentinel(q.len());
                let (hin, dhin) = if o > 0 { (h.as_ptr(), dh.as_ptr()) } else { (null(), null()) };
                let rc = unsafe {
                    (lib.attn_backward)(
                        at,
                        mem,
                        tq,
                        q.as_ptr(),
                        q.len(),
                        w.as_ptr(),
                        w.len(),
                        c.as_ptr(),
                        c.len(),
                        hin,
                        h.len(),
                        dw.as_ptr(),
                        dw.len(),
                        dc.as_ptr(),
                        dc.len(),
                        dhin,
                        dh.len(),
                        dq.as_mut_ptr(),
                        dq.len(),
                        dp_c.as_mut_ptr(),
                        n,
                        1,
                    )
                };
                lib.expect(rc, RNNK_OK, "");
                same(&dq, &g.d_queries, &format!("{what}: d_queries"));
            }
            same(&dp_c, &dp_r, &format!("{what}: d_params accumulated over the backward calls"));
            let k = rust.attention_memory_backward(&cfg, &shape1, &params, &rmem, &rgrads).unwrap();
            let (mut dk, mut dpk) = (sentinel(keys.len()), sentinel(n));
            let rc = unsafe { (lib.memory_backward)(at, mem, dk.as_mut_ptr(), dk.len(), dpk.as_mut_ptr(), n, 0) };
            lib.expect(rc, RNNK_OK, "");
            same(&dk, &k.d_keys, &format!("{what}: d_keys"));
            same(&dpk, &k.d_params, &format!("{what}: d_params through the keys"));
            // Zeroed gradients: the keys' side's backward gives zeros.
            lib.expect(unsafe { (lib.memory_zero_grads)(mem) }, RNNK_OK, "");
            let rc = unsafe { (lib.memory_backward)(at, mem, dk.as_mut_ptr(), dk.len(), null_mut(), 0, 0) };
            lib.expect(rc, RNNK_OK, "");
            assert!(dk.iter().all(|&v| v == 0.0), "{what}: d_keys after zero_grads");
            unsafe {
                lib.expect((lib.memory_free)(mem), RNNK_OK, "");
                lib.expect((lib.attn_free)(at), RNNK_OK, "");
            }
        }
    }
}

#[test]
fn attention_matches_the_rust_api() {
    let lib = lib();
    for (backend, threads) in RUNS {
        match backend {
            "reference" => attention_match(&lib, backend, threads, &Reference),
            _ => attention_match(&lib, backend, threads, &Cpu::with_threads(threads).unwrap()),
        }
    }
    // "cuda" (host pointers through CudaHost) against the Rust API's CudaHost on the same
    // device: the same kernels, so the same bits. Without a GPU the creation's error is checked
    // in `attention_rejects_bad_input`; with RNN_KERNELS_REQUIRE_CUDA=1 (.ci/gpu.sh) a missing
    // GPU fails here.
    #[cfg(feature = "cuda")]
    match rnnk_core::CudaHost::new() {
        Ok(cuda) => attention_match(&lib, "cuda", 0, &cuda),
        Err(e) => {
            assert!(!std::env::var("RNN_KERNELS_REQUIRE_CUDA").is_ok_and(|v| v == "1"), "RNN_KERNELS_REQUIRE_CUDA=1, but: {e}");
            eprintln!("attention on \"cuda\": skipped, no CUDA backend here ({e})");
        }
    }
}

#[test]
fn attention_rejects_bad_input() {
    let lib = lib();
    let (at, cfg) = attention(&lib, "general", 0, "reference", 0);
    let n = cfg.param_len();
    let params = values(n, 1);
    let keys = values(S * B * HK, 2);
    let mut h: H = null_mut();
    unsafe {
        // Creation.
        let (bad, be, cuda) = (CString::new("cosine").unwrap(), CString::new("reference").unwrap(), CString::new("cuda").unwrap());
        lib.expect((lib.attn_create)(bad.as_ptr(), HQ, HK, 0, 0, be.as_ptr(), 0, &mut h), RNNK_ERR_INVALID_ARGUMENT, "`score`");
        let dot = CString::new("dot").unwrap();
        lib.expect((lib.attn_create)(dot.as_ptr(), HQ, HK, 0, 0, be.as_ptr(), 0, &mut h), RNNK_ERR_INVALID_ARGUMENT, "`key_size`");
        // "cuda": an attention where the library has the backend and the machine a GPU
        // (capi/tests/device.rs checks it there), else unavailable, saying why.
        match (lib.attn_create)(dot.as_ptr(), HQ, HQ, 0, 0, cuda.as_ptr(), 0, &mut h) {
            RNNK_OK if cfg!(feature = "cuda") => {
                assert_eq!((lib.attn_free)(h), RNNK_OK);
                h = null_mut();
            }
            st => lib.expect(st, RNNK_ERR_BACKEND_UNAVAILABLE, "cuda"),
        }
        lib.expect((lib.attn_create)(null(), HQ, HQ, 0, 0, be.as_ptr(), 0, &mut h), RNNK_ERR_NULL_POINTER, "`score`");
        assert!(h.is_null());
        let name = CString::new("v_a").unwrap();
        let mut off = 7;
        lib.expect((lib.attn_param_range)(at, name.as_ptr(), &mut off, null_mut()), RNNK_ERR_INVALID_ARGUMENT, "`name`");
        assert_eq!(off, 7);
        lib.expect((lib.attn_set_params)(at, params.as_ptr(), n - 1), RNNK_ERR_SIZE_MISMATCH, "`params`: expected [param_count]");
        lib.expect((lib.attn_set_params)(at, params.as_ptr(), n), RNNK_OK, "");

        // Memories: lengths of 0 or past S, a wrong lengths or keys length, NULL keys.
        let mut mem: H = null_mut();
        for (lengths, needle) in [([0i64, 2], "`lengths[0]`"), ([5, 6], "`lengths[1]`"), ([-1, 2], "`lengths[0]`")] {
            let rc = (lib.memory_create)(at, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len(), &mut mem);
            lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, needle);
            assert!(mem.is_null());
        }
        let lengths = [5i64, 2];
        let rc = (lib.memory_create)(at, S, B, lengths.as_ptr(), 1, keys.as_ptr(), keys.len(), &mut mem);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`lengths`");
        let rc = (lib.memory_create)(at, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len() - 1, &mut mem);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, &format!("`keys`: expected [S, B, Hk] = [{S}, {B}, {HK}]"));
        lib.expect((lib.memory_create)(at, S, B, lengths.as_ptr(), B, null(), 0, &mut mem), RNNK_ERR_NULL_POINTER, "`keys`");
        lib.expect((lib.memory_create)(at, 0, B, null(), 0, keys.as_ptr(), 0, &mut mem), RNNK_ERR_INVALID_ARGUMENT, "steps");
        assert!(mem.is_null());
        lib.expect((lib.memory_create)(at, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len(), &mut mem), RNNK_OK, "");

        // Forward: wrong lengths, 0 queries, hidden given without O, nothing written.
        let q = values(TQ * B * HQ, 3);
        let (mut w, mut c, mut hid) = (sentinel(TQ * B * S), sentinel(TQ * B * HK), sentinel(4));
        let (wl, cl) = (w.len(), c.len());
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len() - 1, w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, &format!("`queries`: expected [Tq, B, Hq] = [{TQ}, {B}, {HQ}]"));
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl + 1, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`weights`");
        let rc = (lib.attn_forward)(at, mem, 0, q.as_ptr(), 0, w.as_mut_ptr(), 0, c.as_mut_ptr(), 0, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`num_queries`");
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, hid.as_mut_ptr(), 4);
        lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`hidden`: not given");
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, null_mut(), 0, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_NULL_POINTER, "`context`");
        untouched(&w, "weights");
        untouched(&c, "context");
        untouched(&hid, "hidden");

        // Backward: a wrong upstream length, nothing written.
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_OK, "");
        let (mut dq, mut dp) = (sentinel(q.len()), sentinel(n));
        let rc = (lib.attn_backward)(
            at,
            mem,
            TQ,
            q.as_ptr(),
            q.len(),
            w.as_ptr(),
            wl,
            c.as_ptr(),
            cl,
            null(),
            0,
            w.as_ptr(),
            wl - 1,
            null(),
            0,
            null(),
            0,
            dq.as_mut_ptr(),
            dq.len(),
            dp.as_mut_ptr(),
            n,
            0,
        );
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`d_weights`");
        untouched(&dq, "d_queries");
        untouched(&dp, "d_params");
        let mut dk = sentinel(keys.len());
        let rc = (lib.memory_backward)(at, mem, dk.as_mut_ptr(), keys.len() + 1, null_mut(), 0, 0);
        lib.expect(rc, RNNK_ERR_SIZE_MISMATCH, "`d_keys`");
        untouched(&dk, "d_keys");

        // A memory of old parameters, or of another attention.
        lib.expect((lib.attn_set_params)(at, params.as_ptr(), n), RNNK_OK, "");
        let mut w = sentinel(wl);
        let rc = (lib.attn_forward)(at, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_WRONG_HANDLE, "`memory`");
        let (other, _) = attention(&lib, "general", 0, "reference", 0);
        let rc = (lib.memory_backward)(other, mem, dk.as_mut_ptr(), keys.len(), null_mut(), 0, 0);
        lib.expect(rc, RNNK_ERR_WRONG_HANDLE, "`memory`");
        untouched(&dk, "d_keys");
        untouched(&w, "weights");
        // A handle of another kind.
        let rc = (lib.attn_forward)(mem, at, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_WRONG_HANDLE, "`attention`");
        lib.expect((lib.memory_free)(mem), RNNK_OK, "");

        // With an attentional hidden state, `hidden` is required (forward and backward).
        let (withh, _) = attention(&lib, "general", 2, "reference", 0);
        let np = n + 2 * (HK + HQ);
        let p2 = values(np, 4);
        lib.expect((lib.attn_set_params)(withh, p2.as_ptr(), np), RNNK_OK, "");
        let rc = (lib.memory_create)(withh, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len(), &mut mem);
        lib.expect(rc, RNNK_OK, "");
        let mut w = sentinel(wl);
        let rc = (lib.attn_forward)(withh, mem, TQ, q.as_ptr(), q.len(), w.as_mut_ptr(), wl, c.as_mut_ptr(), cl, null_mut(), 0);
        lib.expect(rc, RNNK_ERR_NULL_POINTER, "`hidden`");
        untouched(&w, "weights");
        let mut dq = sentinel(q.len());
        let rc = (lib.attn_backward)(
            withh,
            mem,
            TQ,
            q.as_ptr(),
            q.len(),
            w.as_ptr(),
            wl,
            c.as_ptr(),
            cl,
            null(),
            0,
            null(),
            0,
            null(),
            0,
            null(),
            0,
            dq.as_mut_ptr(),
            dq.len(),
            null_mut(),
            0,
            0,
        );
        lib.expect(rc, RNNK_ERR_NULL_POINTER, "`hidden`");
        untouched(&dq, "d_queries");
        lib.expect((lib.memory_free)(mem), RNNK_OK, "");
        lib.expect((lib.attn_free)(withh), RNNK_OK, "");
        lib.expect((lib.attn_free)(other), RNNK_OK, "");
        lib.expect((lib.attn_free)(at), RNNK_OK, "");
        lib.expect((lib.attn_free)(at), RNNK_ERR_WRONG_HANDLE, "`attention`");
    }
}

/// The rows `rows` of each layer's `[B, width]` block of `v`, gathered by hand.
fn reorder_by_hand(v: &mut Vec<f32>, width: usize, rows: &[usize]) {
    let b = v.len() / (L * width);
    let old = std::mem::take(v);
    for l in 0..L {
        for &r in rows {
            v.extend_from_slice(&old[(l * b + r) * width..(l * b + r + 1) * width]);
        }
    }
}

/// Beam-search-like decoding through the C ABI: an inference run of an LSTM for B = 2
/// sequences, a step, a reorder to 6 hypotheses (k = 3 of each sequence), a step, a reorder
/// among the hypotheses (a parent of another sequence's, a repeated one), a step; and a general
/// attention with its hidden state over a memory gathered to the 6 hypotheses, queried with the
/// last step's output. Everything equals the Rust API (`Steps::state_mut` reordered by hand,
/// `AttentionMemory::gather`) bit for bit.
fn beam_match<Bk: rnnk_core::Backend<f32, Buf = [f32]> + AttentionBackend<f32>>(lib: &Lib, backend: &str, threads: usize, rust: Bk) {
    let what = format!("{backend} ({threads})");
    let cfg = RnnConfig::new(CellKind::Lstm, I, HID).num_layers(L).build().unwrap();
    let params = Params::<f32>::init_uniform(&cfg, 12).unwrap();
    let p = params.as_slice();
    let (at, acfg) = attention(lib, "general", 5, backend, threads);
    let aparams = values(acfg.param_len(), 50);
    lib.expect(unsafe { (lib.attn_set_params)(at, aparams.as_ptr(), aparams.len()) }, RNNK_OK, "");
    let keys = values(S * B * HK, 51);
    let shape1 = AttentionShape::new(1, S, LENGTHS.to_vec()).unwrap();
    let rmem = rust.attention_memory(&acfg, &shape1, &aparams, &keys).unwrap();
    let rnn = Rnn::new(rust, &cfg, p).unwrap();
    let m = model(lib, "lstm", backend, threads, p);
    let (h0, c0) = (values(L * B * HID, 52), values(L * B * HID, 53));

    let mut rs = rnn.start_steps(B, Some(&h0), Some(&c0), false, None).unwrap();
    let mut run = null_mut();
    let rc = unsafe { (lib.steps_start)(m, B, h0.as_ptr(), h0.len(), c0.as_ptr(), c0.len(), 0, &mut run) };
    lib.expect(rc, RNNK_OK, "");
    // Per step: the rows the state is reordered by before it (None: the first step).
    let plan: [Option<&[usize]>; 3] = [None, Some(&[0, 0, 0, 1, 1, 1]), Some(&[2, 0, 2, 5, 3, 3])];
    let mut y = Vec::new();
    for (t, rows) in plan.iter().enumerate() {
        if let Some(rows) = rows {
            let b = rs.h().len() / (L * HID);
            let (mut h_before, mut c_before) = (sentinel(L * b * HID), sentinel(L * b * HID));
            lib.expect(
                unsafe { (lib.steps_state)(run, h_before.as_mut_ptr(), h_before.len(), c_before.as_mut_ptr(), c_before.len()) },
                RNNK_OK,
                "",
            );
            let (h, c) = rs.state_mut().unwrap();
            reorder_by_hand(h, HID, rows);
            reorder_by_hand(c.unwrap(), HID, rows);
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            lib.expect(unsafe { (lib.steps_reorder)(run, idx.as_ptr(), idx.len()) }, RNNK_OK, "");
            let n = rows.len();
            let (mut info_b, mut h_len) = (0, 0);
            lib.expect(unsafe { (lib.steps_info)(run, null_mut(), &mut info_b, &mut h_len, null_mut()) }, RNNK_OK, "");
            assert_eq!((info_b, h_len), (n, L * n * HID), "{what}: the run's B after a reorder to {n} rows");
            let (mut h, mut c) = (sentinel(L * n * HID), sentinel(L * n * HID));
            lib.expect(unsafe { (lib.steps_state)(run, h.as_mut_ptr(), h.len(), c.as_mut_ptr(), c.len()) }, RNNK_OK, "");
            same(&h, rs.h(), &format!("{what}: h reordered before step {t}"));
            same(&c, rs.c().unwrap(), &format!("{what}: c reordered before step {t}"));
            // Row i of each layer is row rows[i] of the state before.
            for l in 0..L {
                for (i, &r) in rows.iter().enumerate() {
                    let new = &h[(l * n + i) * HID..(l * n + i + 1) * HID];
                    assert_eq!(bits(new), bits(&h_before[(l * b + r) * HID..(l * b + r + 1) * HID]), "{what}: h layer {l} row {i}");
                    let new = &c[(l * n + i) * HID..(l * n + i + 1) * HID];
                    assert_eq!(bits(new), bits(&c_before[(l * b + r) * HID..(l * b + r + 1) * HID]), "{what}: c layer {l} row {i}");
                }
            }
        }
        let b = rs.h().len() / (L * HID);
        let x = values(b * I, 60 + t as u64);
        let want = rnn.step(&mut rs, &x).unwrap();
        let mut yc = sentinel(b * HID);
        lib.expect(unsafe { (lib.steps_step)(m, run, x.as_ptr(), x.len(), yc.as_mut_ptr(), yc.len()) }, RNNK_OK, "");
        same(&yc, &want, &format!("{what}: y of step {t} ({b} rows)"));
        y = yc;
    }

    // The memory of the 6 hypotheses' sequences, queried with the last step's output.
    let seqs = [0usize, 0, 0, 1, 1, 1];
    let idx: Vec<i64> = seqs.iter().map(|&r| r as i64).collect();
    let mut gathered = null_mut();
    let rc = unsafe { (lib.memory_create)(at, S, B, [5i64, 2].as_ptr(), B, keys.as_ptr(), keys.len(), &mut gathered) };
    lib.expect(rc, RNNK_OK, "");
    let mem = gathered;
    let mut gathered = null_mut();
    lib.expect(unsafe { (lib.memory_gather)(at, mem, idx.as_ptr(), idx.len(), &mut gathered) }, RNNK_OK, "");
    assert!(!gathered.is_null());
    let rg = rmem.gather(&seqs).unwrap();
    let n = seqs.len();
    let shape = AttentionShape::new(1, S, rg.lengths().to_vec()).unwrap();
    assert_eq!(rg.lengths(), &[5, 5, 5, 2, 2, 2]);
    let want = rnn_backend_forward(&rnn, &acfg, &shape, &aparams, &rg, &y);
    let (mut w, mut c, mut h) = (sentinel(n * S), sentinel(n * HK), sentinel(n * 5));
    let rc = unsafe {
        (lib.attn_forward)(at, gathered, 1, y.as_ptr(), y.len(), w.as_mut_ptr(), w.len(), c.as_mut_ptr(), c.len(), h.as_mut_ptr(), h.len())
    };
    lib.expect(rc, RNNK_OK, "");
    same(&w, &want.weights, &format!("{what}: weights over the gathered memory"));
    same(&c, &want.context, &format!("{what}: context over the gathered memory"));
    same(&h, &want.hidden, &format!("{what}: hidden over the gathered memory"));
    // Hypothesis 3 reads sequence 1: no weight past its length 2.
    assert!(w[3 * S + 2..4 * S].iter().all(|&v| v == 0.0), "{what}: weights past the gathered length");
    // The gathered memory's keys: its keys' side's backward has the gathered shape [S, 6, Hk].
    let mut dk = sentinel(S * n * HK);
    lib.expect(unsafe { (lib.memory_backward)(at, gathered, dk.as_mut_ptr(), dk.len(), null_mut(), 0, 0) }, RNNK_OK, "");
    assert!(dk.iter().all(|&v| v == 0.0), "{what}: a gathered memory's gradients start at zero");
    unsafe {
        lib.expect((lib.memory_free)(gathered), RNNK_OK, "");
        lib.expect((lib.memory_free)(mem), RNNK_OK, "");
        lib.expect((lib.attn_free)(at), RNNK_OK, "");
        lib.expect((lib.steps_free)(run), RNNK_OK, "");
        lib.expect((lib.model_free)(m), RNNK_OK, "");
    }
}

/// The attention forward of the backend `rnn` runs on.
fn rnn_backend_forward<Bk: rnnk_core::Backend<f32, Buf = [f32]> + AttentionBackend<f32>>(
    rnn: &Rnn<f32, Bk>, cfg: &AttentionConfig, shape: &AttentionShape, params: &[f32], mem: &rnnk_core::attention::AttentionMemory<f32>,
    q: &[f32],
) -> rnnk_core::attention::AttentionOutput<f32> {
    rnn.backend().attention_forward_with(cfg, shape, params, mem, q).unwrap()
}

#[test]
fn beam_search_reorder_and_gather_match_the_rust_api() {
    let lib = lib();
    for (backend, threads) in RUNS {
        match backend {
            "reference" => beam_match(&lib, backend, threads, Reference),
            _ => beam_match(&lib, backend, threads, Cpu::with_threads(threads).unwrap()),
        }
    }
}

#[test]
fn reorder_and_gather_reject_bad_input() {
    let lib = lib();
    let cfg = RnnConfig::new(CellKind::Lstm, I, HID).num_layers(L).build().unwrap();
    let params = Params::<f32>::init_uniform(&cfg, 5).unwrap();
    let m = model(&lib, "lstm", "reference", 0, params.as_slice());
    let hl = L * B * HID;
    let (h0, c0) = (values(hl, 1), values(hl, 2));
    let (at, acfg) = attention(&lib, "general", 0, "reference", 0);
    let aparams = values(acfg.param_len(), 3);
    let keys = values(S * B * HK, 4);
    let lengths = [5i64, 2];
    unsafe {
        let (mut run, mut train, mut mem) = (null_mut(), null_mut(), null_mut());
        lib.expect((lib.steps_start)(m, B, h0.as_ptr(), hl, c0.as_ptr(), hl, 0, &mut run), RNNK_OK, "");
        lib.expect((lib.steps_start)(m, B, h0.as_ptr(), hl, c0.as_ptr(), hl, 1, &mut train), RNNK_OK, "");
        lib.expect((lib.attn_set_params)(at, aparams.as_ptr(), aparams.len()), RNNK_OK, "");
        lib.expect((lib.memory_create)(at, S, B, lengths.as_ptr(), B, keys.as_ptr(), keys.len(), &mut mem), RNNK_OK, "");

        // The run's state must stay as it was after each refused reorder.
        let unchanged = |run: H| {
            let (mut b, mut h, mut c) = (0, sentinel(hl), sentinel(hl));
            lib.expect((lib.steps_info)(run, null_mut(), &mut b, null_mut(), null_mut()), RNNK_OK, "");
            assert_eq!(b, B, "a refused reorder changed the run's B");
            lib.expect((lib.steps_state)(run, h.as_mut_ptr(), hl, c.as_mut_ptr(), hl), RNNK_OK, "");
            same(&h, &h0, "h after a refused reorder");
            same(&c, &c0, "c after a refused reorder");
        };
        let rows = [1i64, 0, 1];
        // NULL rows, rows_len 0, an index past B, a negative one.
        lib.expect((lib.steps_reorder)(run, null(), 3), RNNK_ERR_NULL_POINTER, "`rows`: expected a non-NULL pointer");
        lib.expect((lib.steps_reorder)(run, rows.as_ptr(), 0), RNNK_ERR_INVALID_ARGUMENT, "`rows_len`: at least 1 row, got 0");
        let bad = [1i64, 0, 2];
        lib.expect(
            (lib.steps_reorder)(run, bad.as_ptr(), 3),
            RNNK_ERR_INVALID_ARGUMENT,
            "`rows[2]`: a row in 0..2 (the run's B = 2), got 2",
        );
        let neg = [-1i64, 0];
        lib.expect(
            (lib.steps_reorder)(run, neg.as_ptr(), 2),
            RNNK_ERR_INVALID_ARGUMENT,
            "`rows[0]`: a row in 0..2 (the run's B = 2), got -1",
        );
        unchanged(run);
        // A training run, NULL and wrong-kind handles.
        lib.expect((lib.steps_reorder)(train, rows.as_ptr(), 3), RNNK_ERR_INVALID_ARGUMENT, "`steps`: an inference run");
        unchanged(train);
        lib.expect((lib.steps_reorder)(null_mut(), rows.as_ptr(), 3), RNNK_ERR_NULL_POINTER, "`steps`");
        lib.expect((lib.steps_reorder)(mem, rows.as_ptr(), 3), RNNK_ERR_WRONG_HANDLE, "`steps`");
        lib.expect((lib.steps_reorder)(m, rows.as_ptr(), 3), RNNK_ERR_WRONG_HANDLE, "`steps`");
        // A reorder to 1 row then back to 2 works; the next step takes [1, I].
        lib.expect((lib.steps_reorder)(run, [1i64].as_ptr(), 1), RNNK_OK, "");
        let (x, mut y) = (values(B * I, 6), sentinel(B * HID));
        lib.expect(
            (lib.steps_step)(m, run, x.as_ptr(), B * I, y.as_mut_ptr(), B * HID),
            RNNK_ERR_SIZE_MISMATCH,
            "`x`: expected [B, I] = [1, 3]",
        );
        untouched(&y, "y");
        lib.expect((lib.steps_step)(m, run, x.as_ptr(), I, y.as_mut_ptr(), HID), RNNK_OK, "");

        // The memory gather: NULL out, rows, rows_len 0, out-of-range indices; nothing made.
        let mut out: H = null_mut();
        lib.expect((lib.memory_gather)(at, mem, rows.as_ptr(), 3, null_mut()), RNNK_ERR_NULL_POINTER, "`out`");
        lib.expect((lib.memory_gather)(at, mem, null(), 3, &mut out), RNNK_ERR_NULL_POINTER, "`rows`");
        lib.expect(
            (lib.memory_gather)(at, mem, rows.as_ptr(), 0, &mut out),
            RNNK_ERR_INVALID_ARGUMENT,
            "`rows_len`: at least 1 row, got 0",
        );
        lib.expect(
            (lib.memory_gather)(at, mem, bad.as_ptr(), 3, &mut out),
            RNNK_ERR_INVALID_ARGUMENT,
            "`rows[2]`: a row in 0..2 (the memory's B = 2), got 2",
        );
        lib.expect(
            (lib.memory_gather)(at, mem, neg.as_ptr(), 2, &mut out),
            RNNK_ERR_INVALID_ARGUMENT,
            "`rows[0]`: a row in 0..2 (the memory's B = 2), got -1",
        );
        assert!(out.is_null(), "a failing rnnk_attention_memory_gather left *out non-NULL");
        // A failing call sets a non-NULL *out to NULL (and makes nothing).
        let mut stale: H = 8 as H;
        lib.expect((lib.memory_gather)(at, mem, bad.as_ptr(), 3, &mut stale), RNNK_ERR_INVALID_ARGUMENT, "`rows[2]`");
        assert!(stale.is_null(), "a failing rnnk_attention_memory_gather left *out as it was");
        // NULL and wrong-kind handles.
        lib.expect((lib.memory_gather)(null_mut(), mem, rows.as_ptr(), 3, &mut out), RNNK_ERR_NULL_POINTER, "`attention`");
        lib.expect((lib.memory_gather)(at, null_mut(), rows.as_ptr(), 3, &mut out), RNNK_ERR_NULL_POINTER, "`memory`");
        lib.expect((lib.memory_gather)(mem, mem, rows.as_ptr(), 3, &mut out), RNNK_ERR_WRONG_HANDLE, "`attention`");
        lib.expect((lib.memory_gather)(at, run, rows.as_ptr(), 3, &mut out), RNNK_ERR_WRONG_HANDLE, "`memory`");
        assert!(out.is_null());
        // A memory of another attention, or of old parameters.
        let (other, _) = attention(&lib, "general", 0, "reference", 0);
        lib.expect((lib.memory_gather)(other, mem, rows.as_ptr(), 3, &mut out), RNNK_ERR_WRONG_HANDLE, "`memory`");
        // `out` inside `rows`.
        let mut words = [0i64, 1, 0];
        let rc = (lib.memory_gather)(at, mem, words.as_ptr(), 3, words.as_mut_ptr().add(1).cast());
        lib.expect(rc, RNNK_ERR_INVALID_ARGUMENT, "`out`: memory that does not overlap `rows`");
        assert_eq!(words, [0, 1, 0], "a refused gather wrote into `rows`");
        // A good gather, then one after the parameters changed.
        lib.expect((lib.memory_gather)(at, mem, rows.as_ptr(), 3, &mut out), RNNK_OK, "");
        assert!(!out.is_null());
        lib.expect((lib.attn_set_params)(at, aparams.as_ptr(), aparams.len()), RNNK_OK, "");
        let mut again: H = null_mut();
        lib.expect((lib.memory_gather)(at, mem, rows.as_ptr(), 3, &mut again), RNNK_ERR_WRONG_HANDLE, "`memory`");
        assert!(again.is_null());

        lib.expect((lib.memory_free)(out), RNNK_OK, "");
        lib.expect((lib.memory_free)(mem), RNNK_OK, "");
        lib.expect((lib.attn_free)(other), RNNK_OK, "");
        lib.expect((lib.attn_free)(at), RNNK_OK, "");
        lib.expect((lib.steps_free)(train), RNNK_OK, "");
        lib.expect((lib.steps_free)(run), RNNK_OK, "");
        lib.expect((lib.model_free)(m), RNNK_OK, "");
    }
}
