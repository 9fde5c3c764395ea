//! The CPU backend's plan-time tuner: every strategy it may choose gives the same bits (two
//! plans tuned differently agree), a tuning is recorded, kept and bounded, and its controls
//! check their arguments.

mod common;

use common::describe;
use rnn_kernels::testkit::Problem;
use rnn_kernels::{tuning_records, CellKind, Cpu, RnnConfig, SeqShape, Strategy, TunedPass, Tuning};

/// Every strategy the tuner may choose (the thread counts, each pass's cut of the rows: the
/// default, blocks whenever two AVX-512 tiles fit, never; the directions one after the other or
/// at once) and the tuner's own choice give the bits of one thread with the fixed strategy: the
/// training forward, the backward, and inference; each cell with its options that change the
/// row kernels, two directions with and without a batch-first output, zoneout and dropout,
/// batches that are cut into blocks (70, 200) or not (5).
#[test]
fn every_strategy_gives_the_same_bits() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 24, 40).num_layers(2).bidirectional(true).proj_size(20).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 20, 36).linear_before_reset(false).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 16, 32).layer_norm(true).recurrent_dropout(0.25).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 16, 24).num_layers(2).dropout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 12, 20)
            .num_layers(2)
            .bidirectional(true)
            .batch_first(true)
            .zoneout(0.2)
            .input_dropout(0.2)
            .dropout(0.25)
            .build()
            .unwrap(),
        RnnConfig::new(CellKind::Lstm, 12, 16).num_layers(2).bidirectional(true).merge(rnn_kernels::Merge::Sum).build().unwrap(),
    ];
    let mins = [16, 48, Strategy::NEVER];
    for cfg in &configs {
        for batch in [5, 70, 200] {
            let steps = 6;
            let shape = SeqShape::with_lengths(steps, (0..batch).map(|b| 1 + (b * 5) % steps).collect()).unwrap();
            let p = Problem::<f32>::new(cfg, &shape, 5, 3.0);
            for isa in rnn_kernels::testkit::isas() {
                let mut base = Cpu::with_isa(isa, 1).unwrap();
                base.set_tuning(Tuning::Off).unwrap();
                let (want, want_inf) = (p.run(base.clone()), p.run_inference(base));
                let ctx = |what: &str| format!("{isa}, {what}: {}", describe(cfg, &shape));
                let mut tuned = Cpu::with_isa(isa, 3).unwrap();
                tuned.set_tuning(Tuning::Auto).unwrap();
                assert!(p.run(tuned.clone()) == want, "{}", ctx("tuned"));
                assert!(p.run_inference(tuned) == want_inf, "{}", ctx("tuned inference"));
                for threads in 1..=3 {
                    for &f in &mins {
                        for &b in &mins {
                            // The directions at once apply to two directions only (concatenated or
                            // merged by sum; on one direction the flag does nothing).
                            for parallel_directions in [false, true].into_iter().filter(|&p| !p || cfg.num_directions() == 2) {
                                let s = Strategy { threads, forward_block_min: f, backward_block_min: b, parallel_directions };
                                let mut cpu = Cpu::with_isa(isa, 3).unwrap();
                                cpu.set_tuning(Tuning::Fixed(s)).unwrap();
                                assert!(p.run(cpu.clone()) == want, "{}", ctx(&s.to_string()));
                                assert!(p.run_inference(cpu) == want_inf, "{}", ctx(&format!("{s}, inference")));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A tuning runs once per pass and batch size, is recorded with its candidates (the default
/// first, each timed), chooses one of them, and stays within its budget; a second plan of the
/// same configuration reuses the choice.
#[test]
fn tunings_are_recorded_once_and_bounded() {
    // A hidden size no other test of this file uses: the records are process-wide.
    let cfg = RnnConfig::new(CellKind::Lstm, 24, 52).bidirectional(true).build().unwrap();
    let shape = SeqShape::new(30, 64).unwrap();
    let p = Problem::<f32>::new(&cfg, &shape, 9, 1.0);
    let mine = || -> Vec<_> { tuning_records().into_iter().filter(|r| r.key.contains("hidden_size: 52")).collect() };
    let mut cpu = Cpu::with_threads(2).unwrap();
    cpu.set_tuning(Tuning::Auto).unwrap();
    let first = p.run(cpu.clone());
    let records = mine();
    let passes: Vec<TunedPass> = records.iter().map(|r| r.pass).collect();
    assert_eq!(passes, [TunedPass::Training, TunedPass::Backward], "{records:#?}");
    for r in &records {
        assert_eq!(r.batch, 64);
        // At least one step (many here natively; few under emulation, where a step is slow).
        assert!((1..=30).contains(&r.trial_steps), "{r:#?}");
        assert_eq!(r.default, cpu.default_strategy());
        assert_eq!(r.trials[0].0, r.default, "the default is the first candidate");
        assert!(r.trials.len() >= 2, "two threads give at least two candidates: {r:#?}");
        assert!(r.trials.iter().all(|&(_, t)| t > 0.0), "{r:#?}");
        assert!(r.trials.iter().any(|&(s, _)| s == r.chosen), "{r:#?}");
        assert!(r.key.contains(cpu.isa().name()) && r.key.contains("batch 64"), "{}", r.key);
        // The budget (50 ms, unless the warm-ups and one round take longer) for trials of at
        // most 30 steps of this size: far below a second.
        assert!(r.seconds < 1.0, "{r:#?}");
    }
    // Again, and on a second backend: kept, not tuned again, and the same bits.
    let mut other = Cpu::with_threads(2).unwrap();
    other.set_tuning(Tuning::Auto).unwrap();
    assert!(p.run(other) == first);
    assert_eq!(mine().len(), 2);
    // Inference is a pass of its own; another batch size is tuned on its own.
    p.run_inference(cpu.clone());
    let q = Problem::<f32>::new(&cfg, &SeqShape::new(30, 40).unwrap(), 9, 1.0);
    q.run(cpu);
    let passes: Vec<(TunedPass, usize)> = mine().iter().map(|r| (r.pass, r.batch)).collect();
    assert_eq!(
        passes,
        [
            (TunedPass::Training, 64),
            (TunedPass::Backward, 64),
            (TunedPass::Inference, 64),
            (TunedPass::Training, 40),
            (TunedPass::Backward, 40)
        ]
    );
}

/// Off and one thread never tune; a fixed strategy is checked, each field by name.
#[test]
fn controls_check_their_arguments() {
    let cfg = RnnConfig::new(CellKind::Gru, 12, 44).build().unwrap();
    let p = Problem::<f32>::new(&cfg, &SeqShape::new(5, 64).unwrap(), 3, 1.0);
    let mine = || tuning_records().into_iter().filter(|r| r.key.contains("hidden_size: 44")).count();
    let mut off = Cpu::with_threads(2).unwrap();
    off.set_tuning(Tuning::Off).unwrap();
    p.run(off.clone());
    p.run(Cpu::with_threads(1).unwrap());
    assert_eq!(mine(), 0);
    assert_eq!(off.default_strategy().threads, 2);
    let ok = off.default_strategy();
    let bad = [
        (Strategy { threads: 0, ..ok }, "strategy.threads"),
        (Strategy { threads: 3, ..ok }, "strategy.threads"),
        (Strategy { forward_block_min: 1, ..ok }, "strategy.forward_block_min"),
        (Strategy { backward_block_min: 0, ..ok }, "strategy.backward_block_min"),
    ];
    for (s, arg) in bad {
        let e = off.set_tuning(Tuning::Fixed(s)).unwrap_err().to_string();
        assert!(e.contains(arg), "{s}: {e}");
    }
    assert_eq!(off.tuning(), Tuning::Off, "a refused strategy leaves the tuning as it was");
    off.set_tuning(Tuning::Fixed(ok)).unwrap();
    assert_eq!(off.tuning(), Tuning::Fixed(ok));
}
