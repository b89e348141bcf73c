"""Offline data for the bundled example: scikit-learn's digits and new tasks built on them.

Every task uses the same images and the same fixed stratified 80/20 split
(``train_test_split(..., test_size=0.2, random_state=0, stratify=y)``: 1437 training and
360 validation images); only the labels change. Each :class:`Task` also carries an
``old_val`` loader with the original 10-class labels, to measure forgetting.

The new tasks are labelled by a careless annotator: before a task relabels the training
images, :data:`TRAIN_LABEL_NOISE` (30 %) of them get a wrong digit, the same images and the same
wrong digits for every task and every loader seed (drawn once from a generator seeded with
:data:`NOISE_SEED`). The validation labels are clean. With clean labels every choice of loss,
freezing or schedule solved these tasks (validation accuracy 1.0 on ``is_seven``), so no what-if
showed a difference; with the noise the choices show in the results (see the notebooks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..core.config import RunConfig

__all__ = [
    "LOOPS_OF_DIGIT",
    "NOISE_SEED",
    "TRAIN_LABEL_NOISE",
    "SPLIT_RANDOM_STATE",
    "SPLIT_TEST_SIZE",
    "Task",
    "digits_arrays",
    "code",
    "noisy_train_digits",
    "digits_loaders",
    "task",
    "tasks",
]

#: Parameters of the fixed train/validation split.
SPLIT_TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 0

#: Closed loops in each written digit 0..9 (the ``"loops"`` task's class of each digit):
#: 0 loops {1, 2, 3, 5, 7}, 1 loop {0, 4, 6, 9}, 2 loops {8}.
LOOPS_OF_DIGIT: tuple[int, ...] = (1, 0, 0, 0, 1, 0, 1, 0, 2, 1)

#: Share of the new tasks' training images whose digit is replaced by a wrong one before relabelling.
TRAIN_LABEL_NOISE = 0.3

#: Seed of the generator that picks the mislabelled training images and their wrong digits.
NOISE_SEED = 0


#: The split, as scikit-learn makes it, shipped with the package (pixel values 0..16 as uint8, 130 KB):
#: loading it takes milliseconds, where importing scikit-learn took seconds in every new kernel.
SPLIT_PATH = Path(__file__).with_name("digits_split.pt")


def split_from_sklearn() -> dict[str, torch.Tensor]:
    """The fixed split made from scikit-learn's ``load_digits``: ``x_train``, ``y_train``,
    ``x_val``, ``y_val`` (pixel values 0..16 as uint8, labels int64); what :data:`SPLIT_PATH`
    holds (``torch.save(split_from_sklearn(), SPLIT_PATH)`` writes it again; a test checks the two agree)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.images.astype("uint8"), digits.target.astype("int64")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=SPLIT_TEST_SIZE, random_state=SPLIT_RANDOM_STATE, stratify=y
    )
    return {name: torch.from_numpy(a.copy()) for name, a in
            (("x_train", x_train), ("y_train", y_train), ("x_val", x_val), ("y_val", y_val))}


@functools.lru_cache(maxsize=1)
def _cached_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    split = torch.load(SPLIT_PATH, weights_only=True)
    out = []
    for xs, ys in ((split["x_train"], split["y_train"]), (split["x_val"], split["y_val"])):
        out.extend([(xs.to(torch.float32) / 16.0).unsqueeze(1).contiguous(), ys.to(torch.int64).contiguous()])
    return out[0], out[1], out[2], out[3]


@functools.lru_cache(maxsize=4)
def _noisy_train_digits(label_noise: float) -> torch.Tensor:
    # Each picked image gets one of the 9 other digits, uniformly: a true error rate. The draws do not
    # depend on the rate, so a lower rate mislabels a subset of the images a higher one does.
    y = _cached_arrays()[1]
    gen = torch.Generator().manual_seed(NOISE_SEED)
    picked = torch.rand(len(y), generator=gen) < label_noise
    shift = torch.randint(1, 10, (len(y),), generator=gen)
    return torch.where(picked, (y + shift) % 10, y)


def _check_label_noise(label_noise: float) -> float:
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be a share in [0, 1), got {label_noise!r}; 0 gives the clean labels")
    return float(label_noise)


