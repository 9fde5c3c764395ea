//! The decoder-step entry points (`rnnk_steps_*` in the header): a layer stack run one step at a
//! time on a model handle (`Rnn::start_steps`, `Rnn::step`), and the backward of a training run
//! one step at a time from the last (`Rnn::backward_steps`, `BackwardSteps::step`,
//! `BackwardSteps::finish`).
//!
//! A run (`rnnk_steps`) belongs to the model that started it and holds its state (and, in
//! training, each step's record) behind an `Arc`; a backward walk (`rnnk_steps_backward`) holds
//! a second reference to the same run and borrows from it (a `self_cell`: the walk and the
//! reference it borrows through, in one value). While a walk lives, the run cannot take a step
//! (`Arc::get_mut` refuses), so a walk and its run agree; freeing the run first is allowed (the
//! walk keeps it alive).

use crate::args::{self, In};
use crate::bufs::Bufs;
use crate::handle::{Engine, Handle, Kind, Model};
use crate::status::{guard, CapiError, RNNK_ERR_PANIC};
use crate::{RnnkModel, RnnkSteps, RnnkStepsBackward};
use rnnk_core::{BackwardSteps, Cpu, Reference, RnnConfig, Steps};
use std::ffi::c_int;
use std::sync::Arc;

/// A run's state, one variant per backend (that of the model that started it).
pub enum StepsData {
    Reference(Steps<f32, Reference>),
    Cpu(Steps<f32, Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(Steps<f32, rnnk_core::CudaHost>),
}

impl StepsData {
    fn steps(&self) -> usize {
        match self {
            StepsData::Reference(s) => s.steps(),
            StepsData::Cpu(s) => s.steps(),
            #[cfg(feature = "cuda")]
            StepsData::Cuda(s) => s.steps(),
        }
    }

    /// The hidden and cell states after the last step.
    fn state(&self) -> (&[f32], Option<&[f32]>) {
        match self {
            StepsData::Reference(s) => (s.h(), s.c()),
            StepsData::Cpu(s) => (s.h(), s.c()),
            #[cfg(feature = "cuda")]
            StepsData::Cuda(s) => (s.h(), s.c()),
        }
    }

    /// Reorders an inference run's state by `rows` (`Steps::reorder`).
    fn reorder(&mut self, rows: &[usize]) -> rnnk_core::Result<()> {
        match self {
            StepsData::Reference(s) => s.reorder(rows),
            StepsData::Cpu(s) => s.reorder(rows),
            #[cfg(feature = "cuda")]
            StepsData::Cuda(s) => s.reorder(rows),
        }
    }
}

/// The sizes of a run, from its model's configuration.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    layers: usize,
    input: usize,
    hidden: usize,
    hidden_out: usize,
}

impl Sizes {
    fn of(cfg: &RnnConfig) -> Sizes {
        Sizes { layers: cfg.num_layers(), input: cfg.input_size(), hidden: cfg.hidden_size(), hidden_out: cfg.hidden_out_size() }
    }

    /// `B`, the rows of a hidden state of `h_len` elements.
    fn batch(&self, h_len: usize) -> usize {
        h_len / (self.layers * self.hidden_out).max(1)
    }
}

/// `rnnk_steps`.
pub struct StepsRun {
    model_id: u64,
    sizes: Sizes,
    /// Whether each step keeps what backward needs (a training run takes no reorder).
    training: bool,
    data: Arc<StepsData>,
}

impl Handle for StepsRun {
    const KIND: Kind = Kind::Steps;
}

/// A backward walk, one variant per backend; it borrows the run `'r`.
enum Walk<'r> {
    Reference(BackwardSteps<'r, f32, Reference>),
    Cpu(BackwardSteps<'r, f32, Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(BackwardSteps<'r, f32, rnnk_core::CudaHost>),
}

/// A walk, `None` once finished.
type OpenWalk<'r> = Option<Walk<'r>>;

