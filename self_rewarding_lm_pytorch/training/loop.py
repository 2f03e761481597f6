"""The one training loop: accelerate, AdamW + LR schedule, accumulation, clipping, logging,
validation with early stopping, atomic checkpoints and exact resume. Shapes: b batch.

Every trainer supplies a *task*: `collate(items) -> batch` and `step(model, batch) -> (loss, metrics)`.

Batching (a choice): `batch_size` is the GLOBAL number of items per micro-step. With N processes,
each takes a contiguous `batch_size // N` slice of every global micro-batch; its loss is a mean over
equal-sized slices and DDP averages gradients, so N processes compute the update one process would
(up to float summation order). An optimizer step consumes `batch_size * grad_accum_steps` items.

Data order: the items form an endless stream of per-epoch permutations (a torch generator seeded by
(seed, epoch)); optimizer step s reads stream positions [s*I, (s+1)*I). Every batch is full, and a
resumed run finds its data position from the step alone.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from beartype import beartype
from torch import Tensor, nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.files import JsonlAppender
from self_rewarding_lm_pytorch.models import enable_gradient_checkpointing
from self_rewarding_lm_pytorch.training import checkpoint as ckpt
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.config import TrainConfig
from self_rewarding_lm_pytorch.training.dropout import dropout_disabled
from self_rewarding_lm_pytorch.training.faults import NonFiniteLossError, StopSignals, TrainingStopped
from self_rewarding_lm_pytorch.training.metrics import MetricWindow, as_metric
from self_rewarding_lm_pytorch.training.schedule import DataStream, epoch_permutation, lr_multiplier
from self_rewarding_lm_pytorch.training.sharding import OPTIMIZER_DIR, ShardedTraining, fsdp_enabled

__all__ = ["TrainConfig", "TrainResult", "epoch_permutation", "lr_multiplier", "make_accelerator", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train` did: optimizer `steps` completed (in total, across resumes), every logged record
    (`history`: train records and validation records with "valid/" keys), and the best validation."""

    steps: int
    history: list[dict] = field(default_factory=list)
    best_metrics: dict | None = None
    best_step: int | None = None
    stopped_early: bool = False
    run_dir: Path | None = None
    info: dict = field(default_factory=dict)  # stage-specific extras, e.g. SFT's "num_skipped"


def _check_task(task):
    for name in ("collate", "step"):
        if not callable(getattr(task, name, None)):
            raise TypeError(
                f"the task {type(task).__name__} has no callable .{name}(); see the task protocol in loop.py"
            )


def _build_optimizer(model: nn.Module, config: TrainConfig):
    """AdamW over trainable parameters only; weight decay on matrices, not on biases/norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
    return optimizer, params


@beartype
def train(
    model: nn.Module,
    task: Any,
    train_dataset: Any,
    config: TrainConfig,
    *,
    accelerator: Accelerator | None = None,
    run_dir: str | os.PathLike | None = None,
    valid_dataset: Any = None,
    resume: bool = False,
    saved_config: dict | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place on `task` over `train_dataset`; see the module docstring for batching.

    Writes (main process only) `run_dir/metrics.jsonl`, step checkpoints in `run_dir/checkpoint/`
    every `checkpoint_every` steps and at the end, and the final weights `run_dir/model.safetensors`.
    `resume=True` continues from the latest checkpoint in `run_dir` (none: a fresh start).

    SIGTERM/SIGINT during training: the current step finishes, a step checkpoint is written and
    `TrainingStopped` (a SystemExit, status 128 + signal) is raised. A NaN/inf loss or gradient norm
    raises `NonFiniteLossError` before the optimizer step that would apply it.
    """
    if run_dir is None and (resume or config.checkpoint_every is not None):
        log.warning(
            "%s: no run_dir, so resume=%s and checkpoint_every=%s have nothing to act on",
            desc,
            resume,
            config.checkpoint_every,
        )
    run = _Run(
        model,
        task,
        train_dataset,
        config,
        accelerator or make_accelerator(),
        run_dir,
        valid_dataset,
        saved_config,
        desc,
    )
    return run.execute(resume)


