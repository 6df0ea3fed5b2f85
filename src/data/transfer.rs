//! Tang et al. (2019)'s transfer set: augmented copies of the training texts for a teacher to
//! label, so a small student sees many more of the teacher's soft targets than there are labels.
//!
//! Each copy of a text walks its tokens once: a token becomes `[MASK]` with probability
//! `mask_prob`, is swapped for a random token of the training vocabulary with probability
//! `swap_prob` (the paper swaps words of the same part of speech; there is no tagger here, so the
//! swap is free), and is otherwise kept; then, with probability `ngram_prob`, only a random n-gram
//! (n from 1 to `max_ngram`) of the result is kept. The rules act on the tokenizer's sub-word
//! tokens and keep the first and last token (`[CLS]`, `[SEP]`). Copies equal to their source or
//! to an earlier copy are dropped, as in the paper.

use std::collections::HashSet;

use rand::rngs::ChaCha8Rng as StdRng;
use rand::{RngExt, SeedableRng};

/// How the transfer set is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferConfig {
    /// Augmented copies drawn per training text (before duplicates are dropped).
    pub copies: usize,
    /// Probability that a token is masked.
    pub mask_prob: f64,
    /// Probability that a token is swapped for a random vocabulary token.
    pub swap_prob: f64,
    /// Probability that a copy is cut down to one n-gram.
    pub ngram_prob: f64,
    /// Longest n-gram kept.
    pub max_ngram: usize,
    /// Seeds the draws (the transfer set is a function of the data and this seed).
    pub seed: u64,
}

impl Default for TransferConfig {
    /// The paper's settings: p_mask = p_pos = 0.1, p_ng = 0.25, n-grams of 1 to 5 tokens.
    fn default() -> Self {
        Self {
            copies: 4,
            mask_prob: 0.1,
            swap_prob: 0.1,
            ngram_prob: 0.25,
            max_ngram: 5,
            seed: 0,
        }
    }
}

impl TransferConfig {
    /// Rejects probabilities outside [0, 1] (or masking and swapping that add up past 1) and an
    /// empty n-gram range, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("mask_prob", self.mask_prob),
            ("swap_prob", self.swap_prob),
            ("ngram_prob", self.ngram_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("transfer {name} must be in [0, 1], got {p}"));
            }
        }
        if self.mask_prob + self.swap_prob > 1.0 {
            return Err(format!(
                "transfer mask_prob + swap_prob must be at most 1, got {} + {}",
                self.mask_prob, self.swap_prob
            ));
        }
        if self.max_ngram == 0 {
            return Err("transfer max_ngram must be at least 1".into());
        }
        Ok(())
    }
}

