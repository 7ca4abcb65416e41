"""`germline demo`: a small lineage graph in the lake, and what lineage tells about it."""

from __future__ import annotations

import click


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Build a small lineage graph in the lake and show what lineage tells about it.

    Two bases, an owl teacher, its number data, students on the same and on another base,
    and a second generation. The weights are small random arrays (the real models come with
    `germline run`); the graph, its queries and its picture are real.
    """
    from germline.pipelines.demo import run_demo

    run_demo(ctx.obj["lake"], echo=click.echo)
