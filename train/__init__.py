"""germline's training floor: students fine-tuned on Ray Train.

`data` pins and tokenizes the rows and fixes the order of the whole run on the driver,
`objectives` holds the losses (sampled-token SFT, full or restricted logit distillation),
`loop` is what every worker runs (load, resume, train, checkpoint), and `trainer` runs the
loop on a `TorchTrainer`. Imports the floors below it (`core`, `storage`, `engines` for model
loading), never the server or the pipelines; the `germline train` run that checks the inputs
and registers the student lives in pipelines/finetune.
"""
