//! Sizes that a caller or a file controls and that ask for more memory than there is must be an
//! `Err` naming the argument, never an allocation abort ("memory allocation of N bytes failed",
//! exit 134); and loading a file must not allocate more than a small multiple of its size before
//! its sizes are checked against the data it holds.
//!
//! Each check runs in a child process (this test binary, run again on that one test) whose
//! allocator refuses every single allocation above a cap. So an abort (what these checks guard
//! against) fails the check in the parent instead of killing the whole binary, a check never takes
//! the memory it asks for even on a machine that has it, and the loaders' bound on what they
//! allocate is checked allocation by allocation.

use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{CellKind, Cpu, Error, Params, Reference, Rnn, RnnConfig, SeqShape};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, refusing (returning null for) any single allocation above [`CAP`] and
/// any that would take the bytes live above [`TOTAL`].
struct Capped;

/// The largest allocation [`Capped`] grants, in bytes.
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The most bytes [`Capped`] lets be allocated at once, in all.
static TOTAL: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The bytes allocated through [`Capped`] and not freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether an allocation of `size` bytes is granted; if so, counts it as live.
fn admit(size: usize) -> bool {
    if size > CAP.load(Ordering::Relaxed) {
        return false;
    }
    let total = TOTAL.load(Ordering::Relaxed);
    LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| live.checked_add(size).filter(|&n| n <= total)).is_ok()
}

fn release(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
}

/// `p` from the system allocator for an admitted `size`: uncounted again if it is null.
fn counted(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        release(size);
    }
    p
}

// SAFETY: every call forwards to `System` with the same arguments, or returns null, which the
// `GlobalAlloc` contract allows for a failed allocation.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        counted(unsafe { System.alloc(layout) }, layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        counted(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        release(layout.size());
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        // On success the old block is freed; on failure the new one was never had.
        release(if p.is_null() { new_size } else { layout.size() });
        p
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Set in the child process that runs one check.
const CHILD: &str = "RNN_KERNELS_TOO_LARGE_CHILD";

const MIB: usize = 1 << 20;

/// Runs `body` in a child process with each allocation capped at `cap` bytes; fails unless it
/// returns normally there.
fn isolated(name: &str, cap: usize, body: impl FnOnce()) {
    isolated_total(name, cap, usize::MAX, body)
}

/// Like [`isolated`], with at most `total` bytes more than before allocated at once during
/// `body`, besides.
fn isolated_total(name: &str, cap: usize, total: usize, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        CAP.store(cap, Ordering::SeqCst);
        TOTAL.store(LIVE.load(Ordering::SeqCst).saturating_add(total), Ordering::SeqCst);
        body();
        CAP.store(usize::MAX, Ordering::SeqCst);
        TOTAL.store(usize::MAX, Ordering::SeqCst);
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "`{name}` in a child process: {}\n{text}", out.status);
}

/// Asserts that `r` is `Err` whose message contains every needle; returns the message.
fn err_with<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, needles: &[&str]) -> String {
    let msg = match r {
        Ok(v) => panic!("{what}: returned Ok({v:?}) instead of Err"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "{what}: the message does not contain {n:?}: {msg}");
    }
    eprintln!("{what}\n    -> {msg}");
    msg
}

/// A safetensors file of `tensors` (F64 values `0.5`) and `meta`.
fn file_bytes(tensors: &[(&str, Vec<usize>)], meta: &[(&str, &str)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = tensors.iter().map(|(_, s)| 0.5f64.to_le_bytes().repeat(s.iter().product())).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (n.to_string(), TensorView::new(StDtype::F64, s.clone(), d).expect("a valid test tensor")))
        .collect();
    let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    safetensors::tensor::serialize(views, Some(meta)).expect("serialise a test file")
}

/// The parameter file of the issue: 5 KB, whose metadata says `hidden_size 100000`,
/// `num_layers 1000` (about 3·10^14 parameters), holding the tensors of a small LSTM.
fn lying_params_file(extra_meta: &[(&str, &str)]) -> Vec<u8> {
    let mut meta =
        vec![("cell", "lstm"), ("input_size", "4"), ("hidden_size", "100000"), ("num_layers", "1000"), ("bidirectional", "false")];
    meta.extend_from_slice(extra_meta);
    let tensors = [("weight_ih_l0", vec![40, 4]), ("weight_hh_l0", vec![40, 10]), ("bias_ih_l0", vec![40]), ("bias_hh_l0", vec![40])];
    let bytes = file_bytes(&tensors, &meta);
    assert!((4000..6000).contains(&bytes.len()), "the test file is about 5 KB, not {} bytes", bytes.len());
    bytes
}

/// Cap while a loader reads a file of `len` bytes: 8 times its size (its values converted to
/// f64 from at least 2 bytes each take 4 times), and 64 KiB for what parsing a header takes.
fn loader_cap(len: usize) -> usize {
    8 * len + (64 << 10)
}

