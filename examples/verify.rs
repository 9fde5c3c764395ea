//! Checks a backend against PyTorch case files (format: `shared/case-format.md`).
//!
//! ```text
//! cargo run --release --example verify -- [--backend reference|cpu|cuda] [--dtype f64|f32] [--tol T] FILE...
//! ```
//!
//! Prints one line per file: name, backend, ` ok` or ` FAIL`, the largest error and the tensor
//! it was in. Exits with 1 if any file fails, 2 on a usage error.

use rnn_kernels::case::{run_case, Case};
use rnn_kernels::{Backend, Cpu, Element, Reference};
use std::process::ExitCode;

const USAGE: &str = "usage: verify [--backend reference|cpu|cuda] [--dtype f64|f32] [--tol T] FILE...";

struct Args {
    backend: String,
    dtype: Option<String>,
    tol: Option<f64>,
    files: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { backend: "reference".into(), dtype: None, tol: None, files: vec![] };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--backend" => a.backend = value("--backend")?,
            "--dtype" => a.dtype = Some(value("--dtype")?),
            "--tol" => {
                let v = value("--tol")?;
                a.tol = Some(v.parse().map_err(|_| format!("--tol: expected a number, got {v:?}"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n{USAGE}")),
            _ => a.files.push(arg),
        }
    }
    if a.files.is_empty() {
        return Err(format!("no case files given\n{USAGE}"));
    }
    Ok(a)
}

/// Runs every file on one backend in element type `T`; returns whether all passed.
fn verify_all<T: Element, B: Backend<T, Buf = [T]>>(backend: &B, label: &str, tol: f64, files: &[String]) -> bool {
    let mut all_ok = true;
    for f in files {
        let name = std::path::Path::new(f).file_name().map_or(f.clone(), |n| n.to_string_lossy().into_owned());
        match Case::<T>::load(f).and_then(|case| run_case(backend, &case)) {
            Ok(report) => {
                let ok = report.passes(tol);
                let (worst, err) = report.worst();
                println!("{name} {label} {} max_err={err:.3e} in {worst}", if ok { " ok" } else { " FAIL" });
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

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let ok = match (args.backend.as_str(), args.dtype.as_deref()) {
        ("reference", None | Some("f64")) => verify_all::<f64, _>(&Reference, "reference-f64", args.tol.unwrap_or(1e-9), &args.files),
        ("reference", Some("f32")) => verify_all::<f32, _>(&Reference, "reference-f32", args.tol.unwrap_or(1e-4), &args.files),
        ("reference", Some(d)) => {
            eprintln!("--dtype: expected f64 or f32, got {d:?}");
            return ExitCode::from(2);
        }
        ("cpu", None | Some("f32")) => match Cpu::new() {
            Ok(cpu) => verify_all::<f32, _>(&cpu, &format!("cpu-{}", cpu.isa()), args.tol.unwrap_or(1e-4), &args.files),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        ("cpu", Some(d)) => {
            eprintln!("--dtype: the cpu backend computes in f32, got {d:?}");
            return ExitCode::from(2);
        }
        #[cfg(feature = "cuda")]
        ("cuda", None | Some("f32")) => match rnn_kernels::CudaHost::new() {
            Ok(cuda) => verify_all::<f32, _>(&cuda, cuda.0.device_name(), args.tol.unwrap_or(1e-4), &args.files),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        #[cfg(feature = "cuda")]
        ("cuda", Some(d)) => {
            eprintln!("--dtype: the cuda backend computes in f32 (f16/bf16 storage is not implemented yet), got {d:?}");
            return ExitCode::from(2);
        }
        #[cfg(not(feature = "cuda"))]
        ("cuda", _) => {
            let e = rnn_kernels::Error::BackendUnavailable {
                backend: args.backend.clone(),
                reason: "this binary was built without the `cuda` feature: cargo run --release --features cuda --example verify -- --backend cuda ...".into(),
            };
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        (other, _) => {
            eprintln!("--backend: expected reference, cpu or cuda, got {other:?}");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
