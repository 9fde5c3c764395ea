//! What a training forward pass keeps for backward ([`HostReserve`]), and the pool of scratch
//! buffers that backward borrows from it ([`Workspace`]).

use crate::backend::cell::{Cell, Saved};
use crate::backend::stack::ReserveStamp;
use crate::backend::ForwardInput;
use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::shape::SeqShape;

/// What a host backend's training forward pass saves for backward.
///
/// Create an empty one with `Default` and pass it to `forward_training`; its buffers are
/// resized in place on every call, so reusing one reserve avoids reallocation.
#[derive(Debug, Default, Clone)]
pub struct HostReserve<T> {
    /// The plan and shape of the call that filled it.
    pub(crate) stamp: ReserveStamp,
    /// `[T, B, I]`: a copy of `x`, time-major also when `x` is batch-first (the copy is then
    /// made transposed, at the cost of the plain copy), so that the time loops and the weight
    /// gradients read one layout.
    pub(super) x: Vec<T>,
    /// `[L·D, B, Hout]`, zeros when not given.
    pub(super) h0: Vec<T>,
    /// `[L·D, B, H]` (LSTM), zeros when not given.
    pub(super) c0: Vec<T>,
    /// Per layer but the last, `[T, B, D·Hout]`: the layer's output, masked (the next layer's
    /// input). The last layer's output is `y`, which backward does not read.
    pub(super) outputs: Vec<Vec<T>>,
    /// Per layer and direction (`l·D + d`).
    pub(super) dirs: Vec<Saved<Vec<T>>>,
    /// Backward's large scratch buffers, kept from one call to the next.
    pub(super) work: Workspace<T>,
    /// The dropout between layers of the call that filled it (its masks are regenerated, not
    /// kept); `None` without.
    pub(super) dropout: Option<super::dropout::Dropout>,
    /// The zoneout of the call that filled it (its masks are regenerated, not kept); `None`
    /// without.
    pub(super) zoneout: Option<super::zoneout::Zoneout>,
    /// The recurrent dropout of the call that filled it (regenerated, not kept); `None`
    /// without.
    pub(super) recurrent_dropout: Option<super::variational_dropout::VariationalDropout>,
    /// The input dropout of the call that filled it (regenerated, not kept); `None` without.
    pub(super) input_dropout: Option<super::variational_dropout::VariationalDropout>,
}

impl<T: Send + Default> crate::backend::RnnReserve for HostReserve<T> {
    fn shape(&self) -> Option<&SeqShape> {
        self.stamp.shape()
    }
}

impl<T> HostReserve<T> {
    /// The bytes of memory the reserve holds: the capacity of its buffers, backward's pooled
    /// scratch buffers included. A reserve kept for reuse keeps them all.
    pub fn nbytes(&self) -> usize {
        let saved: usize = self.dirs.iter().flat_map(|d| d.each()).map(Vec::capacity).sum();
        let outputs: usize = self.outputs.iter().map(Vec::capacity).sum();
        let work: usize = self.work.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Vec::capacity).sum();
        let elements = self.x.capacity() + self.h0.capacity() + self.c0.capacity() + outputs + saved + work;
        elements * std::mem::size_of::<T>()
    }
}

