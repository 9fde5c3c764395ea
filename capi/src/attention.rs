//! The attention entry points (`rnnk_attention_*` in the header): an attention handle (its
//! configuration, flat parameters and host backend) and a memory handle (the keys' side of one
//! batch of encoder outputs, with the gradients the backward calls accumulate into it), over
//! `rnnk_core::attention::AttentionBackend`'s per-step path: `attention_memory`,
//! `attention_forward_with`, `attention_backward_with`, `attention_memory_backward`.
//!
//! A memory belongs to the attention that made it and to the parameters it had then: after
//! `rnnk_attention_set_params` it is refused (`RNNK_ERR_WRONG_HANDLE`), since its keys'
//! projection was computed with the old ones.

use crate::args::{self, check_ptr};
use crate::bufs::Bufs;
use crate::handle::{Handle, Kind};
use crate::status::{guard, CapiError, RNNK_ERR_OUT_OF_MEMORY, RNNK_ERR_PANIC};
use crate::{RnnkAttention, RnnkAttentionMemory};
use rnnk_core::attention::{
    AttentionBackend, AttentionConfig, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape, AttentionUpstream, Score,
};
use rnnk_core::{Cpu, Reference};
use std::ffi::{c_char, c_int};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ATTENTION_ID: AtomicU64 = AtomicU64::new(1);

/// The backend an attention computes on.
pub enum AttnBackend {
    Reference(Reference),
    Cpu(Cpu),
    /// Host pointers through `CudaHost` (each call uploads its inputs and downloads its
    /// results; a memory stays on the host between calls).
    #[cfg(feature = "cuda")]
    Cuda(rnnk_core::CudaHost),
}

/// Calls `$body` with `$b` bound to the backend, whatever it is.
macro_rules! with_backend {
    ($backend:expr, $b:ident => $body:expr) => {
        match $backend {
            AttnBackend::Reference($b) => $body,
            AttnBackend::Cpu($b) => $body,
            #[cfg(feature = "cuda")]
            AttnBackend::Cuda($b) => $body,
        }
    };
}

/// `rnnk_attention`.
pub struct Attention {
    id: u64,
    /// Counts the parameter changes: a memory is only used with the parameters that made it.
    generation: u64,
    cfg: AttentionConfig,
    params: Vec<f32>,
    backend: AttnBackend,
}

impl Handle for Attention {
    const KIND: Kind = Kind::Attention;
}

/// `rnnk_attention_memory`.
pub struct Memory {
    attention_id: u64,
    generation: u64,
    /// The keys' shape (one query: the calls give their own query count).
    shape: AttentionShape,
    memory: AttentionMemory<f32>,
    grads: AttentionMemoryGrads<f32>,
}

impl Handle for Memory {
    const KIND: Kind = Kind::AttentionMemory;
}

const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<crate::handle::Slot<Attention>>();
    shareable::<crate::handle::Slot<Memory>>();
};

fn internal(what: &str) -> CapiError {
    CapiError::new(RNNK_ERR_PANIC, format!("internal error (a bug in rnn-kernels, please report it): {what}"))
}

/// Copies `src` into the checked output `dst`, or adds it in with `accumulate`.
fn write(dst: &mut [f32], src: &[f32], arg: &str, accumulate: bool) -> Result<(), CapiError> {
    if dst.len() != src.len() {
        return Err(internal(&format!("`{arg}`: {} elements computed for a buffer of {}", src.len(), dst.len())));
    }
    if accumulate {
        for (d, v) in dst.iter_mut().zip(src) {
            *d += *v;
        }
    } else {
        dst.copy_from_slice(src);
    }
    Ok(())
}

/// The number of parameters of `cfg` in checked arithmetic; `None` if it overflows.
fn param_len(cfg: &AttentionConfig) -> Option<usize> {
    cfg.params().iter().try_fold(0usize, |n, (_, s)| n.checked_add(s.iter().try_fold(1usize, |m, &d| m.checked_mul(d))?))
}

/// Checks that `memory` was made by `a` with its current parameters.
fn check_memory(a: &Attention, m: &Memory) -> Result<(), CapiError> {
    if m.attention_id != a.id {
        return Err(CapiError::handle(
            "memory",
            &format!("a memory made by this attention (attention #{})", a.id),
            format!("one made by attention #{}", m.attention_id),
        ));
    }
    if m.generation != a.generation {
        return Err(CapiError::handle(
            "memory",
            "a memory made with the attention's current parameters",
            "one made before rnnk_attention_set_params changed them (make it again)",
        ));
    }
    Ok(())
}

