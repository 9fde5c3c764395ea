//! Decoding a sequence model token by token: greedy search and beam search over a batch, with
//! the model behind one closure that runs a step for every live hypothesis at once.
//!
//! ## The step
//!
//! Each step the search calls `step(&Step)` with one row per live hypothesis: the token it
//! emitted last (`tokens`, the begin token at step 0), the sequence of the batch it belongs to
//! (`sequences`), and its *parent*: the row of the previous call it continues (`parents`; at
//! step 0 the parent of sequence `b`'s one row is `b`, the row of the initial state). The
//! closure first reorders its recurrent state (and whatever else it keeps per row: attention
//! inputs) by `parents` (row `r` of the new state is row `parents[r]` of the old, [`reorder_rows`]),
//! then runs the model on `tokens` and returns the logits `[rows, V]`. Rows of a sequence that
//! has finished are not passed again, so the batch shrinks as sequences end.
//!
//! ## Beam search
//!
//! Width `k`, per sequence (fairseq's rule): from the `k` live hypotheses' log-probabilities
//! (log-softmax of the logits, in f64), the `2k` best continuations by total log-probability
//! (ties: the lower row, then the lower token), in order; a continuation that emits the end token
//! and ranks among the first `k` is finished (its score is its log-probability divided by its
//! length, the tokens after the begin token including the end token, raised to
//! `length_penalty`: 0 compares raw log-probabilities, 1 their per-token mean); the other
//! continuations continue until `k` of them do. A sequence stops when it has `k` finished
//! hypotheses; at `max_len` tokens the best continuations are finished as they are (without the
//! end token). The result of each sequence is its finished hypothesis with the best normalised
//! score (ties: the one finished first). With `k = 1` this is greedy search: the best
//! continuation, until it is the end token.

use crate::error::{invalid, wrong_shape};
use rnn_kernels::Result;

/// The settings of a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchConfig {
    /// The beam width `k` (1: greedy).
    pub width: usize,
    /// The most tokens a hypothesis emits, the end token included.
    pub max_len: usize,
    /// The token fed at the first step.
    pub begin: usize,
    /// The token that ends a hypothesis.
    pub end: usize,
    /// The exponent of the length normalisation (0: none).
    pub length_penalty: f64,
}

/// One step of a search, as the model closure sees it ([module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The step, from 0.
    pub index: usize,
    /// Per row: the token to feed.
    pub tokens: &'a [usize],
    /// Per row: the row of the previous step's state it continues.
    pub parents: &'a [usize],
    /// Per row: its sequence in the batch.
    pub sequences: &'a [usize],
}

/// The best hypothesis of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The tokens after the begin token, without the end token.
    pub tokens: Vec<usize>,
    /// Whether it emitted the end token (else it stopped at `max_len`).
    pub ended: bool,
    /// Its total log-probability.
    pub log_prob: f64,
    /// Its normalised score (`log_prob / len^length_penalty`).
    pub score: f64,
}

/// A live hypothesis.
#[derive(Debug, Clone)]
struct Live {
    seq: usize,
    tokens: Vec<usize>,
    log_prob: f64,
}

