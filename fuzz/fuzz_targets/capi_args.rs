//! The C ABI's argument checking: the `extern "C"` functions of capi/ called with fuzzed sizes,
//! flags, handles and buffers.
//!
//! Every pointer is into real memory the harness owns (never a wild pointer): a buffer of the
//! length the call expects or of another length, claimed with its own length or another one,
//! inside another buffer of the same call (overlapping it), misaligned, or NULL. The harness knows
//! what the library may touch: only a call whose every claimed length is the expected one may read
//! or write its buffers, so wherever a claim is the expected length the memory behind it is real;
//! a claim longer than the memory behind it is always a wrong length, which the library must
//! reject before reading (AddressSanitizer reports the read otherwise).
//!
//! Findings: a panic (even one the library catches: RNNK_ERR_PANIC), an invalid access, an
//! allocation over the fuzzer's limit, a status outside the header's, an error without a message;
//! a call that succeeds with a wrong length, a missing required buffer, an output overlapping
//! another buffer (or the `lengths` array); a call that fails although every argument is valid; a
//! failed call that changed any buffer; a successful call that wrote outside its outputs.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rnnk_capi::status::*;
use rnnk_capi::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

type ModelKey = (u8, u128, usize, u128, bool, bool, usize, bool);

thread_local! {
    /// The live models, by configuration and backend.
    static MODELS: RefCell<HashMap<ModelKey, usize>> = RefCell::new(HashMap::new());
}

/// The largest buffer the harness allocates, in elements; a call that needs more is only made
/// with a wrong length somewhere (so it must fail before touching memory).
const LIMIT: u128 = 1 << 14;
/// What every buffer holds before a call: a NaN whose payload no computation produces.
const SENTINEL: u32 = 0x7fc0_1234;

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Dim {
    Small(u8),
    Any(usize),
}

impl Dim {
    fn get(self) -> usize {
        match self {
            Dim::Small(n) => 1 + n as usize % 5,
            Dim::Any(n) => n,
        }
    }
}

/// A claimed length: the expected one, off by a little, or anything.
#[derive(Debug, Arbitrary, Clone, Copy)]
enum Claim {
    Exact,
    Delta(i8),
    Any(usize),
}

/// One pointer argument.
#[derive(Debug, Arbitrary, Clone, Copy)]
enum Buf {
    /// Its own buffer: `real` elements behind a claimed length.
    Own {
        claim: Claim,
        real: Claim,
    },
    Null,
    /// Inside the `target`-th buffer made so far in this call, `offset` elements in.
    Alias {
        target: u8,
        offset: u16,
        claim: Claim,
    },
    /// One to three bytes into a buffer of its own.
    Misaligned {
        bytes: u8,
        claim: Claim,
    },
}

