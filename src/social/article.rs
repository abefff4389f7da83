//! A creation's text as the Chinese platforms take it: WeChat-safe HTML for an Official
//! Account article (Markdown converted; HTML stripped of scripts, styles, frames, event
//! handlers and outside links, which WeChat removes or refuses), and plain text cut to a
//! platform's limits for a hand-off package.

/// The `src` of every image in some HTML, in order.
pub fn image_sources(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(k) = lower[at..].find("<img") {
        let start = at + k;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        if let Some(src) = attr(&html[start..end], "src") {
            out.push(src);
        }
        at = end;
    }
    out
}

/// The value of attribute `name` in a tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(k) = lower[from..].find(name) {
        let i = from + k;
        from = i + name.len();
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_at = tag.len() - rest.len() + 1;
        let v = tag[value_at..].trim_start();
        let (quote, body) = match v.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &v[1..]),
            _ => (None, v),
        };
        let end = match quote {
            Some(q) => body.find(q).unwrap_or(body.len()),
            None => body
                .find(|c: char| c.is_whitespace() || c == '>')
                .unwrap_or(body.len()),
        };
        return Some(body[..end].to_owned());
    }
    None
}

/// HTML escaped for text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Removes every `<tag ...>...</tag>` block (case-insensitive).
fn drop_blocks(html: &str, tag: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let lower = html.to_ascii_lowercase();
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut at = 0;
    while let Some(k) = lower[at..].find(&open) {
        let start = at + k;
        out.push_str(&html[at..start]);
        at = match lower[start..].find(&close) {
            Some(e) => start + e + close.len(),
            None => html.len(),
        };
    }
    out.push_str(&html[at..]);
    out
}

