//! A server-rendered SVG bar chart of credits over days: no library, no script needed. Every bar
//! is labelled (its `<title>` is the hover tooltip; the page script also echoes it into a readout
//! line) and each day with spend is a tab stop; the chart as a whole has a text summary.

use super::layout::{escape, usd};
use quota_store::clock::civil_from_days;
use quota_store::usage::DAY_MS;

const WIDTH: i64 = 480;
const HEIGHT: i64 = 180;
const LEFT: i64 = 76;
const BOTTOM: i64 = 24;
const TOP: i64 = 10;

/// `2026-03-04`-style label for a day number.
fn day_label(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Bars of `values[i]` credits for the days starting at `first_day_ms` (one per day).
pub fn daily_bars(id: &str, title: &str, first_day_ms: i64, values: &[i64]) -> String {
    let first_day = first_day_ms.div_euclid(DAY_MS);
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let total: i64 = values.iter().sum();
    let n = values.len().max(1) as i64;
    let plot_w = WIDTH - LEFT - 8;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w as f64 / n as f64;
    let bar_w = (slot * 0.75).max(1.0);
    let mut bars = String::new();
    for (i, v) in values.iter().enumerate() {
        let h = if *v > 0 { ((*v as f64 / max as f64) * plot_h as f64).max(1.0) } else { 0.0 };
        let x = LEFT as f64 + i as f64 * slot + (slot - bar_w) / 2.0;
        let y = (TOP + plot_h) as f64 - h;
        let label = format!("{}: {}", day_label(first_day + i as i64), usd(*v));
        // Only days with spend are tab stops: a month of empty days would be 30 stops for nothing.
        let focus = if *v > 0 { " tabindex=\"0\"" } else { "" };
        bars.push_str(&format!(
            "<rect class=\"bar\"{focus} role=\"img\" aria-label=\"{l}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" \
             height=\"{h:.1}\" fill=\"#3a6ea5\"><title>{l}</title></rect>",
            l = escape(&label)
        ));
    }
    // A day with nothing has a zero-height bar, labelled $0 for screen readers.
    let axis_y = TOP + plot_h;
    let last_day = first_day + n - 1;
    let summary = format!(
        "{}: {} in total from {} to {}, highest day {}",
        title,
        usd(total),
        day_label(first_day),
        day_label(last_day),
        usd(*values.iter().max().unwrap_or(&0))
    );
    format!(
        "<figure class=\"chart-fig\"><svg class=\"chart\" id=\"{id}\" data-readout=\"{id}-readout\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"group\" aria-label=\"{summary}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{w}\" y2=\"{TOP}\" stroke=\"#d5d9e0\"/>\
         <line x1=\"{LEFT}\" y1=\"{mid}\" x2=\"{w}\" y2=\"{mid}\" stroke=\"#e3e6eb\"/>\
         <line x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{w}\" y2=\"{axis_y}\" stroke=\"#4a5160\"/>\
         <text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" font-size=\"12\" fill=\"#4a5160\">{maxl}</text>\
         <text x=\"{lx}\" y=\"{by}\" text-anchor=\"end\" font-size=\"12\" fill=\"#4a5160\">$0</text>\
         <text x=\"{LEFT}\" y=\"{dy}\" font-size=\"12\" fill=\"#4a5160\">{d0}</text>\
         <text x=\"{w}\" y=\"{dy}\" text-anchor=\"end\" font-size=\"12\" fill=\"#4a5160\">{d1}</text>\
         {bars}</svg><figcaption class=\"readout\" id=\"{id}-readout\" aria-live=\"polite\">{caption}</figcaption></figure>",
        summary = escape(&summary),
        w = WIDTH - 8,
        mid = TOP + plot_h / 2,
        lx = LEFT - 6,
        ty = TOP + 4,
        by = axis_y,
        dy = HEIGHT - 6,
        maxl = escape(&usd(max)),
        d0 = day_label(first_day),
        d1 = day_label(last_day),
        caption = escape(&format!("{title}: {} over {n} days. Hover or focus a bar for its day.", usd(total))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_day_with_labels() {
        let svg = daily_bars("c", "Spend", 0, &[0, 450, 1_000_000]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("1970-01-02: $0.00045"));
        assert!(svg.contains("1970-01-03: $1.00"));
        assert!(svg.contains("$1.00045 in total"));
    }

    #[test]
    fn empty_series_renders() {
        let svg = daily_bars("c", "Spend", 0, &[]);
        assert!(svg.contains("<svg"));
    }
}
