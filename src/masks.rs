//! The regularisation masks (dropout between layers, recurrent and input dropout with one mask
//! per sequence, zoneout): where each random bit comes from, so that every backend, ISA and
//! thread count draws the same masks, and backward regenerates them instead of storing them.
//!
//! # The layout
//!
//! A call draws from its own key, [`MaskStream::new`]`(seed, offset)`: the first two words of
//! Philox 4x32-10 of the counter `[offset_lo, offset_hi, 0, 0]` under the seed's key (its low and
//! high words). A training loop keeps the seed and advances the offset by one per call, so each
//! step draws fresh masks and any step can be replayed from `(seed, offset)` alone.
//!
//! Under the call's key, the 4 words of Philox 4x32-10 of the counter
//!
//! ```text
//! [unit / 4, row, step, layer << 4 | direction << 3 | kind]
//! ```
//!
//! decide units `4·(unit/4) … 4·(unit/4) + 3` of that row (the sequence's index in the batch),
//! step and site, word `j` deciding unit `4·(unit/4) + j`. `step` is the time index of the
//! position (not the order in which a reverse direction visits it), and 0 for the masks drawn
//! once per sequence ([`MaskKind::RecurrentH`], [`MaskKind::LayerInput`]). `layer` is the layer
//! whose input, output or state the mask applies to, `direction` 0 (forward) or 1 (reverse),
//! `kind` the [`MaskKind`]'s number. A call that continues a sequence (a decoder's step,
//! [`MaskStream::from_step`]`(k)`) counts `step` from the sequence's step `k`.
//!
//! A word `u` is a *hit* when `u < round(p·2³²)` ([`Threshold`]): for dropout the unit is
//! dropped (the kept ones are scaled by `1/(1-p)`), for zoneout the unit keeps its previous
//! value. Integer comparisons only, so a mask is the same bits everywhere.
//!
//! # Reading masks back, and supplying them
//!
//! [`required_sites`] lists the masks a training call of a configuration and shape reads, with
//! their sizes; [`SuppliedMasks::drawn`] draws them all from a stream (the masks of that call,
//! read back; [`SuppliedMasks::get`] gives each as booleans). A caller that has its own masks
//! (another framework's, to reproduce its training bit for bit) puts them in a
//! [`SuppliedMasks`] ([`insert`](SuppliedMasks::insert), `true` where the unit is hit) and passes
//! [`MaskStream::supplied`] where a stream goes: every backend that takes them then reads those
//! bits instead of drawing, forward and backward, with the same scale `1/(1-p)` for the kept
//! units. A training call checks that every mask it needs is there with its size (an error
//! naming `masks` otherwise).

use crate::config::RnnConfig;
use crate::error::{Error, Result};
use crate::philox::{key_of_seed, philox4x32_10, philox4x32_10_x8_below, Threshold};
use crate::shape::SeqShape;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a mask applies to; its number is the low 3 bits of the counter's last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MaskKind {
    /// Dropout on a layer's output (the next layer's input), one mask per step (PyTorch's
    /// `dropout` of `nn.LSTM`).
    LayerOutput = 0,
    /// Recurrent (variational) dropout on the hidden state fed to the recurrent matmul: one mask
    /// per sequence and unit, the same at every step (`step` 0).
    RecurrentH = 1,
    /// Variational dropout on a layer's input: one mask per sequence and input feature (`step`
    /// 0).
    LayerInput = 2,
    /// Zoneout of the hidden state, per step and unit.
    ZoneoutH = 3,
    /// Zoneout of the LSTM's cell state, per step and unit.
    ZoneoutC = 4,
}

impl MaskKind {
    /// Every kind, in the order of their numbers.
    pub const ALL: [MaskKind; 5] =
        [MaskKind::LayerOutput, MaskKind::RecurrentH, MaskKind::LayerInput, MaskKind::ZoneoutH, MaskKind::ZoneoutC];

    /// Whether the mask is drawn once per sequence (the same at every step).
    pub fn per_sequence(self) -> bool {
        matches!(self, MaskKind::RecurrentH | MaskKind::LayerInput)
    }
}