#[derive(Debug, Arbitrary, Clone)]
enum Lengths {
    Null,
    /// `batch` valid lengths drawn from `seed`, the first one replaced by `first` if given.
    Own {
        seed: u64,
        first: Option<i64>,
        claim: Claim,
    },
    /// Valid lengths drawn from `seed`, written into the memory of the `which`-th output buffer,
    /// at `offset` pairs of floats.
    InOutput {
        seed: u64,
        which: u8,
        offset: u8,
    },
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum HandleSel {
    Live,
    Null,
    /// The other handle kind.
    Other,
    /// A freed handle.
    Freed,
    /// A pointer to a buffer of the harness.
    Buffer,
}

#[derive(Debug, Arbitrary, Clone)]
struct Fwd {
    model: HandleSel,
    reserve: HandleSel,
    steps: Dim,
    batch: Dim,
    lengths: Lengths,
    x: Buf,
    h0: Buf,
    c0: Buf,
    y: Buf,
    hn: Buf,
    cn: Buf,
}

#[derive(Debug, Arbitrary, Clone)]
struct Bwd {
    model: HandleSel,
    reserve: HandleSel,
    dy: Buf,
    dhn: Buf,
    dcn: Buf,
    dx: Buf,
    dh0: Buf,
    dc0: Buf,
    dparams: Buf,
    accumulate: bool,
}

#[derive(Debug, Arbitrary, Clone)]
enum Op {
    SetParams { model: HandleSel, params: Buf },
    GetParams { model: HandleSel, params: Buf },
    Forward(Fwd),
    ForwardTraining(Fwd),
    Backward(Bwd),
    TensorSizes { model: HandleSel, steps: Dim, batch: Dim, outputs: u8 },
    ParamCount { model: HandleSel },
    InitUniform { model: HandleSel, seed: u64 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    cell: u8,
    input_size: u8,
    hidden_size: u8,
    num_layers: u8,
    proj_size: u8,
    bidirectional: bool,
    bias: bool,
    cpu: bool,
    /// `rnnk_model_create` with these sizes (input, hidden, layers, proj) too.
    wild: Option<(usize, usize, usize, usize)>,
    ops: Vec<Op>,
}

const CELLS: [(&CStr, usize, bool); 4] = [(c"lstm", 4, true), (c"gru", 3, false), (c"rnn_tanh", 1, false), (c"rnn_relu", 1, false)];

/// The model as the harness knows it.
#[derive(Debug, Clone, Copy)]
struct Cfg {
    gates: u128,
    lstm: bool,
    input: u128,
    hidden: u128,
    layers: u128,
    dirs: u128,
    bias: bool,
    proj: u128,
}

impl Cfg {
    fn hout(&self) -> u128 {
        if self.proj > 0 {
            self.proj
        } else {
            self.hidden
        }
    }
    /// The parameter count (saturated: sizes may be anything); `layers >= 1`.
    fn params(&self) -> u128 {
        let (g, h, hout) = (self.gates, self.hidden, self.hout());
        let per = |input: u128| {
            let w = g.saturating_mul(h).saturating_mul(input.saturating_add(hout));
            let b = if self.bias { g.saturating_mul(h).saturating_mul(2) } else { 0 };
            w.saturating_add(b).saturating_add(if self.proj > 0 { hout.saturating_mul(h) } else { 0 })
        };
        let above = (self.layers - 1).saturating_mul(per(self.dirs.saturating_mul(hout)));
        self.dirs.saturating_mul(per(self.input).saturating_add(above))
    }
    /// x, y, h, c element counts for steps × batch (c: None without a cell state), saturated.
    fn tensors(&self, t: usize, b: usize) -> [Option<u128>; 4] {
        let tb = (t as u128).saturating_mul(b as u128);
        let ldb = (self.layers * self.dirs).saturating_mul(b as u128);
        [
            Some(tb.saturating_mul(self.input)),
            Some(tb.saturating_mul(self.dirs * self.hout())),
            Some(ldb.saturating_mul(self.hout())),
            self.lstm.then_some(ldb.saturating_mul(self.hidden)),
        ]
    }
}

/// The memory of one call: every buffer the harness made for it.
#[derive(Default)]
struct Arena {
    bufs: Vec<Vec<f32>>,
    /// Per argument: (name, byte address, claimed bytes, output, arena index), NULL ones left out.
    spans: Vec<(&'static str, usize, usize, bool, Option<usize>)>,
    /// Whether every given pointer's claim is its expected length, aligned, required ones given.
    valid: bool,
}

impl Arena {
    fn new() -> Arena {
        Arena { valid: true, ..Arena::default() }
    }

    fn alloc(&mut self, n: usize) -> usize {
        self.bufs.push(vec![f32::from_bits(SENTINEL); n]);
        self.bufs.len() - 1
    }

