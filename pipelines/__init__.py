"""germline's top floor: the command line and the jobs it runs, one room per job.

- `cli/`: the `germline` command, one module per command (parse, call, print);
- `config.py`: how every config is read and validated (YAML, `--set` overrides, names);
- `prompts/`: the prompt families a teacher completes (registered by name);
- `models/`: making and finding models (tiny bases, teachers, model folders and cards);
- `generate/`: `germline generate`, the Ray Data pipeline into Delta with lineage;
- `finetune/`: `germline train`, a student on Ray Train, recorded in lineage;
- `probe.py`: `germline probe`, a trait probe against a served model, stored in the lake;
- `experiments/`: `germline run`, one subpackage per experiment kind (registered by name);
- `cluster.py`: where the Ray work runs (an embedded local Ray, or RAY_ADDRESS's cluster);
- `demo.py`: `germline demo`, a small lineage graph without training.

Imports every floor below it; nothing imports it.
"""
