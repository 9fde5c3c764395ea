//! The one parser of the C entry points' arguments, shared by the host functions (lib.rs) and
//! the device-pointer functions (device.rs).
//!
//! An entry point gathers its raw arguments into a `Raw*` struct (pointers with their lengths in
//! elements, as the caller passed them) and parses it here into a checked call
//! ([`ForwardCall`], [`BackwardCall`], [`ParamsIn`], [`ParamsOut`]). Parsing checks, in this
//! order, and before any buffer is read or written:
//!
//! 1. the handles (live, of the right kind, intact tag, not in use by a call on another thread
//!    that conflicts with this one; a reserve filled by this model);
//! 2. every pointer, `lengths` included: NULL (where it is required), alignment, a length that
//!    fits in memory;
//! 3. no output overlaps the `lengths` array;
//! 4. the shape: `steps`, `batch` and the optional `lengths` (its length first, then its values:
//!    the first memory read, after the checks above);
//! 5. every buffer's length against the model's configuration and the call's shape (the
//!    parameter layout for `params` and `dparams`), with the library's messages;
//! 6. overlaps: no output may share memory with any other buffer of the call (an input, the
//!    `lengths` array, another output).
//!
//! Only then are the pointers turned into the buffers of their [`Memory`]: slices for [`Host`],
//! unchecked device addresses for [`Device`] (the CUDA backend checks that they are memory of its
//! device before anything is enqueued). A new check of a call's arguments goes here, once, and
//! holds for both kinds of entry point.

use crate::handle::{Exclusive, Handle, Model, Reserve, ReserveData, Shared, Slot};
use crate::status::{CapiError, RNNK_ERR_PANIC, RNNK_ERR_SIZE_MISMATCH};
use rnnk_core::{BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, RnnConfig, RnnReserve, SeqShape};
use std::ffi::{c_char, c_int, CStr};
use std::ops::{Deref, DerefMut};

/// An input pointer argument as the caller passed it, with its length in elements.
pub type In<T = f32> = (*const T, usize);
/// An output pointer argument as the caller passed it, with its length in elements.
pub type Out<T = f32> = (*mut T, usize);

/// A pointer argument of either direction: the pointer, its length and whether the call writes it.
#[derive(Debug, Clone, Copy)]
pub struct Raw {
    pub(crate) ptr: *const f32,
    pub(crate) len: usize,
    pub(crate) output: bool,
}

impl From<In> for Raw {
    fn from((ptr, len): In) -> Raw {
        Raw { ptr, len, output: false }
    }
}

impl From<Out> for Raw {
    fn from((ptr, len): Out) -> Raw {
        Raw { ptr: ptr.cast_const(), len, output: true }
    }
}

/// The checks of every pointer argument: NULL (`None`: not given), alignment, and a length that
/// fits in memory; returns the size in bytes.
pub(crate) fn check_ptr<T>(arg: &str, p: *const T, len: usize) -> Result<Option<usize>, CapiError> {
    if p.is_null() {
        return Ok(None);
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CapiError::invalid(arg, format!("a pointer aligned to {} bytes", std::mem::align_of::<T>()), format!("{p:p}")));
    }
    match len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b <= isize::MAX as usize) {
        Some(bytes) => Ok(Some(bytes)),
        None => Err(CapiError::invalid(&format!("{arg}_len"), "a length that fits in memory", len)),
    }
}

/// Which tensor a buffer holds: what its length is checked against.
#[derive(Debug, Clone, Copy)]
enum Tensor {
    /// A tensor of the call's shape.
    Seq(SeqTensor),
    /// The flat parameter layout: `params`, `dparams`.
    Params,
    /// The `lengths` host array of `i64` (checked by `parse_shape`).
    Lengths,
}

impl From<SeqTensor> for Tensor {
    fn from(t: SeqTensor) -> Tensor {
        Tensor::Seq(t)
    }
}

/// The tensors whose shape follows from the configuration and the call's shape.
#[derive(Debug, Clone, Copy)]
pub enum SeqTensor {
    /// `[T, B, I]`: `x`, `dx`.
    X,
    /// `[T, B, D·Hout]`: `y`, `dy`.
    Y,
    /// `[L·D, B, Hout]`: `h0`, `hn` and their gradients.
    H,
    /// `[L·D, B, H]`: `c0`, `cn` and their gradients (cells with a cell state only).
    C,
}

impl SeqTensor {
    /// The dimensions, in words and in numbers (`x` and `y` batch-major with `batch_first`,
    /// `y` of `Hout` features with `merge=sum`).
    fn dims(self, cfg: &RnnConfig, shape: &SeqShape) -> (&'static str, [usize; 3]) {
        let (t, b) = (shape.steps(), shape.batch());
        let sum = cfg.merge() == rnnk_core::Merge::Sum;
        match (self, cfg.batch_first()) {
            (SeqTensor::X, false) => ("[T, B, I]", [t, b, cfg.input_size()]),
            (SeqTensor::X, true) => ("[B, T, I]", [b, t, cfg.input_size()]),
            (SeqTensor::Y, false) => (if sum { "[T, B, Hout]" } else { "[T, B, D·Hout]" }, [t, b, cfg.output_size()]),
            (SeqTensor::Y, true) => (if sum { "[B, T, Hout]" } else { "[B, T, D·Hout]" }, [b, t, cfg.output_size()]),
            (SeqTensor::H, _) => ("[L·D, B, Hout]", shape.h_shape(cfg)),
            (SeqTensor::C, _) => ("[L·D, B, H]", shape.c_shape(cfg)),
        }
    }

    /// The element count; `None` if it does not fit in `usize`.
    pub fn count(self, cfg: &RnnConfig, shape: &SeqShape) -> Option<usize> {
        self.dims(cfg, shape).1.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// A buffer argument that passed the pointer checks (non-NULL, aligned, a length that fits in
/// memory): its name, pointer and length in elements.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub arg: &'static str,
    pub ptr: *const f32,
    pub len: usize,
    tensor: Tensor,
    output: bool,
    bytes: usize,
}

impl Span {
    /// "input" or "output", for messages.
    fn kind(&self) -> &'static str {
        if self.output {
            "output"
        } else {
            "input"
        }
    }
}

