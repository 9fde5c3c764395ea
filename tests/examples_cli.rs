//! The command lines of the examples, run as processes. `charlm`: every argument is checked
//! before any training starts (a bad `--prompt`, a `--save` path in a missing directory, an
//! absurd size each come back as an error naming the argument within a second, with exit status
//! 2 and no "training" line printed), and no size aborts the process. `bench`: no size aborts
//! it either.

use rnn_kernels::{CellKind, Reference};
use rnn_kernels_nn::{CharLm, CharLmConfig, Vocab};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CORPUS: &str = include_str!("../data/tinyshakespeare.txt");

/// Builds the example `name` with the cargo running this test, into the same target directory
/// and profile, once; returns the binary.
fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(bin) = built.get(name) {
        return bin.clone();
    }
    let bin = {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(Path::parent).expect("test binary in <target>/<profile>/deps").to_path_buf();
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "rnn-kernels", "--example", name, "--target-dir"]).arg(dir.parent().unwrap());
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
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed: {status}");
        let bin = dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    };
    built.insert(name.to_string(), bin.clone());
    bin
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `charlm` with `args` (see [`run_example`]).
fn run(args: &[&str], cwd: &Path) -> Run {
    run_example("charlm", args, cwd)
}

/// Runs the example `name` with `args`; a run still going after 30 s is killed (for `charlm`:
/// it started training, and the test fails without waiting the default three minutes).
fn run_example(name: &str, args: &[&str], cwd: &Path) -> Run {
    let bin = example(name);
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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("examples_cli_{name}"));
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
        ("--min-lr", ["-1", "nan", "inf", "x"]),
        ("--warmup", ["-1", "nan", "1.5", "18446744073709551616"]),
        ("--weight-decay", ["-1", "nan", "inf", "-0.5"]),
        ("--dropout", ["-0.1", "1", "nan", "x"]),
        ("--temperature", ["0", "-0.5", "NaN", "inf"]),
        ("--sample-len", ["-1", "nan", "1000001", "18446744073709551616"]),
    ] {
        for v in bad {
            assert_rejected(&[flag, v], &dir, &[flag, "expected", &format!("{v:?}")]);
        }
    }
    assert_rejected(&["--lr-schedule", "linear"], &dir, &["--lr-schedule", "constant or cosine", "\"linear\""]);
    assert_rejected(&["--lr", "0.001", "--min-lr", "0.01"], &dir, &["--min-lr", "at most --lr = 0.001", "0.01"]);
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
            "2",
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
            "--lr-schedule",
            "cosine",
            "--warmup",
            "2",
            "--weight-decay",
            "0.01",
            "--dropout",
            "0.2",
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

#[test]
fn bench_refuses_absurd_sizes_with_an_error_not_an_abort() {
    let dir = scratch("bench");
    let base = ["--input", "8", "--hidden", "8", "--batch", "2", "--steps", "3"];
    for (args, code, needles) in [
        // Aborted allocating the parameters (16 TB).
        (&["--input", "1", "--hidden", "1000000", "--batch", "1", "--steps", "1"][..], 1, &["--hidden", "bytes", "memory"][..]),
        // x of 10^16 values; and a [T, B] whose element count overflows usize.
        (&["--input", "1", "--hidden", "1", "--batch", "100000000", "--steps", "100000000"], 1, &["--batch", "--steps", "memory"]),
        (
            &["--input", "1", "--hidden", "1", "--batch", "18446744073709551615", "--steps", "18446744073709551615"],
            1,
            &["--steps", "memory"],
        ),
        // A thousand million layers: the parameter layout alone did not fit.
        (&["--input", "1", "--hidden", "1", "--batch", "1", "--steps", "1", "--layers", "1000000000"], 2, &["--layers", "from 1 to 1000"]),
        (&["--input", "0", "--hidden", "8", "--batch", "2", "--steps", "3"], 2, &["--input", "at least 1", "got 0"]),
    ] {
        let r = run_example("bench", args, &dir);
        println!("bench {args:?}: exit {:?} after {:.2?}: {}", r.code, r.elapsed, r.stderr.trim());
        assert_eq!(r.code, Some(code), "bench {args:?}: {}", r.stderr);
        assert!(r.elapsed < Duration::from_secs(1), "bench {args:?} took {:.2?}", r.elapsed);
        for n in needles {
            assert!(r.stderr.contains(n), "{n:?} missing from: {}", r.stderr);
        }
    }
    // Counts the timings vector could not hold (capacity overflow), threads the pool could not
    // start: refused by their documented limits.
    for (flag, v, range) in [
        ("--reps", "18446744073709551615", "from 1 to 1000000"),
        ("--reps", "0", "from 1 to 1000000"),
        ("--warmup", "1000001", "from 0 to 1000000"),
        ("--threads", "100000", "from 1 to 1024"),
        ("--threads", "0", "from 1 to 1024"),
        ("--layers", "0", "from 1 to 1000"),
        ("--hidden", "-1", "unsigned integer"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain([flag, v]).collect();
        let r = run_example("bench", &args, &dir);
        assert_eq!(r.code, Some(2), "bench {args:?}: {}", r.stderr);
        assert!(r.stderr.contains(flag) && r.stderr.contains(range) && r.stderr.contains(v), "bench {args:?}: {}", r.stderr);
    }
    // A valid configuration runs and prints its JSON line.
    let args: Vec<&str> = base.iter().copied().chain(["--mode", "train", "--reps", "2", "--threads", "1"]).collect();
    let r = run_example("bench", &args, &dir);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("\"median_ms\""), "{}", r.stdout);
}

