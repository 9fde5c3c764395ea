//! [`CharLm`], [`Trainer`] and [`train`]: the language model of [the crate
//! docs](crate#the-character-level-language-model).

use crate::checkpoint::{f32_tensor, safetensors_error, serialize_f32, write_atomic};
use crate::error::{invalid, try_from_fn, try_vec, try_with_capacity, wrong_shape, Error, Result};
use crate::rng::SplitMix64;
use crate::{clip_global_norm, softmax_cross_entropy, Adam, AdamConfig, CosineSchedule, Decay, Embedding, Linear, Vocab};
use rnn_kernels::{
    config_from_metadata, config_metadata, masks::MaskStream, Backend, CellKind, LoadOptions, ParamKind, ParamLayout, Params, Rnn,
    RnnConfig, SeqShape,
};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sizes of a [`CharLm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharLmConfig {
    /// The recurrent cell.
    pub cell: CellKind,
    /// Number of recurrent layers `L`.
    pub layers: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// Embedding size `E` (the stack's input size).
    pub embedding_dim: usize,
}

impl Default for CharLmConfig {
    /// A 2-layer LSTM, hidden size 256, embeddings of 64.
    fn default() -> Self {
        CharLmConfig { cell: CellKind::Lstm, layers: 2, hidden: 256, embedding_dim: 64 }
    }
}

/// The carried recurrent state of `B` streams: `h [L, B, Hout]`, `c [L, B, H]` (LSTM).
#[derive(Debug, Clone)]
struct State {
    h: Vec<f32>,
    c: Option<Vec<f32>>,
}

impl State {
    fn zeros(cfg: &RnnConfig, batch: usize) -> Result<Self> {
        let l = cfg.num_layers() * cfg.num_directions();
        let size = |h: usize| {
            l.checked_mul(batch)
                .and_then(|n| n.checked_mul(h))
                .ok_or_else(|| invalid("batch", format!("a number of streams whose state [{l}, B, {h}] fits in memory"), batch))
        };
        let what = |h: usize| format!("the recurrent state [{l}, {batch}, {h}] of f32");
        let h = try_vec("batch", what(cfg.hidden_out_size()), size(cfg.hidden_out_size())?, 0.0)?;
        let c = match cfg.cell().has_cell_state() {
            true => Some(try_vec("batch", what(cfg.hidden_size()), size(cfg.hidden_size())?, 0.0)?),
            false => None,
        };
        Ok(State { h, c })
    }
}

/// PyTorch's initialisation of the stack's parameters, as `Params::init_uniform` draws them
/// (every value uniform in `±1/sqrt(H)` from SplitMix64 seeded with `seed`, the same bits), with
/// the buffer allocated fallibly: a configuration too large for memory is an error.
fn init_params(cfg: &RnnConfig, seed: u64) -> Result<Params<f32>> {
    let n = ParamLayout::new(cfg).len();
    let k = 1.0 / (cfg.hidden_size() as f64).sqrt();
    let mut rng = SplitMix64::new(seed);
    let what = format!(
        "{n} f32 parameters of {} layer(s) of {}, input size {}, hidden size {}",
        cfg.num_layers(),
        cfg.cell(),
        cfg.input_size(),
        cfg.hidden_size()
    );
    let data = try_from_fn("hidden, layers, embedding_dim", what, n, || rng.uniform(-k, k) as f32)?;
    Params::from_vec(cfg, data)
}

/// A character-level language model: embedding, recurrent stack, softmax decoder.
pub struct CharLm<B: Backend<f32, Buf = [f32]>> {
    vocab: Vocab,
    embedding: Embedding,
    params: Params<f32>,
    rnn: Rnn<f32, B>,
    decoder: Linear,
}

impl<B: Backend<f32, Buf = [f32]>> std::fmt::Debug for CharLm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CharLm")
            .field("backend", &self.rnn.backend().name())
            .field("vocab", &self.vocab.as_string())
            .field("embedding_dim", &self.embedding.dim())
            .field("rnn", self.params.config())
            .finish_non_exhaustive()
    }
}

impl<B: Backend<f32, Buf = [f32]>> CharLm<B> {
    /// A freshly initialised model over `vocab` (PyTorch's initialisations, from `seed`).
    pub fn new(backend: B, vocab: Vocab, config: &CharLmConfig, seed: u64) -> Result<Self> {
        let cfg = RnnConfig::new(config.cell, config.embedding_dim, config.hidden).num_layers(config.layers).build()?;
        let mut seeds = SplitMix64::new(seed);
        let embedding = Embedding::new(vocab.len(), config.embedding_dim, seeds.next_u64())?;
        let params = init_params(&cfg, seeds.next_u64())?;
        let decoder = Linear::new(cfg.output_size(), vocab.len(), seeds.next_u64())?;
        Self::from_parts(backend, vocab, embedding, params, decoder)
    }

    /// A model from its parts, checking that their sizes fit together.
    pub fn from_parts(backend: B, vocab: Vocab, embedding: Embedding, params: Params<f32>, decoder: Linear) -> Result<Self> {
        let cfg = params.config();
        if cfg.bidirectional() {
            return Err(invalid("rnn config", "unidirectional (a language model cannot read ahead)", "bidirectional"));
        }
        let v = vocab.len();
        let checks = [
            ("embedding num_embeddings (V)", v, embedding.num_embeddings()),
            ("embedding dim (the stack's input_size)", cfg.input_size(), embedding.dim()),
            ("decoder in_features (the stack's output size)", cfg.output_size(), decoder.in_features()),
            ("decoder out_features (V)", v, decoder.out_features()),
        ];
        for (arg, want, got) in checks {
            if want != got {
                return Err(invalid(arg, format!("{want}"), got));
            }
        }
        let rnn = Rnn::from_params(backend, &params)?;
        Ok(CharLm { vocab, embedding, params, rnn, decoder })
    }

    /// Sets the dropout between the recurrent layers of training passes (`p` in `[0, 1)`; 0:
    /// none), replanning the stack with it. Inference (evaluation, sampling) ignores it.
    pub fn set_dropout(&mut self, p: f64) -> Result<()> {
        if self.params.config().dropout().unwrap_or(0.0) == p {
            return Ok(());
        }
        self.replan(self.params.config().to_builder().dropout(p).build()?)
    }

    /// Replans the stack with `cfg` (the same parameter layout, other training options).
    fn replan(&mut self, cfg: RnnConfig) -> Result<()> {
        let params = Params::from_vec(&cfg, self.params.as_slice().to_vec())?;
        self.rnn.replan(&cfg, params.as_slice())?;
        self.params = params;
        Ok(())
    }

    /// Sets the zoneout of training passes (`h` and, LSTM, `c`; each in `[0, 1)`, 0: none),
    /// replanning the stack with it. Inference (evaluation, sampling) then uses the expectation
    /// `z·prev + (1-z)·new` ([`RnnConfigBuilder::zoneout`](rnn_kernels::RnnConfigBuilder::zoneout)).
    pub fn set_zoneout(&mut self, h: f64, c: f64) -> Result<()> {
        let cfg = self.params.config();
        if cfg.zoneout().unwrap_or(0.0) == h && cfg.zoneout_cell().unwrap_or(0.0) == c {
            return Ok(());
        }
        self.replan(cfg.to_builder().zoneout(h).zoneout_cell(c).build()?)
    }

    /// Sets the recurrent (variational) dropout of training passes (`p` in `[0, 1)`; 0: none),
    /// replanning the stack with it. Inference ignores it
    /// ([`RnnConfigBuilder::recurrent_dropout`](rnn_kernels::RnnConfigBuilder::recurrent_dropout)).
    pub fn set_recurrent_dropout(&mut self, p: f64) -> Result<()> {
        if self.params.config().recurrent_dropout().unwrap_or(0.0) == p {
            return Ok(());
        }
        self.replan(self.params.config().to_builder().recurrent_dropout(p).build()?)
    }

    /// Sets the variational dropout of every recurrent layer's input in training passes (`p` in
    /// `[0, 1)`; 0: none; Keras's `dropout` of a recurrent layer), replanning the stack with it.
    /// The first layer's input is the embedding. Inference ignores it
    /// ([`RnnConfigBuilder::input_dropout`](rnn_kernels::RnnConfigBuilder::input_dropout)).
    pub fn set_input_dropout(&mut self, p: f64) -> Result<()> {
        if self.params.config().input_dropout().unwrap_or(0.0) == p {
            return Ok(());
        }
        self.replan(self.params.config().to_builder().input_dropout(p).build()?)
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    /// The recurrent stack's configuration.
    pub fn rnn_config(&self) -> &RnnConfig {
        self.params.config()
    }
    /// The recurrent stack's parameters, under PyTorch's names.
    pub fn rnn_params(&self) -> &Params<f32> {
        &self.params
    }
    /// The embedding.
    pub fn embedding(&self) -> &Embedding {
        &self.embedding
    }
    /// The decoder.
    pub fn decoder(&self) -> &Linear {
        &self.decoder
    }
    /// The backend the stack runs on.
    pub fn backend(&self) -> &B {
        self.rnn.backend()
    }
    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.embedding.weight.len() + self.params.as_slice().len() + self.decoder.weight.len() + self.decoder.bias.len()
    }

    /// Inference over `ids: [T, B]` from `state`, which it advances; returns `logits [T·B, V]`.
    fn run(&self, shape: &SeqShape, ids: &[usize], state: &mut State) -> Result<Vec<f32>> {
        let n = ids.len();
        let size =
            |width: usize| n.checked_mul(width).ok_or_else(|| invalid("ids", format!("a length whose [N, {width}] fits in memory"), n));
        let (e, v) = (self.embedding.dim(), self.vocab.len());
        let mut x = try_vec("ids", format!("embeddings [{n}, {e}] of f32"), size(e)?, 0.0)?;
        self.embedding.forward(ids, &mut x)?;
        let out = self.rnn.forward(shape, &x, Some(&state.h), state.c.as_deref())?;
        let mut logits = try_vec("ids", format!("logits [{n}, {v}] of f32"), size(v)?, 0.0)?;
        self.decoder.forward(&out.y, &mut logits)?;
        state.h = out.hn;
        state.c = out.cn;
        Ok(logits)
    }

    /// Mean negative log-likelihood of `ids` (each character predicted from those before it),
    /// in nats per character. The text is cut into `streams` contiguous pieces run side by side
    /// in chunks of `chunk` characters, each piece's state carried from chunk to chunk; the first
    /// character of each piece is context only.
    pub fn evaluate(&self, ids: &[usize], streams: usize, chunk: usize) -> Result<f64> {
        if streams == 0 || chunk == 0 {
            return Err(invalid("streams, chunk", "both at least 1", format!("{streams}, {chunk}")));
        }
        if ids.len() < 2 {
            return Err(invalid("ids", "at least 2 characters", ids.len()));
        }
        let s = streams.min(ids.len() - 1);
        let seg = (ids.len() - 1) / s;
        let mut state = State::zeros(self.rnn_config(), s)?;
        let mut total = 0.0;
        for start in (0..seg).step_by(chunk) {
            let t = chunk.min(seg - start);
            let (mut inp, mut tgt) = (Vec::with_capacity(t * s), Vec::with_capacity(t * s));
            for k in 0..t {
                for b in 0..s {
                    inp.push(ids[b * seg + start + k]);
                    tgt.push(ids[b * seg + start + k + 1]);
                }
            }
            let logits = self.run(&SeqShape::new(t, s)?, &inp, &mut state)?;
            total += softmax_cross_entropy(&logits, &tgt, None)? * (t * s) as f64;
        }
        Ok(total / (seg * s) as f64)
    }

    /// The logits of the next character after reading `prompt`, and the state after it.
    fn read_prompt(&self, prompt: &str) -> Result<(Vec<f32>, State)> {
        let ids = self.vocab.encode("prompt", prompt)?;
        if ids.is_empty() {
            return Err(invalid("prompt", "at least one character", "an empty string"));
        }
        let mut state = State::zeros(self.rnn_config(), 1)?;
        let logits = self.run(&SeqShape::new(ids.len(), 1)?, &ids, &mut state)?;
        let v = self.vocab.len();
        Ok((logits[logits.len() - v..].to_vec(), state))
    }

    /// The probability of each character (by id) to follow `prompt`.
    pub fn next_char_distribution(&self, prompt: &str) -> Result<Vec<f32>> {
        Ok(softmax(&self.read_prompt(prompt)?.0, 1.0))
    }

    /// `len` characters sampled after `prompt` (not included), each drawn from the softmax of
    /// the logits divided by `temperature` (below 1: more conservative), from a generator seeded
    /// with `seed`.
    pub fn sample(&self, prompt: &str, len: usize, temperature: f32, seed: u64) -> Result<String> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(invalid("temperature", "a positive finite number", temperature));
        }
        let (mut logits, mut state) = self.read_prompt(prompt)?;
        let mut rng = SplitMix64::new(seed);
        let mut out = try_with_capacity("len", format!("the ids of {len} sampled characters"), len)?;
        let one = SeqShape::new(1, 1)?;
        for i in 0..len {
            let probs = softmax(&logits, temperature);
            let u = rng.next_f64() as f32;
            let mut acc = 0.0;
            // Falls back to the last character if rounding leaves the sum just below u.
            let id = probs.iter().position(|&p| {
                acc += p;
                acc > u
            });
            let id = id.unwrap_or(probs.len() - 1);
            out.push(id);
            if i + 1 < len {
                logits = self.run(&one, &[id], &mut state)?;
            }
        }
        self.vocab.decode(&out)
    }

    /// The checkpoint as safetensors bytes (see [the crate docs](crate#the-character-level-language-model)); the same model always
    /// gives the same bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let (v, cfg) = (self.vocab.len(), self.rnn_config());
        let mut tensors = vec![("embedding.weight".to_string(), vec![v, self.embedding.dim()], &self.embedding.weight[..])];
        for spec in self.params.layout().specs() {
            tensors.push((format!("rnn.{}", spec.name), spec.shape.clone(), &self.params.as_slice()[spec.range()]));
        }
        tensors.push(("decoder.weight".to_string(), vec![v, cfg.output_size()], &self.decoder.weight[..]));
        tensors.push(("decoder.bias".to_string(), vec![v], &self.decoder.bias[..]));
        let mut meta = config_metadata(cfg);
        meta.insert("model".to_string(), "rnn-kernels charlm".to_string());
        meta.insert("vocab".to_string(), self.vocab.as_string());
        let bytes = serialize_f32(&tensors, &meta);
        SafeTensors::deserialize(&bytes).map_err(|e| safetensors_error("<bytes>", e))?;
        Ok(bytes)
    }

    /// Writes the checkpoint to `path` atomically: to a new temporary file in the same
    /// directory, flushed to disk, then renamed to `path`, so `path` holds either its previous
    /// content or the whole checkpoint, never part of one (a crash or a full disk mid-write
    /// leaves at most the temporary file, `.<file name>.<pid>.<n>.tmp`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
    }

    /// [`save`](Self::save)s to `path`; if that fails, keeps the checkpoint in the first of
    /// `fallback_dirs` that takes it, under a new name (`charlm-<pid>-<n>.safetensors`), so the
    /// model is not lost. The error says why the save failed and where the model was kept (or
    /// that it could not be kept anywhere).
    pub fn save_or_keep(&self, path: impl AsRef<Path>, fallback_dirs: &[PathBuf]) -> std::result::Result<(), Box<SaveFailed>> {
        let path = path.as_ref();
        let bytes = match self.to_safetensors_bytes() {
            Ok(b) => b,
            Err(error) => return Err(Box::new(SaveFailed { path: path.to_path_buf(), error, kept: None, fallback_errors: Vec::new() })),
        };
        let error = match write_atomic(path, &bytes) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let mut fallback_errors = Vec::new();
        for dir in fallback_dirs {
            let fallback = crate::checkpoint::unique_path(dir, "charlm", "safetensors");
            match write_atomic(&fallback, &bytes) {
                Ok(()) => return Err(Box::new(SaveFailed { path: path.to_path_buf(), error, kept: Some(fallback), fallback_errors })),
                Err(e) => fallback_errors.push(e),
            }
        }
        Err(Box::new(SaveFailed { path: path.to_path_buf(), error, kept: None, fallback_errors }))
    }

    /// Reads a checkpoint written by [`save`](Self::save) (or by PyTorch with the same names and
    /// metadata) and plans it on `backend`.
    pub fn load(backend: B, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Self::from_safetensors_bytes(backend, &bytes, &path.display().to_string())
    }

    /// Like [`load`](Self::load), from bytes; `source` names them in errors.
    pub fn from_safetensors_bytes(backend: B, bytes: &[u8], source: &str) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| safetensors_error(source, e))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let cfg = config_from_metadata(&meta, source)?;
        let vocab = meta
            .get("vocab")
            .ok_or_else(|| invalid("metadata[\"vocab\"]", "present (the characters of the vocabulary in id order)", "missing"))
            .and_then(|s| Vocab::from_chars(s))
            .map_err(|e| Error::InFile { path: source.to_string(), source: Box::new(e) })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| safetensors_error(source, e))?;
        let params = Params::from_safetensors_bytes(bytes, &cfg, &LoadOptions { prefix: "rnn.".into(), allow_unexpected: true }, source)?;
        let own = ["embedding.weight", "decoder.weight", "decoder.bias"];
        for name in st.names() {
            if !name.starts_with("rnn.") && !own.contains(&name) {
                return Err(Error::UnexpectedTensor {
                    name: name.to_string(),
                    source_desc: source.to_string(),
                    expected: format!("{}, rnn.<the stack's PyTorch names>", own.join(", ")),
                });
            }
        }
        let v = vocab.len();
        let tensor = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            let view = st.tensor(name).map_err(|_| Error::MissingTensor {
                name: name.to_string(),
                shape: shape.clone(),
                source_desc: source.to_string(),
            })?;
            if view.shape() != shape.as_slice() {
                return Err(wrong_shape(format!("{name} in {source}"), format!("shape {shape:?}"), format!("shape {:?}", view.shape())));
            }
            f32_tensor(&view, name, source)
        };
        let embedding = Embedding::from_weight(v, cfg.input_size(), tensor("embedding.weight", vec![v, cfg.input_size()])?)?;
        let decoder = Linear::from_parts(
            cfg.output_size(),
            v,
            tensor("decoder.weight", vec![v, cfg.output_size()])?,
            tensor("decoder.bias", vec![v])?,
        )?;
        Self::from_parts(backend, vocab, embedding, params, decoder)
    }
}

/// A checkpoint that could not be written where it was asked to be, from
/// [`CharLm::save_or_keep`], and where it was kept instead.
#[derive(Debug)]
pub struct SaveFailed {
    /// The path asked for.
    pub path: PathBuf,
    /// Why writing it failed.
    pub error: Error,
    /// Where the checkpoint was written instead, if a fallback directory took it.
    pub kept: Option<PathBuf>,
    /// Why each fallback directory tried before (all of them when `kept` is `None`) failed.
    pub fallback_errors: Vec<Error>,
}

impl std::fmt::Display for SaveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model could not be saved to {}: {}; ", self.path.display(), self.error)?;
        match &self.kept {
            Some(kept) => write!(f, "it was kept in {} instead", kept.display()),
            None if self.fallback_errors.is_empty() => write!(f, "it was not kept anywhere"),
            None => {
                let why: Vec<String> = self.fallback_errors.iter().map(ToString::to_string).collect();
                write!(f, "it could not be kept elsewhere either ({})", why.join("; "))
            }
        }
    }
}

impl std::error::Error for SaveFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// `softmax(logits / temperature)`, in f64 internally.
fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let e: Vec<f64> = logits.iter().map(|&x| (((x - max) / temperature) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|&x| (x / sum) as f32).collect()
}

/// How a [`Trainer`] trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Parallel streams `B`, each a contiguous part of the corpus with its own carried state.
    pub batch: usize,
    /// Characters per chunk `T`: the truncation length of BPTT.
    pub chunk: usize,
    /// The optimiser.
    pub adam: AdamConfig,
    /// The largest global L2 norm of the gradient; larger gradients are scaled down to it.
    pub clip: f32,
    /// Dropout between the recurrent layers in training (PyTorch's `dropout` of `nn.LSTM`;
    /// [`RnnConfigBuilder::dropout`](rnn_kernels::RnnConfigBuilder::dropout)), in `[0, 1)`.
    pub dropout: f64,
    /// Zoneout of the hidden state in training
    /// ([`RnnConfigBuilder::zoneout`](rnn_kernels::RnnConfigBuilder::zoneout)), in `[0, 1)`.
    pub zoneout: f64,
    /// Zoneout of an LSTM's cell state in training
    /// ([`RnnConfigBuilder::zoneout_cell`](rnn_kernels::RnnConfigBuilder::zoneout_cell)), in `[0, 1)`.
    pub zoneout_cell: f64,
    /// Recurrent (variational) dropout in training
    /// ([`RnnConfigBuilder::recurrent_dropout`](rnn_kernels::RnnConfigBuilder::recurrent_dropout)), in `[0, 1)`.
    pub recurrent_dropout: f64,
    /// Variational dropout of every recurrent layer's input in training, one mask per sequence
    /// ([`RnnConfigBuilder::input_dropout`](rnn_kernels::RnnConfigBuilder::input_dropout)), in `[0, 1)`.
    pub input_dropout: f64,
    /// The seed of the dropout and zoneout masks: step `s` draws `MaskStream::new(mask_seed,
    /// s)`, so a run of a fixed number of steps is the same on every run.
    pub mask_seed: u64,
}

impl Default for TrainConfig {
    /// 32 streams, chunks of 100, Adam with learning rate 2e-3, clipping at 5, no dropout or
    /// zoneout.
    fn default() -> Self {
        TrainConfig {
            batch: 32,
            chunk: 100,
            adam: AdamConfig::default(),
            clip: 5.0,
            dropout: 0.0,
            zoneout: 0.0,
            zoneout_cell: 0.0,
            recurrent_dropout: 0.0,
            input_dropout: 0.0,
            mask_seed: 0,
        }
    }
}

/// Trains a [`CharLm`] on a corpus by truncated BPTT (see [the crate docs](crate#the-character-level-language-model)).
pub struct Trainer<B: Backend<f32, Buf = [f32]>> {
    model: CharLm<B>,
    config: TrainConfig,
    data: Vec<usize>,
    /// Characters per stream.
    seg: usize,
    next_chunk: usize,
    state: State,
    adam: Adam,
    reserve: B::Reserve,
    steps: u64,
    /// Gradients, in the order embedding, stack, decoder weight, decoder bias.
    grads: [Vec<f32>; 4],
}

impl<B: Backend<f32, Buf = [f32]>> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("config", &self.config)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl<B: Backend<f32, Buf = [f32]>> Trainer<B> {
    /// A trainer for `model` on `data` (character ids), with fresh optimiser state.
    pub fn new(model: CharLm<B>, data: Vec<usize>, config: TrainConfig) -> Result<Self> {
        let TrainConfig { batch, chunk, clip, dropout, zoneout, zoneout_cell, recurrent_dropout, input_dropout, .. } = config;
        let mut model = model;
        model.set_dropout(dropout)?;
        model.set_zoneout(zoneout, zoneout_cell)?;
        model.set_recurrent_dropout(recurrent_dropout)?;
        model.set_input_dropout(input_dropout)?;
        if batch == 0 || chunk == 0 {
            return Err(invalid("batch, chunk", "both at least 1", format!("{batch}, {chunk}")));
        }
        if clip.is_nan() || clip <= 0.0 {
            return Err(invalid("clip", "a positive number", clip));
        }
        let v = model.vocab.len();
        if let Some(p) = data.iter().position(|&i| i >= v) {
            return Err(invalid(format!("data[{p}]"), format!("a character id below V = {v}"), data[p]));
        }
        let need = batch.saturating_mul(chunk).saturating_add(1);
        if data.len() < need {
            return Err(invalid("data", format!("at least batch·chunk + 1 = {need} characters"), data.len()));
        }
        let seg = (data.len() - 1) / batch;
        let sizes = [model.embedding.weight.len(), model.params.as_slice().len(), model.decoder.weight.len(), model.decoder.bias.len()];
        let mut adam = Adam::new(&sizes, config.adam)?;
        // Weight decay (AdamW) on the matrices: the embedding, the recurrent weight matrices
        // (not their biases, peepholes or layer-norm gains) and the decoder's weight.
        let mut mask = try_vec("model", format!("the weight-decay mask: {} flags", sizes[1]), sizes[1], false)?;
        for spec in model.params.layout().specs() {
            if matches!(spec.kind, ParamKind::WeightIh | ParamKind::WeightHh | ParamKind::WeightHr) {
                mask[spec.offset..spec.offset + spec.len()].fill(true);
            }
        }
        adam.set_decay(1, Decay::Mask(mask))?;
        adam.set_decay(3, Decay::None)?;
        let names = ["embedding", "rnn", "decoder weight", "decoder bias"];
        let mut grads: [Vec<f32>; 4] = Default::default();
        for ((g, n), name) in grads.iter_mut().zip(sizes).zip(names) {
            *g = try_vec("model", format!("the {name} gradient: {n} f32"), n, 0.0)?;
        }
        let state = State::zeros(model.rnn_config(), batch)?;
        Ok(Trainer { model, config, data, seg, next_chunk: 0, state, adam, reserve: Default::default(), steps: 0, grads })
    }

    /// The model being trained.
    pub fn model(&self) -> &CharLm<B> {
        &self.model
    }
    /// The trained model.
    pub fn into_model(self) -> CharLm<B> {
        self.model
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Characters predicted per step, `B·T`.
    pub fn chars_per_step(&self) -> usize {
        self.config.batch * self.config.chunk
    }

    /// Sets the optimiser's learning rate (for a schedule).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.adam.set_lr(lr)
    }

    /// The optimiser's learning rate now.
    pub fn lr(&self) -> f32 {
        self.adam.config().lr
    }

    /// One optimiser step on the next chunk of every stream; returns the chunk's mean loss in
    /// nats per character (before the step).
    pub fn step(&mut self) -> Result<f64> {
        let (b, t) = (self.config.batch, self.config.chunk);
        if (self.next_chunk + 1) * t > self.seg {
            self.next_chunk = 0;
            self.state = State::zeros(self.model.rnn_config(), b)?;
        }
        let base = self.next_chunk * t;
        let (mut ids, mut targets) = (Vec::with_capacity(t * b), Vec::with_capacity(t * b));
        for k in 0..t {
            for s in 0..b {
                ids.push(self.data[s * self.seg + base + k]);
                targets.push(self.data[s * self.seg + base + k + 1]);
            }
        }
        let m = &mut self.model;
        let shape = SeqShape::new(t, b)?;
        let (n, e, v) = (t * b, m.embedding.dim(), m.vocab.len());
        let size = |width: usize| {
            n.checked_mul(width).ok_or_else(|| invalid("batch, chunk", format!("B·T = {n} rows of {width} that fit in memory"), n))
        };
        let mut x = try_vec("batch, chunk", format!("embeddings [{n}, {e}] of f32"), size(e)?, 0.0)?;
        m.embedding.forward(&ids, &mut x)?;
        let masks = MaskStream::new(self.config.mask_seed, self.steps);
        let out = m.rnn.forward_training_masked(&shape, &x, Some(&self.state.h), self.state.c.as_deref(), masks, &mut self.reserve)?;
        let mut logits = try_vec("batch, chunk", format!("logits [{n}, {v}] of f32"), size(v)?, 0.0)?;
        m.decoder.forward(&out.y, &mut logits)?;
        let mut dlogits = try_vec("batch, chunk", format!("logit gradients [{n}, {v}] of f32"), logits.len(), 0.0)?;
        let loss = softmax_cross_entropy(&logits, &targets, Some(&mut dlogits))?;
        if !loss.is_finite() {
            return Err(invalid("loss", "finite (the training diverged: lower the learning rate or the clip norm)", loss));
        }

        let [d_emb, d_rnn, d_w, d_b] = &mut self.grads;
        for g in [&mut *d_emb, &mut *d_rnn, &mut *d_w, &mut *d_b] {
            g.fill(0.0);
        }
        let mut dy = try_vec("batch, chunk", format!("output gradients: {} f32", out.y.len()), out.y.len(), 0.0)?;
        m.decoder.backward(&out.y, &dlogits, Some(&mut dy), d_w, d_b)?;
        let g = m.rnn.backward_accumulate(&self.reserve, Some(&dy), None, None, d_rnn)?;
        m.embedding.backward(&ids, &g.dx, d_emb)?;
        clip_global_norm(&mut [d_emb, d_rnn, d_w, d_b], self.config.clip)?;
        self.adam.step(
            &mut [&mut m.embedding.weight, m.params.as_mut_slice(), &mut m.decoder.weight, &mut m.decoder.bias],
            &[d_emb, d_rnn, d_w, d_b],
        )?;
        m.rnn.update_params(m.params.as_slice())?;

        self.state = State { h: out.hn, c: out.cn };
        self.next_chunk += 1;
        self.steps += 1;
        Ok(loss)
    }
}

/// When [`train`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// After this many steps: the run is the same, bit for bit, on every run.
    Steps(u64),
    /// When this much wall-clock time has passed, counting the evaluations and leaving time for
    /// the final one; the number of steps depends on the machine's speed.
    Time(Duration),
}

