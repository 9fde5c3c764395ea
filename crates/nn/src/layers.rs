//! [`Embedding`], [`Linear`] and [`softmax_cross_entropy`].

use crate::error::{check_len, invalid, try_from_fn, wrong_shape, Result};
use crate::rng::SplitMix64;
use rnn_kernels::Float;

/// A matrix operand read in place: its elements and its row and column strides.
#[derive(Clone, Copy)]
struct Strided<'a>(&'a [f32], usize, usize);

/// `C[m, n] = A[m, k] · B[k, n] + beta · C` (`C` with row stride `rsc`), after checking that
/// every index stays inside its slice.
fn gemm(
    (m, k, n): (usize, usize, usize),
    Strided(a, rsa, csa): Strided<'_>,
    Strided(b, rsb, csb): Strided<'_>,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) -> Result<()> {
    let last =
        |rows: usize, cols: usize, rs: usize, cs: usize| if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Internal callers pass lengths already checked against their shapes; this guards the
    // pointer arithmetic below independently of them.
    if last(m, k, rsa, csa) > a.len() || last(k, n, rsb, csb) > b.len() || last(m, n, rsc, 1) > c.len() {
        return Err(invalid("gemm operands", "slices covering their strided shapes", "a slice too short"));
    }
    // SAFETY: every element the GEMM reads or writes, `(i·rs + j·cs)` for `i < rows` and
    // `j < cols`, is below the checked `last` index of its slice; `c` is borrowed mutably and so
    // does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
    Ok(())
}

/// A lookup table: row `id` of `weight: [V, E]` is the vector of token `id` (PyTorch's
/// `nn.Embedding(V, E)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    num: usize,
    dim: usize,
    /// `[V, E]`.
    pub weight: Vec<f32>,
}

impl Embedding {
    /// PyTorch's initialisation: every entry standard normal, from a generator seeded with `seed`.
    pub fn new(num: usize, dim: usize, seed: u64) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        let len = Self::check_sizes(num, dim)?;
        let weight =
            try_from_fn("num_embeddings × embedding_dim", format!("embedding weight [{num}, {dim}] of f32"), len, || rng.normal() as f32)?;
        Ok(Embedding { num, dim, weight })
    }

    /// Wraps a `weight: [num, dim]`.
    pub fn from_weight(num: usize, dim: usize, weight: Vec<f32>) -> Result<Self> {
        Self::check_sizes(num, dim)?;
        check_len("embedding.weight", "[V, E]", &[num, dim], weight.len())?;
        Ok(Embedding { num, dim, weight })
    }

    fn check_sizes(num: usize, dim: usize) -> Result<usize> {
        if num == 0 {
            return Err(invalid("num_embeddings", "at least 1", num));
        }
        if dim == 0 {
            return Err(invalid("embedding_dim", "at least 1", dim));
        }
        num.checked_mul(dim)
            .ok_or_else(|| invalid("num_embeddings × embedding_dim", "a size that fits in memory", format!("{num} × {dim}")))
    }

    /// `V`.
    pub fn num_embeddings(&self) -> usize {
        self.num
    }
    /// `E`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn check_ids(&self, ids: &[usize]) -> Result<()> {
        match ids.iter().position(|&i| i >= self.num) {
            Some(p) => Err(invalid(format!("ids[{p}]"), format!("below num_embeddings = {}", self.num), ids[p])),
            None => Ok(()),
        }
    }

    /// `out: [N, E]` = the rows of `ids: [N]`.
    pub fn forward(&self, ids: &[usize], out: &mut [f32]) -> Result<()> {
        self.check_ids(ids)?;
        check_len("out", "[N, E]", &[ids.len(), self.dim], out.len())?;
        for (row, &id) in out.chunks_exact_mut(self.dim).zip(ids) {
            row.copy_from_slice(&self.weight[id * self.dim..(id + 1) * self.dim]);
        }
        Ok(())
    }

    /// `dweight: [V, E] += ` the rows of `dout: [N, E]` added at the rows of `ids: [N]`.
    pub fn backward(&self, ids: &[usize], dout: &[f32], dweight: &mut [f32]) -> Result<()> {
        self.check_ids(ids)?;
        check_len("dout", "[N, E]", &[ids.len(), self.dim], dout.len())?;
        check_len("dweight", "[V, E]", &[self.num, self.dim], dweight.len())?;
        for (row, &id) in dout.chunks_exact(self.dim).zip(ids) {
            for (d, &g) in dweight[id * self.dim..(id + 1) * self.dim].iter_mut().zip(row) {
                *d += g;
            }
        }
        Ok(())
    }
}

