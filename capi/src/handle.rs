//! Opaque handles: a model (configuration, parameters, backend and plan) and a reserve.
//!
//! A handle is checked twice before it is used: its address must be in the registry of live
//! handles of its kind (so a freed, garbage or wrong-kind pointer is rejected without being read),
//! and its magic tag must match (a second line of defence against memory reused by another
//! allocation).

use crate::status::CapiError;
use rnnk_core::{Backend, Cpu, Params, Reference, Rnn, RnnConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// "RNNKMODL" in ASCII.
const MODEL_MAGIC: u64 = 0x524e_4e4b_4d4f_444c;
/// "RNNKRESV" in ASCII.
const RESERVE_MAGIC: u64 = 0x524e_4e4b_5245_5356;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Reserve,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "rnnk_model",
            Kind::Reserve => "rnnk_reserve",
        }
    }
}

static LIVE: Mutex<Option<HashMap<usize, Kind>>> = Mutex::new(None);
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

fn live() -> std::sync::MutexGuard<'static, Option<HashMap<usize, Kind>>> {
    // A poisoned lock only means a panic elsewhere while it was held; the map is still whole.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn register(addr: usize, kind: Kind) {
    live().get_or_insert_with(HashMap::new).insert(addr, kind);
}

/// Checks that `addr` is a live handle of `kind`; `arg` names it in the error.
fn check_live(arg: &str, addr: usize, kind: Kind) -> Result<(), CapiError> {
    match live().as_ref().and_then(|m| m.get(&addr)) {
        Some(&k) if k == kind => Ok(()),
        Some(&k) => Err(CapiError::handle(arg, &format!("a live {}", kind.name()), format!("a {} ({addr:#x})", k.name()))),
        None => Err(CapiError::handle(
            arg,
            &format!("a live {}", kind.name()),
            format!("{addr:#x}, which is not one (freed, or never created)"),
        )),
    }
}

fn unregister(addr: usize) {
    if let Some(m) = live().as_mut() {
        m.remove(&addr);
    }
}

/// The computing part of a model, one variant per backend.
pub enum Engine {
    Reference(Rnn<f32, Reference>),
    Cpu(Rnn<f32, Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(Rnn<f32, rnnk_core::CudaHost>),
}

/// Calls `$body` with `$rnn` bound to the engine's `Rnn`, whatever its backend.
macro_rules! with_rnn {
    ($engine:expr, $rnn:ident => $body:expr) => {
        match $engine {
            $crate::handle::Engine::Reference($rnn) => $body,
            $crate::handle::Engine::Cpu($rnn) => $body,
            #[cfg(feature = "cuda")]
            $crate::handle::Engine::Cuda($rnn) => $body,
        }
    };
}
pub(crate) use with_rnn;

/// `rnnk_model`.
pub struct Model {
    magic: u64,
    /// Distinguishes models in messages about reserves.
    pub id: u64,
    /// A host copy of the parameters (flat layout), for saving and reading back.
    pub params: Params<f32>,
    pub engine: Engine,
}

impl Model {
    /// Boxes a model and registers it; the pointer is the C handle.
    pub fn create(params: Params<f32>, engine: Engine) -> *mut Model {
        let id = NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed);
        let p = Box::into_raw(Box::new(Model { magic: MODEL_MAGIC, id, params, engine }));
        register(p as usize, Kind::Model);
        p
    }

    pub fn config(&self) -> &RnnConfig {
        self.params.config()
    }

    pub fn backend_name(&self) -> &'static str {
        match self.engine {
            Engine::Reference(_) => "reference",
            Engine::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Engine::Cuda(_) => "cuda",
        }
    }

    /// The model behind a C handle.
    ///
    /// # Safety
    /// No `&mut` to the same model may be alive (the C header's rule: a model is not changed
    /// while another thread uses it).
    pub unsafe fn get<'a>(arg: &str, p: *const Model) -> Result<&'a Model, CapiError> {
        if p.is_null() {
            return Err(CapiError::null(arg));
        }
        check_live(arg, p as usize, Kind::Model)?;
        // SAFETY: the registry says `p` is a live boxed Model (registered at creation, removed
        // before it is freed).
        let m = unsafe { &*p };
        if m.magic != MODEL_MAGIC {
            return Err(CapiError::handle(arg, "a live rnnk_model", "a handle with a broken tag"));
        }
        Ok(m)
    }

    /// Like [`get`](Self::get), mutably.
    ///
    /// # Safety
    /// No other reference to the same model may be alive.
    pub unsafe fn get_mut<'a>(arg: &str, p: *mut Model) -> Result<&'a mut Model, CapiError> {
        // SAFETY: forwarded.
        unsafe { Self::get(arg, p)? };
        // SAFETY: checked live just above; exclusivity is the caller's.
        Ok(unsafe { &mut *p })
    }

    /// Frees a handle; NULL is a no-op.
    ///
    /// # Safety
    /// No other reference to the same model may be alive.
    pub unsafe fn free(arg: &str, p: *mut Model) -> Result<(), CapiError> {
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: forwarded.
        unsafe { Self::get_mut(arg, p)? }.magic = 0;
        unregister(p as usize);
        // SAFETY: it was made by Box::into_raw in `create` and is no longer registered.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    }
}

/// What a reserve holds: nothing yet, or the activations of one training call on one model.
// The whole `Reserve` is boxed behind its C handle; boxing the variant too would gain nothing.
#[allow(clippy::large_enum_variant)]
pub enum ReserveData {
    Empty,
    Host(<Reference as Backend<f32>>::Reserve),
    #[cfg(feature = "cuda")]
    Cuda(<rnnk_core::CudaHost as Backend<f32>>::Reserve),
}

/// `rnnk_reserve`.
pub struct Reserve {
    magic: u64,
    /// The model whose forward_training filled it (0 while empty).
    pub model_id: u64,
    pub data: ReserveData,
}

impl Reserve {
    pub fn create() -> *mut Reserve {
        let p = Box::into_raw(Box::new(Reserve { magic: RESERVE_MAGIC, model_id: 0, data: ReserveData::Empty }));
        register(p as usize, Kind::Reserve);
        p
    }

    /// # Safety
    /// No other reference to the same reserve may be alive.
    pub unsafe fn get_mut<'a>(arg: &str, p: *mut Reserve) -> Result<&'a mut Reserve, CapiError> {
        if p.is_null() {
            return Err(CapiError::null(arg));
        }
        check_live(arg, p as usize, Kind::Reserve)?;
        // SAFETY: registered as a live boxed Reserve.
        let r = unsafe { &mut *p };
        if r.magic != RESERVE_MAGIC {
            return Err(CapiError::handle(arg, "a live rnnk_reserve", "a handle with a broken tag"));
        }
        Ok(r)
    }

    /// # Safety
    /// No `&mut` to the same reserve may be alive.
    pub unsafe fn get<'a>(arg: &str, p: *const Reserve) -> Result<&'a Reserve, CapiError> {
        // SAFETY: forwarded; the result is only read.
        unsafe { Self::get_mut(arg, p as *mut Reserve) }.map(|r| &*r)
    }

    /// # Safety
    /// No other reference to the same reserve may be alive.
    pub unsafe fn free(arg: &str, p: *mut Reserve) -> Result<(), CapiError> {
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: forwarded.
        unsafe { Self::get_mut(arg, p)? }.magic = 0;
        unregister(p as usize);
        // SAFETY: made by Box::into_raw in `create`, no longer registered.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    }
}