/// Creates an attention: `score` "dot", "general", "concat" or "additive" ("bahdanau"), queries
/// of `query_size`, keys of `key_size` features, `attn_size` (concat, additive; 0 otherwise),
/// `output_size` (0: no attentional hidden state), on `backend` ("reference", "cpu" or "cuda";
/// `threads` as for models). Parameters start at 0. `*out` is NULL on failure.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_create(
    score: *const c_char, query_size: usize, key_size: usize, attn_size: usize, output_size: usize, backend: *const c_char, threads: usize,
    out: *mut *mut RnnkAttention,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        *out = std::ptr::null_mut();
        // SAFETY: C strings from the caller.
        let (score, backend) = unsafe { (args::string("score", score)?, args::string("backend", backend)?) };
        let cfg =
            AttentionConfig::new(Score::from_str(score)?, query_size, key_size).attn_size(attn_size).output_size(output_size).build()?;
        let too_large = |reason: &str| {
            CapiError::new(
                RNNK_ERR_OUT_OF_MEMORY,
                format!(
                    "`query_size, key_size, attn_size, output_size`: the parameters of a {} attention of sizes {query_size}, \
                     {key_size}, {attn_size}, {output_size} {reason}",
                    cfg.score().name()
                ),
            )
        };
        let n = param_len(&cfg).filter(|&n| n <= isize::MAX as usize / 4).ok_or_else(|| too_large("are more than fit in memory"))?;
        let mut params = Vec::new();
        params.try_reserve_exact(n).map_err(|e| too_large(&format!("could not be allocated ({e})")))?;
        params.resize(n, 0.0);
        let backend = match backend {
            "reference" => AttnBackend::Reference(Reference),
            "cpu" => AttnBackend::Cpu(if threads == 0 { Cpu::new()? } else { Cpu::with_threads(threads)? }),
            #[cfg(feature = "cuda")]
            "cuda" => AttnBackend::Cuda(rnnk_core::CudaHost::new()?),
            #[cfg(not(feature = "cuda"))]
            "cuda" => return Err(crate::cuda_not_built()),
            other => return Err(CapiError::invalid("backend", "one of \"reference\", \"cpu\", \"cuda\"", format!("{other:?}"))),
        };
        let id = NEXT_ATTENTION_ID.fetch_add(1, Ordering::Relaxed);
        *out = Attention { id, generation: 0, cfg, params, backend }.into_raw();
        Ok(())
    })
}

/// Frees an attention; NULL is a no-op. Its memories stay valid handles (free them too).
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_free(attention: *mut RnnkAttention) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { Attention::free("attention", attention) })
}

/// The number of parameters (floats in the flat layout).
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_param_count(attention: *const RnnkAttention, out: *mut usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let a = unsafe { Attention::get("attention", attention)? };
        // SAFETY: the caller's writable size_t.
        *unsafe { args::required_slot("out", out)? } = a.params.len();
        Ok(())
    })
}