/// `y = x Wᵀ + b`, PyTorch's `nn.Linear(in, out)`: `weight: [out, in]`, `bias: [out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    in_features: usize,
    out_features: usize,
    /// `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

impl Linear {
    /// PyTorch's initialisation: weight and bias uniform in `±1/sqrt(in)`, seeded with `seed`.
    pub fn new(in_features: usize, out_features: usize, seed: u64) -> Result<Self> {
        if in_features == 0 {
            return Err(invalid("in_features", "at least 1", in_features));
        }
        if out_features == 0 {
            return Err(invalid("out_features", "at least 1", out_features));
        }
        let len = in_features.checked_mul(out_features).ok_or_else(|| {
            invalid("in_features × out_features", "a size that fits in memory", format!("{in_features} × {out_features}"))
        })?;
        let k = 1.0 / (in_features as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        let what = format!("linear weight [{out_features}, {in_features}] of f32");
        let weight = try_from_fn("in_features × out_features", what, len, || rng.uniform(-k, k) as f32)?;
        let bias = try_from_fn("out_features", format!("linear bias [{out_features}] of f32"), out_features, || rng.uniform(-k, k) as f32)?;
        Ok(Linear { in_features, out_features, weight, bias })
    }

    /// Wraps `weight: [out, in]` and `bias: [out]`.
    pub fn from_parts(in_features: usize, out_features: usize, weight: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            return Err(invalid("in_features, out_features", "both at least 1", format!("{in_features}, {out_features}")));
        }
        check_len("weight", "[out, in]", &[out_features, in_features], weight.len())?;
        check_len("bias", "[out]", &[out_features], bias.len())?;
        Ok(Linear { in_features, out_features, weight, bias })
    }

    /// `in`.
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// `out`.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    fn rows(&self, arg: &str, x_len: usize) -> Result<usize> {
        if !x_len.is_multiple_of(self.in_features) {
            return Err(wrong_shape(arg, format!("[N, in = {}] for some N", self.in_features), format!("{x_len} elements")));
        }
        Ok(x_len / self.in_features)
    }

    /// `out: [N, out] = x: [N, in] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let n = self.rows("x", x.len())?;
        check_len("out", "[N, out]", &[n, self.out_features], out.len())?;
        for row in out.chunks_exact_mut(self.out_features) {
            row.copy_from_slice(&self.bias);
        }
        let (i, o) = (self.in_features, self.out_features);
        // B[k, n] = W[n, k]: W read transposed through its strides.
        gemm((n, i, o), Strided(x, i, 1), Strided(&self.weight, 1, i), 1.0, out, o)
    }

    /// Given `x: [N, in]` and `dout: [N, out]`, adds `doutᵀ x` into `dweight: [out, in]` and the
    /// column sums of `dout` into `dbias: [out]`, and writes `dx: [N, in] = dout · W` if asked.
    pub fn backward(&self, x: &[f32], dout: &[f32], dx: Option<&mut [f32]>, dweight: &mut [f32], dbias: &mut [f32]) -> Result<()> {
        let n = self.rows("x", x.len())?;
        let (i, o) = (self.in_features, self.out_features);
        check_len("dout", "[N, out]", &[n, o], dout.len())?;
        check_len("dweight", "[out, in]", &[o, i], dweight.len())?;
        check_len("dbias", "[out]", &[o], dbias.len())?;
        if let Some(dx) = dx {
            check_len("dx", "[N, in]", &[n, i], dx.len())?;
            gemm((n, o, i), Strided(dout, o, 1), Strided(&self.weight, i, 1), 0.0, dx, i)?;
        }
        // A[m, k] = dout[k, m]: dout read transposed.
        gemm((o, n, i), Strided(dout, 1, o), Strided(x, i, 1), 1.0, dweight, i)?;
        for row in dout.chunks_exact(o) {
            for (b, &g) in dbias.iter_mut().zip(row) {
                *b += g;
            }
        }
        Ok(())
    }
}

