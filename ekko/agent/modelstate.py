"""The agent's side of the model-state manager: cuts, the baseline view, paired shadow scores, and
the Model's control block (serving view, epoch, restore).

The operator takes cuts through the update node's ``/v1/updates/cut`` endpoint and steers the rest
through one write per transition to ``Model.status.updates`` (:class:`ModelUpdateControl`), which
every agent holding the model already watches (the routing fan-out of version rollbacks):

- ``view: Baseline`` → every request is served from the baseline cut (a rollback's first step);
  ``Live`` → the newest rows serve, the baseline takes its ``trafficPercent`` sliver;
- ``epoch`` newer than the one applied → restore the tables to ``restoreCut`` at that epoch (the
  cut log writes the pre-images back and fences older-epoch rows above the cut). A replica that
  does not hold the cut (it started after it) restores by pulling: its upstream restored the same
  keys at the new epoch, and those versions beat every older row it holds;
- cuts older than ``baselineCut`` are dropped (the baseline only moves forward).

A labelled request served live is also scored on the baseline view (``shadowPercent`` of them):
the per-pair loss differences are what the operator's detector judges (paired: same requests,
both views). When the control block names a ``recentCut`` (the recent view, a cut about a window
old) the same sampled requests are scored on it too, a second paired series the detector judges. The agent reports per model the view it serves, the epoch applied, the cuts it holds
and when it last switched or restored, in ``ServerAssignment.status.updates``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from ekko.agent.engines import BASELINE_VIEW, LIVE_VIEW, RowReader
from ekko.api.resources import DutyHealth, ModelUpdateControl, ServerUpdateState, UpdateGuard
from ekko.updates.health import GuardSpec
from ekko.updates.node import Node
from ekko.updates.scoring import pair_logloss

log = logging.getLogger(__name__)

View = str


@dataclass
class _ModelState:
    control: ModelUpdateControl
    view: str = "Live"
    epoch: int = 0
    switched_at: datetime | None = None
    restored_at: datetime | None = None
    message: str = ""


def paired_differences(
    labels: npt.ArrayLike, live: npt.ArrayLike, baseline: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """``loss(live) − loss(baseline)`` for every labelled pair (NaN labels are skipped)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    keep = ~np.isnan(y)
    p_live = np.asarray(live, dtype=np.float64).ravel()[keep]
    p_base = np.asarray(baseline, dtype=np.float64).ravel()[keep]
    out: npt.NDArray[np.float64] = pair_logloss(y[keep], p_live) - pair_logloss(y[keep], p_base)
    return out


def guard_spec(guard: UpdateGuard) -> GuardSpec:
    """The thresholds a duty's ``health.guard`` gives the node's parameter guard (the running
    means' memory keeps its default)."""
    return GuardSpec(
        zero_ratio=guard.zero_ratio,
        zero_from=guard.zero_from,
        norm_ratio=guard.norm_ratio,
        step_ratio=guard.step_ratio,
        warmup=guard.warmup,
    )


