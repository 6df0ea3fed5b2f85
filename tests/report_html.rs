//! `report.html`: a real study (one epoch, two paired seeds, a KD point, a feature method, the
//! augmented-view cache) writes it beside `report.md`; it references nothing outside itself (the
//! plots are data URIs, the style is inline), holds the verdict and every table of the Markdown,
//! and headless Chromium renders it: a screenshot that is not blank, the verdict in the rendered
//! DOM, no console message.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Debian's `chromium` package.
const CHROMIUM: &str = "/usr/bin/chromium";

const CONFIG: &str = r#"
data = "embedded"
seeds = 2
teacher = "embedded"

[student]
model = "student"
epochs = 1
dropout = [0.0, 0.0]

[training]
batch_size = 128
seed = 7
val_split = 0.1
augmentation = { crop_padding = 2, horizontal_flip = false, views = 2 }

[sweep]
alpha = [0.5]
temperature = [2.0]
t2_scaling = [true]

[[method]]
features = { kind = "at", taps = ["block1", "block2"] }
"#;

/// Runs `distill run` on [`CONFIG`] into `out` and returns its stdout.
fn study(dir: &Path, out: &Path) -> String {
    let config = dir.join("experiment.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["run", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The values of every `name="..."` attribute in `html`.
fn attribute_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let pattern = format!("{name}=\"");
    let mut values = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&pattern) {
        let start = at + pattern.len();
        let end = start + rest[start..].find('"').expect("an attribute is closed");
        values.push(&rest[start..end]);
        rest = &rest[end..];
    }
    values
}

/// `text` as it appears in HTML (the report escapes these five).
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Runs Chromium headless with `args` on `page`, stdout and stderr into files (the DOM dump is
/// large), killed after two minutes; returns (stdout, stderr).
fn chromium(work: &Path, name: &str, args: &[String], page: &Path) -> (String, String) {
    let stdout = work.join(format!("{name}.stdout"));
    let stderr = work.join(format!("{name}.stderr"));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join(format!("{name}-profile")).display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("chromium {name} did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let (out, err) = (read(&stdout), read(&stderr));
    assert!(status.success(), "chromium {name}: {status}\n{err}");
    (out, err)
}

/// Console lines of the page (Chromium logs them as `...:CONSOLE...] "message", source: ...`):
/// the report has no script, so any is an error.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
                || l.contains("net::ERR_")
        })
        .collect()
}

#[test]
fn a_study_writes_a_self_contained_html_report_that_chromium_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = study(dir.path(), &out);
    assert!(stdout.contains("report.html"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();

    // self-contained: no network, no other file
    let lower = html.to_lowercase();
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "a URL in the page"
    );
    assert!(
        !lower.contains("<script") && !lower.contains("<link") && !lower.contains("@import"),
        "the page loads something"
    );
    assert!(attribute_values(&html, "href").is_empty());
    let sources = attribute_values(&html, "src");
    assert_eq!(sources.len(), 3, "the three plots");
    for src in sources {
        let payload = src
            .strip_prefix("data:image/png;base64,")
            .unwrap_or_else(|| panic!("an image that is not an inline PNG: {src:.80}"));
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let plot = image::load_from_memory(&png).unwrap();
        assert_eq!((plot.width(), plot.height()), (900, 560));
    }
    if let Some(at) = lower.find("url(") {
        panic!(
            "the style sheet loads {}",
            &html[at..(at + 60).min(html.len())]
        );
    }

    // the verdict and every table of the Markdown, escaped
    let verdict = report["best"]["verdict"].as_str().unwrap();
    assert!(html.contains(&escaped(verdict)), "no verdict in the page");
    assert!(markdown.contains("## Methods") && html.contains("<h2>Methods</h2>"));
    assert!(markdown.contains("Augmented-view teacher-logit cache: built in"));
    assert!(html.contains("Augmented-view teacher-logit cache: built in"));
    let rows: Vec<&str> = markdown.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(html.matches("<tr").count(), rows.len(), "one row per row");
    assert_eq!(
        html.matches("<table>").count(),
        markdown.matches("\n|---|").count()
    );
    for row in rows {
        for cell in row.trim_matches('|').split(" | ") {
            let cell = escaped(cell.trim());
            assert!(html.contains(&format!(">{cell}<")), "cell {cell} of {row}");
        }
    }

    // rendered by a browser
    if !common::require(
        Path::new(CHROMIUM).is_file(),
        "Debian's chromium (/usr/bin/chromium)",
        "apt-get install chromium (.ci/run installs it)",
    ) {
        return;
    }
    let page = out.join("report.html");
    let shot = dir.path().join("report.png");
    let (_, stderr) = chromium(
        dir.path(),
        "screenshot",
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,3000".into(),
        ],
        &page,
    );
    assert!(console_lines(&stderr).is_empty(), "{stderr}");
    let image = image::open(&shot)
        .unwrap_or_else(|e| panic!("no screenshot {}: {e}\n{stderr}", shot.display()))
        .to_rgb8();
    assert_eq!(image.dimensions(), (1200, 3000));
    let mut colors = std::collections::HashSet::new();
    let mut ink = 0usize;
    for pixel in image.pixels() {
        colors.insert(pixel.0);
        if pixel.0.iter().any(|&c| c < 200) {
            ink += 1;
        }
    }
    let pixels = (image.width() * image.height()) as usize;
    // text, tables and three plots in colour: hundreds of colours, a few percent of dark pixels
    assert!(
        colors.len() > 200,
        "{} colours: a blank page?",
        colors.len()
    );
    assert!(
        ink * 100 > pixels * 2,
        "{ink} dark pixels of {pixels}: a blank page?"
    );

    let (dom, stderr) = chromium(dir.path(), "dom", &["--dump-dom".into()], &page);
    assert!(console_lines(&stderr).is_empty(), "{stderr}");
    assert!(dom.contains("id=\"verdict\""), "{dom:.2000}");
    assert!(dom.contains(&escaped(verdict)), "{dom:.2000}");
    assert!(dom.contains("<h2>Methods</h2>"));
}
