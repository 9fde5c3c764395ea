//! Checks a backend against PyTorch case files (format: `docs/case-format.md`).
//!
//! ```text
//! cargo run --release --example verify -- [--backend reference|cpu|cuda] [--dtype f64|f32|f16|bf16] [--tol T] FILE...
//! ```
//!
//! Prints one line per file: name, backend, ` ok` or ` FAIL`, the largest error and the tensor
//! it was in, and `(forward only)` for a case without gradients (onnxruntime's, for example),
//! of which only `y`, `hn`, `cn` are compared. A case whose metadata sets a cell option the
//! backend does not implement fails with the error naming the option. Exits with 1 if any file
//! fails, 2 on a usage error.
//!
//! Tolerances without `--tol`: the f64 reference 1e-9 against an oracle that computed in f64
//! (the file's `y` is F64), 1e-5 against one that computed in f32 (onnxruntime's cases); the f32
//! reference and the CPU and CUDA backends 1e-4. The whole command line is
//! checked before any file is read: `--tol` must be a finite number at least 0, the backend and
//! dtype a combination this binary runs, each option given once, every FILE an existing file.
//!
//! `--backend cuda --dtype f16|bf16` runs the CUDA backend with 16-bit storage on the file's
//! inputs rounded to that type, against the f64 reference on the same rounded values, with the
//! derived bounds of `rnn_kernels::testkit::tolerance` (not `--tol`); it prints the largest error / bound
//! ratio and the output it was in.

use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{Backend, Cpu, Element, Reference};
use std::process::ExitCode;

const USAGE: &str = "usage: verify [--backend reference|cpu|cuda] [--dtype f64|f32|f16|bf16] [--tol T] FILE...";

/// The validated command line.
#[derive(Debug)]
pub(crate) struct Args {
    backend: String,
    dtype: Option<String>,
    tol: Option<f64>,
    files: Vec<String>,
}

/// Parses and checks the whole command line (without the program name) before any work is
/// done: every value in its range, the backend and dtype a combination this binary runs, every
/// file present. The error is the message to print, with the usage where it helps.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args { backend: "reference".into(), dtype: None, tol: None, files: vec![] };
    let mut seen: Vec<String> = vec![];
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg.starts_with("--") && arg != "--" && seen.contains(&arg) {
            return Err(format!("{arg}: given more than once\n{USAGE}"));
        }
        seen.push(arg.clone());
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--backend" => a.backend = value("--backend")?,
            "--dtype" => a.dtype = Some(value("--dtype")?),
            "--tol" => a.tol = Some(parse_tol(&value("--tol")?)?),
            "-h" | "--help" => return Err(USAGE.into()),
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option {f}\n{USAGE}")),
            _ => a.files.push(arg),
        }
    }
    check_backend_dtype(&a.backend, a.dtype.as_deref(), a.tol.is_some())?;
    if a.files.is_empty() {
        return Err(format!("no case files given\n{USAGE}"));
    }
    for f in &a.files {
        if !std::path::Path::new(f).is_file() {
            return Err(format!(
                "FILE {f:?}: expected a case file, got {}",
                if std::path::Path::new(f).exists() { "something that is not a file" } else { "no such file" }
            ));
        }
    }
    Ok(a)
}

/// `--tol`: a finite number, at least 0 (an error is compared with `<=`, so NaN would fail
/// every file and a negative tolerance every file but an exact one).
fn parse_tol(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(_) => Err(format!("--tol: expected a finite number at least 0, got {v:?}")),
        Err(_) => Err(format!("--tol: expected a number, got {v:?}")),
    }
}

/// Whether this binary runs `backend` with `dtype` (and a `--tol`, where one is used).
fn check_backend_dtype(backend: &str, dtype: Option<&str>, tol: bool) -> Result<(), String> {
    match (backend, dtype) {
        ("reference", None | Some("f64" | "f32")) | ("cpu", None | Some("f32")) => Ok(()),
        ("reference", Some(d)) => Err(format!("--dtype: expected f64 or f32 for the reference backend, got {d:?}")),
        ("cpu", Some(d)) => Err(format!("--dtype: the cpu backend computes in f32, got {d:?}")),
        ("cuda", _) if !cfg!(feature = "cuda") => Err(format!(
            "error: {}",
            rnn_kernels::Error::BackendUnavailable {
                backend: backend.into(),
                reason: "this binary was built without the `cuda` feature: cargo run --release --features cuda --example verify -- --backend cuda ...".into(),
            }
        )),
        ("cuda", None | Some("f32")) => Ok(()),
        ("cuda", Some("f16" | "bf16")) if tol => {
            Err("--tol: f16/bf16 storage is checked against derived bounds (rnn_kernels::testkit::tolerance), not a tolerance".into())
        }
        ("cuda", Some("f16" | "bf16")) => Ok(()),
        ("cuda", Some(d)) => Err(format!("--dtype: the cuda backend stores f32, f16 or bf16, got {d:?}")),
        (other, _) => Err(format!("--backend: expected reference, cpu or cuda, got {other:?}")),
    }
}

