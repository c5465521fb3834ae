"""Metrics of the `mqar` kind (harness/kinds/mqar): the baselines, the accuracy the tiny model
reaches on held-out sequences at the best learning rate, and how it was trained.

Each has
`table=False`: the report's MQAR section (`harness.kinds.mqar.report`) shows them.
"""

from __future__ import annotations

from harness.plugins.metrics import Gate, Metric

MQAR: tuple[Metric, ...] = (
    # ----- the baselines (the task point itself is the record's `task`) -----
    Metric("mqar_chance", "1", None, "accuracy of a uniform guess among the value tokens", "task",
           measured_by="mqar", title="chance accuracy", decimals=3, table=False),
    Metric("mqar_copy_baseline", "1", None, "accuracy of answering with a value present in the sequence, "
           "at random (1 / pairs): a model at or below it has learned no recall", "task",
           measured_by="mqar", title="copy-from-context baseline", decimals=3, table=False),
    # ----- the result -----
    Metric("mqar_accuracy", "1", "higher", "fraction of held-out query positions whose argmax prediction is "
           "the right value, mean over seeds at the best learning rate", "task", measured_by="mqar",
           title="MQAR accuracy", decimals=3, table=False, gate=Gate(abs=0.05)),
    Metric("mqar_accuracy_min", "1", "higher", "the worst seed's accuracy at the best learning rate", "task",
           measured_by="mqar", title="MQAR accuracy, worst seed", decimals=3, table=False),
    Metric("mqar_accuracy_sd", "1", None, "spread of the seeds' accuracies at the best learning rate: their "
           "sample standard deviation (n - 1); only with 2 seeds or more", "task", measured_by="mqar",
           title="MQAR accuracy, spread over seeds", decimals=3, table=False),
    Metric("mqar_seed_accuracy", "1", None, "accuracy of each seed at the best learning rate, in `seeds` "
           "order", "task", measured_by="mqar", title="accuracy per seed", table=False),
    Metric("mqar_best_lr", "1", None, "the learning rate of the grid with the best mean accuracy", "task",
           measured_by="mqar", title="best learning rate", table=False),
    Metric("mqar_lr_accuracy", "1", None, "mean accuracy over seeds of each learning rate, in `lrs` order",
           "task", measured_by="mqar", title="accuracy per learning rate", table=False),
    Metric("mqar_final_loss", "1", "lower", "last training loss (cross-entropy on query positions) of the "
           "best rate, mean over seeds", "task", measured_by="mqar", title="final training loss",
           table=False),
    # ----- how it was trained -----
    Metric("mqar_runs", "1", None, "training runs of the case (learning rates x seeds)", "task",
           measured_by="mqar", title="training runs", digits=4, table=False),
    Metric("mqar_train_s", "s", None, "wall time of all the case's training runs and evaluations", "task",
           measured_by="mqar", title="training time", table=False),
    Metric("mqar_state_bytes", "bytes", None, "bytes of the state the model's attention keeps per sequence "
           "at seq_len, all layers (the variant's `state_bytes`: a linear variant's fixed state, exact "
           "attention's K and V cache)", "task", measured_by="mqar", title="recurrent state",
           display_unit="KiB", scale=1 / 1024, table=False),
    Metric("mqar_model_params", "1", None, "trainable parameters of the model, the variant's included",
           "task", measured_by="mqar", title="model parameters", digits=4, table=False),
)  # fmt: skip