/// What [`train`] does besides stepping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// When to stop.
    pub budget: Budget,
    /// Evaluate on the first [`eval_chars`](Self::eval_chars) validation characters every this
    /// many steps (0: never; the final evaluation on all of them always runs).
    pub eval_every: u64,
    /// Size of the validation subset evaluated at intervals.
    pub eval_chars: usize,
    /// Streams of the evaluations (see [`CharLm::evaluate`]).
    pub eval_streams: usize,
    /// The learning rate by step: `None` keeps the optimiser's; a cosine schedule follows the
    /// budget (the steps done over [`Budget::Steps`], or the time spent over [`Budget::Time`]).
    pub lr: Option<CosineSchedule>,
}

/// What [`train`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A step was taken.
    Step {
        /// Steps taken in this call.
        step: u64,
        /// The step's training loss, nats per character.
        loss: f64,
        /// Training characters per second of training time so far.
        chars_per_sec: f64,
        /// Wall-clock time since the start of the call.
        elapsed: Duration,
    },
    /// A validation loss.
    Eval {
        /// Steps taken in this call.
        step: u64,
        /// Nats per character.
        val_loss: f64,
        /// Characters evaluated.
        chars: usize,
        /// Whether it was all of the validation text (the final evaluation).
        full: bool,
    },
}

