//! [`Vocab`]: the characters of a corpus, each with an id.

use crate::error::{invalid, try_with_capacity, Result};
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
    /// not in the vocabulary, which gives the character and its position (counting characters
    /// from 1).
    pub fn encode(&self, arg: &str, text: &str) -> Result<Vec<usize>> {
        let n = text.chars().count();
        let mut ids = try_with_capacity(arg, format!("the ids of {n} characters"), n)?;
        for (i, c) in text.chars().enumerate() {
            match self.id(c) {
                Some(id) => ids.push(id),
                None => {
                    return Err(invalid(
                        arg,
                        format!("only characters of the vocabulary {:?}", self.as_string()),
                        format!("{c:?} (U+{:04X}) at character {} of {n}", u32::from(c), i + 1),
                    ))
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; an id out of range is an error.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let widest = self.chars.iter().map(|c| c.len_utf8()).max().unwrap_or(1);
        let bytes = ids.len().saturating_mul(widest);
        let mut out = String::new();
        out.try_reserve_exact(bytes).map_err(|e| rnn_kernels::Error::TooLarge {
            arg: "ids".into(),
            what: format!("the text of {} characters", ids.len()),
            bytes: bytes as u128,
            reason: format!("could not be allocated ({e})"),
        })?;
        for (k, &i) in ids.iter().enumerate() {
            out.push(self.char(i).ok_or_else(|| invalid(format!("ids[{k}]"), format!("below V = {}", self.len()), i))?);
        }
        Ok(out)
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
        assert!(e.contains("prompt") && e.contains("'x' (U+0078) at character 3 of 3"), "{e}");
        let e = v.encode("prompt", "wo€ld").unwrap_err().to_string();
        assert!(e.contains("'€' (U+20AC) at character 3 of 5"), "{e}");
        assert!(Vocab::from_chars("aba").is_err());
        assert!(Vocab::from_text("").is_err());
        assert!(v.decode(&[99]).is_err());
    }
}
