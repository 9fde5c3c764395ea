//! [`Recurrent`]: any configuration of the stack as a candle module.

use crate::element::{sync, CandleFloat};
use crate::graph::{check_dtype, token, Call, Data, Out, Run, Slot, Tie, Which};
use crate::pool::Pool;
use candle_core::{Device, Tensor, Var};
use rnn_kernels::masks::MaskStream;
use rnn_kernels::{Backend, ForwardInput, ForwardOutput, LoadOptions, ParamLayout, Params, RnnConfig, SeqShape};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The inputs of one call of a module: `x` and, optionally, the initial states, the sequence
/// lengths and inference.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use rnn_kernels_candle::Input;
/// let x = Tensor::zeros((5, 3, 8), candle_core::DType::F32, &Device::Cpu)?; // [T, B, I]
/// let lengths = [5, 2, 4];
/// let input = Input::new(&x).lengths(&lengths);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    x: &'a Tensor,
    h0: Option<&'a Tensor>,
    c0: Option<&'a Tensor>,
    lengths: Option<&'a [usize]>,
    train: bool,
}

impl<'a> Input<'a> {
    /// `x: [T, B, I]` (`[B, T, I]` for a [`batch_first`](rnn_kernels::RnnConfigBuilder::batch_first)
    /// configuration); zero initial states, every sequence `T` long, a training call.
    pub fn new(x: &'a Tensor) -> Self {
        Input { x, h0: None, c0: None, lengths: None, train: true }
    }

    /// The initial hidden state, `h0: [L·D, B, Hout]` (zeros if not given).
    pub fn h0(mut self, h0: &'a Tensor) -> Self {
        self.h0 = Some(h0);
        self
    }

    /// The initial cell state of an LSTM, `c0: [L·D, B, H]` (zeros if not given).
    pub fn c0(mut self, c0: &'a Tensor) -> Self {
        self.c0 = Some(c0);
        self
    }

    /// One length per sequence, each in `1..=T` (a variable-length batch, PyTorch's packed
    /// sequences): outputs past a length are zero and the final states are those of each
    /// sequence's last step. A lengths tensor converts with `to_vec1::<u32>()` and a map.
    pub fn lengths(mut self, lengths: &'a [usize]) -> Self {
        self.lengths = Some(lengths);
        self
    }

    /// An inference call: the library's forward pass that keeps nothing, and outputs outside
    /// candle's graph (no gradient flows through them).
    pub fn inference(mut self) -> Self {
        self.train = false;
        self
    }
}

/// The outputs of one call.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[T, B, D·Hout]` (`[B, T, D·Hout]` batch-first), zero past each sequence's length.
    pub y: Tensor,
    /// `[L·D, B, Hout]`: each sequence's hidden state after its last step.
    pub h_n: Tensor,
    /// `[L·D, B, H]` (LSTM only): each sequence's cell state after its last step.
    pub c_n: Option<Tensor>,
}

/// How often a module compared its weights with its plan's and what it did
/// ([`Recurrent::plan_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Comparisons of the variables with the plan's copy (one per call, and one per
    /// [`sync_weights`](Recurrent::sync_weights)).
    pub checks: u64,
    /// Changed weights repacked into the plan in place ([`Backend::update_plan`]).
    pub updated: u64,
    /// Changed weights packed into a new plan ([`Backend::plan`]) because a call whose graph is
    /// still alive holds the old one, which its backward will use.
    pub replanned: u64,
}

/// The plan and the weights it was made from.
struct PlanCache<T: CandleFloat, B: Backend<T, Buf = [T]>> {
    plan: Arc<B::Plan>,
    /// The flat weights of `plan`, in [`ParamLayout`] order: what the variables are compared with.
    weights: Vec<T>,
    stats: PlanStats,
}