self_cell::self_cell!(
    /// A walk with the reference to the run it borrows (kept alive by it).
    struct RunWalk {
        owner: Arc<StepsData>,
        #[covariant]
        dependent: OpenWalk,
    }
);

impl Walk<'_> {
    fn next_step(&self) -> Option<usize> {
        match self {
            Walk::Reference(w) => w.next_step(),
            Walk::Cpu(w) => w.next_step(),
            #[cfg(feature = "cuda")]
            Walk::Cuda(w) => w.next_step(),
        }
    }
}

/// `rnnk_steps_backward`.
pub struct StepsBackward {
    model_id: u64,
    sizes: Sizes,
    walk: RunWalk,
}

impl StepsBackward {
    /// The run the walk goes back through.
    fn run(&self) -> &StepsData {
        self.walk.borrow_owner()
    }
}

impl Handle for StepsBackward {
    const KIND: Kind = Kind::StepsBackward;
}

// The handles are shared across threads like the model's: their content must be `Send + Sync`.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<crate::handle::Slot<StepsRun>>();
    shareable::<crate::handle::Slot<StepsBackward>>();
};

fn internal(what: &str) -> CapiError {
    CapiError::new(RNNK_ERR_PANIC, format!("internal error (a bug in rnn-kernels, please report it): {what}"))
}

/// A run or walk may only be used with the model that started it.
fn check_owner(arg: &str, m: &Model, model_id: u64) -> Result<(), CapiError> {
    if model_id != m.id {
        return Err(CapiError::handle(
            arg,
            &format!("one started on this model (model #{}, backend {})", m.id, m.backend_name()),
            format!("one started on model #{model_id}"),
        ));
    }
    Ok(())
}

/// Copies `src` into the checked output `dst` (same length: checked from the same shape).
fn copy(dst: &mut [f32], src: &[f32], arg: &str) -> Result<(), CapiError> {
    if dst.len() != src.len() {
        return Err(internal(&format!("`{arg}`: {} elements computed for a buffer of {}", src.len(), dst.len())));
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// Starts a run (`rnnk_steps_start`, `rnnk_steps_start_masked`).
///
/// # Safety
/// The header's contract for every argument.
unsafe fn start(
    model: *const RnnkModel, batch: usize, h0: In, c0: In, training: bool, masks: Option<rnnk_core::masks::MaskStream>,
    out: *mut *mut RnnkSteps,
) -> Result<(), CapiError> {
    // SAFETY: the caller's writable pointer.
    let out = unsafe { args::required_slot("out", out)? };
    *out = std::ptr::null_mut();
    // SAFETY: handle checked by `get`.
    let m = unsafe { Model::get("model", model)? };
    let cfg = m.config();
    let sizes = Sizes::of(cfg);
    let mut bufs = Bufs::default();
    let h = bufs.optional("h0", h0, "[L, B, Hout]", &[sizes.layers, batch, sizes.hidden_out])?;
    let c = if cfg.cell().has_cell_state() {
        bufs.optional("c0", c0, "[L, B, H]", &[sizes.layers, batch, sizes.hidden])?
    } else {
        bufs.absent("c0", c0, format!("cell {} has no cell state", cfg.cell()))?;
        None
    };
    bufs.check()?;
    // SAFETY: checked above.
    let (h, c) = unsafe { (h.map(|i| bufs.input(i)), c.map(|i| bufs.input(i))) };
    let data = match &m.engine {
        Engine::Reference(rnn) => StepsData::Reference(rnn.start_steps(batch, h, c, training, masks)?),
        Engine::Cpu(rnn) => StepsData::Cpu(rnn.start_steps(batch, h, c, training, masks)?),
        #[cfg(feature = "cuda")]
        Engine::Cuda(rnn) => StepsData::Cuda(rnn.start_steps(batch, h, c, training, masks)?),
    };
    *out = StepsRun { model_id: m.id, sizes, training, data: Arc::new(data) }.into_raw();
    Ok(())
}

/// Starts a decoder run of `batch` sequences on `model` from `h0 [L, B, Hout]` and
/// `c0 [L, B, H]` (optional: zeros); with `training` non-zero each step keeps what backward needs.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_start(
    model: *const RnnkModel, batch: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, training: c_int,
    out: *mut *mut RnnkSteps,
) -> c_int {
    // SAFETY: the caller's arguments (the header's contract), checked by `start`.
    guard(|| unsafe { start(model, batch, (h0, h0_len), (c0, c0_len), training != 0, None, out) })
}

/// As `rnnk_steps_start` for training, with the recurrent and input dropout masks drawn from
/// `(mask_seed, mask_offset)` (one mask per sequence, the same at every step).
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_start_masked(
    model: *const RnnkModel, mask_seed: u64, mask_offset: u64, batch: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize,
    out: *mut *mut RnnkSteps,
) -> c_int {
    let masks = Some(rnnk_core::masks::MaskStream::new(mask_seed, mask_offset));
    // SAFETY: the caller's arguments (the header's contract), checked by `start`.
    guard(|| unsafe { start(model, batch, (h0, h0_len), (c0, c0_len), true, masks, out) })
}

/// Frees a run; NULL is a no-op. A backward walk started from it stays valid.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_free(steps: *mut RnnkSteps) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { StepsRun::free("steps", steps) })
}