/// Mean over the `N` rows of `-log softmax(logits[n])[targets[n]]`, in nats, for
/// `logits: [N, V]` and `targets: [N]`; writes its gradient `(softmax - onehot) / N` into
/// `dlogits: [N, V]` if given. For `f32` and `f64` logits; the sums are in f64 either way.
pub fn softmax_cross_entropy<T: Float>(logits: &[T], targets: &[usize], dlogits: Option<&mut [T]>) -> Result<f64> {
    cross_entropy(logits, targets.len(), |r| Some(targets[r]), dlogits).map(|(loss, _)| loss)
}

/// The masked form of [`softmax_cross_entropy`] for padded sequences (PyTorch's
/// `cross_entropy(..., ignore_index=...)` with the mean reduction): rows whose target is `None`
/// (padding) add nothing to the loss and get a zero gradient, and the mean is over the others.
/// Returns the mean loss and the number of rows counted. An error if every row is ignored (the
/// mean of nothing), naming `targets`.
pub fn masked_softmax_cross_entropy<T: Float>(logits: &[T], targets: &[Option<usize>], dlogits: Option<&mut [T]>) -> Result<(f64, usize)> {
    cross_entropy(logits, targets.len(), |r| targets[r], dlogits)
}

/// The targets of a batch of padded sequences for [`masked_softmax_cross_entropy`]: `targets`
/// time-major `[T, B]`, sequence `b` of length `lengths[b]` (in `0..=T`); the steps past a length
/// are `None`.
pub fn sequence_targets(targets: &[usize], lengths: &[usize]) -> Result<Vec<Option<usize>>> {
    let b = lengths.len();
    if b == 0 || !targets.len().is_multiple_of(b) {
        return Err(wrong_shape("targets", format!("[T, B = {b}]"), format!("{} elements", targets.len())));
    }
    let t = targets.len() / b;
    if let Some(i) = lengths.iter().position(|&l| l > t) {
        return Err(invalid(format!("lengths[{i}]"), format!("at most T = {t}"), lengths[i]));
    }
    Ok(targets.iter().enumerate().map(|(k, &y)| (k / b < lengths[k % b]).then_some(y)).collect())
}