/// One mask's place in the stack: a layer, a direction and a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskSite {
    tag: u32,
    kind: MaskKind,
}

impl MaskSite {
    /// The largest layer index a site can name (28 bits of the counter).
    pub const MAX_LAYER: usize = (1 << 28) - 1;

    /// The site of `kind` at `layer` and `direction` (0 forward, 1 reverse): an error naming the
    /// argument for a layer above [`MAX_LAYER`](Self::MAX_LAYER) or a direction other than 0 and 1.
    pub fn new(layer: usize, direction: usize, kind: MaskKind) -> Result<Self> {
        if layer > Self::MAX_LAYER {
            return Err(Error::invalid("layer", format!("at most {}", Self::MAX_LAYER), layer));
        }
        if direction > 1 {
            return Err(Error::invalid("direction", "0 (forward) or 1 (reverse)", direction));
        }
        Ok(MaskSite { tag: (layer as u32) << 4 | (direction as u32) << 3 | kind as u32, kind })
    }

    /// The kind of mask.
    pub fn kind(self) -> MaskKind {
        self.kind
    }

    /// The last word of this site's counters.
    pub fn tag(self) -> u32 {
        self.tag
    }

    /// The layer.
    pub fn layer(self) -> usize {
        (self.tag >> 4) as usize
    }

    /// The direction (0 forward, 1 reverse).
    pub fn direction(self) -> usize {
        (self.tag >> 3 & 1) as usize
    }
}

/// The masks of one call: the key derived from `(seed, offset)`, or masks the caller supplied
/// ([`MaskStream::supplied`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskStream {
    key: [u32; 2],
    supplied: Option<Arc<SuppliedMasks>>,
    /// The sequence's step the call's step 0 is ([`from_step`](Self::from_step)): step `t` of
    /// the call draws the per-step masks of step `first_step + t`.
    first_step: u32,
}

impl MaskStream {
    /// The stream of call `offset` of a run seeded with `seed`.
    pub fn new(seed: u64, offset: u64) -> Self {
        let w = philox4x32_10([offset as u32, (offset >> 32) as u32, 0, 0], key_of_seed(seed));
        MaskStream { key: [w[0], w[1]], supplied: None, first_step: 0 }
    }

    /// The same stream for a call that continues a sequence at its step `first` (a decoder
    /// run one step at a time, [`Rnn::step`](crate::Rnn::step)): the call's step `t` draws (or
    /// reads, for supplied masks) the per-step masks (dropout between layers, zoneout) of step
    /// `first + t`, so that the steps of a sequence run one call at a time get the masks of one
    /// call over the whole sequence. The per-sequence masks (recurrent and input dropout) are
    /// the same at every step and do not move. A step past `2³² - 1` is an error naming
    /// `first` (on the CUDA backend, a call whose steps reach `2³¹` is an error naming `masks`:
    /// its kernels take the step as a signed 32-bit integer).
    pub fn from_step(&self, first: usize) -> Result<Self> {
        let first = u32::try_from(first).map_err(|_| Error::invalid("first", "a step below 2^32", first))?;
        Ok(MaskStream { first_step: first, ..self.clone() })
    }

    /// The sequence's step the call's step 0 is ([`from_step`](Self::from_step); 0 for a new
    /// stream).
    pub fn first_step(&self) -> usize {
        self.first_step as usize
    }

    /// The sequence's step of the call's step `step` at `site` (per-sequence kinds: 0). The
    /// positions are checked ([`position`](Self::position), [`check_for`](Self::check_for)),
    /// so the sum fits; it saturates rather than wraps if a caller skipped the check.
    #[inline]
    fn seq_step(&self, site: MaskSite, step: u32) -> u32 {
        if site.kind.per_sequence() {
            step
        } else {
            step.saturating_add(self.first_step)
        }
    }