def noisy_train_digits(label_noise: float = TRAIN_LABEL_NOISE) -> torch.Tensor:
    """The digit labels the new tasks' training targets are made from: the training split's labels with
    ``label_noise`` of them (default :data:`TRAIN_LABEL_NOISE`) replaced by a wrong digit, fixed by
    :data:`NOISE_SEED` (a copy; ``label_noise=0`` gives the clean labels)."""
    return _noisy_train_digits(_check_label_noise(label_noise)).clone()


def digits_arrays() -> dict[str, torch.Tensor]:
    """Return the fixed stratified split of scikit-learn's digits as tensors.

    The data ship with scikit-learn (no download). Loading and splitting happen once per
    process; later calls return copies of the cached tensors, so callers may modify them.

    Returns
    -------
    dict
        ``"x_train"`` (1437, 1, 8, 8) and ``"x_val"`` (360, 1, 8, 8): float32 pixel values
        in ``[0, 1]`` (the raw 0..16 values divided by 16). ``"y_train"`` (1437,) and
        ``"y_val"`` (360,): int64 digit labels 0..9.
    """
    x_train, y_train, x_val, y_val = _cached_arrays()
    return {
        "x_train": x_train.clone(),
        "y_train": y_train.clone(),
        "x_val": x_val.clone(),
        "y_val": y_val.clone(),
    }


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return seed


def _train_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    # A final batch of one sample would make BatchNorm fail in train mode, so such a
    # tail (and only such a tail) is dropped.
    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(x) % batch_size == 1,
    )