/// Where a call's buffers are: what a checked [`Span`] becomes.
pub trait Memory {
    /// An input buffer.
    type In<'a>;
    /// An output buffer.
    type Out<'a>;

    /// # Safety
    /// `s` addresses `s.len` `f32` of this memory, readable for `'a` and written by nothing
    /// during the call (the header's contract for every buffer).
    unsafe fn input<'a>(s: Span) -> Self::In<'a>;

    /// # Safety
    /// As [`input`](Self::input), writable, and used by nothing else during the call (overlaps
    /// with the call's other buffers are rejected by the parser).
    unsafe fn output<'a>(s: Span) -> Self::Out<'a>;
}

/// Host memory: the buffers become slices.
pub enum Host {}

impl Memory for Host {
    type In<'a> = &'a [f32];
    type Out<'a> = &'a mut [f32];

    unsafe fn input<'a>(s: Span) -> &'a [f32] {
        // SAFETY: non-NULL and aligned (checked); the rest is the caller's contract.
        unsafe { std::slice::from_raw_parts(s.ptr, s.len) }
    }

    unsafe fn output<'a>(s: Span) -> &'a mut [f32] {
        // SAFETY: as in `input`, writable and exclusive.
        unsafe { std::slice::from_raw_parts_mut(s.ptr.cast_mut(), s.len) }
    }
}

/// Device memory: the buffers stay addresses, never dereferenced on the host.
pub enum Device {}

impl Memory for Device {
    type In<'a> = Span;
    type Out<'a> = Span;

    unsafe fn input<'a>(s: Span) -> Self::In<'a> {
        s
    }

    unsafe fn output<'a>(s: Span) -> Self::Out<'a> {
        s
    }
}

/// The buffers of a forward call: inputs of type `I`, outputs of type `O`.
pub struct ForwardBufs<I, O> {
    pub x: I,
    pub h0: Option<I>,
    pub c0: Option<I>,
    pub y: O,
    pub hn: Option<O>,
    pub cn: Option<O>,
}

impl<I, O> ForwardBufs<I, O> {
    /// Each input through `f`, each output through `g`.
    pub fn try_map<I2, O2, E>(
        self, mut f: impl FnMut(I) -> Result<I2, E>, mut g: impl FnMut(O) -> Result<O2, E>,
    ) -> Result<ForwardBufs<I2, O2>, E> {
        let (h0, c0) = (self.h0.map(&mut f).transpose()?, self.c0.map(&mut f).transpose()?);
        let (hn, cn) = (self.hn.map(&mut g).transpose()?, self.cn.map(&mut g).transpose()?);
        Ok(ForwardBufs { x: f(self.x)?, h0, c0, y: g(self.y)?, hn, cn })
    }

    /// The buffers as the arguments of `Backend::forward_*`.
    pub fn io<B: ?Sized>(&mut self) -> (ForwardInput<'_, B>, ForwardOutput<'_, B>)
    where
        I: Deref<Target = B>,
        O: DerefMut<Target = B>,
    {
        let input = ForwardInput { x: &*self.x, h0: self.h0.as_deref(), c0: self.c0.as_deref(), masks: None };
        (input, ForwardOutput { y: &mut *self.y, hn: self.hn.as_deref_mut(), cn: self.cn.as_deref_mut() })
    }
}

/// The buffers of a backward call: upstream gradients of type `I`, outputs of type `O`.
pub struct BackwardBufs<I, O> {
    pub dy: Option<I>,
    pub dhn: Option<I>,
    pub dcn: Option<I>,
    pub dx: Option<O>,
    pub dh0: Option<O>,
    pub dc0: Option<O>,
    pub dparams: Option<O>,
}

impl<I, O> BackwardBufs<I, O> {
    /// The buffers as the arguments of `Backend::backward`.
    pub fn io<B: ?Sized>(&mut self) -> (BackwardInput<'_, B>, BackwardOutput<'_, B>)
    where
        I: Deref<Target = B>,
        O: DerefMut<Target = B>,
    {
        let grads = BackwardInput { dy: self.dy.as_deref(), dhn: self.dhn.as_deref(), dcn: self.dcn.as_deref() };
        let (dx, dh0, dc0) = (self.dx.as_deref_mut(), self.dh0.as_deref_mut(), self.dc0.as_deref_mut());
        (grads, BackwardOutput { dx, dh0, dc0, dparams: self.dparams.as_deref_mut() })
    }

    /// Each input through `f`, each output through `g`.
    pub fn try_map<I2, O2, E>(
        self, mut f: impl FnMut(I) -> Result<I2, E>, mut g: impl FnMut(O) -> Result<O2, E>,
    ) -> Result<BackwardBufs<I2, O2>, E> {
        let (dy, dhn, dcn) = (self.dy.map(&mut f).transpose()?, self.dhn.map(&mut f).transpose()?, self.dcn.map(&mut f).transpose()?);
        let (dx, dh0, dc0) = (self.dx.map(&mut g).transpose()?, self.dh0.map(&mut g).transpose()?, self.dc0.map(&mut g).transpose()?);
        Ok(BackwardBufs { dy, dhn, dcn, dx, dh0, dc0, dparams: self.dparams.map(&mut g).transpose()? })
    }
}

/// A forward call's buffers as the caller passed them; NULL marks an optional one as not given.
pub struct RawForwardBufs {
    pub x: In,
    pub h0: In,
    pub c0: In,
    pub y: Out,
    pub hn: Out,
    pub cn: Out,
}

