"""`germline generate`: prompts -> teacher -> filters -> expectations -> Delta, with lineage.

`pipeline` runs the job (the Ray Data stream and the driver's commits), `stages` holds the two
Ray Data stages (the teacher's engine, the checks), `sink` the exactly-once Delta writer, and
`config` the job's config. The prompts come from `pipelines/prompts`, the teacher from
`pipelines/models`, found or made before the stream starts.
"""

from germline.pipelines.generate.config import GenerateConfig
from germline.pipelines.generate.pipeline import GenerateSummary, generate, generate_many

__all__ = ["GenerateConfig", "GenerateSummary", "generate", "generate_many"]
