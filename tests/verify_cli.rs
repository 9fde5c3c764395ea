//! The `verify` example's command line: every bad argument is rejected, with a message naming
//! it, before any file is read (`main` exits with 2 on these errors). The example's source is
//! compiled here as a module, so its parser is tested as the binary runs it.

#[allow(dead_code)]
#[path = "../examples/verify.rs"]
mod verify;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lstm_l1_uni.safetensors");

fn parse(args: &[&str]) -> Result<String, String> {
    verify::parse(args.iter().map(|s| s.to_string())).map(|a| format!("{a:?}"))
}

/// Asserts that `args` are rejected with a message containing every needle.
fn rejected(args: &[&str], needles: &[&str]) {
    match parse(args) {
        Ok(a) => panic!("{args:?}: accepted as {a}"),
        Err(msg) => {
            for n in needles {
                assert!(msg.contains(n), "{args:?}: the message does not contain {n:?}: {msg}");
            }
        }
    }
}

#[test]
fn tolerances_must_be_finite_and_not_negative() {
    assert!(std::path::Path::new(FIXTURE).is_file(), "{FIXTURE} is the fixture these checks name");
    for bad in ["-1", "nan", "NaN", "inf", "-inf", "1e400", "-0.5", "-1e-300"] {
        rejected(&["--tol", bad, FIXTURE], &["--tol", "finite number at least 0", &format!("{bad:?}")]);
    }
    for bad in ["abc", "", "1e-4x", "0x10"] {
        rejected(&["--tol", bad, FIXTURE], &["--tol", "expected a number", &format!("{bad:?}")]);
    }
    for good in ["0", "1e-4", "0.5", "-0"] {
        let a = parse(&["--tol", good, FIXTURE]).unwrap_or_else(|e| panic!("--tol {good}: rejected: {e}"));
        assert!(a.contains("tol: Some("), "--tol {good}: {a}");
    }
}

#[test]
fn other_bad_arguments_are_rejected_before_any_work() {
    rejected(&["--tol"], &["--tol needs a value"]);
    rejected(&[FIXTURE, "--backend"], &["--backend needs a value"]);
    rejected(&["--tol", "1e-4", "--tol", "1e-5", FIXTURE], &["--tol", "more than once"]);
    rejected(&["--backend", "tpu", FIXTURE], &["--backend", "\"tpu\""]);
    rejected(&["--dtype", "f16", FIXTURE], &["--dtype", "reference", "\"f16\""]);
    rejected(&["--backend", "cpu", "--dtype", "f64", FIXTURE], &["--dtype", "cpu", "\"f64\""]);
    rejected(&["--frobnicate", FIXTURE], &["unknown option --frobnicate"]);
    rejected(&[], &["no case files"]);
    rejected(&["--tol", "1e-4"], &["no case files"]);
    rejected(&[FIXTURE, "tests/fixtures/no-such-case.safetensors"], &["no-such-case.safetensors", "no such file"]);
    rejected(&[env!("CARGO_MANIFEST_DIR")], &["not a file"]);
    if cfg!(feature = "cuda") {
        rejected(&["--backend", "cuda", "--dtype", "f16", "--tol", "1e-3", FIXTURE], &["--tol", "derived bounds"]);
        rejected(&["--backend", "cuda", "--dtype", "f64", FIXTURE], &["--dtype", "cuda", "\"f64\""]);
    } else {
        rejected(&["--backend", "cuda", FIXTURE], &["cuda", "feature"]);
    }
    // What is valid still parses.
    for ok in [
        &[FIXTURE][..],
        &["--backend", "reference", "--dtype", "f32", FIXTURE],
        &["--backend", "cpu", FIXTURE, FIXTURE],
        &["--dtype", "f64", "--tol", "1e-9", FIXTURE],
    ] {
        parse(ok).unwrap_or_else(|e| panic!("{ok:?}: rejected: {e}"));
    }
}
