"""prefect.yaml: every deployment points at a loadable flow whose parameters it names, with valid schedules.

(`prefect deploy --all` against a local `prefect server start` and a process work pool accepted it; that
needs a running server, so here we check what deploy would read.)
"""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parents[2]


def test_deployments_resolve_to_flows():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"], "no deployments declared"
    for dep in spec["deployments"]:
        path, name = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(str(REPO / path) + ":" + name)
        params = inspect.signature(flow.fn).parameters
        assert set(dep.get("parameters", {})) <= set(params), dep["name"]
        for schedule in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone", "UTC"))
        assert dep["work_pool"]["name"]