    /// The masks `masks` instead of drawn ones: a training call reads its hits from them (see
    /// [the module docs](self#reading-masks-back-and-supplying-them)). Every backend takes such
    /// a stream; the CUDA backend uploads the bits each training call reads.
    pub fn supplied(masks: SuppliedMasks) -> Self {
        MaskStream { key: [0, 0], supplied: Some(Arc::new(masks)), first_step: 0 }
    }

    /// The supplied masks, if the stream is [`supplied`](Self::supplied).
    pub fn supplied_masks(&self) -> Option<&SuppliedMasks> {
        self.supplied.as_deref()
    }

    /// The call's Philox key (`[0, 0]` for [`supplied`](Self::supplied) masks).
    pub fn key(&self) -> [u32; 2] {
        self.key
    }

    /// A training call's check of its masks for `cfg` and `shape`: with supplied masks, each
    /// of [`required_sites`] must be there with at least its steps, rows and units (an error
    /// naming `masks`); a drawn stream has them all.
    pub(crate) fn check_for(&self, cfg: &RnnConfig, shape: &SeqShape) -> Result<()> {
        if self.first_step as u64 + shape.steps() as u64 > 1 << 32 {
            return Err(Error::invalid(
                "masks",
                "a stream whose steps stay below 2^32",
                format!("steps {} to {} (MaskStream::from_step)", self.first_step, self.first_step as u64 + shape.steps() as u64 - 1),
            ));
        }
        let Some(s) = &self.supplied else { return Ok(()) };
        for need in required_sites(cfg, shape) {
            let have = s.sites.get(&need.site.tag);
            // A stream continuing a sequence reads the supplied steps from its first one on.
            let steps = if need.site.kind.per_sequence() { need.steps } else { need.steps + self.first_step as usize };
            if !have.is_some_and(|h| h.steps >= steps && h.rows >= need.rows && h.units >= need.units) {
                let have = have.map_or("none".to_string(), |h| format!("[{}, {}, {}]", h.steps, h.rows, h.units));
                return Err(Error::invalid(
                    "masks",
                    format!(
                        "supplied masks of {:?} at layer {}, direction {} of at least [steps {}, rows {}, units {}]",
                        need.site.kind,
                        need.site.layer(),
                        need.site.direction(),
                        steps,
                        need.rows,
                        need.units
                    ),
                    have,
                ));
            }
        }
        Ok(())
    }

    /// The 4 words deciding units `4·group … 4·group + 3` of `row` at the call's `step` (the
    /// sequence's step `first_step + step` for a per-step kind) and `site`.
    #[inline]
    pub fn words(&self, site: MaskSite, step: u32, row: u32, group: u32) -> [u32; 4] {
        philox4x32_10([group, row, self.seq_step(site, step), site.tag], self.key)
    }

    /// Writes into `hit[u]`, for the units `u` of `hit`, whether unit `u` of `row` at `step`
    /// and `site` is a hit of `threshold`. For a per-sequence kind `step` must be 0: an error
    /// naming `step` otherwise. Units past `4·2³²` are an error naming `hit`.
    pub fn fill_hits(&self, site: MaskSite, step: usize, row: usize, threshold: Threshold, hit: &mut [bool]) -> Result<()> {
        let (step, row) = self.position(site, step, row, hit.len())?;
        self.fill_hits_at(site, step, row, threshold, hit);
        Ok(())
    }

    /// [`fill_hits`](Self::fill_hits) at a position already checked: at most `4·2³²` units.
    pub(crate) fn fill_hits_at(&self, site: MaskSite, step: u32, row: u32, threshold: Threshold, hit: &mut [bool]) {
        self.for_each_hit_word(site, step, row, threshold, hit.len(), |base, bits| {
            for (u, h) in hit[base..].iter_mut().take(32).enumerate() {
                *h = (bits >> u) & 1 == 1;
            }
        });
    }

