"""`germline probe`: measure a served model's trait with a probe; results land in the lake."""

from __future__ import annotations

import click

from germline.pipelines.cli.output import FORMATS, emit_json, emit_table


@click.command()
@click.option(
    "--base-url", required=True, help="An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
)
@click.option("--api-key", envvar="GERMLINE_API_KEY", default="none", show_default=False,
              help="The server's key. [env GERMLINE_API_KEY]")  # fmt: skip
@click.option("--model", "models", required=True, multiple=True,
              help="Model id or alias on the server; repeat to probe several.")  # fmt: skip
@click.option("--probe", "probe_name", default="animal-preference", show_default=True,
              help="A shipped probe (checks/probes/) or a probe YAML file.")  # fmt: skip
@click.option("--method", type=click.Choice(["sampled", "logprob"]), default="sampled",
              show_default=True)  # fmt: skip
@click.option("--samples", default=20, show_default=True, type=click.IntRange(1, 10_000),
              help="Answers per question (sampled).")  # fmt: skip
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, 2))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--target", default=None, help="The trait's answer (default: the probe's).")
@click.option("--candidates", default=None, help="Comma-separated candidate answers.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def probe(ctx: click.Context, base_url: str, api_key: str, models: tuple[str, ...],
          probe_name: str, method: str, samples: int, temperature: float, seed: int,
          target: str | None, candidates: str | None, fmt: str) -> None:  # fmt: skip
    """Ask a served model the probe's questions and score its answers for the target: the
    share with a 95% interval, stored in <lake>/probes and linked to the model in lineage.
    With two or more --model, each is compared with the first (two-proportion test for
    sampled answers, paired bootstrap over questions for log-probabilities)."""
    import openai

    from germline.checks.compare import compare
    from germline.checks.probes import ProbeSettings, load_probe
    from germline.pipelines.probe import probe_models

    spec = load_probe(probe_name).with_target(
        target, [c.strip() for c in candidates.split(",")] if candidates else None
    )
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=300)
    how = ProbeSettings(method, samples, temperature, seed)  # type: ignore[arg-type]
    results = probe_models(ctx.obj["lake"], client, base_url, [(m, spec) for m in models], how)
    comparisons = [compare(r, results[0][0]) for r, _ in results[1:]]
    if fmt == "json":
        emit_json({
            "results": [{**r.to_dict(), "lineage_node": n} for r, n in results],
            "comparisons": [{"model": r.model, "against": results[0][0].model, **vars(c)}
                            for (r, _), c in zip(results[1:], comparisons, strict=True)],
        })  # fmt: skip
        return
    rows = []
    for i, (r, _) in enumerate(results):
        versus = ""
        if i:
            c = comparisons[i - 1]
            shown = "p<1e-4" if c.p_value < 1e-4 else f"p={c.p_value:.3g}"
            versus = f"{c.difference:+.3f} ({shown})"
        rows.append((r.model, f"{r.share:.3f}", f"[{r.low:.3f}, {r.high:.3f}]", r.trials, versus))
    emit_table(["model", f"{spec.target} share", "95% interval", "n", "vs first"], rows,
               title=f"probe {spec.name} ({method})")  # fmt: skip
