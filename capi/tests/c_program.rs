//! The C ABI from C: builds this crate's shared library, compiles tests/c/capi_test.c with the
//! system C compiler against include/rnn_kernels.h and that library, runs it on each backend, and
//! compares everything it wrote, bit for bit, with the same computation through the Rust API
//! (same backend, same thread count). The C program itself checks every kind of bad argument.
//!
//! A second C program, tests/c/capi_hardening.c, is self-contained: every length checked before
//! its buffer is touched (on buffers of exactly the right size), absurd sizes, overlaps, files
//! with a wrong dtype or shape, one call provoking each status code of the header, and many
//! threads on one model (bit-identical to one thread; changing calls refused with RNNK_ERR_BUSY).
//!
//! A third, tests/c/capi_options.c, creates one model with cell options per cell
//! (`rnnk_model_create_ex`): its outputs are compared bit for bit with the Rust API's, or, where
//! the Rust API refuses an option on a backend, the C ABI must refuse it with
//! RNNK_ERR_UNSUPPORTED naming the option.
//!
//! The library is built by a nested `cargo build` into the same target directory: `cargo test`
//! does not build a `cdylib` for integration tests, so without it a stale library could be
//! tested.
//!
//! Two variables run the C programs under a checker (.ci/asan.sh sets them):
//! `RNN_KERNELS_CAPI_CFLAGS` adds compiler flags (e.g. `-fsanitize=address -g`) and
//! `RNN_KERNELS_CAPI_RUNNER` is a command line each program is run under (e.g.
//! `valgrind --error-exitcode=99`); either makes a run that reports anything fail.

use rnnk_core::attention::{AttentionBackend, AttentionConfig, AttentionShape, Score};
use rnnk_core::{Backend, CellKind, Cpu, Direction, Error, Merge, Params, Reference, Rnn, RnnConfig, SeqShape};
mod common;

use common::{build_library, Case};
use std::path::{Path, PathBuf};
use std::process::Command;

const I: usize = 3;
const H: usize = 5;
const T: usize = 5;
const B: usize = 3;
const LENGTHS: [usize; B] = [5, 2, 4];
/// The parents of the C program's beam of 2B hypotheses (its `beam_rows`).
const BEAM_ROWS: [usize; 2 * B] = [2, 0, 0, 1, 2, 1];

fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The inputs of the C program, written into `dir`.
fn inputs(dir: &Path) -> Case {
    let inp = Case::lstm(I, H, T, B);
    params_files(dir, &inp);
    inp
}

fn params_files(dir: &Path, inp: &Case) {
    inp.params.save_safetensors(dir.join("params.safetensors")).unwrap();
    for (name, v) in [
        ("params", inp.params.as_slice()),
        ("x", &inp.x),
        ("h0", &inp.h0),
        ("c0", &inp.c0),
        ("dy", &inp.dy),
        ("dhn", &inp.dhn),
        ("dcn", &inp.dcn),
        ("dparams0", &inp.dparams0),
    ] {
        write_f32(&dir.join(format!("{name}.f32")), v);
    }
}

/// What the C program must have written, computed with the Rust API on `backend`.
fn expected<Bk: Backend<f32, Buf = [f32]>>(backend: Bk, inp: &Case) -> Vec<(&'static str, Vec<f32>)> {
    let rnn = Rnn::from_params(backend, &inp.params).unwrap();
    let shape = SeqShape::with_lengths(T, LENGTHS.to_vec()).unwrap();
    let inf = rnn.forward(&shape, &inp.x, Some(&inp.h0), Some(&inp.c0)).unwrap();
    let mut reserve = Default::default();
    let tr = rnn.forward_training(&shape, &inp.x, Some(&inp.h0), Some(&inp.c0), &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&inp.dy), Some(&inp.dhn), Some(&inp.dcn)).unwrap();
    let mut acc = inp.dparams0.clone();
    rnn.backward_accumulate(&reserve, Some(&inp.dy), Some(&inp.dhn), Some(&inp.dcn), &mut acc).unwrap();
    vec![
        ("y_inf", inf.y.clone()),
        ("hn_inf", inf.hn),
        ("cn_inf", inf.cn.unwrap()),
        ("y_tr", tr.y),
        ("hn_tr", tr.hn),
        ("cn_tr", tr.cn.unwrap()),
        ("dx", g.dx),
        ("dh0", g.dh0),
        ("dc0", g.dc0.unwrap()),
        ("dparams", g.dparams.unwrap()),
        ("dparams_acc", acc),
        ("y_raw", inf.y),
    ]
}

