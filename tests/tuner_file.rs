//! The tuner's file (`RNN_KERNELS_TUNE_FILE`): a process that tunes appends its choices; a later
//! process reads them and runs no trials; lines it does not know are skipped. Each phase runs
//! in a child process of this test binary, since the file is read once per process.

mod common;

use common::tempdir::TempDir;
use rnn_kernels::testkit::Problem;
use rnn_kernels::{tuning_records, CellKind, Cpu, RnnConfig, SeqShape, Tuning};
use std::process::Command;

/// Runs one training call of a fixed problem on 2 threads with tuning on, and prints the bits of
/// its outputs and the number of tunings this process ran.
#[test]
#[ignore = "a phase of tuning_file_is_written_and_read, run in its own process"]
fn child_phase() {
    let cfg = RnnConfig::new(CellKind::Lstm, 20, 28).num_layers(2).bidirectional(true).build().unwrap();
    let p = Problem::<f32>::new(&cfg, &SeqShape::new(12, 48).unwrap(), 4, 1.0);
    let mut cpu = Cpu::with_threads(2).unwrap();
    cpu.set_tuning(Tuning::Auto).unwrap();
    let out = p.run(cpu);
    let bits: u64 = out.iter().flatten().fold(0u64, |h, v| h.rotate_left(5) ^ u64::from(v.to_bits()));
    println!("RESULT tunings={} bits={bits:016x}", tuning_records().len());
}

fn phase(file: &std::path::Path) -> (usize, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_phase", "--nocapture", "--test-threads", "1"])
        .env("RNN_KERNELS_TUNE_FILE", file)
        .env_remove("RNN_KERNELS_TUNE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).unwrap_or_else(|| panic!("no result:\n{text}"));
    let mut f = line.split_whitespace();
    let (t, bits) = (f.next().unwrap(), f.next().unwrap());
    (t.strip_prefix("tunings=").unwrap().parse().unwrap(), bits.to_string())
}

#[test]
fn tuning_file_is_written_and_read() {
    let dir = TempDir::new("tune_file");
    let file = dir.path("tune.txt");
    // Lines of other formats first, among them one of the first version's (no directions):
    // skipped.
    let v1 = "rnn-kernels-tune-v1\tAMD EPYC | avx512 | threads 2 | x | training | batch 48\t2\t32\t16";
    std::fs::write(&file, format!("some other line\n{v1}\n")).unwrap();
    let (tuned, bits) = phase(&file);
    assert_eq!(tuned, 2, "the training forward and the backward are tuned");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("rnn-kernels-tune-v2\t")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    let last = |l: &str| l.rsplit('\t').next().map(str::to_string);
    assert!(
        lines
            .iter()
            .all(|l| l.split('\t').count() == 6 && l.contains("batch 48") && ["serial", "parallel"].contains(&last(l).unwrap().as_str())),
        "{text}"
    );
    // The next process reads the choices: no trials, the same bits.
    let (tuned_again, bits_again) = phase(&file);
    assert_eq!((tuned_again, bits_again), (0, bits));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "nothing more is written");
}
