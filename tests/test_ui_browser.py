"""The Dagster UI as a person uses it, in headless Chromium against a real `dagster dev`.

One scenario, in the order a newcomer would go: look at the asset graph and the checks, find the
routing sensor and its last tick, materialize the lexicon with "Materialize all", materialize one
small partition of noun_enrichments (vav, 3 nouns) from the partition dialog against the real
SmolLM2 server, read the run's tags, then let the sensor launch a run and read its tags too.

The sensor is stopped from the UI before the lexicon is materialized: once noun_gematria exists
it launches enrichment runs on every pending partition (alef first, 300 nouns), and they would
compete with the vav run for the single-threaded llama server. It is started again at the end
for one tick, and the run it launched is terminated from the UI. Screenshots: test-artifacts/ui/.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.browser import UIStack, shot

LOCATION = "__repository__@gemantria_dag.definitions"
SENSOR_PAGE = f"/locations/{LOCATION}/sensors/lm_routing_sensor"
LEXICON_PAGE = f"/locations/{LOCATION}/asset-groups/lexicon"
ASSETS = ("hebrew_nouns", "noun_gematria", "noun_enrichments")
CHECKS = ("coverage", "failure_rate", "confidence_in_range", "no_empty_insight", "failed_nouns")
BACKEND_TAG = "gemantria/llm_backend"
PARTITION = "vav"  # 3 nouns: the smallest letter


# ---------------------------------------------------------------- GraphQL helpers (waiting, not checking)


def _runs(stack: UIStack) -> list[dict[str, Any]]:
    data = stack.graphql("{ runsOrError { ... on Runs { results { runId status jobName tags { key value } } } } }")
    return data["runsOrError"]["results"]


def _run_by_prefix(stack: UIStack, prefix: str) -> dict[str, Any]:
    matches = [r for r in _runs(stack) if r["runId"].startswith(prefix)]
    assert len(matches) == 1, (prefix, _runs(stack))
    return matches[0]


def _wait_run_done(stack: UIStack, run_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = next(r["status"] for r in _runs(stack) if r["runId"] == run_id)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} not finished after {timeout_s:.0f}s\n{stack.log_tail()}")


def _sensor_state(stack: UIStack) -> dict[str, Any]:
    data = stack.graphql(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name "
        "sensorState { status ticks(limit: 5) { status skipReason runIds } } } } } } }"
    )
    sensors = [s for repo in data["repositoriesOrError"]["nodes"] for s in repo["sensors"]]
    return next(s["sensorState"] for s in sensors if s["name"] == "lm_routing_sensor")


def _wait(check, timeout_s: float, what: str, stack: UIStack):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout_s:.0f}s\n{stack.log_tail()}")


# ---------------------------------------------------------------- UI steps


def _launched_run_id(page: Any, stack: UIStack) -> str:
    """The run a launch button started, from the toast "Launched run <id8>"."""
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.first.wait_for()
    prefix = re.search(r"Launched run ([0-9a-f]{8})", toast.first.inner_text()).group(1)  # type: ignore[union-attr]
    return _run_by_prefix(stack, prefix)["runId"]


def _set_sensor(page: Any, stack: UIStack, running: bool) -> None:
    """Flip the sensor's switch on its page (the input is hidden behind its label)."""
    from playwright.sync_api import expect  # imported where used: the fixture reports a missing playwright

    page.goto(stack.url + SENSOR_PAGE)
    page.get_by_text("Latest tick").wait_for()
    switch = page.get_by_role("checkbox")
    if switch.is_checked() != running:
        page.locator("label").filter(has=switch).click()
    want = "RUNNING" if running else "STOPPED"
    _wait(lambda: _sensor_state(stack)["status"] == want, 20, f"sensor {want}", stack)
    # The switch re-renders only after the UI refetches the sensor's state: wait for it, don't sample it.
    expect(switch).to_be_checked(checked=running, timeout=20_000)


def _open_run_and_read_tags(page: Any, stack: UIStack, run_id: str, name: str) -> str:
    page.goto(f"{stack.url}/runs/{run_id}")
    page.get_by_role("button", name="View tags and config").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Tags", exact=True).wait_for()
    tag = dialog.get_by_text(re.compile(rf"^{re.escape(BACKEND_TAG)}: "))
    tag.wait_for()
    shot(page, name)
    text = tag.inner_text()
    dialog.get_by_role("button", name="OK").click()
    return text