def _eval_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Return ``(train, val)`` loaders for the original 10-class digits task.

    Parameters
    ----------
    batch_size
        Samples per batch (both loaders).
    seed
        Seed of the training loader's own :class:`torch.Generator`: loaders built with the
        same seed give the same batch order, epoch after epoch, independent of the global
        RNG. (The generator advances with each epoch, so a loader's second epoch differs
        from its first.)

    Returns
    -------
    tuple of DataLoader
        Batches are ``(x, y)`` tuples: ``x`` float32 ``(B, 1, 8, 8)`` in ``[0, 1]``, ``y``
        int64 ``(B,)`` digit labels. The training loader shuffles; the validation loader
        does not. A final training batch of a single sample is dropped (BatchNorm cannot
        train on it).
    """
    batch_size = _check_batch_size(batch_size)
    seed = _check_seed(seed)
    x_train, y_train, x_val, y_val = _cached_arrays()
    train, val = _train_loader(x_train, y_train, batch_size, seed), _eval_loader(x_val, y_val, batch_size)
    return _tag(train, None, batch_size, seed), _tag(val, None, batch_size, seed)


def _tag(loader: DataLoader, name: str | None, batch_size: int, seed: int) -> DataLoader:
    # Lets a dashboard find the code that rebuilds this loader (see code()).
    loader.retrain_example = {"task": name, "batch_size": batch_size, "seed": seed}  # type: ignore[attr-defined]
    return loader


@dataclass(frozen=True)
class Task:
    """A new task on the digits images that calls for a different loss.

    Attributes
    ----------
    name
        Key accepted by :func:`task`.
    title
        Short human-readable title.
    description
        What the targets mean, their dtype, shape and scale.
    train, val
        Loaders of ``(x, target)`` batches for the new task (train shuffled, val not).
    old_val
        The validation split with the ORIGINAL 10-class labels (int64), to measure how much
        of the original task is forgotten.
    losses
        Suitable loss names from the project's loss registry, the textbook choice first (``config``
        holds the measured suggestion, which may differ: BCE, not focal, for ``"is_seven"``).
    head_out
        Number of outputs the model's head needs for this task.
    kind
        ``"binary"``, ``"regression"`` or ``"multiclass"``.
    config
        A :class:`~retrain_widgets.RunConfig` that fits the task (one of its losses, a new head of
        ``head_out`` outputs, a schedule, LR and freezing to start from), so that
        ``RetrainStudio(model, t.train, t.val, t.old_val, config=t.config)`` opens ready to start.
        A fresh copy each call of :func:`task`.
    """

    name: str
    title: str
    description: str
    train: DataLoader
    val: DataLoader
    old_val: DataLoader
    losses: tuple[str, ...]
    head_out: int
    kind: str
    config: RunConfig


def _is_seven(y: torch.Tensor) -> torch.Tensor:
    return (y == 7).to(torch.float32)


def _digit_value(y: torch.Tensor) -> torch.Tensor:
    return y.to(torch.float32)


def _loops(y: torch.Tensor) -> torch.Tensor:
    return torch.tensor(LOOPS_OF_DIGIT, dtype=torch.int64)[y]


_TASKS: dict[str, dict] = {
    "is_seven": {
        "title": "Is it a seven? (imbalanced binary)",
        "description": (
            "Binary detection of the digit 7; about 10 % of the images are positives. "
            "Targets: float32 0.0/1.0 of shape (N,). Use one output logit (squeeze it to (N,)); "
            "focal loss is the textbook answer to the imbalance; on these noisy labels plain BCE does "
            "better (see the quickstart), so the suggested config uses BCE, with a new head that starts "
            "at zero (a random one made most of the seed-to-seed spread in forgetting). Accuracy hides a missed "
            "class here: read the balanced accuracy, F1 or AUROC beside it (retrain_widgets.core.metrics)."
        ),
        "relabel": _is_seven,
        "losses": ("focal", "bce"),
        "head_out": 1,
        "kind": "binary",
        "config": {"loss": "bce", "head_out": 1, "head_init": "zeros", "frozen": ["features"], "lr": 3e-3,
                   "schedule": "cosine", "epochs": 4},
    },
    "digit_value": {
        "title": "Digit value (regression)",
        "description": (
            "Regression of the written digit's numeric value. Targets: float32 of shape (N,) "
            "equal to the digit itself, on the raw scale 0.0..9.0 (not normalised: a constant "
            "prediction of 4.5 has a mean squared error of about 8.25). Use one output "
            "(squeeze it to (N,)); Huber/smooth-L1 are less swayed by confusions of distant digits."
        ),
        "relabel": _digit_value,
        "losses": ("mse", "huber", "smooth_l1"),
        "head_out": 1,
        "kind": "regression",
        "config": {"loss": "mse", "head_out": 1, "lr": 1e-3, "schedule": "cosine", "epochs": 3},
    },
    "loops": {
        "title": "Closed loops (new 3 classes)",
        "description": (
            "A new 3-class split by the number of closed loops in the written digit: "
            "class 0 = no loop {1, 2, 3, 5, 7}, class 1 = one loop {0, 4, 6, 9}, "
            "class 2 = two loops {8}. Targets: int64 class indices of shape (N,). "
            "Classes are imbalanced (about 50 / 40 / 10 %)."
        ),
        "relabel": _loops,
        "losses": ("ce", "label_smoothing", "focal_multiclass"),
        "head_out": 3,
        "kind": "multiclass",
        "config": {"loss": "ce", "head_out": 3, "frozen": ["features"], "lr": 1e-2, "schedule": "cosine",
                   "epochs": 3},
    },
}


def tasks() -> list[str]:
    """Return the names of the available example tasks."""
    return list(_TASKS)


def task(name: str, batch_size: int = 64, seed: int = 0, label_noise: float = TRAIN_LABEL_NOISE) -> Task:
    """Build one example task on the digits images.

    Parameters
    ----------
    name
        One of :func:`tasks`: ``"is_seven"``, ``"digit_value"`` or ``"loops"``.
    batch_size
        Samples per batch (all three loaders).
    seed
        Seed of the training loader's own generator (same seed, same batch order).
    label_noise
        Share of the training images given a wrong digit before relabelling (see
        :func:`noisy_train_digits`); ``0`` gives the clean task, on which every choice scores 1.0.

    Returns
    -------
    Task
        Loaders on the same fixed split as :func:`digits_loaders`, relabelled for the task (the
        training targets from :func:`noisy_train_digits`, the validation targets from the clean
        labels), plus ``old_val`` with the original 10-class labels and a suggested ``config``.

    Raises
    ------
    ValueError
        For an unknown task name (the message lists the available ones) or a bad
        ``batch_size``/``seed``/``label_noise``.
    """
    spec = _TASKS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown example task {name!r}; available tasks: {', '.join(_TASKS)}")
    batch_size = _check_batch_size(batch_size)
    seed = _check_seed(seed)
    x_train, _, x_val, y_val = _cached_arrays()
    noise = _check_label_noise(label_noise)
    relabel = spec["relabel"]
    return Task(
        name=name,
        title=spec["title"],
        description=spec["description"],
        train=_tag(_train_loader(x_train, relabel(_noisy_train_digits(noise)), batch_size, seed), name, batch_size, seed),
        val=_tag(_eval_loader(x_val, relabel(y_val), batch_size), name, batch_size, seed),
        old_val=_tag(_eval_loader(x_val, y_val, batch_size), name, batch_size, seed),
        losses=spec["losses"],
        head_out=spec["head_out"],
        kind=spec["kind"],
        config=RunConfig(**spec["config"]),
    )


_MODEL_CODE = '''\
from retrain_widgets.examples import pretrained_digits_cnn


def load_pretrained_model():
    """The bundled DigitsCNN (features -> classifier) with its shipped weights, trained on the
    10 digit classes of scikit-learn's digits."""
    return pretrained_digits_cnn()
