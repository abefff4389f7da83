//! The writing tools: what each one asks for (its input fields) and its shipped defaults (name,
//! description, price, prompt templates). The stored rows (`db::writing_tools`) are the truth an
//! admin changes; [`seed`] writes a default where a row is missing.
//!
//! A user template is plain text with `{{field}}` placeholders. A line whose placeholders are
//! all filled is kept with the values put in; a line with an empty one is left out, so optional
//! fields leave no "（无）" behind.

use crate::billing::Micros;
use crate::db::{self, Db, writing_tools::ToolRow};
use serde_json::{Map, Value};

/// What a tool's user gives it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub required: bool,
}

const fn field(name: &'static str, label: &'static str, required: bool) -> Field {
    Field {
        name,
        label,
        required,
    }
}

const TITLE: Field = field("title", "标题/主题", true);
const KEYWORDS: Field = field("keywords", "关键词（字符串数组或逗号分隔）", false);
const REQUIREMENTS: Field = field("requirements", "其他要求（字数、风格等）", false);

/// A tool as shipped.
pub struct Shipped {
    pub tool_type: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub fields: &'static [Field],
    pub system: &'static str,
    pub user: &'static str,
}

/// Every tool's default price: seed 001's example, 10 credits.
pub const DEFAULT_COST: Micros = Micros(10_000_000);

/// The longest text one field may carry, in characters (a document to rewrite or translate may
/// be long; every other field is short).
pub const MAX_FIELD_CHARS: usize = 2_000;
pub const MAX_CONTENT_CHARS: usize = 50_000;

