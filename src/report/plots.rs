//! The report's PNG plots (plotters, with a compiled-in font): learning curves, accuracy against
//! alpha, and test accuracy per setting and seed.

use super::*;

pub(super) const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
pub(super) const WIDTH: u32 = 900;
pub(super) const HEIGHT: u32 = 560;

pub(super) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so this cannot fail at run time.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(super) fn save_png(path: &Path, buffer: &[u8]) -> anyhow::Result<()> {
    image::save_buffer(path, buffer, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("cannot write plot {}", path.display()))
}

pub(super) fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// Validation accuracy per epoch of every run.
pub fn plot_learning_curves(curves: &[RunCurve], path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let epochs = curves
            .iter()
            .map(|c| c.val_accuracy.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let lo = curves
            .iter()
            .flat_map(|c| c.val_accuracy.iter().copied())
            .fold(1.0, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption("Validation accuracy per epoch", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, (lo - 0.02).max(0.0)..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(epochs.clamp(2, 12))
            // whole epochs only
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (i, curve) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if i < 2 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(
                    curve
                        .val_accuracy
                        .iter()
                        .enumerate()
                        .map(|(e, &a)| ((e + 1) as f64, a)),
                    color.stroke_width(width),
                ))
                .map_err(plot_error)?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
                });
            // a dot per epoch where there are few (a one-epoch line has no length)
            if epochs <= 40 {
                chart
                    .draw_series(
                        curve.val_accuracy.iter().enumerate().map(|(e, &a)| {
                            Circle::new(((e + 1) as f64, a), width + 2, color.filled())
                        }),
                    )
                    .map_err(plot_error)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}

/// The KD points of a report as `(alpha, temperature, t2, mean, std)`.
pub(super) fn kd_points(report: &Report) -> Vec<(f64, f64, bool, f64, f64)> {
    report
        .distilled
        .iter()
        .filter_map(|d| match d.loss {
            DistillLoss::Kd {
                alpha,
                temperature,
                t2_scaling,
            } => Some((
                alpha,
                temperature,
                t2_scaling,
                d.accuracy(),
                d.result.accuracy_std,
            )),
            _ => None,
        })
        .collect()
}

/// Final test accuracy against alpha, one line per (T, T²) setting with ± one std whiskers over
/// seeds, with the scratch student and the teacher as horizontal references.
pub fn plot_accuracy_vs_alpha(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font();
    let kd = kd_points(report);
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let accs: Vec<f64> = kd
            .iter()
            .flat_map(|p| [p.3 - p.4, p.3 + p.4])
            .chain([report.scratch.accuracy, report.teacher.accuracy])
            .collect();
        let lo = accs.iter().copied().fold(1.0, f64::min);
        let hi = accs.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.01);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Test accuracy vs alpha (KD; whiskers: ± 1 std over seeds)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..1f64, (lo - pad).max(0.0)..(hi + pad).min(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("alpha (weight of the label loss)")
            .y_desc("test accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (label, value, color) in [
            ("teacher".to_string(), report.teacher.accuracy, BLACK),
            (report.scratch_label.clone(), report.scratch.accuracy, RED),
        ] {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, value), (1.0, value)],
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        let mut settings: Vec<(f64, bool)> = Vec::new();
        for p in &kd {
            if !settings.contains(&(p.1, p.2)) {
                settings.push((p.1, p.2));
            }
        }
        for (i, (temperature, t2)) in settings.into_iter().enumerate() {
            let color = Palette99::pick(i + 2).to_rgba();
            let mut line: Vec<(f64, f64, f64)> = kd
                .iter()
                .filter(|p| p.1 == temperature && p.2 == t2)
                .map(|p| (p.0, p.3, p.4))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    line.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(format!(
                    "distilled, T={temperature}{}",
                    if t2 { ", T²" } else { "" }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&(a, m, sd)| {
                    ErrorBar::new_vertical(a, m - sd, m, m + sd, color.filled(), 8)
                }))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}

/// Test accuracy of every seed (dots), the mean (bar) and ± one standard deviation over seeds
/// (whiskers, with two seeds or more) for the scratch student and each distilled setting, so the
/// seed spread is visible next to the differences.
pub fn plot_accuracy_by_setting(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut columns: Vec<(String, &ModelResult)> = vec![("scratch".into(), &report.scratch)];
    for (i, d) in report.distilled.iter().enumerate() {
        columns.push((format!("{}", i + 1), &d.result));
    }
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let all: Vec<f64> = columns
            .iter()
            .flat_map(|(_, r)| {
                r.accuracies
                    .iter()
                    .copied()
                    .chain([r.accuracy - r.accuracy_std, r.accuracy + r.accuracy_std])
            })
            .collect();
        let lo = all.iter().copied().fold(1.0, f64::min);
        let hi = all.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.005);
        let n = columns.len();
        let names: Vec<String> = columns.iter().map(|(name, _)| name.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Test accuracy per seed (dots), mean (bar) ± 1 std (whiskers); settings as numbered in the sweep table",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo - pad).max(0.0)..(hi + pad).min(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_desc("setting")
            .y_desc("test accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (i, (_, r)) in columns.iter().enumerate() {
            let color = if i == 0 {
                RED.to_rgba()
            } else {
                Palette99::pick(i + 1).to_rgba()
            };
            let x = i as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.3, r.accuracy), (x + 0.3, r.accuracy)],
                    color.stroke_width(3),
                )))
                .map_err(plot_error)?;
            if r.accuracies.len() > 1 {
                chart
                    .draw_series(std::iter::once(ErrorBar::new_vertical(
                        x,
                        r.accuracy - r.accuracy_std,
                        r.accuracy,
                        r.accuracy + r.accuracy_std,
                        color.stroke_width(2),
                        14,
                    )))
                    .map_err(plot_error)?;
            }
            let k = r.accuracies.len().max(1) as f64;
            chart
                .draw_series(r.accuracies.iter().enumerate().map(|(j, &a)| {
                    let dx = if k > 1.0 {
                        -0.2 + 0.4 * j as f64 / (k - 1.0)
                    } else {
                        0.0
                    };
                    Circle::new((x + dx, a), 4, color.filled())
                }))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save_png(path, &buffer)
}
