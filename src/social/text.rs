//! Post text: a draft item's HTML made safe ([`sanitize_html`]) and plain ([`plain_text`]), and
//! each platform's own count of it ([`count`]): X's weighted length (twitter-text v3: code
//! points outside the Latin, general-punctuation ranges weigh 2, an emoji sequence 2, a URL 23,
//! after NFC), Bluesky's graphemes (300, and at most 3,000 UTF-8 bytes), Mastodon's characters
//! with a URL as 23 (the instance's limit, 500 by default), Threads' characters with an emoji as
//! its UTF-8 length (500) and LinkedIn's characters (3,000).

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// A platform Tollgate publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    X,
    Bluesky,
    Mastodon,
    Threads,
    LinkedIn,
}

impl Platform {
    pub const ALL: [Platform; 5] = [
        Platform::X,
        Platform::Bluesky,
        Platform::Mastodon,
        Platform::Threads,
        Platform::LinkedIn,
    ];

    /// The name in routes and bodies (`twitter` for X, as seed 000 calls it).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::X => "twitter",
            Platform::Bluesky => "bluesky",
            Platform::Mastodon => "mastodon",
            Platform::Threads => "threads",
            Platform::LinkedIn => "linkedin",
        }
    }

    /// A platform by name (`x` and `twitter` are both X).
    pub fn parse(name: &str) -> Option<Platform> {
        match name.trim().to_ascii_lowercase().as_str() {
            "twitter" | "x" => Some(Platform::X),
            "bluesky" | "bsky" => Some(Platform::Bluesky),
            "mastodon" => Some(Platform::Mastodon),
            "threads" => Some(Platform::Threads),
            "linkedin" => Some(Platform::LinkedIn),
            _ => None,
        }
    }

    /// The most a post may count (Mastodon's is its instance's; 500 is the default).
    pub fn default_limit(self) -> usize {
        match self {
            Platform::X => 280,
            Platform::Bluesky => 300,
            Platform::Mastodon => 500,
            Platform::Threads => 500,
            Platform::LinkedIn => 3_000,
        }
    }
}

/// How long a URL counts on X and Mastodon.
pub const URL_LENGTH: usize = 23;
/// Bluesky's other bound: a post's text in UTF-8 bytes.
pub const BLUESKY_MAX_BYTES: usize = 3_000;

/// A text's count on one platform, against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub count: usize,
    pub limit: usize,
    pub valid: bool,
}

/// `text`'s count on `platform` against `limit`. Empty text is never valid (a post needs words
/// or media; media is checked where it is attached).
pub fn count(platform: Platform, text: &str, limit: usize) -> Count {
    let count = match platform {
        Platform::X => x_weighted_length(text),
        Platform::Bluesky => text.graphemes(true).count(),
        Platform::Mastodon => mastodon_length(text),
        Platform::Threads => threads_length(text),
        Platform::LinkedIn => text.chars().count(),
    };
    let fits_bytes = platform != Platform::Bluesky || text.len() <= BLUESKY_MAX_BYTES;
    Count {
        count,
        limit,
        valid: count <= limit && fits_bytes && !text.trim().is_empty(),
    }
}

/// X's weighted length (twitter-text v3): NFC, then URLs 23 each, emoji sequences 2 each, code
/// points in U+0000–U+10FF, U+2000–U+200D, U+2010–U+201F, U+2032–U+2037 weigh 1, others 2.
pub fn x_weighted_length(text: &str) -> usize {
    let text: String = text.nfc().collect();
    let mut total = 0;
    let mut at = 0;
    for url in find_urls(&text) {
        total += weigh(&text[at..url.start]) + URL_LENGTH;
        at = url.end;
    }
    total + weigh(&text[at..])
}

/// Weighs text with no URL in it.
fn weigh(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut total = 0;
    while i < chars.len() {
        if let Some(len) = emoji_at(&chars, i) {
            total += 2;
            i += len;
            continue;
        }
        let c = chars[i] as u32;
        let light = matches!(c, 0..=4351 | 8192..=8205 | 8208..=8223 | 8242..=8247);
        total += if light { 1 } else { 2 };
        i += 1;
    }
    total
}

/// Mastodon counts characters, a URL as 23.
fn mastodon_length(text: &str) -> usize {
    let urls = find_urls(text);
    let in_urls: usize = urls
        .iter()
        .map(|u| text[u.start..u.end].chars().count())
        .sum();
    text.chars().count() - in_urls + urls.len() * URL_LENGTH
}