/// The 14 tools, in seed 001's order.
pub const DEFAULTS: &[Shipped] = &[
    Shipped {
        tool_type: "wechat_article",
        name: "公众号文章",
        description: "生成适合微信公众号的文章",
        fields: &[TITLE, KEYWORDS, REQUIREMENTS],
        system: "你是一名资深微信公众号主编。写出可直接发布的公众号文章：一个吸引点击但不夸张的标题，\
                 开头三行抓住读者，正文用小标题分成3到5节，段落短、口语化，适当使用加粗要点，结尾给出总结和互动引导（留言、转发）。\
                 只输出文章本身，使用Markdown。",
        user: "文章标题：{{title}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "xiaohongshu_note",
        name: "小红书笔记",
        description: "生成小红书风格的种草笔记",
        fields: &[TITLE, KEYWORDS, REQUIREMENTS],
        system: "你是小红书爆款笔记博主。笔记格式：第一行是带emoji的标题（20字以内）；正文分成多个短段落，\
                 每段一到三句，多用emoji和第一人称真实体验，给出具体可操作的清单或步骤；结尾另起一行写5到8个话题标签，\
                 格式为 #标签。语气亲切活泼，不要写成广告腔。",
        user: "笔记主题：{{title}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "official_document",
        name: "公文写作",
        description: "按党政机关公文格式撰写通知、请示、报告、函等",
        fields: &[
            TITLE,
            field("doc_type", "文种（通知、请示、报告、函、纪要等）", false),
            field("issuer", "发文机关", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是机关单位的公文写作专家，严格遵循《党政机关公文格式》。依次写出：标题（发文机关+事由+文种）、\
                 主送机关、正文（开头说明依据和目的，主体分条列项用“一、（一）、1.”层级，结尾用规范结束语如“特此通知”“妥否，请批示”）、\
                 落款（发文机关）和成文日期（用“××××年××月××日”占位）。语言庄重、准确、简练，不用口语和修辞夸张。",
        user: "事由/标题：{{title}}\n文种：{{doc_type}}\n发文机关：{{issuer}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "academic_paper",
        name: "论文写作",
        description: "生成结构完整的学术论文初稿",
        fields: &[
            TITLE,
            field("discipline", "学科领域", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是严谨的学术写作导师。按学术论文结构写作：题目、摘要（200到300字）、关键词、引言（研究背景、问题与意义）、\
                 文献综述、研究方法、分析与讨论、结论与展望、参考文献（给出格式示例并标注需作者核实）。\
                 论证客观、术语准确，不编造具体数据和文献，需要数据处用【待补充】标出。",
        user: "论文题目：{{title}}\n学科：{{discipline}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "marketing_copy",
        name: "营销文案",
        description: "为产品或活动撰写营销推广文案",
        fields: &[
            TITLE,
            field("audience", "目标人群", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是一名转化率导向的营销文案策划。先给出3条备选主标语（每条15字以内），再写正文：\
                 痛点引入、产品卖点（3到5条，每条一句利益点）、信任背书、限时行动号召。语言有画面感，\
                 符合广告法，不用“最”“第一”等绝对化用语。",
        user: "产品/活动：{{title}}\n目标人群：{{audience}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "news_article",
        name: "新闻稿/软文",
        description: "撰写新闻通稿或品牌软文",
        fields: &[TITLE, KEYWORDS, REQUIREMENTS],
        system: "你是资深新闻编辑。按倒金字塔结构写新闻稿：标题（可带副题）、导语（一段交代何时、何地、何人、何事、为何）、\
                 主体（按重要性递减展开，可引用相关人士的话并用【待核实】标注）、背景资料、结尾。客观中立，事实与观点分开。",
        user: "新闻主题：{{title}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "video_script",
        name: "短视频脚本",
        description: "生成抖音、快手等短视频的分镜脚本",
        fields: &[
            TITLE,
            field("duration", "时长（秒）", false),
            field("platform", "发布平台", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是短视频编导。输出可拍摄的分镜脚本：开头3秒钩子；然后用Markdown表格列出每个镜头的序号、时长、画面、\
                 台词/旁白、字幕、音效；结尾有行动引导（点赞、关注、评论）。节奏紧凑，台词口语化，总时长与要求一致。",
        user: "视频主题：{{title}}\n时长：{{duration}}秒\n平台：{{platform}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "story_novel",
        name: "故事/小说",
        description: "创作短篇故事或小说章节",
        fields: &[
            TITLE,
            field("genre", "类型（悬疑、言情、科幻等）", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是一位小说作家。写一个完整的故事：有鲜明的人物、清晰的冲突、起承转合和有余味的结尾。\
                 多用场景、动作和对话推进情节，少用概括性叙述；对话用中文引号。只输出故事正文，开头给出标题。",
        user: "故事题目/设定：{{title}}\n类型：{{genre}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "business_plan",
        name: "商业计划书",
        description: "撰写面向投资人的商业计划书",
        fields: &[
            TITLE,
            field("industry", "所属行业", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是投融资顾问。按商业计划书结构写作：执行摘要、痛点与机会、产品与服务、市场规模与目标客户、\
                 竞争分析、商业模式与盈利方式、营销与增长策略、团队、财务预测（用【待补充】标出需要真实数字的地方）、\
                 融资需求与资金用途、风险与对策。每节用小标题，要点清晰可信。",
        user: "项目名称：{{title}}\n行业：{{industry}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "work_report",
        name: "工作报告",
        description: "撰写周报、月报、年终总结等工作报告",
        fields: &[
            TITLE,
            field("period", "报告周期（如2026年第一季度）", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是职场写作顾问。工作报告结构：标题、工作概述、主要工作与成果（分条，尽量量化，数据用【待补充】占位）、\
                 存在的问题与原因分析、下阶段工作计划（具体、可衡量、有时间节点）、需要的支持。语言务实简洁。",
        user: "报告主题：{{title}}\n周期：{{period}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "resume",
        name: "简历/求职信",
        description: "生成简历或求职信",
        fields: &[
            field("title", "求职岗位", true),
            field("experience", "个人经历与技能", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是资深HR和简历顾问。输出一份Markdown简历，依次包含：基本信息（用占位符）、求职意向、个人优势（3到4条）、\
                 工作/项目经历（每段用STAR法则写2到4条成果，动词开头、尽量量化）、教育背景、技能证书；\
                 最后附一封300字以内的求职信。内容贴合目标岗位，不编造用户未提供的具体经历，缺失处用【待补充】。",
        user: "求职岗位：{{title}}\n个人经历与技能：{{experience}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "lesson_plan",
        name: "教案/课件",
        description: "生成教学教案和课件大纲",
        fields: &[
            field("title", "课题", true),
            field("subject", "学科", false),
            field("grade", "年级/学段", false),
            KEYWORDS,
            REQUIREMENTS,
        ],
        system: "你是一线优秀教师。教案结构：课题、教学目标（知识与技能、过程与方法、情感态度与价值观）、教学重点与难点、\
                 教学准备、教学过程（导入、新授、练习、小结、作业，每环节写清教师活动、学生活动和时间）、板书设计、教学反思提示。\
                 适合所给学段的认知水平。",
        user: "课题：{{title}}\n学科：{{subject}}\n年级：{{grade}}\n关键词：{{keywords}}\n要求：{{requirements}}",
    },
    Shipped {
        tool_type: "content_rewrite",
        name: "内容改写",
        description: "改写、润色或扩写已有内容",
        fields: &[
            field("content", "原文", true),
            field("style", "目标风格", false),
            field("title", "标题", false),
            REQUIREMENTS,
        ],
        system: "你是文字编辑。在保留原文核心信息和事实的前提下改写：换用不同的表达与句式，结构更清晰，语言更流畅，\
                 按要求调整风格和长度。不添加原文没有的事实。只输出改写后的内容。",
        user: "改写要求：{{requirements}}\n目标风格：{{style}}\n标题：{{title}}\n原文：\n{{content}}",
    },
    Shipped {
        tool_type: "translation",
        name: "多语言翻译",
        description: "在多种语言之间翻译文本",
        fields: &[
            field("content", "原文", true),
            field("target_language", "目标语言（如 English、日本語）", true),
            field("title", "标题", false),
            REQUIREMENTS,
        ],
        system: "你是专业译者。把用户给出的原文忠实、通顺地译成目标语言：术语准确，符合目标语言习惯，保留原文的段落、\
                 列表和Markdown格式，人名地名按通行译法。只输出译文，不加解释。",
        user: "目标语言：{{target_language}}\n要求：{{requirements}}\n标题：{{title}}\n原文：\n{{content}}",
    },
];

/// The PPT generator, stored and priced like a writing tool (admins change it under the same
/// route) but not listed among them: its answer is a deck outline in JSON, written as a .pptx.
pub const PPT: Shipped = Shipped {
    tool_type: "ppt_deck",
    name: "PPT生成",
    description: "根据主题和大纲生成演示文稿（.pptx）",
    fields: &[
        field("topic", "演示主题", true),
        field("outline", "大纲（字符串数组）", false),
        REQUIREMENTS,
    ],
    system: "你是专业的演示文稿策划。根据用户的主题和大纲写一份演示文稿，只输出一个JSON对象，不要任何解释或Markdown代码块。\
             格式：{\"title\": 封面标题, \"subtitle\": 封面副标题, \"slides\": [{\"title\": 页标题, \"bullets\": [3到6条要点，每条不超过40字], \"notes\": 演讲者备注}]}。\
             大纲的每一项至少对应一页（内容多时可拆成多页），按大纲顺序排列；没有大纲时自拟5到8页。",
    user: "主题：{{topic}}\n大纲：{{outline}}\n要求：{{requirements}}",
};

/// A deck's default price: seed 001's example, 30 credits.
pub const PPT_COST: Micros = Micros(30_000_000);

/// The shipped definition of `tool_type` (a writing tool, or the PPT generator).
pub fn default_of(tool_type: &str) -> Option<&'static Shipped> {
    DEFAULTS
        .iter()
        .chain(std::iter::once(&PPT))
        .find(|d| d.tool_type == tool_type)
}

/// Whether `tool_type` is one of the writing tools (not the PPT generator).
pub fn is_writing(tool_type: &str) -> bool {
    DEFAULTS.iter().any(|d| d.tool_type == tool_type)
}

/// Every tool type, for a 404 that lists them.
pub fn tool_types() -> Vec<&'static str> {
    DEFAULTS.iter().map(|d| d.tool_type).collect()
}

/// Writes the default of every tool that has no row yet.
pub async fn seed(db: &Db) -> Result<(), sqlx::Error> {
    let now = crate::clock::now_ms();
    for d in DEFAULTS.iter().chain(std::iter::once(&PPT)) {
        let cost = if d.tool_type == PPT.tool_type {
            PPT_COST
        } else {
            DEFAULT_COST
        };
        db::writing_tools::insert_missing(
            db,
            &ToolRow {
                tool_type: d.tool_type.to_owned(),
                name: d.name.to_owned(),
                description: d.description.to_owned(),
                credits_cost_micros: cost.0,
                model: None,
                system_prompt: d.system.to_owned(),
                user_template: d.user.to_owned(),
                enabled: 1,
                updated_at_ms: now,
            },
        )
        .await?;
    }
    Ok(())
}

/// Stored rows in seed order (a row the defaults do not know comes last).
pub fn in_seed_order(mut rows: Vec<ToolRow>) -> Vec<ToolRow> {
    let position = |t: &str| {
        DEFAULTS
            .iter()
            .chain(std::iter::once(&PPT))
            .position(|d| d.tool_type == t)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by_key(|r| position(&r.tool_type));
    rows
}

/// A field's value as prompt text: a string as given, an array of strings joined with "、",
/// a number as written; `Err` names what is wrong.
fn text_of(name: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_owned()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("{name}: must be a string or a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| {
                parts
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("、")
            }),
        _ => Err(format!("{name}: must be a string or a list of strings")),
    }
}

/// The tool's inputs read from a request body: every field it knows, checked (required ones
/// present, none too long); `Err` is the message of a 400.
pub fn read_inputs(fields: &[Field], body: &Map<String, Value>) -> Result<Inputs, String> {
    let mut values = Vec::with_capacity(fields.len());
    for f in fields {
        let text = match body.get(f.name) {
            Some(v) => text_of(f.name, v)?,
            None => String::new(),
        };
        if f.required && text.is_empty() {
            return Err(format!("{}: required ({})", f.name, f.label));
        }
        let max = if f.name == "content" {
            MAX_CONTENT_CHARS
        } else {
            MAX_FIELD_CHARS
        };
        let chars = text.chars().count();
        if chars > max {
            return Err(format!(
                "{}: {chars} characters, at most {max} are accepted",
                f.name
            ));
        }
        values.push((f.name, text));
    }
    Ok(Inputs(values))
}

/// A tool's inputs, by field name.
#[derive(Debug, Clone)]
pub struct Inputs(Vec<(&'static str, String)>);

impl Inputs {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// `template` with its placeholders filled; lines with an empty placeholder are left out.
    pub fn render(&self, template: &str) -> String {
        let mut out: Vec<String> = Vec::new();
        for line in template.lines() {
            match self.fill_line(line) {
                Some(filled) => out.push(filled),
                None => continue,
            }
        }
        out.join("\n")
    }

    fn fill_line(&self, line: &str) -> Option<String> {
        let mut out = String::with_capacity(line.len());
        let mut copied = 0;
        for (start, end, name) in placeholders(line) {
            let value = self.get(name);
            if value.is_empty() {
                return None;
            }
            out.push_str(&line[copied..start]);
            out.push_str(value);
            copied = end;
        }
        out.push_str(&line[copied..]);
        Some(out)
    }
}

/// The `{{name}}` placeholders of `text`: where each starts and ends, and its name (trimmed).
pub fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|o| from + o) {
        let Some(close) = text[open + 2..].find("}}").map(|c| open + 2 + c) else {
            break;
        };
        out.push((open, close + 2, text[open + 2..close].trim()));
        from = close + 2;
    }
    out
}

/// The input fields of `tool_type` (none for a type the defaults do not know).
pub fn fields_of(tool_type: &str) -> &'static [Field] {
    default_of(tool_type).map_or(&[], |d| d.fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(tool: &str, body: Value) -> Result<Inputs, String> {
        read_inputs(fields_of(tool), body.as_object().unwrap_or(&Map::new()))
    }

    #[test]
    fn there_are_the_fourteen_tools_of_seed_001_each_with_placeholders_it_knows() {
        assert_eq!(DEFAULTS.len(), 14);
        for d in DEFAULTS {
            for (_, _, name) in placeholders(d.user) {
                assert!(
                    d.fields.iter().any(|f| f.name == name),
                    "{}: {{{{{name}}}}} is not one of its fields",
                    d.tool_type
                );
            }
        }
    }

    #[test]
    fn empty_optional_fields_leave_their_line_out() {
        let i = inputs(
            "wechat_article",
            json!({"title": "如何提高效率", "keywords": ["时间管理", "工具"]}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = i.render("标题：{{title}}\n关键词：{{keywords}}\n要求：{{requirements}}");
        assert_eq!(text, "标题：如何提高效率\n关键词：时间管理、工具");
    }

    #[test]
    fn a_missing_required_field_or_an_oversize_one_is_named() {
        let e = inputs("translation", json!({"content": "hello"})).err();
        assert_eq!(
            e.as_deref(),
            Some("target_language: required (目标语言（如 English、日本語）)")
        );
        let long = "x".repeat(MAX_FIELD_CHARS + 1);
        let e = inputs("news_article", json!({"title": long})).err();
        assert!(e.is_some_and(|e| e.starts_with("title: 2001 characters")));
        let e = inputs("news_article", json!({"title": {"a": 1}})).err();
        assert_eq!(
            e.as_deref(),
            Some("title: must be a string or a list of strings")
        );
    }
}