    /// Makes the pointer argument `name`; `expected` is its length in elements (None: must be
    /// NULL, i.e. a cell state for a cell without one).
    fn make(&mut self, name: &'static str, buf: Buf, expected: Option<u128>, required: bool, output: bool) -> (*mut f32, usize) {
        let exp = expected.unwrap_or(0);
        let claim_of = |c: Claim| -> usize {
            match c {
                Claim::Exact => usize::try_from(exp).unwrap_or(usize::MAX),
                Claim::Delta(d) => usize::try_from(exp).unwrap_or(usize::MAX).saturating_add_signed(d as isize),
                Claim::Any(n) => n,
            }
        };
        // A claim equal to the expected length may be read or written: back it with real memory,
        // or (too large) claim one element more.
        let backed = |claim: usize, real: usize| -> (usize, usize) {
            if expected.is_some() && claim as u128 == exp {
                if exp <= LIMIT {
                    (claim, real.max(claim))
                } else {
                    (claim.wrapping_add(1), real)
                }
            } else {
                (claim, real)
            }
        };
        let (ptr, claim, index) = match buf {
            Buf::Null => {
                if required {
                    self.valid = false;
                }
                return (std::ptr::null_mut(), claim_of(Claim::Any(0)));
            }
            Buf::Own { claim, real } => {
                let real = (claim_of(real) as u128).min(LIMIT) as usize;
                let (claim, real) = backed(claim_of(claim), real);
                let i = self.alloc(real);
                (self.bufs[i].as_mut_ptr(), claim, Some(i))
            }
            Buf::Alias { target, offset, claim } if !self.bufs.is_empty() => {
                let i = target as usize % self.bufs.len();
                let len = self.bufs[i].len();
                let (claim, _) = backed(claim_of(claim), 0);
                let must_fit = expected.is_some() && claim as u128 == exp;
                let offset = if must_fit { (offset as usize).min(len.saturating_sub(claim)) } else { (offset as usize).min(len) };
                if must_fit && offset + claim > len {
                    let j = self.alloc(claim);
                    (self.bufs[j].as_mut_ptr(), claim, Some(j))
                } else {
                    // SAFETY: `offset <= len`: inside the buffer or one past its end.
                    (unsafe { self.bufs[i].as_mut_ptr().add(offset) }, claim, Some(i))
                }
            }
            Buf::Alias { claim, .. } => {
                let (claim, real) = backed(claim_of(claim), 0);
                let i = self.alloc(real);
                (self.bufs[i].as_mut_ptr(), claim, Some(i))
            }
            Buf::Misaligned { bytes, claim } => {
                let (claim, real) = backed(claim_of(claim), 0);
                let i = self.alloc(real + 1);
                let p = (self.bufs[i].as_mut_ptr() as *mut u8).wrapping_add(1 + bytes as usize % 3) as *mut f32;
                self.valid = false;
                (p, claim, Some(i))
            }
        };
        if expected.is_none_or(|e| claim as u128 != e) {
            self.valid = false;
        }
        self.spans.push((name, ptr as usize, claim.saturating_mul(4), output, index));
        (ptr, claim)
    }

    /// Whether an output's claimed span overlaps any other buffer's (or the lengths array).
    fn overlap(&self, lengths: Option<(usize, usize)>) -> Option<String> {
        let mut all: Vec<_> = self.spans.iter().map(|&(n, a, b, o, _)| (n, a, b, o)).collect();
        if let Some((a, b)) = lengths {
            all.push(("lengths", a, b, false));
        }
        for (i, p) in all.iter().enumerate() {
            for q in &all[i + 1..] {
                let hit = p.1 < q.1.saturating_add(q.2) && q.1 < p.1.saturating_add(p.2);
                if (p.3 || q.3) && p.2 > 0 && q.2 > 0 && hit {
                    return Some(format!("{} and {}", p.0, q.0));
                }
            }
        }
        None
    }

    fn snapshot(&self) -> Vec<Vec<u32>> {
        self.bufs.iter().map(|b| b.iter().map(|v| v.to_bits()).collect()).collect()
    }

