"""``RunConfig``: one training run, declared (SPEC §2–4), and ``run(config, store)`` that executes it.

A RunConfig names the method, data, model, optimizer, budget and seed. It round-trips through
a dict and TOML, validates every key (an unknown key or a bad value raises
:class:`~prealign.errors.ConfigError` naming the key and the valid ones), and hashes to a
stable :meth:`RunConfig.key` so a sweep can find, resume or skip a run it has seen before.

Same initial network (noise paper B.6): with ``same_init = true`` (the default) the network —
``W`` and ``B`` of every layer — depends only on ``seed`` and the architecture, so ``bp``,
``fa``, ``ifa`` and ``rnp`` of one seed all start from the identical draw; the method's own
preparation (alignment, noise) then uses a separate generator. With ``same_init = false``
every method draws its own independent network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from ..errors import ConfigError, PrealignError
from ..feedback import get_rule
from ..methods import get_method, parse_method_name
from ..seeding import global_stream

OPTIMIZERS = ("adam", "adamw", "sgd")
NOISE_DISTRIBUTIONS = ("gaussian", "uniform")
NOISE_SETTINGS = ("noise_batch_size", "noise_lr", "noise_distribution", "noise_std")  # apply only with noise_samples > 0
# fields that do not change the result, so they are left out of key()
_NOT_IN_KEY = ("device", "name", "tensorboard")
# Fields added after run keys were first stored enter the key only when set (not None), so every run
# stored before they existed keeps its key (a stored run is never orphaned by an upgrade).
_KEY_WHEN_SET = ("wm_lr", "wm_noise_std", "wm_decay", "wm_steps", "wm_batch", "wm_noise", "wm_every")


@dataclass
class RunConfig:
    """One training run. Angles in degrees; accuracies in the result are fractions."""

    method: str = "fa"  # bp, fa, ifa, rnp, dfa, usf, brsf, frsf, kp; "ifa@30" sets angle=30; "bp+noise": warm-up
    angle: float | None = None  # IFA alignment angle (degrees); default: the method's (0 for ifa)
    noise_samples: int | None = None  # noise pretraining samples; default: the method's (5e5 for rnp and X+noise, else 0)
    dataset: str = "mnist5k"
    train_subset: int | None = None  # use only the first N training samples
    model: str = "mlp"  # a registered name (prealign.models.MODELS) or an import path "package.module:function"
    hidden: tuple[int, ...] = (100,)  # mlp hidden widths: (100,) on MNIST is 784-100-10
    activation: str = "relu"
    alpha_w: float = 2.0
    alpha_b: float = 2.0
    same_init: bool = True
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.0
    kp_decay: float | None = None  # kp only: per-step decay of (B - W); default: the rule's (see prealign.feedback)
    wm_lr: float | None = None  # wm only (weight mirror, prealign.feedback.wm): mirror learning rate; default decay/std^2
    wm_noise_std: float | None = None  # wm only: std of the mirror noise; default prealign.feedback.wm.WM_NOISE_STD
    wm_decay: float | None = None  # wm only: decay of B per mirror step; default WM_DECAY
    wm_steps: int | None = None  # wm only: mirror steps per optimizer step; default WM_STEPS
    wm_batch: int | None = None  # wm only: noise samples per mirror step; default: the noise kind's (WM_DEFAULTS)
    wm_noise: str | None = None  # wm only: mirror noise, gaussian or orthogonal; default WM_NOISE
    wm_every: int | None = None  # wm only: optimizer steps between mirrorings; default: the noise kind's
    val_fraction: float = 0.1  # training samples held out for model selection; 0 = select on test (papers)
    patience: int | None = None
    seed: int = 0
    noise_batch_size: int = 64
    noise_lr: float = 1e-4
    noise_distribution: str = "gaussian"
    noise_std: float = 1.0
    grad_alignment: bool = True
    device: str = "auto"
    name: str = ""  # free label, not part of the key
    tensorboard: str = ""  # folder for TensorBoard logs of every epoch (prealign.run.loggers); not part of the key

    def __post_init__(self):
        self.validate()

    # -- validation / normalisation -------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check types and ranges, and normalise the method: ``ifa@30`` → ``ifa`` + ``angle=30``;
        ``bp+noise`` → ``bp`` + ``noise_samples`` (default 5×10⁵); angle and noise samples resolved to
        the method's defaults (``None``/``0`` where unused). ``noise_samples > 0`` on any method is a
        noise warm-up before data (``fa`` with noise is ``rnp``); the other ``noise_*`` keys set to a
        non-default value while ``noise_samples`` is 0 raise ConfigError (they could not apply)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        base, at, warm = parse_method_name(self.method)
        method = get_method(self.method)  # UnknownNameError lists the valid methods; rnp+noise: ConfigError
        if at is not None and self.angle is not None and at != self.angle:
            raise ConfigError(f"method {self.method!r} and angle={self.angle} disagree; give the angle once")
        if method.angle is None:
            if self.angle is not None:
                raise ConfigError(f"key 'angle' applies only to methods with an alignment angle (ifa); method is {base!r}")
        else:
            self.angle = float(self.angle if self.angle is not None else method.angle)
            if not 0 <= self.angle <= 180:
                raise ConfigError(f"key 'angle' must be in [0, 180] degrees, got {self.angle}")
        if warm and self.noise_samples == 0:
            raise ConfigError(f"method {self.method!r} asks for noise warm-up but noise_samples = 0; "
                              f"give noise_samples > 0 or method {base!r}")
        self.noise_samples = int(self.noise_samples if self.noise_samples is not None else method.noise_samples)
        if self.noise_samples < 0:
            raise ConfigError(f"key 'noise_samples' must be >= 0, got {self.noise_samples}")
        # noise on any method is a warm-up (bp + noise_samples = bp+noise); fa with noise is rnp
        self.method = get_method(base).with_options(noise_samples=self.noise_samples).name
        if not self.noise_samples:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for key in NOISE_SETTINGS:
                if getattr(self, key) != defaults[key]:
                    warmup = "" if method.noise_samples else f" (or method '{self.method}+noise')"
                    raise ConfigError(f"key {key!r} = {getattr(self, key)!r} applies only with noise pretraining, "
                                      f"but noise_samples is 0 (method {self.method!r}); set noise_samples > 0"
                                      f"{warmup} or drop {key}")
        if self.kp_decay is not None and not get_rule(method.rule).learns_feedback:
            raise ConfigError(f"key 'kp_decay' applies only to method kp (its feedback learns W's updates); method is {base!r}")
        for key, value in self.wm_settings().items():
            if not get_rule(method.rule).mirrors:
                raise ConfigError(f"key {key!r} applies only to method wm (weight mirror); method is {base!r}")
            from ..feedback.wm import check_wm_setting
            check_wm_setting(f"key {key!r}", key, value)
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", self.momentum >= 0, ">= 0"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1) (0: select on the test set, as the papers)"),
            ("kp_decay", self.kp_decay is None or 0 <= self.kp_decay < 1, "in [0, 1) per step"),
            ("noise_batch_size", self.noise_batch_size >= 1, ">= 1"),
            ("noise_lr", self.noise_lr > 0, "> 0"), ("noise_std", self.noise_std >= 0, ">= 0"),
            ("patience", self.patience is None or self.patience >= 1, ">= 1 (or absent for no early stop)"),
            ("train_subset", self.train_subset is None or self.train_subset >= 1, ">= 1"),
            ("alpha_w", self.alpha_w > 0, "> 0"), ("alpha_b", self.alpha_b > 0, "> 0"),
            ("seed", 0 <= self.seed <= 2**32 - 1, "in [0, 4294967295] (a 32-bit seed)"),
            ("hidden", len(self.hidden) >= 1 and min(self.hidden) >= 1, "a list of positive widths, e.g. [100] or [100, 100]"),
        ]
        for key, ok, need in checks:
            if not ok:
                raise ConfigError(f"key {key!r} must be {need}, got {getattr(self, key)!r}")
        for key, value, valid in (("optimizer", self.optimizer, OPTIMIZERS),
                                  ("noise_distribution", self.noise_distribution, NOISE_DISTRIBUTIONS)):
            if value not in valid:
                raise ConfigError(f"key {key!r} has unknown value {value!r}; valid: {', '.join(valid)}")
        from ..models import ACTIVATIONS, model_options
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"key 'activation' has unknown value {self.activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
        try:  # a registered name or an importable "package.module:function", taking the options set
            model_options(self.model, hidden=self.hidden, activation=self.activation)
        except ConfigError as err:
            raise ConfigError(f"key 'model': {err}") from None
        return self

    def wm_settings(self) -> dict[str, float | int]:
        """The weight-mirror keys that are set (``{"wm_decay": 0.01, ...}``; empty for the defaults)."""
        return {k: getattr(self, k) for k in ("wm_lr", "wm_noise_std", "wm_decay", "wm_steps", "wm_batch", "wm_noise",
                                              "wm_every")
                if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        """Method label as shown in tables: ``ifa@30`` for IFA at 30°, ``bp+noise`` for noise
        warm-up on a method without noise of its own, else the method name."""
        return self.method_object().label

    def method_object(self):
        return get_method(self.method).with_options(angle=self.angle, noise_samples=self.noise_samples)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        return cls(**d)

    @classmethod
    def from_toml(cls, path_or_text: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
        """Read a TOML file (or TOML text), apply ``overrides`` (``["key=value", ...]`` or a dict)."""
        if isinstance(path_or_text, Path) or (isinstance(path_or_text, str) and "\n" not in path_or_text and "=" not in path_or_text):
            path = Path(path_or_text)
            if not path.is_file():
                raise PrealignError(f"config file {str(path)!r} not found; give the path of a TOML file (see docs/usage.md)")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"cannot read config file {str(path)!r} ({err}); give a readable UTF-8 TOML file") from None
        else:
            path, text = None, str(path_or_text)
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config {str(path) if path else 'text'} is not valid TOML: {err}") from None
        if isinstance(d.get("run"), dict):  # allow a [run] table
            d = {**{k: v for k, v in d.items() if k != "run"}, **d["run"]}
        if isinstance(overrides, dict):
            d.update(overrides)
        else:
            d.update(parse_overrides(overrides or []))
        return cls.from_dict(d)

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def key(self) -> str:
        """Stable 16-hex-digit hash of everything that determines the result (not device/name),
        the data included: :func:`prealign.data.fingerprint` of ``dataset``/``train_subset``, so a
        result computed on damaged or other data is never served for this data. Computing a key
        therefore loads the data set once per process (cached; mnist5k ≈ 0.05 s, Fashion-MNIST ≈ 1 s).
        A data set that is unknown or not on this machine gets the fingerprint ``"unavailable"``
        (no run can finish without its data); a corrupt or mismatching file raises PrealignError."""
        from ..data import DataNotFoundError, fingerprint
        from ..errors import UnknownNameError

        d = self.key_fields()
        try:
            d["data_fingerprint"] = fingerprint(self.dataset, self.train_subset)
        except (DataNotFoundError, UnknownNameError):
            d["data_fingerprint"] = "unavailable"
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def key_fields(self) -> dict:
        """The fields :meth:`key` hashes (before the data fingerprint is added). A wm run's noise kind
        always enters (the default's, :data:`prealign.feedback.wm.WM_NOISE`, when unset): wm runs
        stored before orthogonal noise became the default used Gaussian noise under a key without it."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_KEY and not (k in _KEY_WHEN_SET and v is None)}
        if self.wm_noise is None and get_rule(self.method_object().rule).mirrors:
            from ..feedback.wm import WM_NOISE
            d["wm_noise"] = WM_NOISE
        return d

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _coerce(key: str, value, typ: str):
    """Coerce ``value`` to the field's declared type (given as a string annotation)."""
    optional = "None" in typ
    if value is None:
        if optional:
            return None
        raise ConfigError(f"key {key!r} needs a value ({typ.replace(' | None', '')})")
    base = typ.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in re.split(r",|(?<=\d)-", value) if v.strip()]  # 100,100 or 100-100; -5 stays -5
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"key {key!r} must be {base.replace('tuple[int, ...]', 'a list of integers')}, got {value!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "hidden=100,100"]`` → ``{"lr": "1e-3", "hidden": "100,100"}`` (typed by RunConfig)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        value = value.strip()
        out[key.strip()] = None if value.lower() in ("none", "null", "") else value
    return out


