"""The action dispatcher every ocf:ravada agent runs through.

An agent subclasses `Agent`, declares its metadata (`info`) and implements one method per
action. The dispatcher does what every agent needs: meta-data/usage, unknown actions,
parameter parsing (strict for actions that change things, lenient for stop and probes),
the deadline, exit reasons, and turning exceptions into OCF codes.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, ClassVar, Mapping

from .deadline import Deadline
from .log import Log
from .metadata import AgentInfo
from .ocf import Environment, OcfError, Rc, print_exit_reason
from .params import Values, parse_all, parse_lenient

# Actions that must work with whatever parameters they are given: refusing to stop or
# to probe because of a bad parameter would leave a VM running unseen.
LENIENT_ACTIONS = frozenset({"stop", "monitor", "status"})
NO_PARAMS_ACTIONS = frozenset({"meta-data", "usage", "help"})


class Agent:
    info: ClassVar[AgentInfo]

    def __init__(self, action: str, env: Environment, log: Log, params: Values,
                 deadline: Deadline) -> None:
        self.action = action
        self.env = env
        self.log = log
        self.params = params
        self.deadline = deadline

    @property
    def is_probe(self) -> bool:
        return self.env.is_probe(self.action)

    def failure(self, err: Exception) -> OcfError | None:
        """The OCF outcome of an error the agent's layers raise (libvirt's, Pacemaker's),
        None for an unexpected one (an agent bug: "internal error")."""
        return None

    def handlers(self) -> Mapping[str, Callable[[], int]]:
        """Action name -> method: by default the method named after each advertised action
        ("reload-agent" -> reload_agent); an advertised action without one answers 3."""
        methods = {a.name: getattr(self, a.name.replace("-", "_"), None) for a in self.info.actions}
        return {name: method for name, method in methods.items() if callable(method)}


def usage(info: AgentInfo) -> str:
    names = "|".join(a.name for a in info.actions)
    return f"usage: {info.name} {{{names}}}\n"


def run(agent_cls: type[Agent], argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    info = agent_cls.info
    env = Environment(environ)
    if len(argv) < 2:
        sys.stderr.write(usage(info))
        return Rc.ERR_ARGS
    action = argv[1]
    if action == "meta-data":
        from .metadata import to_xml

        sys.stdout.buffer.write(to_xml(info))
        sys.stdout.flush()
        return Rc.SUCCESS
    if action in ("usage", "help"):
        sys.stdout.write(usage(info))
        return Rc.SUCCESS

    log = Log(info.name, env.resource, environ)
    advertised = info.action(action)
    if advertised is None:
        print_exit_reason(env, f"action '{action}' is not implemented by {info.name}")
        return Rc.ERR_UNIMPLEMENTED

    deadline = Deadline.from_timeout_ms(env.timeout_ms, advertised.timeout)
    agent: Agent | None = None
    try:
        if action in LENIENT_ACTIONS:
            params, problems = parse_lenient(info.parameters, env)
            for problem in problems:
                log.warning(f"{problem.reason} (ignored for {action}; defaults used)")
        else:
            params = parse_all(info.parameters, env)
        agent = agent_cls(action, env, log, params, deadline)
        handler = agent.handlers().get(action)
        if handler is None:
            raise OcfError(Rc.ERR_UNIMPLEMENTED, f"action '{action}' is not implemented")
        rc = handler()
    except OcfError as err:
        return _failed(env, log, err)
    except Exception as err:  # an agent bug must still produce a readable failure
        import traceback

        outcome = agent.failure(err) if agent is not None else None
        if outcome is not None:
            return _failed(env, log, outcome)

        log.error("internal error: " + "".join(traceback.format_exception(err)).strip())
        print_exit_reason(env, f"internal error in {info.name} {action}: {err!r}")
        return Rc.ERR_GENERIC
    return int(rc)


def _failed(env: Environment, log: Log, err: OcfError) -> int:
    level = log.info if err.rc == Rc.NOT_RUNNING else log.error
    level(err.reason)
    if err.rc != Rc.NOT_RUNNING:
        print_exit_reason(env, err.reason)
    return int(err.rc)


def main(agent_cls: type[Agent]) -> None:
    """Entry point for agent scripts: run, then exit without waiting for stuck threads.

    A libvirt call abandoned at its deadline keeps a thread blocked in C; os._exit makes
    sure such a thread can never hold the process past Pacemaker's timeout.
    """
    rc = run(agent_cls, sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