#[test]
fn params_load_checks_the_metadata_against_the_file_before_allocating() {
    let dir = std::env::temp_dir().join(format!("rnnk-too-large-params-{}", std::process::id()));
    let bytes = lying_params_file(&[]);
    isolated("params_load_checks_the_metadata_against_the_file_before_allocating", loader_cap(bytes.len()), || {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lying.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        // weight_ih_l0 of the metadata's configuration is [400000, 4]; the file's is [40, 4].
        err_with("Params::<f32>::load", Params::<f32>::load(&path), &["weight_ih_l0", "[400000, 4]", "[40, 4]"]);
        err_with("Params::<f64>::load", Params::<f64>::load(&path), &["weight_ih_l0", "[400000, 4]"]);
        let cfg = RnnConfig::new(CellKind::Lstm, 4, 100_000).num_layers(1000).build().unwrap();
        err_with("Params::load_safetensors", Params::<f32>::load_safetensors(&path, &cfg), &["weight_ih_l0", "[400000, 4]"]);
        // The deepest stack the builder accepts, bidirectional: 655360 tensors that a 5 KB
        // file cannot hold (the layout alone would take about 100 MB).
        let bytes = file_bytes(
            &[("weight_ih_l0", vec![4, 1]), ("weight_hh_l0", vec![4, 1])],
            &[("cell", "rnn_tanh"), ("input_size", "1"), ("hidden_size", "1"), ("num_layers", "65536"), ("bidirectional", "true")],
        );
        std::fs::write(&path, &bytes).unwrap();
        err_with("Params::load, 65536 bidirectional layers", Params::<f32>::load(&path), &["weight_ih_l0", "[1, 1]", "[4, 1]"]);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn case_load_checks_the_metadata_against_the_file_before_allocating() {
    let dir = std::env::temp_dir().join(format!("rnnk-too-large-case-{}", std::process::id()));
    let bytes = lying_params_file(&[("steps", "3"), ("batch", "2")]);
    isolated("case_load_checks_the_metadata_against_the_file_before_allocating", loader_cap(bytes.len()), || {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lying-case.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        // No `x` in the file: that is reported first, before the parameters are read.
        err_with("Case::<f64>::load", Case::<f64>::load(&path), &["`x`", "missing"]);
        let with_x = |meta: &[(&str, &str)], x: Vec<usize>| {
            let mut m =
                vec![("cell", "lstm"), ("input_size", "4"), ("hidden_size", "100000"), ("num_layers", "1000"), ("bidirectional", "false")];
            m.extend_from_slice(meta);
            file_bytes(&[("x", x), ("weight_ih_l0", vec![40, 4]), ("weight_hh_l0", vec![40, 10])], &m)
        };
        std::fs::write(&path, with_x(&[("steps", "3"), ("batch", "2")], vec![3, 2, 4])).unwrap();
        err_with("Case::<f32>::load", Case::<f32>::load(&path), &["weight_ih_l0", "[400000, 4]", "[40, 4]"]);
        // T and B that the file's x does not hold.
        std::fs::write(&path, with_x(&[("steps", "1000000000"), ("batch", "1000000")], vec![3, 2, 4])).unwrap();
        err_with("Case::load, T = 10^9, B = 10^6", Case::<f32>::load(&path), &["x", "[1000000000, 1000000, 4]", "[3, 2, 4]"]);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A case whose file is small but whose outputs are not (`y` is `D·Hout / I` times `x`): its
/// run allocates them fallibly.
#[test]
fn run_case_allocates_its_outputs_fallibly() {
    // LSTM I = 1, H = 128, bidirectional, T·B = 4096 · 16: x 512 KiB, parameters 1 MiB of f64;
    // y 4096·16·256 f64 = 128 MiB, refused under a cap of 32 MiB.
    let (steps, batch, h) = (4096usize, 16usize, 128usize);
    isolated("run_case_allocates_its_outputs_fallibly", 32 * MIB, || {
        let cfg = RnnConfig::new(CellKind::Lstm, 1, h).bidirectional(true).build().unwrap();
        let params = Params::<f64>::init_uniform(&cfg, 1).unwrap();
        let mut tensors: Vec<(&str, Vec<usize>)> = params.layout().specs().iter().map(|s| (s.name.as_str(), s.shape.clone())).collect();
        tensors.push(("x", vec![steps, batch, 1]));
        let (st, bt) = (steps.to_string(), batch.to_string());
        let meta = [
            ("cell", "lstm"),
            ("input_size", "1"),
            ("hidden_size", "128"),
            ("num_layers", "1"),
            ("bidirectional", "true"),
            ("steps", st.as_str()),
            ("batch", bt.as_str()),
        ];
        let bytes = file_bytes(&tensors, &meta);
        let case = Case::<f64>::from_bytes(&bytes, "<case>").expect("the case loads: it holds all it describes");
        err_with("run_case", run_case(&Reference, &case), &["`case`", "`y`", "[4096, 16, 256]"]);
    });
}

/// `RnnConfig::new(Lstm, 3, 1 << 28)` builds (2^58 parameters fit the address space), and
/// allocating its parameters is an error, not an abort.
#[test]
fn params_of_a_config_larger_than_memory_are_an_error() {
    isolated("params_of_a_config_larger_than_memory_are_an_error", 1 << 30, || {
        let cfg = RnnConfig::new(CellKind::Lstm, 3, 1 << 28).build().expect("2^58 parameters fit the address space");
        let needs = |size: usize| format!("needs {} bytes", cfg.param_count() * size);
        err_with("Params::<f32>::init_uniform", Params::<f32>::init_uniform(&cfg, 1), &["`config`", &needs(4)]);
        err_with("Params::<f64>::zeros", Params::<f64>::zeros(&cfg), &["`config`", &needs(8)]);
        err_with("Params::<rnn_kernels::f16>::zeros", Params::<rnn_kernels::f16>::zeros(&cfg), &["`config`"]);
    });
}

/// The reproducer: `Rnn::forward` on `SeqShape::new(1_000_000, 1)` with hidden 4096,
/// bidirectional, from a 4 MB input, asks for a 32 GB `y`.
#[test]
fn forward_outputs_larger_than_memory_are_an_error() {
    isolated("forward_outputs_larger_than_memory_are_an_error", 1 << 30, || {
        // An Elman RNN: the smallest parameters (134 MB) of the sizes of the reproducer.
        let cfg = RnnConfig::new(CellKind::RnnTanh, 1, 4096).bidirectional(true).build().unwrap();
        let params = Params::<f32>::zeros(&cfg).unwrap();
        let shape = SeqShape::new(1_000_000, 1).unwrap();
        let x = vec![0.25f32; 1_000_000];
        let reference = Rnn::from_params(Reference, &params).unwrap();
        let needles = ["`x`", "`y`", "[1000000, 1, 8192]", "needs 32768000000 bytes"];
        err_with("Rnn::forward, reference", reference.forward(&shape, &x, None, None), &needles);
        err_with("Rnn::forward_training, reference", reference.forward_training(&shape, &x, None, None, &mut Default::default()), &needles);
        drop(reference);
        let cpu = Rnn::from_params(Cpu::new().unwrap(), &params).unwrap();
        err_with("Rnn::forward, cpu", cpu.forward(&shape, &x, None, None), &needles);
    });
}

/// Outputs that fit but a training pass's reserve (6·H per step and sequence for an LSTM,
/// against `y`'s H) or an inference pass's workspace (`B·G·H`) that does not.
#[test]
fn reserve_and_workspace_larger_than_memory_are_an_error() {
    isolated("reserve_and_workspace_larger_than_memory_are_an_error", 1 << 30, || {
        let cfg = RnnConfig::new(CellKind::Lstm, 1, 256).build().unwrap();
        let params = Params::<f32>::init_uniform(&cfg, 1).unwrap();
        let rnn = Rnn::from_params(Reference, &params).unwrap();
        // T·B = 2^19: x 2 MiB, y 512 MiB (granted), the saved gates 2 GiB (refused).
        let (steps, batch) = (1 << 17, 4);
        let shape = SeqShape::new(steps, batch).unwrap();
        let x = vec![0.25f32; steps * batch];
        err_with(
            "Rnn::forward_training, reserve",
            rnn.forward_training(&shape, &x, None, None, &mut Default::default()),
            &["`x`", "reserve", "bytes"],
        );
        // T = 1, B = 2^19: y 512 MiB, each step's W_hh products [B, 4·H] 2 GiB.
        let shape = SeqShape::new(1, steps * batch).unwrap();
        err_with("Rnn::forward, workspace", rnn.forward(&shape, &x, None, None), &["`x`", "[B, G·H]", "bytes"]);
        let cpu = Rnn::from_params(Cpu::new().unwrap(), &params).unwrap();
        err_with("Rnn::forward, cpu workspace", cpu.forward(&shape, &x, None, None), &["`x`", "bytes"]);
    });
}

/// A training pass whose reserve fits, then a backward pass whose workspace (the gradients of
/// every step's gates, `[T, B, G·H]`) does not: an error naming the reserve it is sized from.
#[test]
fn backward_workspace_larger_than_memory_is_an_error() {
    // LSTM I = 1, H = 64, T·B = 2^17: y 32 MiB, the reserve 192 MiB (gates 128, c and h 32
    // each); backward's gradient of y 32 MiB more, then its gate gradients 128 MiB more:
    // refused under 320 MiB in all.
    isolated_total("backward_workspace_larger_than_memory_is_an_error", 1 << 30, 320 * MIB, || {
        let cfg = RnnConfig::new(CellKind::Lstm, 1, 64).build().unwrap();
        let params = Params::<f32>::init_uniform(&cfg, 1).unwrap();
        let rnn = Rnn::from_params(Cpu::new().unwrap(), &params).unwrap();
        let (steps, batch) = (1 << 15, 4);
        let shape = SeqShape::new(steps, batch).unwrap();
        let x = vec![0.25f32; steps * batch];
        let mut reserve = Default::default();
        let out = rnn.forward_training(&shape, &x, None, None, &mut reserve).expect("the training pass fits");
        assert_eq!(out.y.len(), steps * batch * 64);
        err_with("Rnn::backward", rnn.backward(&reserve, None, None, None), &["`reserve`", "[T, B, G·H]", "bytes"]);
    });
}