/// What the C program's decoder-step and attention part must have written: a unidirectional
/// 2-layer LSTM (parameters of seed 0, as `rnnk_model_create` makes them) run one step at a time
/// from the first `L·B·H` floats of `h0` and `c0` over `x`'s steps, walked back with `dy`'s first
/// `T·B·H` floats, then a general attention (O = H, the first parameters of `params`) of its
/// outputs over the keys `dy [T, B, 2H]`; and a beam search's step: an inference run from the
/// same `h0`, `c0`, one step of `x`'s first, its state reordered by [`BEAM_ROWS`] (each layer's
/// rows gathered by hand through `Steps::state_mut`), a step of the next `K·I` floats of `x`,
/// and the attention of its output over the memory gathered by the same rows
/// (`AttentionMemory::gather`).
fn expected_steps<Bk: Backend<f32, Buf = [f32]>, At: AttentionBackend<f32>>(
    backend: Bk, attention: &At, inp: &Case,
) -> Vec<(&'static str, Vec<f32>)> {
    let cfg = RnnConfig::new(CellKind::Lstm, I, H).num_layers(2).build().unwrap();
    let rnn = Rnn::from_params(backend, &Params::<f32>::init_uniform(&cfg, 0).unwrap()).unwrap();
    let (dh, dx, dy) = (2 * B * H, B * I, B * H);
    let mut run = rnn.start_steps(B, Some(&inp.h0[..dh]), Some(&inp.c0[..dh]), true, None).unwrap();
    let mut y = Vec::new();
    for t in 0..T {
        y.extend(rnn.step(&mut run, &inp.x[t * dx..(t + 1) * dx]).unwrap());
    }
    let mut walk = rnn.backward_steps(&run, None, None).unwrap();
    for t in (0..T).rev() {
        walk.step(&rnn, Some(&inp.dy[t * dy..(t + 1) * dy])).unwrap();
    }
    let g = walk.finish().unwrap();
    let acfg = AttentionConfig::new(Score::General, H, 2 * H).output_size(H).build().unwrap();
    let ap = &inp.params.as_slice()[..acfg.param_len()];
    let memory = attention.attention_memory(&acfg, &AttentionShape::new(1, T, LENGTHS.to_vec()).unwrap(), ap, &inp.dy).unwrap();
    let o = attention.attention_forward_with(&acfg, &AttentionShape::new(T, T, LENGTHS.to_vec()).unwrap(), ap, &memory, &y).unwrap();
    let mut beam = rnn.start_steps(B, Some(&inp.h0[..dh]), Some(&inp.c0[..dh]), false, None).unwrap();
    let beam_y1 = rnn.step(&mut beam, &inp.x[..dx]).unwrap();
    let (h, c) = beam.state_mut().unwrap();
    for v in [h, c.unwrap()] {
        let old = std::mem::take(v);
        for l in 0..2 {
            for &r in &BEAM_ROWS {
                v.extend_from_slice(&old[(l * B + r) * H..(l * B + r + 1) * H]);
            }
        }
    }
    let (beam_h, beam_c) = (beam.h().to_vec(), beam.c().unwrap().to_vec());
    let k = BEAM_ROWS.len();
    let beam_y = rnn.step(&mut beam, &inp.x[dx..dx + k * I]).unwrap();
    let gathered = memory.gather(&BEAM_ROWS).unwrap();
    let bo = attention
        .attention_forward_with(&acfg, &AttentionShape::new(1, T, gathered.lengths().to_vec()).unwrap(), ap, &gathered, &beam_y)
        .unwrap();
    vec![
        ("beam_y1", beam_y1),
        ("beam_h", beam_h),
        ("beam_c", beam_c),
        ("beam_y", beam_y),
        ("beam_weights", bo.weights),
        ("beam_context", bo.context),
        ("beam_hidden", bo.hidden),
        ("steps_y", y),
        ("steps_dx", g.dx),
        ("steps_dh0", g.dh0),
        ("steps_dc0", g.dc0.unwrap()),
        ("steps_dparams", g.dparams.unwrap()),
        ("attn_weights", o.weights),
        ("attn_context", o.context),
        ("attn_hidden", o.hidden),
    ]
}