    /// After a call: nothing changed (failure), or nothing outside the outputs' claimed spans.
    fn check_writes(&self, before: &[Vec<u32>], ok: bool, what: &str) {
        for (i, (buf, old)) in self.bufs.iter().zip(before).enumerate() {
            let base = buf.as_ptr() as usize;
            for (k, (v, o)) in buf.iter().zip(old).enumerate() {
                if v.to_bits() == *o {
                    continue;
                }
                let addr = base + 4 * k;
                let in_output = ok && self.spans.iter().any(|&(_, a, b, out, _)| out && a <= addr && addr + 4 <= a.saturating_add(b));
                assert!(in_output, "{what} (ok: {ok}) changed element {k} of buffer {i}, outside every output it may write");
            }
        }
    }
}

fn status_ok(rc: i32, what: &str) {
    // Every documented status but a panic (a bug) and BUSY (the harness calls from one thread).
    assert!(matches!(rc, RNNK_OK..=RNNK_ERR_DEVICE | RNNK_ERR_OUT_OF_MEMORY), "{what}: status {rc}: {}", last_error());
    if rc != RNNK_OK {
        assert!(!last_error().is_empty(), "{what}: status {rc} without a message");
    }
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(rnnk_last_error()) }.to_string_lossy().into_owned()
}

struct Handles {
    model: *mut RnnkModel,
    reserve: *mut RnnkReserve,
    freed_model: *mut RnnkModel,
    freed_reserve: *mut RnnkReserve,
    junk: Vec<u64>,
}

impl Handles {
    fn model(&mut self, s: HandleSel) -> (*mut RnnkModel, bool) {
        match s {
            HandleSel::Live => (self.model, true),
            HandleSel::Null => (std::ptr::null_mut(), false),
            HandleSel::Other => (self.reserve.cast(), false),
            HandleSel::Freed => (self.freed_model, false),
            HandleSel::Buffer => (self.junk.as_mut_ptr().cast(), false),
        }
    }
    fn reserve(&mut self, s: HandleSel) -> (*mut RnnkReserve, bool) {
        match s {
            HandleSel::Live => (self.reserve, true),
            HandleSel::Null => (std::ptr::null_mut(), false),
            HandleSel::Other => (self.model.cast(), false),
            HandleSel::Freed => (self.freed_reserve, false),
            HandleSel::Buffer => (self.junk.as_mut_ptr().cast(), false),
        }
    }
}

/// The state of the reserve as far as the harness knows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReserveState {
    /// Never filled, or filled before the parameters changed: backward must fail.
    Unusable,
    /// Filled by a training forward of (steps, batch) with the current parameters.
    Filled(usize, usize),
}

fn forward(h: &mut Handles, cfg: &Cfg, f: &Fwd, training: bool, reserve_state: &mut ReserveState) {
    let what = if training { "rnnk_forward_training" } else { "rnnk_forward" };
    let (model, model_ok) = h.model(f.model);
    let (reserve, reserve_ok) = if training { h.reserve(f.reserve) } else { (std::ptr::null_mut(), true) };
    let (steps, batch) = (f.steps.get(), f.batch.get());
    let [xs, ys, hs, cs] = cfg.tensors(steps, batch);
    let mut a = Arena::new();
    // Outputs first, so that `lengths` and the inputs can be placed inside them.
    let (y, y_len) = a.make("y", f.y, ys, true, true);
    let (hn, hn_len) = a.make("hn", f.hn, hs, false, true);
    let (cn, cn_len) = a.make("cn", f.cn, cs, false, true);
    let (x, x_len) = a.make("x", f.x, xs, true, false);
    let (h0, h0_len) = a.make("h0", f.h0, hs, false, false);
    let (c0, c0_len) = a.make("c0", f.c0, cs, false, false);
    // `lengths`: NULL, its own array, or inside an output.
    let mut own_lengths: Vec<i64> = Vec::new();
    let (mut lengths, mut lengths_len, mut lengths_valid) = (std::ptr::null::<i64>(), 0usize, true);
    // At most 64 lengths: a larger batch gets a shorter array (a wrong length).
    let valid_values = |seed: u64| -> Vec<i64> {
        let mut s = seed;
        (0..batch.min(64))
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                1 + ((s >> 33) % steps.max(1) as u64) as i64
            })
            .collect()
    };
    match &f.lengths {
        Lengths::Null => {}
        Lengths::Own { seed, first, claim } => {
            own_lengths = valid_values(*seed);
            if let (Some(v), Some(l)) = (*first, own_lengths.first_mut()) {
                *l = v;
            }
            lengths = own_lengths.as_ptr();
            lengths_len = match *claim {
                Claim::Exact => own_lengths.len(),
                Claim::Delta(d) => own_lengths.len().saturating_add_signed(d as isize),
                Claim::Any(n) => n,
            };
            // A claim of `batch` may be read: it must be backed.
            if lengths_len == batch && own_lengths.len() < batch {
                lengths_len = batch.wrapping_add(1);
            }
            lengths_valid = lengths_len == batch
                && own_lengths.len() >= batch
                && own_lengths[..batch].iter().all(|&n| n >= 1 && n as u128 <= steps as u128);
        }
        Lengths::InOutput { seed, which, offset } => {
            let outs: Vec<usize> = a.spans.iter().filter(|s| s.3).filter_map(|s| s.4).collect();
            let v = valid_values(*seed);
            if let Some(&i) = outs.get(*which as usize % outs.len().max(1)) {
                let at = 2 * *offset as usize;
                if v.len() == batch && at + 2 * batch <= a.bufs[i].len() {
                    // SAFETY: `at + 2·batch` floats are inside the buffer; i64 is written unaligned.
                    let p = unsafe { a.bufs[i].as_mut_ptr().add(at) } as *mut i64;
                    for (k, &n) in v.iter().enumerate() {
                        // SAFETY: inside the buffer (above).
                        unsafe { p.add(k).write_unaligned(n) };
                    }
                    lengths = p;
                    lengths_len = batch;
                    lengths_valid = (p as usize).is_multiple_of(8) && batch > 0;
                }
            }
        }
    }
    let lengths_span = (!lengths.is_null()).then(|| (lengths as usize, lengths_len.saturating_mul(8)));
    let overlap = a.overlap(lengths_span);
    let valid = a.valid && model_ok && reserve_ok && lengths_valid && steps > 0 && batch > 0 && overlap.is_none();
    let before = a.snapshot();
    // SAFETY: every pointer is NULL or into memory of the harness; see the module docs.
    let rc = unsafe {
        if training {
            rnnk_forward_training(
                model,
                reserve,
                steps,
                batch,
                lengths,
                lengths_len,
                x,
                x_len,
                h0,
                h0_len,
                c0,
                c0_len,
                y,
                y_len,
                hn,
                hn_len,
                cn,
                cn_len,
            )
        } else {
            rnnk_forward(model, steps, batch, lengths, lengths_len, x, x_len, h0, h0_len, c0, c0_len, y, y_len, hn, hn_len, cn, cn_len)
        }
    };
    status_ok(rc, what);
    let msg = last_error();
    if rc == RNNK_OK {
        assert!(overlap.is_none(), "{what} accepted overlapping buffers: {}", overlap.unwrap_or_default());
    }
    assert_eq!(rc == RNNK_OK, valid, "{what}: status {rc} ({msg}); arguments valid: {valid}; {f:?}");
    a.check_writes(&before, rc == RNNK_OK, what);
    drop(own_lengths);
    // A call the parser rejects leaves the reserve as it was.
    if training && rc == RNNK_OK {
        *reserve_state = ReserveState::Filled(steps, batch);
    }
}

