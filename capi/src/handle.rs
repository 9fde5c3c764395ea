//! Opaque handles: a model (configuration, parameters, backend and plan) and a reserve; the
//! decoder-step and attention handles (`steps.rs`, `attention.rs`) use the same registry.
//!
//! A handle is checked twice before it is used: its address must be in the registry of live
//! handles of its kind (so a freed, garbage or wrong-kind pointer is rejected without being read),
//! and its magic tag must match (a second line of defence against memory reused by another
//! allocation).
//!
//! Each handle also counts the calls using it, so that concurrent calls from several threads are
//! never a data race: calls that only read it ([`Handle::get`]: forward, backward, reading the
//! parameters) share it, any number at once; a call that changes or frees it
//! ([`Handle::get_mut`], [`Handle::free`]) needs it alone. A call that cannot have the handle the
//! way it needs it does not wait: it returns `RNNK_ERR_BUSY` at once, before it has done anything.
//! The registry's lock is held while a handle is checked and taken, and while it is freed, so a
//! handle is never freed under a call that uses it (and there is no lock order to get wrong: no
//! call waits for a handle).

use crate::status::{CapiError, RNNK_ERR_BUSY};
use rnnk_core::{Backend, Cpu, ParamLayout, Params, Reference, Rnn, RnnConfig};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The kind of a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Reserve,
    Steps,
    StepsBackward,
    Attention,
    AttentionMemory,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "rnnk_model",
            Kind::Reserve => "rnnk_reserve",
            Kind::Steps => "rnnk_steps",
            Kind::StepsBackward => "rnnk_steps_backward",
            Kind::Attention => "rnnk_attention",
            Kind::AttentionMemory => "rnnk_attention_memory",
        }
    }

    /// The tag of a live handle: "RNNKMODL", "RNNKRESV", "RNNKSTEP", "RNNKSTBW", "RNNKATTN" or
    /// "RNNKAMEM" in ASCII.
    fn magic(self) -> u64 {
        match self {
            Kind::Model => 0x524e_4e4b_4d4f_444c,
            Kind::Reserve => 0x524e_4e4b_5245_5356,
            Kind::Steps => 0x524e_4e4b_5354_4550,
            Kind::StepsBackward => 0x524e_4e4b_5354_4257,
            Kind::Attention => 0x524e_4e4b_4154_544e,
            Kind::AttentionMemory => 0x524e_4e4b_414d_454d,
        }
    }

    /// The calls that need a handle of this kind alone, for the message of a busy handle.
    fn changing_calls(self) -> &'static str {
        match self {
            Kind::Model => "rnnk_model_set_params, rnnk_model_init_uniform, rnnk_model_load_safetensors, rnnk_model_free",
            Kind::Reserve => "rnnk_forward_training, rnnk_reserve_free",
            Kind::Steps => "rnnk_steps_step, rnnk_steps_free",
            Kind::StepsBackward => "rnnk_steps_backward_step, rnnk_steps_backward_finish, rnnk_steps_backward_free",
            Kind::Attention => "rnnk_attention_set_params, rnnk_attention_free",
            Kind::AttentionMemory => "rnnk_attention_backward, rnnk_attention_memory_zero_grads, rnnk_attention_memory_free",
        }
    }
}

static LIVE: Mutex<Option<HashMap<usize, Kind>>> = Mutex::new(None);
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

type Registry = std::sync::MutexGuard<'static, Option<HashMap<usize, Kind>>>;

fn live() -> Registry {
    // A poisoned lock only means a panic elsewhere while it was held; the map is still whole.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks that `addr` is a live handle of `kind` in the (locked) registry; `arg` names it.
fn check_live(registry: &Registry, arg: &str, addr: usize, kind: Kind) -> Result<(), CapiError> {
    match registry.as_ref().and_then(|m| m.get(&addr)) {
        Some(&k) if k == kind => Ok(()),
        Some(&k) => Err(CapiError::handle(arg, &format!("a live {}", kind.name()), format!("a {} ({addr:#x})", k.name()))),
        None => Err(CapiError::handle(
            arg,
            &format!("a live {}", kind.name()),
            format!("{addr:#x}, which is not one (freed, or never created)"),
        )),
    }
}

/// `Slot::users` of a handle a call has alone.
const EXCLUSIVE: usize = usize::MAX;

/// A C handle: the boxed value, its tag and the count of the calls using it. The tag and the
/// count are atomics outside the value, so checking them never races with a call that has the
/// value alone.
pub struct Slot<T> {
    magic: AtomicU64,
    /// 0: unused; `n`: `n` calls share it; [`EXCLUSIVE`]: one call has it alone.
    users: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `Shared` (many threads, `&T`: needs `T: Sync`) and
// `Exclusive` (one thread, `&mut T`: needs `T: Send`), which the use count keeps apart.
unsafe impl<T: Send + Sync> Sync for Slot<T> {}

/// A handle a call shares with other readers; released on drop.
pub struct Shared<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> Deref for Shared<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: while this guard lives the use count is a reader count, so no `&mut` exists.
        unsafe { &*self.slot.value.get() }
    }
}

