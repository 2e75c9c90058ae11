//! The review report as a person sees it: every study's report loads in headless Chromium,
//! renders (a screenshot that is not blank, no console message) with the figures it should
//! have; the HTML is well-formed and fetches nothing; the design diagram's windows are the
//! `Study` model's day ranges; a results report shows exactly the released numbers and is
//! refused for a release that fails the output check; report.json is held by snapshots.

mod common;

use cohortql::study::*;
use common::{all_text, checked, csv_rows, site_file, study_files};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cohortql(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Writes the report and gives its HTML and JSON.
fn report(args: &[&str], dir: &Path, name: &str) -> (String, serde_json::Value) {
    let out = dir.join(format!("{name}.html"));
    let mut all: Vec<&str> = vec!["report"];
    all.extend(args);
    all.extend(["--out", out.to_str().unwrap()]);
    let o = cohortql(&all, dir);
    assert_eq!(o.status.code(), Some(0), "{name}: {}", all_text(&o));
    let html = std::fs::read_to_string(&out).unwrap();
    let json =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    (html, json)
}

/// The HTML parses as XML (the report is written so that it does), is one self-contained
/// file: no script, no external stylesheet, image, frame or font, no link out of the page,
/// and every table has a caption and header cells.
fn check_markup(name: &str, html: &str) {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("{name}: the HTML is not well-formed: {e}"));
    for node in doc.descendants().filter(|n| n.is_element()) {
        let tag = node.tag_name().name();
        assert!(
            !["script", "link", "img", "iframe", "object", "embed", "image"].contains(&tag),
            "{name}: a <{tag}> element"
        );
        for a in node.attributes() {
            assert!(
                a.name() != "src" && !a.name().starts_with("on"),
                "{name}: attribute {} on <{tag}>",
                a.name()
            );
            if a.name() == "href" {
                assert!(
                    a.value().starts_with('#'),
                    "{name}: a link to {}",
                    a.value()
                );
            }
            if a.value().contains("url(") {
                assert!(
                    a.value().starts_with("url(#"),
                    "{name}: {} fetches {}",
                    a.name(),
                    a.value()
                );
            }
        }
        if tag == "style" {
            let css = node.text().unwrap_or_default();
            assert!(
                !css.contains("url(") && !css.contains("@import"),
                "{name}: the stylesheet fetches"
            );
        }
        if tag == "table" {
            let children: Vec<&str> = node
                .children()
                .filter(|c| c.is_element())
                .map(|c| c.tag_name().name())
                .collect();
            assert_eq!(
                children.first(),
                Some(&"caption"),
                "{name}: a table with no caption"
            );
            if !node.has_attribute("class") {
                assert!(
                    node.descendants().any(|d| d.has_tag_name("th")),
                    "{name}: a table with no header cell"
                );
            }
        }
    }
    let svgs = doc.descendants().filter(|n| n.has_tag_name("svg"));
    for svg in svgs {
        assert!(
            svg.children().any(|c| c.has_tag_name("title")) && svg.has_attribute("aria-label"),
            "{name}: a figure without a title for screen readers"
        );
    }
}

/// Chromium's messages on a page's console, and the page as Chromium built it.
struct Loaded {
    console: Vec<String>,
    dom: String,
    screenshot: PathBuf,
}

fn chromium(args: &[&str]) -> Output {
    // A profile of its own for each browser, so that tests running at once do not share one.
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(args)
        .env("HOME", profile.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): `bash .ci/run` installs Debian's chromium package")
        })
}

/// Loads a page in headless Chromium: a screenshot of its first 3,000 pixels, its console
/// messages, and its DOM.
fn load(page: &Path) -> Loaded {
    let url = format!("file://{}", page.display());
    let screenshot = page.with_extension("png");
    let shot = chromium(&[
        "--window-size=1200,3000",
        &format!("--screenshot={}", screenshot.display()),
        &url,
    ]);
    assert!(screenshot.exists(), "no screenshot: {}", all_text(&shot));
    let dom = chromium(&["--dump-dom", &url]);
    let console = String::from_utf8_lossy(&shot.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&dom.stderr).lines())
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    Loaded {
        console,
        dom: String::from_utf8_lossy(&dom.stdout).into_owned(),
        screenshot,
    }
}

/// The share of a screenshot's pixels that are not near white, and how many distinct dark
/// shades it has.
fn ink(png_path: &Path) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let (mut inked, mut total) = (0usize, 0usize);
    let mut shades = std::collections::BTreeSet::new();
    for p in pixels {
        total += 1;
        let (r, g, b) = (p[0], p[1], p[2]);
        if r.min(g).min(b) < 200 {
            inked += 1;
            shades.insert((r / 32, g / 32, b / 32));
        }
    }
    (inked as f64 / total as f64, shades.len())
}