/// One step: `x [B, I]` in, `y [B, Hout]` out; the run's state moves on.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_step(
    model: *const RnnkModel, steps: *mut RnnkSteps, x: *const f32, x_len: usize, y: *mut f32, y_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get` and `get_mut`.
        let (m, mut run) = unsafe { (Model::get("model", model)?, StepsRun::get_mut("steps", steps)?) };
        check_owner("steps", &m, run.model_id)?;
        let sizes = run.sizes;
        let Some(data) = Arc::get_mut(&mut run.data) else {
            return Err(CapiError::invalid(
                "steps",
                "a run no backward walk holds (free its rnnk_steps_backward before another step)",
                "a run a backward walk holds",
            ));
        };
        let b = sizes.batch(data.state().0.len());
        let mut bufs = Bufs::default();
        let xi = bufs.required("x", (x, x_len), "[B, I]", &[b, sizes.input])?;
        let yi = bufs.required("y", (y, y_len), "[B, Hout]", &[b, sizes.hidden_out])?;
        bufs.check()?;
        // SAFETY: checked above.
        let x = unsafe { bufs.input(xi) };
        let out = match (&m.engine, data) {
            (Engine::Reference(rnn), StepsData::Reference(s)) => rnn.step(s, x)?,
            (Engine::Cpu(rnn), StepsData::Cpu(s)) => rnn.step(s, x)?,
            #[cfg(feature = "cuda")]
            (Engine::Cuda(rnn), StepsData::Cuda(s)) => rnn.step(s, x)?,
            #[allow(unreachable_patterns)]
            _ => return Err(internal("a run of another backend than its model's")),
        };
        // SAFETY: checked above.
        copy(unsafe { bufs.output(yi) }, &out, "y")
    })
}

/// Reorders an inference run's state for a beam search: for every layer, row `i` of the new
/// `h` (and `c`) is row `rows[i]` of the current one (`rows [rows_len]`, int64, each in 0..B);
/// `rows_len` is the run's new B. Nothing changes on an error.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_reorder(steps: *mut RnnkSteps, rows: *const i64, rows_len: usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get_mut`.
        let mut run = unsafe { StepsRun::get_mut("steps", steps)? };
        if run.training {
            return Err(CapiError::invalid(
                "steps",
                "an inference run (rnnk_steps_start with training 0: the backward of a training run does not go through a reorder)",
                "a training run",
            ));
        }
        let sizes = run.sizes;
        let Some(data) = Arc::get_mut(&mut run.data) else {
            return Err(CapiError::invalid(
                "steps",
                "a run no backward walk holds (free its rnnk_steps_backward before a reorder)",
                "a run a backward walk holds",
            ));
        };
        let b = sizes.batch(data.state().0.len());
        // SAFETY: the caller's array of `rows_len` int64 (the header's contract), checked first.
        let rows = unsafe { args::parse_rows(rows, rows_len, b, &format!("the run's B = {b}"))? };
        // The new state's size is asked for by `rows_len`: checked against the machine's memory
        // before the library allocates it (an error naming `rows_len`, not an abort).
        let elements = (sizes.layers as u128) * (rows.len() as u128) * ((sizes.hidden_out + sizes.hidden) as u128);
        args::check_rows_bytes(elements.checked_mul(4), &format!("the state of {} rows", rows.len()))?;
        Ok(data.reorder(&rows)?)
    })
}