impl<T: Float> HostReserve<T> {
    /// Sizes the reserve for a training call of `shape` and copies its inputs (`x`, and `h0`,
    /// `c0` or zeros). The caller has stamped it; the time loop fills `outputs` and `dirs`.
    ///
    /// The sizes are computed in checked arithmetic and the buffers grown fallibly: a reserve
    /// that does not fit in memory is [`Error::TooLarge`] naming `x`, not an abort.
    pub(super) fn prepare(&mut self, cfg: &RnnConfig, shape: &SeqShape, input: &ForwardInput<'_, [T]>) -> Result<()> {
        let lds = cfg.num_layers() * cfg.num_directions();
        let (b, tb) = (shape.batch(), shape.steps() * shape.batch());
        let cell = Cell::of(cfg);
        // Elements per row (`T·B` rows): every layer-direction's saved activations and every
        // layer's output but the last. Each is bounded by the configuration (`RnnConfig::build`
        // keeps them in `usize`); their product with the rows is what may not fit.
        let per_row = {
            let one = cell.saved_sizes(1, 1);
            let dir = one.into_array().iter().map(|&n| n as u128).sum::<u128>();
            lds as u128 * dir + (cfg.num_layers() as u128 - 1) * cfg.output_size() as u128
        };
        let total = (tb as u128).saturating_mul(per_row);
        if total.saturating_mul(std::mem::size_of::<T>() as u128) > isize::MAX as u128 {
            return Err(too_large(
                format!("the reserve of a training pass, {per_row} elements per step and sequence"),
                total,
                std::mem::size_of::<T>(),
                "is more than one allocation can hold (isize::MAX bytes)".into(),
            ));
        }
        if cfg.batch_first() {
            try_room(&mut self.x, input.x.len(), "the reserve's copy of `x`")?;
            fit_len(&mut self.x, input.x.len());
            transpose_steps(input.x, &mut self.x, shape.batch(), shape.steps());
        } else {
            fill_from(&mut self.x, Some(input.x), input.x.len(), "the reserve's copy of `x`")?;
        }
        fill_from(&mut self.h0, input.h0, lds * b * cfg.hidden_out_size(), "the reserve's copy of `h0`")?;
        if cfg.cell().has_cell_state() {
            fill_from(&mut self.c0, input.c0, lds * b * cfg.hidden_size(), "the reserve's copy of `c0`")?;
        } else {
            self.c0.clear();
        }
        self.outputs.resize_with(cfg.num_layers() - 1, Vec::new);
        for o in &mut self.outputs {
            try_fit_len(o, tb * cfg.output_size(), "the reserve's layer outputs, [T, B, D·Hout]")?;
        }
        let sizes = cell.saved_sizes(shape.steps(), b);
        self.dirs.resize_with(lds, Saved::default);
        for dir in &mut self.dirs {
            for (v, n) in sizes.zip(dir) {
                try_fit_len(v, n, "the reserve's saved activations")?;
            }
        }
        Ok(())
    }
}

/// Swaps the first two dimensions of `src: [a, b, w]` into `dst: [b, a, w]` (`w` from the
/// lengths): a batch-first tensor into its time-major layout (`a = B`, `b = T`), or back.
pub(super) fn transpose_steps<T: Copy>(src: &[T], dst: &mut [T], a: usize, b: usize) {
    let w = src.len().checked_div(a * b).unwrap_or(0);
    if w == 0 {
        return;
    }
    for (i, block) in src.chunks_exact(b * w).enumerate() {
        for (j, row) in block.chunks_exact(w).enumerate() {
            dst[(j * a + i) * w..(j * a + i + 1) * w].copy_from_slice(row);
        }
    }
}

/// The error for a reserve buffer of `n` elements of `size` bytes that cannot be had.
fn too_large(what: String, n: u128, size: usize, reason: String) -> Error {
    Error::TooLarge { arg: "x".into(), what, bytes: n.saturating_mul(size as u128), reason }
}

/// Makes room in `v` for `n` elements, fallibly: an allocation the allocator refuses is
/// [`Error::TooLarge`] naming `x`.
fn try_room<T>(v: &mut Vec<T>, n: usize, what: &str) -> Result<()> {
    if n > v.len() {
        v.try_reserve_exact(n - v.len())
            .map_err(|e| too_large(what.to_string(), n as u128, std::mem::size_of::<T>(), format!("could not be allocated ({e})")))?;
    }
    Ok(())
}

/// The slices of `parts` one after the other in one buffer, allocated fallibly (`what` names it
/// in the error).
pub(super) fn concat<'a, T: Copy + 'a>(parts: impl Iterator<Item = &'a [T]> + Clone, what: &str) -> Result<Vec<T>> {
    let n = parts.clone().map(<[T]>::len).sum();
    let mut v = Vec::new();
    try_room(&mut v, n, what)?;
    parts.for_each(|p| v.extend_from_slice(p));
    Ok(v)
}

/// Resizes `v` to `n` elements like [`fit_len`], growing its allocation fallibly.
pub(super) fn try_fit_len<T: Float>(v: &mut Vec<T>, n: usize, what: &str) -> Result<()> {
    try_room(v, n, what)?;
    fit_len(v, n);
    Ok(())
}

/// A pool of buffers that a `&HostReserve` lends to backward, so that a training loop reusing
/// its reserve allocates (and page-faults in) its tens of megabytes of gradients of the gates
/// once, not on every call. A clone starts empty.
#[derive(Debug)]
pub(super) struct Workspace<T>(std::sync::Mutex<Vec<Vec<T>>>);