/// A forward call's arguments as the caller passed them.
pub struct RawForward {
    pub model: *const Slot<Model>,
    /// The reserve of a training call; `None` for inference.
    pub reserve: Option<*mut Slot<Reserve>>,
    pub steps: usize,
    pub batch: usize,
    /// A host array (for the device functions too).
    pub lengths: In<i64>,
    pub bufs: RawForwardBufs,
    /// The masks of a training call.
    pub masks: RawMasks,
}

/// The masks a raw forward call names.
pub enum RawMasks {
    /// None (inference, or a configuration without regularisers).
    None,
    /// Drawn from a seed and an offset (`rnnk_forward_training_masked`).
    Seed(u64, u64),
    /// The caller's hits, `len` bytes in the order of `rnnk_mask_layout`
    /// (`rnnk_forward_training_with_masks`).
    Hits(*const u8, usize),
}

/// The masks a training call of `cfg` on `shape` reads (`rnnk_mask_layout`'s order), as
/// `(site, bytes)`: each mask's `[steps, rows, units]` hits take `bytes` of the caller's array.
pub fn mask_layout(cfg: &rnnk_core::RnnConfig, shape: &SeqShape) -> Vec<(rnnk_core::masks::RequiredMask, usize)> {
    rnnk_core::masks::required_sites(cfg, shape).into_iter().map(|s| (s, s.steps * s.rows * s.units)).collect()
}

/// The caller's masks: `len` bytes at `p`, each mask of [`mask_layout`] in turn, nonzero where
/// the unit is hit.
///
/// # Safety
/// `p` is NULL or addresses `len` readable bytes.
pub unsafe fn supplied_masks(
    cfg: &rnnk_core::RnnConfig, shape: &SeqShape, p: *const u8, len: usize,
) -> Result<rnnk_core::masks::MaskStream, CapiError> {
    let layout = mask_layout(cfg, shape);
    let total: usize = layout.iter().map(|(_, n)| n).sum();
    if len != total {
        return Err(CapiError::new(
            crate::status::RNNK_ERR_SIZE_MISMATCH,
            format!("`hits`: expected {total} bytes (the {} masks of rnnk_mask_layout), got {len}", layout.len()),
        ));
    }
    let bytes: &[u8] = match (total, p.is_null()) {
        (0, _) => &[],
        (_, true) => return Err(CapiError::null("hits")),
        // SAFETY: non-NULL and `len` readable bytes (the caller's contract).
        (_, false) => unsafe { std::slice::from_raw_parts(p, len) },
    };
    let mut masks = rnnk_core::masks::SuppliedMasks::new();
    let mut at = 0;
    for (s, n) in layout {
        let hits: Vec<bool> = bytes[at..at + n].iter().map(|&b| b != 0).collect();
        masks.insert(s.site, s.steps, s.rows, s.units, &hits)?;
        at += n;
    }
    Ok(rnnk_core::masks::MaskStream::supplied(masks))
}

/// A forward call whose every argument is checked, with its buffers in memory `M`.
pub struct ForwardCall<'a, M: Memory> {
    pub model: Shared<'a, Model>,
    pub reserve: Option<Exclusive<'a, Reserve>>,
    pub shape: SeqShape,
    pub bufs: ForwardBufs<M::In<'a>, M::Out<'a>>,
    /// The masks of a training call's dropout.
    pub masks: Option<rnnk_core::masks::MaskStream>,
}

impl RawForward {
    /// Checks every argument (see the module docs).
    ///
    /// # Safety
    /// The header's contract for every argument: each non-NULL pointer addresses as many elements
    /// as its length says, in memory `M` (`lengths`: host memory), and no other reference to the
    /// reserve is alive.
    pub unsafe fn parse<'a, M: Memory>(self) -> Result<ForwardCall<'a, M>, CapiError> {
        // SAFETY: forwarded (the handles are checked before they are dereferenced).
        let model = unsafe { Model::get("model", self.model)? };
        // SAFETY: as above.
        let reserve = self.reserve.map(|r| unsafe { Reserve::get_mut("reserve", r) }).transpose()?;
        let (raw, mut c) = (self.bufs, Checker::default());
        let lengths = c.lengths(self.lengths)?;
        let bufs = ForwardBufs {
            x: c.required("x", SeqTensor::X, raw.x)?,
            h0: c.optional("h0", SeqTensor::H, raw.h0)?,
            c0: c.optional("c0", SeqTensor::C, raw.c0)?,
            y: c.required("y", SeqTensor::Y, raw.y)?,
            hn: c.optional("hn", SeqTensor::H, raw.hn)?,
            cn: c.optional("cn", SeqTensor::C, raw.cn)?,
        };
        // The lengths are read first: no output may overlap them.
        c.check_overlaps(Some("lengths"))?;
        // SAFETY: forwarded; `lengths` passed the pointer and overlap checks.
        let shape = unsafe { parse_shape(self.steps, self.batch, lengths)? };
        c.finish(&model, Some(&shape))?;
        // SAFETY: forwarded; every span passed the checks above.
        let bufs = bufs.try_map(|s| Ok::<_, CapiError>(unsafe { M::input(s) }), |s| Ok(unsafe { M::output(s) }))?;
        let masks = match self.masks {
            RawMasks::None => None,
            RawMasks::Seed(seed, offset) => Some(rnnk_core::masks::MaskStream::new(seed, offset)),
            // SAFETY: forwarded (`hits`: `len` readable bytes).
            RawMasks::Hits(p, len) => Some(unsafe { supplied_masks(model.config(), &shape, p, len)? }),
        };
        Ok(ForwardCall { model, reserve, shape, bufs, masks })
    }
}

/// A backward call's upstream gradients as the caller passed them; NULL means zeros.
pub struct RawGrads {
    pub dy: In,
    pub dhn: In,
    pub dcn: In,
}

/// A backward call's outputs as the caller passed them; NULL means not wanted.
pub struct RawGradOutputs {
    pub dx: Out,
    pub dh0: Out,
    pub dc0: Out,
    pub dparams: Out,
}