impl<T> Drop for Shared<'_, T> {
    fn drop(&mut self) {
        self.slot.users.fetch_sub(1, Ordering::Release);
    }
}

/// A handle a call has alone; released on drop.
pub struct Exclusive<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> Deref for Exclusive<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: while this guard lives the use count is EXCLUSIVE: no other reference exists.
        unsafe { &*self.slot.value.get() }
    }
}

impl<T> DerefMut for Exclusive<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.slot.value.get() }
    }
}

impl<T> Drop for Exclusive<'_, T> {
    fn drop(&mut self) {
        self.slot.users.store(0, Ordering::Release);
    }
}

/// What the two handle types share: a tag checked on every use, a use count, and their kind in
/// the registry.
pub trait Handle: Sized {
    const KIND: Kind;

    /// Boxes a handle and registers it; the pointer is the C handle.
    fn into_raw(self) -> *mut Slot<Self> {
        let slot = Slot { magic: AtomicU64::new(Self::KIND.magic()), users: AtomicUsize::new(0), value: UnsafeCell::new(self) };
        let p = Box::into_raw(Box::new(slot));
        live().get_or_insert_with(HashMap::new).insert(p as usize, Self::KIND);
        p
    }

    /// The live, tagged handle behind a C pointer, with the registry locked.
    ///
    /// # Safety
    /// None beyond the registry's promise (a registered address is a live `Slot<Self>`).
    unsafe fn checked<'a>(registry: &Registry, arg: &str, p: *const Slot<Self>) -> Result<&'a Slot<Self>, CapiError> {
        if p.is_null() {
            return Err(CapiError::null(arg));
        }
        check_live(registry, arg, p as usize, Self::KIND)?;
        // SAFETY: the registry says `p` is a live boxed slot of this kind (registered at
        // creation, removed under the same lock before it is freed); its tag and count are
        // atomics, read without touching the value.
        let slot = unsafe { &*p };
        if slot.magic.load(Ordering::Acquire) != Self::KIND.magic() {
            return Err(CapiError::handle(arg, &format!("a live {}", Self::KIND.name()), "a handle with a broken tag"));
        }
        Ok(slot)
    }

    /// The handle behind a C pointer, checked (registry and tag), for a call that changes it:
    /// `RNNK_ERR_BUSY` if any other call uses it.
    ///
    /// # Safety
    /// `p` is NULL or any pointer (only a registered one is dereferenced).
    unsafe fn get_mut<'a>(arg: &str, p: *mut Slot<Self>) -> Result<Exclusive<'a, Self>, CapiError> {
        let registry = live();
        // SAFETY: forwarded.
        let slot = unsafe { Self::checked(&registry, arg, p)? };
        match slot.users.compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(Exclusive { slot }),
            Err(n) => Err(busy(arg, Self::KIND, n)),
        }
    }

    /// Like [`get_mut`](Self::get_mut), for a call that only reads the handle: any number of
    /// them share it; `RNNK_ERR_BUSY` while a call that changes it runs.
    ///
    /// # Safety
    /// As [`get_mut`](Self::get_mut).
    unsafe fn get<'a>(arg: &str, p: *const Slot<Self>) -> Result<Shared<'a, Self>, CapiError> {
        let registry = live();
        // SAFETY: forwarded.
        let slot = unsafe { Self::checked(&registry, arg, p)? };
        let mut n = slot.users.load(Ordering::Relaxed);
        loop {
            if n == EXCLUSIVE || n == EXCLUSIVE - 1 {
                return Err(busy(arg, Self::KIND, n));
            }
            match slot.users.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(Shared { slot }),
                Err(now) => n = now,
            }
        }
    }

    /// Frees a handle; NULL is a no-op; `RNNK_ERR_BUSY` (and nothing freed) while a call on
    /// another thread uses it.
    ///
    /// # Safety
    /// As [`get_mut`](Self::get_mut).
    unsafe fn free(arg: &str, p: *mut Slot<Self>) -> Result<(), CapiError> {
        if p.is_null() {
            return Ok(());
        }
        let mut registry = live();
        // SAFETY: forwarded.
        let slot = unsafe { Self::checked(&registry, arg, p)? };
        if let Err(n) = slot.users.compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed) {
            return Err(busy(arg, Self::KIND, n));
        }
        slot.magic.store(0, Ordering::Release);
        if let Some(m) = registry.as_mut() {
            m.remove(&(p as usize));
        }
        drop(registry);
        // SAFETY: made by Box::into_raw in `into_raw`; no longer registered, so no call can
        // take it any more, and no call uses it (the count was 0).
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    }
}

