"""`germline train`: a student fine-tuned on a pinned dataset version, recorded in lineage.

`run` checks every input on the driver, runs Ray Train (germline.train) and writes and
registers the student; `config` is the run's config. (Named for the job rather than the
command, so it is not mistaken for the `train/` floor it drives.)
"""

from germline.pipelines.finetune.config import TrainConfig
from germline.pipelines.finetune.run import TrainSummary, train

__all__ = ["TrainConfig", "TrainSummary", "train"]