/// The run's sizes: `*count` the steps taken, `*batch` its B, `*h_len` and `*c_len` the element
/// counts of its states (`c_len` 0 without a cell state); each output pointer is optional.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_info(
    steps: *const RnnkSteps, count: *mut usize, batch: *mut usize, h_len: *mut usize, c_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let run = unsafe { StepsRun::get("steps", steps)? };
        let (h, c) = run.data.state();
        let values = [run.data.steps(), run.sizes.batch(h.len()), h.len(), c.map_or(0, <[f32]>::len)];
        let outs = [("count", count), ("batch", batch), ("h_len", h_len), ("c_len", c_len)];
        args::distinct_slots(&outs)?;
        for ((arg, p), v) in outs.into_iter().zip(values) {
            // SAFETY: NULL or the caller's writable size_t.
            if let Some(out) = unsafe { args::slot(arg, p)? } {
                *out = v;
            }
        }
        Ok(())
    })
}

/// Copies the state after the last step: `h [L, B, Hout]`, `c [L, B, H]` (LSTM); both optional.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_state(steps: *const RnnkSteps, h: *mut f32, h_len: usize, c: *mut f32, c_len: usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let run = unsafe { StepsRun::get("steps", steps)? };
        let (hv, cv) = run.data.state();
        let (s, b) = (run.sizes, run.sizes.batch(hv.len()));
        let mut bufs = Bufs::default();
        let hi = bufs.optional("h", (h, h_len), "[L, B, Hout]", &[s.layers, b, s.hidden_out])?;
        let ci = match cv {
            Some(_) => bufs.optional("c", (c, c_len), "[L, B, H]", &[s.layers, b, s.hidden])?,
            None => {
                bufs.absent("c", (c, c_len), "the model's cell has no cell state".into())?;
                None
            }
        };
        bufs.check()?;
        if let Some(i) = hi {
            // SAFETY: checked above.
            copy(unsafe { bufs.output(i) }, hv, "h")?;
        }
        if let (Some(i), Some(cv)) = (ci, cv) {
            // SAFETY: checked above.
            copy(unsafe { bufs.output(i) }, cv, "c")?;
        }
        Ok(())
    })
}