/// The C compiler (`$CC` or `cc`); `None` (with a message) when it targets another architecture
/// than this test (a cross-compiled run under qemu: then neither the nested host build of the
/// library nor the C program would match).
fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let machine = Command::new(&cc).arg("-dumpmachine").output().expect("run the C compiler (cc, or $CC)");
    let machine = String::from_utf8_lossy(&machine.stdout).trim().to_string();
    let arch = std::env::consts::ARCH;
    if !machine.starts_with(arch) {
        println!("skipped: this test runs on {arch}, but {cc} builds for {machine}");
        return None;
    }
    Some(cc)
}

/// Compiles the C program `tests/c/<name>.c` against the header and the shared library; `None`
/// (with a message) when the C compiler targets another architecture than this test (a
/// cross-compiled run).
fn compile(name: &str, lib_dir: &Path, out: &Path) -> Option<PathBuf> {
    let cc = c_compiler()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = out.join(name);
    let extra = std::env::var("RNN_KERNELS_CAPI_CFLAGS").unwrap_or_default();
    let status = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-pthread"])
        .args(extra.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .arg(root.join(format!("tests/c/{name}.c")))
        .arg(format!("-I{}", root.join("../include").display()))
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lrnn_kernels")
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling tests/c/{name}.c failed: {status}");
    Some(exe)
}

/// The command that runs `exe`: under `RNN_KERNELS_CAPI_RUNNER` when it is set.
fn runner(exe: &Path) -> Command {
    let wrapper = std::env::var("RNN_KERNELS_CAPI_RUNNER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let Some(first) = words.next() else { return Command::new(exe) };
    let mut cmd = Command::new(first);
    cmd.args(words).arg(exe);
    cmd
}

/// The backends and thread counts each C program runs on.
const RUNS: [(&str, usize); 3] = [("reference", 0), ("cpu", 1), ("cpu", 2)];

fn feature() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "nocuda"
    }
}