# -- running a config -----------------------------------------------------------------------
def load_data(config: RunConfig):
    """The config's data set, restricted to ``train_subset`` if set. The whole set comes from
    :func:`prealign.data.identity.loaded`, the copy the run key's fingerprint was computed on
    (cached per process, reloaded when its files change), so a run never loads its data twice."""
    from ..data.identity import loaded

    ds = loaded(config.dataset)
    return ds.subset(config.train_subset) if config.train_subset else ds


def _seed_for(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "big")


def build(config: RunConfig, data) -> torch.nn.Module:
    """The config's initial network, converted to the method's rule but not yet prepared."""
    from ..models import build_model

    model_seed = config.seed if config.same_init else _seed_for(config.seed, config.label, "model")
    gen = torch.Generator().manual_seed(model_seed)
    with global_stream(model_seed):  # what a factory draws from the global RNG is seeded too; the caller's RNG is kept
        return build_model(config.model, data.x_train.shape[1:], int(data.num_classes), hidden=config.hidden,
                           rule=config.method_object().rule, activation=config.activation, generator=gen,
                           alpha_w=config.alpha_w, alpha_b=config.alpha_b)


def prepare(config: RunConfig, data, device: str | torch.device = "cpu", *, noise: bool = True,
            progress: bool | None = None) -> tuple[torch.nn.Module, float, torch.Generator]:
    """The network :func:`run` trains for ``config``: :func:`build`, moved to ``device``, then the
    method's one-time preparation (IFA alignment, RNP noise pretraining) from the config's own
    preparation seed. Returns ``(model, noise_seconds, generator)``. ``noise=False`` stops before
    the noise pretraining; ``generator`` is then where that pretraining would draw its seed (for
    :func:`prealign.run.batched.pretrain_noise_batched`, which pretrains several models at once)."""
    model = build(config, data).to(device)
    method = config.method_object()
    if not noise:
        method = method.with_options(noise_samples=0)
    gen = torch.Generator().manual_seed(_seed_for(config.seed, config.label, "prepare"))
    start = time.perf_counter()
    method.prepare(model, generator=gen, noise_batch_size=config.noise_batch_size, noise_lr=config.noise_lr,
                   noise_distribution=config.noise_distribution, noise_std=config.noise_std, progress=progress)
    return model, (time.perf_counter() - start if method.noise_samples else 0.0), gen


