"""The exported script's fixed text: the markers around the user's code, the text that does not
depend on the config (processes, data, the loop, the stubs) and the helpers that join code into
paragraphs and sections. :mod:`~retrain_widgets.core.export_sections` fills it in."""

from __future__ import annotations

import re
import textwrap

#: Markers around the model and data code in an exported script.
MODEL_CODE_BEGIN = "# ===== model code: load_pretrained_model() ====="
MODEL_CODE_END = "# ===== end of model code ====="
DATA_CODE_BEGIN = "# ===== data code: make_loaders() ====="
DATA_CODE_END = "# ===== end of data code ====="

_RULE = "# " + "-" * 98


def _block(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _ends_with_def(text: str) -> bool:
    """Whether the last top-level statement of ``text`` is a function or class definition."""
    for line in reversed(text.splitlines()):
        if line and not line[0].isspace() and not line.startswith((")", "]", "}", "#")):
            return line.startswith(("def ", "class ", "@"))
    return False


def _join(parts: list[str] | tuple[str, ...]) -> str:
    """Paragraphs of code: two blank lines around a function, one between statements."""
    out = ""
    for part in (p.strip("\n") for p in parts):
        if not part.strip():
            continue
        if out:
            around_def = part.startswith(("def ", "@", "class ")) or _ends_with_def(out)
            out += "\n\n\n" if around_def else "\n\n"
        out += part
    return out


def _section(title: str, *parts: str) -> str:
    return f"{_RULE}\n# {title}\n{_join(parts)}"


def _indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


# ============================================================================== the script's fixed text
_DOCSTRING = '''"""@HEAD_LINE@

A standalone PyTorch training script that reproduces the retrain_widgets run of this RunConfig:

@CONFIG_JSON@

It is made of the functions the notebook's run calls (the recipe sections, copied from
retrain_widgets/core/recipe/), then a short main part that reads top to bottom. Run it with

    python train.py                                        # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py      # DistributedDataParallel, 2 processes
"""'''

_PROCESSES = _block('''
        # torchrun starts one process per GPU (or CPU slot) and sets WORLD_SIZE, RANK and LOCAL_RANK; a plain
        # `python` run has none of them and does not touch torch.distributed
        WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
        RANK = int(os.environ.get("RANK", "0"))
        DDP = WORLD_SIZE > 1


        def log(*args):
            if RANK == 0:  # every rank computes the same numbers: print them once
                print(*args, flush=True)


        if DEVICE == "auto":
            mps = torch.backends.mps.is_available()
            DEVICE = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
        device = torch.device(DEVICE)
        if DDP:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
                torch.cuda.set_device(device)
            # NCCL between GPUs, gloo between CPU processes
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ''')

_DATA = _block('''
        # Under DDP each process gets 1/WORLD_SIZE of every batch: the global batch, and so the learning
        # rate that suits it, stays what it is in one process.
        train, val, old_val = make_loaders(batch_size_divisor=WORLD_SIZE)


        def shard(loader):
            """This rank's part of a validation loader: every WORLD_SIZE-th sample from RANK on, so the
            ranks split the set exactly (no sample twice, none left out)."""
            if loader is None:
                return None
            part = Subset(loader.dataset, range(RANK, len(loader.dataset), WORLD_SIZE))
            return DataLoader(part, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                              num_workers=loader.num_workers)


        if DDP and not isinstance(train, DataLoader):
            raise TypeError("under DDP make_loaders() must return a DataLoader for train: its sampler is replaced")
        if DDP:
            # Each rank trains on its own shard of every epoch: DistributedSampler shuffles with the same
            # seed on every rank and deals the samples out. A DataLoader's sampler cannot be swapped, hence
            # a new loader over the same dataset.
            sampler = DistributedSampler(train.dataset, shuffle=True, seed=SEED)
            # (drop_last: a last batch of one sample would make BatchNorm fail in train mode)
            train = DataLoader(train.dataset, batch_size=train.batch_size, sampler=sampler,
                               collate_fn=train.collate_fn, num_workers=train.num_workers,
                               pin_memory=train.pin_memory,
                               drop_last=train.drop_last or len(sampler) % train.batch_size == 1)
            val, old_val = shard(val), shard(old_val)
    ''')

_NEW_HEAD = _block('''
    def set_head(module):
        parent, _, child = head_name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


    # The new head: a fresh nn.Linear with HEAD_OUT outputs on the same layer. The original head is kept
    # for @KEEPS@.
    old_head = model.get_submodule(head_name)
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"the head {head_name!r} is a {type(old_head).__name__}, not an nn.Linear: set HEAD")
    original_head = None
    if old_head.out_features != HEAD_OUT:
        original_head = copy.deepcopy(old_head).eval().requires_grad_(False)
        new_head = nn.Linear(old_head.in_features, HEAD_OUT, bias=old_head.bias is not None,
                             device=old_head.weight.device, dtype=old_head.weight.dtype)
        new_head.train(old_head.training)@INIT@
        set_head(new_head)
''')

_DDP_NOTE_GRADUAL = _block('''
    # DDP averages, during backward, the gradients of the parameters that require grad NOW. Gradual
    # unfreezing turns more on later, so the model is wrapped while every parameter that will ever train
    # is trainable; find_unused_parameters lets DDP skip the ones a stage keeps frozen (their gradients
    # stay None).
''')
_DDP_NOTE = _block('''
    # DDP averages the gradients across ranks during backward. It is built after freezing: it syncs only
    # the parameters that require grad when it is built.
''')
_DDP_WRAP = _block('''
    train_model = model  # what the training loop calls; validation uses the plain model
    if DDP:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids@UNUSED@)
''')

_RUN = _block('''
    def run(net, batch):
        """(logits, targets) of a batch: (inputs, targets) tuples, or dicts with the targets under
        "labels" and the rest passed as keyword arguments (Hugging Face style)."""
        if isinstance(batch, dict):
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch.pop("labels")
            out = net(**batch)
        else:
            inputs, targets = (t.to(device) for t in batch)
            out = net(inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return getattr(out, "logits", out), targets
''')

_CHECK = _block('''
    # A head of the wrong size or targets of the wrong dtype or shape fail here, in seconds, not after an
    # epoch. It also draws one shuffle from the training loader, as the notebook's run does before it
    # starts, so both see the same batches.
    model.eval()
    with torch.no_grad():
        loss_fn(*run(model, next(iter(train))))

    # The run's own randomness starts here, the same on every rerun: dropout, and the order of the
    # training batches (the loader's generator, when it has one; under DDP the sampler's seed).
    seed_run(SEED, train)
''')

_STEP_END = _block('''
    loss_sum += loss.detach()
    n_steps += 1
    if step >= total_steps:
        break
''')

_NEXT_STAGE = _block('''
    next_stage = min(epoch // UNFREEZE_EVERY, len(groups) - 1)
    if next_stage != stage:  # the next group down starts training
        stage = next_stage
        apply_stage(model, groups, stage, FROZEN, @FREEZE@, unfreeze)
        log(f"stage {stage}: unfroze {groups[len(groups) - 1 - stage][0]}")
''')

_PLATEAU = _block('''
    # reduce_on_plateau: stepped with the validation loss (no validation set: the last step's loss)
    if val is not None:
        scheduler.step(results["val_loss"])
    else:
        last_loss = loss.detach().clone()
        if DDP:
            dist.all_reduce(last_loss)
            last_loss /= WORLD_SIZE
        scheduler.step(last_loss.item())
''')

_LOOP = '''log(f"{total_steps} optimizer steps ({EPOCHS} epochs of {steps_per_epoch}), "
    f"{WORLD_SIZE} process(es) on {device}; val_metric: @METRIC_NAME@")
step = 0
for epoch in range(EPOCHS):
    if step >= total_steps:
        break
@STAGE@    if DDP:
        train.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
    model.train()  # dropout on; trainable BatchNorm on batch statistics (locked ones stay in eval)
    loss_sum = torch.zeros((), device=device)
    n_steps = 0
    for batch in train:
@STEP@
    train_loss = loss_sum / n_steps
    if DDP:
        dist.all_reduce(train_loss)
        train_loss /= WORLD_SIZE
    results = {"train_loss": train_loss.item()}
    if not math.isfinite(results["train_loss"]):
        raise FloatingPointError(f"training loss {results['train_loss']} in epoch {epoch + 1}: lower LR, "
                                 f"set GRAD_CLIP, or check the data and the loss")
    if DDP:  # BatchNorm's running statistics differ per rank (each saw its own batches): use rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    if val is not None:
        results["val_loss"], results["val_metric"] = evaluate(val)
    if old_val is not None:
        results["old_loss"], results["old_metric"] = evaluate(old_val, old=True)
@PLATEAU@    numbers = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
    log(f"epoch {epoch + 1}/{EPOCHS}, step {step}: {numbers}")

# the last validation, on one line that is easy to parse
final = {k: results[k] for k in ("val_loss", "val_metric", "old_metric") if k in results}
log("final: " + " ".join(f"{k}={v:.8g}" for k, v in final.items()))
if DDP:  # the DDP wrapper holds the process group: free it and let every rank get here before the
    # group goes (left to the interpreter's exit, gloo's threads aborted a rank now and then)
    del train_model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()'''


# ============================================================================== the given code
_STUB_MODEL = _block('''
    def load_pretrained_model():
        """Return the pretrained model (a torch.nn.Module) with its weights loaded."""
        raise NotImplementedError(
            "load_pretrained_model() is a stub: write code here that builds the model and loads its "
            "pretrained weights, for example\\n"
            "    model = MyNet()\\n"
            "    model.load_state_dict(torch.load('pretrained.pt', map_location='cpu', weights_only=True))\\n"
            "    return model\\n"
            "or export the script with model_code=... (a source that defines load_pretrained_model())"
        )
''')

_STUB_DATA = _block('''
    def make_loaders(batch_size_divisor=1):
        """Return (train, val, old_val) DataLoaders; val and old_val may be None.

        Batches are (inputs, targets) tuples or dicts with the targets under "labels". old_val holds
        the ORIGINAL task's data, to measure what the model forgets. Under DDP the script passes
        batch_size_divisor=world size: build the loaders with batch_size // batch_size_divisor.
        """
        raise NotImplementedError(
            "make_loaders() is a stub: write code here that returns (train, val, old_val) DataLoaders "
            "(val and old_val may be None), with batch_size // batch_size_divisor samples per batch, e.g.\\n"
            "    train = DataLoader(train_set, batch_size=64 // batch_size_divisor, shuffle=True,\\n"
            "                       generator=torch.Generator().manual_seed(0))\\n"
            "    return train, DataLoader(val_set, batch_size=64 // batch_size_divisor), None\\n"
            "or export the script with data_code=... (a source that defines make_loaders())"
        )
''')

_FUTURE = re.compile(r"^from __future__ import [^\n]*\n?", re.MULTILINE)


def _user_block(code: str | None, stub: str, begin: str, end: str, futures: set[str]) -> str:
    if code is None:
        body = stub
    else:
        for m in _FUTURE.finditer(code):
            futures.add(m.group(0).strip())
        body = _FUTURE.sub("", textwrap.dedent(code)).strip("\n")
    return f"{begin}\n{body}\n{end}"
