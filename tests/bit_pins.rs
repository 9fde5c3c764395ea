//! Exact bits of the host backends' outputs, pinned: the reference (f64, f32) and the CPU
//! backend with every ISA this machine has, on a few problems that take the driver's main
//! paths (projection, bidirectional, variable lengths, row blocks, chunked input projections,
//! Accumulate). A change that alters any output bit of any of them fails here, so a change that
//! claims to preserve behaviour (a refactoring) can prove it.
//!
//! The expected values are in `tests/fixtures/bit_pins.txt`: one line per architecture, backend and problem,
//! a 64-bit FNV-1a hash of the bit patterns of each output. An ISA missing from the file fails
//! the test. To add the lines of a new ISA (or, after a change that is meant to alter results,
//! all of them), run `RNN_KERNELS_WRITE_BIT_PINS=1 cargo test --release --test bit_pins`: it
//! rewrites the lines of the backends this machine runs and keeps the others (NEON's: run it under qemu as `.ci/neon.sh` does, with the same variable).
//!
//! Inputs come from a generator written here, so that nothing the library changes (its own
//! random initialisation included) moves the inputs.

use rnn_kernels::testkit::pins::{self, fnv1a};
use rnn_kernels::{Backend, CellKind, Cpu, Direction, Element, Isa, Merge, Reference, Rnn, RnnConfig, SeqShape};
use std::collections::BTreeMap;

/// splitmix64, values uniform in [-r, r).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, n: usize, r: f64) -> Vec<f64> {
        (0..n).map(|_| ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * r).collect()
    }
}

trait Bits: Element {
    fn bits(self) -> u64;
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
}

fn hash<T: Bits>(v: &[T]) -> u64 {
    fnv1a(v.iter().map(|&x| x.bits()))
}

struct Problem {
    name: &'static str,
    cfg: RnnConfig,
    shape: SeqShape,
    seed: u64,
}

fn problems() -> Vec<Problem> {
    let p = |name, cfg: RnnConfig, t: usize, lengths: Vec<usize>, seed| Problem {
        name,
        cfg,
        shape: SeqShape::with_lengths(t, lengths).unwrap(),
        seed,
    };
    vec![
        p(
            "lstm_proj_l2_bi_varlen",
            RnnConfig::new(CellKind::Lstm, 13, 24).num_layers(2).bidirectional(true).proj_size(10).build().unwrap(),
            7,
            vec![7, 3, 5, 1, 6],
            1,
        ),
        p("lstm_l1_b1", RnnConfig::new(CellKind::Lstm, 64, 96).build().unwrap(), 9, vec![9], 2),
        p(
            "lstm_nobias_l2_rows",
            RnnConfig::new(CellKind::Lstm, 20, 48).num_layers(2).bias(false).build().unwrap(),
            4,
            (0..100).map(|b| 1 + b % 4).collect(),
            3,
        ),
        p(
            "gru_l2_uni_b37_chunks",
            RnnConfig::new(CellKind::Gru, 9, 33).num_layers(2).build().unwrap(),
            20,
            (0..37).map(|b| 20 - b % 7).collect(),
            4,
        ),
        p("gru_l1_bi_b3", RnnConfig::new(CellKind::Gru, 70, 130).bidirectional(true).build().unwrap(), 5, vec![5, 2, 4], 5),
        p("rnn_relu_l2_bi_b1", RnnConfig::new(CellKind::RnnRelu, 17, 40).num_layers(2).bidirectional(true).build().unwrap(), 5, vec![5], 6),
        p("rnn_tanh_l1_b20", RnnConfig::new(CellKind::RnnTanh, 33, 200).build().unwrap(), 6, (0..20).map(|b| 6 - b % 3).collect(), 7),
        // The cell options (issue 16's variants) and the layer norms, with enough rows for
        // the column sums (biases, gains) to be split across threads.
        p(
            "lstm_ln_peephole_clip_l2_bi_varlen",
            RnnConfig::new(CellKind::Lstm, 13, 24)
                .num_layers(2)
                .bidirectional(true)
                .peephole(true)
                .gate_clip(2.0)
                .layer_norm(true)
                .build()
                .unwrap(),
            7,
            vec![7, 3, 5, 1, 6],
            8,
        ),
        p(
            "lstm_ln_proj_input_forget_reverse_rows",
            RnnConfig::new(CellKind::Lstm, 20, 64)
                .proj_size(20)
                .input_forget(true)
                .direction(Direction::Reverse)
                .layer_norm(true)
                .build()
                .unwrap(),
            4,
            (0..100).map(|b| 1 + b % 4).collect(),
            9,
        ),
        p(
            "gru_ln_l2_bi_sum_rows",
            RnnConfig::new(CellKind::Gru, 20, 48).num_layers(2).bidirectional(true).merge(Merge::Sum).layer_norm(true).build().unwrap(),
            4,
            (0..100).map(|b| 4 - b % 3).collect(),
            10,
        ),
        p(
            "gru_reset_before_clip_batch_first",
            RnnConfig::new(CellKind::Gru, 9, 33).linear_before_reset(false).gate_clip(1.5).batch_first(true).build().unwrap(),
            6,
            (0..37).map(|b| 6 - b % 5).collect(),
            11,
        ),
        p(
            "rnn_relu_clip_reverse",
            RnnConfig::new(CellKind::RnnRelu, 17, 40).gate_clip(0.8).direction(Direction::Reverse).build().unwrap(),
            5,
            vec![5, 2, 4],
            12,
        ),
    ]
}