/// A backward call's arguments as the caller passed them.
pub struct RawBackward {
    pub model: *const Slot<Model>,
    pub reserve: *const Slot<Reserve>,
    pub grads: RawGrads,
    pub outputs: RawGradOutputs,
    /// Non-zero: add the parameter gradients into `dparams`.
    pub accumulate: c_int,
}

/// A backward call whose every argument is checked, with its buffers in memory `M`.
pub struct BackwardCall<'a, M: Memory> {
    pub model: Shared<'a, Model>,
    /// Filled by a training forward of `model`.
    pub reserve: Shared<'a, Reserve>,
    pub mode: GradMode,
    pub bufs: BackwardBufs<M::In<'a>, M::Out<'a>>,
}

impl RawBackward {
    /// Checks every argument (see the module docs); the shape is the reserve's.
    ///
    /// # Safety
    /// As [`RawForward::parse`]; no `&mut` to the reserve is alive.
    pub unsafe fn parse<'a, M: Memory>(self) -> Result<BackwardCall<'a, M>, CapiError> {
        // SAFETY: forwarded (the handles are checked before they are dereferenced).
        let (model, reserve) = unsafe { (Model::get("model", self.model)?, Reserve::get("reserve", self.reserve)?) };
        let shape = reserve_shape(&reserve)?;
        check_reserve_owner(&model, &reserve)?;
        let (g, o, mut c) = (self.grads, self.outputs, Checker::default());
        let (dy, dhn, dcn) =
            (c.optional("dy", SeqTensor::Y, g.dy)?, c.optional("dhn", SeqTensor::H, g.dhn)?, c.optional("dcn", SeqTensor::C, g.dcn)?);
        let (dx, dh0, dc0) =
            (c.optional("dx", SeqTensor::X, o.dx)?, c.optional("dh0", SeqTensor::H, o.dh0)?, c.optional("dc0", SeqTensor::C, o.dc0)?);
        let bufs = BackwardBufs { dy, dhn, dcn, dx, dh0, dc0, dparams: c.optional("dparams", Tensor::Params, o.dparams)? };
        c.finish(&model, Some(shape))?;
        // SAFETY: forwarded; every span passed the checks above.
        let bufs = bufs.try_map(|s| Ok::<_, CapiError>(unsafe { M::input(s) }), |s| Ok(unsafe { M::output(s) }))?;
        let mode = if self.accumulate != 0 { GradMode::Accumulate } else { GradMode::Overwrite };
        Ok(BackwardCall { model, reserve, mode, bufs })
    }
}

/// New parameters for a model, checked, in memory `M`.
pub struct ParamsIn<'a, M: Memory> {
    pub model: Exclusive<'a, Model>,
    pub params: M::In<'a>,
}

/// A model's parameters to copy out, checked, in memory `M`.
pub struct ParamsOut<'a, M: Memory> {
    pub model: Shared<'a, Model>,
    pub params: M::Out<'a>,
}

/// Checks a parameter buffer of `m`: pointer, then length, before anything is read or written.
fn params_span(m: &Model, raw: impl Into<Raw>) -> Result<Span, CapiError> {
    let mut c = Checker::default();
    let span = c.required("params", Tensor::Params, raw)?;
    c.finish(m, None)?;
    Ok(span)
}

/// The arguments of `rnnk_model_set_params*`.
///
/// # Safety
/// As [`RawForward::parse`]; no other reference to the model is alive.
pub unsafe fn params_in<'a, M: Memory>(model: *mut Slot<Model>, params: In) -> Result<ParamsIn<'a, M>, CapiError> {
    // SAFETY: forwarded.
    let model = unsafe { Model::get_mut("model", model)? };
    let span = params_span(&model, params)?;
    // SAFETY: forwarded; checked above.
    Ok(ParamsIn { params: unsafe { M::input(span) }, model })
}

/// The arguments of `rnnk_model_get_params*`.
///
/// # Safety
/// As [`RawForward::parse`].
pub unsafe fn params_out<'a, M: Memory>(model: *const Slot<Model>, params: Out) -> Result<ParamsOut<'a, M>, CapiError> {
    // SAFETY: forwarded.
    let model = unsafe { Model::get("model", model)? };
    let span = params_span(&model, params)?;
    // SAFETY: forwarded; checked above.
    Ok(ParamsOut { params: unsafe { M::output(span) }, model })
}

/// The buffers of one call, collected to be checked against each other and against the model.
#[derive(Default)]
struct Checker {
    spans: Vec<Span>,
}

impl Checker {
    /// A buffer that may be NULL (not given).
    fn optional(&mut self, arg: &'static str, tensor: impl Into<Tensor>, p: impl Into<Raw>) -> Result<Option<Span>, CapiError> {
        let (tensor, p) = (tensor.into(), p.into());
        let Some(bytes) = check_ptr(arg, p.ptr, p.len)? else { return Ok(None) };
        let span = Span { arg, ptr: p.ptr, len: p.len, tensor, output: p.output, bytes };
        self.spans.push(span);
        Ok(Some(span))
    }

    /// A buffer that must not be NULL.
    fn required(&mut self, arg: &'static str, tensor: impl Into<Tensor>, p: impl Into<Raw>) -> Result<Span, CapiError> {
        self.optional(arg, tensor, p)?.ok_or_else(|| CapiError::null(arg))
    }

    /// The optional `lengths` host array of a forward call: its pointer checked, and its span
    /// kept for the overlap check (an output must not overwrite the lengths being read).
    fn lengths(&mut self, (ptr, len): In<i64>) -> Result<Option<(*const i64, usize)>, CapiError> {
        let Some(bytes) = check_ptr("lengths", ptr, len)? else { return Ok(None) };
        let span = Span { arg: "lengths", ptr: ptr.cast(), len, tensor: Tensor::Lengths, output: false, bytes };
        self.spans.push(span);
        Ok(Some((ptr, len)))
    }