/// The cross-entropy of `n` rows, row `r`'s target `target(r)` (`None`: ignored): the mean over
/// the counted rows and their number, the gradient into `dlogits`.
fn cross_entropy<T: Float>(
    logits: &[T],
    n: usize,
    target: impl Fn(usize) -> Option<usize>,
    dlogits: Option<&mut [T]>,
) -> Result<(f64, usize)> {
    if n == 0 {
        return Err(invalid("targets", "at least one target", "an empty slice"));
    }
    if !logits.len().is_multiple_of(n) || logits.is_empty() {
        return Err(wrong_shape("logits", format!("[N = {n}, V] for some V ≥ 1"), format!("{} elements", logits.len())));
    }
    let v = logits.len() / n;
    if let Some((p, t)) = (0..n).filter_map(|r| target(r).map(|t| (r, t))).find(|&(_, t)| t >= v) {
        return Err(invalid(format!("targets[{p}]"), format!("below V = {v}"), t));
    }
    let counted = (0..n).filter(|&r| target(r).is_some()).count();
    if counted == 0 {
        return Err(invalid("targets", "at least one target that is not ignored", "every row ignored"));
    }
    let mut dl = match dlogits {
        Some(d) => {
            check_len("dlogits", "[N, V]", &[n, v], d.len())?;
            Some(d)
        }
        None => None,
    };
    let scale = 1.0 / counted as f64;
    let mut total = 0.0f64;
    for (r, row) in logits.chunks_exact(v).enumerate() {
        let Some(t) = target(r) else {
            if let Some(d) = dl.as_deref_mut() {
                d[r * v..(r + 1) * v].fill(T::ZERO);
            }
            continue;
        };
        // The largest logit (a NaN anywhere makes the loss NaN through the sum).
        let max = row.iter().fold(row[0], |m, &x| if x > m { x } else { m });
        let sum: f64 = row.iter().map(|&x| (x - max).to_f64().exp()).sum();
        let log_z = max.to_f64() + sum.ln();
        total += log_z - row[t].to_f64();
        if let Some(d) = dl.as_deref_mut() {
            for (j, (dj, &x)) in d[r * v..(r + 1) * v].iter_mut().zip(row).enumerate() {
                let p = (x.to_f64() - log_z).exp();
                *dj = T::from_f64((p - if j == t { 1.0 } else { 0.0 }) * scale);
            }
        }
    }
    Ok((total * scale, counted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss of `Linear` + softmax cross-entropy at `x` (in f64 for the differences).
    fn loss(lin: &Linear, x: &[f32], t: &[usize]) -> f64 {
        let mut logits = vec![0.0; t.len() * lin.out_features()];
        lin.forward(x, &mut logits).unwrap();
        softmax_cross_entropy(&logits, t, None).unwrap()
    }

    /// Central differences of the loss in f32 arithmetic: step 2e-2 on values of order 1, whose
    /// truncation error (≈ h²·f''' ≈ 1e-4 relative) and rounding error (≈ 1e-7 / h) are both
    /// well below the 2e-3 tolerance; a wrong transpose or scale is off by far more.
    #[test]
    fn linear_softmax_ce_gradient_matches_finite_differences() {
        let (n, i, o) = (5, 7, 4);
        let lin = Linear::new(i, o, 3).unwrap();
        let mut rng = SplitMix64::new(9);
        let x: Vec<f32> = (0..n * i).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
        let t: Vec<usize> = (0..n).map(|_| rng.below(o as u64) as usize).collect();

        let mut logits = vec![0.0; n * o];
        lin.forward(&x, &mut logits).unwrap();
        let mut dlogits = vec![0.0; n * o];
        softmax_cross_entropy(&logits, &t, Some(&mut dlogits)).unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0; n * i], vec![0.0; o * i], vec![0.0; o]);
        lin.backward(&x, &dlogits, Some(&mut dx), &mut dw, &mut db).unwrap();

        let h = 2e-2f32;
        let check = |what: String, analytic: f32, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * h as f64);
            let err = (analytic as f64 - numeric).abs() / numeric.abs().max(1e-2);
            assert!(err < 2e-3, "{what}: analytic {analytic}, numeric {numeric}, rel err {err}");
        };
        for k in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += h;
            xm[k] -= h;
            check(format!("dx[{k}]"), dx[k], loss(&lin, &xp, &t), loss(&lin, &xm, &t));
        }
        for (k, &g) in dw.iter().enumerate() {
            let (mut lp, mut lm) = (lin.clone(), lin.clone());
            lp.weight[k] += h;
            lm.weight[k] -= h;
            check(format!("dweight[{k}]"), g, loss(&lp, &x, &t), loss(&lm, &x, &t));
        }
        for (k, &g) in db.iter().enumerate() {
            let (mut lp, mut lm) = (lin.clone(), lin.clone());
            lp.bias[k] += h;
            lm.bias[k] -= h;
            check(format!("dbias[{k}]"), g, loss(&lp, &x, &t), loss(&lm, &x, &t));
        }
    }

    #[test]
    fn softmax_ce_known_values() {
        // Uniform logits over 4 classes: loss ln 4, gradient 1/4 - onehot.
        let mut d = vec![0.0f32; 4];
        let l = softmax_cross_entropy(&[3.0f32; 4], &[2], Some(&mut d)).unwrap();
        assert!((l - 4f64.ln()).abs() < 1e-12);
        assert_eq!(d, vec![0.25, 0.25, -0.75, 0.25]);
        // f64 logits: the same within f64's rounding of the exponentials.
        let mut d = vec![0.0f64; 4];
        let l = softmax_cross_entropy(&[3.0f64; 4], &[2], Some(&mut d)).unwrap();
        assert!((l - 4f64.ln()).abs() < 1e-12);
        for (g, want) in d.iter().zip([0.25, 0.25, -0.75, 0.25]) {
            assert!((g - want).abs() < 1e-15, "{d:?}");
        }
        // Large logits do not overflow.
        let l = softmax_cross_entropy(&[1000.0f32, 0.0], &[0], None).unwrap();
        assert!(l.abs() < 1e-12);
        assert!(softmax_cross_entropy(&[0.0; 4], &[4], None).is_err());
        assert!(softmax_cross_entropy(&[0.0; 5], &[0, 1], None).is_err());
    }

    #[test]
    fn embedding_gathers_and_scatters() {
        let e = Embedding::from_weight(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let mut out = vec![0.0; 6];
        e.forward(&[2, 0, 2], &mut out).unwrap();
        assert_eq!(out, vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
        let mut dw = vec![0.0; 6];
        e.backward(&[2, 0, 2], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0], &mut dw).unwrap();
        assert_eq!(dw, vec![2.0, 2.0, 0.0, 0.0, 4.0, 4.0]);
        let err = e.forward(&[3], &mut out[..2]).unwrap_err().to_string();
        assert!(err.contains("ids[0]"), "{err}");
    }

    /// The masked cross-entropy is the plain one over the kept rows only (bit for bit, loss and
    /// their gradients), gives the ignored rows a zero gradient, and counts the kept rows;
    /// `sequence_targets` ignores exactly the steps past each length.
    #[test]
    fn masked_cross_entropy_is_the_plain_one_over_the_kept_rows() {
        let (t, b, v) = (4, 3, 5);
        let lengths = [4, 1, 2];
        let mut rng = SplitMix64::new(21);
        let logits: Vec<f32> = (0..t * b * v).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
        let ids: Vec<usize> = (0..t * b).map(|_| rng.below(v as u64) as usize).collect();
        let targets = sequence_targets(&ids, &lengths).unwrap();
        for (k, tg) in targets.iter().enumerate() {
            assert_eq!(tg.is_some(), k / b < lengths[k % b], "row {k}");
        }
        let mut d = vec![f32::NAN; t * b * v];
        let (loss, counted) = masked_softmax_cross_entropy(&logits, &targets, Some(&mut d)).unwrap();
        assert_eq!(counted, 7);
        let kept: Vec<usize> = (0..t * b).filter(|&r| targets[r].is_some()).collect();
        let kept_logits: Vec<f32> = kept.iter().flat_map(|&r| logits[r * v..(r + 1) * v].to_vec()).collect();
        let kept_ids: Vec<usize> = kept.iter().map(|&r| ids[r]).collect();
        let mut dk = vec![0.0; kept.len() * v];
        let plain = softmax_cross_entropy(&kept_logits, &kept_ids, Some(&mut dk)).unwrap();
        assert_eq!(loss.to_bits(), plain.to_bits());
        for (i, &r) in kept.iter().enumerate() {
            assert_eq!(&d[r * v..(r + 1) * v], &dk[i * v..(i + 1) * v], "row {r}");
        }
        for r in (0..t * b).filter(|&r| targets[r].is_none()) {
            assert!(d[r * v..(r + 1) * v].iter().all(|&g| g == 0.0), "row {r}");
        }
        // The ignored rows' logits do not matter.
        let mut other = logits.clone();
        for r in (0..t * b).filter(|&r| targets[r].is_none()) {
            other[r * v..(r + 1) * v].fill(1e3);
        }
        assert_eq!(masked_softmax_cross_entropy(&other, &targets, None).unwrap().0.to_bits(), loss.to_bits());
        // Bad input names the argument.
        let none = vec![None; t * b];
        assert!(masked_softmax_cross_entropy(&logits, &none, None).unwrap_err().to_string().contains("targets"));
        assert!(sequence_targets(&ids, &[4, 5, 1]).unwrap_err().to_string().contains("lengths[1]"));
        assert!(sequence_targets(&ids[1..], &lengths).unwrap_err().to_string().contains("targets"));
        let mut bad = targets.clone();
        bad[0] = Some(v);
        assert!(masked_softmax_cross_entropy(&logits, &bad, None).unwrap_err().to_string().contains("targets[0]"));
    }
}