fn backward(h: &mut Handles, cfg: &Cfg, bw: &Bwd, reserve_state: &ReserveState) {
    let (model, model_ok) = h.model(bw.model);
    let (reserve, reserve_ok) = h.reserve(bw.reserve);
    // Without a filled reserve, expected lengths are those of an empty call (the call must fail).
    let (steps, batch) = match *reserve_state {
        ReserveState::Filled(t, b) => (t, b),
        ReserveState::Unusable => (0, 0),
    };
    let [xs, ys, hs, cs] = cfg.tensors(steps, batch);
    let mut a = Arena::new();
    let (dx, dx_len) = a.make("dx", bw.dx, xs, false, true);
    let (dh0, dh0_len) = a.make("dh0", bw.dh0, hs, false, true);
    let (dc0, dc0_len) = a.make("dc0", bw.dc0, cs, false, true);
    let (dparams, dparams_len) = a.make("dparams", bw.dparams, Some(cfg.params()), false, true);
    let (dy, dy_len) = a.make("dy", bw.dy, ys, false, false);
    let (dhn, dhn_len) = a.make("dhn", bw.dhn, hs, false, false);
    let (dcn, dcn_len) = a.make("dcn", bw.dcn, cs, false, false);
    let overlap = a.overlap(None);
    let valid = a.valid && model_ok && reserve_ok && *reserve_state != ReserveState::Unusable && overlap.is_none();
    let before = a.snapshot();
    // SAFETY: as in `forward`.
    let rc = unsafe {
        rnnk_backward(
            model,
            reserve,
            dy,
            dy_len,
            dhn,
            dhn_len,
            dcn,
            dcn_len,
            dx,
            dx_len,
            dh0,
            dh0_len,
            dc0,
            dc0_len,
            dparams,
            dparams_len,
            bw.accumulate as i32,
        )
    };
    status_ok(rc, "rnnk_backward");
    if rc == RNNK_OK {
        assert!(overlap.is_none(), "rnnk_backward accepted overlapping buffers: {}", overlap.unwrap_or_default());
    }
    assert_eq!(rc == RNNK_OK, valid, "rnnk_backward: status {rc} ({}); arguments valid: {valid}; {bw:?}", last_error());
    a.check_writes(&before, rc == RNNK_OK, "rnnk_backward");
}