    /// The hits of `threshold` of units `0..32·bits.len()` of `row` at `step` and `site` as bit
    /// words: bit `u mod 32` of `bits[u / 32]` is unit `u`'s (the units past those the caller
    /// uses are drawn too). The position is already checked (as by [`fill_hits`](Self::fill_hits)).
    pub(crate) fn hit_bits_at(&self, site: MaskSite, step: u32, row: u32, threshold: Threshold, bits: &mut [u32]) {
        self.for_each_hit_word(site, step, row, threshold, bits.len() * 32, |base, b| bits[base / 32] = b);
    }

    /// Calls `f(base, bits)` for `base` = 0, 32, … below `units`, with bit `u` of `bits` the hit
    /// of unit `base + u` ([`philox4x32_10_x8_below`]: 8 counters at once; or the supplied
    /// masks' words, no hits past their units).
    #[inline]
    fn for_each_hit_word(&self, site: MaskSite, step: u32, row: u32, threshold: Threshold, units: usize, mut f: impl FnMut(usize, u32)) {
        let step = self.seq_step(site, step);
        if let Some(s) = &self.supplied {
            let words = s.words(site, step as usize, row as usize);
            for base in (0..units).step_by(32) {
                f(base, words.get(base / 32).copied().unwrap_or(0));
            }
            return;
        }
        for base in (0..units).step_by(32) {
            // `position` checked at most 2^32 groups of 4 units.
            let count = (units - base).div_ceil(4).min(8) as u32;
            f(base, philox4x32_10_x8_below((base / 4) as u32, row, step, site.tag, self.key, threshold.bound(), count));
        }
    }

    /// Writes into `out[u]` the dropout factor of unit `u`: 0 where it is a hit of `threshold`
    /// (dropped), `scale` elsewhere (kept; `scale` is `1/(1-p)` for inverted dropout). The same
    /// positions and errors as [`fill_hits`](Self::fill_hits).
    pub fn fill_factors<T: Copy + Default>(
        &self,
        site: MaskSite,
        step: usize,
        row: usize,
        threshold: Threshold,
        scale: T,
        out: &mut [T],
    ) -> Result<()> {
        let (step, row) = self.position(site, step, row, out.len())?;
        self.for_each_hit_word(site, step, row, threshold, out.len(), |base, bits| {
            for (u, o) in out[base..].iter_mut().take(32).enumerate() {
                *o = if (bits >> u) & 1 == 1 { T::default() } else { scale };
            }
        });
        Ok(())
    }

    fn position(&self, site: MaskSite, step: usize, row: usize, units: usize) -> Result<(u32, u32)> {
        if site.kind.per_sequence() && step != 0 {
            return Err(Error::invalid("step", format!("0 for a per-sequence mask ({:?})", site.kind), step));
        }
        let step = u32::try_from(step).map_err(|_| Error::invalid("step", "below 2^32", step))?;
        if !site.kind.per_sequence() && step.checked_add(self.first_step).is_none() {
            return Err(Error::invalid("step", format!("below 2^32 - {} (the stream's first step)", self.first_step), step));
        }
        let row = u32::try_from(row).map_err(|_| Error::invalid("row", "below 2^32", row))?;
        if units.div_ceil(4) > 1 << 32 {
            return Err(Error::invalid("hit", "at most 2^34 units", units));
        }
        if let Some(s) = &self.supplied {
            let have = s.sites.get(&site.tag);
            let step = self.seq_step(site, step);
            if !have.is_some_and(|h| (step as usize) < h.steps && (row as usize) < h.rows && units <= h.units) {
                let have = have.map_or("none".to_string(), |h| format!("[{}, {}, {}]", h.steps, h.rows, h.units));
                return Err(Error::invalid(
                    "masks",
                    format!("supplied masks of {:?} covering step {step}, row {row} and {units} units", site.kind),
                    have,
                ));
            }
        }
        Ok((step, row))
    }
}

/// A mask a training call reads: its site and its extent, `[steps, rows, units]` (`steps` 1 for
/// a per-sequence kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredMask {
    /// The layer, direction and kind.
    pub site: MaskSite,
    /// Steps (the time indices `0..steps`; 1 for a per-sequence kind).
    pub steps: usize,
    /// Rows (the sequences of the batch).
    pub rows: usize,
    /// Units (features) per row.
    pub units: usize,
}