/// Threads counts characters, an emoji as its length in UTF-8 bytes.
fn threads_length(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut total = 0;
    while i < chars.len() {
        if let Some(len) = emoji_at(&chars, i) {
            total += chars[i..i + len]
                .iter()
                .map(|c| c.len_utf8())
                .sum::<usize>();
            i += len;
        } else {
            total += 1;
            i += 1;
        }
    }
    total
}

/// Whether `c` can start an emoji on its own.
fn pictographic(c: u32) -> bool {
    matches!(c,
        0x1F000..=0x1FAFF
        | 0x2600..=0x27BF
        | 0x2300..=0x23FF
        | 0x2B00..=0x2BFF
        | 0x2190..=0x21FF
        | 0x25A0..=0x25FF
        | 0x2934 | 0x2935 | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x24C2)
}

/// How many chars the emoji sequence starting at `i` takes (`None`: no emoji there). A sequence
/// is a base (a pictograph; a pair of regional indicators; `©`, `®` or a keycap digit with its
/// variation selector or keycap mark) with its modifiers (variation selectors, skin tones, tags,
/// the keycap mark), joined to more by zero-width joiners.
fn emoji_at(chars: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| chars.get(k).map(|c| *c as u32);
    let first = at(i)?;
    let mut end = i + 1;
    let regional = |c: u32| (0x1F1E6..=0x1F1FF).contains(&c);
    if regional(first) {
        if at(end).is_some_and(regional) {
            end += 1;
        }
        return Some(end - i);
    }
    let keycap_base = matches!(first, 0x30..=0x39 | 0x23 | 0x2A | 0xA9 | 0xAE);
    if keycap_base {
        // Only with its presentation selector or keycap mark is it an emoji.
        match (at(end), at(end + 1)) {
            (Some(0xFE0F), Some(0x20E3)) => return Some(3),
            (Some(0x20E3), _) => return Some(2),
            (Some(0xFE0F), _) if matches!(first, 0xA9 | 0xAE) => return Some(2),
            _ => return None,
        }
    }
    if !pictographic(first) {
        return None;
    }
    loop {
        while let Some(c) = at(end) {
            let modifier =
                matches!(c, 0xFE0E | 0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F | 0x20E3);
            if !modifier {
                break;
            }
            end += 1;
        }
        match (at(end), at(end + 1)) {
            (Some(0x200D), Some(next)) if pictographic(next) => end += 2,
            _ => return Some(end - i),
        }
    }
}

/// A URL found in text: its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
}

/// Top-level domains recognised without a protocol (every two-letter one is taken as a country
/// code).
const GTLDS: &[&str] = &[
    "com", "net", "org", "info", "biz", "edu", "gov", "mil", "int", "io", "app", "dev", "xyz",
    "top", "site", "online", "shop", "store", "tech", "blog", "news", "cloud", "art", "live",
    "link", "club", "design", "pro", "mobi", "name", "asia", "tel", "travel", "jobs", "page",
    "wiki", "media", "space", "website", "email", "social", "video", "games", "ltd", "group",
    "world", "today", "one", "vip", "work", "fun", "icu", "global", "agency", "studio",
];

/// The URLs in `text` the way X links them: `http(s)://` and a host, or a bare domain with a
/// known top-level domain (not right after a letter, digit, `@`, `$`, `#`, `.`, `-`, `_` or
/// `/`), each with its port, path and query, less trailing punctuation.
pub fn find_urls(text: &str) -> Vec<Found> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        if let Some(url) = url_at(text, i) {
            found.push(url);
            i = url.end;
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    found
}

