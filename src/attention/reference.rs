//! The specification of attention ([`super`] has the shapes and the formulas): plain loops over
//! every query and sequence, f32 or f64, nothing precomputed and nothing fused, so that every
//! other path can be tested against it and a reader can learn the maths from it.
//!
//! Forward, for query `t` of sequence `b` (`q`, the keys `k_s` for `s < len = lengths[b]`):
//! `e_s = score(q, k_s)`, `α = softmax(e)` over `s < len` (0 past it), `c = Σ_s α_s k_s`, and
//! with the attentional hidden state `h̃ = tanh(W_c [c; q])`.
//!
//! Backward, from `dα`, `dc`, `dh̃` (each optional): `dz = dh̃ ⊙ (1 - h̃²)`, `dW_c += dz [c; q]ᵀ`,
//! `[dc; dq] += W_cᵀ dz`; `dα_s += dc · k_s`, `dk_s += α_s dc`; the softmax's
//! `de_s = α_s (dα_s - Σ_j α_j dα_j)`; then each score's own backward (dot: `dq += de_s k_s`,
//! `dk_s += de_s q`; general: through `W_a`; concat and additive: through `v`, the `tanh` layer
//! and its two weight blocks).

use super::{check_backward, check_inputs, AttentionConfig, AttentionGrads, AttentionOutput, AttentionShape, AttentionUpstream, Score};
use crate::element::Float;
use crate::error::Result;

/// Where the `tanh` layer of the concat and additive scores reads its weights in the flat
/// parameters: `W_q[a, i]` at `wq + a·wq_stride + i`, `W_k[a, j]` at `wk + a·wk_stride + j`,
/// `v[a]` at `v + a`.
#[derive(Debug, Clone, Copy)]
struct TanhLayer {
    wq: usize,
    wq_stride: usize,
    wk: usize,
    wk_stride: usize,
    v: usize,
}

/// The offsets of a configuration's parameters in the flat buffer.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// General: `W_a [Hq, Hk]`.
    w_a: usize,
    /// Concat and additive.
    tanh: Option<TanhLayer>,
    /// `W_c [O, Hk + Hq]`.
    w_c: usize,
}

impl Offsets {
    fn of(cfg: &AttentionConfig) -> Result<Self> {
        let (hq, hk) = (cfg.query_size(), cfg.key_size());
        let at = |name: &str| cfg.param_range(name).map(|r| r.start);
        let tanh = match cfg.score() {
            // W_a [A, Hq + Hk] over [q; k]: the query's columns first.
            Score::Concat => {
                let w = at("weight_a")?;
                Some(TanhLayer { wq: w, wq_stride: hq + hk, wk: w + hq, wk_stride: hq + hk, v: at("v_a")? })
            }
            Score::Additive => {
                Some(TanhLayer { wq: at("weight_query")?, wq_stride: hq, wk: at("weight_key")?, wk_stride: hk, v: at("v")? })
            }
            Score::Dot | Score::General => None,
        };
        let w_a = if cfg.score() == Score::General { at("weight_a")? } else { 0 };
        let w_c = if cfg.output_size() > 0 { at("weight_c")? } else { 0 };
        Ok(Offsets { w_a, tanh, w_c })
    }
}

/// The `tanh` layer's activations `u[a] = tanh(Σ_i W_q[a, i] q_i + Σ_j W_k[a, j] k_j)`.
fn tanh_layer<T: Float>(l: TanhLayer, p: &[T], q: &[T], k: &[T], u: &mut [T]) {
    for (a, ua) in u.iter_mut().enumerate() {
        let mut z = T::ZERO;
        for (i, &qi) in q.iter().enumerate() {
            z += p[l.wq + a * l.wq_stride + i] * qi;
        }
        for (j, &kj) in k.iter().enumerate() {
            z += p[l.wk + a * l.wk_stride + j] * kj;
        }
        *ua = z.tanh();
    }
}

