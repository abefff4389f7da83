//! A PowerPoint deck (Office Open XML, ECMA-376 PresentationML) written from a [`Deck`]: the
//! package's content types and relationships, the presentation, one slide master with its
//! theme, two layouts (title slide; title and content), a notes master, and per slide its slide
//! and its notes slide. Text is escaped; nothing else from the model reaches the XML.

use std::io::Write;
use zip::write::SimpleFileOptions;

/// A deck to write: the title slide, then one slide per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deck {
    pub title: String,
    pub subtitle: String,
    pub slides: Vec<Slide>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slide {
    pub title: String,
    pub bullets: Vec<String>,
    pub notes: String,
}

const NS: &str = r#"xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main""#;
const REL: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const CT: &str = "application/vnd.openxmlformats-officedocument.presentationml";
const XML_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#;
/// 16:9 in EMU.
const WIDTH: i64 = 12_192_000;
const HEIGHT: i64 = 6_858_000;
const CLR_MAP: &str = r#"bg1="lt1" tx1="dk1" bg2="lt2" tx2="dk2" accent1="accent1" accent2="accent2" accent3="accent3" accent4="accent4" accent5="accent5" accent6="accent6" hlink="hlink" folHlink="folHlink""#;

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn rels(items: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        r#"{XML_HEAD}<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#
    );
    for (id, kind, target) in items {
        out.push_str(&format!(
            r#"<Relationship Id="{id}" Type="{kind}" Target="{target}"/>"#
        ));
    }
    out.push_str("</Relationships>");
    out
}

/// Paragraphs of `lines` (one run each; an empty list is one empty paragraph).
fn paragraphs(lines: &[String]) -> String {
    if lines.is_empty() {
        return r#"<a:p><a:endParaRPr lang="zh-CN"/></a:p>"#.to_owned();
    }
    lines
        .iter()
        .map(|l| {
            format!(
                r#"<a:p><a:r><a:rPr lang="zh-CN" dirty="0"/><a:t>{}</a:t></a:r></a:p>"#,
                esc(l)
            )
        })
        .collect()
}

/// A placeholder shape (`ph` is its `<p:ph …/>` attributes) at a position, holding `body`.
fn shape(id: u32, name: &str, ph: &str, pos: (i64, i64, i64, i64), body: &str) -> String {
    let (x, y, cx, cy) = pos;
    format!(
        r#"<p:sp><p:nvSpPr><p:cNvPr id="{id}" name="{name}"/><p:cNvSpPr><a:spLocks noGrp="1"/></p:cNvSpPr><p:nvPr><p:ph {ph}/></p:nvPr></p:nvSpPr><p:spPr><a:xfrm><a:off x="{x}" y="{y}"/><a:ext cx="{cx}" cy="{cy}"/></a:xfrm></p:spPr><p:txBody><a:bodyPr/><a:lstStyle/>{body}</p:txBody></p:sp>"#
    )
}

fn tree(shapes: &str) -> String {
    format!(
        r#"<p:spTree><p:nvGrpSpPr><p:cNvPr id="1" name=""/><p:cNvGrpSpPr/><p:nvPr/></p:nvGrpSpPr><p:grpSpPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="0" cy="0"/><a:chOff x="0" y="0"/><a:chExt cx="0" cy="0"/></a:xfrm></p:grpSpPr>{shapes}</p:spTree>"#
    )
}

const TITLE_POS: (i64, i64, i64, i64) = (838_200, 365_125, 10_515_600, 1_325_563);
const BODY_POS: (i64, i64, i64, i64) = (838_200, 1_825_625, 10_515_600, 4_351_338);
const CTR_TITLE_POS: (i64, i64, i64, i64) = (1_524_000, 1_122_363, 9_144_000, 2_387_600);
const SUBTITLE_POS: (i64, i64, i64, i64) = (1_524_000, 3_602_038, 9_144_000, 1_655_762);
const NOTES_POS: (i64, i64, i64, i64) = (685_800, 4_400_550, 5_486_400, 3_600_450);

fn empty() -> String {
    paragraphs(&[])
}

