//! Token prices and the cost of a request: the sum over token kinds of tokens × price,
//! divided by one million and rounded up once, at the end.

use super::money::Micros;

/// A model's token prices, in micro-credits per one million tokens, at one price version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrice {
    pub input_micros_per_mtok: i64,
    pub output_micros_per_mtok: i64,
    pub cached_input_micros_per_mtok: i64,
    /// Prompt tokens written to the provider's cache (Anthropic's cache creation).
    pub cache_write_micros_per_mtok: i64,
    /// A flat price per request that produced an answer (the registry's `credits_cost`).
    pub request_micros: i64,
    pub version: i64,
}

/// Token counts of one request as a provider (or our local count) reports them.
/// `cached_tokens` (cache reads) and `cache_write_tokens` are parts of `prompt_tokens`;
/// `reasoning_tokens` is a part of `completion_tokens` (as in OpenAI's usage block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cache_write_tokens: i64,
}

/// Integer ceiling of `numerator / 1_000_000` for non-negative numerators.
fn ceil_div_million(numerator: i128) -> i64 {
    let million = 1_000_000_i128;
    let q = (numerator + million - 1).div_euclid(million);
    i64::try_from(q).unwrap_or(i64::MAX)
}

impl TokenPrice {
    /// The exact cost of `usage`: the flat request price, plus uncached input at the input
    /// price, cache reads at the cached price, cache writes at the cache-write price, and all
    /// completion tokens (reasoning included) at the output price.
    pub fn cost(&self, usage: &TokenUsage) -> Micros {
        let prompt = i128::from(usage.prompt_tokens.max(0));
        let cached = i128::from(usage.cached_tokens.max(0)).min(prompt);
        let written = i128::from(usage.cache_write_tokens.max(0)).min(prompt - cached);
        let completion = i128::from(usage.completion_tokens.max(0));
        let total = (prompt - cached - written) * i128::from(self.input_micros_per_mtok)
            + cached * i128::from(self.cached_input_micros_per_mtok)
            + written * i128::from(self.cache_write_micros_per_mtok)
            + completion * i128::from(self.output_micros_per_mtok);
        Micros(ceil_div_million(total).saturating_add(self.request_micros.max(0)))
    }

    /// The most a request may cost: every prompt token uncached (at the dearer of plain input
    /// and cache write when the provider may write to its cache), the full output allowance.
    pub fn max_cost(
        &self,
        prompt_tokens: i64,
        max_output_tokens: i64,
        cache_writes: bool,
    ) -> Micros {
        let writes_dearer =
            cache_writes && self.cache_write_micros_per_mtok > self.input_micros_per_mtok;
        self.cost(&TokenUsage {
            prompt_tokens,
            completion_tokens: max_output_tokens,
            cache_write_tokens: if writes_dearer { prompt_tokens } else { 0 },
            ..TokenUsage::default()
        })
    }
}

/// `count` units at `unit` micro-credits each plus a flat `request` price: what images (per
/// image) and videos (per second) cost. Saturates rather than wraps.
pub fn per_unit(unit: i64, count: i64, request: i64) -> Micros {
    Micros(unit.saturating_mul(count).saturating_add(request))
}

/// How a metered request is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pricing {
    /// By the model's token prices: the most it may use is reserved, what it used is charged.
    Metered,
    /// One amount (a platform feature's price), charged once the answer is delivered, nothing
    /// otherwise.
    Flat(Micros),
}

impl Pricing {
    /// What to reserve: `flat`, or the most the tokens may cost (see [`TokenPrice::max_cost`]).
    pub fn most(
        self,
        price: &TokenPrice,
        prompt_tokens: i64,
        max_output_tokens: i64,
        cache_writes: bool,
    ) -> Micros {
        match self {
            Pricing::Metered => price.max_cost(prompt_tokens, max_output_tokens, cache_writes),
            Pricing::Flat(amount) => Micros(amount.0.max(0)),
        }
    }

