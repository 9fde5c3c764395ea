//! Opaque handles: a model (configuration, parameters, backend and plan) and a reserve.
//!
//! A handle is checked twice before it is used: its address must be in the registry of live
//! handles of its kind (so a freed, garbage or wrong-kind pointer is rejected without being read),
//! and its magic tag must match (a second line of defence against memory reused by another
//! allocation).

use crate::status::CapiError;
use rnnk_core::{Backend, Cpu, ParamLayout, Params, Reference, Rnn, RnnConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The kind of a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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

    /// The tag of a live handle: "RNNKMODL" or "RNNKRESV" in ASCII.
    fn magic(self) -> u64 {
        match self {
            Kind::Model => 0x524e_4e4b_4d4f_444c,
            Kind::Reserve => 0x524e_4e4b_5245_5356,
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

/// What the two handle types share: a tag checked on every use, and their kind in the registry.
pub trait Handle: Sized {
    const KIND: Kind;
    /// The tag, [`Kind::magic`] while the handle is alive.
    fn tag(&mut self) -> &mut u64;

    /// Boxes a handle and registers it; the pointer is the C handle.
    fn into_raw(self) -> *mut Self {
        let p = Box::into_raw(Box::new(self));
        register(p as usize, Self::KIND);
        p
    }

    /// The handle behind a C pointer, checked (registry and tag).
    ///
    /// # Safety
    /// No other reference to the same handle may be alive.
    unsafe fn get_mut<'a>(arg: &str, p: *mut Self) -> Result<&'a mut Self, CapiError> {
        if p.is_null() {
            return Err(CapiError::null(arg));
        }
        check_live(arg, p as usize, Self::KIND)?;
        // SAFETY: the registry says `p` is a live boxed handle of this kind (registered at
        // creation, removed before it is freed).
        let h = unsafe { &mut *p };
        if *h.tag() != Self::KIND.magic() {
            return Err(CapiError::handle(arg, &format!("a live {}", Self::KIND.name()), "a handle with a broken tag"));
        }
        Ok(h)
    }

    /// Like [`get_mut`](Self::get_mut), shared.
    ///
    /// # Safety
    /// No `&mut` to the same handle may be alive.
    unsafe fn get<'a>(arg: &str, p: *const Self) -> Result<&'a Self, CapiError> {
        // SAFETY: forwarded; the result is only read.
        unsafe { Self::get_mut(arg, p.cast_mut()) }.map(|h| &*h)
    }

    /// Frees a handle; NULL is a no-op.
    ///
    /// # Safety
    /// No other reference to the same handle may be alive.
    unsafe fn free(arg: &str, p: *mut Self) -> Result<(), CapiError> {
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: forwarded.
        *unsafe { Self::get_mut(arg, p)? }.tag() = 0;
        unregister(p as usize);
        // SAFETY: it was made by Box::into_raw in `into_raw` and is no longer registered.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    }
}

/// `rnnk_model`.
pub struct Model {
    magic: u64,
    /// Distinguishes models in messages about reserves.
    pub id: u64,
    /// The flat parameter layout of the configuration (names, shapes, offsets; no values: the
    /// weights live only in the engine's plan and are read back from it).
    layout: ParamLayout,
    pub engine: Engine,
}

impl Handle for Model {
    const KIND: Kind = Kind::Model;
    fn tag(&mut self) -> &mut u64 {
        &mut self.magic
    }
}

impl Model {
    pub fn new(engine: Engine) -> Model {
        let layout = with_rnn!(&engine, rnn => ParamLayout::new(rnn.config()));
        Model { magic: Kind::Model.magic(), id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed), layout, engine }
    }

    pub fn config(&self) -> &RnnConfig {
        self.layout.config()
    }

    /// The parameters, read back from the engine's plan.
    pub fn params(&self) -> Result<Params<f32>, CapiError> {
        Ok(with_rnn!(&self.engine, rnn => rnn.params())?)
    }

    /// Copies the parameters (flat layout) into `dst`, straight from the engine's plan.
    pub fn read_params(&self, dst: &mut [f32]) -> Result<(), CapiError> {
        with_rnn!(&self.engine, rnn => rnn.backend().read_params(rnn.plan(), dst))?;
        Ok(())
    }

    /// The flat parameter layout of the configuration.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Replaces the parameters (flat layout), repacking them for the backend.
    pub fn set_params(&mut self, params: &[f32]) -> Result<(), CapiError> {
        with_rnn!(&mut self.engine, rnn => rnn.update_params(params))?;
        Ok(())
    }

    pub fn backend_name(&self) -> &'static str {
        match self.engine {
            Engine::Reference(_) => "reference",
            Engine::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Engine::Cuda(_) => "cuda",
        }
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

impl ReserveData {
    /// The variant that `get` picks, replacing another backend's by `empty()` first.
    fn filled_as<R>(&mut self, get: fn(&mut ReserveData) -> Option<&mut R>, empty: fn() -> ReserveData) -> &mut R {
        if get(self).is_none() {
            *self = empty();
        }
        get(self).expect("the variant was set just above")
    }

    /// The host backends' reserve, to be filled by a training forward.
    pub fn host(&mut self) -> &mut <Reference as Backend<f32>>::Reserve {
        self.filled_as(|d| if let ReserveData::Host(h) = d { Some(h) } else { None }, || ReserveData::Host(Default::default()))
    }

    /// The CUDA backend's reserve, to be filled by a training forward.
    #[cfg(feature = "cuda")]
    pub fn cuda(&mut self) -> &mut <rnnk_core::CudaHost as Backend<f32>>::Reserve {
        self.filled_as(|d| if let ReserveData::Cuda(c) = d { Some(c) } else { None }, || ReserveData::Cuda(Default::default()))
    }
}

/// `rnnk_reserve`.
pub struct Reserve {
    magic: u64,
    /// The model whose forward_training filled it (0 while empty).
    pub model_id: u64,
    pub data: ReserveData,
}

impl Handle for Reserve {
    const KIND: Kind = Kind::Reserve;
    fn tag(&mut self) -> &mut u64 {
        &mut self.magic
    }
}

impl Default for Reserve {
    fn default() -> Reserve {
        Reserve { magic: Kind::Reserve.magic(), model_id: 0, data: ReserveData::Empty }
    }
}