/// The augmented copies of `texts` (token ids with their special first and last tokens), in
/// source order; `mask_id` is the tokenizer's `[MASK]`, `special` the ids never drawn as swaps.
pub fn transfer_set(
    texts: &[Vec<u32>],
    config: &TransferConfig,
    mask_id: u32,
    special: &[u32],
) -> Vec<Vec<u32>> {
    let mut vocabulary: Vec<u32> = texts
        .iter()
        .flat_map(|t| t.iter().copied())
        .filter(|id| !special.contains(id) && *id != mask_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // HashSet order is random per process; the draws must not be.
    vocabulary.sort_unstable();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut seen: HashSet<Vec<u32>> = texts.iter().cloned().collect();
    let mut out = Vec::new();
    for text in texts {
        if text.len() < 3 {
            continue;
        }
        for _ in 0..config.copies {
            let copy = augment(text, config, mask_id, &vocabulary, &mut rng);
            if seen.insert(copy.clone()) {
                out.push(copy);
            }
        }
    }
    out
}

fn augment(
    text: &[u32],
    config: &TransferConfig,
    mask_id: u32,
    vocabulary: &[u32],
    rng: &mut StdRng,
) -> Vec<u32> {
    let (first, rest) = text.split_first().expect("checked length");
    let (last, body) = rest.split_last().expect("checked length");
    let mut words: Vec<u32> = body
        .iter()
        .map(|&id| {
            let x: f64 = rng.random();
            if x < config.mask_prob {
                mask_id
            } else if x < config.mask_prob + config.swap_prob && !vocabulary.is_empty() {
                vocabulary[rng.random_range(0..vocabulary.len())]
            } else {
                id
            }
        })
        .collect();
    if rng.random::<f64>() < config.ngram_prob {
        let n = rng.random_range(1..=config.max_ngram).min(words.len());
        let start = rng.random_range(0..=words.len() - n);
        words = words[start..start + n].to_vec();
    }
    let mut copy = Vec::with_capacity(words.len() + 2);
    copy.push(*first);
    copy.extend(words);
    copy.push(*last);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<Vec<u32>> {
        vec![
            vec![101, 10, 11, 12, 13, 14, 15, 16, 102],
            vec![101, 20, 21, 22, 102],
            vec![101, 102],
        ]
    }

    #[test]
    fn copies_keep_the_special_tokens_and_draw_only_known_tokens() {
        let config = TransferConfig {
            copies: 50,
            ..TransferConfig::default()
        };
        let set = transfer_set(&texts(), &config, 103, &[0, 101, 102]);
        assert!(!set.is_empty());
        let known: HashSet<u32> = texts().concat().into_iter().chain([103]).collect();
        for copy in &set {
            assert_eq!(copy.first(), Some(&101));
            assert_eq!(copy.last(), Some(&102));
            assert!(copy.len() >= 3 && copy.len() <= 9);
            assert!(copy.iter().all(|id| known.contains(id)));
            assert!(!copy[1..copy.len() - 1].contains(&101));
        }
        let unique: HashSet<&Vec<u32>> = set.iter().collect();
        assert_eq!(unique.len(), set.len(), "duplicates are dropped");
        assert!(
            set.iter().all(|c| !texts().contains(c)),
            "sources are dropped"
        );
    }

    #[test]
    fn probabilities_of_zero_and_one_do_what_they_say() {
        let never = TransferConfig {
            copies: 3,
            mask_prob: 0.0,
            swap_prob: 0.0,
            ngram_prob: 0.0,
            ..TransferConfig::default()
        };
        // every copy equals its source, so all are dropped
        assert!(transfer_set(&texts(), &never, 103, &[101, 102]).is_empty());
        let mask_all = TransferConfig {
            copies: 1,
            mask_prob: 1.0,
            swap_prob: 0.0,
            ngram_prob: 0.0,
            ..TransferConfig::default()
        };
        let set = transfer_set(&texts(), &mask_all, 103, &[101, 102]);
        assert_eq!(
            set,
            vec![
                vec![101, 103, 103, 103, 103, 103, 103, 103, 102],
                vec![101, 103, 103, 103, 102]
            ]
        );
        let ngram_all = TransferConfig {
            copies: 20,
            mask_prob: 0.0,
            swap_prob: 0.0,
            ngram_prob: 1.0,
            max_ngram: 2,
            seed: 3,
        };
        for copy in transfer_set(&texts(), &ngram_all, 103, &[101, 102]) {
            let inner = &copy[1..copy.len() - 1];
            assert!((1..=2).contains(&inner.len()));
            let source = texts()
                .into_iter()
                .find(|t| t.windows(inner.len()).any(|w| w == inner));
            assert!(source.is_some(), "{inner:?} is an n-gram of a source text");
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_set() {
        let config = TransferConfig::default();
        let a = transfer_set(&texts(), &config, 103, &[101, 102]);
        let b = transfer_set(&texts(), &config, 103, &[101, 102]);
        assert_eq!(a, b);
        let other = transfer_set(
            &texts(),
            &TransferConfig { seed: 1, ..config },
            103,
            &[101, 102],
        );
        assert_ne!(a, other);
    }

    #[test]
    fn impossible_settings_are_named() {
        let bad = TransferConfig {
            mask_prob: 0.7,
            swap_prob: 0.5,
            ..TransferConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("mask_prob + swap_prob"));
        let bad = TransferConfig {
            ngram_prob: 1.5,
            ..TransferConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("ngram_prob"));
    }
}
