"""Configuration: YAML files validated in one place, overridable from the CLI.

`load_config(path, overrides)` is the only way stages obtain settings. Unknown keys are
errors (a typo must not silently fall back to a default). Defaults work without any file.
Overrides use dotted keys and YAML values: `--set prepare.workers=2 --set prepare.ct_window=[-200,300]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSection(Section):
    name: Literal["flare", "brats"] = "flare"
    # BraTS output label convention: "2023" (1,2,3) or "legacy" (1,2,4)
    label_convention: Literal["2023", "legacy"] = "2023"


class PrepareSection(Section):
    layout: Literal["auto", "flare", "brats", "nnunet", "flat"] = "auto"
    coarse_size: tuple[int, int, int] | None = (160, 160, 160)  # (z, y, x); None → use coarse_spacing
    coarse_spacing: tuple[float, float, float] | None = None  # mm, (z, y, x)
    fine_size: tuple[int, int, int] = (96, 192, 192)
    fine_margin_mm: float = Field(20.0, ge=0)
    ct_window: tuple[float, float] = (-325.0, 325.0)
    label_resampling: Literal["nearest", "linear"] = "nearest"
    folds: int = Field(5, ge=2)
    seed: int = 0
    workers: int = Field(2, ge=1)
    geometry_tolerance: float = Field(1e-3, gt=0)

    @field_validator("ct_window")
    @classmethod
    def _window_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError("ct_window must be (low, high) with low < high")
        return v


class SegpipeConfig(Section):
    task: TaskSection = TaskSection()
    prepare: PrepareSection = PrepareSection()


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. prepare.workers=2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.strip(), value


def resolve_config_path(path: str | Path) -> Path:
    """Accept a path or a bare task name (`flare` → configs/flare.yaml)."""
    p = Path(path)
    if p.is_file():
        return p
    candidate = CONFIG_DIR / f"{path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"config {path}: no such file (known: {', '.join(sorted(c.stem for c in CONFIG_DIR.glob('*.yaml')))})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SegpipeConfig:
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        try:
            loaded = yaml.safe_load(resolved.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{resolved}: invalid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{resolved}: top level must be a mapping")
        data = loaded
    for text in overrides or []:
        _set_dotted(data, *parse_override(text))
    try:
        return SegpipeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def dump_config(config: SegpipeConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