impl<T> Default for Workspace<T> {
    fn default() -> Self {
        Workspace(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Clone for Workspace<T> {
    fn clone(&self) -> Self {
        Workspace::default()
    }
}

impl<T: Float> Workspace<T> {
    /// A buffer of `n` zeros (`what`, for the error), from the pool where it has one; grown
    /// fallibly: a buffer that does not fit in memory is [`Error::TooLarge`] naming `reserve`,
    /// whose shape it is sized from.
    pub(super) fn zeroed(&self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut v = self.take(n, what)?;
        fit(&mut v, n);
        Ok(v)
    }

    /// A buffer of `n` values that the caller overwrites entirely before it reads any: as
    /// [`zeroed`](Self::zeroed), but a pooled buffer keeps its old values (only a part past
    /// its old length is written, with zeros), so that a buffer rewritten whole every call is
    /// not cleared first as well.
    pub(super) fn overwritten(&self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut v = self.take(n, what)?;
        fit_len(&mut v, n);
        Ok(v)
    }

    /// A buffer from the pool with room for `n` values (its length and values as it was given
    /// back): the smallest that holds `n` (so that a small request does not take the
    /// allocation a large one needs), else the largest, grown fallibly; a buffer that does not
    /// fit in memory is [`Error::TooLarge`] naming `reserve`, whose shape it is sized from.
    fn take(&self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = (0..pool.len()).filter(|&i| pool[i].capacity() >= n).min_by_key(|&i| pool[i].capacity());
        let best = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        let mut v = best.map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        if n > v.capacity() {
            v.clear();
            v.try_reserve_exact(n).map_err(|e| Error::TooLarge {
                arg: "reserve".into(),
                what: what.into(),
                bytes: (n as u128).saturating_mul(std::mem::size_of::<T>() as u128),
                reason: format!("could not be allocated ({e})"),
            })?;
        }
        Ok(v)
    }

    /// Returns buffers to the pool.
    pub(super) fn give(&self, bufs: impl IntoIterator<Item = Vec<T>>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.extend(bufs.into_iter().filter(|v| v.capacity() > 0));
    }
}

/// Resizes `v` to `n` zeros, keeping its allocation.
fn fit<T: Float>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.resize(n, T::ZERO);
}

/// Resizes `v` to `n` elements that the caller then overwrites entirely: keeps the allocation
/// and, at an unchanged length, writes nothing (a reserve reused across calls is not cleared
/// every time).
pub(super) fn fit_len<T: Float>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::ZERO);
}

/// Copies `src` into `v` (resized), keeping its allocation; zeros of length `n` if `src` is None.
/// The allocation grows fallibly, like [`try_fit_len`].
fn fill_from<T: Float>(v: &mut Vec<T>, src: Option<&[T]>, n: usize, what: &str) -> Result<()> {
    v.clear();
    match src {
        Some(s) => {
            try_room(v, s.len(), what)?;
            v.extend_from_slice(s);
        }
        None => {
            try_room(v, n, what)?;
            fit(v, n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Workspace;

    #[test]
    fn workspace_lends_the_smallest_buffer_that_fits() {
        let w = Workspace::<f32>::default();
        w.give([Vec::with_capacity(1000), Vec::with_capacity(100)]);
        let small = w.zeroed(50, "test").unwrap();
        assert_eq!((small.len(), small.capacity()), (50, 100));
        let big = w.zeroed(800, "test").unwrap();
        assert_eq!(big.capacity(), 1000);
        assert!(big.iter().all(|&v| v == 0.0));
        // Nothing fits: the largest grows.
        w.give([small, big]);
        assert!(w.zeroed(2000, "test").unwrap().capacity() >= 2000);
    }

    #[test]
    fn overwritten_keeps_the_allocation_and_writes_only_past_the_old_length() {
        let w = Workspace::<f32>::default();
        let mut v = w.overwritten(10, "test").unwrap();
        assert_eq!(v, [0.0; 10]);
        v.fill(7.0);
        let at = v.as_ptr();
        w.give([v]);
        // Shorter: the old values, no write; longer (within the allocation): zeros past them.
        let v = w.overwritten(4, "test").unwrap();
        assert_eq!((v.as_ptr(), &v[..]), (at, &[7.0; 4][..]));
        w.give([v]);
        let v = w.overwritten(10, "test").unwrap();
        assert_eq!(v[..4], [7.0; 4]);
        assert_eq!(v[4..], [0.0; 6]);
        // zeroed clears whatever a buffer held.
        w.give([v]);
        assert_eq!(w.zeroed(10, "test").unwrap(), [0.0; 10]);
    }
}
