//! The printable patient handout for a taper: plain language, a chart of the dose over time
//! (inline SVG), the calendar of steps, what to expect and what to do. It never names the patient.

use super::resources::fmt_num;
use crate::plans::schedule::OffRampPlan;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step chart of mg a day against time, scaled to the plan.
fn chart(plan: &OffRampPlan<'_>) -> String {
    let (w, h, left, bottom, top) = (640.0, 240.0, 48.0, 32.0, 16.0);
    let steps = &plan.taper.steps;
    let Some(first) = steps.first() else {
        return String::new();
    };
    let start = first.start;
    let days = (plan.taper.end - start).num_days().max(1) as f64;
    let max = plan
        .current_mg_per_day
        .max(steps.iter().map(|s| s.mg_per_day).fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let x = |d: chrono::NaiveDate| left + (d - start).num_days() as f64 / days * (w - left - 8.0);
    let y = |mg: f64| top + (1.0 - mg / max) * (h - top - bottom);
    let mut path = format!("M{:.1},{:.1}", x(start), y(plan.current_mg_per_day));
    for s in steps {
        let _ = write!(
            path,
            " L{:.1},{:.1} L{:.1},{:.1}",
            x(s.start),
            y(s.mg_per_day),
            x(s.end) + 1.0,
            y(s.mg_per_day)
        );
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="Dose a day over time">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#555"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#555"/>"##,
        b = h - bottom,
        r = w - 8.0
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}" font-size="12">{} mg</text><text x="4" y="{:.1}" font-size="12">0</text>"#,
        y(max) + 4.0,
        fmt_num(max),
        y(0.0)
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{:.1}" font-size="12">{}</text>"#,
        h - 10.0,
        start
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
        w - 8.0,
        h - 10.0,
        plan.taper.end
    );
    let _ = write!(
        svg,
        r##"<path d="{path}" fill="none" stroke="#1f6feb" stroke-width="3"/></svg>"##
    );
    svg
}

/// The handout as a standalone HTML page.
pub fn taper_handout(plan: &OffRampPlan<'_>) -> String {
    let drug = esc(&plan.ingredient_name);
    let strength = plan.strength_mg();
    let mut rows = String::new();
    for s in &plan.taper.steps {
        if s.mg_per_day <= 0.0 {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td></td><td><strong>Stop</strong></td><td>none</td></tr>",
                s.start
            );
            continue;
        }
        let tabs = plan.tablets(s.mg_per_day);
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{} mg</td><td>{} × {} mg</td></tr>",
            s.start,
            s.end,
            fmt_num(s.mg_per_day),
            fmt_num(tabs),
            fmt_num(strength)
        );
    }
    let follow: Vec<String> = plan
        .follow_ups
        .iter()
        .map(|d| format!("<li>{d}</li>"))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Your plan to reduce {drug} slowly</title>
<style>body{{font-family:system-ui,sans-serif;max-width:720px;margin:2em auto;line-height:1.45;color:#111}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #999;padding:.35em .5em;text-align:left}}
h1{{font-size:1.5em}}h2{{font-size:1.15em;margin-top:1.4em}}@media print{{body{{margin:0}}}}</style></head>
<body>
<h1>Your plan to reduce {drug} slowly</h1>
<p>You and your clinician agreed to lower your dose of <strong>{drug}</strong> step by step, starting
from {current} mg a day. Going slowly makes withdrawal symptoms less likely. The dates are a guide:
you can stay longer on a step if you need to.</p>
<h2>Why reduce it?</h2>
<p>Over time these medicines can cause falls, broken bones, memory problems and drowsiness, and
the body gets used to them, so they work less well for sleep and worry. Many people sleep and feel
as well or better after stopping. In one study of older adults who read about these risks, 27 in
100 stopped their medicine within six months, compared with about 5 in 100 who did not
(EMPOWER trial, JAMA Internal Medicine 2014).</p>
<h2>Your dose over time</h2>
{chart}
<h2>Your calendar</h2>
<table><thead><tr><th>From</th><th>To</th><th>Dose a day</th><th>Tablets a day</th></tr></thead>
<tbody>{rows}</tbody></table>
<p>Keep taking the tablets at the times you take them now, split the same way across the day.</p>
<h2>What to expect</h2>
<p>Some people notice trouble sleeping, feeling anxious or irritable, sweating or shakiness for a
few days after a step. This usually settles within one to two weeks.</p>
<h2>If you feel unwell</h2>
<ul><li>Do not stop suddenly and do not take extra tablets.</li>
<li>Call your clinic: you can stay on the current step longer, or go back to the last dose that felt fine.</li>
<li>Get urgent help for confusion, a seizure, or thoughts of harming yourself.</li></ul>
<h2>Check-ins with your care team</h2>
<ul>{follow}</ul>
</body></html>
"#,
        current = fmt_num(plan.current_mg_per_day),
        chart = chart(plan),
        follow = follow.join(""),
    )
}