#[test]
fn a_save_that_fails_after_training_keeps_the_model_and_says_where() {
    use std::io::BufRead;
    let dir = scratch("fallback");
    std::fs::create_dir(dir.join("out")).unwrap();
    // A 3-second budget: the directory is removed while the model trains.
    let args =
        ["--layers", "1", "--hidden", "16", "--embedding", "8", "--minutes", "0.05", "--eval-every", "0", "--save", "out/m.safetensors"];
    let mut child = Command::new(example("charlm"))
        .args(args)
        .args(["--sample-len", "10"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.contains("training:") {
        line.clear();
    }
    assert!(line.contains("training:"), "the run ended before training");
    std::fs::remove_dir(dir.join("out")).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Kept in the current directory, under a name the error gives.
    let kept: Vec<String> = entries(&dir).into_iter().filter(|n| n.ends_with(".safetensors")).collect();
    assert_eq!(kept.len(), 1, "{:?}", entries(&dir));
    let path = dir.join(&kept[0]);
    assert!(stderr.contains("out/m.safetensors") && stderr.contains(&format!("kept in {}", path.display())), "{stderr}");
    let model = CharLm::load(Reference, &path).unwrap();
    assert_eq!(model.rnn_config().hidden_size(), 16);
}

/// `seq2seq`: a short run trains, saves, prints the held-out accuracy of greedy and beam
/// decoding and writes the heat map as a PNG; the saved model, loaded, gives the same
/// accuracy lines without training; bad arguments exit with status 2 before any training.
#[test]
fn seq2seq_trains_saves_loads_and_draws() {
    let dir = scratch("seq2seq");
    let (model, png) = (dir.join("m.safetensors"), dir.join("attention.png"));
    let (model, png) = (model.to_str().unwrap(), png.to_str().unwrap());
    let args = ["--steps", "25", "--held-out", "40", "--beam", "2", "--save", model, "--heatmap", png];
    let r = run_example("seq2seq", &args, &dir);
    let shown = format!("seq2seq {args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}", r.code, r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{shown}");
    let accuracy =
        |out: &str| -> Vec<String> { out.lines().filter(|l| l.contains("exact match on 40 held-out")).map(str::to_string).collect() };
    let lines = accuracy(&r.stdout);
    assert!(lines.len() == 2 && lines[0].starts_with("greedy") && lines[1].starts_with("beam (k=2)"), "{shown}");
    assert!(r.stdout.contains("trained 25 steps"), "{shown}");
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000, "{shown}");
    let again = run_example("seq2seq", &["--load", model, "--held-out", "40", "--beam", "2", "--heatmap", png], &dir);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(!again.stdout.contains("trained"), "{}", again.stdout);
    assert_eq!(accuracy(&again.stdout), lines, "{}", again.stdout);
    for (bad, needle) in [
        (vec!["--attention", "luong"], "`score`"),
        (vec!["--teacher-forcing", "2"], "--teacher-forcing"),
        (vec!["--beam", "0"], "--beam"),
        (vec!["--save", "/nonexistent-dir/m.safetensors"], "--save"),
        (vec!["--load", "/nonexistent-dir/m.safetensors"], "--load"),
    ] {
        let r = run_example("seq2seq", &bad, &dir);
        let shown = format!("seq2seq {bad:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}", r.code, r.stdout, r.stderr);
        assert_eq!(r.code, Some(2), "{shown}");
        assert!(r.stderr.contains(needle) && !r.stdout.contains("trained"), "{shown}");
    }
}

/// `seq2seq --bench-steps`: one JSON line of flat `"key":value` fields (the format
/// `benches/seq2seq.py` and `benches/compare.py` read) with a positive `median_ms` and a finite
/// `first_loss`, nothing else on stdout and no heat map; `--dump-batch` writes the batch's rows.
#[test]
fn seq2seq_bench_mode_prints_one_json_line() {
    let dir = scratch("seq2seq_bench");
    let args = ["--bench-steps", "2", "--bench-warmup", "1", "--batch", "8", "--threads", "1"];
    let r = run_example("seq2seq", &args, &dir);
    let shown = format!("seq2seq {args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}", r.code, r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{shown}");
    let line = r.stdout.trim();
    assert!(!line.contains('\n') && line.starts_with('{') && line.ends_with('}'), "{shown}");
    let fields: HashMap<&str, &str> = line[1..line.len() - 1]
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').unwrap_or_else(|| panic!("a key:value field, got {kv:?}: {shown}"));
            (k.trim_matches('"'), v)
        })
        .collect();
    assert_eq!(fields.get("impl"), Some(&"\"rnn-kernels-cpu\""), "{shown}");
    assert!(fields.get("config").is_some_and(|c| c.starts_with("\"seq2seq-general-b8-s") && c.ends_with("-t11\"")), "{shown}");
    assert_eq!(fields.get("threads"), Some(&"1"), "{shown}");
    let num = |k: &str| -> f64 { fields.get(k).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k}: {shown}")) };
    assert!(num("median_ms") > 0.0 && num("first_loss").is_finite(), "{shown}");
    assert!(!dir.join("target").exists(), "no heat map in bench mode: {shown}");
    let batch = dir.join("batch.json");
    let r = run_example("seq2seq", &["--dump-batch", batch.to_str().unwrap(), "--batch", "8"], &dir);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let text = std::fs::read_to_string(&batch).unwrap();
    let src = text.split("\"src\":[").nth(1).and_then(|s| s.split("]]").next()).expect("a src field");
    assert_eq!(src.matches('[').count(), 8, "{text}");
}