/// Greedy search: [`beam_search`] with width 1.
pub fn greedy_search(batch: usize, cfg: SearchConfig, step: impl FnMut(&Step<'_>) -> Result<Vec<f32>>) -> Result<Vec<Hypothesis>> {
    beam_search(batch, SearchConfig { width: 1, ..cfg }, step)
}

/// Beam search over `batch` sequences ([module docs](self)): the best hypothesis of each. An
/// error naming the argument for a width of 0 or wider than the vocabulary, `max_len` 0, a begin
/// or end token outside the vocabulary, or logits of another size than `[rows, V]` (`V` fixed by
/// the first step); the closure's errors are passed on.
pub fn beam_search(batch: usize, cfg: SearchConfig, mut step: impl FnMut(&Step<'_>) -> Result<Vec<f32>>) -> Result<Vec<Hypothesis>> {
    if batch == 0 {
        return Err(invalid("batch", "at least 1", 0));
    }
    if cfg.width == 0 {
        return Err(invalid("width", "at least 1", 0));
    }
    if cfg.max_len == 0 {
        return Err(invalid("max_len", "at least 1", 0));
    }
    if !cfg.length_penalty.is_finite() {
        return Err(invalid("length_penalty", "a finite number", cfg.length_penalty));
    }
    let mut live: Vec<Live> = (0..batch).map(|seq| Live { seq, tokens: Vec::new(), log_prob: 0.0 }).collect();
    let mut parents: Vec<usize> = (0..batch).collect();
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); batch];
    let mut vocab = None;
    for index in 0..cfg.max_len {
        let tokens: Vec<usize> = live.iter().map(|h| *h.tokens.last().unwrap_or(&cfg.begin)).collect();
        let sequences: Vec<usize> = live.iter().map(|h| h.seq).collect();
        let logits = step(&Step { index, tokens: &tokens, parents: &parents, sequences: &sequences })?;
        let rows = live.len();
        if rows == 0 || logits.is_empty() || !logits.len().is_multiple_of(rows) {
            return Err(wrong_shape("logits", format!("[rows = {rows}, V]"), format!("{} values", logits.len())));
        }
        let v = logits.len() / rows;
        match vocab {
            None => {
                if cfg.width > v {
                    return Err(invalid("width", format!("at most the vocabulary, V = {v}"), cfg.width));
                }
                if cfg.begin >= v || cfg.end >= v {
                    return Err(invalid(
                        if cfg.begin >= v { "begin" } else { "end" },
                        format!("a token below V = {v}"),
                        cfg.begin.max(cfg.end),
                    ));
                }
                vocab = Some(v);
            }
            Some(want) if want != v => {
                return Err(wrong_shape("logits", format!("[rows = {rows}, V = {want}]"), format!("{} values", logits.len())))
            }
            Some(_) => {}
        }
        let last = index + 1 == cfg.max_len;
        let mut next = Vec::new();
        let mut next_parents = Vec::new();
        // The rows of each sequence are contiguous and in order of sequence.
        let mut r0 = 0;
        while r0 < rows {
            let seq = live[r0].seq;
            let r1 = (r0..rows).find(|&r| live[r].seq != seq).unwrap_or(rows);
            // Every continuation of the sequence's rows by total log-probability.
            let mut cands: Vec<(f64, usize, usize)> = Vec::with_capacity((r1 - r0) * v);
            for r in r0..r1 {
                let row = &logits[r * v..(r + 1) * v];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let log_z = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                cands.extend(row.iter().enumerate().map(|(tok, &x)| (live[r].log_prob + x as f64 - log_z, r, tok)));
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut kept = 0;
            for (rank, &(lp, r, tok)) in cands.iter().take(2 * cfg.width).enumerate() {
                if finished[seq].len() >= cfg.width || kept >= cfg.width {
                    break;
                }
                if tok == cfg.end || last {
                    // Only the `k` best may finish (so that width 1 is greedy search).
                    if rank < cfg.width {
                        let mut tokens = live[r].tokens.clone();
                        let ended = tok == cfg.end;
                        if !ended {
                            tokens.push(tok);
                        }
                        let len = (live[r].tokens.len() + 1) as f64;
                        finished[seq].push(Hypothesis { tokens, ended, log_prob: lp, score: lp / len.powf(cfg.length_penalty) });
                    }
                } else {
                    let mut tokens = live[r].tokens.clone();
                    tokens.push(tok);
                    next.push(Live { seq, tokens, log_prob: lp });
                    next_parents.push(r);
                    kept += 1;
                }
            }
            if finished[seq].len() >= cfg.width {
                // The sequence is done: its live continuations are dropped.
                while next.last().is_some_and(|h| h.seq == seq) {
                    next.pop();
                    next_parents.pop();
                }
            }
            r0 = r1;
        }
        live = next;
        parents = next_parents;
        if live.is_empty() {
            break;
        }
    }
    Ok(finished
        .into_iter()
        .map(|f| {
            // The best normalised score, the first finished on ties.
            f.into_iter().reduce(|best, h| if h.score > best.score { h } else { best }).expect("every sequence finishes by max_len")
        })
        .collect())
}

/// Reorders the rows of `state` (`[rows, width]`, row-major) by `index` in place: row `r`
/// becomes the old row `index[r]` (a beam search's parents), `state` resized to `index.len()`
/// rows; `scratch` holds the old rows meanwhile. An error naming `index` for a row out of range.
pub fn reorder_rows(state: &mut Vec<f32>, width: usize, index: &[usize], scratch: &mut Vec<f32>) -> Result<()> {
    if width == 0 || !state.len().is_multiple_of(width) {
        return Err(wrong_shape("state", format!("[rows, width = {width}]"), format!("{} values", state.len())));
    }
    let rows = state.len() / width;
    if let Some(p) = index.iter().position(|&i| i >= rows) {
        return Err(invalid(format!("index[{p}]"), format!("a row below {rows}"), index[p]));
    }
    scratch.clear();
    scratch.extend_from_slice(state);
    state.clear();
    for &i in index {
        state.extend_from_slice(&scratch[i * width..(i + 1) * width]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// A model given as the next-token distribution of each prefix (and sequence): the closure
    /// keeps each row's prefix as its "state", reordered by the parents as a recurrent state is.
    struct PrefixModel<F> {
        probs: F,
        state: Vec<Vec<usize>>,
        calls: Vec<usize>,
    }

    impl<F: Fn(usize, &[usize]) -> Vec<f64>> PrefixModel<F> {
        fn new(batch: usize, probs: F) -> Self {
            PrefixModel { probs, state: vec![Vec::new(); batch], calls: Vec::new() }
        }

        fn step(&mut self, s: &Step<'_>) -> Result<Vec<f32>> {
            let old = std::mem::take(&mut self.state);
            self.state = s.parents.iter().map(|&p| old[p].clone()).collect();
            let mut logits = Vec::new();
            for (r, prefix) in self.state.iter_mut().enumerate() {
                if s.index > 0 {
                    prefix.push(s.tokens[r]);
                }
                logits.extend((self.probs)(s.sequences[r], prefix).iter().map(|p| p.ln() as f32));
            }
            self.calls.push(s.tokens.len());
            Ok(logits)
        }
    }

    fn cfg(width: usize, max_len: usize, length_penalty: f64) -> SearchConfig {
        SearchConfig { width, max_len, begin: 0, end: 0, length_penalty }
    }

    /// A random distribution over `v` tokens for each (sequence, prefix), the same every call.
    fn random_probs(seed: u64, v: usize) -> impl Fn(usize, &[usize]) -> Vec<f64> {
        move |seq: usize, prefix: &[usize]| {
            let h = prefix.iter().fold(seed ^ (seq as u64) << 32, |h, &t| h.wrapping_mul(1_000_003).wrapping_add(t as u64 + 1));
            let mut rng = SplitMix64::new(h);
            let w: Vec<f64> = (0..v).map(|_| rng.uniform(0.05, 1.0).powi(3)).collect();
            let sum: f64 = w.iter().sum();
            w.iter().map(|x| x / sum).collect()
        }
    }

    /// Greedy decoding written out: the most likely next token until the end token or `max_len`.
    fn greedy_by_hand(probs: &impl Fn(usize, &[usize]) -> Vec<f64>, seq: usize, max_len: usize) -> (Vec<usize>, bool) {
        let mut prefix = Vec::new();
        for _ in 0..max_len {
            let p = probs(seq, &prefix);
            let best = (0..p.len()).fold(0, |b, t| if p[t] > p[b] { t } else { b });
            if best == 0 {
                return (prefix, true);
            }
            prefix.push(best);
        }
        (prefix, false)
    }

    #[test]
    fn width_one_is_greedy_search() {
        for seed in 0..20 {
            let probs = random_probs(seed, 5);
            let mut m = PrefixModel::new(4, &probs);
            let got = beam_search(4, cfg(1, 7, 0.0), |s| m.step(s)).unwrap();
            for (seq, h) in got.iter().enumerate() {
                assert_eq!((h.tokens.clone(), h.ended), greedy_by_hand(&probs, seq, 7), "seed {seed}, sequence {seq}");
            }
            let mut m = PrefixModel::new(4, &probs);
            assert_eq!(greedy_search(4, cfg(3, 7, 0.0), |s| m.step(s)).unwrap(), got);
        }
    }

    /// Tokens: 0 is the begin and end token, 1..=3 words. Greedy takes 1 (p .5) and ends
    /// (p .25 after it, the first of four ties): log .125. Beam search of width 2 also keeps 2
    /// (p .45), whose end has p .9: log .405, the known best.
    #[test]
    fn beam_finds_the_known_best_that_greedy_misses() {
        let probs = |_: usize, prefix: &[usize]| match prefix {
            [] => vec![1e-6, 0.5, 0.45, 0.05 - 1e-6],
            [2] => vec![0.9, 0.05, 0.03, 0.02],
            _ => vec![0.25; 4],
        };
        let mut m = PrefixModel::new(1, probs);
        let greedy = greedy_search(1, cfg(1, 5, 0.0), |s| m.step(s)).unwrap();
        assert_eq!(greedy[0].tokens, vec![1]);
        assert!((greedy[0].log_prob - (0.5f64 * 0.25).ln()).abs() < 1e-6);
        let mut m = PrefixModel::new(1, probs);
        let beam = beam_search(1, cfg(2, 5, 0.0), |s| m.step(s)).unwrap();
        assert_eq!(beam[0].tokens, vec![2]);
        assert!(beam[0].ended);
        assert!((beam[0].log_prob - (0.45f64 * 0.9).ln()).abs() < 1e-6, "{}", beam[0].log_prob);
    }

    /// Ending at once (p .4, length 1) against 1, 1, end (p .6·.9·.7 = .378, length 3): the raw
    /// log-probabilities prefer the short one, their per-token mean the long one.
    #[test]
    fn length_penalty_chooses_between_known_hypotheses() {
        let probs = |_: usize, prefix: &[usize]| match prefix {
            [] => vec![0.4, 0.6 - 2e-6, 1e-6, 1e-6],
            [1] => vec![1e-4, 0.9, 0.0999 - 1e-6, 1e-6],
            [1, 1] => vec![0.7, 0.3 - 2e-6, 1e-6, 1e-6],
            _ => vec![0.25; 4],
        };
        for (penalty, want, lp) in [(0.0, vec![], 0.4f64.ln()), (1.0, vec![1, 1], (0.6f64 * 0.9 * 0.7).ln())] {
            let mut m = PrefixModel::new(1, probs);
            let got = beam_search(1, cfg(2, 6, penalty), |s| m.step(s)).unwrap();
            assert_eq!(got[0].tokens, want, "length_penalty {penalty}");
            assert!((got[0].log_prob - lp).abs() < 1e-5, "length_penalty {penalty}: {}", got[0].log_prob);
            let len = want.len() as f64 + 1.0;
            assert!((got[0].score - got[0].log_prob / len.powf(penalty)).abs() < 1e-12);
        }
    }

    /// A batch decodes each sequence as it decodes alone (the rows of other sequences, the
    /// parents across them and the sequences that end early change nothing), and finished
    /// sequences leave the batch.
    #[test]
    fn a_batch_decodes_as_each_sequence_alone() {
        for seed in 0..10 {
            let probs = random_probs(100 + seed, 6);
            let mut m = PrefixModel::new(5, &probs);
            let batch = beam_search(5, cfg(3, 8, 0.7), |s| m.step(s)).unwrap();
            assert!(m.calls.iter().all(|&rows| rows <= 15), "{:?}", m.calls);
            for (seq, want) in batch.iter().enumerate() {
                let alone = |_: usize, prefix: &[usize]| probs(seq, prefix);
                let mut m = PrefixModel::new(1, alone);
                let got = beam_search(1, cfg(3, 8, 0.7), |s| m.step(s)).unwrap();
                assert_eq!(&got[0], want, "seed {seed}, sequence {seq}");
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_argument() {
        let probs = random_probs(1, 4);
        let run = |c: SearchConfig| {
            let mut m = PrefixModel::new(2, &probs);
            beam_search(2, c, |s| m.step(s)).unwrap_err().to_string()
        };
        assert!(run(cfg(0, 5, 0.0)).contains("`width`"));
        assert!(run(cfg(5, 5, 0.0)).contains("`width`"), "a beam wider than the vocabulary");
        assert!(run(cfg(2, 0, 0.0)).contains("`max_len`"));
        assert!(run(cfg(2, 5, f64::NAN)).contains("`length_penalty`"));
        assert!(run(SearchConfig { end: 4, ..cfg(2, 5, 0.0) }).contains("`end`"));
        assert!(run(SearchConfig { begin: 9, ..cfg(2, 5, 0.0) }).contains("`begin`"));
        let e = beam_search(2, cfg(2, 5, 0.0), |s| Ok(vec![0.0; s.tokens.len() * 4 + 1])).unwrap_err().to_string();
        assert!(e.contains("`logits`"), "{e}");
        let e = beam_search(0, cfg(2, 5, 0.0), |_| Ok(vec![])).unwrap_err().to_string();
        assert!(e.contains("`batch`"), "{e}");
    }

    #[test]
    fn reorder_rows_gathers_in_place() {
        let mut state = vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        let mut scratch = Vec::new();
        reorder_rows(&mut state, 2, &[2, 0, 0, 1], &mut scratch).unwrap();
        assert_eq!(state, vec![20.0, 21.0, 0.0, 1.0, 0.0, 1.0, 10.0, 11.0]);
        assert!(reorder_rows(&mut state, 2, &[4], &mut scratch).unwrap_err().to_string().contains("`index[0]`"));
        assert!(reorder_rows(&mut state, 3, &[0], &mut scratch).unwrap_err().to_string().contains("`state`"));
    }
}