/// Starts the backward of a training run from `dhn [L, B, Hout]` and `dcn [L, B, H]` (optional:
/// zeros), the gradients w.r.t. the state after its last step.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_backward_start(
    model: *const RnnkModel, steps: *const RnnkSteps, dhn: *const f32, dhn_len: usize, dcn: *const f32, dcn_len: usize,
    out: *mut *mut RnnkStepsBackward,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        *out = std::ptr::null_mut();
        // SAFETY: handles checked by `get`.
        let (m, run) = unsafe { (Model::get("model", model)?, StepsRun::get("steps", steps)?) };
        check_owner("steps", &m, run.model_id)?;
        let (s, (hv, cv)) = (run.sizes, run.data.state());
        let b = s.batch(hv.len());
        let mut bufs = Bufs::default();
        let dh = bufs.optional("dhn", (dhn, dhn_len), "[L, B, Hout]", &[s.layers, b, s.hidden_out])?;
        let dc = match cv {
            Some(_) => bufs.optional("dcn", (dcn, dcn_len), "[L, B, H]", &[s.layers, b, s.hidden])?,
            None => {
                bufs.absent("dcn", (dcn, dcn_len), "the model's cell has no cell state".into())?;
                None
            }
        };
        bufs.check()?;
        // SAFETY: checked above.
        let (dh, dc) = unsafe { (dh.map(|i| bufs.input(i)), dc.map(|i| bufs.input(i))) };
        let walk = RunWalk::try_new(Arc::clone(&run.data), |data| -> Result<_, CapiError> {
            Ok(Some(match (&m.engine, &**data) {
                (Engine::Reference(rnn), StepsData::Reference(d)) => Walk::Reference(rnn.backward_steps(d, dh, dc)?),
                (Engine::Cpu(rnn), StepsData::Cpu(d)) => Walk::Cpu(rnn.backward_steps(d, dh, dc)?),
                #[cfg(feature = "cuda")]
                (Engine::Cuda(rnn), StepsData::Cuda(d)) => Walk::Cuda(rnn.backward_steps(d, dh, dc)?),
                #[allow(unreachable_patterns)]
                _ => return Err(internal("a run of another backend than its model's")),
            }))
        })?;
        *out = StepsBackward { model_id: m.id, sizes: s, walk }.into_raw();
        Ok(())
    })
}

/// The walk of a backward handle that is not finished.
fn unfinished<'w, 'r>(walk: &'w mut OpenWalk<'r>) -> Result<&'w mut Walk<'r>, CapiError> {
    walk.as_mut().ok_or_else(finished)
}

/// [`unfinished`], read only.
fn unfinished_ref<'w, 'r>(walk: &'w OpenWalk<'r>) -> Result<&'w Walk<'r>, CapiError> {
    walk.as_ref().ok_or_else(finished)
}

fn finished() -> CapiError {
    CapiError::invalid("backward", "a walk not yet finished", "one rnnk_steps_backward_finish has finished (free it)")
}