fn theme() -> String {
    let colours = [
        ("dk1", "000000"),
        ("lt1", "FFFFFF"),
        ("dk2", "1F2937"),
        ("lt2", "F3F4F6"),
        ("accent1", "2563EB"),
        ("accent2", "DB2777"),
        ("accent3", "059669"),
        ("accent4", "D97706"),
        ("accent5", "7C3AED"),
        ("accent6", "DC2626"),
        ("hlink", "2563EB"),
        ("folHlink", "7C3AED"),
    ];
    let scheme: String = colours
        .iter()
        .map(|(n, v)| format!(r#"<a:{n}><a:srgbClr val="{v}"/></a:{n}>"#))
        .collect();
    let fill = r#"<a:solidFill><a:schemeClr val="phClr"/></a:solidFill>"#;
    let line = format!(r#"<a:ln w="9525">{fill}</a:ln>"#);
    let font =
        r#"<a:latin typeface="Calibri"/><a:ea typeface="Microsoft YaHei"/><a:cs typeface=""/>"#;
    format!(
        r#"{XML_HEAD}<a:theme xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" name="Tollgate"><a:themeElements><a:clrScheme name="Tollgate">{scheme}</a:clrScheme><a:fontScheme name="Tollgate"><a:majorFont>{font}</a:majorFont><a:minorFont>{font}</a:minorFont></a:fontScheme><a:fmtScheme name="Tollgate"><a:fillStyleLst>{fill}{fill}{fill}</a:fillStyleLst><a:lnStyleLst>{line}{line}{line}</a:lnStyleLst><a:effectStyleLst><a:effectStyle><a:effectLst/></a:effectStyle><a:effectStyle><a:effectLst/></a:effectStyle><a:effectStyle><a:effectLst/></a:effectStyle></a:effectStyleLst><a:bgFillStyleLst>{fill}{fill}{fill}</a:bgFillStyleLst></a:fmtScheme></a:themeElements></a:theme>"#
    )
}

fn master() -> String {
    let shapes = shape(
        2,
        "Title Placeholder 1",
        r#"type="title""#,
        TITLE_POS,
        &empty(),
    ) + &shape(
        3,
        "Text Placeholder 2",
        r#"type="body" idx="1""#,
        BODY_POS,
        &empty(),
    );
    format!(
        r#"{XML_HEAD}<p:sldMaster {NS}><p:cSld><p:bg><p:bgRef idx="1001"><a:schemeClr val="bg1"/></p:bgRef></p:bg>{}</p:cSld><p:clrMap {CLR_MAP}/><p:sldLayoutIdLst><p:sldLayoutId id="2147483649" r:id="rId1"/><p:sldLayoutId id="2147483650" r:id="rId2"/></p:sldLayoutIdLst><p:txStyles><p:titleStyle><a:lvl1pPr algn="l"><a:defRPr sz="4000" b="1"><a:solidFill><a:schemeClr val="tx2"/></a:solidFill><a:latin typeface="+mj-lt"/><a:ea typeface="+mj-ea"/></a:defRPr></a:lvl1pPr></p:titleStyle><p:bodyStyle><a:lvl1pPr marL="342900" indent="-342900"><a:buFont typeface="Arial"/><a:buChar char="&#8226;"/><a:defRPr sz="2400"><a:solidFill><a:schemeClr val="tx1"/></a:solidFill><a:latin typeface="+mn-lt"/><a:ea typeface="+mn-ea"/></a:defRPr></a:lvl1pPr></p:bodyStyle><p:otherStyle><a:lvl1pPr><a:defRPr sz="1800"/></a:lvl1pPr></p:otherStyle></p:txStyles></p:sldMaster>"#,
        tree(&shapes)
    )
}

fn layout(kind: &str, name: &str, shapes: &str) -> String {
    format!(
        r#"{XML_HEAD}<p:sldLayout {NS} type="{kind}" preserve="1"><p:cSld name="{name}">{}</p:cSld><p:clrMapOvr><a:masterClrMapping/></p:clrMapOvr></p:sldLayout>"#,
        tree(shapes)
    )
}

fn notes_master() -> String {
    let shapes = shape(
        2,
        "Notes Placeholder 1",
        r#"type="body" idx="1""#,
        NOTES_POS,
        &empty(),
    );
    format!(
        r#"{XML_HEAD}<p:notesMaster {NS}><p:cSld><p:bg><p:bgRef idx="1001"><a:schemeClr val="bg1"/></p:bgRef></p:bg>{}</p:cSld><p:clrMap {CLR_MAP}/></p:notesMaster>"#,
        tree(&shapes)
    )
}

fn slide_xml(shapes: &str) -> String {
    format!(
        r#"{XML_HEAD}<p:sld {NS}><p:cSld>{}</p:cSld><p:clrMapOvr><a:masterClrMapping/></p:clrMapOvr></p:sld>"#,
        tree(shapes)
    )
}

fn notes_xml(notes: &str) -> String {
    let lines: Vec<String> = notes
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let shapes = shape(
        2,
        "Notes Placeholder 1",
        r#"type="body" idx="1""#,
        NOTES_POS,
        &paragraphs(&lines),
    );
    format!(
        r#"{XML_HEAD}<p:notes {NS}><p:cSld>{}</p:cSld><p:clrMapOvr><a:masterClrMapping/></p:clrMapOvr></p:notes>"#,
        tree(&shapes)
    )
}

/// Every part of the package: (path, XML).
fn parts(deck: &Deck) -> Vec<(String, String)> {
    // The title slide first, then the content slides; each with its notes.
    let mut slides: Vec<(String, String)> = Vec::new();
    let title_shapes = shape(
        2,
        "Title 1",
        r#"type="ctrTitle""#,
        CTR_TITLE_POS,
        &paragraphs(std::slice::from_ref(&deck.title)),
    ) + &shape(
        3,
        "Subtitle 2",
        r#"type="subTitle" idx="1""#,
        SUBTITLE_POS,
        &paragraphs(std::slice::from_ref(&deck.subtitle)),
    );
    slides.push((slide_xml(&title_shapes), notes_xml(&deck.subtitle)));
    for s in &deck.slides {
        let shapes = shape(
            2,
            "Title 1",
            r#"type="title""#,
            TITLE_POS,
            &paragraphs(std::slice::from_ref(&s.title)),
        ) + &shape(
            3,
            "Content Placeholder 2",
            r#"idx="1""#,
            BODY_POS,
            &paragraphs(&s.bullets),
        );
        slides.push((slide_xml(&shapes), notes_xml(&s.notes)));
    }

    let n = slides.len();
    let mut overrides = vec![
        (
            "/ppt/presentation.xml".to_owned(),
            format!("{CT}.presentation.main+xml"),
        ),
        (
            "/ppt/slideMasters/slideMaster1.xml".to_owned(),
            format!("{CT}.slideMaster+xml"),
        ),
        (
            "/ppt/slideLayouts/slideLayout1.xml".to_owned(),
            format!("{CT}.slideLayout+xml"),
        ),
        (
            "/ppt/slideLayouts/slideLayout2.xml".to_owned(),
            format!("{CT}.slideLayout+xml"),
        ),
        (
            "/ppt/notesMasters/notesMaster1.xml".to_owned(),
            format!("{CT}.notesMaster+xml"),
        ),
        (
            "/ppt/theme/theme1.xml".to_owned(),
            "application/vnd.openxmlformats-officedocument.theme+xml".to_owned(),
        ),
        (
            "/ppt/theme/theme2.xml".to_owned(),
            "application/vnd.openxmlformats-officedocument.theme+xml".to_owned(),
        ),
        (
            "/docProps/core.xml".to_owned(),
            "application/vnd.openxmlformats-package.core-properties+xml".to_owned(),
        ),
        (
            "/docProps/app.xml".to_owned(),
            "application/vnd.openxmlformats-officedocument.extended-properties+xml".to_owned(),
        ),
    ];
    for i in 1..=n {
        overrides.push((
            format!("/ppt/slides/slide{i}.xml"),
            format!("{CT}.slide+xml"),
        ));
        overrides.push((
            format!("/ppt/notesSlides/notesSlide{i}.xml"),
            format!("{CT}.notesSlide+xml"),
        ));
    }
    let mut types = format!(
        r#"{XML_HEAD}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>"#
    );
    for (part, kind) in &overrides {
        types.push_str(&format!(
            r#"<Override PartName="{part}" ContentType="{kind}"/>"#
        ));
    }
    types.push_str("</Types>");

    let mut out = vec![
        ("[Content_Types].xml".to_owned(), types),
        (
            "_rels/.rels".to_owned(),
            rels(&[
                (
                    "rId1",
                    &format!("{REL}/officeDocument"),
                    "ppt/presentation.xml",
                ),
                (
                    "rId2",
                    "http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties",
                    "docProps/core.xml",
                ),
                (
                    "rId3",
                    &format!("{REL}/extended-properties"),
                    "docProps/app.xml",
                ),
            ]),
        ),
        (
            "docProps/core.xml".to_owned(),
            format!(
                r#"{XML_HEAD}<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{}</dc:title><dc:creator>Tollgate</dc:creator></cp:coreProperties>"#,
                esc(&deck.title)
            ),
        ),
        (
            "docProps/app.xml".to_owned(),
            format!(
                r#"{XML_HEAD}<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties"><Application>Tollgate</Application><Slides>{n}</Slides></Properties>"#
            ),
        ),
    ];
    let slide_ids: String = (1..=n)
        .map(|i| format!(r#"<p:sldId id="{}" r:id="rId{}"/>"#, 255 + i, 10 + i))
        .collect();
    out.push((
        "ppt/presentation.xml".to_owned(),
        format!(
            r#"{XML_HEAD}<p:presentation {NS} saveSubsetFonts="1"><p:sldMasterIdLst><p:sldMasterId id="2147483648" r:id="rId1"/></p:sldMasterIdLst><p:notesMasterIdLst><p:notesMasterId r:id="rId2"/></p:notesMasterIdLst><p:sldIdLst>{slide_ids}</p:sldIdLst><p:sldSz cx="{WIDTH}" cy="{HEIGHT}"/><p:notesSz cx="6858000" cy="9144000"/><p:defaultTextStyle><a:lvl1pPr><a:defRPr lang="zh-CN"/></a:lvl1pPr></p:defaultTextStyle></p:presentation>"#
        ),
    ));
    let mut pres_rels = vec![
        (
            "rId1".to_owned(),
            format!("{REL}/slideMaster"),
            "slideMasters/slideMaster1.xml".to_owned(),
        ),
        (
            "rId2".to_owned(),
            format!("{REL}/notesMaster"),
            "notesMasters/notesMaster1.xml".to_owned(),
        ),
        (
            "rId3".to_owned(),
            format!("{REL}/theme"),
            "theme/theme1.xml".to_owned(),
        ),
    ];
    for i in 1..=n {
        pres_rels.push((
            format!("rId{}", 10 + i),
            format!("{REL}/slide"),
            format!("slides/slide{i}.xml"),
        ));
    }
    let pres_rels: Vec<(&str, &str, &str)> = pres_rels
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    out.push((
        "ppt/_rels/presentation.xml.rels".to_owned(),
        rels(&pres_rels),
    ));
    out.push(("ppt/theme/theme1.xml".to_owned(), theme()));
    out.push(("ppt/theme/theme2.xml".to_owned(), theme()));
    out.push(("ppt/slideMasters/slideMaster1.xml".to_owned(), master()));
    out.push((
        "ppt/slideMasters/_rels/slideMaster1.xml.rels".to_owned(),
        rels(&[
            (
                "rId1",
                &format!("{REL}/slideLayout"),
                "../slideLayouts/slideLayout1.xml",
            ),
            (
                "rId2",
                &format!("{REL}/slideLayout"),
                "../slideLayouts/slideLayout2.xml",
            ),
            ("rId3", &format!("{REL}/theme"), "../theme/theme1.xml"),
        ]),
    ));
    let title_layout = shape(2, "Title 1", r#"type="ctrTitle""#, CTR_TITLE_POS, &empty())
        + &shape(
            3,
            "Subtitle 2",
            r#"type="subTitle" idx="1""#,
            SUBTITLE_POS,
            &empty(),
        );
    let content_layout = shape(2, "Title 1", r#"type="title""#, TITLE_POS, &empty())
        + &shape(3, "Content Placeholder 2", r#"idx="1""#, BODY_POS, &empty());
    out.push((
        "ppt/slideLayouts/slideLayout1.xml".to_owned(),
        layout("title", "Title Slide", &title_layout),
    ));
    out.push((
        "ppt/slideLayouts/slideLayout2.xml".to_owned(),
        layout("obj", "Title and Content", &content_layout),
    ));
    let to_master = rels(&[(
        "rId1",
        &format!("{REL}/slideMaster"),
        "../slideMasters/slideMaster1.xml",
    )]);
    out.push((
        "ppt/slideLayouts/_rels/slideLayout1.xml.rels".to_owned(),
        to_master.clone(),
    ));
    out.push((
        "ppt/slideLayouts/_rels/slideLayout2.xml.rels".to_owned(),
        to_master,
    ));
    out.push((
        "ppt/notesMasters/notesMaster1.xml".to_owned(),
        notes_master(),
    ));
    out.push((
        "ppt/notesMasters/_rels/notesMaster1.xml.rels".to_owned(),
        rels(&[("rId1", &format!("{REL}/theme"), "../theme/theme2.xml")]),
    ));
    for (i, (slide, notes)) in slides.into_iter().enumerate() {
        let i = i + 1;
        let layout = if i == 1 { 1 } else { 2 };
        out.push((format!("ppt/slides/slide{i}.xml"), slide));
        out.push((
            format!("ppt/slides/_rels/slide{i}.xml.rels"),
            rels(&[
                (
                    "rId1",
                    &format!("{REL}/slideLayout"),
                    &format!("../slideLayouts/slideLayout{layout}.xml"),
                ),
                (
                    "rId2",
                    &format!("{REL}/notesSlide"),
                    &format!("../notesSlides/notesSlide{i}.xml"),
                ),
            ]),
        ));
        out.push((format!("ppt/notesSlides/notesSlide{i}.xml"), notes));
        out.push((
            format!("ppt/notesSlides/_rels/notesSlide{i}.xml.rels"),
            rels(&[
                (
                    "rId1",
                    &format!("{REL}/notesMaster"),
                    "../notesMasters/notesMaster1.xml",
                ),
                (
                    "rId2",
                    &format!("{REL}/slide"),
                    &format!("../slides/slide{i}.xml"),
                ),
            ]),
        ));
    }
    out
}

/// The .pptx file of `deck`.
pub fn write(deck: &Deck) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (path, xml) in parts(deck) {
        zip.start_file(path, options)?;
        zip.write_all(xml.as_bytes())?;
    }
    Ok(zip.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_a_relationship_names_is_written_and_text_is_escaped() {
        let deck = Deck {
            title: "发布会 <A&B>".into(),
            subtitle: "2026".into(),
            slides: vec![Slide {
                title: "产品介绍".into(),
                bullets: vec!["快".into(), "稳".into()],
                notes: "讲慢一点".into(),
            }],
        };
        let parts = parts(&deck);
        let names: Vec<&str> = parts.iter().map(|(p, _)| p.as_str()).collect();
        for (path, xml) in &parts {
            if !path.ends_with(".rels") {
                continue;
            }
            let base = path.replace("_rels/", "").replace(".rels", "");
            let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
            for target in xml
                .split("Target=\"")
                .skip(1)
                .filter_map(|t| t.split('"').next())
            {
                let mut segments: Vec<&str> = if dir.is_empty() || path == "_rels/.rels" {
                    Vec::new()
                } else {
                    dir.split('/').collect()
                };
                for s in target.split('/') {
                    if s == ".." {
                        segments.pop();
                    } else {
                        segments.push(s);
                    }
                }
                let resolved = segments.join("/");
                assert!(
                    names.contains(&resolved.as_str()),
                    "{path} names {target} ({resolved})"
                );
            }
        }
        let slide1 = &parts
            .iter()
            .find(|(p, _)| p == "ppt/slides/slide1.xml")
            .expect("slide 1")
            .1;
        assert!(slide1.contains("发布会 &lt;A&amp;B&gt;"));
        assert!(write(&deck).is_ok_and(|bytes| bytes.starts_with(b"PK")));
    }
}
