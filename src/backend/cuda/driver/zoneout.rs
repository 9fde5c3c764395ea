//! Zoneout on the CUDA driver (the host's `backend::host::zoneout` is the same pass): the
//! kernels of kernels/zoneout.cu around the unchanged step kernels.
//!
//! - Forward, after each step's cell (and projection): `zoneout_forward` replaces the new `h`
//!   (and, with `zoneout_cell`, the LSTM's `c`) of every active row by the previous state where
//!   the step's mask hits (training) or by the expectation `z·prev + (1-z)·new` (inference), and
//!   writes the zoned `h` into the layer output. A training pass with `zoneout_cell` saves the
//!   cell's own `c` first (`c_new`, which backward's `tanh(c)` reads; the saved `c` is the zoned
//!   one, the next step's `c_prev`).
//! - Backward, before each step's cell backward: `zoneout_split` adds the layer output's
//!   gradient to the carried `dh` (the step kernel is then given no `dy`) and moves the hit
//!   units' part of `dh` (and of `dc`) aside; after the step's products it is added onto the
//!   gradient carried to the previous step.
//!
//! The masks are drawn on the device from the call's key, so backward regenerates them (or,
//! supplied by the caller, read from their device copies, `masks.rs`). The
//! persistent kernels run the plain cells only and decline zoneout (the layer takes the
//! per-step path; an error naming the option when they are required).

use super::super::buffer::View;
use super::super::exec::Exec;
use super::super::kernels as k;
use super::{SiteHits, Temps};
use crate::backend::host::zoneout::{Sites, State, Zoneout};
use crate::backend::stack::LayerDims;
use crate::element::Dtype;
use crate::error::{Error, Result};

/// The option that keeps a layer off the persistent kernels, if any.
pub(super) fn persistent_declines(z: Option<&Zoneout>) -> Option<&'static str> {
    match z {
        Some(z) if z.applies(State::H) => Some("zoneout"),
        Some(z) if z.applies(State::C) => Some("zoneout_cell"),
        _ => None,
    }
}

fn fits(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::invalid(what, "below 2^31", n))
}

/// The kernels' arguments common to both passes for `state`: its sizes, step (the call's and
/// the sequence's, which draws the masks), key, tag and bound, and the bits of supplied masks.
struct Common {
    batch: i32,
    width: i32,
    step: i32,
    mask_step: i32,
    key: [u32; 2],
    tag: u32,
    bound: i64,
    hits: SiteHits,
}

impl Common {
    fn new(exec: &Exec<'_>, z: &Zoneout, sites: Sites, state: State, dims: &LayerDims, t: usize) -> Result<Option<Self>> {
        let Some(rate) = z.device_rate(state) else { return Ok(None) };
        let width = if state == State::H { dims.hout } else { dims.h };
        let hits = match z.masks() {
            Some(stream) => exec.hits(stream, sites.tag(state))?,
            None => SiteHits::DRAWN,
        };
        Ok(Some(Common {
            batch: fits(dims.b, "batch")?,
            width: fits(width, "width")?,
            step: fits(t, "step")?,
            mask_step: fits(t + z.first_step(), "the sequence's step (MaskStream::from_step)")?,
            key: z.key().unwrap_or([0, 0]),
            tag: sites.tag(state),
            bound: rate.bound as i64,
            hits,
        }))
    }
}

/// The states of one forward step that zoneout reads and writes.
pub(super) struct StepStates {
    /// The time index of the step and the `[B]` lengths.
    pub t: usize,
    pub lens: u64,
    /// `[B, Hout]` of the storage type: before the step, and the cell's new one (zoned in place).
    pub h_prev: View,
    pub h: View,
    /// The step's rows of the layer output (`Hout` columns at a row stride of `y_stride`).
    pub y: u64,
    pub y_stride: usize,
    /// LSTM, f32 `[B, H]`: before the step, the cell's new one (zoned in place), and where a
    /// training pass saves the cell's own (`View::NULL` otherwise).
    pub c_prev: View,
    pub c: View,
    pub c_new: View,
}

/// One layer-direction's zoneout in a forward pass (training: the call's masks; inference: the
/// expectation).
#[derive(Clone)]
pub(super) struct ZoneForward {
    zoneout: Zoneout,
    sites: Sites,
}

impl ZoneForward {
    /// The zoneout of layer `l`, direction `d`; `None` without it.
    pub fn new(zoneout: Option<&Zoneout>, (l, d): (usize, usize)) -> Result<Option<Self>> {
        match zoneout {
            Some(z) => Ok(Some(ZoneForward { zoneout: z.clone(), sites: Sites::new(l, d)? })),
            None => Ok(None),
        }
    }

    /// Whether a training pass saves the cell's own `c` (`zoneout_cell`).
    pub fn saves_c_new(&self) -> bool {
        self.zoneout.applies(State::C) && self.zoneout.key().is_some()
    }