/// The check of a page loaded in the browser holds: a page with a console message fails it.
#[test]
fn a_console_message_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('broken')</script></body></html>",
    )
    .unwrap();
    let loaded = load(&page);
    assert!(
        loaded.console.iter().any(|l| l.contains("broken")),
        "{:?}",
        loaded.console
    );
}

/// The protocol of every study in studies/ renders in Chromium: not blank, no console
/// message, the design diagram with one box per window of report.json, and the markup
/// well-formed and self-contained.
#[test]
fn every_studys_protocol_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    for path in study_files() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (html, json) = report(&[path.to_str().unwrap()], dir.path(), &name);
        check_markup(&name, &html);
        assert_eq!(json["mode"], "protocol");
        let loaded = load(&dir.path().join(format!("{name}.html")));
        assert!(loaded.console.is_empty(), "{name}: {:?}", loaded.console);
        let (share, shades) = ink(&loaded.screenshot);
        assert!(
            share > 0.02 && shades >= 3,
            "{name}: the page looks blank ({share:.4} inked, {shades} shades)"
        );
        let windows = json["windows"].as_array().unwrap().len();
        assert_eq!(
            loaded.dom.matches("<g class=\"window\"").count(),
            windows,
            "{name}: the diagram's boxes"
        );
        assert_eq!(
            loaded.dom.matches("<svg").count(),
            1,
            "{name}: a protocol has one figure"
        );
        assert!(loaded.dom.contains("class=\"day0\""), "{name}");
        assert!(loaded.dom.contains("class=\"follow-up\""), "{name}");
        // Every section of the protocol, in HARPER's order.
        let order = [
            "h-title-page",
            "h-objectives",
            "h-design",
            "h-diagram",
            "h-time-zero",
            "h-inclusion",
            "h-exclusion",
            "h-exposure",
            "h-outcome",
            "h-follow-up",
            "h-covariates",
            "h-code-lists",
            "h-output",
            "h-explanation",
            "h-study-text",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|id| {
                loaded
                    .dom
                    .find(&format!("id=\"{id}\""))
                    .unwrap_or_else(|| panic!("{name}: no section {id}"))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{name}: sections out of order"
        );
        // The study text is there line by line, escaped as text.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            json["study_text"].as_array().unwrap().len(),
            text.lines().count()
        );
    }
}

/// One window, as the test reads it from the model: kind, anchor, start, end.
type Window4 = (String, String, Option<i64>, Option<i64>);

/// The windows of a criterion, read from the model independently of the report's code.
fn windows_of(c: &Criterion, kind: &str, out: &mut Vec<Window4>) {
    match c {
        Criterion::All(ps) | Criterion::Any(ps) => ps.iter().for_each(|p| windows_of(p, kind, out)),
        Criterion::Not(p) => windows_of(p, kind, out),
        Criterion::Events { window, more, .. } => {
            // A criterion with windows on the record's end only: its start is unbounded.
            let any_time = matches!(
                window,
                Window::Days {
                    start: None,
                    end: None,
                    observed: false,
                    ..
                }
            );
            if !(any_time && !more.is_empty()) {
                out.push(window4(kind, window));
            }
            out.extend(more.iter().map(|m| window4(kind, &m.window)));
        }
        Criterion::Observation { anchor, start, end } => {
            out.push((kind.into(), anchor.words().into(), Some(*start), Some(*end)))
        }
        _ => {}
    }
}

fn window4(kind: &str, w: &Window) -> Window4 {
    match w {
        Window::FollowUp => (kind.into(), "follow-up".into(), None, None),
        Window::Days {
            anchor, start, end, ..
        } => (kind.into(), anchor.words().into(), *start, *end),
    }
}