    /// Checks that no output overlaps another buffer of the call (an input, `lengths`, or
    /// another output); inputs may overlap each other. `only`: just the pairs with that buffer.
    fn check_overlaps(&self, only: Option<&str>) -> Result<(), CapiError> {
        for (i, a) in self.spans.iter().enumerate() {
            for b in &self.spans[i + 1..] {
                if only.is_some_and(|o| a.arg != o && b.arg != o) {
                    continue;
                }
                let (a0, b0) = (a.ptr as usize, b.ptr as usize);
                let overlap = a0 < b0.saturating_add(b.bytes) && b0 < a0.saturating_add(a.bytes);
                if (a.output || b.output) && a.bytes > 0 && b.bytes > 0 && overlap {
                    let (a_kind, b_kind) = (a.kind(), b.kind());
                    return Err(CapiError::invalid(
                        a.arg,
                        format!("memory that does not overlap `{}` (an {b_kind} of the same call)", b.arg),
                        format!(
                            "an {a_kind} at {a0:#x}..{:#x} overlapping `{}` at {b0:#x}..{:#x}",
                            a0.saturating_add(a.bytes),
                            b.arg,
                            b0.saturating_add(b.bytes)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks every length against `m` and `shape`.
    fn check_lens(&self, m: &Model, shape: Option<&SeqShape>) -> Result<(), CapiError> {
        self.spans.iter().try_for_each(|s| check_len(m, shape, s))
    }

    /// Checks every length against `m` and `shape`, then that no output overlaps another
    /// buffer (lengths first: a length too large is reported as such, not as the overlap it
    /// makes).
    fn finish(&self, m: &Model, shape: Option<&SeqShape>) -> Result<(), CapiError> {
        self.check_lens(m, shape)?;
        self.check_overlaps(None)
    }
}

/// Checks a buffer's length against the model's configuration and the call's shape, with the
/// messages of the library's own checks.
fn check_len(m: &Model, shape: Option<&SeqShape>, s: &Span) -> Result<(), CapiError> {
    let cfg = m.config();
    let t = match s.tensor {
        // Checked against `batch` by `parse_shape`.
        Tensor::Lengths => return Ok(()),
        Tensor::Params => return Ok(m.layout().check_buffer(s.arg, s.len)?),
        Tensor::Seq(SeqTensor::C) if !cfg.cell().has_cell_state() => {
            let expected = format!("not given: cell {} has no cell state", cfg.cell());
            return Err(CapiError::invalid(s.arg, expected, format!("a buffer ({} elements)", s.len)));
        }
        Tensor::Seq(t) => t,
    };
    let Some(shape) = shape else {
        return Err(CapiError::new(RNNK_ERR_PANIC, format!("internal error: `{}` in a call without a shape", s.arg)));
    };
    let (dims, dims_v) = t.dims(cfg, shape);
    let expected = match t.count(cfg, shape) {
        Some(want) if want == s.len => return Ok(()),
        Some(want) => format!("{dims} = {dims_v:?}, {want} elements"),
        None => format!("{dims} = {dims_v:?}, more elements than fit in memory"),
    };
    Err(CapiError::new(RNNK_ERR_SIZE_MISMATCH, format!("`{}`: expected {expected}, got {} elements", s.arg, s.len)))
}

/// The element counts of `x`, `y`, `h0`/`hn` and `c0`/`cn` (0 without a cell state) for `shape`.
pub fn tensor_sizes(cfg: &RnnConfig, shape: &SeqShape) -> Result<[usize; 4], CapiError> {
    let count = |t: SeqTensor| {
        t.count(cfg, shape).ok_or_else(|| {
            let got = format!("steps {}, batch {}", shape.steps(), shape.batch());
            CapiError::invalid("steps, batch", "sizes whose tensors fit in memory", got)
        })
    };
    let c = if cfg.cell().has_cell_state() { count(SeqTensor::C)? } else { 0 };
    Ok([count(SeqTensor::X)?, count(SeqTensor::Y)?, count(SeqTensor::H)?, c])
}

/// A place for one value the call writes (`*out = ...`): `None` for NULL.
///
/// # Safety
/// If not NULL, `p` points to a writable `T` that nothing else uses during the call.
pub unsafe fn slot<'a, T>(arg: &str, p: *mut T) -> Result<Option<&'a mut T>, CapiError> {
    check_ptr(arg, p.cast_const(), 1)?;
    // SAFETY: NULL or aligned (checked); the rest is the caller's contract.
    Ok(unsafe { p.as_mut() })
}

/// Like [`slot`], required.
///
/// # Safety
/// As [`slot`].
pub unsafe fn required_slot<'a, T>(arg: &str, p: *mut T) -> Result<&'a mut T, CapiError> {
    // SAFETY: forwarded.
    unsafe { slot(arg, p)? }.ok_or_else(|| CapiError::null(arg))
}

/// Checks that no two of a call's out-pointers (each to one `T`) are the same place: the call
/// writes each of them.
pub fn distinct_slots<T>(slots: &[(&str, *mut T)]) -> Result<(), CapiError> {
    let size = std::mem::size_of::<T>().max(1);
    for (i, &(a, p)) in slots.iter().enumerate() {
        for &(b, q) in &slots[i + 1..] {
            let (p0, q0) = (p as usize, q as usize);
            if !p.is_null() && !q.is_null() && p0 < q0.saturating_add(size) && q0 < p0.saturating_add(size) {
                return Err(CapiError::invalid(
                    a,
                    format!("memory that does not overlap `{b}` (an output of the same call)"),
                    format!("{p:p}"),
                ));
            }
        }
    }
    Ok(())
}

/// The call's shape from `steps`, `batch` and an optional lengths array of `batch` entries.
///
/// # Safety
/// If not NULL, `lengths` addresses as many `i64` of host memory as its length says.
pub(crate) unsafe fn parse_shape(steps: usize, batch: usize, lengths: Option<In<i64>>) -> Result<SeqShape, CapiError> {
    let Some(lengths) = lengths else {
        return Ok(SeqShape::new(steps, batch)?);
    };
    if lengths.1 != batch {
        return Err(CapiError::new(
            RNNK_ERR_SIZE_MISMATCH,
            format!("`lengths`: expected one length per sequence, batch = {batch} elements, got {} elements", lengths.1),
        ));
    }
    // SAFETY: non-NULL and aligned (checked), `batch` elements (checked against the caller's
    // length), host memory (the header's contract).
    let lengths = unsafe { std::slice::from_raw_parts(lengths.0, batch) };
    let mut v = Vec::new();
    v.try_reserve_exact(batch).map_err(|e| {
        let what = format!("a copy of the {batch} lengths");
        CapiError::from(rnnk_core::Error::TooLarge {
            arg: "lengths".into(),
            what,
            bytes: batch as u128 * 8,
            reason: format!("could not be allocated ({e})"),
        })
    })?;
    for (b, &len) in lengths.iter().enumerate() {
        match usize::try_from(len) {
            Ok(n) => v.push(n),
            Err(_) => return Err(CapiError::invalid(&format!("lengths[{b}]"), format!("must be in 1..={steps} (steps)"), len)),
        }
    }
    // Checks `steps` and every length against it.
    Ok(SeqShape::with_lengths(steps, v)?)
}

/// The shape of the training call that filled `r`, or an error for an empty reserve.
fn reserve_shape(r: &Reserve) -> Result<&SeqShape, CapiError> {
    let shape = match &r.data {
        ReserveData::Empty => None,
        ReserveData::Host(h) => h.shape(),
        #[cfg(feature = "cuda")]
        ReserveData::Cuda(c) => c.shape(),
    };
    shape.ok_or_else(|| CapiError::invalid("reserve", "must be filled by rnnk_forward_training before rnnk_backward", "an empty reserve"))
}

/// A reserve may only be used by backward with the model that filled it.
fn check_reserve_owner(m: &Model, r: &Reserve) -> Result<(), CapiError> {
    if r.model_id != m.id {
        return Err(CapiError::handle(
            "reserve",
            &format!("a reserve filled by this model (model #{}, backend {})", m.id, m.backend_name()),
            format!("one filled by model #{}", r.model_id),
        ));
    }
    Ok(())
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// If not NULL, `p` points to a NUL-terminated string.
pub unsafe fn string<'a>(arg: &str, p: *const c_char) -> Result<&'a str, CapiError> {
    if p.is_null() {
        return Err(CapiError::null(arg));
    }
    // SAFETY: non-NULL; NUL termination is the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| CapiError::invalid(arg, "UTF-8 text", format!("{:?}", s.to_string_lossy())))
}

/// The keys of `rnnk_model_create_ex`'s `options` string: the case-file metadata keys of the
/// cell options (docs/case-format.md), each with the values it takes.
pub const OPTION_KEYS: [(&str, &str); 13] = [
    ("direction", "forward, reverse or bidirectional"),
    ("merge", "concat or sum"),
    ("peephole", "true or false"),
    ("gate_clip", "a number, 0 for no clipping"),
    ("input_forget", "true or false"),
    ("linear_before_reset", "true or false"),
    ("layer_norm", "true or false"),
    ("batch_first", "true or false"),
    ("dropout", "a probability in [0, 1)"),
    ("zoneout", "a probability in [0, 1)"),
    ("zoneout_cell", "a probability in [0, 1)"),
    ("recurrent_dropout", "a probability in [0, 1)"),
    ("input_dropout", "a probability in [0, 1)"),
];

/// Applies the cell options of `options` (`rnnk_model_create_ex`) to `builder`, whose
/// `bidirectional` argument was `bidirectional`.
///
/// The string is comma-separated `key=value` items (spaces around items and `=` ignored; empty
/// for none), with the keys and values of [`OPTION_KEYS`]; a boolean key alone means `true`, as
/// `RnnConfig::options` lists them (`peephole`, `direction=reverse`). Each key at most once. A
/// `direction` other than `bidirectional` contradicts `bidirectional = 1`. Values that fit the
/// syntax but not the cell (`peephole` on a GRU, a negative `gate_clip`) are left to
/// `RnnConfigBuilder::build`, whose error names the option.
pub fn cell_options(
    mut builder: rnnk_core::RnnConfigBuilder, bidirectional: bool, options: &str,
) -> Result<rnnk_core::RnnConfigBuilder, CapiError> {
    use rnnk_core::{Direction, Merge};
    let mut seen: Vec<&str> = Vec::new();
    for item in options.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let unknown = || {
            let keys: Vec<&str> = OPTION_KEYS.iter().map(|(k, _)| *k).collect();
            CapiError::invalid("options", format!("items key=value with a key among {}", keys.join(", ")), format!("{item:?}"))
        };
        let Some(&(key, values)) = OPTION_KEYS.iter().find(|(k, _)| *k == key) else { return Err(unknown()) };
        if seen.contains(&key) {
            return Err(CapiError::invalid("options", "each key at most once", format!("{key:?} twice")));
        }
        seen.push(key);
        let arg = format!("options: {key}");
        let bad = |v: &str| CapiError::invalid(&arg, values, format!("{v:?}"));
        let flag = || match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(_) => Err(bad(value.unwrap_or_default())),
        };
        let text = || value.ok_or_else(|| bad(""));
        builder = match key {
            "direction" => {
                let d: Direction = text()?.parse().map_err(|_| bad(text().unwrap_or_default()))?;
                if bidirectional && d != Direction::Bidirectional {
                    return Err(CapiError::invalid(&arg, "bidirectional, or no direction, with `bidirectional` = 1", d.name()));
                }
                builder.direction(d)
            }
            "merge" => builder.merge(text()?.parse::<Merge>().map_err(|_| bad(text().unwrap_or_default()))?),
            "gate_clip" => builder.gate_clip(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            "peephole" => builder.peephole(flag()?),
            "input_forget" => builder.input_forget(flag()?),
            "linear_before_reset" => builder.linear_before_reset(flag()?),
            "layer_norm" => builder.layer_norm(flag()?),
            "batch_first" => builder.batch_first(flag()?),
            "dropout" => builder.dropout(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            "zoneout" => builder.zoneout(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            "zoneout_cell" => builder.zoneout_cell(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            "recurrent_dropout" => builder.recurrent_dropout(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            "input_dropout" => builder.input_dropout(text()?.parse::<f64>().map_err(|_| bad(text().unwrap_or_default()))?),
            _ => return Err(unknown()),
        };
    }
    Ok(builder)
}

/// The cell options of `cfg` as `rnnk_model_create_ex` takes them: the non-default ones, in
/// the order of [`OPTION_KEYS`], as `key=value` joined by commas ("" for none).
pub fn options_string(cfg: &RnnConfig) -> String {
    let mut items = Vec::new();
    if cfg.direction() != rnnk_core::Direction::Forward && !cfg.bidirectional() {
        items.push(format!("direction={}", cfg.direction().name()));
    }
    if cfg.merge() != rnnk_core::Merge::Concat {
        items.push(format!("merge={}", cfg.merge().name()));
    }
    if cfg.peephole() {
        items.push("peephole=true".to_string());
    }
    if let Some(clip) = cfg.gate_clip() {
        items.push(format!("gate_clip={clip}"));
    }
    if cfg.input_forget() {
        items.push("input_forget=true".to_string());
    }
    if !cfg.linear_before_reset() {
        items.push("linear_before_reset=false".to_string());
    }
    if cfg.layer_norm() {
        items.push("layer_norm=true".to_string());
    }
    if cfg.batch_first() {
        items.push("batch_first=true".to_string());
    }
    if let Some(p) = cfg.dropout() {
        items.push(format!("dropout={p}"));
    }
    if let Some(z) = cfg.zoneout() {
        items.push(format!("zoneout={z}"));
    }
    if let Some(z) = cfg.zoneout_cell() {
        items.push(format!("zoneout_cell={z}"));
    }
    if let Some(p) = cfg.recurrent_dropout() {
        items.push(format!("recurrent_dropout={p}"));
    }
    if let Some(p) = cfg.input_dropout() {
        items.push(format!("input_dropout={p}"));
    }
    items.join(",")
}

/// The row indices `rows [rows_len]` (int64) of a beam search's reorder or gather, each a row of
/// the handle's `bound` rows (`what` says which): NULL, a length of 0 and an index outside
/// `0..bound` are errors naming `rows` (with the index) or `rows_len`; read only after the
/// pointer checks.
///
/// # Safety
/// If not NULL, `rows` addresses `rows_len` `i64` of host memory.
pub(crate) unsafe fn parse_rows(rows: *const i64, rows_len: usize, bound: usize, what: &str) -> Result<Vec<usize>, CapiError> {
    if check_ptr("rows", rows, rows_len)?.is_none() {
        return Err(CapiError::null("rows"));
    }
    if rows_len == 0 {
        return Err(CapiError::invalid("rows_len", "at least 1 row", 0));
    }
    // SAFETY: non-NULL and aligned (checked), `rows_len` elements (the caller's length, which
    // fits in memory: checked), host memory (the header's contract).
    let src = unsafe { std::slice::from_raw_parts(rows, rows_len) };
    let mut v = Vec::new();
    v.try_reserve_exact(rows_len).map_err(|e| {
        CapiError::from(rnnk_core::Error::TooLarge {
            arg: "rows_len".into(),
            what: format!("a copy of the {rows_len} row indices"),
            bytes: rows_len as u128 * 8,
            reason: format!("could not be allocated ({e})"),
        })
    })?;
    for (i, &r) in src.iter().enumerate() {
        match usize::try_from(r) {
            Ok(n) if n < bound => v.push(n),
            _ => return Err(CapiError::invalid(&format!("rows[{i}]"), format!("a row in 0..{bound} ({what})"), r)),
        }
    }
    Ok(v)
}

/// Checks that `bytes` (for `what`, asked for by `rows_len`) can be had: not more than the
/// address space nor the machine's memory (RAM and swap). Otherwise `RNNK_ERR_OUT_OF_MEMORY`
/// naming `rows_len`, where the allocation could abort the process.
pub(crate) fn check_rows_bytes(bytes: Option<u128>, what: &str) -> Result<usize, CapiError> {
    let too_large = |reason: String| {
        CapiError::from(rnnk_core::Error::TooLarge {
            arg: "rows_len".into(),
            what: what.to_string(),
            bytes: bytes.unwrap_or(u128::MAX),
            reason,
        })
    };
    let n = bytes.and_then(|b| usize::try_from(b).ok()).filter(|&b| b <= isize::MAX as usize);
    let n = n.ok_or_else(|| too_large("is more than this machine can address".into()))?;
    if let Some(total) = rnnk_core::host_memory_bytes().map(u128::from).filter(|&t| n as u128 > t) {
        return Err(too_large(format!("is more than this machine's memory (RAM and swap: {total} bytes)")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::Engine;
    use crate::status::RNNK_ERR_INVALID_ARGUMENT;
    use rnnk_core::{CellKind, Params, Reference, Rnn};
    use std::ptr::{null, null_mut};

    /// A GRU model handle (I = 2, H = 3) on the reference backend, freed on drop.
    struct Gru(*mut Slot<Model>);

    impl Gru {
        fn new() -> Gru {
            let cfg = RnnConfig::new(CellKind::Gru, 2, 3).build().unwrap();
            let params = Params::<f32>::init_uniform(&cfg, 1).unwrap();
            let rnn = Rnn::new(Reference, &cfg, params.as_slice()).unwrap();
            Gru(Model::new(Engine::Reference(rnn)).into_raw())
        }
    }

    impl Drop for Gru {
        fn drop(&mut self) {
            // SAFETY: made by `new`, used by nothing else now.
            unsafe { Model::free("model", self.0) }.unwrap();
        }
    }

    /// A forward call on T = 2, B = 1 over `x [4]` and `y [6]`.
    fn forward(m: &Gru, x: In, y: Out) -> RawForward {
        let bufs = RawForwardBufs { x, h0: (null(), 0), c0: (null(), 0), y, hn: (null_mut(), 0), cn: (null_mut(), 0) };
        RawForward { model: m.0, reserve: None, steps: 2, batch: 1, lengths: (null(), 0), bufs, masks: RawMasks::None }
    }

    fn code<T>(r: Result<T, CapiError>) -> (i32, String) {
        r.map(|_| (0, String::new())).unwrap_or_else(|e| (e.code, e.message))
    }

    #[test]
    fn an_output_may_not_overlap_another_buffer() {
        let m = Gru::new();
        let mut buf = [0.0f32; 10];
        // Both pointers from one: a second borrow of `buf` would invalidate the first (Miri).
        let y = buf.as_mut_ptr();
        let x = y.cast_const();
        // SAFETY (every parse below): live handle, buffers of the lengths given.
        let (c, msg) = code(unsafe { forward(&m, (x, 4), (y.wrapping_add(3), 6)).parse::<Host>() });
        assert_eq!(c, RNNK_ERR_INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("`x`: memory that does not overlap `y`"), "{msg}");
        assert_eq!(code(unsafe { forward(&m, (x, 4), (y.wrapping_add(4), 6)).parse::<Host>() }).0, 0);
    }

    #[test]
    fn lengths_are_checked_before_a_buffer_is_read() {
        let m = Gru::new();
        let one = [0.0f32];
        // The length claims more than `one` holds: rejected from the length alone.
        // SAFETY: nothing is read, the length is wrong.
        let (c, msg) = code(unsafe { params_in::<Host>(m.0, (one.as_ptr(), 1 << 20)) });
        assert_eq!(c, RNNK_ERR_SIZE_MISMATCH, "{msg}");
        assert!(msg.starts_with("`params`: expected the flat parameter layout"), "{msg}");
        let (c, msg) = code(unsafe { params_in::<Host>(m.0, (one.as_ptr(), usize::MAX)) });
        assert_eq!(c, RNNK_ERR_INVALID_ARGUMENT, "{msg}");
        assert!(msg.starts_with("`params_len`"), "{msg}");
    }

    #[test]
    fn the_device_parse_checks_like_the_host_one_and_keeps_the_pointers() {
        let m = Gru::new();
        let (x, mut y) = ([0.0f32; 4], [0.0f32; 6]);
        // SAFETY: host memory where device memory is expected: the parse never reads it.
        let call = unsafe { forward(&m, (x.as_ptr(), 4), (y.as_mut_ptr(), 6)).parse::<Device>() }.unwrap();
        assert_eq!((call.bufs.x.ptr, call.bufs.x.len, call.bufs.y.len), (x.as_ptr(), 4, 6));
        let host = code(unsafe { forward(&m, (x.as_ptr(), 3), (y.as_mut_ptr(), 6)).parse::<Host>() });
        let device = code(unsafe { forward(&m, (x.as_ptr(), 3), (y.as_mut_ptr(), 6)).parse::<Device>() });
        assert_eq!(host, device);
        assert_eq!(host.1, "`x`: expected [T, B, I] = [2, 1, 2], 4 elements, got 3 elements");
    }

    #[test]
    fn sizes_that_overflow_are_an_error() {
        let cfg = RnnConfig::new(CellKind::Lstm, 1 << 20, 4).build().unwrap();
        // T·B = 2^44 rows (SeqShape::new rejects a T·B that overflows), T·B·I = 2^64 elements.
        let shape = SeqShape::new(1 << 44, 1).unwrap();
        let (c, msg) = code(tensor_sizes(&cfg, &shape));
        assert_eq!(c, RNNK_ERR_INVALID_ARGUMENT, "{msg}");
        assert_eq!(tensor_sizes(&cfg, &SeqShape::new(3, 2).unwrap()).unwrap(), [(3 * 2) << 20, 3 * 2 * 4, 2 * 4, 2 * 4]);
    }

    #[test]
    fn a_misaligned_out_pointer_is_an_error() {
        let mut words = [0usize; 2];
        let p = words.as_mut_ptr().cast::<u8>().wrapping_add(1).cast::<usize>();
        // SAFETY: rejected before it is written.
        assert_eq!(code(unsafe { slot("out", p) }).0, RNNK_ERR_INVALID_ARGUMENT);
        assert_eq!(code(unsafe { required_slot::<usize>("out", null_mut()) }).0, crate::status::RNNK_ERR_NULL_POINTER);
    }

    #[test]
    fn rows_parse_and_refuse_what_cannot_be_allocated() {
        let rows = [0i64, 2, 1];
        // SAFETY: a live array of 3 int64.
        assert_eq!(unsafe { parse_rows(rows.as_ptr(), 3, 3, "B = 3") }.unwrap(), [0, 2, 1]);
        let (c, msg) = code(unsafe { parse_rows(rows.as_ptr(), 3, 2, "B = 2") });
        assert_eq!((c, msg.as_str()), (crate::status::RNNK_ERR_INVALID_ARGUMENT, "`rows[1]`: a row in 0..2 (B = 2), got 2"));
        // A result past the address space or the machine's memory: refused before allocating.
        for bytes in [None, Some(u128::MAX / 2), Some(isize::MAX as u128 - 7)] {
            let (c, msg) = code(check_rows_bytes(bytes, "a state of many rows"));
            assert_eq!(c, crate::status::RNNK_ERR_OUT_OF_MEMORY, "{msg}");
            assert!(msg.contains("rows_len") && msg.contains("a state of many rows"), "{msg}");
        }
        assert_eq!(check_rows_bytes(Some(64), "a state").unwrap(), 64);
    }
}