    /// Zoneout of the step's states on stream `si`, after its cell.
    pub fn after_step(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, s: &StepStates) -> Result<()> {
        let training = self.zoneout.key().is_some() as i32;
        let launch = |state: State, ty: Dtype, prev: View, cur: View, y: u64, y_stride: usize, save_new: View| -> Result<()> {
            let Some(c) = Common::new(exec, &self.zoneout, self.sites, state, dims, s.t)? else { return Ok(()) };
            let rate = self.zoneout.device_rate(state).expect("Common::new checked it");
            let args = k::ZoneoutForwardArgs {
                batch: c.batch,
                width: c.width,
                step: c.step,
                mask_step: c.mask_step,
                lengths: s.lens,
                key0: c.key[0] as i32,
                key1: c.key[1] as i32,
                tag: c.tag as i32,
                bound: c.bound,
                training,
                z: rate.z,
                keep: rate.keep,
                prev: prev.ptr,
                state: cur.ptr,
                y,
                y_stride: fits(y_stride, "y stride")?,
                save_new: save_new.ptr,
                hits: c.hits.ptr,
                hits_step0: c.hits.step0,
                hits_words: c.hits.words,
            };
            exec.launch_typed(si, k::ZoneoutForward, ty, dims.b * (c.width as usize).div_ceil(4), &args)
        };
        launch(State::H, exec.storage(), s.h_prev, s.h, s.y, s.y_stride, View::NULL)?;
        if dims.lstm() {
            launch(State::C, Dtype::F32, s.c_prev, s.c, 0, 0, s.c_new)?;
        }
        Ok(())
    }
}

/// One layer-direction's zoneout in backward: the masks of the forward pass, and the f32
/// `[B, Hout]` and `[B, H]` (LSTM with `zoneout_cell`) gradients of the hit units.
#[derive(Clone)]
pub(super) struct ZoneBackward {
    zoneout: Zoneout,
    sites: Sites,
    kept_h: View,
    kept_c: View,
}

impl ZoneBackward {
    /// The buffers of layer `l`, direction `d`; `None` without zoneout.
    pub fn new(temps: &mut Temps<'_, '_>, dims: &LayerDims, zoneout: Option<&Zoneout>, (l, d): (usize, usize)) -> Result<Option<Self>> {
        let Some(z) = zoneout else { return Ok(None) };
        let kept = |temps: &mut Temps<'_, '_>, state: State, n: usize| match z.applies(state) {
            true => temps.f32(n),
            false => Ok(View::NULL),
        };
        let kept_h = kept(temps, State::H, dims.b * dims.hout)?;
        let kept_c = if dims.lstm() { kept(temps, State::C, dims.b * dims.h)? } else { View::NULL };
        Ok(Some(ZoneBackward { zoneout: z.clone(), sites: Sites::new(l, d)?, kept_h, kept_c }))
    }

    /// Whether [`split`](Self::split) adds the layer output's gradient to the carried `dh` (the
    /// step kernel is then given none).
    pub fn takes_dy(&self) -> bool {
        self.zoneout.applies(State::H)
    }

    /// Before step `t`'s cell backward on stream `si`: `carry (+ dy)` and `dc` split into the hit
    /// units' parts (kept) and the cell's (left in place).
    #[allow(clippy::too_many_arguments)]
    pub fn split(
        &self,
        exec: &Exec<'_>,
        si: usize,
        dims: &LayerDims,
        t: usize,
        lens: u64,
        (dy, dy_stride): (u64, usize),
        carry: View,
        dc: View,
    ) -> Result<()> {
        let launch = |state: State, ty: Dtype, dy: u64, grad: View, kept: View| -> Result<()> {
            let Some(c) = Common::new(exec, &self.zoneout, self.sites, state, dims, t)? else { return Ok(()) };
            let args = k::ZoneoutSplitArgs {
                batch: c.batch,
                width: c.width,
                step: c.step,
                mask_step: c.mask_step,
                lengths: lens,
                key0: c.key[0] as i32,
                key1: c.key[1] as i32,
                tag: c.tag as i32,
                bound: c.bound,
                dy,
                dy_stride: fits(dy_stride, "dy stride")?,
                grad: grad.ptr,
                kept: kept.ptr,
                hits: c.hits.ptr,
                hits_step0: c.hits.step0,
                hits_words: c.hits.words,
            };
            exec.launch_typed(si, k::ZoneoutSplit, ty, dims.b * (c.width as usize).div_ceil(4), &args)
        };
        launch(State::H, exec.storage(), dy, carry, self.kept_h)?;
        if dims.lstm() {
            launch(State::C, Dtype::F32, 0, dc, self.kept_c)?;
        }
        Ok(())
    }

    /// After step's products on stream `si`: the hit units' gradients added onto those carried to
    /// the previous step.
    pub fn add_kept(&self, exec: &Exec<'_>, si: usize, carry: View, dc: View) -> Result<()> {
        if self.zoneout.applies(State::H) {
            exec.add(si, carry, self.kept_h)?;
        }
        if self.zoneout.applies(State::C) {
            exec.add(si, dc, self.kept_c)?;
        }
        Ok(())
    }
}
