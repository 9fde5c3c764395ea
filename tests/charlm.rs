//! The character-level language model of the `charlm` example, driven through the same
//! `rnn_kernels_nn` code the example uses: it learns, it is deterministic for a fixed number of
//! steps, and its checkpoints round-trip.

use rnn_kernels::{CellKind, Cpu, ParamKind, Reference};
use rnn_kernels_nn::{
    AdamConfig, Budget, CharLm, CharLmConfig, CosineSchedule, Embedding, Linear, Progress, Schedule, TrainConfig, Trainer, Vocab,
};
use std::collections::HashMap;

const CORPUS: &str = include_str!("../data/tinyshakespeare.txt");

/// The first 200,000 characters for training and the next 20,000 for validation, with the
/// vocabulary of the whole corpus.
fn small_corpus() -> (Vocab, Vec<usize>, Vec<usize>) {
    let vocab = Vocab::from_text(CORPUS).unwrap();
    let ids = vocab.encode("corpus", CORPUS).unwrap();
    (vocab, ids[..200_000].to_vec(), ids[200_000..220_000].to_vec())
}

/// Cross-entropy of `val` under the character frequencies of `train` (add-one smoothed): what a
/// model that ignores context achieves at best.
fn unigram_loss(train: &[usize], val: &[usize], v: usize) -> f64 {
    let mut counts = vec![1.0f64; v];
    for &i in train {
        counts[i] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    val.iter().map(|&i| -(counts[i] / total).ln()).sum::<f64>() / val.len() as f64
}

fn small_model(vocab: Vocab, cell: CellKind, hidden: usize, seed: u64) -> CharLm<Cpu> {
    let config = CharLmConfig { cell, layers: 1, hidden, embedding_dim: 16 };
    CharLm::new(Cpu::with_threads(2).unwrap(), vocab, &config, seed).unwrap()
}

fn small_training() -> TrainConfig {
    TrainConfig { batch: 16, chunk: 50, ..TrainConfig::default() }
}

#[test]
fn short_training_run_falls_well_below_the_unigram_loss() {
    let (vocab, train, val) = small_corpus();
    let unigram = unigram_loss(&train, &val, vocab.len());
    assert!((3.2..3.5).contains(&unigram), "unigram loss {unigram}: the corpus split is not what this test expects");

    let model = small_model(vocab, CellKind::Lstm, 128, 1);
    let before = model.evaluate(&val, 32, 50).unwrap();
    let mut trainer = Trainer::new(model, train, TrainConfig { batch: 32, ..small_training() }).unwrap();
    let schedule = Schedule { budget: Budget::Steps(400), eval_every: 100, eval_chars: 5_000, eval_streams: 32, lr: None };
    let mut evals = Vec::new();
    let summary = rnn_kernels_nn::train(&mut trainer, &val, &schedule, |p| {
        if let Progress::Eval { val_loss, full, .. } = p {
            evals.push((val_loss, full));
        }
    })
    .unwrap();
    println!("unigram {unigram:.3}, untrained {before:.3}, interval evals {evals:?}, final {:.3}", summary.val_loss);

    assert_eq!(summary.steps, 400);
    assert_eq!(trainer.steps(), 400);
    assert_eq!(evals.len(), 5, "four interval evaluations and the final one");
    assert_eq!(evals.last().copied(), Some((summary.val_loss, true)));
    // An untrained model is near ln V = 4.17; after 400 steps a context-free model could not get
    // below the unigram loss, so being a full nat below it shows the model uses context.
    assert!(before > unigram, "untrained {before} vs unigram {unigram}");
    assert!(summary.val_loss < unigram - 1.0, "final validation loss {} not well below the unigram {unigram}", summary.val_loss);
    assert!(evals[0].0 > summary.val_loss, "validation loss did not fall between step 100 and the end: {evals:?}");
}

#[test]
fn a_fixed_number_of_steps_is_deterministic_and_every_cell_learns() {
    let (vocab, train, val) = small_corpus();
    let val = &val[..5_000];
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let run = || {
            let model = small_model(vocab.clone(), cell, 32, 7);
            let before = model.evaluate(val, 16, 50).unwrap();
            let mut trainer = Trainer::new(model, train.clone(), small_training()).unwrap();
            let losses: Vec<f64> = (0..60).map(|_| trainer.step().unwrap()).collect();
            let after = trainer.model().evaluate(val, 16, 50).unwrap();
            (before, losses, after, trainer.into_model().to_safetensors_bytes().unwrap())
        };
        let (before, losses, after, bytes) = run();
        println!("{cell}: validation loss {before:.3} -> {after:.3}, training loss {:.3} -> {:.3}", losses[0], losses[59]);
        let again = run();
        assert_eq!((&losses, &bytes), (&again.1, &again.3), "{cell}: two runs of 60 steps differ");
        assert!(after < before - 0.5, "{cell}: validation loss {before} -> {after} after 60 steps");
        assert!(losses[59] < losses[0], "{cell}: training loss {} -> {}", losses[0], losses[59]);
    }
}

