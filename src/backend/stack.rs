//! The bookkeeping of a layer stack that every time loop shares (the host driver and the CUDA
//! driver): the sizes of one layer of a call, the order in which steps are processed, the
//! identity and version that a plan stamps on the reserves it fills, and the checks of a reserve
//! against a plan. The time loops differ only in where their buffers live and which kernels
//! they launch.

use crate::backend::cell::Cell;
use crate::config::RnnConfig;
use crate::error::{Error, Result};
use crate::shape::SeqShape;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sizes of one layer of a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerDims {
    /// The cell (kind, `H`, `Hout`, options).
    pub cell: Cell,
    /// `T`.
    pub t: usize,
    /// `B`.
    pub b: usize,
    /// `H`.
    pub h: usize,
    /// `Hout`.
    pub hout: usize,
    /// `G·H`.
    pub gh: usize,
    /// The layer's input width: `I` for layer 0, `D·Hout` above.
    pub input: usize,
    /// `D·Hout`, the row width of a layer output.
    pub out_w: usize,
    /// An LSTM with projection.
    pub proj: bool,
    /// `D`.
    pub dirs: usize,
}

impl LayerDims {
    /// The sizes of layer `layer` of `config` for a call of `shape`.
    pub fn new(config: &RnnConfig, shape: &SeqShape, layer: usize) -> LayerDims {
        let cell = Cell::of(config);
        LayerDims {
            cell,
            t: shape.steps(),
            b: shape.batch(),
            h: cell.hidden,
            hout: cell.hidden_out,
            gh: cell.gate_width(),
            input: config.layer_input_size(layer),
            out_w: config.output_size(),
            proj: cell.projected(),
            dirs: config.num_directions(),
        }
    }

    /// An LSTM layer.
    pub fn lstm(&self) -> bool {
        self.cell.is_lstm()
    }

    /// A GRU layer.
    pub fn gru(&self) -> bool {
        self.cell.is_gru()
    }
}

/// Steps in processing order: forward `0..T`, reverse `T-1..=0`.
pub(crate) fn steps(t_len: usize, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..t_len).rev())
    } else {
        Box::new(0..t_len)
    }
}

/// The step processed just before `t` in the direction, or `None` at the first one.
pub(crate) fn prev_step(t: usize, t_len: usize, reverse: bool) -> Option<usize> {
    if reverse {
        (t + 1 < t_len).then_some(t + 1)
    } else {
        t.checked_sub(1)
    }
}

/// The identity and version of a plan's weights, so that a reserve is only ever used with the
/// weights that filled it. A clone is a new plan, with an identity of its own: its weights can
/// diverge from the original's through `update_plan`.
#[derive(Debug)]
pub(crate) struct PlanStamp {
    id: u64,
    version: u64,
}

impl PlanStamp {
    /// A new identity, at version 0.
    pub fn new() -> PlanStamp {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        PlanStamp { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), version: 0 }
    }

    /// The weights changed (`update_plan`): reserves filled before can no longer be used.
    pub fn bump(&mut self) {
        self.version += 1;
    }
}

impl Clone for PlanStamp {
    fn clone(&self) -> Self {
        PlanStamp::new()
    }
}

/// What a reserve records of the call that filled it: the plan's stamp and the shape.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReserveStamp {
    plan_id: u64,
    plan_version: u64,
    shape: Option<SeqShape>,
}

impl ReserveStamp {
    /// Records a training forward pass of `shape` with `plan`.
    pub fn fill(&mut self, plan: &PlanStamp, shape: &SeqShape) {
        self.plan_id = plan.id;
        self.plan_version = plan.version;
        self.shape = Some(shape.clone());
    }

    /// The shape of the call that filled the reserve; `None` while empty.
    pub fn shape(&self) -> Option<&SeqShape> {
        self.shape.as_ref()
    }

    /// Checks that the reserve was filled by `plan` at its current version; returns the call's
    /// shape.
    pub fn check(&self, plan: &PlanStamp) -> Result<&SeqShape> {
        let shape = self.shape.as_ref().ok_or_else(empty_reserve)?;
        if self.plan_id != plan.id {
            return Err(Error::Reserve("it was filled by a different plan than the one given to backward".into()));
        }
        if self.plan_version != plan.version {
            return Err(Error::Reserve(format!(
                "it was filled with version {} of the plan's weights, but the plan is now at version {} \
                 (update_plan was called in between); run forward_training again",
                self.plan_version, plan.version
            )));
        }
        Ok(shape)
    }
}

/// The error for backward on a reserve that no training forward pass has filled.
pub(crate) fn empty_reserve() -> Error {
    Error::Reserve("empty: run forward_training with it before backward".into())
}
