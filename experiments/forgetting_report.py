"""The forgetting experiment's outputs: per-item scores read back from the store, results JSON, the
markdown report (tables, commands, sample counts, seeds, the computed reading) and a Plotly figure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.forgetting_stats import DOMAIN, GENERAL, IFEVAL, NOISE_SIGMAS, verdict

TASKS = (*GENERAL, DOMAIN)


def report_tasks(results: Mapping[str, Any]) -> tuple[str, ...]:
    """The general benchmarks, the task grading the domain (medmcqa, or domain_mcq for a domain file) and
    IFEval when it ran."""
    ifeval = (IFEVAL,) if results.get("settings", {}).get("ifeval_limit") else ()
    return (*GENERAL, results.get("domain_task", DOMAIN), *ifeval)


def report_name(results: Mapping[str, Any]) -> str:
    """``results_<domain>``: the stem of the JSON, Markdown and figure files."""
    return f"results_{results.get('domain_label', 'medmcqa')}"


def per_item(workspace: Path, jobs: Mapping[str, str], tasks: Sequence[str] = TASKS) -> dict[str, Any]:
    """``correct[model][task][item_id]`` (1.0/0.0) and ``drift[model]`` (DriftScore dicts) from the store."""
    from core.store import Store

    store = Store.for_workspace(workspace)
    correct: dict[str, dict[str, dict[str, float]]] = {}
    drift: dict[str, list[dict[str, Any]]] = {}
    for model, job_id in jobs.items():
        # An IFEval reply is right when it followed every instruction (pred 1); it has no gold answer.
        correct[model] = {task: {row.item_id: float(row.pred == row.gold if task != IFEVAL else row.pred)
                                 for row in store.eval_items(job_id, task)} for task in tasks}
        rows = store.eval_items(job_id, "drift")
        if rows:
            drift[model] = [row.extra for row in rows if row.extra]
    return {"correct": correct, "drift": drift}


def _acc(task: Mapping[str, Any] | None) -> str:
    if not task or task.get("acc") is None:
        return "-"
    se = task.get("stderr")
    return f"{task['acc']:.3f} ± {se:.3f}" if se is not None else f"{task['acc']:.3f}"


def delta_cell(entry: Mapping[str, Any] | None, missing: str = "-") -> str:
    """A change in accuracy points ± its paired stderr, marked ▲/▼ beyond NOISE_SIGMAS of them."""
    if not entry or entry.get("diff") is None:
        return missing
    mark = {"gain": " ▲", "loss": " ▼"}.get(verdict(entry["diff"], entry["se"]), "")
    return f"{entry['diff'] * 100:+.1f} ± {(entry['se'] or 0) * 100:.1f}{mark}"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sig(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(results: Mapping[str, Any]) -> str:
    s, models, arms = results["settings"], results["models"], results["arms"]
    tasks = report_tasks(results)
    names = results["arm_names"]
    head = "| model | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks)
    acc_rows = [f"| {label} | " + " | ".join(_acc(models[m]["tasks"].get(t)) for t in tasks) + " |"
                for m, label in [("base", "base"), *((a, f"({a}) {names[a]}") for a in arms)]]
    delta_head = "| arm | " + " | ".join(tasks) + " | general mean |\n|---|" + "---|" * (len(tasks) + 1)
    delta_rows = [f"| ({a}) {names[a]} | " + " | ".join(delta_cell(results["deltas"][a].get(t)) for t in tasks) +
                  f" | {delta_cell(results['deltas'][a]['general_mean'])} |" for a in arms]
    contrast_rows = []
    for key, entry in results["contrasts"].items():
        cells = " | ".join(delta_cell(entry.get(t)) for t in tasks)
        kl = entry.get("kl", {})
        kl_cell = f"{kl['diff']:+.2e} ± {(kl.get('se') or 0):.2e}" if kl.get("diff") is not None else "-"
        label = key.replace("_vs_", " − ")
        contrast_rows.append(f"| {label} | {cells} | {delta_cell(entry['general_mean'])} | {kl_cell} |")
    drift = results["drift_common"]
    drift_rows = [f"| ({a}) {names[a]} | {_sig(drift['arms'][a]['kl'])} ± {_sig(drift['arms'][a]['kl_stderr'])} | "
                  f"{_num(drift['arms'][a]['ppl_base'], 3)} | {_num(drift['arms'][a]['ppl_tuned'], 3)} | "
                  f"{_sig(models[a].get('drift_own', {}).get('kl'))} (n={models[a].get('drift_own', {}).get('n')}) |"
                  for a in arms if a in drift["arms"]]
    data_rows = [f"| ({a}) {names[a]} | {d['counts']['domain']} | {d['counts']['general']} | {d['tokens']['domain']} | "
                 f"{d['tokens']['general']} | {_num(d.get('ratio_achieved'), 3)} | `{d['snapshot']}` |"
                 for a, d in results["data"]["arms"].items()]
    train_rows = [f"| ({a}) {names[a]} | {t.get('steps')} | {_num(t.get('train_loss'), 3)} | "
                  f"{_num(t.get('final_loss'), 3)} | {t.get('seconds')} |"
                  for a, t in ((a, models[a].get("train", {})) for a in arms)]
    general = results["data"]["general"]
    ifeval_note = (f"\n- IFEval: {s['ifeval_limit']} seeded prompts (seed {s['seed']}), greedy replies of up to "
                   f"{s['ifeval_tokens']} tokens, prompt-level strict accuracy (a reply cut at the budget is checked "
                   "as cut, for every model alike)." if s.get("ifeval_limit") else "")
    if s["domain"] == "builtin:medmcqa":
        held_out = "train split; its fixed held-out test split is the domain benchmark"
        ppl_note = ""
    else:
        held_out = (f"`{results.get('domain_data')}`; the mix held out {s['domain_test_fraction']:.0%} of it by "
                    "content, which is the domain benchmark")
        ppl_note = "; `domain_ppl`: perplexity of the held-out reference answers"
    ppl_rows = [f"| {label} | {_num(ppl.get('nll'), 4)} ± {_num(ppl.get('nll_stderr'), 4)} | "
                f"{_num(ppl.get('ppl'), 3)} | {ppl.get('n')} |"
                for key, label in [("base", "base"), *((a, f"({a}) {names[a]}") for a in arms)]
                for ppl in [models[key]["tasks"].get("domain_ppl")] if ppl]
    ppl_table = ("\n## Domain answer perplexity (held-out reference answers; lower is better)\n\n"
                 "| model | NLL per token ± stderr | perplexity | n |\n|---|---|---|---|\n" + "\n".join(ppl_rows) + "\n"
                 if ppl_rows else "")
    public = results["data"].get("public", {})
    threads = f"# every stage ran with OMP_NUM_THREADS={s['threads']}\n" if s.get("threads") else ""
    commands = f"# the whole experiment:\n{results.get('invocation', '')}\n{threads}" + "\n".join(results["commands"])
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in results["timings"].items())
    reading = "\n".join(f"- {line}" for line in results["reading"])
    figure, image = results.get("figure"), results.get("figure_image")
    picture = f"![change vs base]({image})\n\n" if image else ""
    figure_line = (f"[{figure}]({figure}) (interactive Plotly; loads plotly.js from its CDN)" if figure else "none")
    figure_line += (f"; static image {image}" if image else
                    "; no static image (neither kaleido nor Debian chromium is here): the tables hold the numbers")
    return f"""# Forgetting experiment{' (quick run: too small to read anything into)' if s['quick'] else ''}

