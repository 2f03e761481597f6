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

This file holds what changes the weights and the order of events at each step; the pieces it
drives live beside it, so the loop reads in one place: inputs.py (input checks, the optimizer),
faults.py (stop signals, the non-finite check), validation.py (validation means, early stopping),
run_log.py (metrics.jsonl, tensorboard, progress bar), run_checkpoint.py (step checkpoints across
processes) and result.py (`TrainResult`).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from beartype import beartype
from torch import Tensor, nn

from self_rewarding_lm_pytorch.models import enable_gradient_checkpointing
from self_rewarding_lm_pytorch.training import checkpoint as ckpt
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.config import TrainConfig
from self_rewarding_lm_pytorch.training.dropout import dropout_disabled
from self_rewarding_lm_pytorch.training.faults import (
    NonFiniteLossError,
    StopSignals,
    TrainingStopped,
    agreed_step_flags,
)
from self_rewarding_lm_pytorch.training.inputs import build_optimizer, check_train_inputs
from self_rewarding_lm_pytorch.training.metrics import MetricWindow, as_metric
from self_rewarding_lm_pytorch.training.result import TrainResult
from self_rewarding_lm_pytorch.training.run_checkpoint import RunCheckpoints
from self_rewarding_lm_pytorch.training.run_log import RunLog
from self_rewarding_lm_pytorch.training.schedule import DataStream, epoch_permutation, lr_multiplier
from self_rewarding_lm_pytorch.training.sharding import ShardedTraining, fsdp_enabled
from self_rewarding_lm_pytorch.training.validation import update_best, valid_shards, validation_means

# TrainConfig, TrainResult, epoch_permutation and lr_multiplier stay importable from here, their long-standing path.
__all__ = ["TrainConfig", "TrainResult", "epoch_permutation", "lr_multiplier", "train"]

log = logging.getLogger(__name__)


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
        check_train_inputs(task, train_dataset, valid_dataset, config, accelerator)
        self.nproc, self.rank = accelerator.num_processes, accelerator.process_index
        self.core, self.task, self.config, self.acc = model, task, config, accelerator
        self.train_dataset, self.valid_dataset = train_dataset, valid_dataset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.saved_config, self.desc, self.is_main = saved_config or {}, desc, accelerator.is_main_process
        self.items_per_step = config.batch_size * config.grad_accum_steps
        self.total_steps = config.total_steps(len(train_dataset))
        self.stream, self.window = DataStream(len(train_dataset), config.seed), MetricWindow()
        self.s, self.last_saved = ckpt.RunState(last_lr=config.learning_rate), None
        self.outputs: RunLog | None = None  # opened once the starting step is known
        self.checkpoints: RunCheckpoints | None = None  # with a run_dir, once the sharding is known
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
            self.optimizer, self.params = build_optimizer(self.model, self.config)
            optimizer = self.optimizer
        else:
            optimizer, self.params = build_optimizer(self.core, self.config)
            self.model, self.optimizer = self.acc.prepare(self.core, optimizer)
        cfg, total = self.config, self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_multiplier(s, warmup_steps=cfg.warmup_steps, total_steps=total, schedule=cfg.lr_schedule),
        )
        if self.run_dir is not None:
            self.checkpoints = RunCheckpoints(self.run_dir, self.acc, self._config_record(), self.sharded)
        try:
            with self.signals:
                if not (resume and self._resume()):
                    self._fresh_start()
                self.outputs = RunLog(self.run_dir, cfg, self.is_main, total, self.s.step, self.desc)
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
        if self.checkpoints is None:  # no run folder: nothing to resume from
            return False
        state = self.checkpoints.resume(model=self.core, optimizer=self.optimizer, scheduler=self.scheduler)
        if state is None:
            return False
        self.s, self.last_saved = state, state.step
        return True

    def _close(self):
        if self.outputs is not None:
            self.outputs.close()
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
            self._outputs().bar.update(1)
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
        """Refuse a non-finite update, and agree with every process on whether to stop after this step
        (one host sync per optimizer step; `agreed_step_flags` says why that is worth it)."""
        stop_requested = self.signals.signum is not None
        nonfinite_any, stop_any = agreed_step_flags(step_metrics, stop_requested=stop_requested, accelerator=self.acc)
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

    def _outputs(self) -> RunLog:
        assert self.outputs is not None  # opened before the first step
        return self.outputs

    def _emit(self, record: dict):
        self.s.history.append(record)
        self._outputs().write(record)

    def _log(self):
        values = self.window.flush(self.acc)
        if not values:
            return
        epoch = self.s.step * self.items_per_step / len(self.train_dataset)
        self._emit({"step": self.s.step, "epoch": round(epoch, 4), "lr": self.s.last_lr, **values})
        self._outputs().show(values, getattr(self.task, "key_metric", None))

    def _validate(self):
        # Unsharded: the unwrapped model (no gradient sync is needed, and processes may run different
        # batch counts). Sharded: the shards, every process in step.
        model = self.core if self.sharded is None else self.model
        shards = valid_shards(
            self.valid_dataset,
            self.config.batch_size,
            rank=self.rank,
            nproc=self.nproc,
            sharded=self.sharded is not None,
        )
        metrics = validation_means(self.task, model, shards, self.acc)
        self._emit({"step": self.s.step, **{f"valid/{k}": v for k, v in metrics.items()}})
        update_best(self.s, metrics, self.config, self._full_weights)

    # --- checkpoints and the end ---

    def _full_weights(self) -> dict[str, Tensor]:
        """A CPU copy of the full weights, on every process (a collective when sharded)."""
        if self.sharded is not None:
            return self.sharded.full_state_dict(all_ranks=True)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.core.state_dict().items()}

    def _save(self):
        assert self.checkpoints is not None  # only called with a run folder
        self.checkpoints.save(
            self.s,
            model=self.core,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            items_per_step=self.items_per_step,
            dataset_size=len(self.train_dataset),
        )
        self.last_saved = self.s.step

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
