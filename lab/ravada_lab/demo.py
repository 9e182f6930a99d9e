"""`make demo`: three small VMs under Pacemaker in a running lab, shown with crm_mon."""

from __future__ import annotations

import argparse
import sys

from .cluster import wait_until
from .errors import LabError
from .layout import DEFAULT_NAME, LabLayout
from .state import LabState, node_run
from .vms import AGENT, create_vm

VM_TIMEOUT = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--agent", default=AGENT, help=f"resource agent (default {AGENT})")
    args = parser.parse_args(argv)
    try:
        state = LabState.load(LabLayout.for_lab(args.name))
        names = [f"vm{i}" for i in range(1, args.vms + 1)]
        for name in names:
            config = create_vm(state, name, agent=args.agent)
            print(f"pcs resource create {name} {args.agent} config={config} "
                  "migration_transport=tcp force_stop=true meta allow-migrate=true")
        wait_until(state, lambda v: all(v.roles.get(n) == "Started" for n in names),
                   f"{', '.join(names)} started", VM_TIMEOUT)
        print(node_run(state, state.powered_nodes()[0], ["crm_mon", "-1"]).stdout)
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