fn params_call(h: &mut Handles, cfg: &Cfg, sel: HandleSel, buf: Buf, set: bool) -> bool {
    let what = if set { "rnnk_model_set_params" } else { "rnnk_model_get_params" };
    let (model, model_ok) = h.model(sel);
    let mut a = Arena::new();
    let (p, len) = a.make("params", buf, Some(cfg.params()), true, !set);
    let valid = a.valid && model_ok;
    let before = a.snapshot();
    // SAFETY: as in `forward`.
    let rc = unsafe {
        if set {
            rnnk_model_set_params(model, p, len)
        } else {
            rnnk_model_get_params(model, p, len)
        }
    };
    status_ok(rc, what);
    assert_eq!(rc == RNNK_OK, valid, "{what}: status {rc} ({}); arguments valid: {valid}; {buf:?}", last_error());
    a.check_writes(&before, rc == RNNK_OK, what);
    rc == RNNK_OK
}

fuzz_target!(|input: Input| {
    // A wild configuration: only where it is tiny (then it must work if valid) or so large that
    // its parameters cannot be addressed (then it must fail without allocating them).
    if let Some((i, hd, l, p)) = input.wild {
        let cell = CELLS[input.cell as usize % 4];
        let cfg = Cfg {
            gates: cell.1 as u128,
            lstm: cell.2,
            input: i as u128,
            hidden: hd as u128,
            layers: l as u128,
            dirs: 1 + input.bidirectional as u128,
            bias: input.bias,
            proj: p as u128,
        };
        let valid = i > 0 && hd > 0 && l > 0 && (p == 0 || (cell.2 && p < hd));
        let n = if valid { cfg.params() } else { 0 };
        if n <= 1 << 12 || n.saturating_mul(4) > isize::MAX as u128 {
            let mut m: *mut RnnkModel = std::ptr::null_mut();
            // SAFETY: C strings and a writable slot of the harness.
            let rc = unsafe {
                rnnk_model_create(
                    cell.0.as_ptr(),
                    i,
                    hd,
                    l,
                    input.bidirectional as i32,
                    p,
                    input.bias as i32,
                    c"reference".as_ptr(),
                    1,
                    &mut m,
                )
            };
            status_ok(rc, "rnnk_model_create (wild)");
            assert_eq!(rc == RNNK_OK, !m.is_null());
            if n.saturating_mul(4) > isize::MAX as u128 {
                assert_ne!(rc, RNNK_OK, "a model of {n} parameters");
            } else {
                assert_eq!(rc == RNNK_OK, valid, "status {rc} ({}) for {:?}", last_error(), input.wild);
            }
            // SAFETY: NULL or a model just created.
            assert_eq!(unsafe { rnnk_model_free(m) }, RNNK_OK);
        }
    }

    let cell = CELLS[input.cell as usize % 4];
    let hidden = 1 + input.hidden_size as usize % 6;
    let proj = if cell.2 { input.proj_size as usize % hidden } else { 0 };
    let cfg = Cfg {
        gates: cell.1 as u128,
        lstm: cell.2,
        input: 1 + input.input_size as u128 % 6,
        hidden: hidden as u128,
        layers: 1 + input.num_layers as u128 % 3,
        dirs: 1 + input.bidirectional as u128,
        bias: input.bias,
        proj: proj as u128,
    };
    let backend = if input.cpu { c"cpu" } else { c"reference" };
    let key = (input.cell % 4, cfg.input, hidden, cfg.layers, input.bidirectional, input.bias, proj, input.cpu);
    // Models are made once per configuration and kept (a CPU model starts a thread pool, which
    // would dominate the run); their parameters carry over between inputs, which no check
    // depends on.
    let model = MODELS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 32 {
            for (_, p) in m.drain() {
                // SAFETY: live models made below, used by nothing else.
                assert_eq!(unsafe { rnnk_model_free(p as *mut RnnkModel) }, RNNK_OK);
            }
        }
        *m.entry(key).or_insert_with(|| {
            let mut p = std::ptr::null_mut();
            // SAFETY: C strings and a writable slot of the harness.
            let rc = unsafe {
                rnnk_model_create(
                    cell.0.as_ptr(),
                    cfg.input as usize,
                    hidden,
                    cfg.layers as usize,
                    input.bidirectional as i32,
                    proj,
                    input.bias as i32,
                    backend.as_ptr(),
                    2,
                    &mut p,
                )
            };
            assert_eq!(rc, RNNK_OK, "rnnk_model_create: {}", last_error());
            p as usize
        })
    }) as *mut RnnkModel;
    let mut h = Handles {
        model,
        reserve: std::ptr::null_mut(),
        freed_model: std::ptr::null_mut(),
        freed_reserve: std::ptr::null_mut(),
        junk: vec![0x524e_4e4b_4d4f_444c; 64],
    };
    // A freed model and a freed reserve, made after every live handle of this input (so their
    // addresses are not those of a live one).
    // SAFETY: writable slots of the harness; then freeing what was just created.
    unsafe {
        assert_eq!(rnnk_reserve_create(&mut h.reserve), RNNK_OK);
        assert_eq!(rnnk_reserve_create(&mut h.freed_reserve), RNNK_OK);
        assert_eq!(rnnk_reserve_free(h.freed_reserve), RNNK_OK);
        let rc = rnnk_model_create(c"rnn_tanh".as_ptr(), 1, 1, 1, 0, 0, 1, c"reference".as_ptr(), 1, &mut h.freed_model);
        assert_eq!(rc, RNNK_OK);
        assert_eq!(rnnk_model_free(h.freed_model), RNNK_OK);
    }

    let mut reserve_state = ReserveState::Unusable;
    for op in input.ops.iter().take(8) {
        match op {
            Op::SetParams { model, params } => {
                if params_call(&mut h, &cfg, *model, *params, true) {
                    reserve_state = ReserveState::Unusable;
                }
            }
            Op::GetParams { model, params } => {
                params_call(&mut h, &cfg, *model, *params, false);
            }
            Op::Forward(f) => forward(&mut h, &cfg, f, false, &mut reserve_state),
            Op::ForwardTraining(f) => forward(&mut h, &cfg, f, true, &mut reserve_state),
            Op::Backward(b) => backward(&mut h, &cfg, b, &reserve_state),
            Op::TensorSizes { model, steps, batch, outputs } => {
                let (m, model_ok) = h.model(*model);
                let (t, b) = (steps.get(), batch.get());
                let mut out = [usize::MAX; 4];
                let p =
                    |k: usize, out: &mut [usize; 4]| if outputs & (1 << k) != 0 { &mut out[k] as *mut usize } else { std::ptr::null_mut() };
                let (p0, p1, p2, p3) = (p(0, &mut out), p(1, &mut out), p(2, &mut out), p(3, &mut out));
                // SAFETY: NULL or slots of the harness.
                let rc = unsafe { rnnk_model_tensor_sizes(m, t, b, p0, p1, p2, p3) };
                status_ok(rc, "rnnk_model_tensor_sizes");
                let want = cfg.tensors(t, b).map(|c| c.unwrap_or(0));
                // A sequence shape holds at most isize::MAX rows (`SeqShape::new`), each count a usize.
                let fits = (t as u128) * (b as u128) <= isize::MAX as u128 && want.iter().all(|&n| n <= usize::MAX as u128);
                assert_eq!(rc == RNNK_OK, model_ok && t > 0 && b > 0 && fits, "status {rc} ({})", last_error());
                for k in 0..4 {
                    let expect = if rc == RNNK_OK && outputs & (1 << k) != 0 { want[k] as usize } else { usize::MAX };
                    assert_eq!(out[k], expect, "tensor size {k}");
                }
            }
            Op::ParamCount { model } => {
                let (m, model_ok) = h.model(*model);
                let mut n = usize::MAX;
                // SAFETY: a slot of the harness.
                let rc = unsafe { rnnk_model_param_count(m, &mut n) };
                status_ok(rc, "rnnk_model_param_count");
                assert_eq!(rc == RNNK_OK, model_ok);
                assert_eq!(n, if model_ok { cfg.params() as usize } else { usize::MAX });
            }
            Op::InitUniform { model, seed } => {
                let (m, model_ok) = h.model(*model);
                // SAFETY: as above.
                let rc = unsafe { rnnk_model_init_uniform(m, *seed) };
                status_ok(rc, "rnnk_model_init_uniform");
                assert_eq!(rc == RNNK_OK, model_ok);
                if model_ok {
                    reserve_state = ReserveState::Unusable;
                }
            }
        }
    }
    // SAFETY: the live reserve, freed once (the model stays in `MODELS`).
    assert_eq!(unsafe { rnnk_reserve_free(h.reserve) }, RNNK_OK);
});