fn url_at(text: &str, start: usize) -> Option<Found> {
    let prev = text[..start].chars().next_back();
    if prev.is_some_and(|c| c.is_ascii_alphanumeric() || "@＠$#＃".contains(c)) {
        return None;
    }
    let rest = &text[start..];
    let lower: String = rest
        .chars()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let scheme = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        0
    };
    if scheme == 0 && prev.is_some_and(|c| "-_./".contains(c)) {
        return None;
    }
    let host_start = start + scheme;
    let host_len = text[host_start..]
        .find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(text.len() - host_start);
    let host = text[host_start..host_start + host_len].trim_end_matches('.');
    if !valid_host(host, scheme > 0) {
        return None;
    }
    let mut end = host_start + host.len();
    let has_path = matches!(text[end..].chars().next(), Some('/' | '?' | '#' | ':'));
    if scheme == 0 && !has_path && short_country_domain(host) {
        return None;
    }
    // Port, path, query, fragment: up to whitespace or a character no URL carries.
    let tail = text[end..]
        .find(|c: char| c.is_whitespace() || "\"<>{}|\\^`'".contains(c))
        .unwrap_or(text.len() - end);
    let mut path = &text[end..end + tail];
    if !path.is_empty() && !path.starts_with(['/', '?', '#', ':']) {
        path = "";
    }
    // Trailing punctuation is the sentence's, not the URL's (a `)` only when unbalanced).
    loop {
        let trimmed = path.trim_end_matches(['.', ',', ';', '!', '?', '…', '。', '，', '！', '？']);
        let trimmed = if trimmed.ends_with(')')
            && trimmed.matches('(').count() < trimmed.matches(')').count()
        {
            &trimmed[..trimmed.len() - 1]
        } else {
            trimmed
        };
        if trimmed.len() == path.len() {
            break;
        }
        path = trimmed;
    }
    end += path.len();
    Some(Found { start, end })
}

/// A host X links: labels of letters, digits and hyphens (underscores in subdomains), none over
/// 63 characters or starting or ending with a hyphen; a known top-level domain (any with a
/// protocol), or an IPv4 address after `http(s)://`.
fn valid_host(host: &str, with_scheme: bool) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return false;
    }
    if with_scheme && labels.len() == 4 && labels.iter().all(|l| l.parse::<u8>().is_ok()) {
        return true;
    }
    let (tld, domain) = (labels[labels.len() - 1], &labels[..labels.len() - 1]);
    let label_ok = |l: &str, underscore: bool| {
        l.chars().count() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_alphanumeric() || c == '-' || (underscore && c == '_'))
    };
    let last = domain.len() - 1;
    let domains_ok = domain
        .iter()
        .enumerate()
        .all(|(k, l)| label_ok(l, k < last));
    let tld_lower = tld.to_ascii_lowercase();
    let tld_ok = if with_scheme {
        tld.chars().all(char::is_alphabetic) && tld.chars().count() >= 2
    } else {
        tld.is_ascii()
            && (tld.len() == 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
                || GTLDS.contains(&tld_lower.as_str()))
            && domain.iter().all(|l| l.is_ascii())
    };
    domains_ok && tld_ok
}

/// `ab.cn`-style domains (one or two characters before a country code): not linked without a
/// protocol or a path, except `t.co`.
fn short_country_domain(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    match lower.split_once('.') {
        Some((name, tld)) => {
            lower != "t.co" && name.len() <= 2 && tld.len() == 2 && !tld.contains('.')
        }
        None => false,
    }
}

/// The tags kept in a post's HTML, with the attribute each may keep.
const ALLOWED_TAGS: &[(&str, Option<&str>)] = &[
    ("p", None),
    ("br", None),
    ("strong", None),
    ("b", None),
    ("em", None),
    ("i", None),
    ("u", None),
    ("s", None),
    ("a", Some("href")),
    ("ul", None),
    ("ol", None),
    ("li", None),
    ("blockquote", None),
    ("code", None),
    ("span", None),
];

/// `html` made safe to store and show: the allowed tags (without attributes, but for a link's
/// `http(s)` or `mailto` `href`) are kept, a `script`/`style` element is dropped with its
/// contents, every other tag is dropped (its text kept) and every other `<`, `>` and `&`
/// escaped.
pub fn sanitize_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        escape_into(&mut out, &rest[..lt]);
        let after = &rest[lt..];
        // A `<` that opens no tag is text.
        if !after[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!') {
            out.push_str("&lt;");
            rest = &after[1..];
            continue;
        }
        let Some(gt) = after.find('>') else {
            escape_into(&mut out, after);
            return out;
        };
        let tag = &after[1..gt];
        rest = &after[gt + 1..];
        let closing = tag.starts_with('/');
        let body = tag.trim_start_matches('/').trim_end_matches('/').trim();
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && (name == "script" || name == "style") {
            let end = format!("</{name}");
            let cut = rest.to_ascii_lowercase().find(&end);
            rest = match cut {
                Some(at) => rest[at..].find('>').map_or("", |g| &rest[at + g + 1..]),
                None => "",
            };
            continue;
        }
        let Some((_, attribute)) = ALLOWED_TAGS.iter().find(|(t, _)| *t == name) else {
            continue;
        };
        if closing {
            out.push_str(&format!("</{name}>"));
            continue;
        }
        out.push('<');
        out.push_str(&name);
        if let Some(attribute) = attribute
            && let Some(value) = attribute_value(body, attribute)
        {
            let v = decode_entities(&value);
            let lower = v.trim().to_ascii_lowercase();
            if lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("mailto:")
            {
                out.push_str(&format!(" {attribute}=\""));
                escape_into(&mut out, v.trim());
                out.push('"');
            }
        }
        out.push('>');
    }
    escape_into(&mut out, rest);
    out
}

