//! The layer wavefront of a unidirectional stack: the time axis cut into chunks of `K` steps,
//! layer `l`'s chunk `c` on stream `l mod 2` after layer `l-1` (forward) or `l+1` (backward)
//! finished that chunk, the work issued in diagonals (`d = 0, 1, ...`: for each layer `l`,
//! chunk `c = d - l`), so that two streams pipeline a stack of any depth.

use super::super::exec::{Event, Exec};
use super::backward::BackwardLayer;
use super::forward::DirForward;
use crate::backend::host::dropout::Dropout;
use crate::config::RnnConfig;
use crate::error::Result;
use crate::shape::SeqShape;

/// The layer wavefront's chunk `K` for a call, or `None` when the layers run one after the
/// other: bidirectional stacks (a layer's output at step t needs its reverse direction's whole
/// sequence), reverse-only stacks (whose chunks would run backwards in time: not implemented,
/// they run layer by layer), a single layer, or the switch off (`Paths::wavefront`). The caller also
/// keeps today's order when a layer takes a persistent kernel (one launch for the whole
/// sequence cannot be cut into chunks).
///
/// `K = max(ceil(T / 16), ceil(512 / B))`, at most `T` (or the call's forced chunk): each
/// chunk's input-projection GEMM has at least 512 rows (`K·B`), big enough for cuBLAS to
/// fill the GPU with tiles, and a stack of `L` layers runs in at most `16 + L - 1` diagonals.
pub(crate) fn wavefront_chunk(exec: &Exec<'_>, cfg: &RnnConfig, shape: &SeqShape) -> Option<usize> {
    let paths = exec.paths();
    if !paths.wavefront || cfg.num_directions() != 1 || cfg.reverse_only() || cfg.num_layers() < 2 {
        return None;
    }
    let (t, b) = (shape.steps(), shape.batch().max(1));
    let k = if paths.wavefront_chunk > 0 { paths.wavefront_chunk } else { t.div_ceil(16).max(512usize.div_ceil(b)) };
    Some(k.clamp(1, t.max(1)))
}

/// The work of a wavefront: for the `j`-th layer in issue order, its stream, its chunk `c`
/// (what the next layer waits for), and what follows its last chunk.
trait Wave {
    fn stream(&self, j: usize) -> usize;
    fn chunk(&self, exec: &Exec<'_>, j: usize, c: usize, si: usize) -> Result<()>;
    fn finish(&self, exec: &Exec<'_>, j: usize, si: usize) -> Result<()>;
}

/// Runs `wave`'s chunk `c` of `chunks` of its `j`-th of `layers` layers on its stream `si`, in
/// diagonals, after waiting for the event the layer before it recorded after its chunk `c`;
/// after a layer's last chunk (and its event), its `finish`. Stream 1 first waits for stream 0,
/// and stream 0 for stream 1 at the end. Every buffer was allocated (on stream 0) before.
fn diagonals(exec: &Exec<'_>, layers: usize, chunks: usize, wave: &impl Wave) -> Result<()> {
    exec.order(1, 0)?;
    // done[j][c]: the j-th layer has finished its chunk c (kept until the end of the call).
    let mut done: Vec<Vec<Event>> = (0..layers).map(|_| Vec::with_capacity(chunks)).collect();
    for diag in 0..chunks + layers - 1 {
        for j in 0..layers {
            let Some(c) = diag.checked_sub(j).filter(|&c| c < chunks) else { continue };
            let si = wave.stream(j);
            if j > 0 {
                exec.wait(si, &done[j - 1][c])?;
            }
            wave.chunk(exec, j, c, si)?;
            done[j].push(exec.record(si)?);
            if c + 1 == chunks {
                wave.finish(exec, j, si)?;
            }
        }
    }
    exec.order(0, 1)
}

/// The forward pass of a unidirectional stack as a layer wavefront: layer `l`'s chunk `c` is
/// its input-projection GEMM for those steps, then its per-step loop over them, so that layer
/// `l+1` runs chunk `c` while layer `l` runs chunk `c+1`. Layer 0 keeps its whole-sequence
/// projection (issued before its first chunk): only the projections of layers ≥ 1 have `K·B`
/// rows instead of `T·B`. With `dropout` (a training pass's), each layer but the last then drops
/// the chunk's rows of its output in place, before the next layer's chunk reads them.
pub(super) fn forward_wavefront(exec: &Exec<'_>, layers: &[Vec<DirForward>], k: usize, dropout: Option<&Dropout>) -> Result<()> {
    let t = layers[0][0].dims.t;
    diagonals(exec, layers.len(), t.div_ceil(k), &ForwardWave { layers, k, t, dropout })
}

struct ForwardWave<'l> {
    layers: &'l [Vec<DirForward>],
    k: usize,
    t: usize,
    dropout: Option<&'l Dropout>,
}

impl Wave for ForwardWave<'_> {
    fn stream(&self, l: usize) -> usize {
        l % 2
    }

