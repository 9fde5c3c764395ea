//! The `charlm` example's command line, run as a process: every argument is checked before any
//! training starts (a bad `--prompt`, a `--save` path in a missing directory, an absurd size
//! each come back as an error naming the argument within a second, with exit status 2 and no
//! "training" line printed), and no size aborts the process.

use rnn_kernels::{CellKind, Reference};
use rnn_kernels_nn::{CharLm, CharLmConfig, Vocab};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CORPUS: &str = include_str!("../data/tinyshakespeare.txt");

/// Builds the example with the cargo running this test, into the same target directory and
/// profile, once; returns the binary.
fn charlm() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(Path::parent).expect("test binary in <target>/<profile>/deps").to_path_buf();
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "rnn-kernels", "--example", "charlm", "--target-dir"]).arg(dir.parent().unwrap());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        #[cfg(feature = "cuda")]
        cmd.args(["--features", "cuda"]);
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build --example charlm");
        assert!(status.success(), "cargo build --example charlm failed: {status}");
        let bin = dir.join("examples").join(format!("charlm{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the example with `args`; a run still going after 30 s is killed (it started training:
/// the test fails without waiting the default three minutes).
fn run(args: &[&str], cwd: &Path) -> Run {
    let bin = charlm();
    let t0 = Instant::now();
    let mut child =
        Command::new(bin).args(args).current_dir(cwd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start charlm");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = t0.elapsed();
    Run { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap(), elapsed }
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("charlm_cli_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A rejected argument: exit status 2 within a second, nothing trained, and the error contains
/// every one of `needles`.
fn assert_rejected(args: &[&str], cwd: &Path, needles: &[&str]) -> Run {
    let r = run(args, cwd);
    let shown = format!("charlm {args:?}: exit {:?} after {:.2?}\nstdout:\n{}\nstderr:\n{}", r.code, r.elapsed, r.stdout, r.stderr);
    println!("{shown}");
    assert_eq!(r.code, Some(2), "{shown}");
    assert!(!r.stdout.contains("training:") && !r.stdout.contains("trained"), "trained before rejecting: {shown}");
    assert!(r.elapsed < Duration::from_secs(1), "took {:.2?}: {shown}", r.elapsed);
    for n in needles {
        assert!(r.stderr.contains(n), "{n:?} missing from the error: {shown}");
    }
    r
}

#[test]
fn a_prompt_outside_the_vocabulary_is_rejected_before_training() {
    let dir = scratch("prompt");
    assert_rejected(&["--prompt", "ROMEO€:"], &dir, &["--prompt", "'€' (U+20AC) at character 6 of 7", "only characters of the vocabulary"]);
    assert_rejected(&["--prompt", ""], &dir, &["--prompt", "at least one character"]);
    assert!(entries(&dir).is_empty());
}

#[test]
fn a_prompt_outside_a_loaded_models_vocabulary_is_rejected_before_training() {
    let dir = scratch("prompt_load");
    // A model over the corpus's characters but 'z': the default prompt is fine, "zounds" is not.
    let vocab = Vocab::from_chars(&Vocab::from_text(CORPUS).unwrap().as_string().replace('z', "")).unwrap();
    let model = CharLm::new(Reference, vocab, &CharLmConfig { cell: CellKind::Gru, layers: 1, hidden: 8, embedding_dim: 4 }, 1).unwrap();
    model.save(dir.join("small.safetensors")).unwrap();
    assert_rejected(&["--load", "small.safetensors", "--prompt", "zounds"], &dir, &["--prompt", "'z' (U+007A) at character 1 of 6"]);
}

#[test]
fn a_save_path_that_cannot_be_written_is_rejected_before_training_and_leaves_nothing() {
    let dir = scratch("save");
    assert_rejected(&["--save", "missing/model.safetensors"], &dir, &["--save", "existing directory", "missing"]);
    std::fs::create_dir(dir.join("sub")).unwrap();
    assert_rejected(&["--save", "sub"], &dir, &["--save", "not a directory"]);
    std::fs::write(dir.join("file"), b"").unwrap();
    assert_rejected(&["--save", "file/model.safetensors"], &dir, &["--save", "is not a directory"]);
    // The writability check creates and removes a file: nothing is left behind.
    assert_eq!(entries(&dir), ["file", "sub"]);
    assert!(entries(&dir.join("sub")).is_empty());
}

#[test]
fn absurd_sizes_are_errors_naming_the_argument_not_aborts() {
    let dir = scratch("sizes");
    // Each aborted the process with "memory allocation of N bytes failed" (exit 134).
    assert_rejected(&["--sample-len", "100000000000000"], &dir, &["--sample-len", "from 0 to 1000000", "100000000000000"]);
    assert_rejected(&["--hidden", "100000"], &dir, &["--hidden 100000", "memory"]);
    assert_rejected(&["--embedding", "100000000000"], &dir, &["--embedding 100000000000", "memory"]);
    assert_rejected(&["--hidden", "18446744073709551615"], &dir, &["--hidden 18446744073709551615", "fits in memory"]);
    // The remaining numeric flags: zero, negative, NaN, infinite, huge.
    for (flag, bad) in [
        ("--layers", ["0", "-1", "1001", "nan"]),
        ("--hidden", ["0", "-1", "1.5", "nan"]),
        ("--embedding", ["0", "-1", "x", "nan"]),
        ("--batch", ["0", "-1", "1e3", "nan"]),
        ("--chunk", ["0", "-1", "", "nan"]),
        ("--threads", ["0", "-1", "1025", "18446744073709551616"]),
        ("--minutes", ["0", "-1", "nan", "1e300"]),
        ("--steps", ["-1", "nan", "1.5", "18446744073709551616"]),
        ("--eval-every", ["-1", "nan", "1.5", "18446744073709551616"]),
        ("--seed", ["-1", "nan", "1.5", "18446744073709551616"]),
        ("--lr", ["0", "-1", "nan", "inf"]),
        ("--clip", ["0", "-1", "nan", "1e39"]),
        ("--temperature", ["0", "-0.5", "NaN", "inf"]),
        ("--sample-len", ["-1", "nan", "1000001", "18446744073709551616"]),
    ] {
        for v in bad {
            assert_rejected(&[flag, v], &dir, &[flag, "expected", &format!("{v:?}")]);
        }
    }
    // Sizes fine on their own, too large together for the 1,003,854 training characters.
    assert_rejected(&["--batch", "100000", "--chunk", "100"], &dir, &["--batch 100000, --chunk 100", "1003854 training characters"]);
    assert_rejected(
        &["--batch", "18446744073709551615", "--chunk", "18446744073709551615"],
        &dir,
        &["--batch 18446744073709551615", "training characters"],
    );
    assert!(entries(&dir).is_empty());
}

#[test]
fn a_valid_run_trains_saves_and_samples() {
    let dir = scratch("valid");
    let r = run(
        &[
            "--backend",
            "reference",
            "--layers",
            "1",
            "--hidden",
            "16",
            "--embedding",
            "8",
            "--steps",
            "3",
            "--batch",
            "4",
            "--chunk",
            "20",
            "--eval-every",
            "0",
            "--save",
            "m.safetensors",
            "--sample-len",
            "40",
        ],
        &dir,
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("trained 3 steps") && r.stdout.contains("saved m.safetensors"), "{}", r.stdout);
    assert_eq!(entries(&dir), ["m.safetensors"], "the atomic save left a temporary file");
    let model = CharLm::load(Reference, dir.join("m.safetensors")).unwrap();
    assert_eq!(model.rnn_config().hidden_size(), 16);
    // The saved model samples from the command line too.
    let r = run(&["--load", "m.safetensors", "--sample-only", "--sample-len", "2000", "--prompt", "JULIET:"], &dir);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2000 characters sampled"), "{}", r.stdout);
}
