//! A small string-keyed memo for values the hot path would otherwise rebuild per request
//! (metric handles per model, route labels, parsed upstream URLs). Keys are few and bounded by
//! configuration; past `cap` entries values are made and not kept.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

#[derive(Debug)]
pub struct Memo<T> {
    map: OnceLock<RwLock<HashMap<String, T>>>,
    cap: usize,
}

impl<T: Clone> Memo<T> {
    /// An empty memo keeping at most `cap` entries (usable in a `static`).
    pub const fn new(cap: usize) -> Memo<T> {
        Memo {
            map: OnceLock::new(),
            cap,
        }
    }

    /// The value kept for `key`, or `make()`'s, kept for next time.
    pub fn get(&self, key: &str, make: impl FnOnce() -> T) -> T {
        let map = self.map.get_or_init(RwLock::default);
        if let Some(v) = map.read().ok().and_then(|m| m.get(key).cloned()) {
            return v;
        }
        let value = make();
        if let Ok(mut m) = map.write()
            && m.len() < self.cap
        {
            m.insert(key.to_owned(), value.clone());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_up_to_its_cap() {
        let memo = Memo::new(1);
        assert_eq!(memo.get("a", || 1), 1);
        assert_eq!(memo.get("a", || 2), 1);
        assert_eq!(memo.get("b", || 3), 3);
        assert_eq!(memo.get("b", || 4), 4);
    }
}