@pytest.mark.timeout(600)
def test_ui_in_a_real_browser(ui_stack: UIStack, ui_page: Any) -> None:
    page, stack = ui_page, ui_stack

    # 1. The asset graph: every group expanded (the graph's own shortcut, Alt+E), three assets and the checks row.
    page.goto(stack.url + "/asset-groups")
    graph = page.locator("svg foreignObject")
    graph.get_by_text("lexicon", exact=True).first.wait_for()
    page.keyboard.press("Alt+e")
    for asset in ASSETS:
        graph.get_by_text(asset, exact=True).first.wait_for()
    node = graph.filter(has=page.get_by_text("noun_enrichments", exact=True))
    node.get_by_text("Asset checks").first.wait_for()
    node.get_by_text(re.compile(r"\b\d+ / 5\b")).first.wait_for()  # "0 / 5 Passed": its five checks
    shot(page, "01-asset-graph")

    # ... and the four checks by name on the asset's Checks tab.
    page.goto(stack.url + "/assets/noun_enrichments?view=checks")
    page.get_by_text(f"Checks ({len(CHECKS)})").wait_for()
    for check in CHECKS:
        page.get_by_text(check, exact=True).first.wait_for()
    shot(page, "02-asset-checks")

    # 2. The routing sensor, listed with its last tick. Before the lexicon exists every tick skips.
    _wait(lambda: _sensor_state(stack)["ticks"], 60, "a first sensor tick", stack)
    page.goto(stack.url + "/automation")
    page.get_by_text("lm_routing_sensor", exact=True).wait_for()
    page.get_by_text("Standard sensor").wait_for()
    shot(page, "03-automation")
    page.goto(stack.url + SENSOR_PAGE)
    page.get_by_text("Latest tick").wait_for()
    page.get_by_text(re.compile(r"\d+ runs? requested")).first.wait_for()
    assert "enrichment_job" in page.inner_text("body")
    skipped = [t for t in _sensor_state(stack)["ticks"] if t["status"] == "SKIPPED"]
    assert skipped and "noun_gematria" in skipped[0]["skipReason"]  # "... is not materialized yet ..."
    shot(page, "04-sensor-ticks")
    _set_sensor(page, stack, running=False)

    # 3. "Materialize all" on the lexicon group.
    page.goto(stack.url + LEXICON_PAGE)
    page.locator("svg foreignObject").get_by_text("noun_gematria", exact=True).wait_for()
    page.get_by_role("button", name="Materialize all").click()
    lexicon_run = _launched_run_id(page, stack)
    assert _wait_run_done(stack, lexicon_run, 180) == "SUCCESS", stack.log_tail()
    page.goto(f"{stack.url}/runs/{lexicon_run}")
    page.get_by_text("Success", exact=True).first.wait_for()
    shot(page, "05-lexicon-run")

    # 4. One partition of noun_enrichments from the partition dialog, against the real SmolLM2 server.
    page.goto(stack.url + "/assets/noun_enrichments")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(PARTITION)
    page.get_by_role("menuitem").filter(has_text=PARTITION).filter(has_not_text="Select all").click()
    dialog.get_by_text("Launch runs to materialize noun_enrichments").click()  # close the picker
    dialog.get_by_text("1 partition", exact=True).wait_for()
    shot(page, "06-partition-dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    enrich_run = _launched_run_id(page, stack)
    assert _wait_run_done(stack, enrich_run, 300) == "SUCCESS", stack.log_tail()
    page.goto(f"{stack.url}/runs/{enrich_run}")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text(f"partition: {PARTITION}").first.wait_for()
    shot(page, "07-enrichment-run")

    # The run's spend, savings and tokens are numeric metadata: the asset's Metadata section plots them
    # across materializations (Plots, by Events).
    page.goto(stack.url + "/assets/noun_enrichments")
    page.get_by_role("button", name="Plots").click()
    page.get_by_role("button", name="Events").click()
    for key in ("cost_usd", "saved_usd", "total_tokens"):
        page.get_by_text(key, exact=True).first.wait_for()
    page.get_by_text("cost_usd", exact=True).first.scroll_into_view_if_needed()
    shot(page, "07b-cost-plots")

    # Its LLM calls are in the control plane (the run's Postgres), all on LM Studio = SmolLM2.
    with psycopg.connect(stack.dsn) as conn:
        calls = conn.execute(
            "SELECT tool, args_json->>'model' FROM control.agent_run WHERE args_json->>'run_id' = %s", (enrich_run,)
        ).fetchall()
    assert len(calls) >= 3 and {tuple(c) for c in calls} == {("lm_studio", stack.llama.model)}

    # A run launched by hand gets the routing decision as its backend tag at run start.
    assert _open_run_and_read_tags(page, stack, enrich_run, "08-enrichment-run-tags") == f"{BACKEND_TAG}: lm_studio"

    # 5. The sensor again: started from the UI, it launches the next pending partition with the tag.
    before = {r for t in _sensor_state(stack)["ticks"] for r in t["runIds"]}
    _set_sensor(page, stack, running=True)
    launched = _wait(
        lambda: [r for t in _sensor_state(stack)["ticks"] for r in t["runIds"] if r not in before],
        60,
        "a run launched by the sensor",
        stack,
    )
    _set_sensor(page, stack, running=False)
    page.goto(stack.url + SENSOR_PAGE)
    page.get_by_text(re.compile(r"[1-9]\d* runs? requested")).first.wait_for()
    shot(page, "09-sensor-launched")
    sensor_run = launched[0]
    page.goto(f"{stack.url}/runs/{sensor_run}")
    page.get_by_text("Launched by lm_routing_sensor").wait_for()
    assert _open_run_and_read_tags(page, stack, sensor_run, "10-sensor-run-tags") == f"{BACKEND_TAG}: lm_studio"

    # It would enrich all of alef (300 nouns): terminate it from the run page.
    page.get_by_role("button", name="Terminate").click()
    confirm = re.compile(r"^(Terminate|Force termination for) \d+ run")  # "Force..." once it is canceling
    page.get_by_role("dialog").get_by_role("button", name=confirm).click()
    assert _wait_run_done(stack, sensor_run, 60) == "CANCELED"
    for other in launched[1:]:  # a second tick may have come before the switch was off
        stack.graphql("mutation($id: String!) { terminateRun(runId: $id) { __typename } }", {"id": other})
