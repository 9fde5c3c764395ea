//! Attention on the device (f32): the driver's attention (`driver/attention.rs`,
//! kernels/attention.cu)
//!
//! - on device buffers, the [`Cuda`] methods `attention_memory`, `attention_forward_with`,
//!   `attention_backward_with` and `attention_memory_backward`: the memory, the outputs and the
//!   gradients stay on the device ([`CudaAttentionMemory`], [`CudaAttentionOutput`], ...), for a
//!   decoder that runs on [`Cuda`] with no host round trip;
//! - [`AttentionBackend`] for [`CudaHost`] on host slices: each call uploads its inputs, runs the
//!   same functions and downloads its results; the [`AttentionMemory`] stays on the host between
//!   calls (it is uploaded with each call over it).

use super::buffer::View;
use super::driver::attention::{
    self, DeviceAttentionGrads, DeviceAttentionMemory, DeviceAttentionMemoryGrads, DeviceAttentionOutput, DeviceAttentionUpstream, Stage,
};
use super::exec::Exec;
use super::{Cuda, CudaBuf, CudaHost};
use crate::attention::{
    AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream,
};
use crate::error::Result;

/// The device as the stage of a host-slice call: device buffers, the call lock held while the
/// work is enqueued (stream 0).
impl Stage for Cuda {
    type Buf = CudaBuf<f32>;

    fn up(&self, host: &[f32]) -> Result<CudaBuf<f32>> {
        self.upload(host)
    }

    fn out(&self, n: usize) -> Result<CudaBuf<f32>> {
        self.zeros(n)
    }

    fn view(&self, b: &CudaBuf<f32>) -> View {
        Cuda::view(self, b)
    }

    fn run(&self, f: &mut dyn FnMut(&Exec<'_>) -> Result<()>) -> Result<()> {
        let target = self.dev.lock()?;
        f(&Exec::new(&target))
    }

    fn down(&self, b: &CudaBuf<f32>, host: &mut [f32]) -> Result<()> {
        self.download_into(b, host)
    }
}

/// An attention memory on the device ([`Cuda::attention_memory`]): the keys with their padding
/// zeroed and their projection.
pub type CudaAttentionMemory = DeviceAttentionMemory<CudaBuf<f32>>;
/// A forward's weights, context and attentional hidden state on the device.
pub type CudaAttentionOutput = DeviceAttentionOutput<CudaBuf<f32>>;
/// The incoming gradients of a backward on the device, each optional.
pub type CudaAttentionUpstream<'a> = DeviceAttentionUpstream<'a, CudaBuf<f32>>;
/// The gradients w.r.t. a [`CudaAttentionMemory`], accumulated on the device over the backward
/// calls that read it ([`Cuda::attention_memory_grads`] makes them, zero).
pub type CudaAttentionMemoryGrads = DeviceAttentionMemoryGrads<CudaBuf<f32>>;
/// A backward's gradients on the device.
pub type CudaAttentionGrads = DeviceAttentionGrads<CudaBuf<f32>>;

/// Attention on device buffers (f32): what [`AttentionBackend`] computes on host slices, with
/// every input, output and the memory in device memory, and the same checks (errors naming the
/// argument). All work is ordered on the backend's stream 0; a result is ready for the
/// backend's later calls, and for the caller's own work after [`Cuda::synchronize`].
impl Cuda {
    /// The keys' side of an attention (`keys [S, B, Hk]`, `params` the flat layout), made once
    /// for every call over the same keys.
    pub fn attention_memory(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &CudaBuf<f32>,
        keys: &CudaBuf<f32>,
    ) -> Result<CudaAttentionMemory> {
        attention::memory_on(self, cfg, shape, params, keys)
    }

    /// The memory of the sequences `rows` of `memory` (`rows[r]`: the sequence row `r` reads;
    /// repeats allowed), on the device: a beam search's hypotheses each attend over their own
    /// sequence's keys ([`AttentionMemory::gather`] on the host). An error naming `rows[i]` for a
    /// sequence out of range.
    pub fn attention_memory_gather(&self, memory: &CudaAttentionMemory, rows: &[usize]) -> Result<CudaAttentionMemory> {
        attention::gather_on(self, memory, rows)
    }

    /// Zero gradients for `memory`, for [`attention_backward_with`](Self::attention_backward_with)
    /// to add into.
    pub fn attention_memory_grads(&self, memory: &CudaAttentionMemory) -> Result<CudaAttentionMemoryGrads> {
        Ok(DeviceAttentionMemoryGrads { d_keys: self.zeros(memory.keys.slice.len())?, d_proj: self.zeros(memory.proj.slice.len())? })
    }

    /// The forward of `queries [Tq, B, Hq]` over `memory`: weights `[Tq, B, S]`, context
    /// `[Tq, B, Hk]`, attentional hidden state `[Tq, B, O]`.
    pub fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &CudaBuf<f32>,
        memory: &CudaAttentionMemory,
        queries: &CudaBuf<f32>,
    ) -> Result<CudaAttentionOutput> {
        attention::forward_on(self, cfg, shape, params, memory, queries)
    }

    /// The backward of the forward call `out`: the queries' and the parameters' gradients, the
    /// keys' side's added into `d_memory`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &CudaBuf<f32>,
        memory: &CudaAttentionMemory,
        queries: &CudaBuf<f32>,
        out: &CudaAttentionOutput,
        up: CudaAttentionUpstream<'_>,
        d_memory: &mut CudaAttentionMemoryGrads,
    ) -> Result<CudaAttentionGrads> {
        attention::backward_on(self, cfg, shape, params, memory, queries, out, up, d_memory)
    }

    /// The keys' (`d_keys`, 0 at the padding) and the projection weight's gradients from the
    /// memory's accumulated gradients, once after the backward calls over it.
    pub fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &CudaBuf<f32>,
        memory: &CudaAttentionMemory,
        d_memory: &CudaAttentionMemoryGrads,
    ) -> Result<CudaAttentionGrads> {
        attention::memory_backward_on(self, cfg, shape, params, memory, d_memory)
    }
}

/// f32 storage (the attention's types are the [`Float`](crate::Float) ones; the CUDA backend
/// computes f32).
impl AttentionBackend<f32> for CudaHost {
    fn attention_memory(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
    ) -> Result<AttentionMemory<f32>> {
        attention::memory(&self.0, cfg, shape, params, keys)
    }

    fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
    ) -> Result<AttentionOutput<f32>> {
        attention::forward_with(&self.0, cfg, shape, params, memory, queries)
    }

    fn attention_backward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
        out: &AttentionOutput<f32>,
        up: AttentionUpstream<'_, f32>,
        d_memory: &mut AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        attention::backward_with(&self.0, cfg, shape, params, memory, queries, out, up, d_memory)
    }

    fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        d_memory: &AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        attention::memory_backward(&self.0, cfg, shape, params, memory, d_memory)
    }
}
