"""The DroPE paper's softmax temperature past the context, carried into a Hugging Face export: which c an
export gets (``choose``: the one launch/evaluate.py fitted, or one set by hand) and how (``fold`` into the query
weights for one length, or applied at run time by ``modeling_drope.py``)."""

from __future__ import annotations

import dataclasses
import json

from drope_jax.hf import configs
from drope_jax.model.positions import temperature_beta
from drope_jax.run_config import load_run_config


@dataclasses.dataclass(frozen=True)
class ExportTemperature:
    """Every attention logit times beta = 1 + c ln(s) at s x ``train_length`` tokens (s > 1). With
    ``fold_length`` the beta of that length is folded into the queries' weights: exact at that length, and a
    stock architecture keeps it; without, our modelling file computes beta from each input's length."""

    c: float
    train_length: int
    fold_length: int | None = None

    @property
    def folded_beta(self) -> float:
        return temperature_beta(self.c, self.fold_length / self.train_length)

    def config_json(self) -> dict:
        """The keys of config.json that carry it: what was folded, or what the modelling file applies."""
        if self.fold_length:
            return {"drope_temperature_folded": {"c": self.c, "train_length": self.train_length,
                                                 "length": self.fold_length, "beta": self.folded_beta}}
        return {"temperature_c": self.c, "temperature_train_length": self.train_length}

    def describe(self) -> str:
        if self.fold_length:
            return (f"temperature c={self.c:.3f} folded into the queries for {self.fold_length} tokens "
                    f"(beta {self.folded_beta:.4f}): exact at that length only")
        return (f"temperature c={self.c:.3f}: beta = 1 + c ln(length / {self.train_length}) from each input's "
                "length, applied by the modelling file (--temperature_length=N folds it into a stock model instead)")


def fold(params: dict, beta: float, *, into_qk_norm: bool) -> dict:
    """``params`` whose queries come out ``beta`` times larger, so every attention logit is: the q projection
    (and its bias) scaled, or with QK-norm, which acts after the projection, the q norm's weight."""
    attn = dict(params["blocks"]["attn"])
    if into_qk_norm:
        attn["q_norm"] = {"weight": attn["q_norm"]["weight"] * beta}
    else:
        attn.update({k: attn[k] * beta for k in ("q_DNH", "q_bias_NH") if k in attn})
    return {**params, "blocks": {**params["blocks"], "attn": attn}}


def choose(workdir, step: int, phase: str, setting, fold_length, log) -> ExportTemperature | None:
    """The temperature an export carries: ``setting`` "off", "auto" or c (see ``export_checkpoint``)."""
    if setting == "off" or (setting == "auto" and phase != "nope"):
        if fold_length:
            raise configs.HFFormatError(f"--temperature_length={fold_length} folds a temperature, but "
                                        f"--temperature={setting} gives none for this {phase}-phase checkpoint")
        return None
    if setting == "auto":
        fitted = evaluated(workdir, step)
        if fitted is None:
            log(f"no temperature: {workdir}/eval/results.json holds no drope temperature for step {step} (run "
                "launch/evaluate.py first, or pass --temperature=C); the export has none")
            return None
        c, train_length = fitted
        if c == 0:
            log(f"no temperature: the c that launch/evaluate.py fitted for step {step} is 0")
    else:
        c = float(setting)
        if c < 0:
            raise configs.HFFormatError(f"--temperature={setting}: c must be >= 0 (0 or 'off': no temperature)")
        if not (workdir / "config.json").is_file():
            raise configs.HFFormatError(f"--temperature={setting} needs the run's training context, from "
                                        f"{workdir}/config.json, which does not exist")
        train_length = int(load_run_config(workdir).data.seq_len)
    return ExportTemperature(c, train_length, fold_length) if c > 0 else None


def evaluated(workdir, step: int) -> tuple[float, int] | None:
    """(c, training context) of the ``drope`` method in ``workdir/eval/results.json``, if it evaluated ``step``."""
    path = workdir / "eval" / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    fitted = results.get("temperature", {}).get("drope")
    if fitted is None or results["run"].get("step") != step or results["run"].get("init_from"):
        return None
    return float(fitted["c"]), int(results["run"]["context"])