Does mixing **reconstructed, screened general data** (ours, arm c) into domain fine-tuning forget less than
tuning on the **domain only** (arm a) or mixing **public SFT data** (ShareGPT, arm b) at the same ratio?
Model `{s['model']}`, domain `{s['domain']}` ({held_out}),
ratio {s['ratio']} (general share of the examples), generated by `experiments/forgetting.py` on
{results['created']}.

{picture}## Reading (computed from the numbers below)

{reading}

Noise rule: a change counts only when it exceeds {NOISE_SIGMAS:g} × its **paired** standard error (every model
is scored on the same seeded items, so differences are taken item by item). ▲/▼ mark changes beyond that.

## Accuracy (acc ± stderr; n = {s['limit']} items per task)

{head}
{chr(10).join(acc_rows)}

## Change vs the base (accuracy points, ± paired stderr)

{delta_head}
{chr(10).join(delta_rows)}
{ppl_table}
## Arm vs arm (accuracy points, ± paired stderr; last column: drift KL difference, nats/token)

| contrast | {' | '.join(tasks)} | general mean | KL |
|---|{'---|' * (len(tasks) + 2)}
{chr(10).join(contrast_rows)}

## Drift on {drift['n_texts']} held-out general texts scored for every arm ({drift.get('tokens', 0)} tokens)