/// Where the parameter `name` lies in the flat buffer: `*offset` and `*len` (each optional).
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_param_range(
    attention: *const RnnkAttention, name: *const c_char, offset: *mut usize, len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`; C string from the caller.
        let (a, name) = unsafe { (Attention::get("attention", attention)?, args::string("name", name)?) };
        let outs = [("offset", offset), ("len", len)];
        args::distinct_slots(&outs)?;
        let r = a.cfg.param_range(name)?;
        for ((arg, p), v) in outs.into_iter().zip([r.start, r.len()]) {
            // SAFETY: NULL or the caller's writable size_t.
            if let Some(out) = unsafe { args::slot(arg, p)? } {
                *out = v;
            }
        }
        Ok(())
    })
}

/// Sets the parameters from `params [param_count]` (flat layout). Memories made before are
/// refused afterwards.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_set_params(attention: *mut RnnkAttention, params: *const f32, params_len: usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked; exclusive use is the header's rule for changing an attention.
        let mut a = unsafe { Attention::get_mut("attention", attention)? };
        let mut bufs = Bufs::default();
        let p = bufs.required("params", (params, params_len), "[param_count]", &[a.params.len()])?;
        bufs.check()?;
        // SAFETY: checked above.
        a.params.copy_from_slice(unsafe { bufs.input(p) });
        a.generation += 1;
        Ok(())
    })
}

/// Copies the parameters (flat layout) into `params [param_count]`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_get_params(attention: *const RnnkAttention, params: *mut f32, params_len: usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let a = unsafe { Attention::get("attention", attention)? };
        let mut bufs = Bufs::default();
        let p = bufs.required("params", (params, params_len), "[param_count]", &[a.params.len()])?;
        bufs.check()?;
        // SAFETY: checked above.
        write(unsafe { bufs.output(p) }, &a.params, "params", false)
    })
}

/// Makes the keys' side of `keys [S, B, Hk]` (`steps` = S, `batch` = B), each sequence with its
/// `lengths [B]` (optional int64, in 1..=S; NULL: all S), with the attention's current
/// parameters; its gradients start at zero.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rnnk_attention_memory_create(
    attention: *const RnnkAttention, steps: usize, batch: usize, lengths: *const i64, lengths_len: usize, keys: *const f32,
    keys_len: usize, out: *mut *mut RnnkAttentionMemory,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        *out = std::ptr::null_mut();
        // SAFETY: handle checked by `get`.
        let a = unsafe { Attention::get("attention", attention)? };
        let lengths = check_ptr("lengths", lengths, lengths_len)?.map(|_| (lengths, lengths_len));
        if keys.is_null() {
            return Err(CapiError::null("keys"));
        }
        // SAFETY: `lengths` passed the pointer checks; host memory (the header's contract).
        let seq = unsafe { args::parse_shape(steps, batch, lengths)? };
        let shape = AttentionShape::new(1, steps, (0..batch).map(|b| seq.length(b)).collect())?;
        let mut bufs = Bufs::default();
        let k = bufs.required("keys", (keys, keys_len), "[S, B, Hk]", &[steps, batch, a.cfg.key_size()])?;
        bufs.check()?;
        // SAFETY: checked above.
        let keys = unsafe { bufs.input(k) };
        let memory = with_backend!(&a.backend, b => b.attention_memory(&a.cfg, &shape, &a.params, keys))?;
        let grads = AttentionMemoryGrads::new(&memory);
        *out = Memory { attention_id: a.id, generation: a.generation, shape, memory, grads }.into_raw();
        Ok(())
    })
}

/// Makes the memory of the sequences `rows [rows_len]` of `memory` (int64, each in 0..B,
/// repeats allowed): sequence `i` of the new memory is sequence `rows[i]` of `memory` (its keys,
/// their projection and its length), for a beam search's hypotheses; its gradients start at
/// zero. `*out` is NULL on failure.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_memory_gather(
    attention: *const RnnkAttention, memory: *const RnnkAttentionMemory, rows: *const i64, rows_len: usize,
    out: *mut *mut RnnkAttentionMemory,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        // `*out` is set to NULL first, unless that would write into `rows` (checked fully below).
        let (o, r) = (out as *mut _ as usize, rows as usize);
        if !rows.is_null() && o < r.saturating_add(rows_len.saturating_mul(8)) && r < o.saturating_add(std::mem::size_of::<usize>()) {
            return Err(CapiError::invalid("out", "memory that does not overlap `rows` (an input of the same call)", format!("{o:#x}")));
        }
        *out = std::ptr::null_mut();
        // SAFETY: handles checked by `get`.
        let (a, m) = unsafe { (Attention::get("attention", attention)?, Memory::get("memory", memory)?) };
        check_memory(&a, &m)?;
        let b = m.shape.batch();
        // SAFETY: the caller's array of `rows_len` int64 (the header's contract), checked first.
        let rows = unsafe { args::parse_rows(rows, rows_len, b, &format!("the memory's B = {b}"))? };
        // The new memory's keys and projection (at most Hq or A floats a key), checked first.
        let (c, n) = (&a.cfg, rows.len() as u128);
        let floats = (c.key_size() as u128).checked_add(c.query_size().max(c.attn_size()) as u128);
        let bytes = floats.and_then(|f| f.checked_mul(m.shape.steps() as u128)?.checked_mul(n)?.checked_mul(4 * 2));
        let what = format!("the memory of {n} sequences of {} steps and its gradients", m.shape.steps());
        args::check_rows_bytes(bytes, &what)?;
        let memory = m.memory.gather(&rows)?;
        let shape = AttentionShape::new(1, m.shape.steps(), memory.lengths().to_vec())?;
        let grads = AttentionMemoryGrads::new(&memory);
        *out = Memory { attention_id: a.id, generation: a.generation, shape, memory, grads }.into_raw();
        Ok(())
    })
}

/// Frees a memory; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_memory_free(memory: *mut RnnkAttentionMemory) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { Memory::free("memory", memory) })
}

/// Sets the memory's accumulated gradients back to zero.
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_memory_zero_grads(memory: *mut RnnkAttentionMemory) -> c_int {
    guard(|| {
        // SAFETY: handle checked; exclusive use.
        let mut m = unsafe { Memory::get_mut("memory", memory)? };
        m.grads = AttentionMemoryGrads::new(&m.memory);
        Ok(())
    })
}

/// The shape of a call of `num_queries` queries over `m`'s keys.
fn call_shape(m: &Memory, num_queries: usize) -> Result<AttentionShape, CapiError> {
    if num_queries == 0 {
        return Err(CapiError::invalid("num_queries", "at least 1", 0));
    }
    Ok(AttentionShape::new(num_queries, m.shape.steps(), m.shape.lengths().to_vec())?)
}

/// Forward: `queries [Tq, B, Hq]` (`num_queries` = Tq) over `memory`; out `weights [Tq, B, S]`,
/// `context [Tq, B, Hk]` and `hidden [Tq, B, O]` (NULL, and only NULL, when O = 0).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rnnk_attention_forward(
    attention: *const RnnkAttention, memory: *const RnnkAttentionMemory, num_queries: usize, queries: *const f32, queries_len: usize,
    weights: *mut f32, weights_len: usize, context: *mut f32, context_len: usize, hidden: *mut f32, hidden_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get`.
        let (a, m) = unsafe { (Attention::get("attention", attention)?, Memory::get("memory", memory)?) };
        check_memory(&a, &m)?;
        let shape = call_shape(&m, num_queries)?;
        let (tq, s, b, c) = (num_queries, shape.steps(), shape.batch(), &a.cfg);
        let mut bufs = Bufs::default();
        let q = bufs.required("queries", (queries, queries_len), "[Tq, B, Hq]", &[tq, b, c.query_size()])?;
        let w = bufs.required("weights", (weights, weights_len), "[Tq, B, S]", &[tq, b, s])?;
        let ctx = bufs.required("context", (context, context_len), "[Tq, B, Hk]", &[tq, b, c.key_size()])?;
        let h = if c.output_size() > 0 {
            Some(bufs.required("hidden", (hidden, hidden_len), "[Tq, B, O]", &[tq, b, c.output_size()])?)
        } else {
            bufs.absent("hidden", (hidden, hidden_len), "this attention has no attentional hidden state (output_size 0)".into())?;
            None
        };
        bufs.check()?;
        // SAFETY: checked above.
        let q = unsafe { bufs.input(q) };
        let o = with_backend!(&a.backend, bk => bk.attention_forward_with(c, &shape, &a.params, &m.memory, q))?;
        // SAFETY (each output below): checked above.
        write(unsafe { bufs.output(w) }, &o.weights, "weights", false)?;
        write(unsafe { bufs.output(ctx) }, &o.context, "context", false)?;
        if let Some(h) = h {
            write(unsafe { bufs.output(h) }, &o.hidden, "hidden", false)?;
        }
        Ok(())
    })
}

