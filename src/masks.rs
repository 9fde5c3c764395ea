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
//! `kind` the [`MaskKind`]'s number.
//!
//! A word `u` is a *hit* when `u < round(p·2³²)` ([`Threshold`]): for dropout the unit is
//! dropped (the kept ones are scaled by `1/(1-p)`), for zoneout the unit keeps its previous
//! value. Integer comparisons only, so a mask is the same bits everywhere.

use crate::error::{Error, Result};
use crate::philox::{key_of_seed, philox4x32_10, philox4x32_10_x8_below, Threshold};

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
}

/// The masks of one call: the key derived from `(seed, offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskStream {
    key: [u32; 2],
}

impl MaskStream {
    /// The stream of call `offset` of a run seeded with `seed`.
    pub fn new(seed: u64, offset: u64) -> Self {
        let w = philox4x32_10([offset as u32, (offset >> 32) as u32, 0, 0], key_of_seed(seed));
        MaskStream { key: [w[0], w[1]] }
    }

    /// The call's Philox key.
    pub fn key(self) -> [u32; 2] {
        self.key
    }

    /// The 4 words deciding units `4·group … 4·group + 3` of `row` at `step` and `site`.
    #[inline]
    pub fn words(self, site: MaskSite, step: u32, row: u32, group: u32) -> [u32; 4] {
        philox4x32_10([group, row, step, site.tag], self.key)
    }

    /// Writes into `hit[u]`, for the units `u` of `hit`, whether unit `u` of `row` at `step`
    /// and `site` is a hit of `threshold`. For a per-sequence kind `step` must be 0: an error
    /// naming `step` otherwise. Units past `4·2³²` are an error naming `hit`.
    pub fn fill_hits(self, site: MaskSite, step: usize, row: usize, threshold: Threshold, hit: &mut [bool]) -> Result<()> {
        let (step, row) = self.position(site, step, row, hit.len())?;
        self.fill_hits_at(site, step, row, threshold, hit);
        Ok(())
    }

    /// [`fill_hits`](Self::fill_hits) at a position already checked: at most `4·2³²` units.
    pub(crate) fn fill_hits_at(self, site: MaskSite, step: u32, row: u32, threshold: Threshold, hit: &mut [bool]) {
        self.for_each_hit_word(site, step, row, threshold, hit.len(), |base, bits| {
            for (u, h) in hit[base..].iter_mut().take(32).enumerate() {
                *h = (bits >> u) & 1 == 1;
            }
        });
    }

    /// The hits of `threshold` of units `0..32·bits.len()` of `row` at `step` and `site` as bit
    /// words: bit `u mod 32` of `bits[u / 32]` is unit `u`'s (the units past those the caller
    /// uses are drawn too). The position is already checked (as by [`fill_hits`](Self::fill_hits)).
    pub(crate) fn hit_bits_at(self, site: MaskSite, step: u32, row: u32, threshold: Threshold, bits: &mut [u32]) {
        self.for_each_hit_word(site, step, row, threshold, bits.len() * 32, |base, b| bits[base / 32] = b);
    }

    /// Calls `f(base, bits)` for `base` = 0, 32, … below `units`, with bit `u` of `bits` the hit
    /// of unit `base + u` ([`philox4x32_10_x8_below`]: 8 counters at once).
    #[inline]
    fn for_each_hit_word(self, site: MaskSite, step: u32, row: u32, threshold: Threshold, units: usize, mut f: impl FnMut(usize, u32)) {
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
        self,
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

    fn position(self, site: MaskSite, step: usize, row: usize, units: usize) -> Result<(u32, u32)> {
        if site.kind.per_sequence() && step != 0 {
            return Err(Error::invalid("step", format!("0 for a per-sequence mask ({:?})", site.kind), step));
        }
        let step = u32::try_from(step).map_err(|_| Error::invalid("step", "below 2^32", step))?;
        let row = u32::try_from(row).map_err(|_| Error::invalid("row", "below 2^32", row))?;
        if units.div_ceil(4) > 1 << 32 {
            return Err(Error::invalid("hit", "at most 2^34 units", units));
        }
        Ok((step, row))
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