/// For every construct file and every study, the design diagram has one box per window of
/// the `Study` model, in the order criteria are applied, with the model's anchor and days,
/// and a label that states them.
#[test]
fn the_design_diagram_is_the_study_models_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/constructs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "study"))
        .collect();
    files.sort();
    files.extend(study_files());
    let mut drawn = 0;
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let study = checked(&name, &text);
        let mut expected = Vec::new();
        for s in &study.steps {
            let kind = if s.exclude { "exclusion" } else { "inclusion" };
            windows_of(&s.criterion, kind, &mut expected);
        }
        for a in &study.arms {
            windows_of(&a.criterion, "exposure", &mut expected);
        }
        for c in &study.covariates {
            match &c.value {
                CovariateValue::Count { window, .. }
                | CovariateValue::Aggregate { window, .. }
                | CovariateValue::DaysSince { window, .. } => {
                    expected.push(window4("covariate", window))
                }
                CovariateValue::Flag(criterion) => {
                    windows_of(criterion, "covariate", &mut expected)
                }
                _ => {}
            }
        }
        for e in &study.endpoints {
            expected.push(window4("outcome", &e.window));
        }
        let (html, _) = report(&[path.to_str().unwrap()], dir.path(), &name);
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&html, options).unwrap();
        let bound = |v: Option<&str>| -> Option<i64> { v.and_then(|v| v.parse().ok()) };
        let drawn_windows: Vec<(Window4, String)> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("window"))
            .map(|g| {
                let label: String = g
                    .descendants()
                    .filter(|d| d.is_text())
                    .map(|d| d.text().unwrap())
                    .collect::<Vec<_>>()
                    .join(" ");
                (
                    (
                        g.attribute("data-kind").unwrap().to_string(),
                        g.attribute("data-anchor").unwrap().to_string(),
                        bound(g.attribute("data-start")),
                        bound(g.attribute("data-end")),
                    ),
                    label,
                )
            })
            .collect();
        let got: Vec<Window4> = drawn_windows.iter().map(|(w, _)| w.clone()).collect();
        assert_eq!(got, expected, "{name}");
        for ((kind, anchor, start, end), label) in &drawn_windows {
            assert!(label.starts_with(kind.as_str()), "{name}: {label}");
            if anchor == "follow-up" {
                assert!(label.ends_with("during follow-up"), "{name}: {label}");
            } else {
                let days = format!(
                    "days [{}, {}]",
                    start.map_or("-∞".to_string(), |d| d.to_string()),
                    end.map_or("∞".to_string(), |d| d.to_string())
                );
                assert!(label.contains(&days), "{name}: {label} lacks {days}");
            }
        }
        drawn += got.len();
    }
    assert!(drawn > 60, "only {drawn} windows drawn");
}

