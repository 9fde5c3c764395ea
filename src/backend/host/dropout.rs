//! Dropout between layers on the host backends (reference and CPU; the CUDA backend launches
//! kernels/dropout.cu with the same key, bound and scale): the factors of a layer's
//! output, drawn from the call's [`MaskStream`] at each position (see [`crate::masks`]), applied
//! in place to the output forward keeps for the next layer, and to the gradient backward hands
//! down to the layer below. The same bits for any thread count: a factor depends on its
//! position only.

use super::direction::BlockWork;
use super::HostKernels;
use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::masks::{MaskKind, MaskSite, MaskStream};
use crate::philox::Threshold;

/// A dropout probability with the call's masks: what dropout between layers and the
/// variational dropouts (`variational_dropout.rs`) share, and what the CUDA kernels take.
#[derive(Debug, Clone)]
pub(crate) struct Drawn {
    pub(super) stream: MaskStream,
    pub(super) threshold: Threshold,
    pub(super) p: f64,
}

impl Drawn {
    /// Probability `p` of the option `name` with the call's `masks` (`None`: an error naming
    /// `masks`).
    pub fn new(name: &str, p: f64, masks: Option<&MaskStream>) -> Result<Self> {
        let stream = masks.cloned().ok_or_else(|| {
            Error::invalid(
                "masks",
                format!("a MaskStream for the {name} (p = {p}) of a training pass (ForwardInput::masks, or Rnn::forward_training_masked)"),
                "None",
            )
        })?;
        Ok(Drawn { stream, threshold: Threshold::new(name, p)?, p })
    }

    /// The factor of a kept unit, `1/(1-p)` rounded in `T` (as PyTorch's `1 / (1 - p)` of the
    /// tensor's type).
    pub fn scale<T: Float>(&self) -> T {
        T::ONE / T::from_f64(1.0 - self.p)
    }

    /// The call's masks.
    #[cfg(feature = "cuda")]
    pub fn stream(&self) -> &MaskStream {
        &self.stream
    }

    /// The call's Philox key (`MaskStream::key`).
    #[cfg(feature = "cuda")]
    pub fn key(&self) -> [u32; 2] {
        self.stream.key()
    }

    /// The sequence's step of the call's step 0 (`MaskStream::first_step`).
    #[cfg(feature = "cuda")]
    pub fn first_step(&self) -> usize {
        self.stream.first_step()
    }

    /// The words below this drop their unit (`round(p·2³²)`).
    #[cfg(feature = "cuda")]
    pub fn bound(&self) -> u64 {
        self.threshold.bound()
    }

    /// [`scale`](Self::scale) in f32.
    #[cfg(feature = "cuda")]
    pub fn scale_f32(&self) -> f32 {
        self.scale::<f32>()
    }
}

/// The dropout between layers of one training call.
#[derive(Debug, Clone)]
pub(crate) struct Dropout {
    drawn: Drawn,
}

impl Dropout {
    /// The dropout of probability `p` with the masks of `stream` (`None`: an error naming
    /// `masks`).
    pub fn new(p: f64, stream: Option<&MaskStream>) -> Result<Self> {
        Ok(Dropout { drawn: Drawn::new("dropout", p, stream)? })
    }

    /// The dropout of a training pass of `cfg` with the call's `masks`: `None` without dropout
    /// or with one layer (nothing between layers), an error naming `masks` when they are
    /// needed and missing. Every backend's training forward pass decides with this.
    pub fn for_training(cfg: &RnnConfig, masks: Option<&MaskStream>) -> Result<Option<Self>> {
        match cfg.dropout() {
            Some(p) if cfg.num_layers() > 1 => Ok(Some(Self::new(p, masks)?)),
            _ => Ok(None),
        }
    }

    /// The probability and the masks.
    #[cfg(feature = "cuda")]
    pub fn drawn(&self) -> &Drawn {
        &self.drawn
    }

    /// The last counter word of the masks of layer `layer`'s output.
    #[cfg(feature = "cuda")]
    pub fn tag(&self, layer: usize) -> Result<u32> {
        Ok(MaskSite::new(layer, 0, MaskKind::LayerOutput)?.tag())
    }

    /// Multiplies `data`, layer `layer`'s output (or its gradient) `[T, B, W]`, by its factors:
    /// 0 where dropped, `1/(1-p)` (rounded in `T`, as PyTorch's `1 / (1 - p)` of the tensor's
    /// type) where kept. The steps are split across `k`'s threads.
    pub fn apply<T: Float, K: HostKernels<T>>(&self, k: &K, layer: usize, data: &mut [T], batch: usize, width: usize) -> Result<()> {
        let site = MaskSite::new(layer, 0, MaskKind::LayerOutput)?;
        let scale = self.drawn.scale::<T>();
        let per_step = batch * width;
        if per_step == 0 {
            return Ok(());
        }
        let steps = data.len() / per_step;
        // One part per thread (`for_blocks` runs at most `threads()` parts), each a run of
        // whole steps.
        let parts = k.threads().clamp(1, steps.max(1));
        let per_part = steps.div_ceil(parts).max(1);
        let work = BlockWork::new(data.chunks_mut(per_part * per_step).enumerate());
        let failed = std::sync::Mutex::new(None);
        k.for_blocks(work.len(), &|i| {
            let Some((part, chunk)) = work.take(i) else { return };
            let mut factors = vec![T::ZERO; width];
            for (j, step) in chunk.chunks_mut(per_step).enumerate() {
                let t = part * per_part + j;
                for (b, row) in step.chunks_mut(width).enumerate() {
                    if let Err(e) = self.drawn.stream.fill_factors(site, t, b, self.drawn.threshold, scale, &mut factors) {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        return;
                    }
                    for (v, &f) in row.iter_mut().zip(&factors) {
                        *v *= f;
                    }
                }
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
