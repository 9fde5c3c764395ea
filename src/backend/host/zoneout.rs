//! Zoneout on the host backends (reference and CPU): after each step's cell, every unit of an
//! active row's new hidden state (and, for an LSTM with `zoneout_cell`, new cell state) keeps
//! its previous value where the call's mask hits (a training pass), or becomes the expectation
//! `z·prev + (1-z)·new` (inference). Backward splits the gradient of the zoned state: the part
//! of the zoned-out units goes straight to the previous step's state, the rest through the
//! cell. The masks are drawn per position from the call's [`MaskStream`] (see [`crate::masks`]:
//! kinds [`ZoneoutH`](MaskKind::ZoneoutH), [`ZoneoutC`](MaskKind::ZoneoutC), the layer and
//! direction, the time index, the row's index in the batch), so they are the same for any
//! thread count and backward regenerates them.

use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::masks::{MaskKind, MaskSite, MaskStream};
use crate::philox::Threshold;
use crate::shape::SeqShape;

/// The zoneout probability of one state, as the threshold of its masks and in `T`.
#[derive(Debug, Clone, Copy)]
struct Rate {
    z: f64,
    threshold: Threshold,
}

/// One state's zoneout as the device kernels take it: `z` and `1 - z` in f32 (the host's
/// inference computes `z·prev + (1-z)·new` with the same two constants in f32), and the masks'
/// bound (a word below it is a hit).
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceRate {
    pub z: f32,
    pub keep: f32,
    pub bound: u64,
}

/// The zoneout of one call: training (with the call's masks) or inference (the expectation).
#[derive(Debug, Clone)]
pub(crate) struct Zoneout {
    h: Option<Rate>,
    c: Option<Rate>,
    /// The masks of a training pass; `None` in inference.
    masks: Option<MaskStream>,
}

/// Which state a zoneout applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// The hidden state `h` (`Hout` units).
    H,
    /// An LSTM's cell state `c` (`H` units).
    C,
}

/// The mask sites of one layer-direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sites {
    h: MaskSite,
    c: MaskSite,
}

impl Sites {
    /// The sites of layer `layer`, direction `direction`.
    pub fn new(layer: usize, direction: usize) -> Result<Self> {
        Ok(Sites { h: MaskSite::new(layer, direction, MaskKind::ZoneoutH)?, c: MaskSite::new(layer, direction, MaskKind::ZoneoutC)? })
    }

    /// The last word of the counters of `state`'s masks (the device kernels take it).
    #[cfg(feature = "cuda")]
    pub fn tag(self, state: State) -> u32 {
        self.of(state).tag()
    }

    /// The site of `state`'s masks.
    fn of(self, state: State) -> MaskSite {
        match state {
            State::H => self.h,
            State::C => self.c,
        }
    }
}

impl Zoneout {
    /// The zoneout of a pass of `cfg` over `shape`: `None` without zoneout; in a training pass
    /// with the call's `masks` (an error naming `masks` when missing), else the expectation.
    pub fn for_pass(cfg: &RnnConfig, shape: &SeqShape, training: bool, masks: Option<&MaskStream>) -> Result<Option<Self>> {
        let rate = |name: &str, z: Option<f64>| -> Result<Option<Rate>> {
            z.map(|z| Ok(Rate { z, threshold: Threshold::new(name, z)? })).transpose()
        };
        let (h, c) = (rate("zoneout", cfg.zoneout())?, rate("zoneout_cell", cfg.zoneout_cell())?);
        if h.is_none() && c.is_none() {
            return Ok(None);
        }
        let masks = match (training, masks) {
            (false, _) => None,
            (true, Some(m)) => Some(m.clone()),
            (true, None) => {
                return Err(Error::invalid(
                    "masks",
                    "a MaskStream for the zoneout of a training pass (ForwardInput::masks, or Rnn::forward_training_masked)",
                    "None",
                ))
            }
        };
        // A mask's counter holds the step and the row in 32 bits each.
        let limit = 1usize << 32;
        if masks.is_some() && (shape.steps() > limit || shape.batch() > limit) {
            return Err(Error::invalid("shape", "at most 2^32 steps and 2^32 rows with zoneout", format!("{:?}", shape)));
        }
        Ok(Some(Zoneout { h, c, masks }))
    }

    /// Whether it zones out `state`.
    pub fn applies(&self, state: State) -> bool {
        self.rate(state).is_some()
    }

    /// The rate of `state` as the device kernels take it (`None` when it is not zoned out).
    #[cfg(feature = "cuda")]
    pub fn device_rate(&self, state: State) -> Option<DeviceRate> {
        self.rate(state).map(|r| DeviceRate { z: r.z as f32, keep: (1.0 - r.z) as f32, bound: r.threshold.bound() })
    }

    /// A training pass's masks (`None` in inference).
    #[cfg(feature = "cuda")]
    pub fn masks(&self) -> Option<&MaskStream> {
        self.masks.as_ref()
    }

    /// The key of a training pass's masks (`None` in inference).
    #[cfg(feature = "cuda")]
    pub fn key(&self) -> Option<[u32; 2]> {
        self.masks.as_ref().map(MaskStream::key)
    }