/// A stack of recurrent layers (any [`RnnConfig`] the backend runs) as a candle module: the
/// parameters are candle [`Var`]s under PyTorch's names and shapes, a call runs the library's
/// forward pass, and candle's `backward()` runs its fused backward (see the crate docs).
///
/// `T` is `f32` (the [`Cpu`](rnn_kernels::Cpu) backend, the default, or
/// [`Reference`](rnn_kernels::Reference)) or `f64` (`Reference`).
pub struct Recurrent<T: CandleFloat = f32, B: Backend<T, Buf = [T]> = rnn_kernels::Cpu> {
    config: RnnConfig,
    layout: ParamLayout,
    backend: Arc<B>,
    /// In the layout's order.
    vars: Vec<Var>,
    cache: Mutex<PlanCache<T, B>>,
    pool: Arc<Pool<B::Reserve>>,
    mask_seed: u64,
    calls: AtomicU64,
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn wrap(e: rnn_kernels::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> Recurrent<T, B> {
    /// A module with new variables holding `params` (their configuration is the module's).
    pub fn new(backend: B, params: &Params<T>) -> candle_core::Result<Self> {
        let layout = params.layout().clone();
        let vars = layout
            .specs()
            .iter()
            .map(|s| Var::from_slice(&params.as_slice()[s.range()], s.shape.as_slice(), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Self::with_vars(backend, params.config().clone(), vars)
    }

    /// A module with PyTorch's initialisation (every parameter uniform in `±1/√H`), drawn from
    /// `seed` ([`Params::init_uniform`]).
    pub fn init(backend: B, config: &RnnConfig, seed: u64) -> candle_core::Result<Self> {
        Self::new(backend, &Params::init_uniform(config, seed).map_err(wrap)?)
    }

    /// A module whose parameters are read from a safetensors file written by PyTorch
    /// (`save_file(module.state_dict(), path)`) or by this library, with the library's loader
    /// ([`Params::load_safetensors_with`]: names under `options.prefix`, F32, F64, F16 or BF16
    /// data, every parameter required).
    pub fn load_safetensors(backend: B, config: &RnnConfig, path: impl AsRef<Path>, options: &LoadOptions) -> candle_core::Result<Self> {
        Self::new(backend, &Params::load_safetensors_with(path, config, options).map_err(wrap)?)
    }

    /// A module with new variables holding copies of `tensors` (converted to the module's
    /// dtype), e.g. from `candle_core::safetensors::load(path, &Device::Cpu)`: every parameter
    /// of `config` under `options.prefix` + its PyTorch name, with its shape; other names under
    /// the prefix are an error unless `options.allow_unexpected`.
    pub fn from_tensors(
        backend: B,
        config: &RnnConfig,
        tensors: &HashMap<String, Tensor>,
        options: &LoadOptions,
    ) -> candle_core::Result<Self> {
        let layout = ParamLayout::new(config);
        check_names(&layout, tensors.keys(), options)?;
        let vars = layout
            .specs()
            .iter()
            .map(|s| {
                let t = tensors.get(&format!("{}{}", options.prefix, s.name)).expect("check_names found every parameter");
                check_shape(&s.name, t, &s.shape)?;
                Var::from_tensor(&t.to_device(&Device::Cpu)?.to_dtype(T::dtype())?.detach())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Self::with_vars(backend, config.clone(), vars)
    }

    /// A module over existing variables, shared, not copied (e.g. a `VarMap`'s, so that an
    /// optimiser over the map trains the module): every parameter of `config` under
    /// `options.prefix` + its PyTorch name, with its shape and the module's dtype, contiguous,
    /// on the CPU. Other names under the prefix are an error unless `options.allow_unexpected`.
    pub fn from_vars(backend: B, config: &RnnConfig, vars: &HashMap<String, Var>, options: &LoadOptions) -> candle_core::Result<Self> {
        let layout = ParamLayout::new(config);
        check_names(&layout, vars.keys(), options)?;
        let vars = layout
            .specs()
            .iter()
            .map(|s| {
                let v = vars.get(&format!("{}{}", options.prefix, s.name)).expect("check_names found every parameter");
                check_shape(&s.name, v, &s.shape)?;
                check_dtype::<T>(&s.name, v)?;
                if !v.is_contiguous() {
                    candle_core::bail!("{}: a contiguous variable expected", s.name)
                }
                Ok(v.clone())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Self::with_vars(backend, config.clone(), vars)
    }

    /// Plans `config` with the values of `vars` (checked: one per parameter, in layout order).
    fn with_vars(backend: B, config: RnnConfig, vars: Vec<Var>) -> candle_core::Result<Self> {
        let layout = ParamLayout::new(&config);
        let mut weights = vec![T::ZERO; layout.len()];
        for (s, v) in layout.specs().iter().zip(&vars) {
            let d = Data::of(v.as_tensor())?;
            weights[s.range()].copy_from_slice(d.slice::<T>()?);
        }
        let plan = backend.plan(&config, &weights).map_err(wrap)?;
        Ok(Recurrent {
            config,
            layout,
            backend: Arc::new(backend),
            vars,
            cache: Mutex::new(PlanCache { plan: Arc::new(plan), weights, stats: PlanStats::default() }),
            pool: Arc::new(Pool::new()),
            mask_seed: 0,
            calls: AtomicU64::new(0),
        })
    }

    /// The seed of the random masks of a configuration with dropout or zoneout (0 unless set):
    /// training call `n` of the module draws `MaskStream::new(seed, n)`.
    pub fn with_mask_seed(mut self, seed: u64) -> Self {
        self.mask_seed = seed;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The parameters' layout (PyTorch's names, shapes and `state_dict()` order).
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Every variable, in `state_dict()` order (clones share the values): for an optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }

    /// Every variable with its PyTorch name, in `state_dict()` order.
    pub fn named_vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.layout.specs().iter().map(|s| s.name.as_str()).zip(&self.vars)
    }

    /// The variable of the parameter `name` (PyTorch's, e.g. `weight_hh_l1_reverse`).
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.layout.specs().iter().position(|s| s.name == name).map(|i| &self.vars[i])
    }

    /// The variables' current values as the library's [`Params`] (for
    /// [`Params::save_safetensors`], which PyTorch's `load_state_dict` reads).
    pub fn params(&self) -> candle_core::Result<Params<T>> {
        let mut flat = vec![T::ZERO; self.layout.len()];
        for (s, v) in self.layout.specs().iter().zip(&self.vars) {
            flat[s.range()].copy_from_slice(Data::of(v.as_tensor())?.slice::<T>()?);
        }
        Params::from_vec(&self.config, flat).map_err(wrap)
    }

    /// Writes the variables' current values as a safetensors file under PyTorch's names, with
    /// the configuration in its metadata ([`Params::save_safetensors`]).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> candle_core::Result<()> {
        self.params()?.save_safetensors(path).map_err(wrap)
    }

    /// The counts of weight checks and plan refreshes so far.
    pub fn plan_stats(&self) -> PlanStats {
        lock(&self.cache).stats
    }

    /// The number of reserves kept for the next training calls (see the crate docs).
    pub fn pooled_reserves(&self) -> usize {
        self.pool.len()
    }

    /// Drops the kept reserves (the memory of the activations of a training call each).
    pub fn clear_reserves(&self) {
        self.pool.clear();
    }

    /// Compares the variables with the weights of the module's plan and repacks the plan if
    /// any changed (every call does this first); returns whether they had.
    pub fn sync_weights(&self) -> candle_core::Result<bool> {
        self.current_plan().map(|(_, changed)| changed)
    }

    /// The plan for the variables' current values: the cached one, refreshed if a variable
    /// changed (in place when no call holds it, else a new plan, so that the holder's backward
    /// keeps its weights).
    fn current_plan(&self) -> candle_core::Result<(Arc<B::Plan>, bool)> {
        let mut cache = lock(&self.cache);
        let PlanCache { plan, weights, stats } = &mut *cache;
        let mut changed = false;
        for (s, v) in self.layout.specs().iter().zip(&self.vars) {
            changed |= sync(Data::of(v.as_tensor())?.slice::<T>()?, &mut weights[s.range()]);
        }
        stats.checks += 1;
        if changed {
            match Arc::get_mut(plan) {
                Some(p) => {
                    self.backend.update_plan(p, weights).map_err(wrap)?;
                    stats.updated += 1;
                }
                None => {
                    *plan = Arc::new(self.backend.plan(&self.config, weights).map_err(wrap)?);
                    stats.replanned += 1;
                }
            }
        }
        Ok((plan.clone(), changed))
    }

    /// Runs the stack on `input`: a training call (the default) enters candle's graph, so that
    /// `backward()` of a loss computed from the outputs gives the gradients of `x`, `h0`, `c0`
    /// (those candle tracks) and of every variable; an [`inference`](Input::inference) call
    /// keeps nothing.
    pub fn run(&self, input: Input<'_>) -> candle_core::Result<Output> {
        let cfg = &self.config;
        let Input { x, h0, c0, lengths, train } = input;
        check_dtype::<T>("x", x)?;
        let (d0, d1, i) = x.dims3()?;
        let (steps, batch) = if cfg.batch_first() { (d1, d0) } else { (d0, d1) };
        if i != cfg.input_size() {
            candle_core::bail!("x: {:?}, the input size I = {} of the configuration expected last", x.dims(), cfg.input_size())
        }
        let shape = match lengths {
            Some(l) if l.len() != batch => candle_core::bail!("lengths: one per sequence, B = {batch}, expected; got {}", l.len()),
            Some(l) => SeqShape::with_lengths(steps, l.to_vec()),
            None => SeqShape::new(steps, batch),
        }
        .map_err(wrap)?;
        let h_dims = shape.h_shape(cfg).to_vec();
        let c_dims = shape.c_shape(cfg).to_vec();
        for (name, t, dims) in [("h0", h0, &h_dims), ("c0", c0, &c_dims)] {
            let Some(t) = t else { continue };
            check_dtype::<T>(name, t)?;
            if name == "c0" && !cfg.cell().has_cell_state() {
                candle_core::bail!("c0: a cell state given to a {} stack, which has none", cfg.cell())
            }
            if t.dims() != dims.as_slice() {
                candle_core::bail!("{name}: [L·D, B, ·] = {dims:?} expected; got {:?}", t.dims())
            }
        }
        let y_dims = shape.y_shape(cfg).to_vec();
        let (plan, _) = self.current_plan()?;

        // The kernels read dense buffers: a view is copied (its gradient still reaches it).
        let xc = x.contiguous()?;
        let h0c = h0.map(|t| t.contiguous()).transpose()?;
        let c0c = c0.map(|t| t.contiguous()).transpose()?;
        let n = |d: &[usize]| d.iter().product::<usize>();
        let mut y = vec![T::ZERO; n(&y_dims)];
        let mut hn = vec![T::ZERO; n(&h_dims)];
        let mut cn = cfg.cell().has_cell_state().then(|| vec![T::ZERO; n(&c_dims)]);
        let mut reserve = train.then(|| self.pool.take());
        {
            let xd = Data::of(&xc)?;
            let h0d = h0c.as_ref().map(Data::of).transpose()?;
            let c0d = c0c.as_ref().map(Data::of).transpose()?;
            let input = ForwardInput {
                x: xd.slice::<T>()?,
                h0: h0d.as_ref().map(|d| d.slice::<T>()).transpose()?,
                c0: c0d.as_ref().map(|d| d.slice::<T>()).transpose()?,
                masks: train.then(|| MaskStream::new(self.mask_seed, self.calls.fetch_add(1, Ordering::Relaxed))),
            };
            let output = ForwardOutput { y: &mut y[..], hn: Some(&mut hn[..]), cn: cn.as_deref_mut() };
            let done = match reserve.as_mut() {
                Some(r) => self.backend.forward_training(&plan, &shape, input, output, r),
                None => self.backend.forward_inference(&plan, &shape, input, output),
            };
            if let Err(e) = done {
                if let Some(r) = reserve {
                    self.pool.put(r);
                }
                return Err(wrap(e));
            }
        }
        let Some(reserve) = reserve else {
            let t = |v: Vec<T>, d: &[usize]| Tensor::from_vec(v, d, &Device::Cpu);
            return Ok(Output { y: t(y, &y_dims)?, h_n: t(hn, &h_dims)?, c_n: cn.map(|c| t(c, &c_dims)).transpose()? });
        };

        let wants = [x.track_op(), h0.is_some_and(|t| t.track_op()), c0.is_some_and(|t| t.track_op())];
        let has_c = cn.is_some();
        let call = Arc::new(Call::new(
            self.backend.clone(),
            plan,
            reserve,
            self.pool.clone(),
            [Some(y), Some(hn), cn],
            [y_dims, h_dims.clone(), c_dims.clone()],
            wants,
            [x.dims().to_vec(), h_dims, c_dims],
        ));
        let mut chain = token::<T>()?;
        let mut first = true;
        let mut tie = |chain: &Tensor, input: &Tensor, slot: Slot| -> candle_core::Result<Tensor> {
            let t = chain.apply_op2(input, Tie { call: call.clone(), slot, first })?;
            first = false;
            Ok(t)
        };
        for (s, v) in self.layout.specs().iter().zip(&self.vars) {
            chain = tie(&chain, v.as_tensor(), Slot::Param { offset: s.offset, len: s.len(), shape: s.shape.clone() })?;
        }
        for (t, slot, wanted) in [(Some(x), Slot::X, wants[0]), (h0, Slot::H0, wants[1]), (c0, Slot::C0, wants[2])] {
            if let (Some(t), true) = (t, wanted) {
                chain = tie(&chain, t, slot)?;
            }
        }
        let run = chain.apply_op1(Run { call: call.clone() })?;
        let out = |which| run.apply_op1(Out { call: call.clone(), which });
        Ok(Output { y: out(Which::Y)?, h_n: out(Which::Hn)?, c_n: if has_c { Some(out(Which::Cn)?) } else { None } })
    }
}

/// Checks that `names` hold every parameter of `layout` under the prefix, and (unless allowed)
/// nothing else under it.
fn check_names<'a>(layout: &ParamLayout, names: impl Iterator<Item = &'a String>, options: &LoadOptions) -> candle_core::Result<()> {
    let names: Vec<&String> = names.collect();
    for s in layout.specs() {
        let full = format!("{}{}", options.prefix, s.name);
        if !names.iter().any(|n| **n == full) {
            candle_core::bail!("parameter {full} missing")
        }
    }
    if !options.allow_unexpected {
        if let Some(extra) = names.iter().filter_map(|n| n.strip_prefix(options.prefix.as_str())).find(|n| layout.find(n).is_none()) {
            candle_core::bail!("{}{extra}: not a parameter of the configuration (LoadOptions::allow_unexpected ignores it)", options.prefix)
        }
    }
    Ok(())
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> candle_core::Result<()> {
    if t.dims() != shape {
        candle_core::bail!("{name}: shape {shape:?} expected; got {:?}", t.dims())
    }
    Ok(())
}