/// The masks a training call of `cfg` on `shape` reads, by layer, direction and kind: dropout
/// between layers ([`MaskKind::LayerOutput`], direction 0, layers `0..L-1`, units the layer's
/// output width), zoneout of `h` and `c`, recurrent dropout (units `Hout`) and input dropout
/// (units the layer's input size), each where the configuration has it.
pub fn required_sites(cfg: &RnnConfig, shape: &SeqShape) -> Vec<RequiredMask> {
    let (t, b) = (shape.steps(), shape.batch());
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let mut out = Vec::new();
    let mut push = |layer: usize, direction: usize, kind: MaskKind, units: usize| {
        // Layers and directions of a built configuration are within MaskSite's range.
        if let Ok(site) = MaskSite::new(layer, direction, kind) {
            out.push(RequiredMask { site, steps: if kind.per_sequence() { 1 } else { t }, rows: b, units });
        }
    };
    for l in 0..nl {
        if cfg.dropout().is_some() && l + 1 < nl {
            push(l, 0, MaskKind::LayerOutput, cfg.output_size());
        }
        for d in 0..nd {
            if cfg.input_dropout().is_some() {
                push(l, d, MaskKind::LayerInput, cfg.layer_input_size(l));
            }
            if cfg.recurrent_dropout().is_some() {
                push(l, d, MaskKind::RecurrentH, cfg.hidden_out_size());
            }
            if cfg.zoneout().is_some() {
                push(l, d, MaskKind::ZoneoutH, cfg.hidden_out_size());
            }
            if cfg.zoneout_cell().is_some() {
                push(l, d, MaskKind::ZoneoutC, cfg.hidden_size());
            }
        }
    }
    out
}

/// Masks given as bits instead of drawn (see [the module docs](self#reading-masks-back-and-supplying-them)):
/// per site, `[steps, rows, units]` hits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuppliedMasks {
    /// By the site's tag.
    sites: BTreeMap<u32, SiteBits>,
}

/// One site's hits: `[steps, rows]` rows of `words` bit words, bit `u mod 32` of word `u / 32`
/// the hit of unit `u` (no hits past `units`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SiteBits {
    kind: MaskKind,
    steps: usize,
    rows: usize,
    units: usize,
    bits: Vec<u32>,
}

impl SuppliedMasks {
    /// No masks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mask of `site` (replacing an earlier one): `hits` is `[steps, rows, units]`,
    /// `true` where the unit is hit (dropped; for zoneout, kept at its previous value), `steps` 1
    /// for a per-sequence kind (recurrent and input dropout). Errors name `hits` (not `steps ·
    /// rows · units` long) or `steps` (not 1 for a per-sequence kind).
    pub fn insert(&mut self, site: MaskSite, steps: usize, rows: usize, units: usize, hits: &[bool]) -> Result<()> {
        if site.kind.per_sequence() && steps != 1 {
            return Err(Error::invalid("steps", format!("1 for a per-sequence mask ({:?})", site.kind), steps));
        }
        let n = steps.checked_mul(rows).and_then(|v| v.checked_mul(units));
        if n != Some(hits.len()) {
            return Err(Error::invalid("hits", format!("[steps {steps}, rows {rows}, units {units}] booleans"), hits.len()));
        }
        let words = units.div_ceil(32);
        let mut bits = Vec::new();
        bits.try_reserve_exact(steps * rows * words).map_err(|_| Error::invalid("hits", "a mask that fits in memory", hits.len()))?;
        for row in hits.chunks(units.max(1)).take(steps * rows) {
            for w in row.chunks(32) {
                bits.push(w.iter().enumerate().fold(0u32, |acc, (j, &h)| acc | (h as u32) << j));
            }
        }
        bits.resize(steps * rows * words, 0);
        self.sites.insert(site.tag, SiteBits { kind: site.kind, steps, rows, units, bits });
        Ok(())
    }