    fn chunk(&self, exec: &Exec<'_>, l: usize, c: usize, si: usize) -> Result<()> {
        let dir = &self.layers[l][0];
        let ks = c * self.k..((c + 1) * self.k).min(self.t);
        // XG rows of the chunk (layer 0: all T·B rows, once).
        match (l, c) {
            (0, 0) => dir.project(exec, si, 0..self.t)?,
            (0, _) => {}
            _ => dir.project(exec, si, ks.clone())?,
        }
        dir.steps(exec, si, ks.clone())?;
        // The chunk's rows of the output, final once its steps ran (a step reads its h_prev from
        // the states `h`, never from the output), dropped before the event the next layer waits
        // for; its later chunks write other rows.
        match self.dropout {
            Some(d) if l + 1 < self.layers.len() => exec.dropout(si, dir.io.out, ks, dir.dims.b, dir.dims.out_w, d, l),
            _ => Ok(()),
        }
    }

    fn finish(&self, _exec: &Exec<'_>, _l: usize, _si: usize) -> Result<()> {
        Ok(())
    }
}

/// The backward pass of a unidirectional stack as a layer wavefront, `layers` from the last
/// layer to the first: the processing order (`t = T-1` down to 0) cut into chunks of `k` steps;
/// layer `l`'s chunk `c` is its step loop over those steps, then, for `l ≥ 1`, the rows of its
/// `dX = dGi · W_ih` for them, which are layer `l-1`'s `dy` (with `dropout`, multiplied by
/// the factors of layer `l-1`'s masks at those steps: the gradient of its dropped output). A
/// layer's weight gradients, `dh0`, `dc0` follow its last chunk on its stream (whole-sequence
/// GEMMs, as without the wavefront), and layer 0's `dx` is one whole-sequence GEMM after them.
pub(super) fn backward_wavefront(exec: &Exec<'_>, layers: &[BackwardLayer], k: usize, dropout: Option<&Dropout>) -> Result<()> {
    let t = layers[0].dirs[0].dims.t;
    diagonals(exec, layers.len(), t.div_ceil(k), &BackwardWave { layers, k, t, dropout })
}

struct BackwardWave<'l> {
    layers: &'l [BackwardLayer],
    k: usize,
    t: usize,
    dropout: Option<&'l Dropout>,
}

impl Wave for BackwardWave<'_> {
    fn stream(&self, j: usize) -> usize {
        self.layers[j].l % 2
    }

    fn chunk(&self, exec: &Exec<'_>, j: usize, c: usize, si: usize) -> Result<()> {
        let (layer, dir) = (&self.layers[j], &self.layers[j].dirs[0]);
        if c == 0 {
            dir.begin(exec, si)?;
        }
        let ks = c * self.k..((c + 1) * self.k).min(self.t);
        dir.steps(exec, si, ks.clone())?;
        let (l, d_in) = match layer.d_in {
            Some(d_in) if layer.l > 0 => (layer.l, d_in),
            _ => return Ok(()),
        };
        // The chunk's steps are t = T - ks.end .. T - ks.start.
        let rows = self.t - ks.end..self.t - ks.start;
        dir.input_grad(exec, si, rows.clone(), d_in)?;
        match self.dropout {
            Some(d) => exec.dropout(si, d_in, rows, dir.dims.b, dir.dims.input, d, l - 1),
            None => Ok(()),
        }
    }

    fn finish(&self, exec: &Exec<'_>, j: usize, si: usize) -> Result<()> {
        let (layer, dir) = (&self.layers[j], &self.layers[j].dirs[0]);
        dir.end(exec, si)?;
        match layer.d_in {
            Some(dx) if layer.l == 0 => dir.input_grad(exec, si, 0..self.t, dx),
            _ => Ok(()),
        }
    }
}