/// `score(q, k)`; `u` is scratch of `A` values.
fn score<T: Float>(cfg: &AttentionConfig, o: &Offsets, p: &[T], q: &[T], k: &[T], u: &mut [T]) -> T {
    let hk = cfg.key_size();
    let mut e = T::ZERO;
    match cfg.score() {
        Score::Dot => {
            for (&qi, &ki) in q.iter().zip(k) {
                e += qi * ki;
            }
        }
        Score::General => {
            for (i, &qi) in q.iter().enumerate() {
                let mut wk = T::ZERO;
                for (j, &kj) in k.iter().enumerate() {
                    wk += p[o.w_a + i * hk + j] * kj;
                }
                e += qi * wk;
            }
        }
        Score::Concat | Score::Additive => {
            let l = o.tanh.expect("concat and additive have a tanh layer");
            tanh_layer(l, p, q, k, u);
            for (a, &ua) in u.iter().enumerate() {
                e += p[l.v + a] * ua;
            }
        }
    }
    e
}

/// Backward of [`score`] for one key, from `de = ∂L/∂score`: adds into `dq`, `dk` and `dp`.
#[allow(clippy::too_many_arguments)]
fn score_backward<T: Float>(
    cfg: &AttentionConfig,
    o: &Offsets,
    p: &[T],
    q: &[T],
    k: &[T],
    de: T,
    dq: &mut [T],
    dk: &mut [T],
    dp: &mut [T],
    u: &mut [T],
) {
    let hk = cfg.key_size();
    match cfg.score() {
        Score::Dot => {
            for i in 0..q.len() {
                dq[i] += de * k[i];
                dk[i] += de * q[i];
            }
        }
        Score::General => {
            for (i, &qi) in q.iter().enumerate() {
                for (j, &kj) in k.iter().enumerate() {
                    let w = p[o.w_a + i * hk + j];
                    dq[i] += de * w * kj;
                    dk[j] += de * qi * w;
                    dp[o.w_a + i * hk + j] += de * qi * kj;
                }
            }
        }
        Score::Concat | Score::Additive => {
            let l = o.tanh.expect("concat and additive have a tanh layer");
            tanh_layer(l, p, q, k, u);
            for (a, &ua) in u.iter().enumerate() {
                dp[l.v + a] += de * ua;
                let dz = de * p[l.v + a] * (T::ONE - ua * ua);
                for (i, &qi) in q.iter().enumerate() {
                    dq[i] += p[l.wq + a * l.wq_stride + i] * dz;
                    dp[l.wq + a * l.wq_stride + i] += dz * qi;
                }
                for (j, &kj) in k.iter().enumerate() {
                    dk[j] += p[l.wk + a * l.wk_stride + j] * dz;
                    dp[l.wk + a * l.wk_stride + j] += dz * kj;
                }
            }
        }
    }
}

/// The forward pass: the weights, the context and (with `O > 0`) the attentional hidden state
/// of every query. Every argument is checked against `cfg` and `shape` first (an error naming
/// it).
pub fn forward<T: Float>(
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    keys: &[T],
    queries: &[T],
) -> Result<AttentionOutput<T>> {
    check_inputs(cfg, shape, params, keys, queries)?;
    let o = Offsets::of(cfg)?;
    let (tq, sl, bl) = (shape.queries(), shape.steps(), shape.batch());
    let (hq, hk, os) = (cfg.query_size(), cfg.key_size(), cfg.output_size());
    let mut out =
        AttentionOutput { weights: vec![T::ZERO; tq * bl * sl], context: vec![T::ZERO; tq * bl * hk], hidden: vec![T::ZERO; tq * bl * os] };
    let mut u = vec![T::ZERO; cfg.attn_size()];
    let key = |s: usize, b: usize| &keys[(s * bl + b) * hk..(s * bl + b + 1) * hk];
    for t in 0..tq {
        for (b, &len) in shape.lengths().iter().enumerate() {
            let r = t * bl + b;
            let q = &queries[r * hq..(r + 1) * hq];
            // The scores, then the softmax over the sequence's own keys (from the largest, so
            // that no exponential overflows).
            let alpha = &mut out.weights[r * sl..r * sl + len];
            for (s, e) in alpha.iter_mut().enumerate() {
                *e = score(cfg, &o, params, q, key(s, b), &mut u);
            }
            let max = alpha.iter().fold(alpha[0], |m, &e| if e > m { e } else { m });
            let mut sum = T::ZERO;
            for e in alpha.iter_mut() {
                *e = (*e - max).exp();
                sum += *e;
            }
            for e in alpha.iter_mut() {
                *e = *e / sum;
            }
            let c = &mut out.context[r * hk..(r + 1) * hk];
            for (s, &a) in alpha.iter().enumerate() {
                for (cj, &kj) in c.iter_mut().zip(key(s, b)) {
                    *cj += a * kj;
                }
            }
            // h̃ = tanh(W_c [c; q]).
            for (oi, h) in out.hidden[r * os..(r + 1) * os].iter_mut().enumerate() {
                let row = &params[o.w_c + oi * (hk + hq)..o.w_c + (oi + 1) * (hk + hq)];
                let mut z = T::ZERO;
                for (&w, &x) in row.iter().zip(c.iter().chain(q)) {
                    z += w * x;
                }
                *h = z.tanh();
            }
        }
    }
    Ok(out)
}