/// The NSAID study's report from a run on the demo repository: it shows exactly the released
/// numbers (attrition boxes, exclusions that are differences of released counts, arms, the
/// Kaplan–Meier figure and its numbers at risk), passes the output check, renders, and a
/// release edited to show a small count gives no report at all.
#[test]
fn a_results_report_shows_exactly_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/nsaid_gi_bleed.study");
    let o = cohortql(
        &["run", study.to_str().unwrap(), "--out", "out"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let (html, json) = report(&["--run", "out"], dir.path(), "results");
    check_markup("results", &html);
    assert_eq!(json["mode"], "results");
    let release = dir.path().join("out/release");
    let attrition = csv_rows(&release.join("attrition.csv"));
    let flow = json["results"]["attrition"].as_array().unwrap();
    assert_eq!(flow.len(), attrition.len());
    let threshold = 5;
    for (shown, released) in flow.iter().zip(&attrition) {
        let persons = released["persons"].parse::<u64>().ok();
        assert_eq!(shown["persons"].as_u64(), persons, "{shown}");
        if let Some(excluded) = shown["excluded"].as_u64() {
            assert!(
                excluded == 0 || excluded >= threshold,
                "an exclusion of {excluded} persons is shown"
            );
        }
    }
    // Some steps are withheld on the demo, and the figure says so rather than drawing them.
    assert!(flow.iter().any(|s| s["persons"].is_null()));
    let loaded = load(&dir.path().join("results.html"));
    assert!(loaded.console.is_empty(), "{:?}", loaded.console);
    assert!(ink(&loaded.screenshot).0 > 0.02);
    assert_eq!(
        loaded.dom.matches("<g class=\"flow-step\"").count(),
        attrition.len()
    );
    for r in &attrition {
        let persons = if r["persons"].is_empty() {
            "withheld"
        } else {
            &r["persons"]
        };
        assert!(
            loaded.dom.contains(&format!(
                "data-step=\"{}\" data-persons=\"{persons}\"",
                r["step"]
            )),
            "step {} as {persons}",
            r["step"]
        );
    }
    assert_eq!(loaded.dom.matches("<g class=\"flow-arm\"").count(), 2);
    // One figure of curves, one step line per arm, steps as released.
    let km = csv_rows(&release.join("km.csv"));
    for arm in ["celecoxib", "diclofenac"] {
        let steps = km.iter().filter(|r| r["group"] == arm).count();
        assert!(
            loaded
                .dom
                .contains(&format!("data-group=\"{arm}\" data-steps=\"{steps}\"")),
            "{arm}: {steps} steps"
        );
    }
    assert_eq!(loaded.dom.matches("<svg").count(), 3);
    // The numbers at risk are the released ones.
    let at_risk = csv_rows(&release.join("at_risk.csv"));
    let table = &json["results"]["at_risk"][0];
    let shown: usize = table["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g[1].as_array().unwrap().len())
        .sum();
    assert_eq!(shown, at_risk.len());
    // The release still passes the output check with the report beside it.
    let o = cohortql(&["release", "check", "out"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));

    // A release edited to show a small count: no report, no file.
    let path = release.join("attrition.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen(",1226,1226,false", ",3,3,false", 1);
    assert_ne!(text, edited);
    std::fs::write(&path, edited).unwrap();
    let out = dir.path().join("refused.html");
    let o = cohortql(
        &["report", "--run", "out", "--out", out.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    assert!(all_text(&o).contains("not written"), "{}", all_text(&o));
    assert!(!out.exists() && !out.with_extension("json").exists());
}

/// With `--repo`, the code list gives the vocabulary's names, codes and vocabularies, and the
/// data source its `cdm_source` row: on Eunomia, celecoxib is RxNorm 140587.
#[test]
fn the_code_list_is_looked_up_in_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/eunomia/gi_bleed_new_users.study");
    let repo = root().join("tests/data/eunomia-gibleed");
    let (html, json) = report(
        &[study.to_str().unwrap(), "--repo", repo.to_str().unwrap()],
        dir.path(),
        "eunomia",
    );
    check_markup("eunomia", &html);
    let rows = json["code_list"].as_array().unwrap();
    let celecoxib = rows
        .iter()
        .find(|r| r["concept_id"] == 1118084)
        .expect("celecoxib in the code list");
    assert_eq!(celecoxib["vocabulary"], "RxNorm");
    assert_eq!(celecoxib["code"], "140587");
    assert_eq!(celecoxib["descendants"], true);
    let source = &json["data_source"];
    assert_eq!(source["repository"], "eunomia-gibleed");
    assert!(
        source["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f[0] == "cdm_source_name"),
        "{source}"
    );
    assert!(html.contains("id=\"h-data-source\""));
    // Without a repository, the names are the study's and the codes are left to fill in.
    let (_, json) = report(&[study.to_str().unwrap()], dir.path(), "plain");
    let celecoxib = json["code_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["concept_id"] == 1118084)
        .cloned()
        .unwrap();
    assert_eq!(celecoxib["code"], "");
    assert!(json["data_source"].is_null());
}

/// report.json of the NSAID protocol, the date it was made left out.
#[test]
fn the_protocols_content_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/nsaid_gi_bleed.study");
    let (_, mut json) = report(&[study.to_str().unwrap()], dir.path(), "nsaid");
    json["title_page"]["date"] = "(the day it was made)".into();
    json["title_page"]["study_file"] = "studies/nsaid_gi_bleed.study".into();
    insta::assert_yaml_snapshot!("nsaid_protocol", json);
}

/// Mistakes give a message, the right exit code, and no file.
#[test]
fn report_errors_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/nsaid_gi_bleed.study");
    let study = study.to_str().unwrap();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["report", "--out", "r.html"], 2, "give a study file"),
        (&["report", study, "--out", "r.json"], 2, "ends in .json"),
        (
            &["report", study, "--run", "nowhere", "--out", "r.html"],
            2,
            "cannot read",
        ),
        (
            &["report", study, "--repo", "nowhere", "--out", "r.html"],
            2,
            "nowhere",
        ),
    ];
    for (args, code, says) in cases {
        let o = cohortql(args, dir.path());
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", all_text(&o));
        assert!(all_text(&o).contains(says), "{args:?}: {}", all_text(&o));
    }
    std::fs::write(
        dir.path().join("bad.study"),
        "study \"x\"\npopulation\n  index = first drug in nothing\n",
    )
    .unwrap();
    let o = cohortql(&["report", "bad.study", "--out", "r.html"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    // A run of another study: its hash differs.
    let o = cohortql(&["run", study, "--out", "run"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let other = root().join("studies/eunomia/gi_bleed_new_users.study");
    let o = cohortql(
        &[
            "report",
            other.to_str().unwrap(),
            "--run",
            "run",
            "--out",
            "r.html",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(all_text(&o).contains("is not the study that was run"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("r."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