#[test]
fn checkpoint_round_trip_gives_the_same_next_character_distribution() {
    let (vocab, train, _) = small_corpus();
    let mut trainer = Trainer::new(small_model(vocab, CellKind::Lstm, 48, 3), train, small_training()).unwrap();
    for _ in 0..20 {
        trainer.step().unwrap();
    }
    let model = trainer.into_model();
    let dir = std::env::temp_dir().join(format!("rnn-kernels-charlm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    let loaded = CharLm::load(Cpu::with_threads(1).unwrap(), &path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let prompt = "ROMEO:\nWhat light";
    let p = model.next_char_distribution(prompt).unwrap();
    assert_eq!(p.len(), 65);
    assert!((p.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-5);
    // The trained model is not uniform: its distribution is worth comparing.
    let max = p.iter().fold(0.0f32, |m, &x| m.max(x));
    assert!(max > 2.0 / 65.0, "largest next-character probability {max}");
    assert_eq!(loaded.next_char_distribution(prompt).unwrap(), p, "the loaded model predicts differently");
    assert_eq!(loaded.vocab(), model.vocab());
    assert_eq!(loaded.sample(prompt, 200, 0.8, 5).unwrap(), model.sample(prompt, 200, 0.8, 5).unwrap());
    assert_eq!(loaded.to_safetensors_bytes().unwrap(), model.to_safetensors_bytes().unwrap());

    // The same checkpoint on the reference backend: the same model within f32 rounding.
    let reference = CharLm::from_safetensors_bytes(Reference, &model.to_safetensors_bytes().unwrap(), "<bytes>").unwrap();
    let q = reference.next_char_distribution(prompt).unwrap();
    let worst = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "cpu vs reference: largest difference {worst}");
}

#[test]
fn checkpoint_names_are_pytorch_names_and_bad_files_are_errors() {
    let (vocab, _, _) = small_corpus();
    let model = CharLm::new(Reference, vocab, &CharLmConfig { cell: CellKind::Lstm, layers: 2, hidden: 8, embedding_dim: 4 }, 1).unwrap();
    let bytes = model.to_safetensors_bytes().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let want = [
        "decoder.bias",
        "decoder.weight",
        "embedding.weight",
        "rnn.bias_hh_l0",
        "rnn.bias_hh_l1",
        "rnn.bias_ih_l0",
        "rnn.bias_ih_l1",
        "rnn.weight_hh_l0",
        "rnn.weight_hh_l1",
        "rnn.weight_ih_l0",
        "rnn.weight_ih_l1",
    ];
    assert_eq!(names, want);
    assert_eq!(st.tensor("rnn.weight_ih_l0").unwrap().shape(), &[32, 4]);
    assert_eq!(st.tensor("decoder.weight").unwrap().shape(), &[65, 8]);

    // A file without the vocabulary, and one with an extra tensor.
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    meta.remove("vocab");
    let no_vocab = safetensors::serialize(views.clone(), Some(meta.clone())).unwrap();
    let err = CharLm::from_safetensors_bytes(Reference, &no_vocab, "no_vocab").unwrap_err().to_string();
    assert!(err.contains("vocab") && err.contains("no_vocab"), "{err}");
    meta.insert("vocab".into(), model.vocab().as_string());
    let mut extra = views.clone();
    extra.push(("head.weight".into(), views[0].1.clone()));
    let err =
        CharLm::from_safetensors_bytes(Reference, &safetensors::serialize(extra, Some(meta)).unwrap(), "extra").unwrap_err().to_string();
    assert!(err.contains("head.weight"), "{err}");

    // Caller errors are values naming the argument.
    let err = model.sample("ROMEO€", 10, 0.8, 1).unwrap_err().to_string();
    assert!(err.contains("prompt"), "{err}");
    let err = model.sample("ROMEO", 10, 0.0, 1).unwrap_err().to_string();
    assert!(err.contains("temperature"), "{err}");
    let Err(err) = Trainer::new(model, vec![0; 100], TrainConfig::default()) else { panic!("100 characters cannot fill 32 x 100") };
    assert!(err.to_string().contains("data"), "{err}");
}

/// A scratch directory of this test binary, emptied.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("charlm_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_save_replaces_the_file_whole_so_a_reader_never_sees_part_of_a_model() {
    let (vocab, _, _) = small_corpus();
    // Two models of about 2.4 MB each, saved in turns while another thread reads the file.
    let config = CharLmConfig { cell: CellKind::Lstm, layers: 2, hidden: 192, embedding_dim: 32 };
    let models = [1, 2].map(|seed| CharLm::new(Reference, vocab.clone(), &config, seed).unwrap());
    let bytes = models.each_ref().map(|m| m.to_safetensors_bytes().unwrap());
    let dir = scratch("atomic");
    let path = dir.join("model.safetensors");
    models[0].save(&path).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (reads, torn) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut torn) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let got = std::fs::read(&path).unwrap_or_default();
                reads += 1;
                if got != bytes[0] && got != bytes[1] {
                    torn += 1;
                }
            }
            (reads, torn)
        });
        for k in 0..40 {
            models[k % 2].save(&path).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    println!("{reads} reads during 40 saves, {torn} of them neither whole model");
    assert!(reads > 0);
    assert_eq!(torn, 0, "{torn} of {reads} reads saw a missing or partly written model");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.safetensors"], "a save left a temporary file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_save_keeps_the_model_elsewhere_and_says_where() {
    let (vocab, _, _) = small_corpus();
    let model = CharLm::new(Reference, vocab, &CharLmConfig { cell: CellKind::Gru, layers: 1, hidden: 8, embedding_dim: 4 }, 3).unwrap();
    let dir = scratch("fallback");
    let asked = dir.join("gone").join("model.safetensors");
    let (bad, good) = (dir.join("also gone"), dir.join("kept"));
    std::fs::create_dir(&good).unwrap();
    let e = model.save_or_keep(&asked, &[bad.clone(), good.clone()]).unwrap_err();
    let kept = e.kept.clone().expect("the second fallback directory takes the model");
    let msg = e.to_string();
    println!("{msg}");
    assert!(msg.contains(&asked.display().to_string()) && msg.contains(&kept.display().to_string()), "{msg}");
    assert_eq!(kept.parent(), Some(good.as_path()));
    assert_eq!(e.fallback_errors.len(), 1, "the first fallback directory does not exist");
    assert!(!asked.exists());
    let loaded = CharLm::load(Reference, &kept).unwrap();
    assert_eq!(loaded.to_safetensors_bytes().unwrap(), model.to_safetensors_bytes().unwrap());
    let names: Vec<_> = std::fs::read_dir(&good).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(names, [kept], "the fallback left a temporary file");

    // No directory takes it: the error says so, with each reason.
    let e = model.save_or_keep(&asked, std::slice::from_ref(&bad)).unwrap_err();
    assert!(e.kept.is_none());
    assert!(e.to_string().contains("could not be kept elsewhere either") && e.to_string().contains("also gone"), "{e}");
    // A save that works is Ok and writes only the file asked for.
    model.save_or_keep(dir.join("model.safetensors"), std::slice::from_ref(&good)).unwrap();
    assert_eq!(
        CharLm::load(Reference, dir.join("model.safetensors")).unwrap().to_safetensors_bytes().unwrap(),
        model.to_safetensors_bytes().unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn absurd_sizes_are_errors_not_allocation_aborts() {
    let (vocab, _, _) = small_corpus();
    // 2^58 parameters (2^60 bytes): more than any address space; this aborted in the
    // parameters' initialisation.
    let config = CharLmConfig { cell: CellKind::Lstm, layers: 1, hidden: 1 << 28, embedding_dim: 4 };
    let err = CharLm::new(Reference, vocab.clone(), &config, 1).unwrap_err();
    assert!(matches!(err, rnn_kernels::Error::TooLarge { ref arg, .. } if arg.contains("hidden")), "{err}");
    let err = Embedding::new(65, usize::MAX / 65, 1).unwrap_err();
    assert!(matches!(err, rnn_kernels::Error::TooLarge { .. }), "{err}");
    let err = Linear::new(1 << 31, 1 << 30, 1).unwrap_err();
    assert!(matches!(err, rnn_kernels::Error::TooLarge { .. }), "{err}");

    // The number of characters to sample: this aborted (or panicked) reserving the output.
    let model = CharLm::new(Reference, vocab, &CharLmConfig { cell: CellKind::Gru, layers: 1, hidden: 8, embedding_dim: 4 }, 1).unwrap();
    let err = model.sample("ROMEO:", usize::MAX / 2, 0.8, 1).unwrap_err();
    assert!(matches!(err, rnn_kernels::Error::TooLarge { ref arg, .. } if arg == "len"), "{err}");
}

#[test]
fn the_fallible_initialisation_draws_the_same_parameters_as_init_uniform() {
    let (vocab, _, _) = small_corpus();
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let config = CharLmConfig { cell, layers: 2, hidden: 24, embedding_dim: 8 };
        let model = CharLm::new(Reference, vocab.clone(), &config, 11).unwrap();
        // The model's seeds: the embedding's first, the stack's second.
        let mut seeds = rnn_kernels::testkit::SplitMix64::new(11);
        seeds.next_u64();
        let want = rnn_kernels::Params::<f32>::init_uniform(model.rnn_config(), seeds.next_u64()).unwrap();
        assert_eq!(model.rnn_params().as_slice(), want.as_slice(), "{cell}");
    }
}

/// The L2 norms of a model's recurrent weight matrices and of its recurrent biases.
fn rnn_norms(model: &CharLm<Cpu>) -> (f64, f64) {
    let params = model.rnn_params();
    let (mut w, mut b) = (0.0f64, 0.0f64);
    for spec in params.layout().specs() {
        let sq: f64 = params.as_slice()[spec.offset..spec.offset + spec.len()].iter().map(|&x| x as f64 * x as f64).sum();
        match spec.kind {
            ParamKind::WeightIh | ParamKind::WeightHh => w += sq,
            _ => b += sq,
        }
    }
    (w.sqrt(), b.sqrt())
}

/// AdamW in the trainer: over 40 steps at learning rate 2e-3, a weight decay of 1 multiplies the
/// weight matrices by (1 - 2e-3)^40 = 0.923 beside the Adam steps, so their norm ends clearly
/// below the run without decay; the biases do not decay, so theirs moves only by the Adam steps'
/// difference. The cosine schedule sets the rate of every step: after a run of N steps the
/// trainer's rate is the schedule's at step N - 1.
#[test]
fn weight_decay_shrinks_the_weights_and_the_schedule_sets_the_rate() {
    let (vocab, train, val) = small_corpus();
    let val = &val[..2_000];
    let run = |weight_decay: f32| {
        let adam = AdamConfig { weight_decay, ..AdamConfig::default() };
        let mut trainer =
            Trainer::new(small_model(vocab.clone(), CellKind::Lstm, 32, 5), train.clone(), TrainConfig { adam, ..small_training() })
                .unwrap();
        for _ in 0..40 {
            trainer.step().unwrap();
        }
        rnn_norms(trainer.model())
    };
    let (plain, decayed) = (run(0.0), run(1.0));
    println!("weights {:.4} -> {:.4}, biases {:.4} -> {:.4}", plain.0, decayed.0, plain.1, decayed.1);
    assert!(decayed.0 < 0.96 * plain.0, "weight norm with decay {} vs without {}", decayed.0, plain.0);
    assert!((decayed.1 / plain.1 - 1.0).abs() < 0.02, "bias norm with decay {} vs without {}", decayed.1, plain.1);

    let schedule = CosineSchedule::new(4e-3, 1e-4, 5).unwrap();
    let mut trainer = Trainer::new(small_model(vocab.clone(), CellKind::Gru, 16, 2), train.clone(), small_training()).unwrap();
    let plan = Schedule { budget: Budget::Steps(12), eval_every: 0, eval_chars: 0, eval_streams: 8, lr: Some(schedule) };
    let mut steps = 0;
    rnn_kernels_nn::train(&mut trainer, val, &plan, |p| steps += matches!(p, Progress::Step { .. }) as usize).unwrap();
    assert_eq!(steps, 12);
    assert_eq!(trainer.lr(), schedule.lr(11, 11.0 / 12.0), "the last step's rate");
    assert_ne!(trainer.lr(), AdamConfig::default().lr);
}

/// Dropout between the layers of the trainer's stack: a run of a fixed number of steps is the
/// same on every run and differs from the run without dropout (and with another mask seed);
/// evaluation ignores it (the trained model evaluates the same with its dropout set to 0); a
/// checkpoint keeps it; a probability outside [0, 1) is an error naming `dropout`.
#[test]
fn dropout_between_layers_is_reproducible_and_changes_training() {
    let (vocab, train, val) = small_corpus();
    let val = &val[..2_000];
    let config = CharLmConfig { cell: CellKind::Lstm, layers: 2, hidden: 24, embedding_dim: 8 };
    let run = |dropout: f64, mask_seed: u64| {
        let model = CharLm::new(Cpu::with_threads(2).unwrap(), vocab.clone(), &config, 4).unwrap();
        let mut trainer = Trainer::new(model, train.clone(), TrainConfig { dropout, mask_seed, ..small_training() }).unwrap();
        let losses: Vec<f64> = (0..15).map(|_| trainer.step().unwrap()).collect();
        (losses, trainer.into_model())
    };
    let (a, model) = run(0.3, 1);
    let (b, _) = run(0.3, 1);
    let (plain, _) = run(0.0, 1);
    let (other, _) = run(0.3, 2);
    assert_eq!(a, b, "two runs with dropout differ");
    assert_ne!(a, plain, "dropout changed nothing");
    assert_ne!(a, other, "another mask seed drew the same masks");
    assert_eq!(model.rnn_config().dropout(), Some(0.3));
    let with = model.evaluate(val, 8, 50).unwrap();
    let bytes = model.to_safetensors_bytes().unwrap();
    let mut model = model;
    model.set_dropout(0.0).unwrap();
    assert_eq!(model.evaluate(val, 8, 50).unwrap(), with, "evaluation saw the dropout");
    assert!(model.set_dropout(1.0).unwrap_err().to_string().contains("dropout"));
    let dir = std::env::temp_dir().join(format!("rnn-kernels-charlm-dropout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.safetensors"), &bytes).unwrap();
    let loaded = CharLm::load(Reference, dir.join("m.safetensors")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.rnn_config().dropout(), Some(0.3), "the checkpoint keeps the dropout");
}

/// Zoneout in the trainer's stack: a run of a fixed number of steps is the same on every run and
/// differs from the run without zoneout; evaluation uses the expectation (it differs from the
/// same weights without zoneout); a checkpoint keeps it; a rate outside [0, 1), or the cell
/// state's zoneout on a GRU, is an error naming the option.
#[test]
fn zoneout_is_reproducible_and_changes_training() {
    let (vocab, train, val) = small_corpus();
    let val = &val[..2_000];
    let config = CharLmConfig { cell: CellKind::Lstm, layers: 2, hidden: 24, embedding_dim: 8 };
    let run = |zoneout: f64, zoneout_cell: f64| {
        let model = CharLm::new(Cpu::with_threads(2).unwrap(), vocab.clone(), &config, 4).unwrap();
        let mut trainer =
            Trainer::new(model, train.clone(), TrainConfig { zoneout, zoneout_cell, mask_seed: 3, ..small_training() }).unwrap();
        let losses: Vec<f64> = (0..15).map(|_| trainer.step().unwrap()).collect();
        (losses, trainer.into_model())
    };
    let (a, model) = run(0.2, 0.1);
    let (b, _) = run(0.2, 0.1);
    let (plain, _) = run(0.0, 0.0);
    assert_eq!(a, b, "two runs with zoneout differ");
    let model_rd = CharLm::new(Cpu::with_threads(2).unwrap(), vocab.clone(), &config, 4).unwrap();
    let mut trainer =
        Trainer::new(model_rd, train.clone(), TrainConfig { recurrent_dropout: 0.3, mask_seed: 3, ..small_training() }).unwrap();
    let rd: Vec<f64> = (0..15).map(|_| trainer.step().unwrap()).collect();
    assert_ne!(rd, plain, "recurrent dropout changed nothing");
    assert_eq!(trainer.model().rnn_config().recurrent_dropout(), Some(0.3));
    let model_id = CharLm::new(Cpu::with_threads(2).unwrap(), vocab.clone(), &config, 4).unwrap();
    let mut trainer = Trainer::new(model_id, train.clone(), TrainConfig { input_dropout: 0.3, mask_seed: 3, ..small_training() }).unwrap();
    let id: Vec<f64> = (0..15).map(|_| trainer.step().unwrap()).collect();
    assert_ne!(id, plain, "input dropout changed nothing");
    assert_ne!(id, rd, "input dropout is recurrent dropout");
    assert_eq!(trainer.model().rnn_config().input_dropout(), Some(0.3));
    assert_ne!(a, plain, "zoneout changed nothing");
    assert_eq!((model.rnn_config().zoneout(), model.rnn_config().zoneout_cell()), (Some(0.2), Some(0.1)));
    let with = model.evaluate(val, 8, 50).unwrap();
    let bytes = model.to_safetensors_bytes().unwrap();
    let mut model = model;
    model.set_zoneout(0.0, 0.0).unwrap();
    assert_ne!(model.evaluate(val, 8, 50).unwrap(), with, "evaluation ignored the zoneout's expectation");
    assert!(model.set_zoneout(1.0, 0.0).unwrap_err().to_string().contains("zoneout"));
    let dir = std::env::temp_dir().join(format!("rnn-kernels-charlm-zoneout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.safetensors"), &bytes).unwrap();
    let loaded = CharLm::load(Reference, dir.join("m.safetensors")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.rnn_config().zoneout_cell(), Some(0.1), "the checkpoint keeps the zoneout");
    let gru = CharLm::new(Cpu::with_threads(1).unwrap(), vocab.clone(), &CharLmConfig { cell: CellKind::Gru, ..config }, 4).unwrap();
    let e = Trainer::new(gru, train.clone(), TrainConfig { zoneout_cell: 0.2, ..small_training() }).unwrap_err();
    assert!(e.to_string().contains("zoneout_cell"), "{e}");
}
