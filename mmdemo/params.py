"""Parameter counts of every model's full-size configuration, next to the report's Table 1.

``python -m mmdemo.params [--json]`` builds each model on the meta device (no weights are
downloaded or allocated) and prints total and trainable parameters beside the report's numbers.
``python -m mmdemo.params --state-dict ID`` prints the full-size model's parameter and buffer names with
their shapes as JSON, so checkpoint compatibility can be checked offline.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from mmdemo.registry import REGISTRY, ModelSpec


@dataclass
class ParamRow:
    id: str
    kind: str
    total: int | None
    trainable: int | None
    report_total: float | None
    report_trainable: float | None
    note: str


def count_parameters(module) -> tuple[int, int]:
    """(total, trainable) parameters; tied tensors counted once."""
    params = {id(p): p for p in module.parameters()}
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return total, trainable


def build_full_network(spec: ModelSpec):
    """The full-size network of ``spec`` on the meta device."""
    from mmdemo import adapter_class

    return adapter_class(spec).build_network(spec.full_config, device="meta")


def param_row(spec: ModelSpec) -> ParamRow:
    from mmdemo import adapter_class

    report = spec.report
    cls = adapter_class(spec)
    total, trainable = count_parameters(cls.build_network(spec.full_config, device="meta"))
    return ParamRow(
        spec.id, spec.kind, total, trainable, report.total_params, report.trainable_params, cls.param_note
    )


def state_dict_shapes(model_id: str) -> dict[str, list[int]]:
    from mmdemo.registry import get_spec

    network = build_full_network(get_spec(model_id))
    return {name: list(tensor.shape) for name, tensor in network.state_dict(keep_vars=True).items()}


def _millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}M"


def format_table(rows: list[ParamRow]) -> str:
    header = f"{'model':<20} {'total':>10} {'trainable':>10} {'report total':>13} {'report train':>13}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.id:<20} {_millions(r.total):>10} {_millions(r.trainable):>10} "
            f"{_millions(r.report_total):>13} {_millions(r.report_trainable):>13}  {r.note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--state-dict", metavar="ID", help="print parameter/buffer names and shapes of one model"
    )
    args = parser.parse_args(argv)
    if args.state_dict:
        from mmdemo.registry import get_spec

        try:
            get_spec(args.state_dict)
            print(json.dumps(state_dict_shapes(args.state_dict), indent=1))
        except (KeyError, NotImplementedError) as err:
            print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
            return 2
        return 0
    rows = [param_row(spec) for spec in REGISTRY.values()]
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
