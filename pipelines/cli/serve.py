"""`germline serve`: every model in the lake behind the OpenAI API, on Ray Serve; and `germline
ui`, the lineage explorer in a browser (both serve HTTP on 127.0.0.1 with an API key)."""

from __future__ import annotations

import signal
import threading

import click

from germline.pipelines.cli.output import key_values, verbose


def _serving_engine(_ctx: click.Context, param: click.Parameter, name: str) -> str:
    """The --engine value, checked against the registered serving engines."""
    from germline.core import InputError
    from germline.engines.serving import SERVING

    try:
        return SERVING.check(name)
    except InputError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes it beyond this machine.")  # fmt: skip
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", envvar="GERMLINE_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY'. [env GERMLINE_API_KEY]")  # fmt: skip
@click.option("--max-models", default=8, show_default=True, type=click.IntRange(1),
              help="Models held in memory; the least recently used go.")  # fmt: skip
@click.option("--max-pending", default=64, show_default=True, type=click.IntRange(1),
              help="Requests admitted at once; beyond this a request gets 429.")  # fmt: skip
@click.option("--max-tokens", default=1024, show_default=True, type=click.IntRange(1),
              help="The largest max_tokens a request may ask for.")  # fmt: skip
@click.option("--max-request-mb", default=8.0, show_default=True, type=click.FloatRange(0.001),
              help="The largest request body, in MiB; beyond it a request gets 400.")  # fmt: skip
@click.option("--threads", default=None, type=click.IntRange(1),
              help="torch threads of the model pool [default: torch's own].")  # fmt: skip
@click.option("--engine", default="transformers", show_default=True, callback=_serving_engine,
              help="transformers, or vllm on GPU nodes (the vllm extra).")  # fmt: skip
@click.option("--num-gpus", default=0.0, show_default=True, type=click.FloatRange(0),
              help="GPUs for the model pool (1 for vllm on a GPU node).")  # fmt: skip
@click.option("--engine-option", "engine_options", multiple=True, metavar="KEY=VALUE",
              callback=key_values(yaml_values=True),
              help="A vLLM engine argument (repeatable), e.g. max_model_len=4096.")  # fmt: skip
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, api_key: str | None, max_models: int,
          max_pending: int, max_tokens: int, max_request_mb: float, threads: int | None,
          engine: str, num_gpus: float, engine_options: dict) -> None:  # fmt: skip
    """Serve the lake's models OpenAI-compatibly (/v1/models, /v1/chat/completions,
    /v1/completions) until interrupted. Model ids are lineage ids; unique names work too.
    Adapters load onto their base on demand."""
    from ray import serve as ray_serve

    from germline.pipelines.cluster import start_serving
    from germline.serve.pool import ServeSettings
    from germline.serve.registry import ModelRegistry

    lake = ctx.obj["lake"]
    settings = ServeSettings(
        lake=lake.root,
        storage_options=dict(lake.storage_options or {}),
        api_key=api_key,
        max_models=max_models,
        max_pending=max_pending,
        max_tokens=max_tokens,
        max_body_bytes=int(max_request_mb * 2**20),
        threads=threads,
        engine=engine,
        pool_gpus=num_gpus,
        engine_options=engine_options,
    )
    models = ModelRegistry(lake).list()  # before Ray starts: a broken lake fails fast
    listener = start_serving(settings, host, port, "germline", verbose(ctx))
    url = f"{listener.url}/v1"
    click.echo(
        f"serving {len(models)} models at {url}" + (" (API key required)" if api_key else "")
    )
    for model in models:
        click.echo(f"  {model.id}  ({model.name}{', adapter' if model.adapter else ''})")
    click.echo("Ctrl-C to stop", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    ray_serve.shutdown()
    listener.close()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes it beyond this machine.")  # fmt: skip
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port [default: the first free one from 8265].")  # fmt: skip
@click.option("--api-key", envvar="GERMLINE_API_KEY", default=None,
              help="Require the key: open /?key=KEY once, or send 'Authorization: Bearer "
              "KEY'. [env GERMLINE_API_KEY]")  # fmt: skip
@click.pass_context
def ui(ctx: click.Context, host: str, port: int | None, api_key: str | None) -> None:
    """Explore the lake's lineage in a browser (read-only): search nodes, draw a node's
    neighbourhood, at-risk students of a teacher, and each node's details (a model's card, a
    dataset's Delta history, quarantine and rows, a probe's shares, a run's report)."""
    from germline.pipelines.ui import bind, run_ui

    sock = bind(host, port)  # a taken port fails before the graph loads
    run_ui(ctx.obj["lake"], sock, api_key, click.echo, verbose(ctx))
