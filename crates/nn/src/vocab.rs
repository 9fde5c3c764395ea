//! [`Vocab`]: the characters of a corpus, each with an id.

use crate::error::{invalid, Result};
use std::collections::HashMap;

/// A character vocabulary: ids `0..len()` in the order of the characters' code points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    index: HashMap<char, usize>,
}

impl Vocab {
    /// The distinct characters of `text`, sorted by code point.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(&chars.into_iter().collect::<String>())
    }

    /// The characters of `chars` in the given order, id `k` for the `k`-th; each at most once.
    pub fn from_chars(chars: &str) -> Result<Self> {
        let chars: Vec<char> = chars.chars().collect();
        if chars.is_empty() {
            return Err(invalid("vocabulary", "at least one character", "an empty string"));
        }
        let mut index = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if index.insert(c, i).is_some() {
                return Err(invalid("vocabulary", "each character at most once", format!("{c:?} twice")));
            }
        }
        Ok(Vocab { chars, index })
    }

    /// Number of characters `V`.
    pub fn len(&self) -> usize {
        self.chars.len()
    }
    /// Whether it is empty (never: construction requires a character).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }
    /// The characters in id order, as one string (what a checkpoint stores).
    pub fn as_string(&self) -> String {
        self.chars.iter().collect()
    }
    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<usize> {
        self.index.get(&c).copied()
    }
    /// The character of id `id`, if it is one.
    pub fn char(&self, id: usize) -> Option<char> {
        self.chars.get(id).copied()
    }

    /// The ids of the characters of `text`; `arg` names it in the error for a character that is
    /// not in the vocabulary.
    pub fn encode(&self, arg: &str, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .map(|c| {
                self.id(c)
                    .ok_or_else(|| invalid(arg, format!("only characters of the vocabulary {:?}", self.as_string()), format!("{c:?}")))
            })
            .collect()
    }

    /// The text of `ids`; an id out of range is an error.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        ids.iter().map(|&i| self.char(i).ok_or_else(|| invalid("ids", format!("each below {}", self.len()), i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let v = Vocab::from_text("hello\nworld").unwrap();
        assert_eq!(v.as_string(), "\ndehlorw");
        let ids = v.encode("text", "hold\n").unwrap();
        assert_eq!(v.decode(&ids).unwrap(), "hold\n");
        assert_eq!(Vocab::from_chars(&v.as_string()).unwrap(), v);
        let e = v.encode("prompt", "hex").unwrap_err().to_string();
        assert!(e.contains("prompt") && e.contains("'x'"), "{e}");
        assert!(Vocab::from_chars("aba").is_err());
        assert!(Vocab::from_text("").is_err());
        assert!(v.decode(&[99]).is_err());
    }
}