class ModelStates:
    """Per model: the control block applied, the serving view, and the baseline reader."""

    def __init__(
        self,
        node: Callable[[], Node | None],
        now: Callable[[], datetime],
        rand: Callable[[], float],
    ) -> None:
        self._node = node
        self._now = now
        self._rand = rand
        self.health: dict[str, DutyHealth] = {}
        """Per model, from its update duty: the baseline's traffic and shadow shares."""
        self._models: dict[str, _ModelState] = {}

    def on_control(self, model: str, control: ModelUpdateControl | None) -> bool:
        """Apply a Model's control block; True when what the agent reports changed."""
        if control is None:
            return self._models.pop(model, None) is not None
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(control, epoch=control.epoch)
            changed = True
        else:
            changed = state.control != control
            state.control = control
        node = self._node()
        if node is None:
            return changed
        if control.epoch > state.epoch:
            self._restore(node, model, state, control)
            changed = True
        if control.baseline_cut is not None:
            cuts = node.cuts.of(model)  # this model's only: another stream's stay
            for cut in cuts.cuts():
                if cut.id < control.baseline_cut:
                    cuts.drop(cut.id)
        view = self._serving_view(node, model, state)
        if view != state.view:
            state.view = view
            state.switched_at = self._now()
            log.info("Model %s: serving the %s view", model, view.lower())
            changed = True
        return changed

    def _restore(
        self, node: Node, model: str, state: _ModelState, control: ModelUpdateControl
    ) -> None:
        cut = control.restore_cut
        cuts = node.cuts.of(model)
        if cut is not None and cuts.has(cut):
            try:
                node.restore(cut, control.epoch, model=cuts.model)
                state.message = ""
            except ValueError as err:  # the store already holds rows of that epoch
                state.message = f"could not restore cut {cut} at epoch {control.epoch}: {err}"
                log.warning("Model %s: %s", model, state.message)
        else:
            state.message = (
                f"cut {cut} is not held here; the restored state arrives from upstream"
                if cut is not None
                else ""
            )
            if state.message:
                log.info("Model %s: %s", model, state.message)
        state.epoch = control.epoch
        state.restored_at = self._now()

    @staticmethod
    def _serving_view(node: Node, model: str, state: _ModelState) -> str:
        control = state.control
        if control.view == "Baseline" and control.baseline_cut is not None:
            if node.cuts.of(model).has(control.baseline_cut):
                return "Baseline"
            state.message = f"baseline cut {control.baseline_cut} is not held here; serving live"
        return "Live"

    def on_node_change(self) -> bool:
        """Re-apply every control block (the node just started or was re-wired)."""
        changed = False
        for model, state in list(self._models.items()):
            changed |= self.on_control(model, state.control)
        return changed

    # -- serving --------------------------------------------------------------------------------

    def baseline_reader(self, model: str) -> RowReader | None:
        """The baseline view of ``model`` when this replica holds its cut, else None."""
        state = self._models.get(model)
        return None if state is None else self._reader(model, state.control.baseline_cut)

    def recent_reader(self, model: str) -> RowReader | None:
        """The recent view of ``model`` when the control block names one and this replica holds
        its cut, else None."""
        state = self._models.get(model)
        return None if state is None else self._reader(model, state.control.recent_cut)

    def _reader(self, model: str, cut: int | None) -> RowReader | None:
        node = self._node()
        if node is None or cut is None:
            return None
        cuts = node.cuts.of(model)
        return cuts.view(node.store, cut) if cuts.has(cut) else None

    def choose_view(self, model: str, asked: str | None) -> str:
        """The view a request is served from: the one asked for, else the baseline during a
        rollback or for the baseline's traffic sliver, else live."""
        if asked is not None:
            return asked
        state = self._models.get(model)
        if state is None or self.baseline_reader(model) is None:
            return LIVE_VIEW
        if state.view == "Baseline":
            return BASELINE_VIEW
        health = self.health.get(model)
        share = health.traffic_percent if health is not None else 0.0
        return BASELINE_VIEW if self._rand() * 100 < share else LIVE_VIEW

    def shadow(self, model: str) -> tuple[RowReader | None, RowReader | None]:
        """The baseline and recent readers when this labelled live request should be
        shadow-scored (one draw for both: the two paired series score the same requests)."""
        reader = self.baseline_reader(model)
        health = self.health.get(model)
        if reader is None or health is None:
            return None, None
        if self._rand() * 100 >= health.shadow_percent:
            return None, None
        return reader, self.recent_reader(model)

    # -- reporting ------------------------------------------------------------------------------

    def report(self) -> list[ServerUpdateState]:
        node = self._node()
        return [
            ServerUpdateState(
                model=model,
                view="Baseline" if state.view == "Baseline" else "Live",
                epoch=state.epoch,
                cuts=[c.id for c in node.cuts.of(model).cuts()][-256:] if node is not None else [],
                switched_at=state.switched_at,
                restored_at=state.restored_at,
                message=state.message[:1024],
            )
            for model, state in sorted(self._models.items())
        ]
