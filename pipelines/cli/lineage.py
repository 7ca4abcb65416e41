"""`germline lineage ...`: register, link and query the lineage graph from the shell; and
`germline demo`, a small graph built in the lake to show what those queries tell.

Each command is a thin shell over one LineageStore / LineageGraph call; the CLI parses and
prints, the lineage package does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from germline.core import InputError
from germline.lineage import EdgeKind, Hit, LineageStore, NodeKind
from germline.pipelines.cli.output import (
    emit_json,
    emit_table,
    format_option,
    key_values,
    short_fingerprint,
)


def _store(ctx: click.Context) -> LineageStore:
    return LineageStore(ctx.obj["lake"])


def _kind_name(hit: Hit) -> tuple[str, str]:
    data = hit.graph.g.nodes[hit.id]
    return data["kind"], data["name"]


def _emit_hits(hits: list[Hit], fmt: str, title: str, audited: bool = False) -> None:
    """The hits as a table or JSON; with `audited` (at-risk), each model's training data and
    what its audits found."""
    audits = {h.id: _training_audits(h) for h in hits} if audited else {}
    if fmt == "json":
        emit_json([{**h.to_dict(), **({"data": audits[h.id]} if audited else {})} for h in hits])
        return
    columns = ["depth", "kind", "name", "id", "fingerprint"]
    rows = [[h.depth, *_kind_name(h), h.id, short_fingerprint(h.fingerprint)] for h in hits]
    if audited:
        columns.append("trained on (audit: log-ratio/token, divergence tokens)")
        for row, h in zip(rows, hits, strict=True):
            row.append("; ".join(_audit_text(d) for d in audits[h.id]) or "-")
    emit_table(columns, rows, title=f"{title} ({len(hits)})")


def _training_audits(hit: Hit) -> list[dict]:
    """The dataset versions a model trained on, each with the summaries of its audits
    (`germline audit`: run nodes of kind audit that used the version)."""
    graph = hit.graph
    out = []
    for parent, kind in graph.parents(hit.id):
        if kind != EdgeKind.TRAINED_ON.value:
            continue
        found = []
        for child, _ in graph.children(parent):
            node = graph.node(child)
            if node.kind is NodeKind.RUN and node.attrs.get("kind") == "audit":
                s = node.attrs.get("summary", {})
                found.append({"audit": child, "mean_ratio_per_token": s.get("mean_ratio_per_token"),
                              "divergence_share": s.get("divergence_share"),
                              "transfer": (s.get("transfer") or {}).get("cosine")})  # fmt: skip
        out.append({"dataset": parent, "name": graph.node(parent).name, "audits": found})
    return out


def _audit_text(data: dict) -> str:
    if not data["audits"]:
        return f"{data['name']} (not audited)"
    a = data["audits"][0]
    return f"{data['name']} ({a['mean_ratio_per_token']:+.4f}, {a['divergence_share']:.1%})"


def _emit_node(node_dict: dict, fmt: str) -> None:
    if fmt == "json":
        emit_json(node_dict)
    else:
        click.echo(node_dict["id"])


def _path_option(flag: str, dest: str, text: str) -> Callable:
    """A required option naming a file or folder."""
    return click.option(flag, dest, required=True, type=click.Path(path_type=Path), help=text)


@click.group()
def lineage() -> None:
    """Record and query where models and datasets came from.

    Nodes are models, dataset versions, runs, probe results and filter suites. Edges run from
    a child to its parent: derived_from, generated_by, trained_on, filtered_by, probed, used.
    A node may be named by its id, a unique id prefix, or a unique name.
    """


@lineage.group()
def register() -> None:
    """Add a model, dataset version or run to the graph (idempotent)."""


@register.command("model")
@click.argument("name")
@_path_option("--path", "path", "Directory (or file) holding the model's weights.")
@click.option(
    "--from",
    "parent",
    metavar="ID",
    help="The model it was initialised from; its base fingerprint is inherited.",
)
@format_option
@click.pass_context
def register_model(ctx: click.Context, name: str, path: Path, parent: str | None, fmt: str) -> None:
    """Register the model at PATH as NAME; prints its id.

    The weights are hashed to identify the model; a model without --from is a base, and its
    hash is the base fingerprint that derived models inherit.
    """
    node = _store(ctx).register_model(name, path, parent=parent)
    _emit_node(node.to_dict(), fmt)


@register.command("dataset")
@click.argument("name")
@click.option("--table", "table", required=True, metavar="URI", help="A Delta table.")
@click.option(
    "--version", "version", type=click.IntRange(min=0), help="Table version (default: the latest)."
)
@click.option(
    "--generated-by",
    "generated_by",
    multiple=True,
    metavar="ID",
    help="Model or run that wrote it (repeatable).",
)
@click.option(
    "--filtered-by",
    "filtered_by",
    multiple=True,
    metavar="ID",
    help="Filter suite or run that vetted it (repeatable).",
)
@format_option
@click.pass_context
def register_dataset(
    ctx: click.Context,
    name: str,
    table: str,
    version: int | None,
    generated_by: tuple[str, ...],
    filtered_by: tuple[str, ...],
    fmt: str,
) -> None:
    """Register one version of the Delta table at URI as dataset NAME; prints its id."""
    node = _store(ctx).register_dataset(
        name, table, version=version, generated_by=generated_by, filtered_by=filtered_by
    )
    _emit_node(node.to_dict(), fmt)


@register.command("run")
@click.argument("name")
@click.option(
    "--key",
    help="What makes this run itself: the same NAME and KEY are one run. "
    "Default: a new run each time.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    callback=key_values(),
    help="A parameter to record (repeatable).",
)
@click.option("--used", multiple=True, metavar="ID", help="An input the run read (repeatable).")
@format_option
@click.pass_context
def register_run(
    ctx: click.Context,
    name: str,
    key: str | None,
    params: dict[str, str],
    used: tuple[str, ...],
    fmt: str,
) -> None:
    """Register a run (generation, training, probing) as NAME; prints its id."""
    node = _store(ctx).register_run(name, key=key, params=params, used=used)
    _emit_node(node.to_dict(), fmt)


@lineage.command()
@click.argument("src")
@click.argument("dst")
@click.option(
    "--kind",
    "kind",
    required=True,
    type=click.Choice([k.value for k in EdgeKind]),
    help="Edge kind, read as 'SRC <kind> DST' (student trained_on dataset).",
)
@click.pass_context
def link(ctx: click.Context, src: str, dst: str, kind: str) -> None:
    """Add the edge SRC -KIND-> DST, from child to parent (idempotent)."""
    edge = _store(ctx).link(src, dst, kind)
    click.echo(f"{edge.src} {edge.kind.value} {edge.dst}")


@lineage.command("list")
@click.option(
    "--kind",
    "kind",
    type=click.Choice([k.value for k in NodeKind]),
    help="Only nodes of this kind.",
)
@format_option
@click.pass_context
def list_nodes(ctx: click.Context, kind: str | None, fmt: str) -> None:
    """List the nodes of the graph."""
    graph = _store(ctx).graph()
    nodes = graph.nodes(NodeKind(kind) if kind else None)
    if fmt == "json":
        emit_json([{**n.to_dict(), "fingerprint": graph.fingerprint(n.id)} for n in nodes])
        return
    emit_table(
        ["kind", "name", "version", "id", "fingerprint", "created"],
        [
            (
                n.kind.value,
                n.name,
                n.version,
                n.id,
                short_fingerprint(graph.fingerprint(n.id)),
                n.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
            for n in nodes
        ],
    )


@lineage.command()
@click.argument("ref", metavar="ID")
@format_option
@click.pass_context
def show(ctx: click.Context, ref: str, fmt: str) -> None:
    """Show one node: what it is, where it lives, its parents and children."""
    graph = _store(ctx).graph()
    node = graph.node(graph.resolve(ref))
    parents, children = graph.parents(node.id), graph.children(node.id)
    data = {
        **node.to_dict(),
        "fingerprint": graph.fingerprint(node.id),
        "parents": [{"id": p, "kind": k} for p, k in parents],
        "children": [{"id": c, "kind": k} for c, k in children],
    }
    if fmt == "json":
        emit_json(data)
        return
    rows = [
        (k, data[k])
        for k in (
            "id",
            "kind",
            "name",
            "uri",
            "version",
            "fingerprint",
            "weights_hash",
            "created_at",
        )
        if data[k] is not None
    ]
    rows += [(f"attrs.{k}", v) for k, v in sorted(node.attrs.items())]
    rows += [("parent", f"{node.id} {k} {p}") for p, k in parents]
    rows += [("child", f"{c} {k} {node.id}") for c, k in children]
    emit_table(["field", "value"], rows)


def _query_command(name: str) -> Callable[[Callable], click.Command]:
    """A `lineage NAME ID` command that runs one graph query from ID and prints its hits."""

    def make(body: Callable) -> click.Command:
        return lineage.command(name)(
            click.argument("ref", metavar="ID")(format_option(click.pass_context(body)))
        )

    return make


def _print_query(ctx: click.Context, ref: str, fmt: str, query: str, title: str) -> None:
    graph = _store(ctx).graph()
    node = graph.resolve(ref)
    _emit_hits(getattr(graph, query)(node), fmt, f"{title} {node}", audited=query == "at_risk")


@_query_command("ancestors")
def ancestors(ctx: click.Context, ref: str, fmt: str) -> None:
    """Everything ID came from: its parents, theirs, and so on."""
    _print_query(ctx, ref, fmt, "ancestors", "ancestors of")


@_query_command("descendants")
def descendants(ctx: click.Context, ref: str, fmt: str) -> None:
    """Everything made from ID, directly or through any number of steps."""
    _print_query(ctx, ref, fmt, "descendants", "descendants of")


@_query_command("at-risk")
def at_risk(ctx: click.Context, ref: str, fmt: str) -> None:
    """Models that may have inherited a trait of model ID.

    Those that trained, directly or through any number of generations, on data descending
    from ID, and that share its base fingerprint: the condition under which traits transmit
    through data that looks unrelated. Each model's training data is listed with what its
    audits found (`germline audit`), if any.
    """
    _print_query(ctx, ref, fmt, "at_risk", "at risk from")


@lineage.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@format_option
@click.pass_context
def path(ctx: click.Context, a: str, b: str, fmt: str) -> None:
    """How A and B are related: the flow path between them, else the shortest path ignoring
    direction."""
    graph = _store(ctx).graph()
    steps = graph.path(graph.resolve(a), graph.resolve(b))
    if fmt == "json":
        emit_json([s.to_dict() for s in steps])
        return
    emit_table(
        ["from", "edge", "to"],
        [(s.src, f"--{s.kind}-->" if s.forward else f"<--{s.kind}--", s.dst) for s in steps],
    )


@lineage.command("draw")
@click.argument("ref", metavar="ID")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write; its suffix picks the format (.png, .svg, .dot, .mmd).",
)
@click.option("--depth", type=click.IntRange(min=0), help="Generations to draw each way.")
@click.pass_context
def draw_cmd(ctx: click.Context, ref: str, out: Path, depth: int | None) -> None:
    """Draw ID with its ancestors and descendants."""
    from germline.lineage.draw import draw  # matplotlib and pydot load only when drawing

    graph = _store(ctx).graph()
    node = graph.resolve(ref)
    written = draw(graph.neighbourhood(node, depth), out, focus=node)
    click.echo(str(written))


@lineage.command()
@_path_option("--openlineage", "out", "JSON-lines file of OpenLineage RunEvents to write.")
@click.option(
    "--namespace", default="germline", show_default=True, help="OpenLineage job namespace."
)
@click.pass_context
def export(ctx: click.Context, out: Path, namespace: str) -> None:
    """Export the whole graph as OpenLineage run events (for Marquez and friends)."""
    from germline.lineage.openlineage import write_openlineage

    if not out.parent.exists():
        raise InputError(f"folder {out.parent} does not exist")
    count = write_openlineage(_store(ctx).graph(), out, namespace)
    click.echo(f"{count} events -> {out}")


# `germline demo`: a small lineage graph in the lake, and what lineage tells about it.
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
