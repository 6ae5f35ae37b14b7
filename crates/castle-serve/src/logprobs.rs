//! Log-probabilities of one position from its logits, as the completions API reports them: the
//! chosen token's and the `k` most likely tokens' (OpenAI's `logprobs` / `top_logprobs`).

/// One position: the log-probability of the token that came next, and the alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub logprob: f64,
    /// The `k` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f64)>,
}

/// `log softmax(logits)[token]` and the `k` most likely tokens, in f64 from f32 logits. Every
/// value comes from the same expression, so the chosen token's entry equals its `top` entry
/// bit for bit (lm-evaluation-harness compares them for greediness).
pub fn score(logits: &[f32], token: u32, k: usize) -> Scored {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_sum = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let logprob = |id: u32| logits[id as usize] as f64 - log_sum;
    Scored {
        logprob: logprob(token),
        top: top_k(logits, k)
            .into_iter()
            .map(|id| (id, logprob(id)))
            .collect(),
    }
}

/// Ids of the `k` largest logits, largest first, lower id first among equals.
fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut top: Vec<u32> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    let before = |a: u32, b: u32| logits[a as usize] > logits[b as usize];
    for id in 0..logits.len() as u32 {
        if top.len() == k && !before(id, top[k - 1]) {
            continue;
        }
        let at = top.partition_point(|&t| !before(id, t));
        top.insert(at, id);
        top.truncate(k);
    }
    top
}

/// How a token is written in `tokens` and as a `top_logprobs` key: its text, or, when its bytes
/// are not whole UTF-8 characters, OpenAI's `bytes:\xNN` form (unique per token either way).
pub fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.iter().fold("bytes:".to_string(), |mut out, b| {
            out.push_str(&format!("\\x{b:02x}"));
            out
        }),
    }
}

/// Characters in UTF-8 `bytes` (a token may end or start inside one): the bytes that begin one.
pub fn char_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_float64_log_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let s = score(&logits, 2, 3);
        assert!((s.logprob - (-2.0 - z.ln())).abs() < 1e-12);
        assert_eq!(
            s.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 3, 0],
            "largest first, lower id first among equals"
        );
        assert_eq!(score(&logits, 1, 1).top[0].1, score(&logits, 1, 1).logprob);
        assert!(score(&logits, 0, 0).top.is_empty());
        assert_eq!(score(&logits, 0, 9).top.len(), 5);
    }

    #[test]
    fn token_text_writes_partial_characters_as_bytes() {
        assert_eq!(token_text(b" the"), " the");
        assert_eq!(token_text(&[0xE2, 0x82]), "bytes:\\xe2\\x82");
        assert_eq!(char_count("a€".as_bytes()), 2);
        assert_eq!(char_count(&[0x82, 0xAC]), 0);
    }
}