    /// The sequence's step of the call's step 0 ([`MaskStream::first_step`]; 0 in inference).
    #[cfg(feature = "cuda")]
    pub fn first_step(&self) -> usize {
        self.masks.as_ref().map_or(0, MaskStream::first_step)
    }

    fn rate(&self, state: State) -> Option<Rate> {
        match state {
            State::H => self.h,
            State::C => self.c,
        }
    }

    /// Zoneout of `state` after step `t` of a block of rows starting at batch row `row0`: for
    /// each active row, `new` (`[n, width]`, the cell's new state) becomes `prev` where the
    /// mask hits (training) or `z·prev + (1-z)·new` (inference). `hit` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Float>(
        &self,
        state: State,
        sites: Sites,
        t: usize,
        row0: usize,
        active: &[bool],
        prev: &[T],
        new: &mut [T],
        hit: &mut Vec<u32>,
    ) {
        let Some(rate) = self.rate(state) else { return };
        let width = new.len() / active.len().max(1);
        let site = sites.of(state);
        let (z, keep) = (T::from_f64(rate.z), T::from_f64(1.0 - rate.z));
        for (b, &a) in active.iter().enumerate() {
            if !a {
                continue;
            }
            let (p, n) = (&prev[b * width..(b + 1) * width], &mut new[b * width..(b + 1) * width]);
            match &self.masks {
                Some(masks) => {
                    hits(masks, rate.threshold, site, t, row0 + b, width, hit);
                    // 32 units per mask word, the selection without branches.
                    for ((n32, p32), &w) in n.chunks_mut(32).zip(p.chunks(32)).zip(hit.iter()) {
                        for (j, (v, &pv)) in n32.iter_mut().zip(p32).enumerate() {
                            let (nv, zoned) = (*v, (w >> j) & 1 == 1);
                            *v = if zoned { pv } else { nv };
                        }
                    }
                }
                None => {
                    for (v, &pv) in n.iter_mut().zip(p) {
                        *v = z * pv + keep * *v;
                    }
                }
            }
        }
    }

    /// Backward of [`forward`](Self::forward) in a training pass: for each active row, moves
    /// the gradient `grad` (`[n, width]`, w.r.t. the zoned state) of the zoned-out units into
    /// `kept` (the part that goes straight to the previous state) and leaves in `grad` the part
    /// w.r.t. the cell's new state; `kept` is zero at the other units of the active rows (and
    /// not read for the inactive ones: [`add_kept`](Self::add_kept) skips them).
    #[allow(clippy::too_many_arguments)]
    pub fn split_grad<T: Float>(
        &self,
        state: State,
        sites: Sites,
        t: usize,
        row0: usize,
        active: &[bool],
        grad: &mut [T],
        kept: &mut Vec<T>,
        hit: &mut Vec<u32>,
    ) {
        let (Some(rate), Some(masks)) = (self.rate(state), &self.masks) else { return };
        // Every unit of an active row is written below.
        kept.resize(grad.len(), T::ZERO);
        let width = grad.len() / active.len().max(1);
        let site = sites.of(state);
        for (b, &a) in active.iter().enumerate() {
            if !a {
                continue;
            }
            hits(masks, rate.threshold, site, t, row0 + b, width, hit);
            let (g, k) = (&mut grad[b * width..(b + 1) * width], &mut kept[b * width..(b + 1) * width]);
            for ((g32, k32), &w) in g.chunks_mut(32).zip(k.chunks_mut(32)).zip(hit.iter()) {
                for (j, (gv, kv)) in g32.iter_mut().zip(k32.iter_mut()).enumerate() {
                    let (v, zoned) = (*gv, (w >> j) & 1 == 1);
                    *kv = if zoned { v } else { T::ZERO };
                    *gv = if zoned { T::ZERO } else { v };
                }
            }
        }
    }

    /// Adds `kept` (from [`split_grad`](Self::split_grad)) onto `grad`, the gradient w.r.t. the
    /// previous state, for the active rows.
    pub fn add_kept<T: Float>(&self, state: State, active: &[bool], kept: &[T], grad: &mut [T]) {
        if !self.applies(state) || self.masks.is_none() {
            return;
        }
        let width = grad.len() / active.len().max(1);
        for (b, &a) in active.iter().enumerate() {
            if a {
                for (g, &k) in grad[b * width..(b + 1) * width].iter_mut().zip(&kept[b * width..(b + 1) * width]) {
                    *g += k;
                }
            }
        }
    }
}

/// Writes into `hit` (bit words of `width` units) the mask of `site` for `row` at step `t`.
fn hits(masks: &MaskStream, threshold: Threshold, site: MaskSite, t: usize, row: usize, width: usize, hit: &mut Vec<u32>) {
    hit.resize(width.div_ceil(32), 0);
    // `Zoneout::for_pass` checked that steps and rows fit in 32 bits (and a state's width is far
    // below 4·2³² units).
    masks.hit_bits_at(site, t as u32, row as u32, threshold, hit);
}