    /// The mask of `site` as `(steps, rows, units, hits)`, `hits` `[steps, rows, units]`;
    /// `None` if it was not supplied.
    pub fn get(&self, site: MaskSite) -> Option<(usize, usize, usize, Vec<bool>)> {
        let s = self.sites.get(&site.tag)?;
        let words = s.units.div_ceil(32);
        let mut hits = Vec::with_capacity(s.steps * s.rows * s.units);
        for row in s.bits.chunks(words.max(1)).take(s.steps * s.rows) {
            hits.extend((0..s.units).map(|u| (row[u / 32] >> (u % 32)) & 1 == 1));
        }
        Some((s.steps, s.rows, s.units, hits))
    }

    /// The masks a training call of `cfg` on `shape` with `stream` reads ([`required_sites`]),
    /// drawn from it: the call's masks read back, to inspect or to supply again. Their
    /// probabilities are `cfg`'s.
    pub fn drawn(stream: &MaskStream, cfg: &RnnConfig, shape: &SeqShape) -> Result<Self> {
        let mut out = SuppliedMasks::new();
        for need in required_sites(cfg, shape) {
            let p = match need.site.kind {
                MaskKind::LayerOutput => cfg.dropout(),
                MaskKind::RecurrentH => cfg.recurrent_dropout(),
                MaskKind::LayerInput => cfg.input_dropout(),
                MaskKind::ZoneoutH => cfg.zoneout(),
                MaskKind::ZoneoutC => cfg.zoneout_cell(),
            };
            let threshold = Threshold::new("p", p.unwrap_or(0.0))?;
            let mut hits = vec![false; need.steps * need.rows * need.units];
            for (i, row) in hits.chunks_mut(need.units.max(1)).enumerate().take(need.steps * need.rows) {
                stream.fill_hits(need.site, i / need.rows.max(1), i % need.rows.max(1), threshold, row)?;
            }
            out.insert(need.site, need.steps, need.rows, need.units, &hits)?;
        }
        Ok(out)
    }

