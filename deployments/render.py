"""Render deployments/prefect.yaml from the example spec.

    python deployments/render.py           # rewrite deployments/prefect.yaml
    python deployments/render.py --check   # exit 1 if the committed file is stale

The deployment's parameters are the spec's canonical form, so the file must be
re-rendered whenever the spec changes (tests/test_deployments.py checks this).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = "jobspecs/examples/fix-failing-test.yaml"
OUT = REPO / "deployments" / "prefect.yaml"


def render(spec_relpath: str = SPEC) -> str:
    from longrun.flows.deploy import render_prefect_yaml
    from longrun.spec import load_spec

    return render_prefect_yaml(load_spec(REPO / spec_relpath), spec_relpath)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if prefect.yaml is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale; run: python deployments/render.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
