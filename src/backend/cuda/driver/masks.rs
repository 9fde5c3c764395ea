//! Masks supplied by the caller on the CUDA driver ([`MaskStream::supplied`]): a training pass
//! uploads the bits of the sites it reads ([`required_sites`]) once, before any work, into
//! [`DeviceMasks`] (kept in the reserve, so backward reads the same bits), and the mask kernels
//! (kernels/dropout.cu, kernels/zoneout.cu) read them instead of drawing with Philox
//! (kernels/masks.cuh has the layout). A drawn stream uploads nothing.
//!
//! Only the call's own part is uploaded: its steps of a per-step kind (a decoder's step,
//! `MaskStream::from_step`, uploads that one step, not the sequence's masks so far), its rows,
//! and the words of its units, so a call's upload is the size of the masks it reads.

use super::super::buffer::RawBuf;
use super::super::exec::Exec;
use crate::config::RnnConfig;
use crate::error::{Error, Result};
use crate::masks::{required_sites, MaskStream};
use crate::shape::SeqShape;

/// Where a mask kernel reads one site's supplied bits: `ptr` (null: the kernel draws), the
/// site's first step (`hits_step0`) and the words per row (`hits_words`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SiteHits {
    pub ptr: u64,
    pub step0: i32,
    pub words: i32,
}

impl SiteHits {
    /// No bits: the kernel draws its masks.
    pub const DRAWN: SiteHits = SiteHits { ptr: 0, step0: 0, words: 0 };
}

/// The device copies of a call's supplied masks, by the site's tag (none for drawn masks).
#[derive(Debug, Clone, Default)]
pub(crate) struct MaskViews(Vec<(u32, SiteHits)>);

impl MaskViews {
    /// The bits of the site of tag `tag`, if uploaded.
    pub fn get(&self, tag: u32) -> Option<SiteHits> {
        self.0.iter().find(|(t, _)| *t == tag).map(|&(_, h)| h)
    }
}

/// A training pass's supplied masks on the device: the buffers and their views.
#[derive(Debug, Default)]
pub(crate) struct DeviceMasks {
    bufs: Vec<RawBuf>,
    views: MaskViews,
}

impl DeviceMasks {
    /// The bits of `stream`'s supplied masks that a training pass of `cfg` over `shape` reads,
    /// uploaded; `None` for a drawn stream. The masks are checked first
    /// ([`MaskStream::check_for`]: each site there with at least the call's steps, rows and
    /// units; an error naming `masks`).
    pub fn upload(exec: &Exec<'_>, stream: &MaskStream, cfg: &RnnConfig, shape: &SeqShape) -> Result<Option<DeviceMasks>> {
        let Some(supplied) = stream.supplied_masks() else { return Ok(None) };
        stream.check_for(cfg, shape)?;
        let fits = |n: usize, what: &str| i32::try_from(n).map_err(|_| Error::invalid("masks", format!("{what} below 2^31"), n));
        let mut out = DeviceMasks::default();
        for need in required_sites(cfg, shape) {
            let step0 = if need.site.kind().per_sequence() { 0 } else { stream.first_step() };
            let words = need.units.div_ceil(32);
            // The words as i32, the type of the target's upload (the same bits).
            let mut bits: Vec<i32> = Vec::new();
            bits.try_reserve_exact((need.steps * need.rows * words).max(1))
                .map_err(|_| Error::invalid("masks", "supplied masks that fit in memory", need.steps * need.rows * words))?;
            for t in 0..need.steps {
                for b in 0..need.rows {
                    // check_for: the supplied extent covers these steps, rows and units.
                    let row = supplied.words(need.site, step0 + t, b);
                    let row = row.get(..words).ok_or_else(|| {
                        Error::invalid(
                            "masks",
                            format!("supplied masks of {:?} covering step {}, row {b}", need.site.kind(), step0 + t),
                            "less",
                        )
                    })?;
                    bits.extend(row.iter().map(|&w| w as i32));
                }
            }
            // An empty site (no rows or units) still gets a buffer: its kernels do nothing.
            if bits.is_empty() {
                bits.push(0);
            }
            let buf = exec.upload_i32(&bits)?;
            let hits = SiteHits { ptr: buf.ptr(), step0: fits(step0, "the first step")?, words: fits(words, "the words of a row")? };
            out.views.0.push((need.site.tag(), hits));
            out.bufs.push(buf);
        }
        Ok(Some(out))
    }

    /// The views the kernels read.
    pub fn views(&self) -> MaskViews {
        self.views.clone()
    }
}