/// Walks back through the next step (the last one first): `dy [B, Hout]` (optional: zeros), the
/// gradient w.r.t. that step's output, in; `dx [B, I]` (optional: skipped), w.r.t. its input, out.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_backward_step(
    model: *const RnnkModel, backward: *mut RnnkStepsBackward, dy: *const f32, dy_len: usize, dx: *mut f32, dx_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get` and `get_mut`.
        let (m, mut bw) = unsafe { (Model::get("model", model)?, StepsBackward::get_mut("backward", backward)?) };
        check_owner("backward", &m, bw.model_id)?;
        let (s, b) = (bw.sizes, bw.sizes.batch(bw.run().state().0.len()));
        let steps = bw.run().steps();
        if unfinished_ref(bw.walk.borrow_dependent())?.next_step().is_none() {
            return Err(CapiError::invalid(
                "backward",
                "a walk with a step left",
                format!("one that walked back all {steps} steps (call rnnk_steps_backward_finish)"),
            ));
        }
        let mut bufs = Bufs::default();
        let dyi = bufs.optional("dy", (dy, dy_len), "[B, Hout]", &[b, s.hidden_out])?;
        let dxi = bufs.optional("dx", (dx, dx_len), "[B, I]", &[b, s.input])?;
        bufs.check()?;
        // SAFETY: checked above.
        let dy = dyi.map(|i| unsafe { bufs.input(i) });
        bw.walk.with_dependent_mut(|_, walk| {
            let g = match (&m.engine, unfinished(walk)?) {
                (Engine::Reference(rnn), Walk::Reference(w)) => w.step(rnn, dy)?,
                (Engine::Cpu(rnn), Walk::Cpu(w)) => w.step(rnn, dy)?,
                #[cfg(feature = "cuda")]
                (Engine::Cuda(rnn), Walk::Cuda(w)) => w.step(rnn, dy)?,
                #[allow(unreachable_patterns)]
                _ => return Err(internal("a walk of another backend than its model's")),
            };
            match dxi {
                // SAFETY: checked above.
                Some(i) => copy(unsafe { bufs.output(i) }, g, "dx"),
                None => Ok(()),
            }
        })
    })
}

/// Finishes a walk that went back through every step: `dx [T, B, I]` (every step's, in step
/// order), `dh0 [L, B, Hout]`, `dc0 [L, B, H]` (LSTM) and `dparams [param_count]` (the flat
/// layout, overwritten or, with `accumulate` non-zero, added to), each optional.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rnnk_steps_backward_finish(
    model: *const RnnkModel, backward: *mut RnnkStepsBackward, dx: *mut f32, dx_len: usize, dh0: *mut f32, dh0_len: usize, dc0: *mut f32,
    dc0_len: usize, dparams: *mut f32, dparams_len: usize, accumulate: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get` and `get_mut`.
        let (m, mut bw) = unsafe { (Model::get("model", model)?, StepsBackward::get_mut("backward", backward)?) };
        check_owner("backward", &m, bw.model_id)?;
        let (s, b) = (bw.sizes, bw.sizes.batch(bw.run().state().0.len()));
        let (steps, has_c) = (bw.run().steps(), bw.run().state().1.is_some());
        if let Some(t) = unfinished_ref(bw.walk.borrow_dependent())?.next_step() {
            return Err(CapiError::invalid(
                "backward",
                "a walk that went back through every step before rnnk_steps_backward_finish",
                format!("{} of {steps} steps left", t + 1),
            ));
        }
        let mut bufs = Bufs::default();
        let dxi = bufs.optional("dx", (dx, dx_len), "[T, B, I]", &[steps, b, s.input])?;
        let dhi = bufs.optional("dh0", (dh0, dh0_len), "[L, B, Hout]", &[s.layers, b, s.hidden_out])?;
        let dci = if has_c {
            bufs.optional("dc0", (dc0, dc0_len), "[L, B, H]", &[s.layers, b, s.hidden])?
        } else {
            bufs.absent("dc0", (dc0, dc0_len), "the model's cell has no cell state".into())?;
            None
        };
        let dpi = bufs.optional("dparams", (dparams, dparams_len), "[param_count]", &[m.layout().len()])?;
        bufs.check()?;
        let g = bw.walk.with_dependent_mut(|_, walk| match walk.take() {
            Some(Walk::Reference(w)) => Ok(w.finish()?),
            Some(Walk::Cpu(w)) => Ok(w.finish()?),
            #[cfg(feature = "cuda")]
            Some(Walk::Cuda(w)) => Ok(w.finish()?),
            None => Err(internal("a finished walk")),
        })?;
        // SAFETY (each output below): checked above.
        if let Some(i) = dxi {
            copy(unsafe { bufs.output(i) }, &g.dx, "dx")?;
        }
        if let Some(i) = dhi {
            copy(unsafe { bufs.output(i) }, &g.dh0, "dh0")?;
        }
        if let (Some(i), Some(dc)) = (dci, &g.dc0) {
            copy(unsafe { bufs.output(i) }, dc, "dc0")?;
        }
        if let (Some(i), Some(dp)) = (dpi, &g.dparams) {
            let dst = unsafe { bufs.output(i) };
            if accumulate != 0 {
                if dst.len() != dp.len() {
                    return Err(internal("`dparams`: a gradient of another length"));
                }
                for (d, v) in dst.iter_mut().zip(dp) {
                    *d += *v;
                }
            } else {
                copy(dst, dp, "dparams")?;
            }
        }
        Ok(())
    })
}

/// Frees a backward walk; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn rnnk_steps_backward_free(backward: *mut RnnkStepsBackward) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { StepsBackward::free("backward", backward) })
}
