"""The train step as a CUDA graph: the `cuda_graphs` train setting (default off until measured).

At 64x64 a step of either model is a few hundred short kernels and the GPU waits for the CPU
to launch them. A CUDA graph records one step's kernels once; each later step is one copy of
the batch into the graph's input buffers and one replay.

What is captured is `engine.train_step`, the function the eager path runs (forward under
autocast, loss, backward, optimizer step), so both modes do the same arithmetic:

- The first WARMUP_STEPS full-size batches of a run train eagerly on a side stream (the
  optimizer's state and the libraries' workspaces must exist before capture); the next
  full-size batch is captured, then replayed, and so is every full-size batch after it.
- A batch of another size (an epoch's last, smaller batch) trains eagerly with the same model
  and optimizer: nothing is padded or dropped, every image counts once, as in eager mode.
- The replay leaves the batch's loss and predicted classes in the graph's output buffers; the
  epoch loop adds them to its loss sum and confusion matrix on the device, as for an eager step
  (metrics.confusion_matrix never waits for the device), so there is one sync per epoch.
- The optimizer is made capturable: `capturable=True` (Adam, AdamW), its step counts on the device
  and its learning rate a device tensor that the scheduler fills in place (after each epoch, or
  after each step for a per-iteration schedule: trainables/optim.py), so a replay uses the current
  lr. SGD reads a tensor lr on the device only in its fused kernel: graphs with SGD need it.
- Autocast runs without its weight-cast cache (a cached cast made during capture would be freed).

`trainables/engine.fit` asks for the step with `graphed_train_step`; with `cuda_graphs` off it
gets None (eager). On a device other than CUDA it prints one warning line and trains eagerly.
`cuda_graphs` with `compile` is refused by TrainConfig (torch.compile has its own graphs).
`benchmarks/gpu/run` checks the losses of graphed steps against eager ones on a GPU.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.step import autocast_context, train_step

WARMUP_STEPS = 3


def graphed_train_step(config: TrainConfig, device: torch.device, model: nn.Module,
                       optimizer: torch.optim.Optimizer, criterion: nn.Module) -> GraphedTrainStep | None:
    """The step for `engine.train_one_epoch`: None (eager) unless `cuda_graphs` is on and the device is CUDA."""
    if not config.cuda_graphs:
        return None
    if device.type != "cuda":
        print(f"warning: cuda_graphs is on but the device is {device.type}, not CUDA: the train step runs eagerly",
              file=sys.stderr, flush=True)
        return None
    if isinstance(optimizer, torch.optim.SGD) and not all(group.get("fused") for group in optimizer.param_groups):
        # foreach SGD reads a tensor lr with .item(), a sync that a capture cannot hold
        raise ConfigError("fused_optimizer: cuda_graphs with optimizer sgd needs the fused kernel "
                          "(fused_optimizer true or null)")
    return GraphedTrainStep(model, optimizer, criterion, autocast_context(config, device, cache_enabled=False),
                            config.batch_size, device)


class GraphedTrainStep:
    """`step(images, masks) -> (loss, predicted classes)`, replaying one captured train step for full-size batches."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, autocast,
                 batch_size: int, device: torch.device):
        self.model, self.optimizer, self.criterion, self.autocast = model, optimizer, criterion, autocast
        self.batch_size = batch_size
        self.device = device
        self.warmed_up = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side_stream = torch.cuda.Stream(device)
        make_capturable(optimizer, device)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != self.batch_size:
            return self.eager(images, masks)
        if self.graph is None:
            if self.warmed_up < WARMUP_STEPS:
                self.warmed_up += 1
                return self.eager_on_side_stream(images, masks)
            self.capture(images, masks)
        else:
            self.inputs[0].copy_(images)
            self.inputs[1].copy_(masks)
        self.graph.replay()
        return self.outputs

    def eager(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(self.model, self.optimizer, self.criterion, images, masks, self.autocast)

    def eager_on_side_stream(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side_stream):
            outputs = self.eager(images, masks)
        torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
        return outputs

    def capture(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """Record train_step on static copies of this batch (capture runs nothing: the replay after it trains)."""
        self.inputs = (images.clone(), masks.clone())  # clone keeps the layout (channels_last)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call from another thread of the trial (Ray's) does not void this capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = self.eager(*self.inputs)


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """The optimizer in the form a CUDA graph can replay: device step counts, a device-tensor learning rate.

    Done after a resumed optimizer state is loaded (which brings back the saved options).
    """
    for group in optimizer.param_groups:
        if "capturable" in group:  # Adam, AdamW; fused SGD takes a tensor lr as it is
            group["capturable"] = True
        lr = group["lr"]
        if not (torch.is_tensor(lr) and lr.device == device):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
    for state in optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step) and step.device != device:
            state["step"] = step.to(device=device, dtype=torch.float32)
    # The warm-up and smaller batches step eagerly on purpose: no "capturable=True but not captured" warning.
    optimizer._warned_capturable_if_run_uncaptured = True