/// The error of a handle that is in use by `n` calls (or [`EXCLUSIVE`]ly) on other threads.
fn busy(arg: &str, kind: Kind, n: usize) -> CapiError {
    let got = if n == EXCLUSIVE {
        format!("one a call that changes or frees it ({}) is using on another thread", kind.changing_calls())
    } else {
        format!("one {n} call(s) on other threads are using")
    };
    let expected = format!("a {} no other call is changing (and, to change or free it, no other call is using)", kind.name());
    CapiError::new(RNNK_ERR_BUSY, format!("`{arg}`: expected {expected}, got {got}"))
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
    /// Distinguishes models in messages about reserves.
    pub id: u64,
    /// The flat parameter layout of the configuration (names, shapes, offsets; no values: the
    /// weights live only in the engine's plan and are read back from it).
    layout: ParamLayout,
    pub engine: Engine,
}

impl Handle for Model {
    const KIND: Kind = Kind::Model;
}

impl Model {
    pub fn new(engine: Engine) -> Model {
        let layout = with_rnn!(&engine, rnn => ParamLayout::new(rnn.config()));
        Model { id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed), layout, engine }
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
        with_rnn!(&self.engine, rnn => Backend::<f32>::read_params(rnn.backend(), rnn.plan(), dst))?;
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
    /// The model whose forward_training filled it (0 while empty).
    pub model_id: u64,
    pub data: ReserveData,
}

impl Handle for Reserve {
    const KIND: Kind = Kind::Reserve;
}

impl Default for Reserve {
    fn default() -> Reserve {
        Reserve { model_id: 0, data: ReserveData::Empty }
    }
}

// Forward and backward calls share a model (and backward calls a reserve) across threads: the
// engines must be `Sync` for that to be free of data races, which this checks at compile time.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Slot<Model>>();
    shareable::<Slot<Reserve>>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{RNNK_ERR_BUSY, RNNK_ERR_WRONG_HANDLE};

    fn code<T>(r: Result<T, CapiError>) -> (i32, String) {
        r.map(|_| (0, String::new())).unwrap_or_else(|e| (e.code, e.message))
    }

    #[test]
    fn readers_share_a_handle_and_a_writer_or_a_free_needs_it_alone() {
        let p = Reserve::default().into_raw();
        // SAFETY (every call below): `p` is a live handle or, at the end, a freed one (which the
        // registry rejects without reading it).
        unsafe {
            let (a, b) = (Reserve::get("reserve", p).unwrap(), Reserve::get("reserve", p).unwrap());
            let (c, msg) = code(Reserve::get_mut("reserve", p));
            assert_eq!(c, RNNK_ERR_BUSY, "{msg}");
            assert!(msg.contains("`reserve`") && msg.contains("2 call(s) on other threads"), "{msg}");
            assert_eq!(code(Reserve::free("reserve", p)).0, RNNK_ERR_BUSY);
            drop((a, b));
            let mut w = Reserve::get_mut("reserve", p).unwrap();
            w.model_id = 7;
            let (c, msg) = code(Reserve::get("reserve", p));
            assert_eq!(c, RNNK_ERR_BUSY, "{msg}");
            assert!(msg.contains("rnnk_forward_training, rnnk_reserve_free"), "{msg}");
            assert_eq!(code(Reserve::get_mut("reserve", p)).0, RNNK_ERR_BUSY);
            assert_eq!(code(Reserve::free("reserve", p)).0, RNNK_ERR_BUSY);
            drop(w);
            assert_eq!(Reserve::get("reserve", p).unwrap().model_id, 7);
            Reserve::free("reserve", p).unwrap();
            assert_eq!(code(Reserve::get("reserve", p)).0, RNNK_ERR_WRONG_HANDLE);
        }
    }

    #[test]
    fn many_threads_take_and_release_a_handle_without_losing_count() {
        let p = Reserve::default().into_raw() as usize;
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(move || {
                    for _ in 0..2000 {
                        // SAFETY: a live handle for the whole scope.
                        let r = unsafe { Reserve::get("reserve", p as *const Slot<Reserve>) };
                        // Only readers here: never refused.
                        assert!(r.is_ok());
                    }
                });
            }
        });
        // Every reader released it: it can be freed.
        // SAFETY: live, unused.
        unsafe { Reserve::free("reserve", p as *mut Slot<Reserve>) }.unwrap();
    }
}