/// What a [`train`] call did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSummary {
    /// Steps taken.
    pub steps: u64,
    /// Wall-clock time, evaluations included.
    pub elapsed: Duration,
    /// Training characters per second of training time.
    pub chars_per_sec: f64,
    /// The final validation loss over all of `val`, nats per character.
    pub val_loss: f64,
}

/// Trains until `schedule.budget` is spent, evaluating on `val` (character ids) at intervals and
/// at the end, and tells `on` about every step and evaluation.
pub fn train<B: Backend<f32, Buf = [f32]>>(
    trainer: &mut Trainer<B>,
    val: &[usize],
    schedule: &Schedule,
    mut on: impl FnMut(Progress),
) -> Result<TrainSummary> {
    let start = Instant::now();
    let subset = &val[..schedule.eval_chars.min(val.len())];
    let (streams, chunk) = (schedule.eval_streams, trainer.config.chunk);
    let mut train_time = Duration::ZERO;
    let mut step = 0u64;
    // Evaluation speed in characters per second; until measured, assume the forward pass alone
    // is three times as fast as a training step.
    let mut eval_rate: Option<f64> = None;
    let chars_per_step = trainer.chars_per_step();
    let rate = |train_time: Duration, step: u64| step as f64 * chars_per_step as f64 / train_time.as_secs_f64().max(1e-9);
    loop {
        match schedule.budget {
            Budget::Steps(n) if step >= n => break,
            Budget::Time(limit) if step > 0 => {
                let per_step = train_time.as_secs_f64() / step as f64;
                let final_eval = val.len() as f64 / eval_rate.unwrap_or(3.0 * rate(train_time, step));
                if start.elapsed().as_secs_f64() + per_step + final_eval > limit.as_secs_f64() {
                    break;
                }
            }
            _ => {}
        }
        if let Some(lr) = schedule.lr {
            let progress = match schedule.budget {
                Budget::Steps(n) => step as f64 / n.max(1) as f64,
                Budget::Time(limit) => start.elapsed().as_secs_f64() / limit.as_secs_f64().max(1e-9),
            };
            trainer.set_lr(lr.lr(step, progress))?;
        }
        let t0 = Instant::now();
        let loss = trainer.step()?;
        train_time += t0.elapsed();
        step += 1;
        on(Progress::Step { step, loss, chars_per_sec: rate(train_time, step), elapsed: start.elapsed() });
        if schedule.eval_every > 0 && step.is_multiple_of(schedule.eval_every) && subset.len() >= 2 {
            let t0 = Instant::now();
            let val_loss = trainer.model.evaluate(subset, streams, chunk)?;
            eval_rate = Some(subset.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9));
            on(Progress::Eval { step, val_loss, chars: subset.len(), full: false });
        }
    }
    let val_loss = trainer.model.evaluate(val, streams, chunk)?;
    on(Progress::Eval { step, val_loss, chars: val.len(), full: true });
    Ok(TrainSummary { steps: step, elapsed: start.elapsed(), chars_per_sec: rate(train_time, step), val_loss })
}
