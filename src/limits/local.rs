//! Counters in this process: a sliding log per window bucket, a set of request ids per
//! concurrency bucket, all behind one lock so a check over several rules is atomic.

use super::{Kind, Outcome, Refusal, Rule, Status};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Milliseconds since the Unix epoch (the local limiter's clock).
pub fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

/// What a request put into a window: when, how much, whose.
struct Entry {
    at_ms: u64,
    cost: u64,
    id: Arc<str>,
}

#[derive(Default)]
struct Window {
    entries: VecDeque<Entry>,
    total: u64,
    window_ms: u64,
}

impl Window {
    /// Forgets entries older than the window.
    fn purge(&mut self, now: u64) {
        let horizon = now.saturating_sub(self.window_ms);
        while let Some(e) = self.entries.front() {
            if e.at_ms > horizon {
                break;
            }
            self.total -= e.cost;
            self.entries.pop_front();
        }
    }

    /// How long until `need` units have left the window.
    fn wait_for(&self, need: u64, now: u64) -> u64 {
        let mut freed = 0;
        for e in &self.entries {
            freed += e.cost;
            if freed >= need {
                return (e.at_ms + self.window_ms).saturating_sub(now).max(1);
            }
        }
        self.window_ms
    }

    fn reset_ms(&self, now: u64) -> u64 {
        self.entries
            .back()
            .map_or(0, |e| (e.at_ms + self.window_ms).saturating_sub(now))
    }
}

#[derive(Default)]
struct Counters {
    windows: HashMap<String, Window>,
    slots: HashMap<String, HashSet<Arc<str>>>,
}

/// The in-process limiter.
#[derive(Default)]
pub struct Local {
    counters: Mutex<Counters>,
}

/// Suggested wait when a concurrency cap refuses (a slot frees when some request ends).
const CONCURRENCY_RETRY_MS: u64 = 1000;

impl Local {
    pub fn check(&self, id: &str, rules: &[Rule], now: u64) -> Outcome {
        let Ok(mut c) = self.counters.lock() else {
            // A poisoned lock means a panic elsewhere; do not add a second failure here.
            return Outcome {
                refused: None,
                statuses: Vec::new(),
            };
        };
        let mut used = Vec::with_capacity(rules.len());
        let mut refused = None;
        for (i, rule) in rules.iter().enumerate() {
            let in_use = match rule.kind {
                Kind::Concurrency => c.slots.get(&rule.bucket).map_or(0, |s| s.len() as u64),
                Kind::Requests | Kind::Tokens => {
                    let w = c.windows.entry(rule.bucket.clone()).or_default();
                    w.window_ms = rule.window_ms;
                    w.purge(now);
                    w.total
                }
            };
            used.push(in_use);
            if refused.is_none() && in_use + rule.cost > rule.limit {
                let retry_after_ms = match rule.kind {
                    _ if rule.cost > rule.limit => None,
                    Kind::Concurrency => Some(CONCURRENCY_RETRY_MS),
                    _ => c
                        .windows
                        .get(&rule.bucket)
                        .map(|w| w.wait_for(in_use + rule.cost - rule.limit, now)),
                };
                refused = Some(Refusal {
                    rule: i,
                    retry_after_ms,
                });
            }
        }
        if refused.is_none() {
            let id: Arc<str> = Arc::from(id);
            for rule in rules.iter().filter(|r| r.cost > 0) {
                match rule.kind {
                    Kind::Concurrency => {
                        c.slots
                            .entry(rule.bucket.clone())
                            .or_default()
                            .insert(Arc::clone(&id));
                    }
                    Kind::Requests | Kind::Tokens => {
                        if let Some(w) = c.windows.get_mut(&rule.bucket) {
                            w.entries.push_back(Entry {
                                at_ms: now,
                                cost: rule.cost,
                                id: Arc::clone(&id),
                            });
                            w.total += rule.cost;
                        }
                    }
                }
            }
        }
        let statuses = rules
            .iter()
            .zip(used)
            .map(|(rule, in_use)| {
                let taken = if refused.is_none() { rule.cost } else { 0 };
                let reset_ms = match rule.kind {
                    Kind::Concurrency => 0,
                    _ => c.windows.get(&rule.bucket).map_or(0, |w| w.reset_ms(now)),
                };
                Status {
                    limit: rule.limit,
                    remaining: rule.limit.saturating_sub(in_use + taken),
                    reset_ms,
                }
            })
            .collect();
        Outcome { refused, statuses }
    }

    /// Frees the request's concurrency slots.
    pub fn release(&self, id: &str, rules: &[Rule]) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        for rule in rules.iter().filter(|r| r.kind == Kind::Concurrency) {
            if let Some(set) = c.slots.get_mut(&rule.bucket) {
                set.remove(id);
                if set.is_empty() {
                    c.slots.remove(&rule.bucket);
                }
            }
        }
    }

    /// Sets the request's entry in every token window to `actual` tokens.
    pub fn correct(&self, id: &str, rules: &[Rule], actual: u64) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        for rule in rules.iter().filter(|r| r.kind == Kind::Tokens) {
            let Some(w) = c.windows.get_mut(&rule.bucket) else {
                continue;
            };
            if let Some(e) = w.entries.iter_mut().rev().find(|e| &*e.id == id) {
                w.total = w.total - e.cost + actual;
                e.cost = actual;
            }
        }
    }

    /// Drops windows with nothing left in them.
    pub fn sweep(&self, now: u64) {
        if let Ok(mut c) = self.counters.lock() {
            c.windows.retain(|_, w| {
                w.purge(now);
                !w.entries.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(bucket: &str, kind: Kind, limit: u64, cost: u64) -> Rule {
        Rule {
            bucket: bucket.into(),
            kind,
            limit,
            window_ms: 1000,
            cost,
        }
    }

    #[test]
    fn a_window_admits_exactly_its_limit_and_slides() {
        let l = Local::default();
        let r = [rule("a", Kind::Requests, 3, 1)];
        for (i, t) in [0, 100, 200].into_iter().enumerate() {
            let o = l.check(&format!("r{i}"), &r, 10_000 + t);
            assert!(o.refused.is_none());
            assert_eq!(o.statuses[0].remaining, 2 - i as u64);
        }
        let o = l.check("r3", &r, 10_500);
        let refusal = o.refused.expect("refused");
        // The first entry (at 10 000) leaves the window at 11 000.
        assert_eq!(refusal.retry_after_ms, Some(500));
        assert_eq!(o.statuses[0].remaining, 0);
        assert_eq!(o.statuses[0].reset_ms, 700);
        assert!(l.check("r4", &r, 11_000).refused.is_none());
        assert!(l.check("r5", &r, 11_050).refused.is_some());
    }

    #[test]
    fn a_refusal_by_one_rule_counts_in_none() {
        let l = Local::default();
        let rules = [
            rule("req", Kind::Requests, 10, 1),
            rule("tok", Kind::Tokens, 100, 60),
        ];
        assert!(l.check("a", &rules, 5000).refused.is_none());
        let o = l.check("b", &rules, 5001);
        assert_eq!(o.refused.map(|r| r.rule), Some(1));
        assert_eq!(
            o.statuses[0].remaining, 9,
            "the refused request took no request slot"
        );
        // Correcting a's estimate down to 30 tokens makes room for b.
        l.correct("a", &rules, 30);
        assert!(l.check("b", &rules, 5002).refused.is_none());
        let too_big = [rule("tok", Kind::Tokens, 100, 101)];
        assert_eq!(
            l.check("c", &too_big, 5003)
                .refused
                .map(|r| r.retry_after_ms),
            Some(None)
        );
    }

    #[test]
    fn concurrency_slots_are_held_until_released() {
        let l = Local::default();
        let r = [rule("c", Kind::Concurrency, 2, 1)];
        assert!(l.check("a", &r, 0).refused.is_none());
        assert!(l.check("b", &r, 0).refused.is_none());
        assert!(l.check("c", &r, 0).refused.is_some());
        l.release("a", &r);
        assert!(l.check("c", &r, 0).refused.is_none());
    }
}