| arm | KL(base ‖ tuned) ± stderr | ppl base | ppl tuned | KL on the arm's own held-out set |
|---|---|---|---|---|
{chr(10).join(drift_rows)}

## Data and training (same steps, seed and LoRA settings for every arm)

| arm | domain rows | general rows | domain tokens | general tokens | general share | snapshot |
|---|---|---|---|---|---|---|
{chr(10).join(data_rows)}

| arm | steps | mean train loss | final loss | seconds |
|---|---|---|---|---|
{chr(10).join(train_rows)}

- General data (ours): {general.get('reconstructed')} instructions reconstructed from `{s['model']}`'s pre-query
  template, {s['k']} response(s) each, judged by `{s['model']}` (probs); {general.get('with_best')} have a best
  response; screening kept those scoring ≥ {_num(general.get('min_score'), 4)} (the {s['screen_quantile']:.0%}
  quantile of best-response scores): {general.get('candidates')} candidates.
- Public data: {public.get('source', '-')}: {public.get('records', '-')} complete records read
  (the packaged file is {'complete' if public.get('file_complete') else 'cut off mid-record; records before the cut'}),
  {public.get('eligible', '-')} English 1–2-exchange conversations of ≤ {public.get('max_chars', '-')} characters,
  {public.get('written', '-')} sampled (seed {s['seed']}).
- Training: LoRA r={s['lora_r']} α={s['lora_alpha']} dropout {s['lora_dropout']}, all-linear, lr {s['lr']}, batch
  {s['batch_size']}, max length {s['max_length']}, {s['steps']} steps, seed {s['seed']}.
- Evaluation: ARC-Easy, PIQA, HellaSwag, SciQ (log-likelihood multiple choice, `acc`) and the domain test
  (`{results.get('domain_task', DOMAIN)}`, answer-letter likelihood{ppl_note}), each a seeded subsample of
  {s['limit']} items (seed {s['seed']}); drift on every held-out screened general text.{ifeval_note}
- Figure: {figure_line}.
- Stage timings: {timings}.

## Exact commands

```
{commands}
```
"""


def figure_html(results: Mapping[str, Any], path: Path) -> Any:
    """Grouped bars: each arm's change vs the base per task, error bars = NOISE_SIGMAS paired stderr."""
    import plotly.graph_objects as go

    tasks = [*report_tasks(results), "general_mean"]
    fig = go.Figure()
    for arm in results["arms"]:
        entries = [results["deltas"][arm].get(t, {}) for t in tasks]
        fig.add_bar(name=f"({arm}) {results['arm_names'][arm]}", x=tasks,
                    y=[(e.get("diff") or 0.0) * 100 for e in entries],
                    error_y={"type": "data", "array": [NOISE_SIGMAS * (e.get("se") or 0.0) * 100 for e in entries]})
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(barmode="group", title=f"Change vs base (accuracy points, ±{NOISE_SIGMAS:g} paired stderr)",
                      yaxis_title="Δ accuracy (points)", template="plotly_white")
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)
    return fig


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, as the browser tests use


def figure_image(results: Mapping[str, Any], html_figure: Any, path: Path) -> bool:
    """A static PNG for the Markdown page: kaleido when installed, else the figure drawn in headless
    chromium through Playwright (both already used by the browser tests). False when neither is there."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("kaleido") is not None:
        html_figure.write_image(str(path))
        return True
    if not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None:
        return False
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        page_path = Path(folder) / "figure.html"  # plotly.js inline: no network here
        html_figure.write_html(str(page_path), include_plotlyjs=True, full_html=True,
                               default_width=900, default_height=450)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page(viewport={"width": 940, "height": 490})
                page.goto(page_path.as_uri())
                page.wait_for_selector(".js-plotly-plot .main-svg")
                page.locator(".js-plotly-plot").first.screenshot(path=str(path))
            finally:
                browser.close()
    return True


def write_outputs(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report_name(results)
    figure = out_dir / f"{name}.html"
    plotly_figure = figure_html(results, figure)
    results["figure"] = figure.name
    image = figure.with_suffix(".png")
    results["figure_image"] = image.name if figure_image(results, plotly_figure, image) else None
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(results), encoding="utf-8")
    return {"json": str(json_path), "markdown": str(md_path), "figure": str(figure)}
