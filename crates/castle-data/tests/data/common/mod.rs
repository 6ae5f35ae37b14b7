//! Helpers shared by the integration tests.

/// `n` deterministic pseudo-English documents.
pub fn documents(n: usize) -> Vec<String> {
    const WORDS: [&str; 16] = [
        "the",
        "union",
        "congress",
        "people",
        "nation",
        "peace",
        "war",
        "trade",
        "law",
        "states",
        "government",
        "treasury",
        "citizens",
        "liberty",
        "year",
        "public",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|d| {
            let mut doc = format!("Address {d}.");
            for i in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                doc.push(if i % 12 == 11 { '.' } else { ' ' });
                doc.push(' ');
                doc.push_str(WORDS[(x % 16) as usize]);
            }
            doc
        })
        .collect()
}