/// The backward pass from the forward pass's output `out` (on the same `params`, `keys` and
/// `queries`) and the incoming gradients `up`: the gradients w.r.t. the queries, the keys and
/// the parameters. Every argument is checked first (an error naming it).
pub fn backward<T: Float>(
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    keys: &[T],
    queries: &[T],
    out: &AttentionOutput<T>,
    up: AttentionUpstream<'_, T>,
) -> Result<AttentionGrads<T>> {
    check_inputs(cfg, shape, params, keys, queries)?;
    check_backward(cfg, shape, out, &up)?;
    let o = Offsets::of(cfg)?;
    let (tq, sl, bl) = (shape.queries(), shape.steps(), shape.batch());
    let (hq, hk, os) = (cfg.query_size(), cfg.key_size(), cfg.output_size());
    let mut g = AttentionGrads {
        d_queries: vec![T::ZERO; tq * bl * hq],
        d_keys: vec![T::ZERO; sl * bl * hk],
        d_params: vec![T::ZERO; params.len()],
    };
    let (mut u, mut dc, mut dalpha) = (vec![T::ZERO; cfg.attn_size()], vec![T::ZERO; hk], vec![T::ZERO; sl]);
    for t in 0..tq {
        for (b, &len) in shape.lengths().iter().enumerate() {
            let r = t * bl + b;
            let q = &queries[r * hq..(r + 1) * hq];
            let c = &out.context[r * hk..(r + 1) * hk];
            let alpha = &out.weights[r * sl..r * sl + len];
            let dq = &mut g.d_queries[r * hq..(r + 1) * hq];
            dc.fill(T::ZERO);
            if let Some(d) = up.d_context {
                dc.copy_from_slice(&d[r * hk..(r + 1) * hk]);
            }
            // h̃ = tanh(z), z = W_c [c; q].
            if let Some(dh) = up.d_hidden {
                for oi in 0..os {
                    let h = out.hidden[r * os + oi];
                    let dz = dh[r * os + oi] * (T::ONE - h * h);
                    let at = o.w_c + oi * (hk + hq);
                    for j in 0..hk {
                        dc[j] += params[at + j] * dz;
                        g.d_params[at + j] += dz * c[j];
                    }
                    for i in 0..hq {
                        dq[i] += params[at + hk + i] * dz;
                        g.d_params[at + hk + i] += dz * q[i];
                    }
                }
            }
            // c = Σ_s α_s k_s.
            for (s, (da, &a)) in dalpha[..len].iter_mut().zip(alpha).enumerate() {
                *da = up.d_weights.map_or(T::ZERO, |d| d[r * sl + s]);
                let at = (s * bl + b) * hk;
                for j in 0..hk {
                    *da += dc[j] * keys[at + j];
                    g.d_keys[at + j] += a * dc[j];
                }
            }
            // The softmax, then each score.
            let mut dot = T::ZERO;
            for (&a, &da) in alpha.iter().zip(&dalpha[..len]) {
                dot += a * da;
            }
            for s in 0..len {
                let de = alpha[s] * (dalpha[s] - dot);
                let at = (s * bl + b) * hk;
                let (k, dk) = (&keys[at..at + hk], &mut g.d_keys[at..at + hk]);
                score_backward(cfg, &o, params, q, k, de, dq, dk, &mut g.d_params, &mut u);
            }
        }
    }
    Ok(g)
}