/// Runs `check` on every file, printing one line each (`check` says whether the file passed and
/// how close it came); returns whether all passed.
fn report_all(files: &[String], label: &str, check: impl Fn(&str) -> rnn_kernels::Result<(bool, String)>) -> bool {
    let mut all_ok = true;
    for f in files {
        let name = std::path::Path::new(f).file_name().map_or(f.clone(), |n| n.to_string_lossy().into_owned());
        match check(f) {
            Ok((ok, how)) => {
                println!("{name} {label} {} {how}", if ok { " ok" } else { " FAIL" });
                all_ok &= ok;
            }
            Err(e) => {
                println!("{name} {label}  FAIL error: {e}");
                all_ok = false;
            }
        }
    }
    all_ok
}

/// Runs every file on one backend in element type `T`, each within `tol` (`--tol`) or else the
/// default `default_tol` gives for it; returns whether all passed.
fn verify_all<T: Element, B: Backend<T, Buf = [T]>>(
    backend: &B,
    label: &str,
    tol: Option<f64>,
    default_tol: impl Fn(&Case<T>) -> f64,
    files: &[String],
) -> bool {
    report_all(files, label, |f| {
        let case = Case::<T>::load(f)?;
        let tol = tol.unwrap_or_else(|| default_tol(&case));
        let report = run_case(backend, &case)?;
        let (worst, err) = report.worst();
        let scope = if report.forward_only { " (forward only)" } else { "" };
        Ok((report.passes(tol), format!("max_err={err:.3e} in {worst} (tol {tol:.0e}){scope}")))
    })
}

