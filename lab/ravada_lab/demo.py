"""`make demo`: small VMs under Pacemaker in a running lab, then the tour (`ravada-lab tour`).

In a lab with Ceph (`ravada-lab up --ceph`) every VM boots from an RBD image of its own under
the agent's RBD guard. Also prepared for the tour: `nodeinfo` (nodes publish their capacity,
which ravada-place reads) and vm4's domain (and image), created by the tour itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import ceph_service, tour
from .cluster import wait_until
from .domains import write_domain
from .errors import LabError
from .layout import DEFAULT_NAME, DEFAULT_ROOT, LabLayout
from .state import LabState, node_run
from .vms import create_argv

VM_TIMEOUT = 120.0
IMAGE_SIZE = "64M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--vms", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        state = LabState.load(LabLayout.for_lab(args.name, args.root))
        first = state.healthy_nodes()[0]
        run_shown(state, first, ["pcs", "resource", "create", "nodeinfo", "ocf:ravada:nodeinfo",
                                 "cpu_ratio=4", "clone"])
        params = ceph_service.vm_params(state.lab) if ceph_service.has_ceph(state.lab) else ()
        names = [f"vm{i}" for i in range(1, args.vms + 1)]
        for name in names:
            config = prepare_vm(state, name)
            run_shown(state, first, create_argv(name, config, extra=params))
        prepare_vm(state, tour.NEW_VM)
        wait_until(state, lambda v: all(v.roles.get(n) == "Started" for n in names),
                   f"{', '.join(names)} started", VM_TIMEOUT)
        print(node_run(state, first, ["crm_mon", "-1"]).stdout)
        print(tour.render(tour.build(state)))
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


def run_shown(state: LabState, node: str, argv: list[str]) -> None:
    """Run a command inside `node`, shown as the line that does it from the host."""
    print(tour.LabCli(state.lab).on(node, *argv).line)
    node_run(state, node, argv)


def prepare_vm(state: LabState, name: str) -> Path:
    """The domain XML of `name` in the shared dir; with Ceph, on an RBD image made for it."""
    if not ceph_service.has_ceph(state.lab):
        return write_domain(state.lab, name)
    from .ceph import LabCeph, write_rbd_domain
    from .microceph import POOL
    ceph = LabCeph(state.lab)
    spec = f"{POOL}/{name}"
    run_shown(state, state.healthy_nodes()[0],
              ["rbd", "--conf", str(ceph.conf), "create", "--size", IMAGE_SIZE, spec])
    return write_rbd_domain(state.lab, name, ceph, spec)



if __name__ == "__main__":
    sys.exit(main())
