"""The report page: one HTML file with its styles and charts inline (no network, no
script). Each number sits in a cell whose ``data-*`` attributes name what it counts, so
a test (or a reader's tool) can check it against the SQL views."""

from __future__ import annotations

from jinja2 import Environment, select_autoescape

from pipeline.report.charts import bar_chart, line_chart
from pipeline.report.facts import ReportFacts

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tracelake run {{ f.run_id }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1d2329; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5rem 0; } th, td { padding: .2rem .6rem; border-bottom: 1px solid #eaeef2; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #57606a; } .ok { color: #1a7f37; } .warn { color: #9a6700; } .alert { color: #c0392b; font-weight: 600; }
img { max-width: 100%; display: block; margin: .5rem 0; } .none { color: #57606a; font-style: italic; }
</style>
</head>
<body>
<h1>tracelake run <code>{{ f.run_id }}</code></h1>
<p class="meta">run hash <code>{{ f.run_hash }}</code> · tracelake {{ f.tracelake_version }}</p>

<h2 id="stages">Stages</h2>
<table>
<tr><th>stage</th><th>status</th><th>cached</th><th>in</th><th>out</th><th>quarantined</th><th>filtered</th></tr>
{% for s in f.stages %}<tr data-stage="{{ s.stage }}">
<td>{{ s.stage }}</td><td class="{{ 'ok' if s.status == 'ok' else 'alert' }}">{{ s.status }}</td>
<td>{{ 'yes' if s.cache_hit else 'no' }}</td>
<td class="n" data-metric="records_in">{{ s.records_in }}</td><td class="n" data-metric="records_out">{{ s.records_out }}</td>
<td class="n" data-metric="quarantined">{{ s.quarantined }}</td><td class="n" data-metric="filtered">{{ s.filtered }}</td>
</tr>{% endfor %}
</table>

<h2 id="set-aside">Set aside, by reason</h2>
{% if f.set_aside %}<table>
<tr><th>stage</th><th>reason</th><th>rows</th></tr>
{% for q in f.set_aside %}<tr data-set-aside="{{ q.stage }}:{{ q.reason }}"><td>{{ q.stage }}</td><td>{{ q.reason }}</td>
<td class="n" data-metric="count">{{ q.count }}</td></tr>{% endfor %}
</table>{% else %}<p class="none">Nothing was set aside.</p>{% endif %}

<h2 id="categories">Category mix</h2>
{% if f.categories %}<img alt="scores by category" src="{{ categories_chart }}">
<table>
<tr><th>category</th><th>tasks</th></tr>
{% for c in f.categories %}<tr data-category="{{ c.label }}"><td>{{ c.label }}</td><td class="n" data-metric="count">{{ c.count }}</td></tr>{% endfor %}
</table>{% else %}<p class="none">No task was scored in this run.</p>{% endif %}

<h2 id="tool-errors">Error rate by tool</h2>
{% if f.tools %}<img alt="error rate by tool" src="{{ tools_chart }}">
<table>
<tr><th>tool</th><th>calls</th><th>errors</th><th>rate</th></tr>
{% for t in f.tools %}<tr data-tool="{{ t.tool }}"><td>{{ t.tool }}</td><td class="n" data-metric="calls">{{ t.calls }}</td>
<td class="n" data-metric="errors">{{ t.errors }}</td><td class="n">{{ '%.1f' % (100 * t.rate) }}%</td></tr>{% endfor %}
</table>{% else %}<p class="none">No tool calls in this run.</p>{% endif %}

<h2 id="redactions">Redactions, by kind</h2>
{% if f.redactions %}<img alt="redactions by kind" src="{{ redactions_chart }}">
<table>
<tr><th>kind</th><th>values</th><th>placeholders</th></tr>
{% for r in f.redactions %}<tr data-redaction="{{ r.kind }}"><td>{{ r.kind }}</td><td class="n" data-metric="values">{{ r.values }}</td>
<td class="n" data-metric="placeholders">{{ r.placeholders }}</td></tr>{% endfor %}
</table>{% else %}<p class="none">Nothing was redacted.</p>{% endif %}

<h2 id="drift">Drift</h2>
{% if f.drift_against %}<p>Against run <code>{{ f.drift_against }}</code>:
<span class="{{ f.drift_severity }}" data-drift-severity="{{ f.drift_severity }}">{{ f.drift_severity }}</span></p>
{% else %}<p class="none" data-drift-severity="{{ f.drift_severity }}">No earlier run to compare with.</p>{% endif %}
{% if f.drift %}<table>
<tr><th>severity</th><th>finding</th><th>what</th></tr>
{% for d in f.drift %}<tr data-finding="{{ d.kind }}"><td class="{{ d.severity }}">{{ d.severity }}</td><td>{{ d.kind }}</td><td>{{ d.message }}</td></tr>{% endfor %}
</table>{% endif %}

<h2 id="training">Training</h2>
{% if f.loss %}<img alt="training loss" src="{{ loss_chart }}">{% else %}<p class="none">This run trained no model.</p>{% endif %}

<h2 id="eval">Adapter against its base model</h2>
{% if f.evaluation %}<table>
<tr><th>metric</th><th>base</th><th>adapter</th><th>delta</th><th>gate</th></tr>
{% for e in f.evaluation %}<tr data-eval="{{ e.metric }}"><td>{{ e.metric }}</td>
<td class="n">{{ '-' if e.base is none else '%.3f' % e.base }}</td>
<td class="n">{{ '-' if e.adapter is none else '%.3f' % e.adapter }}</td>
<td class="n">{{ '-' if e.delta is none else '%+.3f' % e.delta }}</td>
<td class="{{ 'alert' if e.passed == false else 'ok' }}" data-gate="{{ e.passed }}">{% if e.gate %}{{ 'pass' if e.passed else ('FAIL' if e.passed == false else 'not judged') }}: {{ e.gate }}{% else %}-{% endif %}</td></tr>{% endfor %}
</table>{% else %}<p class="none">This run evaluated no model.</p>{% endif %}
</body>
</html>
"""


def render(facts: ReportFacts) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    charts = {
        "categories_chart": bar_chart([c.label for c in facts.categories], [c.count for c in facts.categories],
                                      "Scored tasks by category") if facts.categories else "",
        "tools_chart": bar_chart([t.tool for t in facts.tools], [t.rate for t in facts.tools],
                                 "Share of calls that failed", percent=True) if facts.tools else "",
        "redactions_chart": bar_chart([r.kind for r in facts.redactions], [r.placeholders for r in facts.redactions],
                                      "Placeholders by kind") if facts.redactions else "",
        "loss_chart": line_chart([p.step for p in facts.loss], [p.loss for p in facts.loss], "Training loss",
                                 "step", "loss") if facts.loss else "",
    }
    return env.from_string(_TEMPLATE).render(f=facts, **charts)