def run(config: RunConfig, store=None, *, progress: bool | None = None, callbacks=(), data=None):
    """Execute one config: data → network → method preparation (alignment / noise) → :func:`train`.

    With a :class:`~prealign.run.store.Store`: a finished (or diverged) run with the same key is
    returned from the store without training; an interrupted one resumes from its last
    checkpoint (noise pretraining included, which is checkpointed as epoch 0); every epoch is
    logged. ``config.val_fraction`` of the training set is held out for model selection (see
    :func:`prealign.train`). The data set, the device and the validation split are checked before
    the run is registered, so a bad one raises without storing a failed run. Returns a
    :class:`~prealign.run.trainer.TrainResult` (``result.run_id`` set with a store).
    """
    from ..data.base import validation_size
    from ..device import resolve_device
    from .loggers import replay, run_logger
    from .trainer import TrainResult, train

    run_id, ckpt = None, None
    if store is not None:
        found = store.find(config.key())
        if found is not None and found["status"] in ("finished", "diverged"):
            return replay(config, store.result(found["id"]))  # its loggers get the stored records
    # everything checkable before the run is registered: a bad device or data set is the
    # caller's error, not a failed run stored under the config's key
    data = data if data is not None else load_data(config)
    device = resolve_device(config.device)
    try:
        torch.empty(1, device=device)  # e.g. cuda:7 on a one-GPU machine
    except (RuntimeError, AssertionError) as err:
        raise PrealignError(f"device {config.device!r} cannot be used here ({str(err).splitlines()[0]}); "
                            f"use --device auto, cpu or an existing cuda:N") from None
    validation_size(len(data.y_train), config.val_fraction)
    logs = run_logger(config)  # config.tensorboard: a folder that cannot be written fails here, nothing stored
    if store is not None:
        run_id = store.start(config)
        ckpt = store.checkpointer(run_id)
    try:
        state = ckpt.load() if ckpt is not None else None
        if state is None:
            model, noise_seconds, _ = prepare(config, data, device, progress=progress)
        else:  # resumed: train() restores the weights (and feedback) from the checkpoint
            model, noise_seconds = build(config, data).to(device), state.get("noise_seconds", 0.0)
        cbs = list(callbacks)
        if ckpt is not None:
            ckpt.extra = {"noise_seconds": noise_seconds}
            cbs.append(store.epoch_logger(run_id))
        cbs += [logs] if logs else []  # after every measurement
        result: TrainResult = train(
            model, data, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, optimizer=config.optimizer,
            weight_decay=config.weight_decay, momentum=config.momentum, patience=config.patience, seed=config.seed,
            device=device, callbacks=cbs, progress=progress, checkpoint=ckpt, grad_alignment=config.grad_alignment,
            val_fraction=config.val_fraction, description=f"{config.label} seed {config.seed}", kp_decay=config.kp_decay,
            wm={k.removeprefix("wm_"): v for k, v in config.wm_settings().items()} or None)
        result.noise_seconds = noise_seconds
        result.config = config.to_dict()
        result.run_id = run_id
        if logs:
            logs.close(result.curves)
        if store is not None:
            from ..device import describe_device

            store.finish(run_id, result, device=describe_device(device))
        return result
    except BaseException as err:
        if logs:
            logs.close()
        if store is not None and run_id is not None:
            store.fail(run_id, f"{type(err).__name__}: {err}")
        raise


__all__ = ["RunConfig", "build", "load_data", "parse_overrides", "prepare", "run"]
