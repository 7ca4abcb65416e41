"""`germline train`: a student fine-tuned on a pinned dataset version, recorded in lineage.

`run` checks every input on the driver, runs Ray Train (germline.train) and writes and
registers the student (`train`), or a population of students in one Ray Train run
(`train_many`); `config` is a student's config. (Named for the job rather than the
command, so it is not mistaken for the `train/` floor it drives.)
"""

from germline.pipelines.finetune.config import TrainConfig
from germline.pipelines.finetune.run import StudentProgress, TrainSummary, train, train_many

__all__ = ["StudentProgress", "TrainConfig", "TrainSummary", "train", "train_many"]