/// The value of `name="…"` (or `'…'`, or bare) in a tag's text.
fn attribute_value(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let at = from + at;
        from = at + name.len();
        let before_ok = lower[..at].ends_with(|c: char| c.is_whitespace());
        let after = lower[from..].trim_start();
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let offset = tag.len() - after.len() + 1;
        let value = tag[offset..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default().to_owned(),
            _ => value
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        });
    }
    None
}

/// Appends `text` with `&`, `<`, `>` and `"` escaped (entities already in it are kept).
fn escape_into(out: &mut String, text: &str) {
    let decoded = decode_entities(text);
    for c in decoded.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// The text a post's HTML shows: paragraphs, line breaks and list items become lines, tags go,
/// entities are decoded, and the ends are trimmed.
pub fn plain_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt..];
        let Some(gt) = after.find('>') else {
            out.push_str(after);
            rest = "";
            break;
        };
        let tag = after[1..gt].trim().to_ascii_lowercase();
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let closing = tag.starts_with('/');
        match (name.as_str(), closing) {
            ("br", _) => out.push('\n'),
            ("p" | "li" | "blockquote" | "div", true) => out.push('\n'),
            ("li", false) if !out.is_empty() && !out.ends_with('\n') => out.push('\n'),
            _ => {}
        }
        rest = &after[gt + 1..];
    }
    out.push_str(rest);
    let text = decode_entities(&out);
    // Paragraph breaks come out as one newline each; runs of blank lines collapse to one.
    let mut lines: Vec<&str> = text.split('\n').map(str::trim_end).collect();
    lines.dedup_by(|a, b| a.is_empty() && b.is_empty());
    lines.join("\n").trim().to_owned()
}