#[test]
fn c_program_keeps_the_promises_under_hostile_input() {
    if c_compiler().is_none() {
        return;
    }
    let lib_dir = build_library();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi_hardening");
    std::fs::create_dir_all(&work).unwrap();
    let Some(exe) = compile("capi_hardening", &lib_dir, &work) else { return };
    for (backend, threads) in RUNS {
        let dir = work.join(format!("{backend}-{threads}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = runner(&exe).arg(&dir).arg(backend).arg(threads.to_string()).arg(feature()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{backend}, {threads} thread(s):\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the C program failed on {backend} ({threads} threads): {}", out.status);
        assert!(stdout.contains(" checks, 0 failed"), "the C program did not report its checks");
    }
}

#[test]
fn c_program_matches_the_rust_api_and_rejects_bad_arguments() {
    if c_compiler().is_none() {
        return;
    }
    let lib_dir = build_library();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi_c_program");
    std::fs::create_dir_all(&work).unwrap();
    let Some(exe) = compile("capi_test", &lib_dir, &work) else { return };
    for (backend, threads) in RUNS {
        let dir = work.join(format!("{backend}-{threads}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let inp = inputs(&dir);
        let out = runner(&exe).arg(&dir).arg(backend).arg(threads.to_string()).arg(feature()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{backend}, {threads} thread(s):\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the C program failed on {backend} ({threads} threads): {}", out.status);
        assert!(stdout.contains(" checks, 0 failed"), "the C program did not report its checks");

        let mut want = match backend {
            "reference" => expected(Reference, &inp),
            _ => expected(Cpu::with_threads(threads).unwrap(), &inp),
        };
        want.extend(match backend {
            "reference" => expected_steps(Reference, &Reference, &inp),
            _ => expected_steps(Cpu::with_threads(threads).unwrap(), &Cpu::with_threads(threads).unwrap(), &inp),
        });
        for (name, w) in want {
            let got = read_f32(&dir.join(format!("{name}.out.f32")));
            assert_eq!(got.len(), w.len(), "{backend}/{threads}: {name} length");
            let diff = got.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                diff.is_none(),
                "{backend}/{threads}: {name}[{}] from C {} != Rust {}",
                diff.unwrap(),
                got[diff.unwrap()],
                w[diff.unwrap()]
            );
        }
        let saved = Params::<f32>::load(dir.join("saved.safetensors")).unwrap();
        assert_eq!(saved.config(), &inp.cfg);
        assert!(saved.as_slice().iter().zip(inp.params.as_slice()).all(|(a, b)| a.to_bits() == b.to_bits()), "saved parameters differ");
    }
}

/// One model with cell options per cell for tests/c/capi_options.c: a name, the configuration
/// (built with the Rust builder), the `options` string the C program passes for it, and what
/// `rnnk_model_options` must give back.
struct Variant {
    name: &'static str,
    cfg: RnnConfig,
    options: &'static str,
    canonical: &'static str,
}

fn variants() -> Vec<Variant> {
    let new = |cell| RnnConfig::new(cell, I, H).num_layers(2);
    vec![
        // The clip is below the pre-activations' range here (weights ±1/√H, inputs ±1), so it cuts.
        Variant {
            name: "lstm_peephole_clip",
            cfg: new(CellKind::Lstm).peephole(true).gate_clip(0.5).build().unwrap(),
            options: "peephole, gate_clip=0.5",
            canonical: "peephole=true,gate_clip=0.5",
        },
        Variant {
            name: "gru_cho_batch_first",
            cfg: new(CellKind::Gru).linear_before_reset(false).batch_first(true).build().unwrap(),
            options: "linear_before_reset=false,batch_first",
            canonical: "linear_before_reset=false,batch_first=true",
        },
        Variant {
            name: "rnn_tanh_reverse",
            cfg: new(CellKind::RnnTanh).direction(Direction::Reverse).build().unwrap(),
            options: "direction=reverse",
            canonical: "direction=reverse",
        },
        Variant {
            name: "gru_layer_norm_reverse",
            cfg: new(CellKind::Gru).layer_norm(true).direction(Direction::Reverse).build().unwrap(),
            options: "layer_norm, direction=reverse",
            canonical: "direction=reverse,layer_norm=true",
        },
        Variant {
            name: "lstm_layer_norm",
            cfg: new(CellKind::Lstm).layer_norm(true).build().unwrap(),
            options: "layer_norm=1",
            canonical: "layer_norm=true",
        },
        Variant {
            name: "lstm_dropout",
            cfg: new(CellKind::Lstm).dropout(0.25).build().unwrap(),
            options: "dropout=0.25",
            canonical: "dropout=0.25",
        },
        Variant {
            name: "lstm_zoneout",
            cfg: new(CellKind::Lstm).zoneout(0.3).zoneout_cell(0.2).build().unwrap(),
            options: "zoneout=0.3, zoneout_cell=0.2",
            canonical: "zoneout=0.3,zoneout_cell=0.2",
        },
        Variant {
            name: "gru_zoneout_dropout",
            cfg: new(CellKind::Gru).dropout(0.4).zoneout(0.15).recurrent_dropout(0.25).input_dropout(0.2).build().unwrap(),
            options: "recurrent_dropout=0.25, input_dropout = 0.2, zoneout=0.15,dropout=0.4",
            canonical: "dropout=0.4,zoneout=0.15,recurrent_dropout=0.25,input_dropout=0.2",
        },
        Variant {
            name: "lstm_sum_input_forget",
            cfg: new(CellKind::Lstm).bidirectional(true).merge(Merge::Sum).input_forget(true).build().unwrap(),
            options: "merge = sum, input_forget = 1",
            canonical: "merge=sum,input_forget=true",
        },
    ]
}

/// What the C program must have written for `inp` on `backend`: `Ok` with the outputs, or the
/// option the backend refuses.
fn expected_options<Bk: Backend<f32, Buf = [f32]>>(backend: Bk, inp: &Case) -> Result<Vec<(&'static str, Vec<f32>)>, String> {
    let rnn = match Rnn::new(backend, &inp.cfg, inp.params.as_slice()) {
        Ok(rnn) => rnn,
        Err(Error::Unsupported { option, .. }) => return Err(option),
        Err(e) => panic!("{:?}: {e}", inp.cfg),
    };
    let lstm = inp.cfg.cell().has_cell_state();
    fn opt(lstm: bool, v: &[f32]) -> Option<&[f32]> {
        lstm.then_some(v)
    }
    let shape = SeqShape::with_lengths(T, LENGTHS.to_vec()).unwrap();
    let inf = rnn.forward(&shape, &inp.x, Some(&inp.h0), opt(lstm, &inp.c0)).unwrap();
    let mut reserve = Default::default();
    let masks = rnnk_core::masks::MaskStream::new(7, 3);
    let tr = rnn.forward_training_masked(&shape, &inp.x, Some(&inp.h0), opt(lstm, &inp.c0), masks, &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&inp.dy), Some(&inp.dhn), opt(lstm, &inp.dcn)).unwrap();
    let mut out = vec![("y_inf", inf.y), ("hn_inf", inf.hn), ("y_tr", tr.y), ("hn_tr", tr.hn), ("dx", g.dx), ("dh0", g.dh0)];
    out.push(("dparams", g.dparams.unwrap()));
    if lstm {
        out.extend([("cn_inf", inf.cn.unwrap()), ("cn_tr", tr.cn.unwrap()), ("dc0", g.dc0.unwrap())]);
    }
    Ok(out)
}

#[test]
fn c_program_runs_each_cell_with_options_like_the_rust_api() {
    if c_compiler().is_none() {
        return;
    }
    let lib_dir = build_library();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi_options");
    std::fs::create_dir_all(&work).unwrap();
    let Some(exe) = compile("capi_options", &lib_dir, &work) else { return };
    let (mut ran, mut refused) = (Vec::new(), Vec::new());
    for v in variants() {
        for (backend, threads) in RUNS {
            let dir = work.join(format!("{}-{backend}-{threads}", v.name));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let inp = Case::new(v.cfg.clone(), T, B);
            params_files(&dir, &inp);
            let want = match backend {
                "reference" => expected_options(Reference, &inp),
                _ => expected_options(Cpu::with_threads(threads).unwrap(), &inp),
            };
            let expect = match &want {
                Ok(_) => "ok".to_string(),
                Err(option) => format!("unsupported:{option}"),
            };
            let cfg = &v.cfg;
            let out = runner(&exe)
                .arg(&dir)
                .arg(backend)
                .arg(threads.to_string())
                .arg(cfg.cell().name())
                .arg(cfg.num_layers().to_string())
                .arg(if cfg.bidirectional() { "1" } else { "0" })
                .args([v.options, v.canonical, &expect])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            println!("{}:\n{stdout}{}", v.name, String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "the C program failed for {} on {backend} ({threads} threads): {}", v.name, out.status);
            assert!(stdout.contains(" checks, 0 failed"), "the C program did not report its checks");
            let Ok(want) = want else {
                refused.push(format!("{} on {backend}: {expect}", v.name));
                continue;
            };
            for (name, w) in want {
                let got = read_f32(&dir.join(format!("{name}.out.f32")));
                assert_eq!(got.len(), w.len(), "{}, {backend}/{threads}: {name} length", v.name);
                let diff = got.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(
                    diff.is_none(),
                    "{}, {backend}/{threads}: {name}[{}] from C {} != Rust {}",
                    v.name,
                    diff.unwrap(),
                    got[diff.unwrap()],
                    w[diff.unwrap()]
                );
            }
            // The saved file's metadata holds the options: it loads without a configuration.
            let saved = Params::<f32>::load(dir.join("saved.safetensors")).unwrap();
            assert_eq!(saved.config(), &v.cfg, "{}: the configuration saved from C", v.name);
            ran.push(format!("{} on {backend}/{threads}", v.name));
        }
    }
    println!("ran (bit-identical to the Rust API): {}", ran.join("; "));
    println!(
        "refused with RNNK_ERR_UNSUPPORTED, as by the Rust API: {}",
        if refused.is_empty() { "none".into() } else { refused.join("; ") }
    );
}