/// `name=hash` for each output of a training forward, an inference forward (which must equal
/// it), a backward that overwrites and one that accumulates onto a nonzero buffer.
fn run<T: Bits, B: Backend<T, Buf = [T]>>(backend: B, p: &Problem) -> String {
    let (cfg, shape) = (&p.cfg, &p.shape);
    let mut g = Gen(p.seed);
    let n = |s: [usize; 3]| s.iter().product::<usize>();
    let conv = |v: Vec<f64>| v.into_iter().map(<T as Element>::from_f64).collect::<Vec<T>>();
    let lstm = cfg.cell().has_cell_state();
    let nparams = rnn_kernels::ParamLayout::new(cfg).len();
    let params = conv(g.uniform(nparams, 1.0 / (cfg.hidden_size() as f64).sqrt()));
    let x = conv(g.uniform(n(shape.x_shape(cfg)), 1.5));
    let h0 = conv(g.uniform(n(shape.h_shape(cfg)), 0.5));
    let c0 = lstm.then(|| conv(g.uniform(n(shape.c_shape(cfg)), 0.5)));
    let dy = conv(g.uniform(n(shape.y_shape(cfg)), 1.0));
    let dhn = conv(g.uniform(n(shape.h_shape(cfg)), 1.0));
    let dcn = lstm.then(|| conv(g.uniform(n(shape.c_shape(cfg)), 1.0)));
    let mut acc = conv(g.uniform(nparams, 0.25));

    let rnn = Rnn::new(backend, cfg, &params[..]).unwrap();
    let mut reserve = Default::default();
    let out = rnn.forward_training(shape, &x, Some(&h0), c0.as_deref(), &mut reserve).unwrap();
    let inf = rnn.forward(shape, &x, Some(&h0), c0.as_deref()).unwrap();
    assert!(
        hash(&inf.y) == hash(&out.y) && hash(&inf.hn) == hash(&out.hn) && inf.cn.as_deref().map(hash) == out.cn.as_deref().map(hash),
        "{}: inference differs from training's forward",
        p.name
    );
    let gr = rnn.backward(&reserve, Some(&dy), Some(&dhn), dcn.as_deref()).unwrap();
    let ga = rnn.backward_accumulate(&reserve, Some(&dy), Some(&dhn), dcn.as_deref(), &mut acc).unwrap();
    assert!(hash(&ga.dx) == hash(&gr.dx), "{}: dx differs between Overwrite and Accumulate", p.name);

    let mut parts = vec![("y", hash(&out.y)), ("hn", hash(&out.hn))];
    if let Some(cn) = &out.cn {
        parts.push(("cn", hash(cn)));
    }
    parts.push(("dx", hash(&gr.dx)));
    parts.push(("dh0", hash(&gr.dh0)));
    if let Some(dc0) = &gr.dc0 {
        parts.push(("dc0", hash(dc0)));
    }
    parts.push(("dparams", hash(gr.dparams.as_deref().unwrap())));
    parts.push(("dparams_acc", hash(&acc)));
    parts.iter().map(|(k, v)| format!("{k}={v:016x}")).collect::<Vec<_>>().join(" ")
}

/// Every backend this machine runs: key (`arch backend problem`) to the line of hashes. The
/// architecture is part of the key because the reference and scalar kernels call the platform's
/// `exp` and `tanh`, whose last bit may differ between x86-64 and AArch64 (and code compiled for
/// one architecture may fuse operations that the other does not).
fn computed() -> BTreeMap<String, String> {
    let arch = std::env::consts::ARCH;
    let mut got = BTreeMap::new();
    for p in problems() {
        got.insert(format!("{arch} reference-f64 {}", p.name), run::<f64, _>(Reference, &p));
        got.insert(format!("{arch} reference-f32 {}", p.name), run::<f32, _>(Reference, &p));
        for isa in Isa::available() {
            // The promise is the same bits for any thread count, so one and two threads must
            // both match the one pinned line.
            let one = run::<f32, _>(Cpu::with_isa(isa, 1).unwrap(), &p);
            let two = run::<f32, _>(Cpu::with_isa(isa, 2).unwrap(), &p);
            assert_eq!(one, two, "cpu-{isa} {}: 1 and 2 threads differ", p.name);
            got.insert(format!("{arch} cpu-{isa} {}", p.name), two);
        }
    }
    got
}

#[test]
fn outputs_match_pinned_bits() {
    let got = computed();
    pins::check(&got);
    eprintln!("{} pinned results checked ({})", got.len(), Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", "));
}