/// Removes `on…=` event handlers and `javascript:` URLs from tags, and turns links into their
/// text (WeChat refuses outside links in an article).
fn clean_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(k) = rest.find('<') {
        out.push_str(&rest[..k]);
        let tail = &rest[k..];
        let end = tail.find('>').map_or(tail.len(), |e| e + 1);
        let tag = &tail[..end];
        let lower = tag.to_ascii_lowercase();
        if lower.starts_with("<a ") || lower == "<a>" || lower.starts_with("</a") {
            // The link goes; its text stays.
        } else {
            out.push_str(&strip_handlers(tag));
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn strip_handlers(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    let mut parts = tag.split_inclusive(char::is_whitespace).peekable();
    let mut skipping_quote: Option<char> = None;
    for part in parts.by_ref() {
        if let Some(q) = skipping_quote {
            if part.trim_end().ends_with(q) || part.trim_end().ends_with(&format!("{q}>")) {
                skipping_quote = None;
                if part.trim_end().ends_with('>') {
                    out.push('>');
                }
            }
            continue;
        }
        let lower = part.trim_start().to_ascii_lowercase();
        let handler = lower.starts_with("on") && lower.contains('=');
        let script_url = lower.contains("javascript:");
        if handler || script_url {
            let value = part.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
            if let Some(q) = value.chars().next().filter(|c| *c == '"' || *c == '\'') {
                let inner = value[1..].trim_end_matches('>');
                if !inner.ends_with(q) {
                    skipping_quote = Some(q);
                    continue;
                }
            }
            if part.trim_end().ends_with('>') {
                out.push('>');
            } else {
                out.push(' ');
            }
            continue;
        }
        out.push_str(part);
    }
    out
}

/// Inline Markdown (already HTML-escaped text): images, links (their text), bold, italic,
/// code.
fn inline(text: &str) -> String {
    let mut s = escape(text);
    // Images: ![alt](src)
    while let Some(start) = s.find("![") {
        let Some(mid) = s[start..].find("](").map(|m| start + m) else {
            break;
        };
        let Some(end) = s[mid..].find(')').map(|e| mid + e) else {
            break;
        };
        let alt = s[start + 2..mid].to_owned();
        let src = s[mid + 2..end].to_owned();
        let img = format!(
            "<img src=\"{src}\" alt=\"{alt}\" style=\"max-width:100%;display:block;margin:12px auto;\">"
        );
        s.replace_range(start..=end, &img);
    }
    // Links: [text](url) → text
    let mut from = 0;
    while let Some(k) = s[from..].find('[') {
        let start = from + k;
        let Some(mid) = s[start..].find("](").map(|m| start + m) else {
            break;
        };
        let Some(end) = s[mid..].find(')').map(|e| mid + e) else {
            break;
        };
        let label = s[start + 1..mid].to_owned();
        s.replace_range(start..=end, &label);
        from = start + label.len();
    }
    for (mark, open, close) in [("**", "<strong>", "</strong>"), ("`", "<code>", "</code>")] {
        let mut n = 0;
        while let Some(k) = s.find(mark) {
            s.replace_range(k..k + mark.len(), if n % 2 == 0 { open } else { close });
            n += 1;
        }
        if n % 2 == 1 {
            s.push_str(close);
        }
    }
    s
}

/// A creation's content as WeChat-safe HTML: Markdown converted (headings, paragraphs, lists,
/// quotes, code, images, bold), or its HTML cleaned.
pub fn to_wechat_html(content: &str) -> String {
    let trimmed = content.trim();
    if trimmed.starts_with('<') {
        let mut html = trimmed.to_owned();
        for tag in ["script", "style", "iframe", "object", "embed", "form"] {
            html = drop_blocks(&html, tag);
        }
        return clean_tags(&html);
    }
    let p = "<p style=\"margin:0 0 16px;line-height:1.75;font-size:16px;\">";
    let mut out = String::new();
    let mut list: Option<&str> = None;
    let mut code = false;
    let mut para: Vec<String> = Vec::new();
    let flush = |out: &mut String, para: &mut Vec<String>| {
        if !para.is_empty() {
            out.push_str(p);
            out.push_str(&para.join("<br>"));
            out.push_str("</p>");
            para.clear();
        }
    };
    for line in trimmed.lines() {
        let l = line.trim_end();
        if l.trim_start().starts_with("```") {
            flush(&mut out, &mut para);
            out.push_str(if code {
                "</code></pre>"
            } else {
                "<pre style=\"background:#f6f8fa;padding:12px;overflow-x:auto;\"><code>"
            });
            code = !code;
            continue;
        }
        if code {
            out.push_str(&escape(l));
            out.push('\n');
            continue;
        }
        let t = l.trim_start();
        let item = t
            .strip_prefix("- ")
            .or_else(|| t.strip_prefix("* "))
            .map(|x| ("ul", x))
            .or_else(|| {
                let digits = t.chars().take_while(char::is_ascii_digit).count();
                (digits > 0)
                    .then(|| t[digits..].strip_prefix(". "))
                    .flatten()
                    .map(|x| ("ol", x))
            });
        if let Some((kind, text)) = item {
            flush(&mut out, &mut para);
            if list != Some(kind) {
                if let Some(prev) = list {
                    out.push_str(&format!("</{prev}>"));
                }
                out.push_str(&format!("<{kind} style=\"padding-left:24px;\">"));
                list = Some(kind);
            }
            out.push_str(&format!("<li>{}</li>", inline(text)));
            continue;
        }
        if let Some(prev) = list.take() {
            out.push_str(&format!("</{prev}>"));
        }
        if t.is_empty() {
            flush(&mut out, &mut para);
            continue;
        }
        let level = t.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&level) && t[level..].starts_with(' ') {
            flush(&mut out, &mut para);
            let size = [24, 21, 18, 17, 16, 16][level - 1];
            out.push_str(&format!(
                "<h{level} style=\"font-size:{size}px;font-weight:bold;margin:24px 0 12px;\">{}</h{level}>",
                inline(t[level..].trim())
            ));
            continue;
        }
        if let Some(q) = t.strip_prefix('>') {
            flush(&mut out, &mut para);
            out.push_str(&format!(
                "<blockquote style=\"border-left:4px solid #ddd;padding-left:12px;color:#666;\">{}</blockquote>",
                inline(q.trim())
            ));
            continue;
        }
        para.push(inline(t));
    }
    if code {
        out.push_str("</code></pre>");
    }
    if let Some(prev) = list {
        out.push_str(&format!("</{prev}>"));
    }
    flush(&mut out, &mut para);
    out
}

/// A creation's content as plain text: tags and Markdown marks removed, paragraphs kept.
pub fn plain_text(content: &str) -> String {
    let html = to_wechat_html(content);
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    let mut tag = String::new();
    for c in html.chars() {
        match (in_tag, c) {
            (false, '<') => {
                in_tag = true;
                tag.clear();
            }
            (true, '>') => {
                in_tag = false;
                let t = tag.to_ascii_lowercase();
                if t.starts_with("/p")
                    || t.starts_with("/h")
                    || t.starts_with("br")
                    || t.starts_with("/li")
                    || t.starts_with("/blockquote")
                {
                    text.push('\n');
                }
            }
            (true, c) => tag.push(c),
            (false, c) => text.push(c),
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    let mut lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.dedup_by(|a, b| a.is_empty() && b.is_empty());
    lines.join("\n").trim().to_owned()
}

/// `s` cut to at most `max` characters (an ellipsis marking the cut): the text, and whether
/// it was cut.
pub fn clip(s: &str, max: usize) -> (String, bool) {
    if s.chars().count() <= max {
        return (s.to_owned(), false);
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    (out, true)
}

/// The `#tags` in some text (a word after `#`, ended by space, punctuation or another `#`).
pub fn hashtags(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split('#').skip(1) {
        let tag: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !tag.is_empty() && !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_wechat_html() {
        let md = "# 标题\n\n第一段 **加粗** 和 [链接](https://x.example)\n第二行\n\n- 一\n- 二\n\n![图](https://img.example/a.png)\n\n> 引用";
        let html = to_wechat_html(md);
        assert!(html.contains("<h1 style="), "{html}");
        assert!(html.contains("<strong>加粗</strong>"));
        assert!(html.contains("和 链接"), "links keep their text: {html}");
        assert!(!html.contains("https://x.example"));
        assert!(html.contains("第一段"));
        assert!(html.contains("<br>第二行"));
        assert!(html.contains("<li>一</li><li>二</li></ul>"));
        assert_eq!(image_sources(&html), vec!["https://img.example/a.png"]);
        assert!(html.contains("<blockquote"));
    }

    #[test]
    fn html_loses_scripts_handlers_and_links() {
        let html = to_wechat_html(
            "<p onclick=\"steal()\">hi <a href=\"https://x\">there</a></p><script>alert(1)</script><img src='a.png' onerror='x()'><style>p{}</style>",
        );
        assert!(!html.contains("script"), "{html}");
        assert!(!html.contains("onclick"), "{html}");
        assert!(!html.contains("onerror"), "{html}");
        assert!(!html.contains("href"), "{html}");
        assert!(!html.contains("<style"), "{html}");
        assert!(html.contains("hi there"), "{html}");
        assert_eq!(image_sources(&html), vec!["a.png"]);
    }

    #[test]
    fn plain_text_keeps_paragraphs_and_clip_marks_the_cut() {
        let text = plain_text("# 标题\n\n正文 **一**\n\n- 甲\n- 乙");
        assert_eq!(text, "标题\n正文 一\n甲\n乙");
        assert_eq!(clip("一二三四五", 3), ("一二…".to_owned(), true));
        assert_eq!(clip("一二三", 3), ("一二三".to_owned(), false));
        assert_eq!(
            hashtags("好物 #护肤 #日常分享, #护肤"),
            vec!["护肤", "日常分享"]
        );
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