/// The f64 reference's default tolerance for a case: 1e-9 where the oracle computed in f64,
/// 1e-5 where it computed in f32 (its own rounding, about 1e-7 per step, accumulates over the
/// steps and layers of the small cases to a few 1e-7).
fn reference_f64_tol(case: &Case<f64>) -> f64 {
    match case.expected_dtype {
        Some(rnn_kernels::Dtype::F64) | None => 1e-9,
        Some(_) => 1e-5,
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    // `parse` has checked the backend and dtype: every combination left runs here.
    let ok = match (args.backend.as_str(), args.dtype.as_deref()) {
        ("reference", Some("f32")) => verify_all::<f32, _>(&Reference, "reference-f32", args.tol, |_| 1e-4, &args.files),
        ("reference", _) => verify_all::<f64, _>(&Reference, "reference-f64", args.tol, reference_f64_tol, &args.files),
        ("cpu", _) => match Cpu::new() {
            Ok(cpu) => verify_all::<f32, _>(&cpu, &format!("cpu-{}", cpu.isa()), args.tol, |_| 1e-4, &args.files),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        #[cfg(feature = "cuda")]
        ("cuda", Some(d @ ("f16" | "bf16"))) => match rnn_kernels::CudaHost::new() {
            Ok(cuda) if d == "f16" => half::verify_all::<rnn_kernels::f16>(&cuda, &format!("{}-f16", cuda.0.device_name()), &args.files),
            Ok(cuda) => half::verify_all::<rnn_kernels::bf16>(&cuda, &format!("{}-bf16", cuda.0.device_name()), &args.files),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        #[cfg(feature = "cuda")]
        ("cuda", _) => match rnn_kernels::CudaHost::new() {
            Ok(cuda) => verify_all::<f32, _>(&cuda, cuda.0.device_name(), args.tol, |_| 1e-4, &args.files),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        (other, d) => {
            eprintln!("--backend {other:?} with --dtype {d:?} is not run by this binary");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The CUDA backend with 16-bit storage against the f64 reference on the same rounded values.
#[cfg(feature = "cuda")]
mod half {
    use rnn_kernels::testkit::case::Case;
    use rnn_kernels::testkit::tolerance::{error_ratios, half_storage_bounds, reference_outputs, HalfInputs, OUTPUTS};
    use rnn_kernels::CudaElement;
    use rnn_kernels::{CudaHost, Element, Result, Rnn};

    fn up<T: Element>(v: &[T]) -> Vec<f64> {
        v.iter().map(|a| a.to_f64()).collect()
    }

    /// (largest error / bound, the output it was in) for one file.
    fn check<T: CudaElement>(cuda: &CudaHost, file: &str) -> Result<(f64, &'static str)> {
        let case = Case::<T>::load(file)?;
        let (cfg, shape) = (&case.config, &case.shape);
        let lstm = cfg.cell().has_cell_state();
        // The file's tensor, or zeros of its shape (allocated fallibly: sized from the metadata).
        let or_zeros = |given: &Option<Vec<T>>, name: &str, s: [usize; 3]| match given {
            Some(v) => Ok(v.clone()),
            None => zeros::<T>(name, s),
        };
        let h0 = or_zeros(&case.h0, "h0", shape.h_shape(cfg))?;
        let c0 = if lstm { Some(or_zeros(&case.c0, "c0", shape.c_shape(cfg))?) } else { None };
        let dy = or_zeros(&case.dy, "dy", shape.y_shape(cfg))?;
        let dhn = or_zeros(&case.dhn, "dhn", shape.h_shape(cfg))?;
        let dcn = if lstm { Some(or_zeros(&case.dcn, "dcn", shape.c_shape(cfg))?) } else { None };

        let rnn = Rnn::new(cuda.clone(), cfg, case.params.as_slice())?;
        let mut reserve = Default::default();
        let o = rnn.forward_training(shape, &case.x, Some(&h0), c0.as_deref(), &mut reserve)?;
        let g = rnn.backward(&reserve, Some(&dy), Some(&dhn), dcn.as_deref())?;

        let (pf, xf, h0f, dyf, dhnf) = (up(case.params.as_slice()), up(&case.x), up(&h0), up(&dy), up(&dhn));
        let (c0f, dcnf) = (c0.as_deref().map(up), dcn.as_deref().map(up));
        let u = T::DTYPE.unit_roundoff();
        let inputs =
            HalfInputs { cfg, shape, u, params: &pf, x: &xf, h0: &h0f, c0: c0f.as_deref(), dy: &dyf, dhn: &dhnf, dcn: dcnf.as_deref() };
        let want = reference_outputs(&inputs)?;
        let got = [
            &o.y,
            &o.hn,
            o.cn.as_ref().unwrap_or(&Vec::new()),
            &g.dx,
            &g.dh0,
            g.dc0.as_ref().unwrap_or(&Vec::new()),
            g.dparams.as_ref().unwrap_or(&Vec::new()),
        ]
        .map(|v| up(v));
        let ratios = error_ratios(&got, &want, &half_storage_bounds(&inputs, &want));
        let i = (0..7).fold(0, |w, i| if ratios[i] > ratios[w] || ratios[i].is_nan() { i } else { w });
        let worst = (ratios[i], OUTPUTS[i]);
        Ok(worst)
    }

    /// `n` zeros of `shape` for the tensor `name`, or an error naming it where they do not fit
    /// in memory.
    fn zeros<T: Element>(name: &str, shape: [usize; 3]) -> Result<Vec<T>> {
        let too_large = |reason: String| rnn_kernels::Error::TooLarge {
            arg: "FILE".into(),
            what: format!("zeros for `{name}`, shape {shape:?}"),
            bytes: shape.iter().fold(std::mem::size_of::<T>() as u128, |n, &d| n.saturating_mul(d as u128)),
            reason,
        };
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| too_large("is more than an address space".into()))?;
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|e| too_large(format!("could not be allocated ({e})")))?;
        v.resize(n, T::default());
        Ok(v)
    }

    /// Every file in storage type `T`; whether all are within their bounds.
    pub fn verify_all<T: CudaElement>(cuda: &CudaHost, label: &str, files: &[String]) -> bool {
        super::report_all(files, label, |f| {
            let (ratio, out) = check::<T>(cuda, f)?;
            Ok((ratio <= 1.0, format!("max_err/bound={ratio:.3e} in {out}")))
        })
    }
}
