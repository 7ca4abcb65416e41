"""The `germline` command: the root group (`root`) and one module per command or command
group, each a thin shell that parses, calls one public function of the room named like it,
and prints. This entry point only adds the commands.

    germline generate   -> cli/generate.py -> pipelines/generate   (generate)
    germline audit      -> cli/audit.py    -> pipelines/audit      (audit)
    germline scrub      -> cli/audit.py    -> pipelines/audit      (scrub)
    germline train      -> cli/train.py    -> pipelines/finetune   (train)
    germline serve      -> cli/serve.py    -> serve/               (build_app, via cluster)
    germline ui         -> cli/serve.py    -> pipelines/ui         (run_ui)
    germline probe      -> cli/probe.py    -> pipelines/probe.py   (probe_model)
    germline run/report -> cli/run.py      -> pipelines/experiments (EXPERIMENTS, find_report)
    germline models     -> cli/models.py   -> pipelines/models     (bootstrap_base, make_teacher)
    germline lineage    -> cli/lineage.py  -> lineage/             (LineageStore, LineageGraph)
    germline demo       -> cli/lineage.py  -> pipelines/demo.py    (run_demo)
    germline lake       -> cli/lake.py     -> storage/vacuum.py    (sweep)
"""

from germline.pipelines.cli.audit import audit, scrub
from germline.pipelines.cli.generate import generate
from germline.pipelines.cli.lake import lake
from germline.pipelines.cli.lineage import demo, lineage
from germline.pipelines.cli.models import models
from germline.pipelines.cli.probe import probe
from germline.pipelines.cli.root import cli
from germline.pipelines.cli.run import report, run
from germline.pipelines.cli.serve import serve, ui
from germline.pipelines.cli.train import train

COMMANDS = (generate, audit, scrub, lineage, models, train, serve, ui, probe, run, report, demo)
for command in (*COMMANDS, lake):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="germline")