    /// What a request that ended with `usage` (`None`: nothing was generated) costs; `delivered`
    /// says whether the whole answer reached its caller. A metered request pays for what was
    /// generated either way; a flat one only for a delivered answer with visible output (an
    /// empty answer, or one of reasoning alone, is worth nothing to the feature that asked).
    pub fn cost(self, price: &TokenPrice, usage: Option<&TokenUsage>, delivered: bool) -> Micros {
        match (self, usage) {
            (_, None) => Micros::ZERO,
            (Pricing::Metered, Some(usage)) => price.cost(usage),
            (Pricing::Flat(amount), Some(u))
                if delivered && u.completion_tokens > u.reasoning_tokens =>
            {
                Micros(amount.0.max(0))
            }
            (Pricing::Flat(_), Some(_)) => Micros::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICE: TokenPrice = TokenPrice {
        input_micros_per_mtok: 2_500_000,
        output_micros_per_mtok: 10_000_000,
        cached_input_micros_per_mtok: 1_250_000,
        cache_write_micros_per_mtok: 3_125_000,
        request_micros: 0,
        version: 1,
    };

    #[test]
    fn cost_rounds_up_once_at_the_end() {
        // 1 input token at 2.5 credits/M = 2.5 micros, 1 output token = 10 micros → 12.5 → 13.
        let usage = TokenUsage {
            prompt_tokens: 1,
            completion_tokens: 1,
            ..Default::default()
        };
        assert_eq!(PRICE.cost(&usage), Micros(13));
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let usage = TokenUsage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            cached_tokens: 200,
            reasoning_tokens: 100,
            cache_write_tokens: 0,
        };
        // 800 × 2.5 + 200 × 1.25 + 500 × 10 = 2000 + 250 + 5000 = 7250 micros.
        assert_eq!(PRICE.cost(&usage), Micros(7250));
    }

    #[test]
    fn cache_writes_and_the_request_price_are_added() {
        let usage = TokenUsage {
            prompt_tokens: 1000,
            completion_tokens: 0,
            cached_tokens: 600,
            cache_write_tokens: 300,
            reasoning_tokens: 0,
        };
        let price = TokenPrice {
            request_micros: 7,
            ..PRICE
        };
        // 100 × 2.5 + 600 × 1.25 + 300 × 3.125 = 250 + 750 + 937.5 = 1937.5 → 1938, + 7.
        assert_eq!(price.cost(&usage), Micros(1945));
    }

    #[test]
    fn per_unit_prices_add_the_request_price_and_saturate() {
        assert_eq!(per_unit(40_000, 3, 5), Micros(120_005));
        assert_eq!(per_unit(i64::MAX, 2, 1), Micros(i64::MAX));
    }

    #[test]
    fn a_flat_price_is_reserved_whole_and_charged_only_when_delivered() {
        let flat = Pricing::Flat(Micros(10_000_000));
        let usage = TokenUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            ..Default::default()
        };
        assert_eq!(
            flat.most(&PRICE, 1_000_000, 1_000_000, true),
            Micros(10_000_000)
        );
        assert_eq!(flat.cost(&PRICE, Some(&usage), true), Micros(10_000_000));
        assert_eq!(flat.cost(&PRICE, Some(&usage), false), Micros::ZERO);
        assert_eq!(flat.cost(&PRICE, None, true), Micros::ZERO);
        // Metered: what was generated is paid for, delivered or not.
        let metered = Pricing::Metered;
        assert_eq!(
            metered.cost(&PRICE, Some(&usage), false),
            PRICE.cost(&usage)
        );
        assert_eq!(metered.cost(&PRICE, None, false), Micros::ZERO);
        assert_eq!(
            metered.most(&PRICE, 10, 20, false),
            PRICE.max_cost(10, 20, false)
        );
    }

    #[test]
    fn zero_usage_costs_nothing() {
        assert_eq!(PRICE.cost(&TokenUsage::default()), Micros(0));
    }
}