/// Backward of a forward call: the same `queries`, and its outputs `weights`, `context`,
/// `hidden` (NULL, and only NULL, when O = 0) in; the upstream `d_weights [Tq, B, S]`,
/// `d_context [Tq, B, Hk]`, `d_hidden [Tq, B, O]` optional (zeros); out `d_queries [Tq, B, Hq]`
/// and `d_params [param_count]` (optional; `d_params` overwritten or, with `accumulate`
/// non-zero, added to). The keys' side's gradients are added into `memory`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rnnk_attention_backward(
    attention: *const RnnkAttention, memory: *mut RnnkAttentionMemory, num_queries: usize, queries: *const f32, queries_len: usize,
    weights: *const f32, weights_len: usize, context: *const f32, context_len: usize, hidden: *const f32, hidden_len: usize,
    d_weights: *const f32, d_weights_len: usize, d_context: *const f32, d_context_len: usize, d_hidden: *const f32, d_hidden_len: usize,
    d_queries: *mut f32, d_queries_len: usize, d_params: *mut f32, d_params_len: usize, accumulate: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get` and `get_mut`.
        let (a, mut m) = unsafe { (Attention::get("attention", attention)?, Memory::get_mut("memory", memory)?) };
        check_memory(&a, &m)?;
        let shape = call_shape(&m, num_queries)?;
        let (tq, s, b, c) = (num_queries, shape.steps(), shape.batch(), &a.cfg);
        let (w_dims, ctx_dims, h_dims) = ([tq, b, s], [tq, b, c.key_size()], [tq, b, c.output_size()]);
        let mut bufs = Bufs::default();
        let q = bufs.required("queries", (queries, queries_len), "[Tq, B, Hq]", &[tq, b, c.query_size()])?;
        let w = bufs.required("weights", (weights, weights_len), "[Tq, B, S]", &w_dims)?;
        let ctx = bufs.required("context", (context, context_len), "[Tq, B, Hk]", &ctx_dims)?;
        let dw = bufs.optional("d_weights", (d_weights, d_weights_len), "[Tq, B, S]", &w_dims)?;
        let dctx = bufs.optional("d_context", (d_context, d_context_len), "[Tq, B, Hk]", &ctx_dims)?;
        let (h, dh) = if c.output_size() > 0 {
            let h = bufs.required("hidden", (hidden, hidden_len), "[Tq, B, O]", &h_dims)?;
            (Some(h), bufs.optional("d_hidden", (d_hidden, d_hidden_len), "[Tq, B, O]", &h_dims)?)
        } else {
            let why = || "this attention has no attentional hidden state (output_size 0)".to_string();
            bufs.absent("hidden", (hidden, hidden_len), why())?;
            bufs.absent("d_hidden", (d_hidden, d_hidden_len), why())?;
            (None, None)
        };
        let dq = bufs.optional("d_queries", (d_queries, d_queries_len), "[Tq, B, Hq]", &[tq, b, c.query_size()])?;
        let dp = bufs.optional("d_params", (d_params, d_params_len), "[param_count]", &[a.params.len()])?;
        bufs.check()?;
        // SAFETY (the inputs below): checked above.
        let q = unsafe { bufs.input(q) };
        let out = AttentionOutput {
            weights: unsafe { bufs.input(w) }.to_vec(),
            context: unsafe { bufs.input(ctx) }.to_vec(),
            hidden: h.map_or_else(Vec::new, |h| unsafe { bufs.input(h) }.to_vec()),
        };
        let up = AttentionUpstream {
            d_weights: dw.map(|i| unsafe { bufs.input(i) }),
            d_context: dctx.map(|i| unsafe { bufs.input(i) }),
            d_hidden: dh.map(|i| unsafe { bufs.input(i) }),
        };
        let Memory { memory: mem, grads, .. } = &mut *m;
        let g = with_backend!(&a.backend, bk => bk.attention_backward_with(c, &shape, &a.params, mem, q, &out, up, grads))?;
        // SAFETY (each output below): checked above.
        if let Some(i) = dq {
            write(unsafe { bufs.output(i) }, &g.d_queries, "d_queries", false)?;
        }
        if let Some(i) = dp {
            write(unsafe { bufs.output(i) }, &g.d_params, "d_params", accumulate != 0)?;
        }
        Ok(())
    })
}

/// The keys' side's backward from the gradients the backward calls accumulated in `memory`:
/// out `d_keys [S, B, Hk]` (0 at the padding) and `d_params [param_count]` (the part through
/// the keys' side), both optional; `d_params` overwritten or, with `accumulate` non-zero, added
/// to. The accumulated gradients are kept (rnnk_attention_memory_zero_grads clears them).
#[no_mangle]
pub unsafe extern "C" fn rnnk_attention_memory_backward(
    attention: *const RnnkAttention, memory: *const RnnkAttentionMemory, d_keys: *mut f32, d_keys_len: usize, d_params: *mut f32,
    d_params_len: usize, accumulate: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: handles checked by `get`.
        let (a, m) = unsafe { (Attention::get("attention", attention)?, Memory::get("memory", memory)?) };
        check_memory(&a, &m)?;
        let (s, b) = (m.shape.steps(), m.shape.batch());
        let mut bufs = Bufs::default();
        let dk = bufs.optional("d_keys", (d_keys, d_keys_len), "[S, B, Hk]", &[s, b, a.cfg.key_size()])?;
        let dp = bufs.optional("d_params", (d_params, d_params_len), "[param_count]", &[a.params.len()])?;
        bufs.check()?;
        let g = with_backend!(&a.backend, bk => bk.attention_memory_backward(&a.cfg, &m.shape, &a.params, &m.memory, &m.grads))?;
        // SAFETY (each output below): checked above.
        if let Some(i) = dk {
            write(unsafe { bufs.output(i) }, &g.d_keys, "d_keys", false)?;
        }
        if let Some(i) = dp {
            write(unsafe { bufs.output(i) }, &g.d_params, "d_params", accumulate != 0)?;
        }
        Ok(())
    })
}