class _Run:
    """One call of `train`: the prepared objects, and the counters (`self.s`) a checkpoint saves."""

    def __init__(self, model, task, train_dataset, config, accelerator, run_dir, valid_dataset, saved_config, desc):
        _check_task(task)
        self.nproc, self.rank = accelerator.num_processes, accelerator.process_index
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty")
        if config.batch_size % self.nproc:
            raise ValueError(
                f"batch_size={config.batch_size} is the global batch per micro-step and must be "
                f"divisible by the number of processes ({self.nproc})"
            )
        if valid_dataset is not None and len(valid_dataset) < self.nproc:
            raise ValueError(f"valid_dataset has {len(valid_dataset)} items, fewer than the {self.nproc} processes")
        if accelerator.gradient_accumulation_steps != 1:
            raise ValueError("the Accelerator has gradient_accumulation_steps != 1; use TrainConfig.grad_accum_steps")
        self.core, self.task, self.config, self.acc = model, task, config, accelerator
        self.train_dataset, self.valid_dataset = train_dataset, valid_dataset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.saved_config, self.desc, self.is_main = saved_config or {}, desc, accelerator.is_main_process
        self.items_per_step = config.batch_size * config.grad_accum_steps
        self.total_steps = config.total_steps(len(train_dataset))
        self.stream, self.window = DataStream(len(train_dataset), config.seed), MetricWindow()
        self.s, self.last_saved = ckpt.RunState(last_lr=config.learning_rate), None
        self.appender: JsonlAppender | None = None
        self.tb: Any = None
        self.bar: Any = None  # tqdm, opened in _open_outputs
        self.signals, self.stop_agreed = StopSignals(), False
        self.sharded: ShardedTraining | None = None

    def execute(self, resume: bool) -> TrainResult:
        was_training = self.core.training
        if self.config.gradient_checkpointing:
            enable_gradient_checkpointing(self.core)
        if fsdp_enabled(self.config.fsdp, self.nproc):
            # No accelerate.prepare: the shards replace DDP, and the optimizer sees only this process's slices.
            self.sharded = ShardedTraining(self.core, device=self.acc.device, mixed_precision=self.acc.mixed_precision)
            self.model = self.sharded.module
            self.optimizer, self.params = _build_optimizer(self.model, self.config)
            optimizer = self.optimizer
        else:
            optimizer, self.params = _build_optimizer(self.core, self.config)
            self.model, self.optimizer = self.acc.prepare(self.core, optimizer)
        cfg, total = self.config, self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_multiplier(s, warmup_steps=cfg.warmup_steps, total_steps=total, schedule=cfg.lr_schedule),
        )
        try:
            with self.signals:
                if not (resume and self.run_dir is not None and self._resume()):
                    self._fresh_start()
                self._open_outputs()
                with dropout_disabled(self.core, enabled=cfg.disable_dropout):
                    self._loop()
                self._finish()
        finally:
            self._close()
            self.core.train(was_training)
        s = self.s
        return TrainResult(s.step, s.history, s.best, s.best_step, s.stopped_early, self.run_dir)

    # --- setup and teardown ---

    def _config_record(self) -> dict:
        return {
            "train": asdict(self.config),
            "num_processes": self.nproc,
            "dataset_size": len(self.train_dataset),
            "total_steps": self.total_steps,
            "desc": self.desc,
            "saved_config": self.saved_config,
        }

    def _fresh_start(self):
        ckpt.seed_everything(self.config.seed + self.rank)  # each process draws its own dropout masks
        if self.is_main and self.run_dir is not None:
            removed = ckpt.clear_run(self.run_dir)
            if removed:
                log.warning("starting fresh in %s (resume=False): removed %s", self.run_dir, removed)
        self.acc.wait_for_everyone()

    def _resume(self) -> bool:
        assert self.run_dir is not None  # only called with a run folder
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        self.s, rngs = ckpt.load_run_checkpoint(
            path,
            model=self.core,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config_now=self._config_record(),
            sharded=self.sharded,
        )
        ckpt.set_rng_state(rngs[self.rank])
        self.last_saved = self.s.step
        if self.is_main:
            ckpt.truncate_metrics(self.run_dir / "metrics.jsonl", self.s.step)  # the resumed run logs them again
        self.acc.wait_for_everyone()
        return True

    def _open_outputs(self):
        if self.is_main and self.run_dir is not None:
            self.appender = JsonlAppender(self.run_dir / "metrics.jsonl")
            if self.config.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
                except ImportError:
                    log.warning(
                        "tensorboard=True but torch.utils.tensorboard does not import; logging to metrics.jsonl only"
                    )
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.s.step,
            desc=self.desc,
            dynamic_ncols=True,
            disable=not (self.config.progress and self.is_main),
        )

    def _close(self):
        for resource in (self.appender, self.tb, self.bar):
            if resource is not None:
                resource.close()
        # The accelerator outlives this run (it is reused across stages); drop our references so the
        # optimizer state is freed when the run ends.
        for attr, obj in (("_models", self.model), ("_optimizers", self.optimizer)):
            items = getattr(self.acc, attr, None)
            if isinstance(items, list):
                items[:] = [x for x in items if x is not obj]

    # --- the loop ---

    def _loop(self):
        cfg = self.config

        def due(every):
            return every is not None and self.s.step % every == 0

        while self.s.step < self.total_steps and not self.s.stopped_early:
            self._train_step()
            last, stop = self.s.step == self.total_steps, self.stop_agreed
            save = self.run_dir is not None and (due(cfg.checkpoint_every) or stop)
            # A checkpoint also flushes the log window, so resumed and straight runs log the same records.
            if due(cfg.log_every) or save or last:
                self._log()
            if self.valid_dataset is not None and (due(cfg.valid_every) or last):
                self._validate()
            if save:
                self._save()
            self.bar.update(1)
            if stop:
                self._stop()

    def _stop(self):
        signum = self.signals.signum or 15  # another process got the signal: the usual SIGTERM status
        where = f"a step checkpoint in {self.run_dir}" if self.run_dir is not None else "nothing (no run_dir)"
        message = f"{self.desc}: stopped by signal {signum} after step {self.s.step}; wrote {where}; rerun to resume"
        log.warning(message)
        raise TrainingStopped(signum, message)

    def _micro_batch(self, micro: int):
        size, share = self.config.batch_size, self.config.batch_size // self.nproc
        start = (self.s.step * self.config.grad_accum_steps + micro) * size
        mine = self.stream.take(start, size)[self.rank * share : (self.rank + 1) * share]
        return send_to_device(self.task.collate([self.train_dataset[i] for i in mine]), self.acc.device)

    def _no_sync(self):
        return self.acc.no_sync(self.model) if self.sharded is None else self.sharded.no_gradient_sync()

    def _train_step(self):
        cfg, acc = self.config, self.acc
        self.model.train()
        step_metrics: dict[str, Tensor] = {}
        for micro in range(cfg.grad_accum_steps):
            batch = self._micro_batch(micro)
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            with nullcontext() if micro == cfg.grad_accum_steps - 1 else self._no_sync():
                loss, metrics = self.task.step(self.model, batch)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(f"task.step must return a scalar loss tensor, got {type(loss).__name__}")
                # Equal-sized micro-batches: the mean of their mean losses is the full batch's mean loss.
                acc.backward(loss.reshape(()) / cfg.grad_accum_steps)
            values = {k: as_metric(k, v, loss.device) for k, v in metrics.items()}
            values["loss"] = loss.detach().float().reshape(())
            for k, v in values.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum_steps
        if cfg.max_grad_norm:
            clip = acc.clip_grad_norm_ if self.sharded is None else self.sharded.clip_grad_norm
            grad_norm = clip(self.params, cfg.max_grad_norm)
            if grad_norm is not None:
                step_metrics["grad_norm"] = grad_norm.detach().float().reshape(())
        self._check_before_update(step_metrics)
        self.s.last_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.add(step_metrics)
        self.s.step += 1

    def _check_before_update(self, step_metrics: dict[str, Tensor]):
        """Refuse a non-finite update, and agree with every process on whether to stop after this step.

        One host sync per optimizer step, on purpose: a NaN/inf must be seen before optimizer.step()
        applies it (afterwards every weight, checkpoint and later stage would carry it), and all
        processes must stop at the same step. Both flags travel in one tensor and one reduction; on
        tiny models this costs about as much as the logging already does every step.
        """
        watched = [step_metrics["loss"]] + ([step_metrics["grad_norm"]] if "grad_norm" in step_metrics else [])
        nonfinite = (~torch.isfinite(torch.stack(watched))).any().float()
        stop = torch.tensor(float(self.signals.signum is not None), device=nonfinite.device)
        flags = torch.stack([nonfinite, stop])
        if self.nproc > 1:
            flags = self.acc.reduce(flags, reduction="sum")
        nonfinite_any, stop_any = (flags > 0).tolist()
        if nonfinite_any:
            self.optimizer.zero_grad(set_to_none=True)
            values = {k: v.item() for k, v in step_metrics.items() if k in ("loss", "grad_norm")}
            raise NonFiniteLossError(
                f"{self.desc}: non-finite training values at step {self.s.step + 1} ({values}) in "
                f"{self.run_dir or 'a run without run_dir'}; the update was not applied and the checkpoints "
                "written so far are intact (a lower learning_rate or max_grad_norm may help)"
            )
        self.stop_agreed = bool(stop_any)

    # --- logging, validation, early stopping ---

    def _emit(self, record: dict):
        self.s.history.append(record)
        if self.appender is not None:
            self.appender.write(record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def _log(self):
        values = self.window.flush(self.acc)
        if not values:
            return
        epoch = self.s.step * self.items_per_step / len(self.train_dataset)
        self._emit({"step": self.s.step, "epoch": round(epoch, 4), "lr": self.s.last_lr, **values})
        postfix = {"loss": f"{values['loss']:.4f}"}
        key = getattr(self.task, "key_metric", None)
        if key and key != "loss" and key in values:
            postfix[key] = f"{values[key]:.4g}"
        self.bar.set_postfix(postfix, refresh=False)

    def _valid_shards(self):
        """(items, weight) per global batch of `batch_size`, split as evenly as possible over the processes.

        Unsharded, a process with no items in a batch skips it. Sharded, every forward is a collective,
        so such a process runs the batch's first item with weight 0 instead.
        """
        n, size = len(self.valid_dataset), self.config.batch_size
        for start in range(0, n, size):
            count = min(size, n - start)
            lo, hi = start + count * self.rank // self.nproc, start + count * (self.rank + 1) // self.nproc
            if lo < hi:
                yield [self.valid_dataset[i] for i in range(lo, hi)], hi - lo
            elif self.sharded is not None:
                yield [self.valid_dataset[start]], 0

    def _valid_step(self, model, batch) -> dict:
        if callable(getattr(self.task, "valid_step", None)):
            return self.task.valid_step(model, batch)
        loss, metrics = self.task.step(model, batch)
        return {"loss": loss, **metrics}

    def _validate(self):
        # Unsharded: the unwrapped model (no gradient sync is needed, and processes may run different
        # batch counts). Sharded: the shards, every process in step.
        model = self.core if self.sharded is None else self.model
        device, was_training = self.acc.device, model.training
        sums: dict[str, Tensor] = {}
        count = 0
        model.eval()
        with torch.no_grad():
            for items, weight in self._valid_shards():
                metrics = self._valid_step(model, send_to_device(self.task.collate(items), device))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + as_metric(k, v, device) * weight
                count += weight
        model.train(was_training)
        names = sorted(sums)
        stacked = torch.stack([sums[k] for k in names] + [torch.tensor(float(count), device=device)])
        totals = self.acc.reduce(stacked, reduction="sum").tolist()  # item-weighted means over all processes
        metrics = {k: v / totals[-1] for k, v in zip(names, totals[:-1], strict=True)}
        self._emit({"step": self.s.step, **{f"valid/{k}": v for k, v in metrics.items()}})
        self._update_best(metrics)

    def _update_best(self, metrics: dict[str, float]):
        cfg, s, name = self.config, self.s, self.config.early_stopping_metric
        if name not in metrics:
            if cfg.early_stopping_patience is not None:
                raise ValueError(f"early_stopping_metric {name!r} is not a validation metric; have {sorted(metrics)}")
            return
        value, best = metrics[name], None if s.best is None else s.best[name]
        better = best is None or (value < best if cfg.early_stopping_mode == "min" else value > best)
        if not math.isnan(value) and better:
            s.best, s.best_step, s.bad_evals = dict(metrics), s.step, 0
            if cfg.early_stopping_patience is not None:
                s.best_weights = self._full_weights()
            return
        s.bad_evals += 1
        if cfg.early_stopping_patience is not None and s.bad_evals >= cfg.early_stopping_patience:
            s.stopped_early = True

    # --- checkpoints and the end ---

    def _full_weights(self) -> dict[str, Tensor]:
        """A CPU copy of the full weights, on every process (a collective when sharded)."""
        if self.sharded is not None:
            return self.sharded.full_state_dict(all_ranks=True)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.core.state_dict().items()}

    def _save(self):
        assert self.run_dir is not None  # only called with a run folder
        rng = ckpt.get_rng_state()
        # Every process's RNG goes into the one checkpoint the main process writes.
        rngs = gather_object([rng]) if self.nproc > 1 else [rng]
        record = dict(
            scheduler=self.scheduler,
            rng_states=rngs,
            config=self._config_record(),
            items_per_step=self.items_per_step,
            dataset_size=len(self.train_dataset),
        )
        if self.sharded is None:
            if self.is_main:
                ckpt.save_run_checkpoint(self.run_dir, self.s, model=self.core, optimizer=self.optimizer, **record)
        else:
            self._save_sharded(record)
        self.last_saved = self.s.step
        self.acc.wait_for_everyone()

    def _save_sharded(self, record: dict):
        """Full weights from the main process, optimizer shards from every process, into one staging folder."""
        assert self.sharded is not None and self.run_dir is not None  # only called so
        full = self.sharded.full_state_dict(all_ranks=False)
        staging = ckpt.staging_dir(self.run_dir, self.s.step)
        if self.is_main:
            ckpt.clear_staging(staging)
        self.acc.wait_for_everyone()
        self.sharded.save_optimizer(self.optimizer, staging / OPTIMIZER_DIR)
        self.acc.wait_for_everyone()
        if self.is_main:
            with self.sharded.full_core(full) as core:
                ckpt.save_run_checkpoint(self.run_dir, self.s, model=core, optimizer=None, staging=staging, **record)

    def _finish(self):
        if self.window.steps:
            self._log()
        if self.s.stopped_early and self.s.best_weights is not None:
            if self.sharded is None:
                self.core.load_state_dict(self.s.best_weights)
            else:
                self.sharded.load_full(self.s.best_weights)
        if self.run_dir is not None and (self.last_saved != self.s.step or self.s.stopped_early):
            self._save()
        if self.sharded is not None:
            self.optimizer.state.clear()  # saved above if it was wanted; its memory goes before the gather
            self.sharded.restore_core()  # the user's model holds the full trained weights again
        if self.run_dir is not None:
            if self.is_main:
                ckpt.save_model(self.core, self.run_dir / "model.safetensors")
            self.acc.wait_for_everyone()