'''

_DATA_CODE = '''\
from retrain_widgets.examples import {function}


def make_loaders(batch_size_divisor=1):
    """{what}.

    Returns (train, val, old_val) DataLoaders; {old_val_note}.
    The training loader shuffles with its own torch.Generator seeded with {seed}, so every run
    sees the same batches. Under DDP the script asks for batch_size_divisor=world size: each
    process gets batches of {batch_size} // world size and the global batch stays {batch_size}.
    """
    if {batch_size} % batch_size_divisor:
        raise ValueError(f"the batch size {batch_size} does not split evenly over {{batch_size_divisor}} processes")
    {body}
'''


def code(task_name: str | None = None, batch_size: int = 64, seed: int = 0,
         label_noise: float = TRAIN_LABEL_NOISE) -> dict[str, str]:
    """Python source that rebuilds the bundled example, for an exported training script.

    Parameters
    ----------
    task_name
        One of :func:`tasks`, or ``None`` for the original 10-class task.
    batch_size, seed, label_noise
        As for :func:`task` / :func:`digits_loaders`.

    Returns
    -------
    dict
        ``"model_code"`` defines ``load_pretrained_model()`` (the pretrained :class:`DigitsCNN`);
        ``"data_code"`` defines ``make_loaders(batch_size_divisor=1) -> (train, val, old_val)``,
        which builds the same loaders as ``task(task_name, batch_size, seed)`` (``old_val`` is
        ``None`` for the original task), with ``batch_size // batch_size_divisor`` per batch.
        Both import from ``retrain_widgets.examples``. Pass them to
        :func:`retrain_widgets.core.export.export_script`.
    """
    if task_name is not None and task_name not in _TASKS:
        raise ValueError(f"unknown example task {task_name!r}; available tasks: {', '.join(_TASKS)}")
    batch_size = _check_batch_size(batch_size)
    seed = _check_seed(seed)
    if task_name is None:
        body = (f"train, val = digits_loaders(batch_size={batch_size} // batch_size_divisor, seed={seed})\n"
                f"    return train, val, None")
        data = _DATA_CODE.format(function="digits_loaders", what="The original 10-class digits task",
                                 old_val_note="old_val is None (val already measures the original task)",
                                 seed=seed, batch_size=batch_size, body=body)
    else:
        noise = _check_label_noise(label_noise)
        extra = "" if noise == TRAIN_LABEL_NOISE else f", label_noise={noise!r}"
        body = (f"t = task(\"{task_name}\", batch_size={batch_size} // batch_size_divisor, seed={seed}{extra})\n"
                f"    return t.train, t.val, t.old_val")
        data = _DATA_CODE.format(function="task", what=f"The bundled {task_name!r} task: {_TASKS[task_name]['title']}",
                                 old_val_note="old_val holds the original digit labels",
                                 seed=seed, batch_size=batch_size, body=body)
    return {"model_code": _MODEL_CODE, "data_code": data}
