"""Model making: every model germline builds or finds, before any pipeline runs.

`bootstrap` makes a tiny base (a tokenizer and a small Llama pre-trained here, `tiny`, on the
texts of `corpus`), `teacher` a teacher with a trait (a LoRA adapter, or a system prompt) and
finds a generation job's teacher, `refs` finds a model a config names (lineage id or name,
local folder, cached hub id) and registers it on first sight, `folder` saves a model's folder
whole with its card (`card`) and registers it. Nothing here runs on Ray: models are made by
the driver and saved to the lake, where every worker fetches them.
"""