/// Decodes the common named entities and numeric ones; anything else is left as it is.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let semi = after.find(';').filter(|s| *s <= 10);
        let decoded = semi.and_then(|s| {
            let name = &after[1..s];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                _ if name.starts_with("#x") || name.starts_with("#X") => {
                    u32::from_str_radix(&name[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, s))
        });
        match decoded {
            Some((c, s)) => {
                out.push(c);
                rest = &after[s + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(text: &str) -> usize {
        x_weighted_length(text)
    }

    #[test]
    fn x_weights_follow_twitter_texts_v3_conformance_cases() {
        assert_eq!(x("This is a test."), 15);
        assert_eq!(x("http://test.com"), 23);
        assert_eq!(x("https://test.com"), 23);
        assert_eq!(x("test.com"), 23);
        assert_eq!(
            x("Test https://test.com test https://test.com test.com test"),
            86
        );
        assert_eq!(x("저찀쯿쿿"), 8);
        assert_eq!(x("\u{10000}\u{10ffff}"), 4);
        // Each CJK character (and full-width punctuation) weighs 2.
        let poem = "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。";
        assert_eq!(x(poem), 64);
        assert_eq!(x(&"😷".repeat(160)), 320);
        // NFC first: A + combining acute is one character; שּׁ decomposes into three.
        assert_eq!(x("A\u{301}B"), 2);
        assert_eq!(x("A\u{FB2C}"), 4);
        // An emoji sequence weighs 2 however many code points it has.
        assert_eq!(x(&"👨\u{200d}👩\u{200d}👧\u{200d}👦".repeat(140)), 280);
        assert_eq!(
            x(
                "Unicode 10.0 emoji: 🤪; 🧕; 🧕🏾; 🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}"
            ),
            34
        );
        assert_eq!(x("Unicode 9.0 emoji: 🤠; 💃; 💃🏾"), 29);
        assert_eq!(x("🙋🏽👨\u{200d}🎤"), 4);
        assert_eq!(x("1\u{fe0f}\u{20e3}"), 2);
        assert_eq!(x("🇨🇳🇺🇸"), 4);
        // Ten URLs and their spaces; a URL at the end after 264 characters.
        assert_eq!(x(&"https://www.twitter.com/aloha ".repeat(10)), 240);
        let long = format!("{} http://www.twitter.com/jack ", "xxxxxxxxxx-".repeat(24));
        assert_eq!(x(&long), 289);
        // A label over 63 characters is no domain.
        let label = "randomurl".repeat(7);
        assert_eq!(x(&format!("{label}s.com")), 68);
    }

    #[test]
    fn urls_are_found_the_way_x_links_them() {
        let urls = |t: &str| -> Vec<String> {
            find_urls(t)
                .iter()
                .map(|f| t[f.start..f.end].to_owned())
                .collect()
        };
        assert_eq!(
            urls("see https://example.com/a?b=c."),
            ["https://example.com/a?b=c"]
        );
        assert_eq!(urls("(at example.com/x)"), ["example.com/x"]);
        assert_eq!(
            urls("www.example.com and foo.co.jp"),
            ["www.example.com", "foo.co.jp"]
        );
        assert_eq!(urls("t.co"), ["t.co"]);
        assert_eq!(
            urls("访问 https://例子.com/路径 了解"),
            ["https://例子.com/路径"]
        );
        assert_eq!(urls("中文example.com"), ["example.com"]);
        assert!(urls("user@example.com").is_empty());
        assert!(urls("ftp://example.com").is_empty());
        assert!(urls("ab.cd").is_empty());
        assert!(urls("file.txt version 1.2").is_empty());
        assert!(urls("http://www.-domain4352.com/").is_empty());
        assert_eq!(
            urls("http://192.168.0.1/index.html"),
            ["http://192.168.0.1/index.html"]
        );
    }

    #[test]
    fn each_platform_counts_its_own_way() {
        let family = "👨\u{200d}👩\u{200d}👧";
        assert_eq!(count(Platform::Bluesky, family, 300).count, 1);
        assert_eq!(count(Platform::Bluesky, "中文", 300).count, 2);
        let long_bytes = "中".repeat(1_001);
        let c = count(Platform::Bluesky, &long_bytes, 10_000);
        assert!(!c.valid, "over 3,000 bytes even under the grapheme limit");
        assert_eq!(count(Platform::Threads, "hi 😷", 500).count, 3 + 4);
        assert_eq!(
            count(
                Platform::Mastodon,
                "read https://example.com/a/very/long/path/indeed",
                500
            )
            .count,
            5 + 23
        );
        assert_eq!(count(Platform::LinkedIn, "你好 LinkedIn!", 3_000).count, 12);
        let over = count(Platform::X, &"a".repeat(281), 280);
        assert_eq!((over.count, over.valid), (281, false));
        assert!(!count(Platform::X, "  ", 280).valid);
    }

    #[test]
    fn html_is_sanitised_and_made_plain() {
        assert_eq!(plain_text("<p>来自 API 的问候!</p>"), "来自 API 的问候!");
        assert_eq!(plain_text("<p>a</p><p>b &amp; c</p>"), "a\nb & c");
        assert_eq!(plain_text("line<br>next<br/>last"), "line\nnext\nlast");
        assert_eq!(plain_text("<ul><li>one</li><li>two</li></ul>"), "one\ntwo");
        assert_eq!(
            sanitize_html("<p onclick=\"x()\">hi <script>alert(1)</script><b>there</b></p>"),
            "<p>hi <b>there</b></p>"
        );
        assert_eq!(
            sanitize_html(
                "<a href=\"javascript:alert(1)\">x</a><a href='https://e.com/?a=1&amp;b=2'>y</a>"
            ),
            "<a>x</a><a href=\"https://e.com/?a=1&amp;b=2\">y</a>"
        );
        assert_eq!(
            sanitize_html("1 < 2 & <img src=x onerror=y>"),
            "1 &lt; 2 &amp; "
        );
        assert_eq!(sanitize_html("<STYLE>p{}</style>ok"), "ok");
        assert_eq!(sanitize_html("unclosed <b"), "unclosed &lt;b");
    }
}
