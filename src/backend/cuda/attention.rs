//! [`AttentionBackend`] for [`CudaHost`] (f32): the driver's attention (`driver/attention.rs`,
//! kernels/attention.cu) on host slices, each call uploading its inputs and downloading its
//! results. The [`AttentionMemory`] stays on the host between calls (it is uploaded with each
//! call over it).

use super::buffer::View;
use super::driver::attention::{self, Stage};
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