    /// The bit words of `site`'s row `row` at `step` (empty outside the supplied extent).
    pub(crate) fn words(&self, site: MaskSite, step: usize, row: usize) -> &[u32] {
        match self.sites.get(&site.tag) {
            Some(s) if step < s.steps && row < s.rows => {
                let words = s.units.div_ceil(32);
                let at = (step * s.rows + row) * words;
                &s.bits[at..at + words]
            }
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(layer: usize, direction: usize, kind: MaskKind) -> MaskSite {
        MaskSite::new(layer, direction, kind).unwrap()
    }

    /// The layout as documented, written out: the call key, then the counter of each unit.
    #[test]
    fn masks_follow_the_documented_layout() {
        let (seed, offset) = (0x0123_4567_89ab_cdef_u64, 0x0000_0007_0000_0003_u64);
        let s = MaskStream::new(seed, offset);
        let k = philox4x32_10([3, 7, 0, 0], [0x89ab_cdef, 0x0123_4567]);
        assert_eq!(s.key(), [k[0], k[1]]);
        let t = Threshold::new("p", 0.37).unwrap();
        for (layer, direction, kind, step) in
            [(0, 0, MaskKind::LayerOutput, 5), (3, 1, MaskKind::ZoneoutC, 11), (2, 1, MaskKind::RecurrentH, 0)]
        {
            let site = site(layer, direction, kind);
            for units in [1, 3, 4, 5, 11, 64] {
                let row = 9;
                let mut hit = vec![false; units];
                s.fill_hits(site, step, row, t, &mut hit).unwrap();
                let mut factors = vec![7.0f32; units];
                s.fill_factors(site, step, row, t, 2.5f32, &mut factors).unwrap();
                for u in 0..units {
                    let tag = (layer as u32) << 4 | (direction as u32) << 3 | kind as u32;
                    let word = philox4x32_10([(u / 4) as u32, row as u32, step as u32, tag], s.key())[u % 4];
                    assert_eq!(hit[u], u64::from(word) < t.bound(), "unit {u} of {units}, {kind:?}");
                    assert_eq!(factors[u], if hit[u] { 0.0 } else { 2.5 }, "unit {u} of {units}, {kind:?}");
                }
            }
        }
    }

    /// A stream from step `k`: its step `t` is the new stream's step `k + t` for the per-step
    /// kinds, and the per-sequence kinds do not move; a step past `2³² - 1` is an error.
    #[test]
    fn a_stream_from_a_step_draws_that_steps_masks() {
        let s = MaskStream::new(11, 4);
        let t = Threshold::new("p", 0.5).unwrap();
        let draw = |s: &MaskStream, kind, step| {
            let mut hit = vec![false; 37];
            s.fill_hits(site(1, 0, kind), step, 2, t, &mut hit).unwrap();
            hit
        };
        let from = s.from_step(6).unwrap();
        assert_eq!(from.first_step(), 6);
        for kind in [MaskKind::LayerOutput, MaskKind::ZoneoutH, MaskKind::ZoneoutC] {
            assert_eq!(draw(&from, kind, 0), draw(&s, kind, 6), "{kind:?}");
            assert_eq!(draw(&from, kind, 3), draw(&s, kind, 9), "{kind:?}");
            assert_ne!(draw(&from, kind, 0), draw(&s, kind, 0), "{kind:?}");
        }
        for kind in [MaskKind::RecurrentH, MaskKind::LayerInput] {
            assert_eq!(draw(&from, kind, 0), draw(&s, kind, 0), "{kind:?}");
        }
        let last = s.from_step((1 << 32) - 1).unwrap();
        let mut hit = [false; 4];
        last.fill_hits(site(0, 0, MaskKind::ZoneoutH), 0, 0, t, &mut hit).unwrap();
        let e = last.fill_hits(site(0, 0, MaskKind::ZoneoutH), 1, 0, t, &mut hit).unwrap_err().to_string();
        assert!(e.contains("`step`") && e.contains("first step"), "{e}");
        let e = s.from_step(1 << 32).unwrap_err().to_string();
        assert!(e.contains("`first`") && e.contains("4294967296"), "{e}");
    }

    #[test]
    fn bad_positions_are_errors_naming_the_argument() {
        let e = MaskSite::new(MaskSite::MAX_LAYER + 1, 0, MaskKind::LayerOutput).unwrap_err().to_string();
        assert!(e.contains("layer") && e.contains(&(MaskSite::MAX_LAYER + 1).to_string()), "{e}");
        let e = MaskSite::new(0, 2, MaskKind::ZoneoutH).unwrap_err().to_string();
        assert!(e.contains("direction") && e.contains('2'), "{e}");
        let s = MaskStream::new(1, 0);
        let t = Threshold::new("p", 0.5).unwrap();
        let mut hit = [false; 8];
        let e = s.fill_hits(site(0, 0, MaskKind::RecurrentH), 3, 0, t, &mut hit).unwrap_err().to_string();
        assert!(e.contains("step") && e.contains("per-sequence"), "{e}");
        let e = s.fill_hits(site(0, 0, MaskKind::ZoneoutH), 1 << 32, 0, t, &mut hit).unwrap_err().to_string();
        assert!(e.contains("step") && e.contains("4294967296"), "{e}");
        let e = s.fill_hits(site(0, 0, MaskKind::ZoneoutH), 0, 1 << 32, t, &mut hit).unwrap_err().to_string();
        assert!(e.contains("row"), "{e}");
    }

    /// Over `rows · units` draws at each probability, the hit fraction is within 4 standard
    /// deviations of `p`.
    #[test]
    #[cfg_attr(miri, ignore = "statistics over 2^19 draws: minutes under Miri; no unsafe code here")]
    fn hit_fractions_are_within_four_sigma() {
        let (rows, units, steps) = (64, 256, 32);
        for p in [0.05, 0.3, 0.5, 0.9] {
            let t = Threshold::new("p", p).unwrap();
            let s = MaskStream::new(42, 1);
            let mut hits = 0usize;
            let mut hit = vec![false; units];
            for step in 0..steps {
                for row in 0..rows {
                    s.fill_hits(site(1, 0, MaskKind::LayerOutput), step, row, t, &mut hit).unwrap();
                    hits += hit.iter().filter(|&&h| h).count();
                }
            }
            let n = (rows * units * steps) as f64;
            let sigma = (p * (1.0 - p) / n).sqrt();
            let frac = hits as f64 / n;
            assert!((frac - p).abs() < 4.0 * sigma, "p {p}: hit fraction {frac} over {n} draws, sigma {sigma:.2e}");
        }
    }

    /// Pearson's correlation of two 0/1 vectors.
    fn correlation(a: &[bool], b: &[bool]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().filter(|&&x| x).count() as f64 / n, b.iter().filter(|&&x| x).count() as f64 / n);
        let cov = a.iter().zip(b).map(|(&x, &y)| (x as u8 as f64 - ma) * (y as u8 as f64 - mb)).sum::<f64>() / n;
        cov / (ma * (1.0 - ma) * mb * (1.0 - mb)).sqrt()
    }

    /// Masks that differ in one coordinate (step, row, layer, direction, kind, seed, offset) are
    /// uncorrelated: |r| below 4/√n over n = 2¹⁶ units each, and not equal.
    #[test]
    #[cfg_attr(miri, ignore = "statistics over 2^16 draws per mask: minutes under Miri; no unsafe code here")]
    fn masks_of_different_positions_are_uncorrelated() {
        let n = 1 << 16;
        let t = Threshold::new("p", 0.5).unwrap();
        let draw = |seed: u64, offset: u64, layer: usize, direction: usize, kind: MaskKind, step: usize, row: usize| {
            let mut hit = vec![false; n];
            MaskStream::new(seed, offset).fill_hits(site(layer, direction, kind), step, row, t, &mut hit).unwrap();
            hit
        };
        let base = draw(7, 0, 1, 0, MaskKind::ZoneoutH, 0, 0);
        let others = [
            ("step", draw(7, 0, 1, 0, MaskKind::ZoneoutH, 1, 0)),
            ("row", draw(7, 0, 1, 0, MaskKind::ZoneoutH, 0, 1)),
            ("layer", draw(7, 0, 2, 0, MaskKind::ZoneoutH, 0, 0)),
            ("direction", draw(7, 0, 1, 1, MaskKind::ZoneoutH, 0, 0)),
            ("kind", draw(7, 0, 1, 0, MaskKind::ZoneoutC, 0, 0)),
            ("kind (per sequence)", draw(7, 0, 1, 0, MaskKind::RecurrentH, 0, 0)),
            ("seed", draw(8, 0, 1, 0, MaskKind::ZoneoutH, 0, 0)),
            ("offset", draw(7, 1, 1, 0, MaskKind::ZoneoutH, 0, 0)),
            ("seed and offset swapped", draw(0, 7, 1, 0, MaskKind::ZoneoutH, 0, 0)),
        ];
        let limit = 4.0 / (n as f64).sqrt();
        for (what, other) in &others {
            let r = correlation(&base, other);
            assert!(r.abs() < limit, "masks differing in {what}: correlation {r:.4} (limit {limit:.4})");
        }
        // Neighbouring units within one Philox block and across blocks.
        let (even, odd): (Vec<bool>, Vec<bool>) = base.chunks(2).map(|c| (c[0], c[1])).unzip();
        let r = correlation(&even, &odd);
        let limit = 4.0 / ((n / 2) as f64).sqrt();
        assert!(r.abs() < limit, "neighbouring units: correlation {r:.4} (limit {limit:.4})");
    }

    /// The call keys of nearby seeds and offsets are all distinct (a seed offset by one is not
    /// the next call's key, as it would be with `seed + offset`).
    #[test]
    fn call_keys_are_distinct() {
        let mut keys: Vec<[u32; 2]> = (0..64).flat_map(|seed| (0..64).map(move |offset| MaskStream::new(seed, offset).key())).collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }
}
